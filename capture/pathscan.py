"""A scan of some paths of a tree, not all of it: what the watcher commits.

Terms:
  dirty path   a path (relative to the volume's root) that change events named: its
               entry may have appeared, vanished, been renamed, or changed content or
               metadata. Each is *reconciled*: its state on disk now is compared with
               its version in the index and recorded if they differ, as a scan would
               (the same stat cache, reads, retries and flags: capture/scan.py).
  tree path    a dirty path to walk whole (``tree`` True): a directory that appeared
               (created, moved in, or replaced), or one whose events may have been
               lost (a queue overflow). Its subtree is reconciled as a scan walks it.
               A directory that stays one is otherwise reconciled alone (its own
               metadata): its children have events of their own.
  move         a regular file at a new path whose inode the volume's inode map names
               with the same mtime and size (``timeline.known_file_id``): recorded with
               that file id and no read of its content, since its content is the one
               recorded. A rename of a directory is a tree path whose files are moves.

Paths are visited in sorted order, so a directory comes before what is under it; a
path under a tree path already walked, or under a directory just recorded as deleted,
is skipped. A dirty path whose parent the index does not hold as a directory (its
events were lost, or the parent is new and unnamed) is reconciled through its nearest
such ancestor, walked as a tree path.
"""

from __future__ import annotations

import os
import stat as st_

from anytime.store import timeline
from anytime.store.errors import AnytimeError
from anytime.store.format import (
    KIND_DELETED,
    KIND_DIR,
    KIND_FILE,
    MAX_INSTANT,
    MAX_NAME,
    Entry,
    kind_of,
    split_path,
)
from anytime.store.localfs import read_xattrs

from .scan import Scanner, unchanged


