"""Pack files: append-only files of self-describing block records.

A pack starts with ``PACK_HEADER`` and holds records ``RECORD_HEADER | stored bytes``.
Each record names its block id, codec, sizes and the xxh3-64 checksum of the stored
bytes, so a pack can be read and checked without the index (``iter_records``).

Thread-safety: :class:`PackWriter` serialises appends with a lock, so hashing and
compressing threads may call :meth:`PackWriter.append` concurrently. Reading uses
``os.pread`` on cached descriptors and is safe from any thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from . import modes, space
from .errors import DamagedData
from .format import (
    CODEC_RAW,
    FORMAT_VERSION,
    PACK_HEADER,
    PACK_MAGIC,
    RECORD_HEADER,
    RECORD_MAGIC,
)

#: ``xxhash.xxh3_64_intdigest``, imported by the first record written or read, so that
#: commands that read no block start without it (one global lookup per record, as
#: before for the module).
_xxh3 = None


def _import_xxh3():
    global _xxh3
    from xxhash import xxh3_64_intdigest

    _xxh3 = xxh3_64_intdigest
    return xxh3_64_intdigest


def pack_path(root: str, pack_id: bytes) -> str:
    h = pack_id.hex()
    return os.path.join(root, "packs", h[:2], h + ".pack")


#: Records are written to the pack file in batches of about this many bytes (or
#: WRITE_PARTS headers and payloads), not one system call each.
WRITE_BYTES = 1 << 20
WRITE_PARTS = 512


class PackWriter:
    """Appends records to pack files, starting a new pack past ``target`` bytes.

    Nothing is durable until :meth:`sync` returns; the caller commits the index only
    after that (the one commit point).
    """

    def __init__(self, root: str, target: int):
        self.root = root
        self.target = target
        self.lock = threading.Lock()
        self.finished: list[tuple[bytes, int, int]] = []  # (pack id, size, records)
        self._fd: int | None = None
        self._id = b""
        self._size = 0
        self._records = 0
        self._unsynced: list[int] = []
        self._buf: list[bytes] = []  # record headers and bytes not yet written
        self._buffered = 0
        #: set by a failed write: the open pack may hold a torn record, so nothing more is
        #: appended and the commit must fail (the pack is deleted by abort)
        self._broken: BaseException | None = None
        self._dropped: list[bytes] = []

    def _open(self) -> None:
        self._id = os.urandom(16)  # what secrets.token_bytes does
        path = pack_path(self.root, self._id)
        modes.make_dir(os.path.dirname(path))
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           modes.FILE_MODE)
        header = PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION, self._id, 0)
        os.write(self._fd, header)
        self._size = len(header)
        self._records = 0

    def append(self, block_id: bytes, codec: int, raw_len: int, stored: bytes
               ) -> tuple[bytes, int]:
        """Append one record; returns (pack id, offset of the record header)."""
        header = RECORD_HEADER.pack(RECORD_MAGIC, block_id, codec, raw_len, len(stored),
                                    (_xxh3 or _import_xxh3())(stored))
        n = len(header) + len(stored)
        with self.lock:
            if self._broken is not None:
                raise self._broken
            try:
                if self._fd is None:
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
            except OSError as e:
                self._fail(e)
        return pack_id, offset

    def _write_out(self) -> None:
        """Write the buffered records (with the lock held): one system call for many
        small records instead of one each."""
        if self._buf:
            data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
            self._buf, self._buffered = [], 0
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def _fail(self, err: OSError) -> None:
        """Give up on the open pack after a failed write (lock held): raise
        :class:`RepositoryFull` for a full disk, else ``err``; every later call raises it
        too."""
        self._buf, self._buffered = [], 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._dropped.append(self._id)
        failure: BaseException = err
        if space.is_full(err, self.root):
            failure = space.full_error(self.root, "writing a pack")
        self._broken = failure
        raise failure from None

    def _close(self) -> None:
        if self._fd is None:
            return
        self._write_out()
        os.fsync(self._fd)  # sync now so the final commit waits for less
        os.close(self._fd)
        self.finished.append((self._id, self._size, self._records))
        self._fd = None

    def sync(self) -> list[tuple[bytes, int, int]]:
        """Close the open pack and make every pack written durable; returns them all."""
        with self.lock:
            if self._broken is not None:
                raise self._broken
            try:
                self._close()
            except OSError as e:
                self._fail(e)
            done = list(self.finished)  # what we return is what we made durable
        try:
            for d in {os.path.dirname(pack_path(self.root, p)) for p, _, _ in done} | {
                    os.path.join(self.root, "packs")}:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            space.check(e, self.root, "making packs durable")
            raise
        return done

    def abort(self, keep: set[bytes] = frozenset()) -> None:
        """Drop the packs written by this writer that nothing references (all but
        ``keep``, packs already indexed)."""
        with self.lock:
            self._buf, self._buffered = [], 0
            if self._fd is not None:
                os.close(self._fd)
                self.finished.append((self._id, self._size, self._records))
                self._fd = None
            for pack_id in [p for p, _, _ in self.finished] + self._dropped:
                if pack_id in keep:
                    continue
                try:
                    os.unlink(pack_path(self.root, pack_id))
                except FileNotFoundError:
                    pass
            self.finished.clear()
            self._dropped.clear()


class PackReader:
    """Reads records by (pack id, offset), keeping descriptors open."""

    def __init__(self, root: str):
        self.root = root
        self._fds: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def _fd(self, pack_id: bytes) -> int:
        fd = self._fds.get(pack_id)
        if fd is None:
            with self._lock:
                fd = self._fds.get(pack_id)
                if fd is None:
                    try:
                        fd = os.open(pack_path(self.root, pack_id), os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        raise DamagedData(f"pack {pack_id.hex()} is missing from the "
                                          f"repository") from None
                    self._fds[pack_id] = fd
        return fd

    def read_record(self, pack_id: bytes, offset: int, stored_len: int, block_id: bytes
                    ) -> tuple[int, int, bytes]:
        """Returns (codec, raw length, stored bytes), verified against the header."""
        n = RECORD_HEADER.size + stored_len
        buf = os.pread(self._fd(pack_id), n, offset)
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
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def iter_records(path: str) -> Iterator[tuple[int, bytes, int, int, int, bool]]:
    """Walk a pack file without the index.

    Yields (offset, block id, codec, raw length, stored length, checksum ok). Stops at
    the first record whose header is unreadable (a crash leaves a torn tail).
    """
    with open(path, "rb") as f:
        head = f.read(PACK_HEADER.size)
        if len(head) < PACK_HEADER.size or PACK_HEADER.unpack(head)[0] != PACK_MAGIC:
            return
        offset = PACK_HEADER.size
        while True:
            h = f.read(RECORD_HEADER.size)
            if len(h) < RECORD_HEADER.size:
                return
            magic, bid, codec, raw_len, slen, check = RECORD_HEADER.unpack(h)
            if magic != RECORD_MAGIC:
                return
            stored = f.read(slen)
            if len(stored) < slen:
                return
            yield offset, bid, codec, raw_len, slen, (_xxh3 or _import_xxh3())(stored) == check
            offset += RECORD_HEADER.size + slen


__all__ = ["PackWriter", "PackReader", "iter_records", "pack_path", "CODEC_RAW"]
