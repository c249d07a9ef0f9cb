"""What a mount shows: a mount path resolved to a node, its listing and its attributes.

Two shapes, both decided here and only here (the FUSE/WinFsp adapter translates):

* a fixed mount (``--at T``): the root is the volume at T;
* the time-travel root (no ``--at``)::

    latest/            the newest committed state; follows new commits
    <any instant>/     the volume at that instant (typed: ``2026-11-24T10:03:17Z``,
                       ``10 minutes ago``, ``@1764000000``, a label name, ...)
    labels/NAME/       the volume at a labelled instant
    versions/...       the tree (every name ever seen); each regular file is a directory
                       of its distinct versions, named by instant (UTC)

  The root lists ``latest``, ``labels``, ``versions`` and a readable selection of
  instants (:func:`root_selection`); any other instant works when typed.

Nodes are resolved per call from the path (the adapter is path based). Every call uses
short LMDB read transactions (through :class:`~anytime.vfs.view.View`), never an index
load: resolving a path costs one seek per component, whatever the history length.

Inode numbers: a file's ``st_ino`` is ``slot << 40 | file_id``, where ``slot`` numbers the
distinct instants this mount has shown (one per instant, allocated on first use), and
``latest/`` has a slot of its own (LATEST_SLOT) whatever commit it shows. So hardlinks
within one instant share an inode number while the same file at two instants does not
(``tar`` and ``find`` keep working across instant directories), and a path of
``latest/`` keeps its inode number across commits while it holds the same file (a
``find`` or ``tar`` that spans a commit sees no directory of it change identity). Entries
without a file id (directories, symlinks, special files) get a 39-bit hash of their path.

Content key (:meth:`Namespace.content_key`): what identifies the bytes a file node
shows, so a front end can tell whether data it served earlier for the same mount path is
still right: the file id with the stat fields the capture itself compares to decide a
file changed (size, mtime, ctime, source inode; capture/scan.py ``unchanged``), plus its
flags. A file's blocks are only ever recorded together with a fresh entry of the path
read (capture/scan.py), so equal keys mean equal content; a file with several links
can have its blocks changed through another path, so its key also holds the instant read.

Thread-safety: a :class:`Namespace` may be used from many threads; the small caches are
guarded by one lock.
"""

from __future__ import annotations

import errno
import stat as st
import threading
from dataclasses import dataclass

import xxhash

from anytime.store import clock, timeline
from anytime.store.errors import InstantError
from anytime.store.format import (
    FLAG_DENSE,
    FLAG_UNREADABLE,
    HOLE_ID,
    IFMT_OF_KIND,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MAX_INSTANT,
    Entry,
    join_path,
)
from anytime.store.pins import Pins
from anytime.store.volumes import Volume, get_volume_by_id

from .access import ACL_XATTR, Caller, R, W, X, permits
from .instants import format_instant, is_relative, parse_instant
from .view import View

NS = 1_000_000_000
LATEST = b"latest"
LABELS = b"labels"
VERSIONS = b"versions"
#: How long latest/ keeps an instant before re-reading the volume's horizon (seconds):
#: one LMDB get (about 15 us), so at most ten a second cost nothing, and a commit shows
#: in latest/ within this (plus the kernel's attribute timeout, vfs/fuse.py LIVE_TIMEOUT).
HORIZON_TTL = 0.1
#: A relative name ("10 minutes ago") keeps its instant while used at least this often.
RELATIVE_TTL = 60.0
#: Root listing: this many newest commits, then one per hour for a day, one per day before.
RECENT_COMMITS = 20
HOURLY_SPAN = 86400 * NS

_SLOT_SHIFT = 40
#: The inode slot of latest/ (instants get 2, 3, ... in the order first shown).
LATEST_SLOT = 1
_FID_MASK = (1 << _SLOT_SHIFT) - 1
_HASH_BIT = 1 << (_SLOT_SHIFT - 1)
_HASH_MASK = _HASH_BIT - 1