class PathScan(Scanner):
    """A :class:`Scanner` that reconciles ``paths`` ({relative path: tree?}) instead of
    walking the whole tree; one commit, as :meth:`Scanner.run`."""

    def __init__(self, repo, vol, source: bytes, paths: dict[bytes, bool], **kw):
        super().__init__(repo, vol, source, **kw)
        self.paths = paths
        self.moves = 0  # files recorded as moves, without a read
        self._dirs_ok: set[bytes] = {b""}  # directories the index holds, as seen
        self._walked: set[bytes] = set()  # tree paths walked, and paths deleted

    def commit_info(self, info: dict) -> dict:
        """Only what is not zero (with the kind): a watcher may commit ten times a
        second for days, and its counts are of the paths it visited, not of the tree."""
        info = dict(info, moves=self.moves)
        return {k: v for k, v in info.items() if v or k == "kind"}

    def _scan_root(self) -> None:
        s = self._stat_root()
        self.dev = s.st_dev
        for rel in sorted(self.paths):
            if self._covered(rel):
                continue
            anchor = self._anchor(rel)
            if anchor != rel:  # its parent is unknown to the index: walk from there
                if self._covered(anchor):
                    continue
                rel = anchor
                self.paths[rel] = True
            self._reconcile(rel, self.paths[rel])
        if self.progress:
            self.progress.update(self.report)

    def _stat_root(self) -> os.stat_result:
        try:
            s = os.lstat(self.source)
        except OSError as e:
            s, why = None, e.strerror
        else:
            why = "it is no longer a directory"
        if s is None or not st_.S_ISDIR(s.st_mode):
            raise AnytimeError(f"the protected tree {os.fsdecode(self.source)} cannot be "
                               f"read ({why}); its history is kept: put it back and "
                               f"protect it again")
        return s

    def _covered(self, rel: bytes) -> bool:
        """True if ``rel`` is under (or is) a path walked or deleted in this scan."""
        walked = self._walked
        if not walked:
            return False
        if b"" in walked or rel in walked:
            return True
        i = rel.rfind(b"/")
        while i > 0:
            rel = rel[:i]
            if rel in walked:
                return True
            i = rel.rfind(b"/")
        return False

    def _anchor(self, rel: bytes) -> bytes:
        """``rel``, or its highest ancestor whose parent the index does not hold as a
        live directory."""
        parts = rel.split(b"/")
        path = b""
        for name in parts[:-1]:
            child = path + b"/" + name if path else name
            if child not in self._dirs_ok:
                e = timeline.entry_at(self.repo, self.txn, self.vid, child, MAX_INSTANT)
                if e is None or e.kind != KIND_DIR:
                    return child
                self._dirs_ok.add(child)
            path = child
        return rel

    def _excluded(self, rel: bytes) -> str | None:
        """Why ``rel`` is not captured (an excluded name or ancestor, the repository, a
        mount not crossed), or None."""
        abspath = self.source
        for name in rel.split(b"/"):
            abspath = abspath + b"/" + name
            if self.excluder is not None and self.excluder.excluded(name, abspath):
                return "excluded"
            if abspath in self.anytime_mounts:
                return "an anytime mount"
        return None

    def _reconcile(self, rel: bytes, tree: bool) -> None:
        name = split_path(rel)[1]
        abspath = self.source + b"/" + rel if rel else self.source
        prev = timeline.entry_at(self.repo, self.txn, self.vid, rel, MAX_INSTANT)
        if prev is not None and prev.kind == KIND_DELETED:
            prev = None
        try:
            s = os.lstat(abspath)
        except FileNotFoundError:
            s = None
        except OSError as e:
            self._skip(abspath, e.strerror or str(e))
            return
        if s is not None and rel and self._excluded(rel):
            self.report.excluded += 1
            s = None  # recorded as deleted if it was captured before
        if s is not None and ((s.st_dev, s.st_ino) in self.exclude
                              or len(name) > MAX_NAME):
            return
        if s is None:
            if prev is not None:
                self._delete(rel, prev)
                self._walked.add(rel)
            return
        kind = kind_of(s.st_mode)
        if s.st_dev != self.dev and rel and self._not_crossed(rel, abspath, s, kind, prev):
            self._walked.add(rel)
            return
        if prev is not None and prev.kind == KIND_DIR and kind != KIND_DIR:
            self._delete_tree(rel)
        if kind == KIND_DIR:
            if tree or prev is None or prev.kind != KIND_DIR or prev.src_ino != s.st_ino:
                self._record_dir(rel, abspath, s, prev)  # its whole subtree
                self._walked.add(rel)
            elif not unchanged(prev, s, KIND_DIR):
                e = Entry.from_stat(s, KIND_DIR)
                e.xattrs = read_xattrs(abspath)
                self.builder.put_entry(rel, e)
                self.report.changed += 1
            self._dirs_ok.add(rel)
        elif kind == KIND_FILE:
            self.report.files += 1
            if not unchanged(prev, s, kind):
                self._record_file(rel, abspath, s, prev)
        else:
            self._count_other(kind)
            if not unchanged(prev, s, kind):
                self._record_other(rel, abspath, s, kind)

    def _record_new_file(self, rel: bytes, abspath: bytes) -> None:
        """A new name met in a walk: a move if the inode map says so, else read."""
        if self.inodes_known:
            try:
                s = os.lstat(abspath)
            except OSError:
                s = None
            if s is not None and st_.S_ISREG(s.st_mode) and self._moved(rel, abspath, s,
                                                                          None):
                return
        super()._record_new_file(rel, abspath)

    def _record_file(self, rel: bytes, abspath: bytes, s: os.stat_result,
                     old: Entry | None, drain: bool = True) -> None:
        if drain and self._moved(rel, abspath, s, old):
            return
        super()._record_file(rel, abspath, s, old, drain)

    def _moved(self, rel: bytes, abspath: bytes, s: os.stat_result, prev: Entry | None
               ) -> bool:
        """Record a file moved (or linked) to ``rel`` without reading it, if the inode map
        says it holds the content recorded for its inode; True if so."""
        if prev is not None and prev.src_ino == s.st_ino and prev.src_dev == s.st_dev:
            return False  # the same file in place: its content may have changed
        if not self.inodes_known:
            return False
        fid = timeline.known_file_id(self.repo, self.txn, self.vid, s)
        if fid is None:
            return False
        e = Entry.from_stat(s, KIND_FILE)
        e.file_id = fid
        try:
            e.xattrs = read_xattrs(abspath)
        except OSError:
            return False
        self.builder.put_entry(rel, e)
        self.report.changed += 1
        self.moves += 1
        return True
