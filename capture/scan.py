"""Incremental scan: walk a directory tree and commit what changed since the last scan.

Terms:
  stat cache   the previous version of each path, read from the index. A regular file
               whose kind, size, mtime, ctime and inode all match it is not read again.
  large file,  what the worker threads read (capture/reader.py): large files one by
  probe        one, and small files and new paths that look like regular files, in
               batches.
  unstable     a file that kept changing while it was read: after ``RETRIES`` reads
               whose before/after stat differ, it is recorded with ``FLAG_UNSTABLE``.
  recent       a file whose ctime is less than ``RECENT_NS`` before its read began.
               write(2) stamps a file when it starts, so a write still copying data
               when the read begins leaves the before and after stats equal. A recent
               file is therefore read until two reads in a row give the same blocks
               (the second read only hashes: its blocks are already stored). Limit: a
               single write that began ``RECENT_NS`` before the read and stalls for
               two whole reads goes unnoticed.
  unreadable   a regular file that could not be opened or read (EACCES, EIO, ...): it is
               recorded at this instant with ``FLAG_UNREADABLE``, its metadata from
               lstat and no content, so no view shows earlier content as current; the
               next scan that can read it records its content again. The snapshot is
               then partial.

Excludes and mount points (capture/excludes.py): an excluded entry is not captured, and
recorded as deleted if it was before. A directory where another filesystem is mounted
that the scan does not cross (anytime's own mounts always, any with
``one_file_system``) is recorded as an empty directory.

A directory that vanishes or cannot be read keeps its previous versions (nothing is
recorded as deleted for it); the snapshot is then partial. Paths are bytes throughout.
"""

from __future__ import annotations

import errno
import gc
import os
import stat as st_
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from anytime.store import clock, timeline
from anytime.store.format import (
    FLAG_DENSE,
    FLAG_UNREADABLE,
    FLAG_UNSTABLE,
    HOLE_ID,
    KIND_DELETED,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MAX_INSTANT,
    MAX_NAME,
    Entry,
    join_path,
    kind_of,
)
from anytime.store.localfs import read_xattrs
from anytime.store.writer import CommitBuilder

from .excludes import ANYTIME_FSTYPE, Excluder, mounts_of_type
from .reader import OPEN_FLAGS, RETRIES, SEGMENT_BLOCKS, FileReader, recent, same_stat

#: GIL switch interval while scanning (seconds; CPython's default is 0.005).
SWITCH_INTERVAL = 0.0005
#: The cyclic garbage collector's first threshold while scanning (CPython's is 700
#: allocations): a scan allocates and frees a dozen tuples per file and keeps hundreds
#: of thousands of records until its commit, so at 700 the collector ran about 500
#: times in a first snapshot of 50,000 small files (twice over every object), about
#: 1.5% of its CPU time; at this threshold, about 10 times.
GC_THRESHOLD = 20_000
#: Files queued for the workers at most (small files in batches, large files one each;
#: a large file holds a descriptor until its read is checked).
MAX_INFLIGHT = 128
#: Files of at most SEGMENT_BLOCKS blocks are handed to the workers this many at a time
#: (a worker holds at most ``reader.BATCH_BYTES`` of their chunks unstored). Fewer
#: batches are fewer hand-offs, lookup transactions and compression calls (each makes a
#: new zstd context); four batches in flight keep the three workers busy:
#: docs/performance.md "First snapshot of small files".
BATCH_FILES = 32


def unchanged(prev: Entry | None, s: os.stat_result, kind: int) -> bool:
    """True if ``prev`` holds what ``s`` describes (a version recorded unreadable never
    does: its content is still to be read)."""
    return (prev is not None and prev.kind == kind and prev.src_ino == s.st_ino
            and prev.mtime_ns == s.st_mtime_ns and prev.ctime_ns == s.st_ctime_ns
            and (kind == KIND_DIR or prev.size == s.st_size)
            and not prev.flags & FLAG_UNREADABLE)


