"""Every-write capture: a FUSE passthrough over the protected tree itself.

Terms:
  shim         a FUSE filesystem mounted over PATH, whose every operation is applied to
               the real tree underneath (reached through a directory descriptor opened
               before mounting: ``*at`` calls relative to it) and recorded with the
               instant it completed. Applications keep using PATH.
  operation    a call that changes data or metadata: write, truncate, create, mkdir,
               mknod, symlink, link, unlink, rmdir, rename, chmod, chown, utimens,
               setxattr, removexattr. Each gets its own instant (``stamp``: the wall
               clock, made strictly increasing) once it has been applied, taken under
               the lock of the file or tree it changes, so two operations on one file
               are recorded in the order they happened.
  record       what an operation becomes in the index: path versions (a file's entry
               from ``fstat``/``lstat`` right after the operation) and block versions,
               all at the operation's instant (a *timed* commit, docs/format.md I15).
  write        recorded as the blocks it touches: the written bytes become one chunk,
               and each touched block's new reference is the old block's slices with the
               written range replaced by a slice of that chunk (``format.encode_ref``).
               A block whose reference would pass ``MAX_SLICES`` slices is read back
               from the real file (under the file's lock, so exactly as it is after
               this operation) and stored whole instead.
  group commit the recorder thread commits what is queued every ``GROUP_S`` seconds
               (or ``GROUP_OPS`` operations) through the writer session: one fdatasync
               of the open pack and one index transaction for many operations. The
               view at an instant T is then the tree after exactly the operations whose
               instant is at most T, across every file of the volume.
  --sync       ``fsync``/``fdatasync`` of an application also waits until its file's
               operations so far are committed (durable in the repository).

The index holds the tree as it was when the shim started (a whole-tree scan first), and
each file's block references are kept in memory once an operation touched it (the
recorder may not have committed them yet); ``_File`` is that state.

Limits of this first version (docs/shim.md): a directory renamed is recorded by walking
it under the tree lock; ``fallocate`` cannot collapse or insert a range (EOPNOTSUPP).
"""

from __future__ import annotations

import errno
import os
import queue
import stat as st_
import threading
import time
from contextlib import contextmanager

from anytime.store import clock, space, timeline
from anytime.store.errors import RepositoryFull
from anytime.store.format import (
    HOLE_ID,
    KIND_DELETED,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MAX_INSTANT,
    Entry,
    block_id,
    decode_ref,
    encode_ref,
    join_path,
    kind_of,
)
from anytime.store.localfs import read_xattrs

#: Seconds between group commits while operations come.
GROUP_S = 0.05
#: While a group gathers, how often it looks whether an fsync waits for it (--sync).
URGENT_POLL_S = 0.002
#: Operations queued before a group commit is made at once.
GROUP_OPS = 4096
#: Seconds between entries (times) recorded for writes in place that keep the size.
ENTRY_EVERY_S = 1.0
#: Bytes of written data queued for the recorder at most; writers wait past it.
MAX_QUEUED_BYTES = 64 << 20
#: A group commit holding this much written data goes at once, without waiting out
#: ``GROUP_S``: writers fill the rest of the queue meanwhile.
GROUP_BYTES = MAX_QUEUED_BYTES // 4
#: Largest write request the kernel sends.
MAX_WRITE = 1 << 20
#: Slices a block reference may have before the block is stored whole again.
MAX_SLICES = 32
#: The markers utimensat(2) takes in tv_nsec (tv_sec 0), as libfuse passes them on.
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2


def _rel(path: str) -> bytes:
    """``/a/b`` (a FUSE path) -> ``b"a/b"``; ``/`` -> ``b""``."""
    return os.fsencode(path.lstrip("/"))


def _at(rel: bytes) -> bytes:
    return rel or b"."


class _File:
    """The content state of one file id: its size and the slices of the blocks an
    operation touched (others are read from the index when needed)."""

    __slots__ = ("fid", "size", "blocks", "lock", "entry_at")

    def __init__(self, fid: int, size: int):
        self.fid = fid
        self.size = size
        self.blocks: dict[int, list[tuple[bytes, int, int]]] = {}
        self.lock = threading.Lock()
        self.entry_at = 0.0  # monotonic time its entry was last recorded by a write


