"""Content-defined chunking: how a file's blocks become chunks and block references.

Terms:
  block      a fixed-size piece of a file at a fixed offset (the volume's block size):
             what the timeline versions, so a read of any offset at any instant is one
             seek per block (store/timeline.py).
  chunk      a piece of content cut where the content itself says (FastCDC), so that
             bytes inserted or deleted move the cuts with the content and every chunk
             away from the change keeps its id: what packs store and dedup shares.
  stream     what a file's chunks are cut from: its non-hole blocks, in order, joined.
             A hole (a block with no data, or all zeros) is not in the stream and
             stores nothing.
  block reference  what a block version names (``format.encode_ref``): the slices of
             chunks that make the block, or one chunk id when the block is exactly one
             whole chunk (a small file, an image block), or ``HOLE_ID``.

Cut points depend only on the bytes since the previous cut, FastCDC's parameters
(``CHUNK_MIN``, ``CHUNK_AVG``, ``CHUNK_MAX``, ``CHUNK_NC``) and the repository's seed, so
the same content cuts the same way in every file and every commit. The cutting itself
runs in C (pyfastcdc, about 3 GB/s, without the GIL); Python runs per chunk and per
block, never per byte.
"""

from __future__ import annotations

import threading

from .format import (
    CHUNK_AVG,
    CHUNK_MAX,
    CHUNK_MIN,
    CHUNK_NC,
    HOLE_ID,
    encode_ref,
    is_zero,
)

#: Bytes of stream handed to the cutter at a time by :class:`RefBuilder` (a large file is
#: cut as it is read, not held whole): with the unfinished chunk carried over, at most
#: about twice CHUNK_MAX is held per file being read.
FEED_BYTES = 2 << 20


def seed_of(block_key: bytes) -> int:
    """The chunker seed of a repository: 63 bits derived from its block key, never 0
    (pyfastcdc's "no seed"). It varies the gear table per repository, as restic's
    random polynomial does, so cut points are not the same in every repository."""
    from blake3 import blake3

    raw = blake3(b"anytime chunker seed", key=block_key).digest()[:8]
    return (int.from_bytes(raw, "little") >> 1) | 1


class Chunker:
    """Cuts bytes into chunks with the parameters of one repository; thread-safe (each
    thread gets its own pyfastcdc cutter, which is not)."""

    def __init__(self, seed: int, min_size: int = CHUNK_MIN, avg_size: int = CHUNK_AVG,
                 max_size: int = CHUNK_MAX, nc: int = CHUNK_NC):
        self.seed = seed
        self.min_size, self.avg_size, self.max_size, self.nc = min_size, avg_size, max_size, nc
        self._local = threading.local()

    def _cutter(self):
        c = getattr(self._local, "cutter", None)
        if c is None:
            from pyfastcdc import FastCDC

            c = self._local.cutter = FastCDC(self.avg_size, min_size=self.min_size,
                                             max_size=self.max_size,
                                             normalized_chunking=self.nc, seed=self.seed)
        return c

    def cut(self, data: bytes) -> list[int]:
        """The lengths of the chunks ``data`` is cut into, in order (they sum to its
        length; empty data gives none)."""
        if len(data) <= self.min_size:
            return [len(data)] if data else []
        return [c.length for c in self._cutter().cut_buf(data)]


class StreamCutter:
    """Cuts a stream given in pieces: :meth:`feed` returns the chunks that are final,
    :meth:`finish` the rest. The same chunks as cutting the whole stream at once: a
    cut depends only on the bytes since the previous cut, so the unfinished last chunk
    of each piece is cut again with the next one."""

    def __init__(self, chunker: Chunker):
        self.chunker = chunker
        self._tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._tail + data if self._tail else data
        lens = self.chunker.cut(buf)
        out, off = [], 0
        for n in lens[:-1]:
            out.append(buf[off:off + n])
            off += n
        self._tail = buf[off:]
        return out

    def finish(self) -> list[bytes]:
        tail, self._tail = self._tail, b""
        return [tail] if tail else []


class RefBuilder:
    """Turns a file's blocks, given in order, into their block references.

    ``store(chunk) -> chunk id`` stores (or only names) each chunk; it may return a
    :class:`~concurrent.futures.Future` of the id instead (anything but bytes is taken
    for one: ``ls`` and ``log`` import this module and start without concurrent.futures), so large files are hashed
    and compressed by other threads while this one reads on. :meth:`add` takes each
    block's bytes (None for a hole found without reading); :meth:`finish` returns one
    reference per block."""

    def __init__(self, chunker: Chunker, store):
        self.chunker = chunker
        self.store = store
        self.lens: list[int | None] = []  # per block: its length, None for a hole
        self.chunks: list[tuple[object, int]] = []  # (id, or a Future of it; length)
        self._cutter = StreamCutter(chunker)
        self._piece: list[bytes] = []
        self._piece_len = 0

    def add(self, data: bytes | None) -> None:
        if data is None or is_zero(data):
            self.lens.append(None)
            return
        self.lens.append(len(data))
        self._piece.append(data)
        self._piece_len += len(data)
        if self._piece_len >= FEED_BYTES:
            self._feed(self._cutter.feed(self._take()))

    def _take(self) -> bytes:
        piece = self._piece[0] if len(self._piece) == 1 else b"".join(self._piece)
        self._piece, self._piece_len = [], 0
        return piece

    def _feed(self, chunks: list[bytes]) -> None:
        store = self.store
        self.chunks.extend((store(c), len(c)) for c in chunks)

    def finish(self) -> list[bytes]:
        if self._piece:
            self._feed(self._cutter.feed(self._take()))
        self._feed(self._cutter.finish())
        chunks = [(x if isinstance(x, bytes) else x.result(), n) for x, n in self.chunks]
        return block_refs(self.lens, chunks)

    def futures(self) -> list:
        """The chunk stores still referenced by Future (to cancel or wait for them when
        the file's read fails)."""
        return [x for x, _ in self.chunks if not isinstance(x, bytes)]


def block_refs(lens: list[int | None], chunks: list[tuple[bytes, int]]) -> list[bytes]:
    """The reference of each block of lengths ``lens`` (None: a hole), the stream of
    the non-hole ones being made of ``chunks`` ((id, length), in order)."""
    refs = []
    ci, coff = 0, 0  # the chunk the next block starts in, and where in it
    for n in lens:
        if n is None:
            refs.append(HOLE_ID)
            continue
        slices = []
        whole = None
        while n:
            cid, clen = chunks[ci]
            take = min(clen - coff, n)
            slices.append((cid, coff, take))
            whole = clen
            coff += take
            n -= take
            if coff == clen:
                ci, coff = ci + 1, 0
        refs.append(encode_ref(slices, whole))
    if ci != len(chunks):
        raise ValueError("the chunks hold more bytes than the blocks")
    return refs


def file_refs(f, block_size: int, chunker: Chunker, name) -> list[bytes]:
    """The block references a snapshot would record for the content of open binary file
    ``f`` (``name(chunk) -> chunk id``, nothing stored): what a live file is compared
    with."""
    builder = RefBuilder(chunker, name)
    while data := f.read(block_size):
        builder.add(data)
    return builder.finish()