class Interrupted(KeyboardInterrupt):
    """A scan stopped by SIGINT (or what the caller maps to it) before its commit:
    nothing was committed, but ``blocks``/``bytes`` stored so far are kept (see
    :meth:`~anytime.store.writer.CommitBuilder.checkpoint`)."""

    def __init__(self, blocks: int, nbytes: int):
        super().__init__(blocks, nbytes)
        self.blocks, self.bytes = blocks, nbytes


@dataclass
class ScanReport:
    """What a scan did. ``skipped`` lists (path, reason) for entries it could not read,
    which keep their previous versions; ``unreadable`` the files recorded as unreadable."""

    instant: int = 0
    volume: str = ""
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    others: int = 0  # fifos, sockets, device nodes
    files_read: int = 0
    bytes_read: int = 0
    changed: int = 0
    deleted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    unstable: list[str] = field(default_factory=list)
    #: files whose reads ended elsewhere than their st_size said (stored as read)
    resized: list[str] = field(default_factory=list)
    #: entries left out by exclude patterns
    excluded: int = 0
    #: (path, why) of mount points not crossed, recorded as empty directories
    mounts: list[tuple[str, str]] = field(default_factory=list)
    #: the commit's block counts: blocks_new, bytes_new, bytes_stored, blocks_dup
    stored: dict = field(default_factory=dict)
    committed: bool = False

    @property
    def partial(self) -> bool:
        return bool(self.skipped or self.unreadable)


@dataclass
class _FileJob:
    path: bytes  # relative to the volume root
    abspath: bytes
    entry: Entry | None  # None until a probe job's first read
    fd: int | None  # open by the main thread for large files
    before: os.stat_result | None
    file_id: int
    existing: bool  # file_id already had blocks: diff against them
    segments: list[Future] = field(default_factory=list)  # the read (one future)
    tries: int = 1
    batch_index: int = 0
    probe: bool = False  # a new path not yet stat'ed by the main thread
    started_ns: int = 0  # kernel time just before ``before`` was taken
    last_ids: list[bytes] | None = None  # block references of the previous read
    end: int | None = None  # where the last read really ended, if not at st_size
    old: Entry | None = None  # the previous version of the path
    link: tuple[int, int] | None = None  # (dev, ino) of a file with more than one link


