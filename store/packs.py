"""Pack files: append-only files of self-describing block records.

A pack starts with ``PACK_HEADER`` and holds records ``RECORD_HEADER | stored bytes``.
Each record names its block id, codec, sizes and the xxh3-64 checksum of the stored
bytes, so a pack can be read and checked without the index (``iter_records``).

This module encodes and decodes; the bytes go to and come from a
:class:`~anytime.store.packstore.PackStore`, whose contract says what is durable when.

Thread-safety: :class:`PackWriter` serialises appends with a lock, so hashing and
compressing threads may call :meth:`PackWriter.append` concurrently. Reading goes
through the store, which is safe from any thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from .errors import AnytimeError, DamagedData
from .format import (
    CODEC_RAW,
    FORMAT_VERSION,
    HISTORY_MAGIC,
    PACK_HEADER,
    PACK_MAGIC,
    RECORD_HEADER,
    RECORD_MAGIC,
)
from .packstore import PackStore

#: ``xxhash.xxh3_64_intdigest``, imported by the first record written or read, so that
#: commands that read no block start without it (one global lookup per record, as
#: before for the module).
_xxh3 = None


def _import_xxh3():
    global _xxh3
    from xxhash import xxh3_64_intdigest

    _xxh3 = xxh3_64_intdigest
    return xxh3_64_intdigest


#: Records are appended to the store in batches of about this many bytes (or
#: WRITE_PARTS headers and payloads), not one call each.
WRITE_BYTES = 1 << 20
WRITE_PARTS = 512
#: Bytes :func:`iter_records` asks the store for at a time.
WALK_BYTES = 1 << 20


class PackWriter:
    """Appends records to new packs of ``store``, starting a new pack past ``target``
    bytes.

    Nothing is durable until :meth:`sync` returns; the caller commits the index only
    after that (the one commit point). A writer that lives across commits (a
    :class:`~anytime.store.session.WriterSession`) syncs with ``keep_open``, so one
    pack takes the records of many commits, and calls :meth:`committed` after each
    commit point, so the next commit lists only the packs written since.
    """

    def __init__(self, store: PackStore, target: int):
        self.store = store
        self.target = target
        self.lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self.finished: list[tuple[bytes, int, int]] = []  # (pack id, size, records)
        self._handle = None
        self._id = b""
        self._size = 0
        self._records = 0
        self._unsynced: list[bytes] = []  # sealed packs whose names are not yet durable
        #: the open pack's id once a ``keep_open`` sync made its prefix durable (its name
        #: synced too); b"" when no such pack is open
        self.open_pack = b""
        self._buf: list[bytes] = []  # record headers and bytes not yet appended
        self._buffered = 0
        #: set by a failed write: the open pack may hold a torn record, so nothing more is
        #: appended and the commit must fail (the pack is discarded at once)
        self._broken: BaseException | None = None

    def _open(self) -> None:
        self._id = os.urandom(16)  # what secrets.token_bytes does
        self._handle = self.store.create(self._id)
        header = PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION, self._id, 0)
        self._buf.append(header)
        self._buffered = self._size = len(header)
        self._records = 0

    def append(self, block_id: bytes, codec: int, raw_len: int, stored: bytes,
               magic: bytes = RECORD_MAGIC) -> tuple[bytes, int]:
        """Append one record (a chunk; with ``HISTORY_MAGIC``, a history record whose id
        is ``block_id``); returns (pack id, offset of the record header)."""
        header = RECORD_HEADER.pack(magic, block_id, codec, raw_len, len(stored),
                                    (_xxh3 or _import_xxh3())(stored))
        n = len(header) + len(stored)
        with self.lock:
            if self._broken is not None:
                raise self._broken
            try:
                if self._handle is None:
                    self._open()
                offset = self._size
                buf = self._buf
                buf += (header, stored)
                self._buffered += n
                if self._buffered >= WRITE_BYTES or len(buf) >= WRITE_PARTS:
                    self._write_out()
                self._size += n
                self._records += 1
                pack_id = self._id
                if self._size >= self.target:
                    self._close()
            except AnytimeError as e:
                self._fail(e)
        return pack_id, offset

    def _write_out(self) -> None:
        """Append the buffered records (with the lock held): one call for many small
        records instead of one each."""
        if self._buf:
            data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
            self._buf, self._buffered = [], 0
            self.store.append(self._handle, data)

    def _fail(self, err: AnytimeError) -> None:
        """Give up on the open pack after a failed write (lock held): discard it and
        raise ``err`` (:class:`RepositoryFull` for a full store), and again from every
        later call."""
        self._buf, self._buffered = [], 0
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                if self._id == self.open_pack:
                    # its prefix holds commits: left as it is, for the next writer to cut
                    # back to what the index lists
                    self.store.seal(handle)
                else:
                    self.store.discard(handle)
            except (AnytimeError, OSError):
                pass  # left for the next writer, which deletes packs no commit lists
        self._broken = err
        raise err from None

    def _close(self) -> None:
        if self._handle is None:
            return
        self._write_out()
        self.store.seal(self._handle)  # durable now, so the final commit waits for less
        self._handle = None
        self.finished.append((self._id, self._size, self._records))
        if self.open_pack != self._id:  # an open pack's name was synced when flushed
            self._unsynced.append(self._id)
        self.open_pack = b""

    def sync(self, keep_open: bool = False) -> list[tuple[bytes, int, int]]:
        """Seal the open pack and make every pack written durable; returns them all:
        (pack id, size, records) each, since the last :meth:`committed`.

        With ``keep_open`` (where the store can flush), the open pack is not sealed but
        flushed: its bytes so far are durable, it is the last of those returned, with
        its size now, and :attr:`open_pack` names it."""
        with self._sync_lock:  # a second caller returns only once the names are durable
            with self.lock:
                if self._broken is not None:
                    raise self._broken
                opened = None
                try:
                    if keep_open and self.store.can_flush and self._handle is not None:
                        self._write_out()
                        self.store.flush(self._handle)
                        opened = (self._id, self._size, self._records)
                        if self.open_pack != self._id:
                            self.open_pack = self._id
                            self._unsynced.append(self._id)
                    else:
                        self._close()
                except AnytimeError as e:
                    self._fail(e)
                # what we return is what we made durable
                done = list(self.finished) + ([opened] if opened else [])
                unsynced, self._unsynced = self._unsynced, []
            try:  # appenders go on meanwhile
                self.store.sync(unsynced)
            except BaseException:
                with self.lock:
                    self._unsynced[:0] = unsynced
                raise
        return done

    def release(self) -> None:
        """Let go of the open pack without deleting it (its prefix may be listed):
        sealed if the store still can, else just closed by being dropped; this writer
        is not used again."""
        with self.lock:
            handle, self._handle = self._handle, None
            self._buf, self._buffered = [], 0
            if handle is not None:
                try:
                    self.store.seal(handle)
                except (AnytimeError, OSError):
                    pass

    def committed(self) -> None:
        """The packs returned by the last :meth:`sync` are listed by a commit: forget
        them (the open pack stays open)."""
        with self.lock:
            self.finished.clear()

    def abort(self, keep: set[bytes] = frozenset()) -> None:
        """Drop the packs written by this writer that nothing references (all but
        ``keep``, packs already indexed)."""
        with self.lock:
            self._buf, self._buffered = [], 0
            if self._handle is not None:
                handle, self._handle = self._handle, None
                self.store.discard(handle)
            for pack_id, _, _ in self.finished:
                if pack_id not in keep:
                    self.store.delete(pack_id)
            self.finished.clear()
            self._unsynced.clear()


class PackReader:
    """Reads records by (pack id, offset) from a pack store."""

    def __init__(self, store: PackStore):
        self.store = store

    def read_record(self, pack_id: bytes, offset: int, stored_len: int, block_id: bytes
                    ) -> tuple[int, int, bytes]:
        """Returns (codec, raw length, stored bytes), verified against the header."""
        n = RECORD_HEADER.size + stored_len
        buf = self.store.read(pack_id, offset, n)
        if len(buf) != n:
            raise DamagedData(f"pack {pack_id.hex()} is truncated at offset {offset}")
        magic, bid, codec, raw_len, slen, check = RECORD_HEADER.unpack_from(buf, 0)
        stored = buf[RECORD_HEADER.size:]
        if (magic != RECORD_MAGIC or bid != block_id or slen != stored_len
                or (_xxh3 or _import_xxh3())(stored) != check):
            raise DamagedData(f"block {block_id.hex()[:16]} in pack {pack_id.hex()} "
                              f"at offset {offset} is damaged (checksum mismatch)")
        return codec, raw_len, stored

    def close(self) -> None:
        self.store.close()


class _Walk:
    """Sequential reads of one pack through its store, ``WALK_BYTES`` at a time."""

    def __init__(self, store: PackStore, pack_id: bytes):
        self.store, self.pack_id = store, pack_id
        self.buf, self.start, self.pos = b"", 0, 0  # buf holds the pack from start

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes, fewer at the end of the pack."""
        end = self.pos + n
        if end > self.start + len(self.buf):
            keep = self.buf[self.pos - self.start:]
            more = self.store.read(self.pack_id, self.start + len(self.buf),
                                   max(WALK_BYTES, end - self.start - len(self.buf)))
            self.buf, self.start = keep + more, self.pos
        out = self.buf[self.pos - self.start:end - self.start]
        self.pos += len(out)
        return out