class Recorder:
    """Takes the records of operations (in instant order) and group-commits them
    through ``session`` into ``vol``; runs in a thread of its own."""

    def __init__(self, repo, session, vol, source: bytes, sync: bool = False,
                 strict: bool = False):
        self.repo = repo
        self.strict = strict
        #: instant of the first operation not recorded since the repository filled up
        #: (None: no gap); ``resync`` ends it once there is room again
        self.gap_from: int | None = None
        self.resync = None  # set by ShimOps: scan the tree whole, ending a gap
        self.gaps = 0
        self.session = session
        self.vol = vol
        self.source = source
        self.sync = sync
        self.q: queue.Queue = queue.Queue()  # (instant, records, chunk bytes)
        #: chunk bytes queued and not yet committed; writers wait past MAX_QUEUED_BYTES
        self.queued_bytes = 0
        self._room = threading.Condition()
        self._urgent = threading.Event()  # an fsync waits for the next group commit
        self._stamp_lock = threading.Lock()
        self._last = vol.horizon
        self.committed_to = vol.horizon  # every operation at or before it is committed
        self._cond = threading.Condition()
        self.error: BaseException | None = None
        self.commits = 0
        self.ops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anytime-recorder",
                                        daemon=True)
        self.started_ns = clock.now_ns()
        self._published = 0.0
        self._recent: list[tuple[int, int]] = []  # (wall ns, operations) of commits

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def publish(self, running: bool = True) -> None:
        """The status file ``anytime status`` reads (store/status.py)."""
        from anytime.store import status

        self._published = time.monotonic()
        now = clock.now_ns()
        self._recent = [(t, n) for t, n in self._recent if t > now - 10_000_000_000]
        status.publish(self.repo, self.vol.name, {
            "mode": "shim", "events": "fuse", "pid": os.getpid(), "running": running,
            "source": os.fsdecode(self.source), "started_ns": self.started_ns,
            "updated_ns": now, "commits": self.commits, "changes": self.ops,
            "last_commit_ns": self.committed_to,
            "pending_since_ns": None, "queued": self.q.qsize(), "overflows": 0,
            "recent": self._recent, "rate_window_s": 10.0,
            "error": str(self.error) if self.error else None, "gap_since_ns": self.gap_from})

    def stamp_and_put(self, records: list) -> int:
        """An instant strictly after every earlier one, with ``records`` queued at it
        (in the order of instants: stamping and queueing are one step)."""
        if self.error is not None:
            raise OSError(errno.EIO, f"the shim cannot record: {self.error}")
        n = sum(len(r[1]) for r in records if r[0] == "chunk")
        if n:  # the writer waits while the recorder is that far behind (bounded memory)
            with self._room:
                while (self.queued_bytes and self.queued_bytes + n > MAX_QUEUED_BYTES
                       and self.gap_from is None and self.error is None
                       and not self._stop.is_set()):
                    self._room.wait(1.0)
        with self._stamp_lock:
            t = max(clock.now_ns(), self._last + 1)
            self._last = t
            if self.gap_from is None:
                with self._room:
                    self.queued_bytes += n
                self.q.put((t, records, n))
        return t

    def _done_with(self, items) -> None:
        """``items`` of the queue are committed or dropped: their bytes free room."""
        n = sum(item[2] for item in items)
        if n:
            with self._room:
                self.queued_bytes -= n
                self._room.notify_all()

    def admit(self) -> None:
        """Before an operation changes the tree: with ``strict``, refuse it (ENOSPC)
        while the repository cannot take records."""
        if self.strict and self.gap_from is not None:
            raise OSError(errno.ENOSPC, "the repository is full: with --strict, writes "
                                        "fail until it has room")

    def wait_committed(self, t: int) -> None:
        """Block until every operation at or before instant ``t`` is committed."""
        self._urgent.set()  # the group commit goes now, not at the end of its window
        with self._cond:
            while self.committed_to < t and self.error is None and self.gap_from is None:
                self._cond.wait(1.0)
        if self.error is not None:
            raise OSError(errno.EIO, f"the shim cannot record: {self.error}")
        if self.gap_from is not None:  # not durable in the repository: say so
            raise OSError(errno.ENOSPC, "the repository is full: this fsync's writes are "
                                        "not recorded")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.publish(running=False)

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self.session.run_due()  # between group commits: a prune, if one is due
            batch = []
            try:  # idle: one wake-up a second, to see a stop
                batch.append(self.q.get(timeout=1.0))
            except queue.Empty:
                if stopping:
                    return
                continue
            end = time.monotonic() + GROUP_S
            size = batch[0][2]
            # a group ends after GROUP_S, or once it holds GROUP_BYTES of data: writers
            # held at MAX_QUEUED_BYTES would otherwise wait out the window with the
            # recorder, and go on only once the whole queue is committed
            while len(batch) < GROUP_OPS and size < GROUP_BYTES:
                try:
                    batch.append(self.q.get_nowait())
                    size += batch[-1][2]
                    continue
                except queue.Empty:
                    pass
                left = end - time.monotonic()
                if left <= 0 or self._urgent.is_set():  # an fsync waits (--sync)
                    break
                try:
                    batch.append(self.q.get(timeout=min(left, URGENT_POLL_S)))
                    size += batch[-1][2]
                except queue.Empty:
                    pass
            self._urgent.clear()
            try:
                try:
                    self._commit(batch)
                except RepositoryFull:
                    self._gap(batch[0][0])
                finally:
                    self._done_with(batch)
            except BaseException as e:  # the shim answers EIO from now on
                self.error = e
                with self._cond:
                    self._cond.notify_all()
                return

    def _gap(self, first: int) -> None:
        """The repository is full: operations from instant ``first`` on go unrecorded
        (with ``strict``, they fail) until there is room; then the tree is scanned
        whole, a commit that names the gap, and recording goes on."""
        with self._stamp_lock:
            self.gap_from = first
            dropped = []
            while not self.q.empty():
                dropped.append(self.q.get_nowait())
        self._done_with(dropped)
        self.gaps += 1
        self.publish()
        with self._cond:
            self.committed_to = self._last  # nothing waits for what is not recorded
            self._cond.notify_all()
        while True:
            stopping = self._stop.is_set()
            if stopping or (space.free_bytes(self.repo.root) or 0) > 2 * space.FULL_MARGIN:
                try:
                    self.session.recover()  # the failed commit broke the pack writer
                    self.resync(first)
                except RepositoryFull:
                    pass
                else:
                    self.publish()
                    return
            if stopping:  # (one last try made: the gap stays, as log and status say)
                return
            self._stop.wait(1.0)

    def _commit(self, batch: list) -> None:
        b = self.session.builder(self.vol)
        last = 0
        try:
            for t, records, _n in batch:
                last = t
                for rec in records:
                    kind = rec[0]
                    if kind == "entry":
                        b.put_entry(rec[1], rec[2], at=t)
                    elif kind == "block":
                        b.put_block_version(rec[1], rec[2], rec[3], at=t)
                    elif kind == "chunk":  # hashed by the operation: not again
                        b.store_chunk(rec[1], rec[2])
            b.commit({"kind": "shim", "source": os.fsdecode(self.source), "ops": len(batch)},
                     instant=last)
        except BaseException:
            b.abort()
            raise
        self.commits += 1
        self.ops += len(batch)
        self._recent.append((clock.now_ns(), len(batch)))
        with self._cond:
            self.committed_to = last
            self._cond.notify_all()
        if time.monotonic() - self._published >= 1.0 or self.q.empty():
            self.publish()  # at most once a second while operations keep coming