class Scanner:
    """One scan of ``source`` into volume ``vol``; call :meth:`run` once."""

    def __init__(self, repo, vol, source: bytes, progress=None, workers: int | None = None,
                 excluder: Excluder | None = None, one_file_system: bool = False,
                 session=None):
        self.repo = repo
        self.vol = vol
        self.vid = vol.id
        self.source = source
        self.bs = vol.block_size
        self.progress = progress
        # a writer session's (store/session.py) shares its packs with other commits
        self.builder = session.builder(vol) if session else CommitBuilder(repo, vol)
        # One worker more than cores: while one waits on a read or the pack lock, the
        # cores stay busy compressing (measured: 0.64 s vs 0.76 s on the stdlib tree).
        self.pool = ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 2) + 1,
                                       thread_name_prefix="anytime-read")
        self.reader = FileReader(self.builder.store_chunk, self.bs, os.cpu_count() or 2,
                                 repo.chunker, batch=self.builder.reading,
                                 store_many=self.builder.store_chunks)
        self.report = ScanReport(volume=vol.name)
        #: no commit when nothing changed (the watcher's scans; a snapshot always commits)
        self.skip_empty = False
        #: the commit's instant (None: when it commits; see CommitBuilder.commit)
        self.instant: int | None = None
        self.pending: deque[_FileJob] = deque()
        self.inflight = 0
        self._batch: list[_FileJob] = []
        self.hardlinks: dict[tuple[int, int], int] = {}
        # other links of a file met while it is read: recorded once the read tells how
        self.link_waits: dict[tuple[int, int], list[tuple[bytes, Entry]]] = {}
        self.unreadable_links: set[tuple[int, int]] = set()
        self.txn = None
        self.inodes_known = True  # does the index hold inode records of this volume?
        self.excluder = excluder
        self.one_file_system = one_file_system
        self.dev = None  # the root's st_dev
        inside = source.rstrip(b"/") + b"/"
        self.anytime_mounts = {m for m in mounts_of_type(ANYTIME_FSTYPE)
                               if m.startswith(inside)}
        try:
            rs = os.stat(repo.root)
            self.exclude = {(rs.st_dev, rs.st_ino)}
        except OSError:
            self.exclude = set()

    # --- walking -------------------------------------------------------------------------
    def run(self, info: dict, label: str | None = None) -> ScanReport:
        # The walking thread makes a system call per entry and must get the GIL back
        # quickly from the compressing threads: a short switch interval does that.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        thresholds = gc.get_threshold()
        gc.set_threshold(max(GC_THRESHOLD, thresholds[0]), *thresholds[1:])
        try:
            return self._run(info, label)
        finally:
            sys.setswitchinterval(interval)
            gc.set_threshold(*thresholds)

    def _run(self, info: dict, label: str | None) -> ScanReport:
        try:
            with self.repo.read_txn() as txn:
                self.txn = txn
                # A first snapshot knows no inodes: no lookup per new file.
                self.inodes_known = timeline.has_inodes(self.repo, txn, self.vid)
                self._scan_root()
                self._drain(0)
            self.txn = None
            r = self.report
            info = dict(info, files=r.files, dirs=r.dirs, symlinks=r.symlinks, others=r.others,
                        excluded=r.excluded, mounts_skipped=len(r.mounts),
                        files_read=r.files_read,
                        bytes_read=r.bytes_read, changed=r.changed, deleted=r.deleted,
                        skipped=len(r.skipped), unreadable=len(r.unreadable),
                        unstable=len(r.unstable),
                        resized=len(r.resized), partial=r.partial)
            info = self.commit_info(info)
            if self.skip_empty and not (r.changed or r.deleted):
                self.builder.abort()  # nothing to record: no commit
                return r
            r.instant = self.builder.commit(info, label=label, instant=self.instant)
            r.stored = dict(self.builder.stats)
            r.committed = True
            return r
        except BaseException as err:
            self.reader.stop()  # large files being read stop at their next block
            for job in self.pending:
                for f in job.segments:
                    f.cancel()
                if job.fd is not None:
                    os.close(job.fd)
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.reader.close()
            if isinstance(err, KeyboardInterrupt) and not self.builder.done:
                # keep what was stored, as borg's checkpoints and restic's saved index
                # do: the re-run of a long first snapshot finds these blocks
                raise Interrupted(*self.builder.checkpoint()) from None
            self.builder.abort()
            raise
        finally:
            self.pool.shutdown(wait=True)
            self.reader.close()

    def commit_info(self, info: dict) -> dict:
        """The commit record's fields from the capture (a kind of scan may change them)."""
        return info

    def _scan_root(self) -> None:
        try:
            s = os.lstat(self.source)
        except OSError as e:
            raise FileNotFoundError(e.errno, f"cannot read {os.fsdecode(self.source)}: "
                                    f"{e.strerror}") from None
        if not st_.S_ISDIR(s.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{os.fsdecode(self.source)} is not a "
                                     f"directory; snapshot takes a directory tree")
        prev = timeline.entry_at(self.repo, self.txn, self.vid, b"", MAX_INSTANT)
        self.dev = s.st_dev
        self._record_dir(b"", self.source, s, prev)

    def _skip(self, path: bytes, reason: str) -> None:
        self.report.skipped.append((os.fsdecode(path), reason))
        if self.progress:
            self.progress.warn(f"skipped {os.fsdecode(path)}: {reason}")

    def _record_dir(self, rel: bytes, abspath: bytes, s: os.stat_result, prev: Entry | None):
        self.report.dirs += 1
        try:
            it = os.scandir(abspath)
        except OSError as e:
            self._skip(abspath, e.strerror or str(e))
            return
        if not unchanged(prev, s, KIND_DIR):
            e = Entry.from_stat(s, KIND_DIR)
            e.xattrs = read_xattrs(abspath)
            self.builder.put_entry(rel, e)
            self.report.changed += 1
        before = {n: e for n, e in timeline.list_dir_at(self.repo, self.txn, self.vid, rel,
                                                         MAX_INSTANT)}
        self.repo.map_trimmer.touched(1 + len(before) // 64)  # about one page per 64 names
        seen = set()
        subdirs = []
        excluded = self.excluder.excluded if self.excluder else None
        with it:
            try:
                children = list(it)
            except OSError as e:
                self._skip(abspath, e.strerror or str(e))
                return
        for de in children:
            name = de.name
            crel = join_path(rel, name)
            if excluded is not None and excluded(name, de.path):
                self.report.excluded += 1
                continue  # recorded as deleted below if it existed before
            if len(name) > MAX_NAME:  # no Linux filesystem makes one (NAME_MAX is 255)
                self._skip(de.path, f"its name is {len(name)} bytes long; the index holds "
                                    f"names of up to {MAX_NAME} bytes")
                continue
            if name not in before and de.is_file(follow_symlinks=False):
                # A new regular file (by d_type): nothing to compare with, so a worker
                # opens and stats it; the main thread need not lstat it first.
                seen.add(name)
                self.report.files += 1
                self._record_new_file(crel, de.path)
                continue
            try:
                cs = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished: recorded as deleted below if it existed before
            except OSError as e:
                seen.add(name)
                self._skip(de.path, e.strerror or str(e))
                continue
            if (cs.st_dev, cs.st_ino) in self.exclude:
                continue
            kind = kind_of(cs.st_mode)
            old = before.get(name)
            if cs.st_dev != self.dev and self._not_crossed(crel, de.path, cs, kind, old):
                if kind == KIND_DIR:
                    seen.add(name)
                continue
            seen.add(name)
            if old is not None and old.kind == KIND_DIR and kind != KIND_DIR:
                self._delete_tree(crel)
            if kind == KIND_DIR:
                subdirs.append((crel, de.path, cs, old))
            elif kind == KIND_FILE:
                self.report.files += 1
                if not unchanged(old, cs, kind):
                    self._record_file(crel, de.path, cs, old)
            else:
                self._count_other(kind)
                if not unchanged(old, cs, kind):
                    self._record_other(crel, de.path, cs, kind)
        for name, old in before.items():
            if name not in seen:
                self._delete(join_path(rel, name), old)
        for crel, cpath, cs, old in subdirs:
            self._record_dir(crel, cpath, cs, old)
        if self.progress:
            self.progress.update(self.report)

    def _count_other(self, kind: int) -> None:
        if kind == KIND_SYMLINK:
            self.report.symlinks += 1
        else:
            self.report.others += 1

    def _not_crossed(self, rel: bytes, abspath: bytes, s: os.stat_result, kind: int,
                     old: Entry | None) -> bool:
        """For an entry on another filesystem than the root: True if the scan does not
        cross into it (anytime's own mounts; any with ``one_file_system``). A directory
        is then recorded as an empty one; anything else is left out."""
        if abspath in self.anytime_mounts:
            why = "an anytime mount (never captured)"
        elif self.one_file_system:
            why = "another filesystem (--one-file-system)"
        else:
            return False
        self.report.mounts.append((os.fsdecode(abspath), why))
        if kind != KIND_DIR:
            return True
        self.report.dirs += 1
        if not unchanged(old, s, KIND_DIR):
            self.builder.put_entry(rel, Entry.from_stat(s, KIND_DIR))
            self.report.changed += 1
        if old is not None and old.kind == KIND_DIR:
            self._delete_tree(rel)
        return True

    def _delete(self, rel: bytes, old: Entry) -> None:
        self.builder.put_entry(rel, Entry(KIND_DELETED))
        self.report.deleted += 1
        if old.kind == KIND_DIR:
            self._delete_tree(rel)

    def _delete_tree(self, rel: bytes) -> None:
        """Record every live entry under directory ``rel`` as deleted."""
        for name, old in timeline.list_dir_at(self.repo, self.txn, self.vid, rel, MAX_INSTANT):
            self._delete(join_path(rel, name), old)

    def _record_other(self, rel: bytes, abspath: bytes, s: os.stat_result, kind: int) -> None:
        e = Entry.from_stat(s, kind)
        if kind == KIND_SYMLINK:
            try:
                e.target = os.readlink(abspath)
            except OSError as err:
                self._skip(abspath, err.strerror or str(err))
                return
        e.xattrs = read_xattrs(abspath) if kind != KIND_SYMLINK else {}
        self.builder.put_entry(rel, e)
        self.report.changed += 1

    # --- files ---------------------------------------------------------------------------
    def _record_new_file(self, rel: bytes, abspath: bytes) -> None:
        """A path with no previous version that looks like a regular file: read it in a
        worker straight away (see :meth:`FileReader.read_small` with ``probe``)."""
        self.report.changed += 1
        job = _FileJob(rel, abspath, None, None, None, 0, False, probe=True)
        self._submit(job)
        self.pending.append(job)
        self._drain(MAX_INFLIGHT)

    def _file_id_for(self, s: os.stat_result, old: Entry | None) -> tuple[int, bool]:
        """(file id, whether it already has blocks) for a file about to be recorded."""
        if old is not None and old.kind == KIND_FILE and old.src_ino == s.st_ino \
                and old.src_dev == s.st_dev:
            return old.file_id, True
        # A path new to us whose inode we know: the same file renamed or linked here if
        # it still has the size and mtime we recorded; otherwise the inode number was
        # reused by a new file, which gets a new file id.
        known = timeline.known_file_id(self.repo, self.txn, self.vid, s) \
            if self.inodes_known else None
        if known is not None:
            return known, True
        return self.builder.new_file_id(), False

    def _record_file(self, rel: bytes, abspath: bytes, s: os.stat_result,
                     old: Entry | None, drain: bool = True) -> None:
        """Record a regular file: queue its read. ``drain`` False when called from inside
        a drain (a probe handed back), which goes on with the queue itself: draining
        again there would nest one call deeper per handed-back file."""
        self.report.changed += 1
        e = Entry.from_stat(s, KIND_FILE)
        key = (s.st_dev, s.st_ino)
        if s.st_nlink > 1 and key in self.hardlinks:
            e.file_id = self.hardlinks[key]
            e.xattrs = read_xattrs(abspath)
            if key in self.link_waits:
                self.link_waits[key].append((rel, e))
            else:
                if key in self.unreadable_links:
                    e.flags |= FLAG_UNREADABLE
                self.builder.put_entry(rel, e)
            return
        fid, existing = self._file_id_for(s, old)
        link = None
        if s.st_nlink > 1:
            link = key
            self.hardlinks[key] = fid
            self.link_waits[key] = []
        e.file_id = fid
        job = _FileJob(rel, abspath, e, None, s, fid, existing, old=old, link=link)
        if s.st_size > SEGMENT_BLOCKS * self.bs:
            try:
                job.fd = os.open(abspath, OPEN_FLAGS)
            except OSError as err:
                self._open_failed(job, err)
                return
            e.xattrs = read_xattrs(job.fd)  # of the file opened, not of a path looked up again
            job.started_ns = clock.file_time_ns()
            job.before = os.fstat(job.fd)
        self._submit(job)
        self.pending.append(job)
        if drain:
            self._drain(MAX_INFLIGHT)

    def _open_failed(self, job: _FileJob, err: OSError) -> None:
        if job.probe and err.errno == errno.ELOOP:  # became a symlink since it was listed
            try:
                s = os.lstat(job.abspath)
            except OSError:
                pass
            else:
                self.report.files -= 1
                self._count_other(kind_of(s.st_mode))
                self._record_other(job.path, job.abspath, s, kind_of(s.st_mode))
                self.report.changed -= 1
                return
        if isinstance(err, FileNotFoundError):
            self.report.changed -= 1  # vanished since listed: it is recorded as deleted next time
            self._release_links(job)
        else:
            self._unreadable(job, err)

    def _release_links(self, job: _FileJob, flags: int = 0) -> None:
        """Record the other links of ``job``'s file met while it was read, with ``flags``
        (``FLAG_UNREADABLE`` when its read failed: a link must not show older content)."""
        if job.link is None:
            return
        if flags:
            self.unreadable_links.add(job.link)
        for rel, e in self.link_waits.pop(job.link, ()):
            e.flags |= flags
            self.builder.put_entry(rel, e)

    def _unreadable(self, job: _FileJob, err: OSError) -> None:
        """Record a file that could not be opened or read as unreadable at this instant:
        its metadata from lstat now, ``FLAG_UNREADABLE``, no content (the file id stays
        the previous version's, so the next read stores only what differs)."""
        reason = err.strerror or str(err)
        try:
            s = os.lstat(job.abspath)
        except OSError:
            s = None
        self._release_links(job, FLAG_UNREADABLE)
        if s is None or not st_.S_ISREG(s.st_mode):  # gone or replaced: as before
            self._skip(job.abspath, reason)
            return
        self.report.unreadable.append((os.fsdecode(job.abspath), reason))
        if self.progress:
            self.progress.warn(f"cannot read {os.fsdecode(job.abspath)}: {reason}; recorded "
                               f"as unreadable")
        old = job.old
        if old is not None and old.flags & FLAG_UNREADABLE and (
                old.src_ino, old.mtime_ns, old.ctime_ns) == (
                s.st_ino, s.st_mtime_ns, s.st_ctime_ns):
            self.report.changed -= 1
            return  # still unreadable, as recorded
        e = Entry.from_stat(s, KIND_FILE)
        e.file_id = job.file_id if not job.probe else self._file_id_for(s, None)[0]
        e.flags = FLAG_UNREADABLE
        try:
            e.xattrs = read_xattrs(job.abspath)
        except OSError:
            pass
        self.builder.put_entry(job.path, e)

    def _submit(self, job: _FileJob) -> None:
        if job.fd is None:  # small files go to the workers in batches (fewer hand-offs)
            job.segments = []
            job.batch_index = len(self._batch)
            self._batch.append(job)
            self.inflight += 1
            if len(self._batch) >= BATCH_FILES:
                self._flush_batch()
            return
        size = job.before.st_size
        sparse = job.before.st_blocks * 512 < size
        job.segments = [self.pool.submit(self.reader.read_large, job.fd, size, sparse)]
        self.inflight += 1

    def _flush_batch(self) -> None:
        if self._batch:
            fut = self.pool.submit(self.reader.read_batch, [
                (j.abspath, j.probe, j.tries, j.last_ids) for j in self._batch])
            for j in self._batch:
                j.segments = [fut]
            self._batch = []

    def _drain(self, limit: int) -> None:
        while self.pending and self.inflight > limit:
            self._finish(self.pending.popleft())

    def _collect(self, job: _FileJob) -> tuple[list[bytes], os.stat_result] | None:
        """Wait for a job's reads; returns (block ids, stat after) or None if it failed."""
        if job.fd is None:
            self.inflight -= 1
            if not job.segments:
                self._flush_batch()
            res = job.segments[0].result()[job.batch_index]
            if isinstance(res, OSError):
                self._open_failed(job, res)
                return None
            if res[0] == "defer":
                self.report.changed -= 1  # counted again by the full path
                s = res[1]
                if st_.S_ISREG(s.st_mode):
                    self._record_file(job.path, job.abspath, s, None, drain=False)
                else:
                    self.report.files -= 1
                    self._count_other(kind_of(s.st_mode))
                    self._record_other(job.path, job.abspath, s, kind_of(s.st_mode))
                return None
            (ids, job.end, job.before, after, xattrs, job.started_ns, job.tries,
             job.last_ids) = res
            if job.probe:  # first read of a new path: now we know what it is
                if job.before.st_dev != self.dev and self._not_crossed(
                        job.path, job.abspath, job.before, KIND_FILE, None):
                    self.report.files -= 1
                    self.report.changed -= 1
                    return None  # a file mounted from another filesystem (-x)
                job.probe = False
                job.file_id, job.existing = self._file_id_for(job.before, None)
                job.entry = Entry.from_stat(job.before, KIND_FILE)
                job.entry.file_id = job.file_id
            job.entry.xattrs = xattrs
            return ids, after
        self.inflight -= len(job.segments)
        failed = None
        try:
            ids, job.end = job.segments[0].result()
        except OSError as err:  # EIO, ...
            failed = err
        if failed is not None:
            os.close(job.fd)
            job.fd = None
            self._unreadable(job, failed)
            return None
        return ids, os.fstat(job.fd)

    def _finish(self, job: _FileJob) -> None:
        while True:
            got = self._collect(job)
            if got is None:
                return
            ids, after = got
            stable = same_stat(job.before, after)
            if stable and recent(job.before, job.started_ns) and ids != job.last_ids:
                stable = False  # a write may have been in flight: read until two agree
            if stable or job.tries >= RETRIES:
                break
            job.tries += 1
            job.last_ids = ids
            if job.fd is not None:
                job.before, job.started_ns = after, clock.file_time_ns()
            self._submit(job)
        if job.fd is not None:
            os.close(job.fd)
        e = job.entry
        if not stable:
            e.flags |= FLAG_UNSTABLE
            self.report.unstable.append(os.fsdecode(job.abspath))
            if self.progress:
                self.progress.warn(f"{os.fsdecode(job.abspath)} kept changing while read; "
                                   f"recorded as unstable")
        if HOLE_ID not in ids:
            e.flags |= FLAG_DENSE
        # the entry describes what was read: the stat the last read began with, and the
        # bytes stored where the reads ended elsewhere than its size
        s = job.before
        e.size, e.mtime_ns, e.ctime_ns = s.st_size, s.st_mtime_ns, s.st_ctime_ns
        e.nlink, e.mode, e.uid, e.gid = s.st_nlink, s.st_mode, s.st_uid, s.st_gid
        if job.end is not None and job.end != s.st_size:
            e.size = job.end
            if stable:
                self.report.resized.append(os.fsdecode(job.abspath))
        self.report.files_read += 1
        self.report.bytes_read += e.size
        if job.existing:
            old = timeline.blocks_at(self.repo, self.txn, self.vid, job.file_id, 0, len(ids),
                                     MAX_INSTANT)
            for i, (new, prev) in enumerate(zip(ids, old, strict=True)):
                if new != prev:
                    self.builder.put_block_version(job.file_id, i, new)
        else:
            for i, new in enumerate(ids):
                if new != HOLE_ID:
                    self.builder.put_block_version(job.file_id, i, new)
        self.builder.put_entry(job.path, e)
        self._release_links(job)
        self.builder.map_inode(e.src_dev, e.src_ino, e.file_id, e.mtime_ns, e.size)
        self.repo.map_trimmer.touched()  # the index lookups for this file
