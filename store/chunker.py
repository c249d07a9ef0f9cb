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

#: Bytes a stream's buffer holds at least (:class:`StreamCutter`): a chunk is final once
#: CHUNK_MAX bytes follow its start, so the buffer holds less than CHUNK_MAX of a chunk not
#: yet cut plus what was read since; the rest of it lets that tail be moved to the front
#: once per few blocks instead of once per block.
BUFFER_BYTES = 6 << 20


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

    def cutter(self):
        """This thread's pyfastcdc cutter."""
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
        return [c.length for c in self.cutter().cut_buf(data)]


class StreamCutter:
    """Cuts a stream given in pieces, read into one buffer that is cut as it fills: a chunk
    is cut once CHUNK_MAX bytes follow its start (the cut depends on those bytes only, so it
    is the cut of the whole stream), and its bytes are copied out once. :meth:`space` and
    :meth:`wrote` let a reader read straight into the buffer; :meth:`feed` copies bytes in;
    :meth:`finish` cuts what is left. Each gives the chunks that are final, in order.

    The first buffer holds the first piece only (most files cut this way are one
    block); a stream that goes on gets one of at least ``BUFFER_BYTES``, kept until
    :meth:`finish`."""

    def __init__(self, chunker: Chunker):
        self.chunker = chunker
        self._max = chunker.max_size
        self._buf: bytearray | None = None
        self._view: memoryview | None = None
        self._start = 0  # where the chunk not yet cut starts
        self._end = 0  # where the bytes read end

    def space(self, n: int) -> memoryview:
        """A view of ``n`` free bytes at the end of the stream, to read into; then call
        :meth:`wrote` with how many of them are the stream's."""
        if self._view is None or self._end + n > len(self._buf):
            self._make_room(n)
        return self._view[self._end:self._end + n]

    def wrote(self, n: int) -> list[bytes]:
        """Add the first ``n`` bytes of the last :meth:`space` to the stream."""
        self._end += n
        return self._cut(False) if self._end - self._start >= self._max else []

    def zeros(self, n: int) -> bool:
        """True if the first ``n`` bytes of the last :meth:`space` are all zeros."""
        return is_zero(self._view[self._end:self._end + n])

    def feed(self, data) -> list[bytes]:
        self.space(len(data))[:] = data
        return self.wrote(len(data))

    def finish(self) -> list[bytes]:
        if self._view is None:
            return []
        out = self._cut(True)
        self._release()
        return out

    def _cut(self, last: bool) -> list[bytes]:
        """The chunks of the buffer that are final (all of them if ``last``)."""
        start, end, limit, view = self._start, self._end, self._max, self._view
        if start == end:
            return []
        out = []
        it = self.chunker.cutter().cut_buf(view[start:end])
        while last or end - start >= limit:
            try:
                n = next(it).length
            except StopIteration:
                break
            out.append(view[start:start + n].tobytes())
            start += n
        del it
        self._start = start
        return out

    def _make_room(self, n: int) -> None:
        """Move the uncut bytes to the front of the buffer, so ``n`` more fit after them
        (in a larger buffer if they do not: a stream's first buffer holds just its first
        piece, so a one-block file costs no more memory than the block)."""
        keep = self._end - self._start
        if self._buf is not None and keep + n <= len(self._buf):
            if keep:
                self._view[:keep] = self._view[self._start:self._end]
        elif self._buf is None:
            self._buf = bytearray(n)
            self._view = memoryview(self._buf)
        else:
            old = self._view[self._start:self._end].tobytes()
            self._release()
            self._buf = bytearray(max(keep + n, BUFFER_BYTES))
            self._view = memoryview(self._buf)
            self._view[:keep] = old
        self._start, self._end = 0, keep

    def _release(self) -> None:
        if self._view is not None:
            self._view.release()
        self._buf = self._view = None


class RefBuilder:
    """Turns a file's blocks, given in order, into their block references.

    ``store(chunk) -> chunk id`` stores (or only names) each chunk; it may return a
    :class:`~concurrent.futures.Future` of the id instead (anything but bytes is taken
    for one: ``ls`` and ``log`` import this module and start without
    concurrent.futures), so large files are hashed and compressed by other threads while
    this one reads on. :meth:`add` takes each block's bytes (None for a hole found without
    reading), or :meth:`space` and :meth:`wrote` let the caller read a block straight into
    the stream's buffer; :meth:`finish` returns one reference per block."""

    def __init__(self, chunker: Chunker, store):
        self.chunker = chunker
        self.store = store
        self.lens: list[int | None] = []  # per block: its length, None for a hole
        self.chunks: list[tuple[object, int]] = []  # (id, or a Future of it; length)
        self._cutter = StreamCutter(chunker)

    def add(self, data: bytes | None) -> None:
        if data is None or is_zero(data):
            self.lens.append(None)
            return
        self.lens.append(len(data))
        self._feed(self._cutter.feed(data))

    def space(self, n: int) -> memoryview:
        """A view to read the next block's ``n`` bytes (at most) into; then :meth:`wrote`."""
        return self._cutter.space(n)

    def wrote(self, n: int) -> None:
        """Add the block of the first ``n`` bytes of the last :meth:`space` (a hole if they
        are all zeros)."""
        if self._cutter.zeros(n):
            self.lens.append(None)
            return
        self.lens.append(n)
        self._feed(self._cutter.wrote(n))

    def _feed(self, chunks: list[bytes]) -> None:
        store = self.store
        self.chunks.extend((store(c), len(c)) for c in chunks)

    def finish(self) -> list[bytes]:
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