def _fuse():
    from anytime.fusekit.mounting import load_mfusepy

    return load_mfusepy()


class _Gate:
    """Operations that change the tree pass it together (``shared``); the end of a gap
    passes it alone (``exclusive``), waiting for those under way."""

    def __init__(self):
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    @contextmanager
    def shared(self):
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._closed = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


#: The operations that change the tree (they pass the gate and the strict check).
CHANGING = frozenset({"open", "create", "write", "truncate", "unlink", "mkdir", "rmdir",
                      "mknod", "symlink", "link", "rename", "chmod", "chown", "utimens",
                      "setxattr", "removexattr", "fallocate"})


class ShimOps:
    """The passthrough operations (an mfusepy ``Operations``, built by
    :func:`operations` so that mfusepy is imported only when a shim runs)."""

    def __init__(self, repo, recorder: Recorder, root_fd: int):
        self.repo = repo
        self.rec = recorder
        self.vid = recorder.vol.id
        self.bs = recorder.vol.block_size
        self.root = root_fd
        self.key = repo.block_key
        self.files: dict[int, _File] = {}  # file id -> state
        self.fids: dict[bytes, int] = {}  # path -> file id, for paths met since start
        self.tree_lock = threading.RLock()  # names: create, unlink, rename, ...
        self.gate = _Gate()
        recorder.resync = self.resync
        self._state_lock = threading.Lock()
        self.fh_fid: dict[int, int] = {}

    # --- state ---------------------------------------------------------------------------
    def _fid(self, rel: bytes) -> int | None:
        fid = self.fids.get(rel)
        if fid is None:
            with self.repo.read_txn() as txn:
                e = timeline.entry_at(self.repo, txn, self.vid, rel, MAX_INSTANT)
            if e is not None and e.kind == KIND_FILE:
                fid = e.file_id
                self.fids[rel] = fid
                with self._state_lock:
                    self.files.setdefault(fid, _File(fid, e.size))
        return fid

    def _file(self, fid: int) -> _File:
        return self.files[fid]

    def _slices(self, f: _File, b: int) -> list[tuple[bytes, int, int]]:
        """The slices of block ``b`` of ``f`` as it is now (lock held)."""
        got = f.blocks.get(b)
        if got is not None:
            return got
        n = min(self.bs, f.size - b * self.bs)
        if n <= 0:
            return []
        with self.repo.read_txn() as txn:
            ref = timeline.block_at(self.repo, txn, self.vid, f.fid, b, MAX_INSTANT)
        out = [(cid, off, n if ln is None else ln) for cid, off, ln in decode_ref(ref)]
        f.blocks[b] = out
        return out

    @staticmethod
    def _cut(slices, lo: int, hi: int) -> list:
        """The part [lo, hi) of a block made of ``slices``."""
        out, pos = [], 0
        for cid, off, n in slices:
            a, z = max(lo, pos), min(hi, pos + n)
            if a < z:
                out.append((cid, off + a - pos, z - a))
            pos += n
        if pos < hi:  # past what the block held: zeros
            out.append((HOLE_ID, 0, hi - max(lo, pos)))
        return out

    def _entry(self, rel: bytes, fd: int | None = None, fid: int | None = None) -> Entry:
        s = os.fstat(fd) if fd is not None else os.lstat(_at(rel), dir_fd=self.root)
        e = Entry.from_stat(s)
        if e.kind == KIND_SYMLINK:
            e.target = os.readlink(_at(rel), dir_fd=self.root)
        else:
            try:
                e.xattrs = read_xattrs(fd if fd is not None else self._abs(rel))
            except OSError:
                pass
        if e.kind == KIND_FILE:
            e.file_id = fid if fid is not None else self._fid_for_new(rel)
        return e

    def _entries_of(self, rel: bytes, fd: int, fid: int) -> list:
        """Entry records of file ``fid`` written through ``rel``: of every name of it met
        since start when it has more than one link (they share size and times)."""
        e = self._entry(rel, fd, fid)
        out = [("entry", rel, e)]
        if e.nlink > 1:
            out += [("entry", p, e) for p, f in list(self.fids.items()) if f == fid and p != rel]
        return out

    def _abs(self, rel: bytes) -> bytes:
        return b"/proc/self/fd/%d/%s" % (self.root, rel) if rel else b"/proc/self/fd/%d" % self.root

    def _fid_for_new(self, rel: bytes) -> int:
        fid = self._fid(rel)
        if fid is None:
            fid = self.rec.vol.next_file_id
            self.rec.vol.next_file_id += 1
            self.fids[rel] = fid
            with self._state_lock:
                self.files[fid] = _File(fid, 0)
        return fid

    def _record_path(self, rel: bytes, extra: list | None = None) -> None:
        """Record ``rel`` as it is on disk now (deleted if gone)."""
        try:
            e = self._entry(rel)
        except FileNotFoundError:
            e = Entry(KIND_DELETED)
            self.fids.pop(rel, None)
        self.rec.stamp_and_put((extra or []) + [("entry", rel, e)])

    def resync(self, first: int) -> None:
        """End a gap: with every changing operation held, forget what was kept of the
        files, scan the real tree whole into one commit that names the gap (its record's
        ``gap_from_ns``), and record again from there."""
        from .scan import Scanner

        rec = self.rec
        with self.gate.exclusive():
            self.files.clear()
            self.fids.clear()
            # the real tree under the mount (the trailing slash: lstat follows the link)
            scan = Scanner(self.repo, rec.vol, b"/proc/self/fd/%d/" % self.root,
                           session=rec.session)
            with rec._stamp_lock:
                scan.instant = max(clock.now_ns(), rec._last + 1)
            report = scan.run({"kind": "scan", "by": "shim", "source": os.fsdecode(rec.source),
                               "started_ns": scan.instant, "gap_from_ns": first})
            with rec._stamp_lock:
                rec._last = max(rec._last, report.instant)
                rec.gap_from = None
            with rec._cond:
                rec.committed_to = report.instant
                rec._cond.notify_all()

    # --- the operations --------------------------------------------------------------------
    def getattr(self, path, fh=None):
        s = os.fstat(fh) if fh is not None else os.lstat(_at(_rel(path)), dir_fd=self.root)
        return {k: getattr(s, k) for k in (
            "st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
            "st_blocks", "st_rdev")} | {  # times in nanoseconds (use_ns), exact
            "st_atime": s.st_atime_ns, "st_mtime": s.st_mtime_ns, "st_ctime": s.st_ctime_ns}

    def readdir(self, path, fh):
        """Names with their inode numbers and types (with ``use_ino`` an entry of inode
        0 would be skipped by readdir(3))."""
        fd = os.open(_at(_rel(path)), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root)
        try:
            with os.scandir(fd) as it:
                out = []
                for de in it:
                    try:
                        mode = de.stat(follow_symlinks=False).st_mode
                    except OSError:
                        continue
                    out.append((de.name, {"st_ino": de.inode(), "st_mode": mode}, 0))
        finally:
            os.close(fd)
        return [".", ".."] + out

    def readlink(self, path):
        return os.fsdecode(os.readlink(_at(_rel(path)), dir_fd=self.root))

    def statfs(self, path):
        s = os.statvfs(self._abs(b""))
        return {k: getattr(s, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                           "f_bavail", "f_files", "f_ffree", "f_favail",
                                           "f_namemax")}

    def access(self, path, amode):
        if not os.access(_at(_rel(path)), amode, dir_fd=self.root, follow_symlinks=False):
            raise OSError(errno.EACCES, "")
        return 0

    def open(self, path, flags):
        rel = _rel(path)
        flags = flags & ~os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        if flags & os.O_TRUNC:  # the truncation under the file's lock, as writes are
            with self.tree_lock:
                fid = self._fid_for_new(rel)
                return self._truncated(rel, fid, 0, lambda: os.open(_at(rel), flags,
                                                                    dir_fd=self.root))
        fd = os.open(_at(rel), flags, dir_fd=self.root)
        try:
            if os.fstat(fd).st_nlink > 1:
                self._fid(rel)  # a name of a hardlinked file: met, for _entries_of
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create(self, path, mode, fi=None):
        rel = _rel(path)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        with self.tree_lock:
            existing = self.fids.get(rel)
            if existing is not None:  # an existing file opened with O_CREAT: truncated
                fd = self._truncated(rel, existing, 0, lambda: os.open(
                    _at(rel), flags, mode, dir_fd=self.root))
                return fd
            fd = os.open(_at(rel), flags, mode, dir_fd=self.root)
            try:
                self._own(fd=fd)
                self._as_asked(rel, mode, fd=fd)
                fid = self.rec.vol.next_file_id
                self.rec.vol.next_file_id += 1
                self.fids[rel] = fid
                with self._state_lock:
                    self.files[fid] = _File(fid, 0)
                self.rec.stamp_and_put([("entry", rel, self._entry(rel, fd, fid))])
            except BaseException:
                os.close(fd)
                raise
        return fd

    def _own(self, fd: int | None = None, rel: bytes | None = None) -> None:
        """Give what the caller created to the caller (the shim runs as root)."""
        uid, gid, _pid = _fuse().fuse_get_context()
        if os.geteuid() != 0:
            return
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(_at(rel), uid, gid, dir_fd=self.root, follow_symlinks=False)

    def _as_asked(self, rel: bytes, mode: int, fd: int | None = None) -> None:
        """Give what the caller created the permission bits it asked for: the kernel has
        applied the caller's umask to ``mode`` already, and the shim's own would narrow
        them again (a group-writable file made under umask 002 came out 0644). Where
        the directory has a default ACL, it decides the bits, as on the real
        filesystem, and they stay."""
        try:
            os.getxattr(self._abs(os.path.dirname(rel)), "system.posix_acl_default")
            return
        except OSError:
            pass
        st = os.fstat(fd) if fd is not None else os.lstat(_at(rel), dir_fd=self.root)
        want = mode & 0o7777 | (st.st_mode & st_.S_ISGID if st_.S_ISDIR(st.st_mode) else 0)
        if st.st_mode & 0o7777 != want:
            if fd is not None:
                os.fchmod(fd, want)
            else:
                os.chmod(_at(rel), want, dir_fd=self.root)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        rel = _rel(path)
        fid = self._fid_for_new(rel)
        f = self._file(fid)
        with f.lock:
            n = os.pwrite(fh, data, offset)
            data = bytes(data[:n])
            records = self._write_records(f, fh, offset, data)
            s = os.fstat(fh)
            new_size = s.st_size
            grown = new_size != f.size
            f.size = new_size
            now = time.monotonic()
            # its entry: at once when the size changed; else (mtime, ctime) at most
            # every ENTRY_EVERY_S, so in-place writes cost no entry each
            if grown or now - f.entry_at >= ENTRY_EVERY_S:
                f.entry_at = now
                records += self._entries_of(rel, fh, fid)
            self.rec.stamp_and_put(records)
        return n

    def _write_records(self, f: _File, fh: int, offset: int, data: bytes) -> list:
        bs = self.bs
        cid = block_id(self.key, data)
        records = [("chunk", data, cid)] if cid != HOLE_ID else []
        end = offset + len(data)
        size_after = max(f.size, end)
        for b in range(offset // bs, (end - 1) // bs + 1 if data else offset // bs):
            lo, hi = b * bs, min((b + 1) * bs, size_after)
            old = self._slices(f, b)
            wlo, whi = max(offset, lo) - lo, min(end, hi) - lo
            new = self._cut(old, 0, wlo) + [(cid, max(offset, lo) - offset, whi - wlo)] \
                + self._cut(old, whi, hi - lo)
            new = [sl for sl in new if sl[2] > 0]
            new = _merge(new)
            read_back = len(new) > MAX_SLICES
            if read_back:  # read back exactly as the file is now
                whole = _pread(fh, hi - lo, lo)
                wid = block_id(self.key, whole)
                if wid != HOLE_ID:
                    records.append(("chunk", whole, wid))
                new = [(wid, 0, len(whole))]
            f.blocks[b] = new
            # a bare id only for a block that is exactly one whole chunk (or a hole)
            one = new[0] if len(new) == 1 else None
            if one and (read_back or one[0] == HOLE_ID
                        or (one[0] == cid and one[1] == 0 and one[2] == len(data))):
                ref = one[0]
            else:
                ref = encode_ref(new)
            records.append(("block", f.fid, b, ref))
        return records

    def truncate(self, path, length, fh=None):
        rel = _rel(path)
        with self.tree_lock:
            fid = self._fid_for_new(rel)
            if fh is not None:
                self._truncated(rel, fid, length, lambda: os.ftruncate(fh, length) or fh)
            else:
                fd = os.open(_at(rel), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self.root)
                try:
                    self._truncated(rel, fid, length, lambda: os.ftruncate(fd, length) or fd)
                finally:
                    os.close(fd)
        return 0

    def _truncated(self, rel: bytes, fid: int, length: int, cut) -> int:
        """Cut (or grow) file ``fid`` to ``length`` by calling ``cut()`` (which returns a
        descriptor of the file), under the file's lock as writes are, and record it:
        the blocks past it become holes, the last one is cut, so a later growth reads
        zeros there. Returns that descriptor."""
        f = self._file(fid)
        with f.lock:
            fd = cut()
            bs = self.bs
            records = []
            old_blocks = (f.size + bs - 1) // bs
            keep = (length + bs - 1) // bs
            if length < f.size:
                if length % bs:
                    b = length // bs
                    cut = self._cut(self._slices(f, b), 0, length % bs)
                    f.blocks[b] = cut
                    records.append(("block", fid, b, encode_ref(_merge(cut))))
                for b in range(keep, old_blocks):
                    f.blocks[b] = []
                    records.append(("block", fid, b, HOLE_ID))
            f.size = length
            records += self._entries_of(rel, fd, fid)
            self.rec.stamp_and_put(records)
        return fd

    def fsync(self, path, datasync, fh):
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        if self.rec.sync:
            self.rec.wait_committed(self.rec.stamp_and_put([]))
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def unlink(self, path):
        rel = _rel(path)
        with self.tree_lock:
            os.unlink(_at(rel), dir_fd=self.root)
            self.fids.pop(rel, None)
            self.rec.stamp_and_put([("entry", rel, Entry(KIND_DELETED))])
        return 0

    def mkdir(self, path, mode):
        rel = _rel(path)
        with self.tree_lock:
            os.mkdir(_at(rel), mode, dir_fd=self.root)
            self._own(rel=rel)
            self._as_asked(rel, mode)
            self._record_path(rel)
        return 0

    def rmdir(self, path):
        rel = _rel(path)
        with self.tree_lock:
            os.rmdir(_at(rel), dir_fd=self.root)
            self.rec.stamp_and_put([("entry", rel, Entry(KIND_DELETED))])
        return 0

    def mknod(self, path, mode, dev):
        rel = _rel(path)
        with self.tree_lock:
            os.mknod(_at(rel), mode, dev, dir_fd=self.root)
            self._own(rel=rel)
            self._as_asked(rel, mode)
            if st_.S_ISREG(mode):
                self.fids.pop(rel, None)
            self._record_path(rel)
        return 0

    def symlink(self, target, source):
        # mfusepy: symlink(target: the new link's path, source: what it points to)
        rel = _rel(target)
        with self.tree_lock:
            os.symlink(os.fsencode(source), _at(rel), dir_fd=self.root)
            self._own(rel=rel)
            self._record_path(rel)
        return 0

    def link(self, target, source):
        new, old = _rel(target), _rel(source)
        with self.tree_lock:
            os.link(_at(old), _at(new), src_dir_fd=self.root, dst_dir_fd=self.root,
                    follow_symlinks=False)
            fid = self._fid(old)
            if fid is not None:
                self.fids[new] = fid
            records = [("entry", new, self._entry(new, fid=fid))]
            if fid is not None:  # the old name's link count changed too
                records.append(("entry", old, self._entry(old, fid=fid)))
            self.rec.stamp_and_put(records)
        return 0

    def rename(self, old, new, flags: int = 0):
        """``flags``: renameat2's; RENAME_NOREPLACE is kept (never replacing what is
        there), RENAME_EXCHANGE swaps the two names (:meth:`_exchange`), the others
        (RENAME_WHITEOUT, for overlay filesystems) are refused (EINVAL)."""
        o, n = _rel(old), _rel(new)
        if flags == RENAME_EXCHANGE:
            return self._exchange(o, n)
        if flags & ~RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "")
        with self.tree_lock:
            if flags:
                _renameat2(self.root, _at(o), self.root, _at(n), flags)
            else:
                os.rename(_at(o), _at(n), src_dir_fd=self.root, dst_dir_fd=self.root)
            self.rec.stamp_and_put(self._relocated([(o, n)]))
        return 0

    def _exchange(self, a: bytes, b: bytes) -> int:
        """``RENAME_EXCHANGE``: swap ``a`` and ``b`` atomically (both must exist), and
        record both, as one operation (:meth:`_relocated`)."""
        with self.tree_lock:
            _renameat2(self.root, _at(a), self.root, _at(b), RENAME_EXCHANGE)
            self.rec.stamp_and_put(self._relocated([(b, a), (a, b)]))
        return 0

    def _relocated(self, moves: list[tuple[bytes, bytes]]) -> list:
        """Records of a rename that moved each ``was`` of ``moves`` to its ``now``
        (called under the tree lock, after it): every path under each ``now`` as it is
        now, files with the file ids they had in their old place, and the deletion of
        the old paths that no longer exist (for an exchange, a name under one side that
        only the other had). The shim's file-id map follows."""
        roots = {p for m in moves for p in m}
        inside = tuple(r + b"/" for r in roots)
        before = {p: self.fids.pop(p) for p in list(self.fids)
                  if p in roots or p.startswith(inside)}
        entries, olds, fids = [], set(), {}
        stack = list(reversed(moves))  # (where it was, where it is now)
        while stack:
            was, now = stack.pop()
            olds.add(was)
            try:
                st = os.lstat(_at(now), dir_fd=self.root)
            except OSError:
                continue
            k = kind_of(st.st_mode)
            fid = 0 if k == KIND_DIR else None
            if k == KIND_FILE:
                fid = before.get(was) or self._fid(was)
                self.fids.pop(was, None)
                fids[now] = fid
            try:
                entries.append(("entry", now, self._entry(now, fid=fid)))
            except OSError:
                continue
            if k == KIND_DIR:
                stack += [(join_path(was, x), join_path(now, x)) for x in self._names(now)]
        nows = {e[1] for e in entries}
        self.fids.update(fids)
        return [("entry", p, Entry(KIND_DELETED)) for p in sorted(olds - nows)] + entries

    def _names(self, rel: bytes) -> list[bytes]:
        """The names in directory ``rel`` of the real tree (none if it cannot be read:
        its children stay as they were recorded)."""
        try:
            fd = os.open(_at(rel), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root)
            try:
                return [os.fsencode(x) for x in os.listdir(fd)]
            finally:
                os.close(fd)
        except OSError:
            return []

    def chmod(self, path, mode):
        rel = _rel(path)
        return self._meta(rel, lambda: os.chmod(_at(rel), mode, dir_fd=self.root,
                                                follow_symlinks=False) if rel else
                          os.chmod(self._abs(b""), mode))

    def _meta(self, rel: bytes, change) -> int:
        """Apply ``change()`` (chmod, chown, utime, xattrs) to ``rel`` and record it: for
        a regular file under its lock, as writes are, so that neither records the
        other's state half."""
        with self.tree_lock:
            fid = self._fid(rel) if rel else None  # regular files have one
            if fid is None:
                change()
                self._record_path(rel)
                return 0
            with self._file(fid).lock:
                change()
                self._record_path(rel)
        return 0

    def chown(self, path, uid, gid):
        rel = _rel(path)
        return self._meta(rel, lambda: os.chown(_at(rel), uid, gid, dir_fd=self.root,
                                                follow_symlinks=False))

    def utimens(self, path, times=None):
        """``times``: (atime, mtime) in nanoseconds, each possibly libfuse's UTIME_NOW
        or UTIME_OMIT (tv_sec 0, the marker in tv_nsec), or None (both now)."""
        rel = _rel(path)
        if times is not None and (set(times) & {_UTIME_NOW, _UTIME_OMIT}):
            s = os.lstat(_at(rel), dir_fd=self.root)
            now = clock.file_time_ns()
            times = tuple(now if t == _UTIME_NOW else old if t == _UTIME_OMIT else t
                          for t, old in zip(times, (s.st_atime_ns, s.st_mtime_ns),
                                            strict=True))
        return self._meta(rel, lambda: os.utime(_at(rel), ns=times, dir_fd=self.root,
                                                follow_symlinks=False))

    def getxattr(self, path, name, position=0):
        try:
            return os.getxattr(self._abs(_rel(path)), name, follow_symlinks=False)
        except OSError as e:
            raise OSError(e.errno, "") from None

    def listxattr(self, path):
        return os.listxattr(self._abs(_rel(path)), follow_symlinks=False)

    def setxattr(self, path, name, value, options, position=0):
        rel = _rel(path)
        return self._meta(rel, lambda: os.setxattr(self._abs(rel), name, value, options,
                                                    follow_symlinks=False))

    def removexattr(self, path, name):
        rel = _rel(path)
        return self._meta(rel, lambda: os.removexattr(self._abs(rel), name,
                                                       follow_symlinks=False))

    def fallocate(self, path, mode, offset, length, fh):
        """Allocate (mode 0, or ``FALLOC_FL_KEEP_SIZE``), punch a hole
        (``FALLOC_FL_PUNCH_HOLE``) or zero a range (``FALLOC_FL_ZERO_RANGE``) in the real
        file, and record what a read now sees: the zeroed range's blocks (holes where a
        whole block is zeroed), and the new size. Collapsing or inserting a range
        (``FALLOC_FL_COLLAPSE_RANGE``, ``FALLOC_FL_INSERT_RANGE``) is refused
        (EOPNOTSUPP, as a filesystem without them says)."""
        if mode & ~(FALLOC_KEEP_SIZE | FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE):
            raise OSError(errno.EOPNOTSUPP, "")
        rel = _rel(path)
        fid = self._fid_for_new(rel)
        f = self._file(fid)
        with f.lock:
            _fallocate(fh, mode, offset, length)
            records = []
            if mode & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE):
                records += self._zeroed(f, fh, offset, min(offset + length, f.size))
            size = os.fstat(fh).st_size
            if records or size != f.size:
                f.size = size
                records += self._entries_of(rel, fh, fid)
            if records:
                self.rec.stamp_and_put(records)
        return 0

    def _zeroed(self, f: _File, fh: int, lo: int, hi: int) -> list:
        """Records of bytes [lo, hi) of file ``f`` now reading as zeros: a hole for each
        whole block, a write of zeros (a hole slice) for the blocks partly in it."""
        bs, records = self.bs, []
        b = lo // bs
        while b * bs < hi:
            s, e = max(lo, b * bs), min(hi, (b + 1) * bs)
            if s == b * bs and (e == (b + 1) * bs or e >= f.size):
                f.blocks[b] = []
                records.append(("block", f.fid, b, HOLE_ID))
            else:
                records += self._write_records(f, fh, s, bytes(e - s))
            b += 1
        return records