def _enoent(what: bytes) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such file at this instant", what.decode(
        "utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class Node:
    """A resolved mount path.

    ``kind`` is one of ``"entry"`` (a path of a volume view: ``view``, ``inner``,
    ``entry``), ``"synthetic"`` (a directory of the namespace itself), ``"alias"`` (a
    typed instant a prune thinned away: a symbolic link to the name of the kept instant
    it shows, in ``inner``), ``"vdir"`` (a
    directory of versions/ mirroring a volume directory) or ``"vfile"`` (a file of
    versions/ shown as the directory of its versions). ``hidden_parents`` says the node's
    ancestors in its view are not the directories on its mount path (the nodes of
    versions/), so a kernel that checks the mount path does not check them: see
    :meth:`Namespace.reachable`.
    """

    kind: str
    path: bytes
    view: View | None = None
    inner: bytes = b""
    entry: Entry | None = None
    slot: int = 0
    hidden_parents: bool = False


class Namespace:
    """The tree a mount shows for one volume: fixed at ``at``, or the time-travel root."""

    def __init__(self, repo, vol: Volume, at: int | None = None, basic_names: bool = False):
        """``basic_names``: list instants in ISO 8601's basic form (``20261124T100317Z``),
        for file systems where ``:`` cannot be in a name (Windows); both forms open."""
        self.repo = repo
        self.basic_names = basic_names
        self._vol = vol
        self._vol_read = clock.monotonic()
        if at is not None and at > vol.horizon:
            # Past the newest commit the view equals the newest commit; pinning it there
            # makes the mount final (kernel-cached) and closes the race with a commit in
            # flight whose instant would still be <= at.
            at = vol.horizon
        self.at = at
        self._lock = threading.Lock()
        self._slots: dict[int, int] = {}
        self._named: dict[bytes, tuple[int, float, bool]] = {}  # name -> instant, last use, relative
        self._blocks_cache: dict[tuple[int, int, int], int] = {}
        self._search_cache: dict[tuple[Caller, int, bytes], bool] = {}
        self._root_time = clock.now_ns()
        self._pins = Pins(repo)
        if at is not None:
            self._pins.add(vol.id, at)

    # --- the volume and its horizon --------------------------------------------------
    @property
    def vol(self) -> Volume:
        """The volume record, re-read at most every HORIZON_TTL seconds (for the horizon)."""
        now = clock.monotonic()
        if now - self._vol_read >= HORIZON_TTL:
            with self.repo.read_txn() as txn:
                vol = get_volume_by_id(self.repo, txn, self._vol.id)
            with self._lock:
                self._vol, self._vol_read = vol, now
        return self._vol

    def final(self, instant: int) -> bool:
        return instant <= self.vol.horizon

    def slot(self, instant: int) -> int:
        with self._lock:
            s = self._slots.get(instant)
            if s is None:
                s = self._slots[instant] = len(self._slots) + LATEST_SLOT + 1
            return s

    def view(self, instant: int) -> View:
        if instant < self.vol.horizon:  # a past view, shown for as long as we are mounted:
            self._pins.add(self._vol.id, instant)  # no prune thins it meanwhile
        return View(self.repo, self.vol, instant)

    def kernel_cacheable(self) -> bool:
        """True when every path of this mount is final: long kernel cache timeouts are safe."""
        return self.at is not None and self.final(self.at)

    # --- resolution --------------------------------------------------------------------
    def resolve(self, path: bytes) -> Node:
        """The node at mount path ``path`` (bytes, '/'-separated); raises ENOENT/ENOTDIR."""
        parts = [p for p in path.split(b"/") if p]
        path = b"/".join(parts)
        if self.at is not None:
            return self._in_view(path, self.at, parts)
        if not parts:
            return Node("synthetic", b"")
        head, rest = parts[0], parts[1:]
        if head == LATEST:
            return self._in_view(path, self._latest_instant(), rest, LATEST_SLOT)
        if head == LABELS:
            if not rest:
                return Node("synthetic", LABELS)
            t = self._label(rest[0])
            if t is None:
                raise _enoent(path)
            return self._in_view(path, t, rest[1:])
        if head == VERSIONS:
            return self._versions(path, rest)
        t = self._named_instant(head)[0]
        if not rest:
            with self.repo.read_txn() as txn:
                shown = timeline.thinned(self.repo, txn, self._vol.id, t)
            if shown:  # a prune dropped it: a link to the kept instant it shows, by name
                return Node("alias", path, inner=self._instant_name(shown))
        return self._in_view(path, t, rest)

    def _in_view(self, path: bytes, instant: int, rest: list[bytes],
                 slot: int | None = None) -> Node:
        view = self.view(instant)
        inner = b"/".join(rest)
        e = view.lookup(inner)
        if e is None:
            raise _enoent(path)
        return Node("entry", path, view, inner, e,
                    self.slot(instant) if slot is None else slot)

    def _latest_instant(self) -> int:
        return self.vol.horizon  # the volume record is re-read at most every HORIZON_TTL

    def _label(self, name: bytes) -> int | None:
        with self.repo.read_txn() as txn:
            return timeline.label_instant(self.repo, txn, self._vol.id,
                                          name.decode("utf-8", "surrogateescape"))

    def _named_instant(self, name: bytes) -> tuple[int, bool]:
        """The instant a typed root name stands for; relative names are pinned while used."""
        now = clock.monotonic()
        with self._lock:
            hit = self._named.get(name)
            if hit is not None and (not hit[2] or now - hit[1] < RELATIVE_TTL):
                self._named[name] = (hit[0], now, hit[2])
                return hit[0], hit[2]
        text = name.decode("utf-8", "surrogateescape")
        try:
            with self.repo.read_txn() as txn:
                def labels(n):
                    return timeline.label_instant(self.repo, txn, self._vol.id, n)
                t = parse_instant(text, labels=labels, now=clock.now_ns())
                # a relative name moves with the clock, and a label may be moved
                relative = is_relative(text) or labels(text) is not None
                first = timeline.first_commit(self.repo, txn, self._vol.id)
        except InstantError:
            raise _enoent(name) from None
        if first is None or t < first:
            raise _enoent(name)
        with self._lock:
            if len(self._named) > 4096:  # typed names are few; forget them if someone scans
                self._named.clear()
            self._named[name] = (t, now, relative)
        return t, relative

    # --- versions/ ---------------------------------------------------------------------
    def _last_alive(self, inner: bytes) -> tuple[int, Entry] | None:
        """(instant, entry) of the newest version of ``inner`` that is not a deletion."""
        with self.repo.read_txn() as txn:
            return timeline.last_alive(self.repo, txn, self._vol.id, inner, self.vol.horizon)

    def _versions(self, path: bytes, rest: list[bytes]) -> Node:
        inner = b""
        found = None if rest else self._last_alive(b"")
        if not rest and found is None:
            return Node("synthetic", VERSIONS)  # no commit yet: empty
        for i, part in enumerate(rest):
            inner_next = inner + b"/" + part if inner else part
            found = self._last_alive(inner_next)
            if found is None:
                raise _enoent(path)
            t, e = found
            if e.kind == KIND_FILE:
                tail = rest[i + 1:]
                if not tail:
                    return Node("vfile", path, self.view(t), inner_next, e, 0, True)
                if len(tail) > 1:
                    raise _enoent(path)
                return self._version_of(path, inner_next, tail[0])
            if e.kind != KIND_DIR:
                raise _enoent(path)  # versions/ shows directories and regular files only
            inner = inner_next
        if found is None:
            raise _enoent(path)
        t, e = found
        return Node("vdir", path, self.view(t), inner, e, 0, True)

    def _version_of(self, path: bytes, inner: bytes, name: bytes) -> Node:
        """A file of versions/ at a typed instant: named like the root's instants."""
        t = self._named_instant(name)[0]
        view = self.view(t)
        e = view.lookup(inner)
        if e is None or e.kind != KIND_FILE:
            raise _enoent(path)
        return Node("entry", path, view, inner, e, self.slot(t), True)

    def file_versions(self, inner: bytes) -> list[tuple[int, Entry]]:
        """Distinct versions of a regular file (metadata-only changes skipped), oldest first."""
        out: list[tuple[int, Entry]] = []
        prev = None
        with self.repo.read_txn() as txn:
            for t, e in timeline.entry_versions(self.repo, txn, self._vol.id, inner,
                                                until=self.vol.horizon):
                if e.kind != KIND_FILE:
                    prev = None
                    continue
                if prev is None or (prev.file_id, prev.size, prev.mtime_ns) != (
                        e.file_id, e.size, e.mtime_ns):
                    out.append((t, e))
                prev = e
        return out

    # --- listing -----------------------------------------------------------------------
    def listdir(self, node: Node, caller: Caller | None = None) -> list[tuple[bytes, dict]]:
        """(name, attributes) of a directory node's children; attributes hold at least
        ``st_mode`` and ``st_ino``, and are complete for view entries.

        With ``caller``, a file's directory of versions lists only the versions that
        caller could read at their instants (:meth:`may`)."""
        if node.kind == "entry":
            if node.entry.kind != KIND_DIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            return [(name, self._entry_attrs(node.view, node.slot, join_path(node.inner, name),
                                              e))
                    for name, e in node.view.listdir(node.inner)]
        if node.kind == "synthetic":
            if node.path == LABELS:
                with self.repo.read_txn() as txn:
                    labs = timeline.labels(self.repo, txn, self._vol.id)
                return [(n.encode("utf-8", "surrogateescape"), self._view_root_attrs(t))
                        for n, t in labs]
            if node.path == VERSIONS:
                return []
            # A volume without a commit yet (a first capture still running, or stopped)
            # shows empty labels/ and versions/; latest/ appears with the first commit.
            latest = self._latest_instant()
            return ([(LATEST, self._view_root_attrs(latest, LATEST_SLOT))] if latest
                    else []) + (
                    [(LABELS, self._synthetic_attrs(LABELS)),
                     (VERSIONS, self._synthetic_attrs(VERSIONS))]
                    + [(self._instant_name(t), self._view_root_attrs(t))
                       for t in self.root_selection()])
        if node.kind == "vdir":
            out = []
            with self.repo.read_txn() as txn:
                names = list(timeline.names_ever(self.repo, txn, self._vol.id, node.inner))
            for name in names:
                inner = join_path(node.inner, name)
                found = self._last_alive(inner)
                if found is None or found[1].kind not in (KIND_FILE, KIND_DIR):
                    continue
                out.append((name, {"st_mode": st.S_IFDIR | 0o555,
                                   "st_ino": self._path_ino(0, node.path + b"/" + name)}))
            return out
        if node.kind == "vfile":
            out = []
            for t, e in self.file_versions(node.inner):
                view = self.view(t)
                if caller is not None and not self.may(
                        Node("entry", b"", view, node.inner, e), caller, R):
                    continue
                # names and types only: full attributes would let the kernel answer a later
                # lookup of the version by another caller without asking (see reachable)
                out.append((self._instant_name(t), {
                    "st_mode": IFMT_OF_KIND.get(e.kind, 0) | st.S_IMODE(e.mode),
                    "st_ino": self._entry_ino(self.slot(t), node.inner, e)}))
            return out
        raise NotADirectoryError(errno.ENOTDIR, "not a directory")

    def _instant_name(self, t: int) -> bytes:
        """The name an instant is listed under (UTC)."""
        return format_instant(t, utc=True, basic=self.basic_names).encode()

    def root_selection(self) -> list[int]:
        """Instants the time-travel root lists (newest first): the newest RECENT_COMMITS
        commits, then the newest commit of each hour of the last day, then of each day.

        Costs one index seek per listed instant (never a walk of all commits)."""
        vid = self._vol.id
        out: list[int] = []
        with self.repo.read_txn() as txn:
            first = timeline.first_commit(self.repo, txn, vid)
            if first is None:
                return out
            t = MAX_INSTANT
            while len(out) < RECENT_COMMITS:
                c = timeline.commit_at_or_before(self.repo, txn, vid, t)
                if c is None:
                    return out
                out.append(c[0])
                t = c[0] - 1
            horizon = out[0]
            day_ago = horizon - HOURLY_SPAN
            while t >= first:
                c = timeline.commit_at_or_before(self.repo, txn, vid, t)
                if c is None:
                    break
                out.append(c[0])
                step = 3600 * NS if c[0] > day_ago else 86400 * NS
                t = _floor_utc(c[0], step) - 1
        return out

    # --- attributes --------------------------------------------------------------------
    def getattr(self, node: Node) -> dict:
        """os.stat-like attributes: ``st_*`` keys, times in nanoseconds."""
        if node.kind == "entry":
            return self._entry_attrs(node.view, node.slot, node.inner, node.entry)
        if node.kind == "synthetic":
            return self._synthetic_attrs(node.path)
        if node.kind == "alias":
            return dict(self._synthetic_attrs(node.path), st_mode=st.S_IFLNK | 0o777,
                        st_nlink=1, st_size=len(node.inner))
        e = node.entry  # vdir / vfile: the newest live version of the dir or file
        # a file's versions are listed to everyone, each caller seeing those they may read
        mode = 0o555 if node.kind == "vfile" else st.S_IMODE(e.mode)
        return {"st_mode": st.S_IFDIR | mode, "st_ino": self._path_ino(0, node.path),
                "st_nlink": 2, "st_uid": e.uid, "st_gid": e.gid, "st_size": 0,
                "st_atime": e.mtime_ns, "st_mtime": e.mtime_ns, "st_ctime": e.ctime_ns,
                "st_blocks": 0, "st_blksize": self._vol.block_size}

    def _synthetic_attrs(self, path: bytes) -> dict:
        t = self._root_time
        return {"st_mode": st.S_IFDIR | 0o555, "st_ino": self._path_ino(0, path),
                "st_nlink": 2, "st_uid": 0, "st_gid": 0, "st_size": 0, "st_atime": t,
                "st_mtime": t, "st_ctime": t, "st_blocks": 0,
                "st_blksize": self._vol.block_size}

    def _view_root_attrs(self, instant: int, slot: int | None = None) -> dict:
        """Directory-listing attributes of a directory that opens the volume at ``instant``."""
        slot = self.slot(instant) if slot is None else slot
        return {"st_mode": st.S_IFDIR | 0o555, "st_ino": self._path_ino(slot, b"")}

    def _path_ino(self, slot: int, path: bytes) -> int:
        return (slot << _SLOT_SHIFT) | _HASH_BIT | (xxhash.xxh3_64_intdigest(path) & _HASH_MASK)

    def _entry_ino(self, slot: int, inner: bytes, e: Entry) -> int:
        if e.file_id and e.kind == KIND_FILE:
            return (slot << _SLOT_SHIFT) | (e.file_id & _FID_MASK)
        return self._path_ino(slot, inner)

    def _entry_attrs(self, view: View, slot: int, inner: bytes, e: Entry) -> dict:
        ino = self._entry_ino(slot, inner, e)
        size = e.size
        if e.kind == KIND_SYMLINK:
            size = len(e.target)
        elif e.kind != KIND_FILE:
            size = 0
        return {"st_mode": IFMT_OF_KIND.get(e.kind, 0) | st.S_IMODE(e.mode), "st_ino": ino,
                "st_nlink": e.nlink, "st_uid": e.uid, "st_gid": e.gid, "st_size": size,
                "st_atime": e.atime_ns, "st_mtime": e.mtime_ns, "st_ctime": e.ctime_ns,
                "st_rdev": e.rdev, "st_blksize": view.bs,
                "st_blocks": self.allocated_512(view, e) if e.kind == KIND_FILE else 0}

    def allocated_512(self, view: View, e: Entry) -> int:
        """st_blocks: 512-byte units of the blocks that are not holes at this instant.

        Files recorded without holes (``FLAG_DENSE``, with one link: only this path's
        versions change their blocks) cost nothing. Otherwise small files (one block)
        cost one seek; bigger ones are counted once per (file, instant) and cached.
        Files over 65,536 blocks, and versions without content (``FLAG_UNREADABLE``), are
        reported as fully allocated rather than walked."""
        nblocks = (e.size + view.bs - 1) // view.bs
        full = (e.size + 511) // 512
        if (nblocks == 0 or nblocks > 65536 or e.flags & FLAG_UNREADABLE
                or (e.flags & FLAG_DENSE and e.nlink == 1)):
            return full
        key = (e.file_id, view.at, e.size)  # view.at <= horizon: final, cacheable
        hit = self._blocks_cache.get(key)
        if hit is not None:
            return hit
        _first, ids = view.block_ids(e, 0, e.size)
        last_len = e.size - (nblocks - 1) * view.bs
        data = sum((last_len if i == nblocks - 1 else view.bs)
                   for i, b in enumerate(ids) if b != HOLE_ID)
        n = (data + 511) // 512
        if nblocks > 1:
            with self._lock:
                if len(self._blocks_cache) > 100_000:
                    self._blocks_cache.clear()
                self._blocks_cache[key] = n
        return n

    # --- access ------------------------------------------------------------------------
    def may(self, node: Node, caller: Caller, mask: int) -> bool:
        """Whether ``caller`` may do ``mask`` (``access.R|W|X``) on ``node`` as the original
        tree allowed at the node's instant: search on every ancestor directory in the
        node's view (:meth:`reachable`), and ``mask`` on the node (mode, owner, access ACL:
        :func:`~anytime.vfs.access.permits`).

        The namespace's own directories (the root, ``labels/``, ``versions/``) and a
        file's directory of versions are r-x for everyone (that listing shows each caller
        only the versions they may read: :meth:`listdir`). A directory of versions/
        mirroring a volume directory is checked as the newest version of it, the one it
        shows. Nothing may be written (a caller asking for W is refused)."""
        if mask & W:
            return False
        if node.kind in ("synthetic", "vfile", "alias"):
            return True
        if not self.reachable(node, caller):
            return False
        e = node.entry
        return permits(caller, IFMT_OF_KIND.get(e.kind, 0) | st.S_IMODE(e.mode), e.uid, e.gid,
                       e.xattrs.get(ACL_XATTR), mask)

    def reachable(self, node: Node, caller: Caller) -> bool:
        """Whether ``caller`` may search every ancestor directory of ``node`` in the node's
        own view: the directories of the node's instant, not those of the mount path (for
        ``versions/pd/g/INSTANT``, the root and ``pd`` as they were at INSTANT).

        A view's records at its ``at`` never change, so answers are cached per caller
        (root costs nothing: it may search anything)."""
        if caller.root or node.view is None or not node.inner:
            return True
        view, parent = node.view, b""
        for part in node.inner.split(b"/"):
            if not self._searchable(view, parent, caller):
                return False
            parent = parent + b"/" + part if parent else part
        return True

    def _searchable(self, view: View, inner: bytes, caller: Caller) -> bool:
        key = (caller, view.at, inner)
        hit = self._search_cache.get(key)
        if hit is not None:
            return hit
        e = view.lookup(inner)
        ok = e is not None and e.kind == KIND_DIR and permits(
            caller, st.S_IFDIR | st.S_IMODE(e.mode), e.uid, e.gid, e.xattrs.get(ACL_XATTR), X)
        with self._lock:
            if len(self._search_cache) > 100_000:
                self._search_cache.clear()
            self._search_cache[key] = ok
        return ok

    def checks_parents(self, path: bytes) -> bool:
        """Whether a mount path may resolve to a node with ``hidden_parents`` (is under
        versions/): lets an adapter skip the check without resolving anything else."""
        return self.at is None and path.lstrip(b"/").startswith(VERSIONS + b"/")

    # --- content -----------------------------------------------------------------------
    def content_key(self, node: Node) -> tuple:
        """What identifies the bytes file node ``node`` reads (module docstring): equal keys
        for one mount path mean equal content, whatever instant each node was resolved at."""
        e = node.entry
        key = (e.file_id, e.size, e.mtime_ns, e.ctime_ns, e.src_ino, e.flags)
        return key + (node.view.at,) if e.nlink > 1 else key

    def readlink(self, node: Node) -> bytes:
        if node.kind == "alias":
            return node.inner
        if node.kind != "entry" or node.entry.kind != KIND_SYMLINK:
            raise OSError(errno.EINVAL, "not a symbolic link")
        return node.entry.target

    def xattrs(self, node: Node) -> dict[bytes, bytes]:
        """Extended attributes; a directory of versions/ mirroring a volume directory has
        only the access ACL of the version it shows, so the kernel checks it as it checks
        the mode."""
        if node.kind == "entry":
            return dict(node.entry.xattrs)
        acl = node.entry.xattrs.get(ACL_XATTR) if node.kind == "vdir" else None
        return {} if acl is None else {ACL_XATTR: acl}

    def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes of a file node; raises anytime.store.errors.DamagedData on bad blocks."""
        if node.kind != "entry" or node.entry.kind != KIND_FILE:
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        return node.view.read(node.entry, offset, size)

    def describe(self, node: Node) -> str:
        """``VOLUME:/path at INSTANT`` for log lines."""
        inner = node.inner.decode("utf-8", "backslashreplace")
        when = format_instant(node.view.instant, utc=True) if node.view else "-"
        return f"{self._vol.name}:/{inner} at {when}"


def _floor_utc(ns: int, step: int) -> int:
    """``ns`` rounded down to a multiple of ``step`` (an hour or a day): in UTC these are
    multiples from the epoch (Unix time has no leap seconds)."""
    return ns - ns % step
