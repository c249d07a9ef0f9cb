"""Reading files for a scan: what the scan's worker threads run.

A worker opens, stats and reads a file, cuts it into chunks and stores each through
the commit's ``store_chunk`` (hash, dedup, compress, append to a pack), and returns the
file's block references (store/chunker.py defines the terms). Small files come in
batches, read and stored by one worker each; a large file is read by one worker while
its chunks are stored by it and ``cores - 1`` others (so both cores work even on one
large file, and no more compressors exist than cores).
The scan (capture/scan.py) decides what to read and checks what was read.

Terms:
  large     a file of more than ``SEGMENT_BLOCKS`` blocks: opened by the walking thread,
            read as it is cut (never held whole).
  probe     a path with no previous version that d_type says is a regular file: the
            walking thread does not stat it; a worker opens, stats and reads it, or hands
            it back (``("defer", stat)``) when it is large, hardlinked or not a regular
            file.
  hole      a block with no data in a sparse file, found with ``SEEK_DATA`` without
            reading it, or a block of zeros; recorded as ``HOLE_ID``, nothing stored.
  end       where a file's reads really ended. It differs from ``st_size`` for files
            whose size lies: procfs files say 0 and hold bytes, sysfs files say 4096 and
            hold fewer. What a read returns is stored, and the entry's size is the
            number of bytes stored (as restic and borg do).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as st_
import threading
from concurrent.futures import ThreadPoolExecutor

from anytime.store import clock
from anytime.store.chunker import RefBuilder
from anytime.store.localfs import read_xattrs

SEGMENT_BLOCKS = 8
#: Chunks of a large file given to the reader's pool per thread of it, at most: the one
#: it compresses and one waiting (:meth:`FileReader._submit`).
POOL_AHEAD = 2
#: Bytes of small files' chunks a batch holds read but not stored, at most: past them
#: what it holds is stored (:meth:`FileReader.read_batch`), so a batch's memory does not
#: grow with its number of files.
BATCH_BYTES = 256 << 10
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


class ReadStopped(Exception):
    """A read given up because the scan stops (:meth:`FileReader.stop`)."""


class FileReader:
    """Reads files into block references, storing their chunks with ``store(data) ->
    chunk id``; thread-safe when ``store`` is (``CommitBuilder.store_chunk`` is).
    ``chunker``: the repository's (store/chunker.py); ``batch``: a context manager
    factory a batch of small files is read in (``CommitBuilder.reading``);
    ``store_many(chunks) -> chunk ids``: ``store`` of several chunks at once
    (``CommitBuilder.store_chunks``). Call :meth:`close` at the end."""

    def __init__(self, store, block_size: int, cores: int, chunker, batch=None,
                 store_many=None):
        self.store = store
        self.batch = batch or contextlib.nullcontext
        self.store_many = store_many or (lambda chunks: [store(c) for c in chunks])
        self.bs = block_size
        self.chunker = chunker
        self.cores = cores
        self._pool: ThreadPoolExecutor | None = None  # stores large files' chunks
        self._pool_size = max(1, cores - 1)  # the reading thread stores chunks too
        self._in_pool = 0  # chunks given to the pool and not yet stored
        self._pool_lock = threading.Lock()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Make every read in progress fail (:class:`ReadStopped`) at its next block."""
        self._stop.set()

    def close(self) -> None:
        """Wait for the chunks being stored; drop those not started. Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def read_batch(self, jobs: list[tuple]) -> list:
        """:meth:`read_small` for each (path, probe, tries, last refs); an OSError is
        returned in its place. The files that are one chunk and not recent are read
        first and their chunks stored together (``store_many``), once ``BATCH_BYTES``
        of them are held and at the end: one call for many files instead of one per
        file (each releases and takes back the GIL)."""
        out: list = []
        unstored: list[int] = []  # where out holds an _Unstored chunk in place of refs
        held = 0  # bytes of those chunks
        with self.batch():
            for job in jobs:
                try:
                    got = self.read_small(*job, defer=True)
                except OSError as err:
                    got = err
                if not isinstance(got, OSError) and isinstance(got[0], _Unstored):
                    unstored.append(len(out))
                    held += len(got[0].data)
                out.append(got)
                if held >= BATCH_BYTES:
                    self._store_unstored(out, unstored)
                    unstored, held = [], 0
            self._store_unstored(out, unstored)
        return out

    def _store_unstored(self, out: list, unstored: list[int]) -> None:
        """Store the chunks ``out`` holds at ``unstored`` by one ``store_many`` call, and
        put their references in their place."""
        if unstored:
            ids = self.store_many([out[k][0].data for k in unstored])
            for k, bid in zip(unstored, ids, strict=True):
                out[k] = ([bid], *out[k][1:])

    def read_small(self, abspath: bytes, probe: bool = False, tries: int = 1,
                   last_ids: list[bytes] | None = None, defer: bool = False):
        """Read a file of at most ``SEGMENT_BLOCKS`` blocks, and read it again while it
        is recent and the last two reads differ (at most ``RETRIES`` reads in all,
        ``tries`` counted already): the confirming read happens here, in the worker,
        not as a new job.

        Returns (block references, end, stat before, stat after, xattrs, kernel time
        before, tries, references of the read before the last or ``last_ids``); or
        ``("defer", stat)`` (see :meth:`read_once`). The caller judges stability as
        before, from these. ``defer``: see :meth:`read_once`.
        """
        while True:
            got = self.read_once(abspath, probe, defer)
            if got[0] == "defer":
                return got
            ids, _end, before, after, _xattrs, started = got
            if tries >= RETRIES or not (same_stat(before, after) and recent(before, started)
                                        and ids != last_ids):
                return (*got, tries, last_ids)
            tries, last_ids = tries + 1, ids

    def read_once(self, abspath: bytes, probe: bool = False, defer: bool = False):
        """Open, read, store and close a file of at most ``SEGMENT_BLOCKS`` blocks, in a
        worker thread.

        Returns (block references, end, stat before, stat after, xattrs, kernel time
        before); end as :meth:`read_file` gives it. With ``probe`` (a new path the
        main thread did not stat), a file that is not a plain regular file of at most
        ``SEGMENT_BLOCKS`` blocks with one link is not read: ``("defer", stat)`` hands
        it back to the main thread's full path. With ``defer``, a file that is one
        chunk and not recent is read but not stored: an :class:`_Unstored` chunk
        stands in place of its references (:meth:`read_batch` stores it; a recent
        file's references are compared with the next read's at once).
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
            if 0 < size < self.bs and size <= self.chunker.min_size:
                refs, end = self._read_one_chunk(fd, size,
                                                 defer and not recent(before, started))
            else:
                refs, end = self.read_file(fd, size, before.st_blocks * 512 < size)
            return refs, end, before, os.fstat(fd), xattrs, started
        finally:
            os.close(fd)

    def _read_one_chunk(self, fd: int, size: int, defer: bool = False
                        ) -> tuple[list[bytes] | _Unstored, int | None]:
        """:meth:`read_file` for a file of one block that is one chunk (most small
        files): one pread (asking one byte more, to see the file ends where its size
        says), its id is its reference; with ``defer``, the chunk is not stored but
        returned as an :class:`_Unstored` in place of the references."""
        data = os.pread(fd, size + 1, 0)
        if len(data) != size:
            builder = RefBuilder(self.chunker, self.store)
            end = self._read_past(fd, 0, data, size, builder)
            return builder.finish(), end
        return (_Unstored(data) if defer else [self.store(data)]), None

    def read_file(self, fd: int, size: int, sparse: bool, large: bool = False
                  ) -> tuple[list[bytes], int | None]:
        """Store the content of open file ``fd`` (of ``size`` bytes by its stat, with holes
        if ``sparse``); returns (its block references, end). ``large``: its chunks are
        stored by the reader's pool while this thread reads on.

        ``end`` is None when every read returned what ``size`` says. Otherwise the file
        was read on to EOF from the first read that did not (:meth:`_read_past`) and
        ``end`` is where it ended; the references then stop there. Checking costs
        nothing for an ordinary file: its last block is read asking one byte more, which
        a file longer than its size returns; only a size that is a multiple of the block
        size (0 included) takes one more pread, at the end, to see the file ends there.
        """
        builder = RefBuilder(self.chunker, self._submit if large else self.store)
        try:
            end = self._read_blocks(fd, size, sparse, builder)
            return builder.finish(), end
        finally:
            for f in builder.futures():  # a failed read: nothing more is stored
                f.cancel()

    def read_large(self, fd: int, size: int, sparse: bool) -> tuple[list[bytes], int | None]:
        """:meth:`read_file` of a large file (in a worker of the scan's pool)."""
        return self.read_file(fd, size, sparse, large=True)

    def _submit(self, chunk: bytes):
        """Store ``chunk`` of a large file: in the reader's pool (a Future of its id)
        while it has fewer than ``POOL_AHEAD`` chunks per thread, else in this thread
        (its id). So a large file keeps one chunk per core compressing, as many
        compressors as that takes, and no more (each compressor holds megabytes); the
        one more chunk waiting per pool thread is there for it when it is done (without
        it, a pool thread that finished first waited for this one to finish its own)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._pool_size,
                                                thread_name_prefix="anytime-chunk")
            pooled = self._in_pool < self._pool_size * POOL_AHEAD
            if pooled:
                self._in_pool += 1
        if not pooled:
            return self.store(chunk)
        try:
            fut = self._pool.submit(self.store, chunk)
        except BaseException:
            self._left_pool()
            raise
        fut.add_done_callback(lambda _f: self._left_pool())
        return fut

    def _left_pool(self) -> None:
        with self._pool_lock:
            self._in_pool -= 1

    def _read_blocks(self, fd: int, size: int, sparse: bool, builder: RefBuilder
                     ) -> int | None:
        """Hand every block of ``fd`` to ``builder``; returns the end (see read_file)."""
        bs = self.bs
        nblocks = (size + bs - 1) // bs
        stop = self._stop
        for b in range(nblocks):
            if stop.is_set():
                raise ReadStopped()
            off = b * bs
            n = min(bs, size - off)
            if sparse and all_hole(fd, off, n):
                builder.add(None)
                continue
            want = n + 1 if n < bs and off + n == size else n
            got = os.preadv(fd, [builder.space(want)], off)
            if got != n:
                return self._read_past(fd, off, builder.space(got).tobytes(), size, builder)
            builder.wrote(n)
        if nblocks * bs == size:
            data = os.pread(fd, bs, size)  # the file ends at a block boundary, or not
            if data:
                return self._read_past(fd, size, data, size, builder)
        return None

    def _read_past(self, fd: int, off: int, data: bytes, size: int, builder: RefBuilder
                   ) -> int:
        """Hand a file's blocks from ``off`` to EOF to ``builder``, ``data`` already read
        there (a file whose reads end elsewhere than its ``size``); returns the end.
        Reads on after a short read, which ends a regular file only when the next
        returns nothing; stops ``READ_PAST_LIMIT`` bytes past ``size``."""
        bs = self.bs
        limit = size + READ_PAST_LIMIT
        while True:
            while len(data) < bs:
                more = os.pread(fd, bs - len(data), off + len(data))
                if not more:
                    break
                data += more
            if data:
                builder.add(data)
            end = off + len(data)
            if len(data) < bs or end >= limit:
                return end
            off = end
            data = os.pread(fd, bs, off)


class _Unstored:
    """The chunk of a file read but not stored yet (:meth:`FileReader.read_once`)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


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