def _pread(fd: int, n: int, offset: int) -> bytes:
    """``os.pread``, also from a descriptor the application opened write-only (through a
    read-only reopening of its file)."""
    try:
        return os.pread(fd, n, offset)
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
    rd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(rd, n, offset)
    finally:
        os.close(rd)


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_KEEP_SIZE = 0x01
FALLOC_PUNCH_HOLE = 0x02
FALLOC_ZERO_RANGE = 0x10
_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                    ctypes.c_int64]
    return _libc


def _raise_errno() -> None:
    import ctypes

    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _c().fallocate(fd, mode, offset, length) != 0:
        _raise_errno()


def _renameat2(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> None:
    if _c().renameat2(olddir, old, newdir, new, flags) != 0:
        _raise_errno()


def _merge(slices: list) -> list:
    """Adjacent slices of one chunk that follow each other, as one."""
    out = []
    for cid, off, n in slices:
        if out and out[-1][0] == cid and out[-1][1] + out[-1][2] == off:
            out[-1] = (cid, out[-1][1], out[-1][2] + n)
        else:
            out.append((cid, off, n))
    return out


def operations(ops: ShimOps):
    """An mfusepy Operations object that calls ``ops``, OSErrors as errno replies."""
    mfusepy = _fuse()

    class _Ops(mfusepy.Operations):
        use_ns = True  # times as integer nanoseconds (getattr, utimens): exact


        def init_with_config(self, conn, config):
            if conn is not None:  # writes of up to 1 MiB in one request
                conn.max_write = MAX_WRITE
            if config is not None:
                config.use_ino = 1
                # nothing cached: several paths may name one inode (hardlinks),
                # whose attributes change through any of them
                config.entry_timeout = config.attr_timeout = 0.0
                config.negative_timeout = 0.0

    def wrap(fn):
        def call(self, *args, **kw):
            try:
                return fn(*args, **kw)
            except OSError as e:
                raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
        return call

    def wrap_changing(fn):
        def call(self, *args, **kw):
            try:
                with ops.gate.shared():
                    ops.rec.admit()
                    return fn(*args, **kw)
            except OSError as e:
                raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
        return call

    for name in ("getattr", "readdir", "readlink", "statfs", "access", "open", "create",
                 "read", "write", "truncate", "fsync", "flush", "release", "unlink",
                 "mkdir", "rmdir", "mknod", "symlink", "link", "rename", "chmod", "chown",
                 "utimens", "getxattr", "listxattr", "setxattr", "removexattr",
                 "fallocate"):
        setattr(_Ops, name, (wrap_changing if name in CHANGING else wrap)(getattr(ops, name)))
    return _Ops()


def _shim_fuse(mfusepy):
    """mfusepy.FUSE passing renameat2's flags on (mfusepy drops them: a rename with
    RENAME_NOREPLACE would replace what is there)."""

    class ShimFUSE(mfusepy.FUSE):
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags)

    return ShimFUSE


