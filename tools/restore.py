"""Restoring a file or tree as it was at an instant, to a new place or over the live one.

Terms. The *source* is a path of a volume at an instant T (a :class:`View`). The
*destination* is where it goes: a new name (``--to``) or the original path
(``--in-place``). The *anchor* is the existing directory the destination is reached
from (the parent of ``--to``; in place, the parent of the volume's root). Everything
below the anchor is reached through directory descriptors, each opened from its
parent's with ``O_NOFOLLOW``, and entries are looked at with ``lstat``: a symlink found
at the destination is an entry like any other, never followed, wherever it points.

Planning (:meth:`Restorer.plan`) changes nothing. It compares each entry of the source
at T with what is at its destination now and gives one :class:`Action` each:

  create     nothing is there: write it (a directory with all it holds)
  dir        a directory is there, as at T: restore into it, then fix its metadata
  same       an identical entry is there (size and mtime match, or all block ids match)
  meta       identical content, different mode/owner/times: fix the metadata only
  replace    (``--overwrite``) something different is there, of the same type or not
             (a file, a symlink, a directory with all it holds): replace it
  keep-both  (``--keep-both``) something different is there: keep it and write the
             entry next to it as NAME.restored-T, or NAME.restored-T.2, ... when that
             name is taken (never over an existing name)
  skip       (``--skip``) something different is there: leave it (and, where T has a
             directory, everything below)
  conflict   something different is there and no policy was given: the restore
             refuses before changing anything, listing them
  delete     (``--delete``) an entry of a restored directory that did not exist at T

Restoring in place below the volume's root, the directories on the way are planned
too: one that is gone is created as it was at T; one that is now a file or a symlink is
a difference like any other (replaced, skipped, kept both or a conflict).

Execution has two steps, so that a failure while writing changes nothing:

1. Staging: every new entry is written under a temporary name (``.anytime-HEX.tmp``)
   in its destination directory; a new directory gets a temporary name and everything
   in it is written inside under its final name. A pool of threads reads the blocks,
   checks each against its block id (keyed BLAKE3) and writes it; all-zero blocks are
   left as holes.
2. Placing: each staged entry is renamed to its name, over the entry it replaces
   (atomically exchanged with it when the type differs, the old one then removed), and
   never over a name that appeared since planning. Then ``--delete`` removes what did
   not exist at T, and metadata is fixed.

Durability. A *durable* restore is one in place, or one that replaces an existing
entry (``--overwrite``): it works on data the user has, so a crash (power loss, kernel
panic) during it must never leave a replaced file empty or short. Each file it writes
is flushed (``fsync``) once, by the thread that wrote it, before anything is placed, and
each directory it made is flushed at the end of staging; so what a rename puts in place
is on disk before the rename. At the end of placing, each existing directory whose
entries changed (renamed into, exchanged, deleted from) is flushed once, making the
renames themselves durable. A crash at any point leaves each entry either as it was or
as restored, complete. A restore to a new place (``--to`` a fresh name) does not flush,
like ``cp``, restic and borg: nothing it replaces can be lost, and a crash leaves at
most files to restore again.

Failures. A file with a damaged or missing block is not restored: its staged copy is
removed, what is at its destination stays as it was, the rest of the restore goes on,
and :attr:`Restorer.failed` lists it with the reason (the CLI exits 3, PartialError).
The same holds for an entry whose name appeared at the destination during the restore.
A destination that cannot be written (full, read-only, permission denied) raises
:class:`DestinationError` (exit 15). While staging, every temporary entry is removed:
the destination is as it was. While placing, entries already placed stay (each one
complete); the others are removed.

Interruption (:meth:`Restorer.stop`; SIGINT or SIGTERM while :meth:`execute` runs in
the main thread): the threads stop between blocks, pending work is dropped, and
:class:`Interrupted` is raised within about a second. Interrupted while staging, the
destination is as it was (temporary entries removed). Interrupted while placing,
entries already placed stay complete, the others are not placed (their temporary
entries removed), and metadata of existing directories may not be fixed yet.

One Restorer serves one restore: plan, then execute, from one thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import signal
import stat as st_
import threading
from collections import OrderedDict
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

from anytime.store.errors import DamagedData, DestinationError, PathNotFound
from anytime.store.format import (
    HOLE_ID,
    KIND_BLK,
    KIND_CHR,
    KIND_DIR,
    KIND_FIFO,
    KIND_FILE,
    KIND_NAMES,
    KIND_SOCK,
    KIND_SYMLINK,
    Entry,
    join_path,
    kind_of,
)
from anytime.vfs.instants import format_instant
from anytime.vfs.view import View

from .text import plural

POLICIES = ("overwrite", "skip", "keep-both")
#: Actions that write a new entry (staged, then placed).
WRITES = ("create", "replace", "keep-both")
#: Files of more blocks than this are written in parallel segments of this many blocks.
SEGMENT = 8
#: Smaller files go to the writing threads this many at a time.
BATCH_FILES = 16
#: Directory descriptors kept open at once (least recently used closed first).
OPEN_DIRS = 256
#: Seconds between the main thread's looks at the stop flag while threads work.
WAIT_STEP = 0.1

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


class Interrupted(Exception):
    """The restore was stopped (Ctrl-C); the message says what was left where."""


def _rename2(src_fd: int, src: bytes, dst_fd: int, dst: bytes, flags: int) -> bool:
    """renameat2 with ``flags``; False where the system or filesystem lacks it (the
    caller then falls back), FileExistsError for RENAME_NOREPLACE onto a name."""
    if _renameat2 is None:
        return False
    if _renameat2(src_fd, src, dst_fd, dst, flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def _mount_point(path: bytes) -> str:
    """The mount point of the filesystem holding ``path`` (for messages)."""
    try:
        path = os.path.abspath(path)
        dev = os.stat(path).st_dev
        while path != b"/" and os.stat(os.path.dirname(path)).st_dev == dev:
            path = os.path.dirname(path)
        return os.fsdecode(path)
    except OSError:
        return os.fsdecode(path)


class Dir:
    """A directory of the destination, reached from ``parent`` by ``name`` (the anchor
    has no parent; its ``name`` is its absolute path). ``path``: where it is once the
    restore is done (for messages). ``fresh``: made by this restore, so nothing was in
    it when planned; while staged, ``name`` is its temporary name."""

    __slots__ = ("parent", "name", "path", "fresh")

    def __init__(self, parent: Dir | None, name: bytes, path: bytes, fresh: bool):
        self.parent, self.name, self.path, self.fresh = parent, name, path, fresh


class DirFds:
    """Open descriptors of destination directories, each opened from its parent's with
    O_NOFOLLOW, so a symlink put where a directory was makes the open fail instead of
    leading elsewhere. At most OPEN_DIRS stay open; threads may share it."""

    def __init__(self):
        self._fds: OrderedDict[Dir, list[int]] = OrderedDict()  # dir -> [fd, users]
        self._lock = threading.Lock()

    @contextmanager
    def of(self, d: Dir):
        with self._lock:
            fd = self._acquire(d)
        try:
            yield fd
        finally:
            with self._lock:
                self._fds[d][1] -= 1

    def _acquire(self, d: Dir) -> int:
        rec = self._fds.get(d)
        if rec is not None:
            self._fds.move_to_end(d)
            rec[1] += 1
            return rec[0]
        if d.parent is None:
            fd = os.open(d.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            pfd = self._acquire(d.parent)
            try:
                fd = os.open(d.name, _O_DIR, dir_fd=pfd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise DestinationError(
                        f"{os.fsdecode(d.path)} was changed during the restore (it is no "
                        f"longer the directory it was); nothing was written through it. "
                        f"Restore again") from None
                raise
            finally:
                self._fds[d.parent][1] -= 1
        self._fds[d] = [fd, 1]
        while len(self._fds) > OPEN_DIRS:
            idle = next((k for k, (_, users) in self._fds.items() if users == 0), None)
            if idle is None:
                break
            os.close(self._fds.pop(idle)[0])
        return fd

    def close_all(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()


@dataclass(eq=False)
class Action:
    op: str
    dir: Dir  # the destination directory the entry is in
    name: bytes  # its name there (keep-both: the free name chosen)
    path: bytes  # inside the volume
    entry: Entry | None
    there: os.stat_result | None = None  # what was at the destination when planned
    child: Dir | None = None  # the directory this action makes
    staged: bytes | None = None  # the temporary name it is written under
    failed: str | None = None  # why it could not be restored

    @property
    def dest(self) -> bytes:
        return os.path.join(self.dir.path, self.name)

    @property
    def existed(self) -> bool:
        return self.there is not None

    def row(self) -> dict:
        """The action as a plain dict (``--dry-run --json``)."""
        row = {"op": self.op, "path": os.fsdecode(self.dest),
               "kind": KIND_NAMES[self.entry.kind] if self.entry else None}
        if self.there is not None:
            row["there"] = KIND_NAMES.get(kind_of(self.there.st_mode), "other")
        return row


class Restorer:
    def __init__(self, view: View, policy: str | None = None, delete: bool = False,
                 progress=None, workers: int | None = None):
        self.view = view
        self.repo = view.repo
        self.policy = policy
        self.delete = delete
        self.progress = progress
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.actions: list[Action] = []
        self.stamp = format_instant(view.instant, utc=True, basic=True)  # no ':' in names
        self.dest = b""
        self.in_place = False
        self.durable = False  # flush files and directories (module docstring)
        self.anchor: Dir | None = None
        self.fds = DirFds()
        self.bytes_total = 0
        self.bytes_done = 0
        self.placed = 0  # changes made at the destination
        self.signal: int | None = None  # the signal that stopped the restore
        self._halt = threading.Event()  # threads stop between blocks
        self._tmp: dict[tuple[Dir, bytes], None] = {}  # staged entries not placed yet
        self._claimed: dict[Dir, set[bytes]] = {}  # names the plan uses, per directory
        self._lock = threading.Lock()
        self._owner = (os.geteuid(), os.getegid())

    # --- planning ----------------------------------------------------------------------
    def plan(self, path: bytes, dest: bytes, e: Entry | None = None,
             root: bytes | None = None) -> list[Action]:
        """Plan restoring ``path`` (whose entry ``e`` the caller may have looked up) to
        ``dest``. ``root``: restoring in place, the volume's root on disk, of which
        ``dest`` is ``path`` below; the directories from the root down are planned too."""
        e = e or self.view.lookup(path)
        if e is None:
            raise PathNotFound(f"{self.view.vol.name}:/{os.fsdecode(path)} does not exist at "
                               f"{format_instant(self.view.instant)}")
        self.dest = dest
        self.in_place = root is not None
        if root is not None:
            parts = [p for p in path.split(b"/") if p]
            top, first = os.path.split(root.rstrip(b"/") or b"/")
            chain = [(first, b"")] + [(p, b"/".join(parts[:i + 1])) for i, p in enumerate(parts)]
        else:
            top, first = os.path.split(dest)
            chain = [(first, path)]
        top = top or b"/"
        anchor = self.anchor = Dir(None, top, top, fresh=False)
        try:
            with self.fds.of(anchor):
                pass
        except (FileNotFoundError, NotADirectoryError):
            raise DestinationError(f"{os.fsdecode(top)} does not exist; create it first") from None
        try:
            self._plan_chain(anchor, chain, e)
        except OSError as err:
            raise self._dest_error(err, planning=True) from None
        finally:
            self.fds.close_all()
        return self.actions

    def _plan_chain(self, d: Dir, chain: list[tuple[bytes, bytes]], e: Entry) -> None:
        if chain[0][0] == b"":  # the volume's root is '/': the anchor itself
            chain = chain[1:]
            if not chain:
                self.actions.append(Action("dir", d, b"", b"", e, os.stat(d.name)))
                self._plan_children(d, b"", existing=True)
                return
        fresh = False
        for name, vpath in chain[:-1]:  # directories on the way, each as at T
            s = None if fresh else self._lstat(d, name)
            if s is not None and st_.S_ISDIR(s.st_mode):
                d = Dir(d, name, os.path.join(d.path, name), fresh=False)
                continue
            a = self._add("create" if s is None else self._policy_op(), d, name, vpath,
                          self.view.lookup(vpath), s)
            if a.child is None:
                return
            d, fresh = a.child, True
        name, vpath = chain[-1]
        self._plan(d, name, vpath, e, fresh)

    def _plan(self, d: Dir, name: bytes, path: bytes, e: Entry, fresh: bool) -> None:
        """Plan ``e`` as ``name`` in ``d``; ``fresh``: ``d`` is made by this restore, so
        nothing can be there yet (no lstat needed)."""
        s = None if fresh else self._lstat(d, name)
        if s is None:
            a = self._add("create", d, name, path, e, None)
        elif e.kind == KIND_DIR and st_.S_ISDIR(s.st_mode):
            self.actions.append(Action("dir", d, name, path, e, s))
            self._plan_children(Dir(d, name, os.path.join(d.path, name), fresh=False), path,
                                existing=True)
            return
        elif self._same_content(d, name, s, e):
            op = "same" if (s.st_mode, s.st_uid, s.st_gid) == (e.mode, e.uid, e.gid) and (
                e.kind != KIND_FILE or s.st_mtime_ns == e.mtime_ns) else "meta"
            self.actions.append(Action(op, d, name, path, e, s))
            return
        else:
            a = self._add(self._policy_op(), d, name, path, e, s)
        if a.child is not None:
            self._plan_children(a.child, path, existing=False)

    def _plan_children(self, d: Dir, path: bytes, existing: bool) -> None:
        children = self.view.listdir(path)
        self._claimed[d] = {n for n, _ in children}
        for name, child in children:
            self._plan(d, name, join_path(path, name), child, fresh=not existing)
        if self.delete and existing:
            with self.fds.of(d) as fd:
                there = os.listdir(fd)
            for name in sorted(set(map(os.fsencode, there)) - self._claimed[d]):
                self.actions.append(Action("delete", d, name, b"", None))

    def _policy_op(self) -> str:
        return {"overwrite": "replace", "skip": "skip", "keep-both": "keep-both",
                None: "conflict"}[self.policy]

    def _add(self, op: str, d: Dir, name: bytes, path: bytes, e: Entry,
             s: os.stat_result | None) -> Action:
        if op == "keep-both":
            name = self._free_name(d, name)
        a = Action(op, d, name, path, e, s)
        if op in WRITES:
            if e.kind == KIND_DIR:
                a.child = Dir(d, name, os.path.join(d.path, name), fresh=True)
            elif e.kind == KIND_FILE:
                self.bytes_total += e.size
        self.actions.append(a)
        return a

    def _free_name(self, d: Dir, name: bytes) -> bytes:
        """NAME.restored-T, or NAME.restored-T.N for the first N >= 2 that is neither at
        the destination nor used by the plan."""
        base = name + b".restored-" + self.stamp.encode()
        taken = self._claimed.setdefault(d, set())
        cand, n = base, 1
        while cand in taken or self._lstat(d, cand) is not None:
            n += 1
            cand = b"%s.%d" % (base, n)
        taken.add(cand)
        return cand

    def _lstat(self, d: Dir, name: bytes) -> os.stat_result | None:
        with self.fds.of(d) as fd:
            try:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def _same_content(self, d: Dir, name: bytes, s: os.stat_result, e: Entry) -> bool:
        kind = e.kind
        if kind == KIND_FILE:
            if not st_.S_ISREG(s.st_mode) or s.st_size != e.size:
                return False
            if s.st_mtime_ns == e.mtime_ns:
                return True
            try:
                stored = self.view.block_ids(e, 0, e.size)[1]
            except DamagedData:  # no content to compare (unreadable when captured)
                return False
            return self._block_ids_there(d, name) == stored
        if kind == KIND_SYMLINK:
            with self.fds.of(d) as fd:
                return st_.S_ISLNK(s.st_mode) and os.readlink(name, dir_fd=fd) == e.target
        return st_.S_IFMT(s.st_mode) == st_.S_IFMT(e.mode) and s.st_rdev == e.rdev

    def _block_ids_there(self, d: Dir, name: bytes) -> list[bytes]:
        """The block references of a file at the destination, as a snapshot names them."""
        with self.fds.of(d) as dfd:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        with open(fd, "rb") as f:
            return self.repo.file_refs(f, self.view.bs)

    @property
    def conflicts(self) -> list[Action]:
        return [a for a in self.actions if a.op == "conflict"]

    @property
    def failed(self) -> list[Action]:
        """Entries that could not be restored (``failed`` says why)."""
        return [a for a in self.actions if a.failed]

    # --- doing -------------------------------------------------------------------------
    def stop(self, signum: int | None = None) -> None:
        """Stop the restore as soon as possible (from any thread or a signal handler):
        :meth:`execute` raises :class:`Interrupted`."""
        self.signal = signum or self.signal or signal.SIGINT
        self._halt.set()

    def execute(self) -> None:
        self.durable = self.in_place or any(a.op == "replace" for a in self.actions)
        previous = self._catch_signals()
        try:
            self._stage()
            self._check_stop()
            self._place()
        except BaseException as err:
            self._halt.set()
            self._cleanup()
            if isinstance(err, OSError):
                raise self._dest_error(err) from None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.fds.close_all()

    def _catch_signals(self) -> dict:
        """Route SIGINT and SIGTERM to :meth:`stop` (only the main thread can)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, lambda signum, _frame: self.stop(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}

    def _check_stop(self) -> None:
        if self.signal is None:
            return
        raise Interrupted(f"restore interrupted; {self._left()}")

    def _left(self) -> str:
        """What a restore that stops now leaves at the destination."""
        if self.placed:
            return (f"{plural(self.placed, 'entry')} already placed "
                    f"{('stays', 'stay')[self.placed > 1]}, each complete; the others "
                    f"were not placed and their temporary files were removed")
        return "nothing at the destination was changed (temporary files were removed)"

    def _dest_error(self, err: OSError, planning: bool = False) -> DestinationError:
        dest = os.fsdecode(self.dest)
        where = os.fsdecode(err.filename) if isinstance(err.filename, (str, bytes)) and \
            os.path.isabs(err.filename) else dest
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            what = (f"the destination disk is full ({dest}, on the filesystem at "
                    f"{_mount_point(self.anchor.path)}); free space or choose another --to, then "
                    f"restore again")
        elif err.errno == errno.EROFS:
            what = (f"the destination {dest} is on a read-only filesystem "
                    f"({_mount_point(self.anchor.path)}); remount it read-write or choose "
                    f"another --to")
        elif err.errno in (errno.EACCES, errno.EPERM):
            what = (f"permission denied at {where}; restore as a user who may write "
                    f"there, or choose another --to")
        elif err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            what = (f"{where} appeared at the destination during the restore; look at "
                    f"it and restore again")
        else:
            what = f"cannot restore to {where}: {err.strerror or err}"
        return DestinationError(f"{what}; {'nothing was changed' if planning else self._left()}")

    # --- staging: everything new, under temporary names ---------------------------------
    def _stage(self) -> None:
        files, links, others = [], [], []
        first_link: dict[int, Action] = {}
        for a in self.actions:
            if a.op not in WRITES:
                continue
            e = a.entry
            if e.kind == KIND_DIR:
                self._stage_dir(a)
            elif e.kind != KIND_FILE:
                others.append(a)
            elif e.nlink > 1 and e.file_id in first_link:
                links.append((a, first_link[e.file_id]))
            else:
                first_link[e.file_id] = a
                files.append(a)
        self._stage_files_parallel(files)
        for a in others:
            self._check_stop()
            self._stage_other(a)
        for a, first in links:
            self._check_stop()
            self._stage_link(a, first)
        for a in reversed(self.actions):  # deepest first: their content is all in
            if a.child is not None:
                with self.fds.of(a.dir) as fd:
                    self._set_meta_at(fd, a.child.name, a.entry)
        if self.durable:  # their entries on disk before they are placed
            for a in self.actions:
                if a.child is not None and a.staged is not None:
                    self._check_stop()
                    with self.fds.of(a.child) as fd:
                        os.fsync(fd)

    def _stage_name(self, a: Action) -> bytes:
        """The name ``a`` is written under: its own in a directory this restore makes
        (invisible until that is placed), else a temporary one, removed on failure."""
        if a.dir.fresh:
            name = a.name
        else:
            name = b".anytime-" + secrets.token_hex(8).encode() + b".tmp"
            with self._lock:
                self._tmp[(a.dir, name)] = None
        a.staged = name
        return name

    def _stage_dir(self, a: Action) -> None:
        with self.fds.of(a.dir) as fd:
            name = self._stage_name(a)
            os.mkdir(name, 0o700, dir_fd=fd)
        a.child.name = name

    def _stage_files_parallel(self, files: list[Action]) -> None:
        big = [a for a in files if a.entry.size > SEGMENT * self.view.bs]
        small = [a for a in files if a.entry.size <= SEGMENT * self.view.bs]
        pool = ThreadPoolExecutor(self.workers)
        try:
            for a in big:  # one at a time, its segments in parallel
                self._check_stop()
                self._stage_file(a, pool)
            batches = [small[i:i + BATCH_FILES] for i in range(0, len(small), BATCH_FILES)]
            self._wait([pool.submit(self._stage_files, b) for b in batches])
        except BaseException:
            self._halt.set()  # the threads stop between blocks
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self._check_stop()

    def _wait(self, futures: list) -> None:
        """Wait for ``futures``, raising the first error, returning early once stopped
        (the main thread stays free to take signals)."""
        pending = set(futures)
        while pending and not self._halt.is_set():
            done, pending = wait(pending, timeout=WAIT_STEP, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()

    def _stage_files(self, actions: list[Action]) -> None:
        for a in actions:
            if self._halt.is_set():
                return
            self._stage_file(a)

    def _stage_file(self, a: Action, pool: ThreadPoolExecutor | None = None) -> None:
        """Write one file; with ``pool``, its blocks are fetched and written in parallel
        segments (for large files, called from the main thread). A damaged block makes
        it fail alone: its staged copy is removed."""
        e = a.entry
        with self.fds.of(a.dir) as dfd:
            fd = os.open(self._stage_name(a), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            try:
                ids = self.view.block_ids(e, 0, e.size)[1]
            except DamagedData as err:
                a.failed = str(err)
                ids = []
            n = len(ids)
            if pool is None:
                self._write_blocks(fd, a, ids, 0, n)
            else:
                self._wait([pool.submit(self._write_blocks, fd, a, ids, i, min(i + SEGMENT, n))
                            for i in range(0, n, SEGMENT)])
            if not (a.failed or self._halt.is_set()):
                os.ftruncate(fd, e.size)  # the size, whatever holes or short blocks left
                self._set_meta(fd, e, new=True)
                if self.durable:  # on disk before it is renamed over anything
                    os.fsync(fd)
        finally:
            os.close(fd)
        if a.failed:
            self._unstage(a)
        if self.progress:
            self.progress.bytes_done(self.bytes_done, self.bytes_total)

    def _write_blocks(self, fd: int, a: Action, ids: list[bytes], first: int, stop: int
                      ) -> None:
        """Write blocks [first, stop) of a file, each chunk checked against its id (holes
        are left unwritten); stops early once the restore is stopped or the file failed."""
        bs, size = self.view.bs, a.entry.size
        halt = self._halt
        with self.repo.read_txn() as txn:
            for i in range(first, stop):
                if halt.is_set() or a.failed:
                    return
                ref = ids[i]
                if ref == HOLE_ID:
                    continue
                try:  # each chunk hashed against its id; damage is recorded for the writer
                    data = b"".join(self.repo.read_ref(txn, ref, verified=True))
                except DamagedData as err:
                    a.failed = f"block {i} is damaged in the repository: {err}"
                    return
                except OSError as err:  # the repository's, not the destination's
                    a.failed = (f"block {i} could not be read from the repository: "
                                f"{err.strerror or err} ({os.fsdecode(err.filename or '')})")
                    return
                want = min(bs, size - i * bs)
                os.pwrite(fd, data[:want] if want < len(data) else data, i * bs)
                self.bytes_done += want

    def _unstage(self, a: Action) -> None:
        """Remove what was staged for ``a`` (it failed; it must not be left half-written)."""
        with self.fds.of(a.dir) as fd:
            os.unlink(a.staged, dir_fd=fd)
        with self._lock:
            self._tmp.pop((a.dir, a.staged), None)
        a.staged = None

    def _stage_other(self, a: Action) -> None:
        e = a.entry
        if e.kind == KIND_SOCK:
            return  # sockets belong to running programs; nothing to restore
        with self.fds.of(a.dir) as fd:
            name = self._stage_name(a)
            if e.kind == KIND_SYMLINK:
                os.symlink(e.target, name, dir_fd=fd)
            elif e.kind == KIND_FIFO:
                os.mkfifo(name, 0o600, dir_fd=fd)
            elif e.kind in (KIND_CHR, KIND_BLK):
                os.mknod(name, e.mode, e.rdev, dir_fd=fd)
            self._set_meta_at(fd, name, e)

    def _stage_link(self, a: Action, first: Action) -> None:
        if first.failed or first.staged is None:
            a.failed = f"a hard link of {os.fsdecode(first.dest)}, which {first.failed or 'failed'}"
            return
        with self.fds.of(first.dir) as src, self.fds.of(a.dir) as dst:
            os.link(first.staged, self._stage_name(a), src_dir_fd=src, dst_dir_fd=dst,
                    follow_symlinks=False)

    # --- placing: staged entries to their names, then --delete and metadata ---------------
    def _place(self) -> None:
        for a in self.actions:
            if a.op in WRITES and a.staged is not None and not a.dir.fresh:
                self._check_stop()
                with self.fds.of(a.dir) as fd:
                    self._place_one(fd, a)
        for a in self.actions:
            if a.op == "delete":
                self._check_stop()
                with self.fds.of(a.dir) as fd:
                    self._remove_at(fd, a.name)
                self.placed += 1
        for a in self.actions:
            if a.op == "meta":
                with self.fds.of(a.dir) as fd:
                    self._set_meta_at(fd, a.name, a.entry, expect=a.there)
        for a in reversed(self.actions):
            if a.op == "dir" and a.name:
                with self.fds.of(a.dir) as fd:
                    self._set_meta_at(fd, a.name, a.entry, expect=a.there)
        if self.durable:
            self._sync_dirs()

    def _sync_dirs(self) -> None:
        """Flush each existing directory whose entries this restore changed, once."""
        changed = {a.dir: None for a in self.actions if not a.dir.fresh and (
            a.op == "delete" or (a.op in WRITES and a.staged is not None and not a.failed))}
        for d in changed:
            with self.fds.of(d) as fd:
                os.fsync(fd)

    def _place_one(self, fd: int, a: Action) -> None:
        if a.op == "replace":
            new_type, old_type = st_.S_IFMT(a.entry.mode), st_.S_IFMT(a.there.st_mode)
            if new_type == old_type and new_type != st_.S_IFDIR:
                os.rename(a.staged, a.name, src_dir_fd=fd, dst_dir_fd=fd)  # atomic
            elif _rename2(fd, a.staged, fd, a.name, _RENAME_EXCHANGE):
                self._remove_at(fd, a.staged)  # the old entry, now under the staged name
            else:  # no exchange here: the old entry goes first
                self._remove_at(fd, a.name)
                os.rename(a.staged, a.name, src_dir_fd=fd, dst_dir_fd=fd)
        else:  # create, keep-both: never over a name that appeared since planning
            while not self._rename_noreplace(fd, a.staged, a.name):
                if a.op == "create":
                    a.failed = "it appeared at the destination during the restore; left as it is"
                    self._remove_at(fd, a.staged)
                    self._forget(a)
                    return
                self._claimed[a.dir].discard(a.name)
                a.name = self._free_name(a.dir, a.name.rsplit(b".restored-", 1)[0])
        self._forget(a)
        if a.child is not None:
            a.child.name = a.name
        self.placed += 1

    def _forget(self, a: Action) -> None:
        with self._lock:
            self._tmp.pop((a.dir, a.staged), None)

    def _rename_noreplace(self, fd: int, src: bytes, dst: bytes) -> bool:
        """Rename unless ``dst`` exists (False then)."""
        try:
            if _rename2(fd, src, fd, dst, _RENAME_NOREPLACE):
                return True
            if st_.S_ISDIR(os.stat(src, dir_fd=fd, follow_symlinks=False).st_mode):
                if self._lstat_at(fd, dst) is not None:  # no atomic test for directories
                    return False
                os.rename(src, dst, src_dir_fd=fd, dst_dir_fd=fd)
                return True
            os.link(src, dst, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            os.unlink(src, dir_fd=fd)
            return True
        except FileExistsError:
            return False

    @staticmethod
    def _lstat_at(fd: int, name: bytes) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    @staticmethod
    def _remove_at(fd: int, name: bytes) -> None:
        """Remove an entry of a directory, a directory with all it holds (symlinks in it
        removed, never followed)."""
        s = Restorer._lstat_at(fd, name)
        if s is None:
            return
        if st_.S_ISDIR(s.st_mode):
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)

    # --- metadata ------------------------------------------------------------------------
    def _set_meta(self, target: bytes | int, e: Entry, new: bool = False,
                  dir_fd: int | None = None) -> None:
        """xattrs, owner, mode and times of ``e`` on an open descriptor, on a path (the
        /proc name of an O_PATH descriptor), or with ``dir_fd`` on the symlink ``target``
        of that directory itself. ``new``: a file this restore created, which already
        has our owner."""
        link = dir_fd is not None
        kw = {"follow_symlinks": False, "dir_fd": dir_fd} if link else {}
        for k, v in e.xattrs.items():
            try:
                if link:  # xattr calls take no dir_fd: the name through /proc
                    os.setxattr(b"/proc/self/fd/%d/%s" % (dir_fd, target), k, v,
                                follow_symlinks=False)
                else:
                    os.setxattr(target, k, v)
            except OSError:
                pass
        if not (new and (e.uid, e.gid) == self._owner):
            try:
                os.chown(target, e.uid, e.gid, **kw)
            except PermissionError:
                pass
        if not link:
            os.chmod(target, st_.S_IMODE(e.mode))
        os.utime(target, ns=(e.atime_ns, e.mtime_ns), **kw)

    def _set_meta_at(self, dfd: int, name: bytes, e: Entry,
                     expect: os.stat_result | None = None) -> None:
        """The metadata of ``e`` on the entry ``name`` of a directory, never following a
        symlink; with ``expect``, only if the entry is still of that type."""
        if e.kind == KIND_SYMLINK:
            s = self._lstat_at(dfd, name)
            if s is not None and st_.S_ISLNK(s.st_mode):
                self._set_meta(name, e, dir_fd=dfd)
            return
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if expect is None or st_.S_IFMT(os.fstat(fd).st_mode) == st_.S_IFMT(
                    expect.st_mode):  # else it changed since planning: leave it
                self._set_meta(b"/proc/self/fd/%d" % fd, e)
        finally:
            os.close(fd)

    def _cleanup(self) -> None:
        """Remove every staged entry not placed (a new directory with all in it)."""
        with self._lock:
            staged = list(self._tmp)
            self._tmp.clear()
        for d, name in staged:
            try:
                with self.fds.of(d) as fd:
                    self._remove_at(fd, name)
            except (OSError, DestinationError):
                pass
