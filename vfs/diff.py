"""Differences between a volume at two instants, or between an instant and the live tree.

Terms:
  side     one tree being compared: a :class:`ViewSide` (a volume at an instant) or a
           :class:`LiveSide` (the protected directory as it is now). Either side of a
           diff may be the live one.
  change   one line of a tree diff: ``+`` added, ``-`` removed, ``M`` content modified,
           ``U`` metadata only (mode, owner, times, xattrs), ``T`` type changed,
           ``R`` moved (same file id, or the same source inode for directories). A
           live file has the file id the volume's inode map gives it only while its
           size and mtime are those recorded (:func:`timeline.known_file_id`, the
           scan's rule), so an inode number reused by an unrelated file is no move.

Content is never read to diff trees: two versions of a file are compared by their
entries and, when those differ, by their block ids (index only). Only the live side
hashes a file, and only when its size and times differ from the stored version. Every
directory is listed at both instants (listings are index lookups); a future format
could record per-directory subtree versions to skip unchanged subtrees without listing
them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from anytime.store import timeline
from anytime.store.format import KIND_DIR, KIND_FILE, KIND_SYMLINK, Entry, join_path
from anytime.store.localfs import read_xattrs

from .view import View

_NONZERO = bytes([0] + [1] * 255)


@dataclass
class Change:
    mark: str
    path: bytes
    old_path: bytes | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        d = {"change": self.mark, "path": self.path.decode("utf-8", "surrogateescape")}
        if self.old_path is not None:
            d["old_path"] = self.old_path.decode("utf-8", "surrogateescape")
        if self.detail:
            d["detail"] = self.detail
        return d


class ViewSide:
    live = False

    def __init__(self, view: View):
        self.view = view
        self.repo = view.repo

    def xattrs(self, path: bytes, e: Entry) -> dict[bytes, bytes]:
        return e.xattrs

    def lookup(self, path: bytes) -> Entry | None:
        return self.view.lookup(path)

    def listdir(self, path: bytes) -> dict[bytes, Entry]:
        return dict(self.view.listdir(path))

    def block_ids(self, path: bytes, e: Entry) -> list[bytes]:
        return self.view.block_ids(e, 0, e.size)[1]

    def read_block(self, path: bytes, e: Entry, block_no: int) -> bytes:
        bs = self.view.bs
        return self.view.read(e, block_no * bs, bs)


class LiveSide:
    """The protected tree as it is now; file ids come from the volume's inode map."""

    live = True

    def __init__(self, view: View):
        self.view = view
        self.repo = view.repo
        self._abs = view.vol.source_path

    def _entry(self, txn, abspath: bytes, s: os.stat_result) -> Entry:
        e = Entry.from_stat(s)
        if e.kind == KIND_SYMLINK:
            e.target = os.readlink(abspath)
        if e.kind == KIND_FILE:
            e.file_id = timeline.known_file_id(self.repo, txn, self.view.vol.id, s) or 0
        return e

    def xattrs(self, path: bytes, e: Entry) -> dict[bytes, bytes]:
        return read_xattrs(self._abs(path))

    def lookup(self, path: bytes) -> Entry | None:
        try:
            p = self._abs(path)
            with self.repo.read_txn() as txn:
                return self._entry(txn, p, os.lstat(p))
        except FileNotFoundError:
            return None

    def listdir(self, path: bytes) -> dict[bytes, Entry]:
        out = {}
        try:
            it = os.scandir(self._abs(path))
        except OSError:
            return out
        with it, self.repo.read_txn() as txn:
            for de in it:
                try:
                    out[de.name] = self._entry(txn, de.path, de.stat(follow_symlinks=False))
                except OSError:
                    continue
        return out

    def read_block(self, path: bytes, e: Entry, block_no: int) -> bytes:
        bs = self.view.bs
        with open(self._abs(path), "rb") as f:
            f.seek(block_no * bs)
            return f.read(bs)

    def block_ids(self, path: bytes, e: Entry) -> list[bytes]:
        with open(self._abs(path), "rb") as f:
            return self.repo.file_refs(f, self.view.bs)