def open_elsewhere(source: bytes) -> list[tuple[int, bytes]]:
    """(pid, path) of files under ``source`` that processes hold open now: their writes
    would bypass a shim mounted over it."""
    inside = source.rstrip(b"/") + b"/"
    found = []
    try:
        pids = [p for p in os.listdir(b"/proc") if p.isdigit()]
    except OSError:
        return found
    me = str(os.getpid()).encode()
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(b"/proc/" + pid + b"/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(b"/proc/" + pid + b"/fd/" + fd)
            except OSError:
                continue
            if target.startswith(inside):
                found.append((int(pid), target))
    return found


def clear_dead_mount(path: bytes) -> None:
    """Detach a shim left mounted at ``path`` by a process that died (its mount answers
    ENOTCONN), so the tree underneath is reachable again."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            from anytime.fusekit.mounting import detach

            detach(os.fsdecode(path))


def serve(repo, session, vol, source: bytes, sync: bool = False, on_ready=None,
          debug: bool = False, strict: bool = False) -> Recorder:
    """Mount the shim over ``source`` and serve it until it is unmounted (``fusermount3
    -u``, or a signal: the caller holds a ``fusekit.mounting.SignalUnmount`` for
    ``source`` from before any thread starts, so that every thread has the signals
    blocked); returns its recorder, stopped, every operation committed."""
    mfusepy = _fuse()
    root_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    rec = Recorder(repo, session, vol, source, sync, strict)
    ops = ShimOps(repo, rec, root_fd)
    rec.start()
    opts = {"foreground": True, "fsname": f"anytime-shim:{vol.name}", "subtype": "anytime-shim",
            "default_permissions": True, "use_ino": True, "max_threads": 16}
    if os.geteuid() == 0:
        opts["allow_other"] = True
    if debug:
        opts["debug"] = True
    mountpoint = os.fsdecode(source)
    try:
        if on_ready:
            threading.Thread(target=_when_mounted, args=(mountpoint, root_fd, on_ready),
                             daemon=True).start()
        _shim_fuse(mfusepy)(operations(ops), mountpoint, **opts)
    finally:
        rec.stop()
        os.close(root_fd)
    if rec.error is not None:
        raise rec.error
    return rec


def _when_mounted(mountpoint: str, root_fd: int, on_ready) -> None:
    """Call ``on_ready`` once the shim answers at ``mountpoint``."""
    under = os.fstat(root_fd)
    for _ in range(500):
        try:
            s = os.stat(mountpoint)
            if s.st_dev != under.st_dev:
                on_ready()
                return
        except OSError:
            pass
        time.sleep(0.01)
