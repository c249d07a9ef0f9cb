"""The view of a volume at an instant: stat, list, read, readlink, xattrs.

This is the one place that decides what a volume at time T looks like as a
filesystem; the CLI, the FUSE/WinFsp adapter and the web page only translate it.

A :class:`View` holds no LMDB transaction between calls: each call opens a short read
transaction, so a view may be shared by threads and never blocks the writer. A view
at or before the volume's horizon never changes (the namespace calls it final).

A view never looks past the horizon of the volume record it was given: it reads at
``at = min(instant, horizon)``. Records after the horizon belong to a commit still
being written (a staged commit, store/writer.py) and show only once it lands; a view
of a later instant made after that sees them.
"""

from __future__ import annotations

import threading

from anytime.store import timeline
from anytime.store.errors import ContentUnavailable
from anytime.store.format import FLAG_UNREADABLE, HOLE_ID, KIND_DIR, KIND_FILE, Entry
from anytime.store.volumes import Volume


def norm(path: bytes | str) -> bytes:
    """A path inside a volume as index bytes: no leading/trailing slash, no '.' parts."""
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    parts = [p for p in path.split(b"/") if p and p != b"."]
    return b"/".join(parts)


#: Blocks past a sequential read whose chunks are loaded ahead (store/readahead.py).
READ_AHEAD = 2
#: Files whose read position a view keeps, at most (then forgotten).
SEQ_KEPT = 256

#: Why a version recorded unreadable (``FLAG_UNREADABLE``) has no content.
UNREADABLE = ("the file could not be read when this version was captured, so its content "
              "at this instant is unknown")


class View:
    def __init__(self, repo, vol: Volume, instant: int):
        self.repo = repo
        self.vol = vol
        self.instant = instant
        self.at = min(instant, vol.horizon)  # what lookups read: never past the horizon
        self.bs = vol.block_size
        self._lock = threading.Lock()
        #: file id -> (highest block read, highest block read ahead)
        self._seq: dict[int, tuple[int, int]] = {}

    def lookup(self, path: bytes) -> Entry | None:
        with self.repo.read_txn() as txn:
            return timeline.entry_at(self.repo, txn, self.vol.id, path, self.at)

    def listdir(self, path: bytes) -> list[tuple[bytes, Entry]]:
        with self.repo.read_txn() as txn:
            return timeline.list_dir_at(self.repo, txn, self.vol.id, path, self.at)

    def block_ids(self, entry: Entry, offset: int, size: int) -> tuple[int, list[bytes]]:
        """(first block number, references) of the blocks covering [offset,
        offset+size) (store/chunker.py: equal references mean equal content)."""
        if entry.flags & FLAG_UNREADABLE:
            raise ContentUnavailable(UNREADABLE)
        end = min(offset + size, entry.size)
        if end <= offset:
            return 0, []
        first, last = offset // self.bs, (end - 1) // self.bs
        with self.repo.read_txn() as txn:
            return first, timeline.blocks_at(self.repo, txn, self.vol.id, entry.file_id,
                                             first, last - first + 1, self.at)

    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a file entry; holes read as zeros, untouched."""
        if entry.kind != KIND_FILE:
            raise IsADirectoryError(entry.kind == KIND_DIR and "is a directory" or "not a file")
        if entry.flags & FLAG_UNREADABLE:
            raise ContentUnavailable(UNREADABLE)
        end = min(offset + size, entry.size)
        if end <= offset:
            return b""
        bs = self.bs
        first, last = offset // bs, (end - 1) // bs
        ahead_from, ahead_to = self._ahead(entry, first, last)
        parts = []
        with self.repo.read_txn() as txn:
            refs = timeline.blocks_at(self.repo, txn, self.vol.id, entry.file_id, first,
                                      last - first + 1, self.at)
            if ahead_to > ahead_from:
                later = timeline.blocks_at(self.repo, txn, self.vol.id, entry.file_id,
                                           ahead_from, ahead_to - ahead_from, self.at)
                self.repo.read_ahead([r for r in later if r != HOLE_ID])
            for i, ref in enumerate(refs):
                bstart = (first + i) * bs
                blen = min(bs, entry.size - bstart)
                lo = max(offset - bstart, 0)
                hi = min(end - bstart, blen)
                if ref == HOLE_ID:  # zeros, only as many as asked for
                    parts.append(bytes(hi - lo))
                    continue
                got = self.repo.read_ref(txn, ref, lo, hi)
                short = hi - lo - sum(map(len, got))
                parts += got
                if short > 0:  # a block stored before the file grew past it
                    parts.append(bytes(short))
        return b"".join(parts)

    def _ahead(self, entry: Entry, first: int, last: int) -> tuple[int, int]:
        """Blocks [start, stop) to read ahead of a read of blocks first..last: the next
        READ_AHEAD blocks not asked for yet, when the file is read in sequence (from its
        start, or within READ_AHEAD blocks of where its reads got to: the kernel sends
        a read and its readahead at once, and may serve the later first), never past
        its last block."""
        n_blocks = -(-entry.size // self.bs)
        with self._lock:
            hi, done = (-1, -1) if first == 0 else self._seq.get(entry.file_id, (-1, -1))
            if hi - READ_AHEAD <= first <= hi + READ_AHEAD:
                hi = max(hi, last)
                start = max(last, done) + 1
                stop = max(start, min(last + READ_AHEAD, n_blocks - 1) + 1)
                done = max(done, stop - 1)
            else:  # a jump: no read-ahead until reads follow on from here
                hi = done = last
                start = stop = last + 1
            if entry.file_id not in self._seq and len(self._seq) >= SEQ_KEPT:
                self._seq.clear()
            self._seq[entry.file_id] = (hi, done)
        return start, stop

    def iter_read(self, entry: Entry, chunk: int = 1 << 20):
        """The whole content of a file entry, in pieces."""
        if entry.flags & FLAG_UNREADABLE:
            raise ContentUnavailable(UNREADABLE)
        off = 0
        while off < entry.size:
            data = self.read(entry, off, chunk)
            yield data
            off += len(data)