def walk_records(store: PackStore, pack_id: bytes, payload: bool = False
                 ) -> Iterator[tuple]:
    """Walk pack ``pack_id`` of ``store`` without the index: every record, chunks and
    history records alike.

    Yields (magic, offset, id, codec, raw length, stored length, checksum ok), and the
    stored bytes as an eighth item with ``payload``. Stops at the first record whose
    header is unreadable or whose bytes are cut short (a crash leaves a torn tail).
    Raises what :meth:`PackStore.read` raises (a missing pack, an I/O error).
    """
    walk = _Walk(store, pack_id)
    head = walk.take(PACK_HEADER.size)
    if len(head) < PACK_HEADER.size or PACK_HEADER.unpack(head)[0] != PACK_MAGIC:
        return
    offset = PACK_HEADER.size
    xxh3 = _xxh3 or _import_xxh3()
    while True:
        h = walk.take(RECORD_HEADER.size)
        if len(h) < RECORD_HEADER.size:
            return
        magic, bid, codec, raw_len, slen, check = RECORD_HEADER.unpack(h)
        if magic not in (RECORD_MAGIC, HISTORY_MAGIC):
            return
        stored = walk.take(slen)
        if len(stored) < slen:
            return
        got = (magic, offset, bid, codec, raw_len, slen, xxh3(stored) == check)
        yield (*got, stored) if payload else got
        offset += RECORD_HEADER.size + slen


def iter_records(store: PackStore, pack_id: bytes
                 ) -> Iterator[tuple[int, bytes, int, int, int, bool]]:
    """The chunk records of a pack, as :func:`walk_records` finds them: (offset, chunk
    id, codec, raw length, stored length, checksum ok)."""
    for magic, *rest in walk_records(store, pack_id):
        if magic == RECORD_MAGIC:
            yield tuple(rest)


__all__ = ["PackWriter", "PackReader", "iter_records", "walk_records", "CODEC_RAW"]