def _same_meta(a: Entry, b: Entry) -> bool:
    return (a.mode, a.uid, a.gid, a.mtime_ns, a.rdev) == (b.mode, b.uid, b.gid, b.mtime_ns,
                                                         b.rdev)


class TreeDiff:
    """Compares ``old`` with ``new``, each a ViewSide or a LiveSide."""

    def __init__(self, old, new):
        self.old = old
        self.new = new
        self.live = old.live or new.live
        self.changes: list[Change] = []
        self.removed: list[tuple[bytes, Entry]] = []
        self.added: list[tuple[bytes, Entry]] = []

    def run(self, path: bytes) -> list[Change]:
        a, b = self.old.lookup(path), self.new.lookup(path)
        if a is None and b is None:
            return []
        if a is None or b is None:
            self._one_sided(path, a if b is None else b, removed=b is None)
        else:
            self._compare(path, path, a, b)
        self._match_moves()
        self.changes.sort(key=lambda c: c.path)
        return self.changes

    def _one_sided(self, path: bytes, e: Entry, removed: bool) -> None:
        (self.removed if removed else self.added).append((path, e))
        if e.kind == KIND_DIR:
            side = self.old if removed else self.new
            for name, child in side.listdir(path).items():
                self._one_sided(join_path(path, name), child, removed)

    def _compare(self, opath: bytes, npath: bytes, a: Entry, b: Entry) -> None:
        if a.kind != b.kind:
            self.changes.append(Change("T", npath))
            if a.kind == KIND_DIR:
                for name, child in self.old.listdir(opath).items():
                    self._one_sided(join_path(opath, name), child, True)
            if b.kind == KIND_DIR:
                for name, child in self.new.listdir(npath).items():
                    self._one_sided(join_path(npath, name), child, False)
            return
        if a.kind == KIND_DIR:
            if not self._dir_meta_same(opath, npath, a, b):
                self.changes.append(Change("U", npath))
            olds, news = self.old.listdir(opath), self.new.listdir(npath)
            for name, ea in olds.items():
                eb = news.get(name)
                if eb is None:
                    self._one_sided(join_path(opath, name), ea, True)
                elif ea != eb or ea.kind == KIND_DIR:
                    # (an unchanged directory entry says nothing about its contents: a
                    # file inside may have changed in place)
                    self._compare(join_path(opath, name), join_path(npath, name), ea, eb)
            for name, eb in news.items():
                if name not in olds:
                    self._one_sided(join_path(npath, name), eb, False)
            return
        mark = self._entry_change(opath, npath, a, b)
        if mark:
            self.changes.append(Change(mark, npath))

    def _dir_meta_same(self, opath: bytes, npath: bytes, a: Entry, b: Entry) -> bool:
        if not self.live:
            return _same_meta(a, b) and a.xattrs == b.xattrs
        if (a.mode, a.uid, a.gid) != (b.mode, b.uid, b.gid):
            return False
        return a.ctime_ns == b.ctime_ns or \
            self.old.xattrs(opath, a) == self.new.xattrs(npath, b)

    def _entry_change(self, opath: bytes, npath: bytes, a: Entry, b: Entry) -> str | None:
        """'M', 'U' or None for two entries of the same kind (at ``opath`` in the old
        tree, ``npath`` in the new one)."""
        if self.live and (a.size, a.mtime_ns, a.ctime_ns, a.src_ino) == (
                b.size, b.mtime_ns, b.ctime_ns, b.src_ino):
            return None  # the stat cache says unchanged since it was captured
        if a.kind == KIND_SYMLINK:
            content_same = a.target == b.target
        elif a.kind == KIND_FILE:
            content_same = a.size == b.size and self._same_blocks(opath, npath, a, b)
        else:
            content_same = True
        if not content_same:
            return "M"
        meta_same = (a.mode, a.uid, a.gid, a.rdev) == (b.mode, b.uid, b.gid, b.rdev) and \
            self.old.xattrs(opath, a) == self.new.xattrs(npath, b) and \
            (a.mtime_ns == b.mtime_ns or a.kind == KIND_SYMLINK)
        return None if meta_same else "U"

    def _same_blocks(self, opath: bytes, npath: bytes, a: Entry, b: Entry) -> bool:
        if not self.live and a == b:  # the same stored version
            return True
        return self.old.block_ids(opath, a) == self.new.block_ids(npath, b)

    def _match_moves(self) -> None:
        def ident(e: Entry):
            if e.kind == KIND_FILE and e.file_id:
                return ("f", e.file_id)
            if e.kind == KIND_DIR:
                return ("d", e.src_dev, e.src_ino)
            return None

        pool: dict[tuple, list[tuple[bytes, Entry]]] = {}
        for path, e in self.removed:
            k = ident(e)
            if k is not None:
                pool.setdefault(k, []).append((path, e))
        moved_dirs: dict[bytes, bytes] = {}  # new path -> old path of a moved directory
        matched_old: set[bytes] = set()
        unmatched_added = []
        for path, e in sorted(self.added, key=lambda pe: pe[0]):
            k = ident(e)
            cands = pool.get(k) if k is not None else None
            if cands:
                opath, oe = cands.pop(0)
                matched_old.add(opath)
                inside = _inside_moved(moved_dirs, opath, path)
                if not inside:
                    self.changes.append(Change("R", path, old_path=opath))
                if e.kind == KIND_DIR:
                    moved_dirs[path] = opath
                else:
                    mark = self._entry_change(opath, path, oe, e)
                    if mark:
                        self.changes.append(Change(mark, path))
            else:
                unmatched_added.append(path)
        self.changes += [Change("+", p) for p in unmatched_added]
        self.changes += [Change("-", p) for p, _ in self.removed if p not in matched_old]


