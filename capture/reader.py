"""Reading files for a scan: what the scan's worker threads run.

A worker opens, stats and reads a file, and stores each block through the commit's
``store_block`` (hash, dedup, compress, append to a pack). Small files come in batches;
large ones in segments, at most one per core at a time. The scan (capture/scan.py)
decides what to read and checks what was read.

Terms:
  segment   up to ``SEGMENT_BLOCKS`` consecutive blocks of one file, read as one unit of
            work (so both cores work even on one large file).
  probe     a path with no previous version that d_type says is a regular file: the
            walking thread does not stat it; a worker opens, stats and reads it, or hands
            it back (``("defer", stat)``) when it is large, hardlinked or not a regular
            file.
  hole      a block with no data in a sparse file, found with ``SEEK_DATA`` without
            reading it; stored as ``HOLE_ID``.
  end       where a file's reads really ended. It differs from ``st_size`` for files
            whose size lies: procfs files say 0 and hold bytes, sysfs files say 4096 and
            hold fewer. What a read returns is stored, and the entry's size is the
            number of bytes stored (as restic and borg do).
"""

from __future__ import annotations

import errno
import os
import stat as st_
import threading

from anytime.store import clock
from anytime.store.format import HOLE_ID
from anytime.store.localfs import read_xattrs

SEGMENT_BLOCKS = 8
#: Reads of a file before it is recorded as unstable (capture/scan.py).
RETRIES = 3
#: A file changed less than this before its read began is "recent" (capture/scan.py):
#: read until two reads in a row give the same blocks.
RECENT_NS = 1_000_000_000
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
#: A file that reads longer than its ``st_size`` is read on to EOF, but at most this many
#: bytes past ``st_size`` (a pseudo-file that never ends is stored cut there).
READ_PAST_LIMIT = 64 * 1024 * 1024


class FileReader:
    """Reads files into blocks with ``store(data) -> block id``; thread-safe when
    ``store`` is (``CommitBuilder.store_block`` is)."""

    def __init__(self, store, block_size: int, cores: int):
        self.store = store
        self.bs = block_size
        self._cpu_slots = threading.BoundedSemaphore(cores)

    def read_batch(self, jobs: list[tuple]) -> list:
        """:meth:`read_small` for each (path, probe, tries, last ids); an OSError is
        returned in its place."""
        out = []
        for job in jobs:
            try:
                out.append(self.read_small(*job))
            except OSError as err:
                out.append(err)
        return out

    def read_small(self, abspath: bytes, probe: bool = False, tries: int = 1,
                   last_ids: list[bytes] | None = None):
        """Read a file of at most one segment, and read it again while it is recent and
        the last two reads differ (at most ``RETRIES`` reads in all, ``tries`` counted
        already): the confirming read happens here, in the worker, not as a new job.

        Returns (block ids, end, stat before, stat after, xattrs, kernel time before,
        tries, ids of the read before the last or ``last_ids``); or ``("defer", stat)`` (see
        :meth:`read_once`). The caller judges stability as before, from these.
        """
        while True:
            got = self.read_once(abspath, probe)
            if got[0] == "defer":
                return got
            ids, _end, before, after, _xattrs, started = got
            if tries >= RETRIES or not (same_stat(before, after) and recent(before, started)
                                        and ids != last_ids):
                return (*got, tries, last_ids)
            tries, last_ids = tries + 1, ids

    def read_once(self, abspath: bytes, probe: bool = False):
        """Open, read, store and close a file of at most one segment, in a worker thread.

        Returns (block ids, end, stat before, stat after, xattrs, kernel time before);
        end as :meth:`read_segment` gives it. With
        ``probe`` (a new path the main thread did not stat), a file that is not a plain
        regular file of at most one segment with one link is not read: ``("defer",
        stat)`` hands it back to the main thread's full path.
        """
        fd = os.open(abspath, OPEN_FLAGS)
        try:
            started = clock.file_time_ns()
            before = os.fstat(fd)
            if probe and (not st_.S_ISREG(before.st_mode) or before.st_nlink > 1
                          or before.st_size > SEGMENT_BLOCKS * self.bs):
                return "defer", before
            xattrs = read_xattrs(fd)
            size = before.st_size
            nblocks = (size + self.bs - 1) // self.bs
            ids, end = self.read_segment(fd, 0, nblocks, size, before.st_blocks * 512 < size)
            return ids, end, before, os.fstat(fd), xattrs, started
        finally:
            os.close(fd)

    def read_big_segment(self, *args) -> tuple[list[bytes], int | None]:
        """A segment of a large file: at most one per core at a time (the extra worker is
        for small files, whose opens and reads wait on the kernel, not for compression)."""
        with self._cpu_slots:
            return self.read_segment(*args)

    def read_segment(self, fd: int, first: int, count: int, size: int, sparse: bool
                     ) -> tuple[list[bytes], int | None]:
        """Store blocks ``first`` .. ``first + count - 1`` of open file ``fd`` (of ``size``
        bytes by its stat, with holes if ``sparse``); returns (their ids, end).

        ``end`` is None when every read returned what ``size`` says. Otherwise the file
        was read on to EOF from the first read that did not (:meth:`read_past`) and
        ``end`` is where it ended; the ids then stop there. Checking costs nothing for an
        ordinary file: its last block is read asking one byte more, which a file longer
        than its size returns; only a size that is a multiple of the block size (0
        included) takes one more pread, at the end, to see the file ends there.
        """
        bs = self.bs
        ids = []
        store = self.store
        last = first + count
        for b in range(first, last):
            off = b * bs
            n = min(bs, size - off)
            if sparse and all_hole(fd, off, n):
                ids.append(HOLE_ID)
                continue
            want = n + 1 if n < bs and off + n == size else n
            data = os.pread(fd, want, off)
            if len(data) != n:
                more, end = self.read_past(fd, off, data, size)
                return ids + more, end
            ids.append(store(data))
        if last * bs == size:
            data = os.pread(fd, bs, size)  # the file ends at a block boundary, or not
            if data:
                more, end = self.read_past(fd, size, data, size)
                return ids + more, end
        return ids, None

    def read_past(self, fd: int, off: int, data: bytes, size: int
                  ) -> tuple[list[bytes], int]:
        """Store a file from ``off`` to EOF, ``data`` already read there (a file whose
        reads end elsewhere than its ``size``); returns (ids, end). Reads on after a
        short read, which ends a regular file only when the next returns nothing; stops
        ``READ_PAST_LIMIT`` bytes past ``size``."""
        bs = self.bs
        ids = []
        limit = size + READ_PAST_LIMIT
        while True:
            while len(data) < bs:
                more = os.pread(fd, bs - len(data), off + len(data))
                if not more:
                    break
                data += more
            if data:
                ids.append(self.store(data))
            end = off + len(data)
            if len(data) < bs or end >= limit:
                return ids, end
            off = end
            data = os.pread(fd, bs, off)


def all_hole(fd: int, off: int, n: int) -> bool:
    """True if [off, off+n) holds no data (sparse hole), asked without reading."""
    try:
        nxt = os.lseek(fd, off, SEEK_DATA)
    except OSError as e:
        return e.errno == errno.ENXIO  # no data after off
    return nxt >= off + n


def same_stat(before: os.stat_result, after: os.stat_result) -> bool:
    """True if nothing a write changes differs between two stats of one file."""
    return (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)


def recent(before: os.stat_result, started_ns: int) -> bool:
    """True if the file changed less than RECENT_NS before its read began."""
    return before.st_ctime_ns > started_ns - RECENT_NS
