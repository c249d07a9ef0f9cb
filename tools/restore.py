"""Restoring a file or tree as it was at an instant, to a new place or over the live one.

The restore is planned first (:meth:`Restorer.plan`): every entry of the source at T is
compared with what exists at its destination, giving one :class:`Action` each:

  create     nothing exists there: write it
  same       an identical file exists (size and mtime match, or all block ids match)
  meta       identical content, different mode/owner/times: fix the metadata only
  conflict   a different file exists; resolved by the policy ``overwrite`` (replace),
             ``skip`` (leave it) or ``keep-both`` (write next to it as NAME.restored-T);
             without a policy the restore stops before changing anything
  delete     an entry at the destination that did not exist at T (only with --delete)

A file that replaces an existing one is written to a temporary name in the destination
directory and renamed into place, so a reader sees the old file or the restored one,
never a mix; a file where nothing existed is written under its own name. Every block is
checked against its block id (keyed BLAKE3) before it is written. All-zero blocks are
left as holes. On failure (a full or read-only disk), temporary files and everything
this restore created are removed; files it had already replaced stay replaced (each
one complete).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat as st_
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from anytime.store.errors import DamagedData, DestinationError, PathNotFound
from anytime.store.format import (
    HOLE_ID,
    KIND_BLK,
    KIND_CHR,
    KIND_DIR,
    KIND_FIFO,
    KIND_FILE,
    KIND_SOCK,
    KIND_SYMLINK,
    Entry,
    block_id,
    join_path,
)
from anytime.store.localfs import file_block_ids
from anytime.vfs.instants import format_instant
from anytime.vfs.view import View

POLICIES = ("overwrite", "skip", "keep-both")
#: Files of more blocks than this are written in parallel segments of this many blocks.
SEGMENT = 8
#: Smaller files go to the writing threads this many at a time.
BATCH_FILES = 16


@dataclass
class Action:
    op: str
    dest: bytes
    path: bytes  # inside the volume
    entry: Entry | None
    existed: bool = False


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
        self._created: list[bytes] = []
        self._tmp: set[bytes] = set()
        self.bytes_total = 0
        self.bytes_done = 0
        self._owner = (os.geteuid(), os.getegid())

    # --- planning ----------------------------------------------------------------------
    def plan(self, path: bytes, dest: bytes, e: Entry | None = None) -> list[Action]:
        """Plan restoring ``path`` (whose entry ``e`` the caller may have looked up) to
        ``dest``."""
        e = e or self.view.lookup(path)
        if e is None:
            raise PathNotFound(f"{self.view.vol.name}:/{os.fsdecode(path)} does not exist at "
                               f"{format_instant(self.view.instant)}")
        self._plan(path, dest, e)
        return self.actions

    def _plan(self, path: bytes, dest: bytes, e: Entry, fresh: bool = False) -> None:
        """Plan ``e`` at ``dest``; ``fresh``: its parent is created by this restore, so
        nothing can exist there yet (no lstat needed)."""
        d = None
        if not fresh:
            try:
                d = os.lstat(dest)
            except FileNotFoundError:
                pass
        if e.kind == KIND_DIR:
            if d is not None and not st_.S_ISDIR(d.st_mode):
                self._conflict(path, dest, e)
                if self.actions[-1].op != "replace":
                    return
            self.actions.append(Action("dir", dest, path, e, existed=d is not None and
                                       st_.S_ISDIR(d.st_mode)))
            children = self.view.listdir(path)
            for name, child in children:
                self._plan(join_path(path, name), os.path.join(dest, name), child,
                           fresh=d is None)
            if self.delete and d is not None and st_.S_ISDIR(d.st_mode):
                keep = {n for n, _ in children}
                for name in sorted(os.listdir(dest)):
                    if name not in keep:
                        self.actions.append(Action("delete", os.path.join(dest, name), b"", None))
            return
        if d is None:
            self.actions.append(Action("create", dest, path, e))
            if e.kind == KIND_FILE:
                self.bytes_total += e.size
            return
        if self._same_content(dest, d, e):
            if (d.st_mode, d.st_uid, d.st_gid) != (e.mode, e.uid, e.gid) or (
                    e.kind == KIND_FILE and d.st_mtime_ns != e.mtime_ns):
                self.actions.append(Action("meta", dest, path, e, existed=True))
            else:
                self.actions.append(Action("same", dest, path, e, existed=True))
            return
        self._conflict(path, dest, e)

    def _conflict(self, path: bytes, dest: bytes, e: Entry) -> None:
        op = {"overwrite": "replace", "skip": "skip", "keep-both": "keep-both",
              None: "conflict"}[self.policy]
        if op == "keep-both":
            dest = dest + b".restored-" + self.stamp.encode()
        self.actions.append(Action(op, dest, path, e, existed=True))
        if op in ("replace", "keep-both") and e.kind == KIND_FILE:
            self.bytes_total += e.size

    def _same_content(self, dest: bytes, d: os.stat_result, e: Entry) -> bool:
        kind = e.kind
        if kind == KIND_FILE:
            if not st_.S_ISREG(d.st_mode) or d.st_size != e.size:
                return False
            if d.st_mtime_ns == e.mtime_ns:
                return True
            return (file_block_ids(dest, self.view.bs, self.repo.block_key)
                    == self.view.block_ids(e, 0, e.size)[1])
        if kind == KIND_SYMLINK:
            return st_.S_ISLNK(d.st_mode) and os.readlink(dest) == e.target
        return st_.S_IFMT(d.st_mode) == st_.S_IFMT(e.mode) and d.st_rdev == e.rdev

    @property
    def conflicts(self) -> list[Action]:
        return [a for a in self.actions if a.op == "conflict"]

    # --- doing -------------------------------------------------------------------------
    def execute(self) -> None:
        try:
            self._execute()
        except BaseException as err:
            self._cleanup()
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DestinationError(
                    f"the destination disk is full ({os.fsdecode(err.filename or b'')}); "
                    f"free space and restore again. Temporary files and entries this "
                    f"restore created were removed.") from None
            if isinstance(err, OSError) and err.errno == errno.EROFS:
                raise DestinationError("the destination is on a read-only filesystem; "
                                       "choose another --to") from None
            raise

    def _execute(self) -> None:
        dirs = [a for a in self.actions if a.op == "dir"]
        for a in self.actions:
            if a.op == "delete":
                self._remove(a.dest)
        for a in dirs:
            if not a.existed:
                try:
                    os.lstat(a.dest)
                    self._remove(a.dest)  # a conflicting non-directory, policy overwrite
                except FileNotFoundError:
                    pass
                os.mkdir(a.dest, 0o700)
                self._created.append(a.dest)
        writes = [a for a in self.actions if a.op in ("create", "replace", "keep-both")]
        first_link: dict[int, Action] = {}
        files, links, others = [], [], []
        for a in writes:
            if a.entry.kind == KIND_FILE:
                if a.entry.nlink > 1 and a.entry.file_id in first_link:
                    links.append((a, first_link[a.entry.file_id]))
                    continue
                first_link[a.entry.file_id] = a
                files.append(a)
            else:
                others.append(a)
        big = [a for a in files if a.entry.size > SEGMENT * self.view.bs]
        small = [a for a in files if a.entry.size <= SEGMENT * self.view.bs]
        with ThreadPoolExecutor(self.workers) as pool:
            for a in big:  # one at a time, its segments in parallel
                self._write_file(a, pool)
            batches = [small[i:i + BATCH_FILES] for i in range(0, len(small), BATCH_FILES)]
            for fut in [pool.submit(self._write_files, b) for b in batches]:
                fut.result()
        for a in others:
            self._write_other(a)
        for a, first in links:
            tmp = self._tmpname(a.dest)
            os.link(first.dest, tmp)
            self._place(tmp, a)
        for a in self.actions:
            if a.op == "meta":
                self._set_meta(a.dest, a.entry)
        for a in reversed(dirs):
            self._set_meta(a.dest, a.entry)

    def _tmpname(self, dest: bytes) -> bytes:
        tmp = os.path.join(os.path.dirname(dest), b".anytime-" + secrets.token_hex(8).encode()
                           + b".tmp")
        self._tmp.add(tmp)
        return tmp

    def _place(self, tmp: bytes, a: Action) -> None:
        if a.op == "replace" and os.path.isdir(a.dest) and not os.path.islink(a.dest):
            shutil.rmtree(a.dest)
        os.rename(tmp, a.dest)
        self._tmp.discard(tmp)
        if not a.existed or a.op == "keep-both":
            self._created.append(a.dest)

    def _write_files(self, actions: list[Action]) -> None:
        for a in actions:
            self._write_file(a)

    def _write_file(self, a: Action, pool: ThreadPoolExecutor | None = None) -> None:
        """Write one file; with ``pool``, its blocks are fetched and written in parallel
        segments (for large files, called from the main thread)."""
        e = a.entry
        if a.op == "create":
            # Nothing is there: write in place (O_EXCL); a failure removes it with the
            # rest of what this restore created.
            tmp = a.dest
            self._created.append(a.dest)
        else:
            tmp = self._tmpname(a.dest)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            ids = self.view.block_ids(e, 0, e.size)[1]
            n = len(ids)
            if pool is None:
                self._write_blocks(fd, a, ids, 0, n)
            else:
                for f in [pool.submit(self._write_blocks, fd, a, ids, i, min(i + SEGMENT, n))
                          for i in range(0, n, SEGMENT)]:
                    f.result()
            os.ftruncate(fd, e.size)  # the size, whatever holes or short blocks left
            self._set_meta(fd, e, new=True)
        finally:
            os.close(fd)
        if tmp != a.dest:
            self._place(tmp, a)
        if self.progress:
            self.progress.bytes_done(self.bytes_done, self.bytes_total)

    def _write_blocks(self, fd: int, a: Action, ids: list[bytes], first: int, stop: int
                      ) -> None:
        """Write blocks [first, stop) of a file, each checked against its id (holes are
        left unwritten)."""
        bs, key, size = self.view.bs, self.repo.block_key, a.entry.size
        with self.repo.read_txn() as txn:
            for i in range(first, stop):
                bid = ids[i]
                if bid == HOLE_ID:
                    continue
                data = self.repo.read_block(txn, bid)
                if block_id(key, data) != bid:
                    raise DamagedData(f"block {i} of {os.fsdecode(a.path)} does not match "
                                      f"its id; run 'anytime check'")
                want = min(bs, size - i * bs)
                os.pwrite(fd, data[:want] if want < len(data) else data, i * bs)
                self.bytes_done += want

    def _write_other(self, a: Action) -> None:
        e = a.entry
        tmp = self._tmpname(a.dest)
        if e.kind == KIND_SYMLINK:
            os.symlink(e.target, tmp)
        elif e.kind == KIND_FIFO:
            os.mkfifo(tmp, 0o600)
        elif e.kind in (KIND_CHR, KIND_BLK):
            os.mknod(tmp, e.mode, e.rdev)
        elif e.kind == KIND_SOCK:
            self._tmp.discard(tmp)
            return  # sockets belong to running programs; nothing to restore
        self._set_meta(tmp, e)
        self._place(tmp, a)

    def _set_meta(self, target: bytes | int, e: Entry, new: bool = False) -> None:
        """xattrs, owner, mode and times of ``e`` on an open descriptor or a path (a
        symlink itself, not what it points to). ``new``: a file this restore created,
        which already has our owner."""
        path = not isinstance(target, int)
        kw = {"follow_symlinks": False} if path else {}
        for k, v in e.xattrs.items():
            try:
                os.setxattr(target, k, v, **kw)
            except OSError:
                pass
        if not (new and (e.uid, e.gid) == self._owner):
            try:
                os.chown(target, e.uid, e.gid, **kw)
            except PermissionError:
                pass
        if e.kind != KIND_SYMLINK:
            os.chmod(target, st_.S_IMODE(e.mode))
        os.utime(target, ns=(e.atime_ns, e.mtime_ns), **kw)

    def _remove(self, path: bytes) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def _cleanup(self) -> None:
        for tmp in list(self._tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        for path in reversed(self._created):
            try:
                self._remove(path)
            except OSError:
                pass