# --- file content diffs -------------------------------------------------------------
_RUN = re.compile(rb"\x01+")


def differing_ranges(a: bytes, b: bytes, base: int = 0) -> list[tuple[int, int]]:
    """Byte ranges [start, end) where ``a`` and ``b`` differ (computed in C, not per byte)."""
    n = min(len(a), len(b))
    out = []
    if a[:n] != b[:n]:
        x = (int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")
        out = [(base + m.start(), base + m.end()) for m in _RUN.finditer(x.translate(_NONZERO))]
    if len(a) != len(b):
        out.append((base + n, base + max(len(a), len(b))))
    return out


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


def binary_ranges(old, new, opath: bytes, npath: bytes, a: Entry, b: Entry
                  ) -> list[tuple[int, int]]:
    """Changed byte ranges between two versions of a file; equal blocks are not read."""
    ids_a = old.block_ids(opath, a)
    ids_b = new.block_ids(npath, b)
    ranges = []
    bs = old.view.bs
    for i in range(max(len(ids_a), len(ids_b))):
        ia = ids_a[i] if i < len(ids_a) else None
        ib = ids_b[i] if i < len(ids_b) else None
        if ia == ib and ia is not None:
            continue
        da = old.read_block(opath, a, i) if ia is not None else b""
        db = new.read_block(npath, b, i) if ib is not None else b""
        ranges += differing_ranges(da, db, i * bs)
    return merge_ranges(ranges)


def read_all(side, path: bytes, e: Entry) -> bytes:
    if side.live:
        with open(side._abs(path), "rb") as f:
            return f.read()
    return b"".join(side.view.iter_read(e))


def looks_text(data: bytes) -> bool:
    return b"\x00" not in data[:65536]


def _inside_moved(moved_dirs: dict[bytes, bytes], opath: bytes, path: bytes) -> bool:
    """True if ``path`` (was ``opath``) sits at the same place under a moved directory:
    one dict lookup per ancestor of ``path``."""
    i = path.rfind(b"/")
    while i > 0:
        od = moved_dirs.get(path[:i])
        if od is not None and opath == od + path[i:]:
            return True
        i = path.rfind(b"/", 0, i)
    return False
