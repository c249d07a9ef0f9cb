"""Change-event sources: what the watcher (``anytime protect``) learns from the kernel.

A source reports *which paths to look at again*, never what they now hold: the watcher
stats, reads and records them itself. Two kernel interfaces back it, through ctypes
and :mod:`os` only.

Interface::

    CONTENT, META, ENTRY, OVERFLOW, TREE      # the flags of a Change (a bit set)
    Change(path: bytes, flags: int)           # frozen, slotted dataclass
    src = open_source("auto")                 # or "fanotify" / "inotify": that one or
                                              # WatchUnavailable saying why
    src.kind                                  # "fanotify" or "inotify"
    src.add_tree(root)                        # watch everything under absolute dir root
    src.fileno()                              # readable (select/poll) when events wait
    src.read() -> list[Change]                # what is queued now; [] if nothing
    src.close()                               # also: with open_source() as src: ...

Terms:
  Change       ``Change(path, flags)``: ``path`` is the absolute path (bytes) of the
               entry concerned, its directory + ``b"/"`` + its name; for OVERFLOW the
               root (or the directory concerned, when known). fanotify resolves paths
               when :meth:`EventSource.read` runs, so a write queued before its
               directory was renamed is reported under the new name; inotify resolves
               them in the order of events, so it is reported under the old one (and
               the rename's TREE change leads the watcher to the new one).
  flags        a bit set: ``CONTENT`` (a file's data may have changed: modify,
               close-after-write), ``META`` (chmod, chown, utimes, xattrs), ``ENTRY``
               (a directory entry appeared, vanished or was renamed: create, delete,
               both names of a rename, hardlink, mkdir, rmdir), ``OVERFLOW`` (events
               were lost: rescan ``path``), ``TREE`` (with ENTRY: the entry is a
               directory, so the watcher walks it).
  root         an absolute directory given to :meth:`EventSource.add_tree`. Only
               changes at the root or below it are reported (a path prefix test with a
               trailing slash); the root's own deletion or rename is reported as
               ``Change(root, ENTRY | TREE)``.
  read()       drains what is queued now without blocking (``[]`` if nothing is) and
               returns each distinct Change once, in order of first occurrence. It
               reads at most ``MAX_READS`` buffers per call, so a storm of events
               cannot hold it forever; :meth:`EventSource.fileno` stays readable while
               more is queued.
  fanotify     :class:`FanotifyEvents`: one mark per filesystem
               (``FAN_MARK_FILESYSTEM``), so it costs nothing per directory and sees
               new directories at once; needs root (CAP_SYS_ADMIN) and Linux >= 5.17
               (``FAN_REPORT_DFID_NAME``, ``FAN_RENAME``). Each event names a
               directory by file handle (plus an entry name); the handle is opened
               with ``open_by_handle_at(O_PATH)`` through a descriptor of the root
               (so paths come out as seen through the root's mount, bind mounts
               included) and its path read from ``/proc/self/fd``; a handle that
               cannot be opened (ESTALE: the directory is gone) drops its event, which
               the parent's deletion event covers. Handles resolve to paths through a cache that is
               emptied whenever a batch holds a directory rename, move or deletion
               (anywhere on the filesystem), before the batch is resolved. The
               whole filesystem is marked, so events from outside the roots are
               read and dropped: busy unrelated trees on the same filesystem cost
               parsing time and queue room (the queue holds 16384 events). Without
               CAP_SYS_ADMIN (in the initial user namespace) no filesystem can be
               marked: fanotify then counts as unavailable.
  records      what Linux 6.18 sends with ``FAN_REPORT_DFID_NAME``: every event one
               ``DFID_NAME`` record (the parent directory's handle and the entry's
               name; for a directory's own event, such as its chmod, the directory
               itself and the name "."), FAN_RENAME an ``OLD_DFID_NAME`` and a
               ``NEW_DFID_NAME`` record, FAN_Q_OVERFLOW none. The kernel merges events
               of one entry (create + write + close arrive as one). Asked: FAN_CREATE,
               FAN_DELETE, FAN_RENAME (not FAN_MOVED_FROM/TO: they would queue the two
               names again as two more events), FAN_MODIFY, FAN_CLOSE_WRITE,
               FAN_ATTRIB, FAN_ONDIR; not FAN_DELETE_SELF/FAN_MOVE_SELF, which the
               parent's FAN_DELETE/FAN_RENAME cover (a filesystem mark sees every
               parent, the root's included) and which would name a deleted object.
  inotify      :class:`InotifyEvents`: one watch per directory, added by walking each
               root (following no symlinks, crossing mount points) and every new
               directory as it appears (mkdir, or moved in). A directory created with
               files already in it before its watch was added is reported as
               ``Change(newdir, ENTRY | TREE)``: the watcher's walk finds them. The
               watch of a directory renamed inside the roots follows it (the
               MOVED_FROM/MOVED_TO pair of one cookie); one moved out of the roots is
               removed with its subtree. After an overflow every root is walked again
               for the directories whose creation was lost. Running out of watches
               raises :class:`~anytime.store.errors.WatchLimitReached`.
  auto source  :class:`CombinedSource` (``open_source("auto")`` when fanotify can be
               initialised, with CAP_SYS_ADMIN; else a plain :class:`InotifyEvents`):
               its ``kind`` is "fanotify"; it owns a fanotify source and, once a
               root's filesystem cannot be marked (overlayfs, ramfs, procfs, a btrfs
               subvolume, a kernel before 5.17 without FAN_RENAME: EXDEV, ENODEV,
               EOPNOTSUPP, EINVAL; EPERM in a user namespace), an inotify source for
               those roots. Its :meth:`~CombinedSource.fileno` is an epoll descriptor
               holding both, readable when either is; :meth:`~CombinedSource.kind_of`
               tells which one watches a root.

Limits (both sources): a hard-linked file changed through a name outside the roots is
not reported (the event names the link used); filesystems mounted inside a root later,
and the mounting itself, are not reported. fanotify marks only the filesystem that
holds the root: a filesystem mounted below it is seen only if it is also added as a
root. inotify sees a directory reachable by two paths in a root (a bind mount) under
the first path walked.

Errors: :class:`~anytime.store.errors.WatchUnavailable` (and its subclasses
:class:`~anytime.store.errors.FilesystemNotMarkable`, :class:`WatchLimitReached`),
each saying what to do. A source is used by one thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from dataclasses import dataclass

from anytime.store.errors import FilesystemNotMarkable, WatchLimitReached, WatchUnavailable

__all__ = ["CONTENT", "META", "ENTRY", "OVERFLOW", "TREE", "Change", "EventSource",
           "FanotifyEvents", "InotifyEvents", "CombinedSource", "open_source"]

CONTENT = 1
META = 2
ENTRY = 4
OVERFLOW = 8
TREE = 16

#: Bytes asked of the kernel per os.read (whole events only are returned).
READ_SIZE = 1 << 18
#: Buffers read at most by one read() call.
MAX_READS = 16

# -- fanotify (linux/fanotify.h) ---------------------------------------------------
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_DELETE_SELF = 0x400
FAN_MOVE_SELF = 0x800
FAN_Q_OVERFLOW = 0x4000
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3
FAN_EVENT_INFO_TYPE_OLD_DFID_NAME = 10
FAN_EVENT_INFO_TYPE_NEW_DFID_NAME = 12
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100

#: What the fanotify source asks for. A rename is asked as FAN_RENAME only (one event
#: with both names) rather than also FAN_MOVED_FROM and FAN_MOVED_TO, which would
#: queue three events for each rename and report the same two paths again.
FAN_MASK = (FAN_CREATE | FAN_DELETE | FAN_RENAME | FAN_MODIFY | FAN_CLOSE_WRITE
            | FAN_ATTRIB | FAN_ONDIR)
_FAN_ENTRY = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_RENAME \
    | FAN_DELETE_SELF | FAN_MOVE_SELF
_FAN_DIR_MOVED = FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_RENAME \
    | FAN_DELETE_SELF | FAN_MOVE_SELF
#: fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid.
_FAN_META = struct.Struct("=IBBHQii")
#: fanotify_event_info_header (type, pad, len) + the fid's fsid and file_handle header.
_FAN_INFO = struct.Struct("=BxH8sIi")
#: Mark errors that mean "this filesystem cannot be watched by fanotify".
_UNMARKABLE = {errno.EXDEV, errno.ENODEV, errno.EOPNOTSUPP, errno.EINVAL}

# -- inotify (linux/inotify.h) -----------------------------------------------------
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
IN_MASK = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_MODIFY | IN_CLOSE_WRITE
           | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
           | IN_EXCL_UNLINK)
#: inotify_event: wd, mask, cookie, len (then len bytes of NUL-padded name).
_IN_EVENT = struct.Struct("=iIII")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_char_p]
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
#: Offset of f_fsid in struct statfs: after f_type, f_bsize and five block/file counts,
#: each a long on Linux's 64-bit ABIs and its 32-bit non-LFS one.
_FSID_OFFSET = 7 * ctypes.sizeof(ctypes.c_long)


@dataclass(frozen=True, slots=True)
class Change:
    path: bytes
    flags: int


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent != b"/" else b"/" + name


def _under(roots: list[tuple[bytes, bytes]], path: bytes) -> bool:
    """Whether ``path`` is one of ``roots`` ((root, root + "/") pairs) or below one."""
    for root, prefix in roots:
        if path == root or path.startswith(prefix):
            return True
    return False


def _root_pair(root: bytes) -> tuple[bytes, bytes]:
    root = os.fsencode(root)
    if not root.startswith(b"/"):
        raise ValueError(f"add_tree takes an absolute path, not {root!r}")
    root = root.rstrip(b"/") or b"/"
    return root, (root if root == b"/" else root + b"/")


def _oserror(what: str, path: bytes | None = None) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}", path)


def _unique(changes: list[Change]) -> list[Change]:
    return list(dict.fromkeys(changes)) if len(changes) > 1 else changes


class EventSource:
    """What every source offers (module docstring: terms)."""

    kind: str = ""

    def add_tree(self, root: bytes) -> None:
        raise NotImplementedError

    def fileno(self) -> int:
        raise NotImplementedError

    def read(self) -> list[Change]:
        """Drain the kernel queue (``self._fd``), at most ``MAX_READS`` buffers, each
        turned into changes by :meth:`_consume`."""
        out: list[Change] = []
        for _ in range(MAX_READS):
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            if not buf:
                break
            self._consume(buf, out)
        return _unique(out)

    def _consume(self, buf: bytes, out: list[Change]) -> None:
        """Append the changes one buffer read from the kernel holds to ``out``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- fanotify ------------------------------------------------------------------------

def fanotify_init_error(err: int) -> WatchUnavailable:
    if err == errno.EPERM:
        why = ("fanotify needs root (CAP_SYS_ADMIN); run as root, or use the inotify "
               "event source")
    elif err == errno.ENOSYS:
        why = "this kernel has no fanotify (CONFIG_FANOTIFY); use the inotify event source"
    elif err == errno.EINVAL:
        why = ("this kernel's fanotify cannot report directory handles and names "
               "(FAN_REPORT_DFID_NAME needs Linux 5.9, FAN_RENAME 5.17); upgrade the "
               "kernel or use the inotify event source")
    elif err in (errno.EMFILE, errno.ENFILE):
        why = ("too many fanotify instances or open files (fs.fanotify.max_user_groups, "
               "ulimit -n); close some, or raise the limit")
    else:
        why = f"fanotify_init failed: {os.strerror(err)}"
    return WatchUnavailable(f"cannot watch changes with fanotify: {why}")


def _has_cap_sys_admin() -> bool:
    """Whether this process has CAP_SYS_ADMIN (bit 21 of CapEff in /proc/self/status)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> 21 & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True  # cannot tell: let fanotify_mark decide


class FanotifyEvents(EventSource):
    """Events of whole filesystems through fanotify, filtered to the roots added."""

    kind = "fanotify"

    def __init__(self):
        fd = _libc.fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_NONBLOCK
                                 | FAN_CLOEXEC, os.O_RDONLY | os.O_LARGEFILE)
        if fd < 0:
            raise fanotify_init_error(ctypes.get_errno())
        if not _has_cap_sys_admin():  # unprivileged fanotify (5.13) marks no filesystem
            os.close(fd)
            raise fanotify_init_error(errno.EPERM)
        self._fd = fd
        self._roots: list[tuple[bytes, bytes]] = []
        #: fsid (8 bytes, as events carry it) -> descriptors (O_RDONLY) of the roots on
        #: that filesystem, to open its handles through (one per root: bind mounts)
        self._mounts: dict[bytes, list[int]] = {}
        #: fsid + file_handle bytes -> path, or None for a handle that cannot be opened
        self._paths: dict[bytes, bytes | None] = {}
        self._flags: dict[int, int] = {}

    def fileno(self) -> int:
        return self._fd

    @property
    def roots(self) -> list[bytes]:
        return [r for r, _ in self._roots]

    def add_tree(self, root: bytes) -> None:
        pair = _root_pair(root)
        root = pair[0]
        if pair in self._roots:
            return
        # not O_PATH: open_by_handle_at takes no O_PATH mount_fd (EBADF on Linux 6.18)
        mfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            buf = ctypes.create_string_buffer(256)
            if _libc.fstatfs(mfd, buf) < 0:
                raise _oserror("statfs", root)
            fsid = buf.raw[_FSID_OFFSET:_FSID_OFFSET + 8]
            if fsid not in self._mounts:
                self._mark(root)
        except BaseException:
            os.close(mfd)
            raise
        self._mounts.setdefault(fsid, []).append(mfd)
        self._roots.append(pair)

    def _mark(self, root: bytes) -> None:
        if _libc.fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_MASK,
                               AT_FDCWD, root) == 0:
            return
        err = ctypes.get_errno()
        where = os.fsdecode(root)
        if err == errno.EPERM:  # CAP_SYS_ADMIN in a user namespace is not enough
            raise FilesystemNotMarkable(
                f"fanotify cannot watch the filesystem of {where}: marking a whole "
                f"filesystem needs root in the initial user namespace; use the inotify "
                f"event source")
        if err in _UNMARKABLE:
            raise FilesystemNotMarkable(
                f"fanotify cannot watch the filesystem of {where} ({os.strerror(err)}: "
                f"overlayfs, a filesystem without file handles, or one with several "
                f"fsids such as a btrfs subvolume); use the inotify event source for it")
        if err == errno.ENOSPC:
            raise WatchUnavailable(f"cannot watch {where}: fanotify's mark limit "
                                   f"(fs.fanotify.max_user_marks) is reached; raise it")
        raise WatchUnavailable(f"cannot watch {where} with fanotify: {os.strerror(err)}")

    def _consume(self, buf: bytes, out: list[Change]) -> None:
        self._resolve(self._parse(buf), out)

    def _parse(self, buf: bytes) -> list[tuple]:
        """The events of one buffer as (mask, [(info type, fsid + handle, name)])."""
        events = []
        meta = _FAN_META.unpack_from
        info = _FAN_INFO.unpack_from
        pos, end = 0, len(buf)
        moved_dir = False
        while pos + 24 <= end:
            event_len, vers, _, meta_len, mask, fd, _pid = meta(buf, pos)
            if vers != FANOTIFY_METADATA_VERSION or event_len < 24:
                raise WatchUnavailable(f"fanotify event version {vers} is not "
                                       f"{FANOTIFY_METADATA_VERSION}: this anytime is "
                                       f"too old for the kernel; use the inotify source")
            if fd >= 0:  # not in fid mode; close it whatever it is
                os.close(fd)
            records = []
            p, stop = pos + meta_len, pos + event_len
            while p + 4 <= stop:
                rtype, rlen, _fsid, hbytes, _htype = info(buf, p)
                if rlen < 4:
                    break
                if rtype in (FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_DFID,
                             FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                             FAN_EVENT_INFO_TYPE_NEW_DFID_NAME):
                    name_at = p + 20 + hbytes
                    name = b""
                    if rtype not in (FAN_EVENT_INFO_TYPE_DFID, FAN_EVENT_INFO_TYPE_FID):
                        nul = buf.find(b"\0", name_at, p + rlen)
                        name = buf[name_at:nul if nul >= 0 else p + rlen]
                    records.append((rtype, buf[p + 4:name_at], name))
                p += rlen
            if mask & FAN_ONDIR and mask & _FAN_DIR_MOVED:
                moved_dir = True
            events.append((mask, records))
            pos += event_len
        if moved_dir:  # a directory's cached path may be stale: resolve afresh
            self._paths.clear()
        return events

    def _resolve(self, events: list[tuple], out: list[Change]) -> None:
        roots = self._roots
        for mask, records in events:
            if mask & FAN_Q_OVERFLOW:
                out.extend(Change(r, OVERFLOW) for r, _ in roots)
                continue
            flags = self._flags.get(mask)
            if flags is None:
                flags = self._flags[mask] = fan_flags(mask)
            for rtype, handle, name in records:
                if rtype == FAN_EVENT_INFO_TYPE_FID:
                    continue  # only with FAN_REPORT_FID, which this source does not ask
                path = self._paths.get(handle, b"")
                if path == b"":
                    path = self._paths[handle] = self._open_handle(handle)
                    if len(self._paths) > 8192:
                        self._paths.clear()
                if path is None:
                    continue  # a directory already gone: its parent's event covers it
                if name and name != b".":
                    path = _join(path, name)
                if _under(roots, path):
                    out.append(Change(path, flags))

    def _open_handle(self, handle: bytes) -> bytes | None:
        """The path of the directory a handle names, or None if it is gone or outside
        every root (tried through each root of its filesystem: bind mounts)."""
        found = None
        for mfd in self._mounts.get(handle[:8], ()):
            fd = _libc.open_by_handle_at(mfd, handle[8:], os.O_PATH | os.O_CLOEXEC)
            if fd < 0:
                return None  # ESTALE: deleted; anything else: cannot be named either
            try:
                path = os.readlink(f"/proc/self/fd/{fd}".encode())
                if path.endswith(b" (deleted)") and os.fstat(fd).st_nlink == 0:
                    return None
            finally:
                os.close(fd)
            if _under(self._roots, path):
                return path
            found = found or path
        return found

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fds in self._mounts.values():
            for fd in fds:
                os.close(fd)
        self._mounts.clear()


def fan_flags(mask: int) -> int:
    """The Change flags of a fanotify event mask."""
    flags = 0
    if mask & (FAN_MODIFY | FAN_CLOSE_WRITE):
        flags |= CONTENT
    if mask & FAN_ATTRIB:
        flags |= META
    if mask & _FAN_ENTRY:
        flags |= ENTRY | (TREE if mask & FAN_ONDIR else 0)
    return flags


# -- inotify -------------------------------------------------------------------------

def in_flags(mask: int) -> int:
    """The Change flags of an inotify event mask (of an event naming an entry)."""
    flags = 0
    if mask & (IN_MODIFY | IN_CLOSE_WRITE):
        flags |= CONTENT
    if mask & IN_ATTRIB:
        flags |= META
    if mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
        flags |= ENTRY | (TREE if mask & IN_ISDIR else 0)
    return flags


class InotifyEvents(EventSource):
    """Events of every directory under the roots through inotify, one watch each.

    The watched directories form a tree of watch descriptors (parent wd, name), so a
    renamed directory moves its whole subtree by one update; paths are computed from
    it and cached until the next rename."""

    kind = "inotify"

    def __init__(self):
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.EMFILE:
                raise WatchUnavailable("cannot watch changes with inotify: too many inotify "
                                       "instances (raise it with sysctl "
                                       "fs.inotify.max_user_instances=N)")
            raise WatchUnavailable(f"cannot watch changes with inotify: {os.strerror(err)}")
        self._fd = fd
        self._roots: list[tuple[bytes, bytes]] = []
        self._parent: dict[int, int | None] = {}
        self._name: dict[int, bytes] = {}
        self._children: dict[int, dict[bytes, int]] = {}
        self._paths: dict[int, bytes] = {}
        #: cookie -> wd of a directory seen leaving by IN_MOVED_FROM
        self._moves: dict[int, int] = {}
        #: wds of directories moved inside the roots, whose IN_MOVE_SELF is to come
        self._relocated: set[int] = set()
        self._flags: dict[int, int] = {}

    def fileno(self) -> int:
        return self._fd

    @property
    def roots(self) -> list[bytes]:
        return [r for r, _ in self._roots]

    @property
    def watches(self) -> int:
        """How many directories are watched."""
        return len(self._parent)

    def add_tree(self, root: bytes) -> None:
        pair = _root_pair(root)
        if pair not in self._roots:
            self._roots.append(pair)
        self._watch_tree(pair[0], None, pair[0])

    def _add_watch(self, path: bytes) -> int | None:
        wd = _libc.inotify_add_watch(self._fd, path, IN_MASK)
        if wd >= 0:
            return wd
        err = ctypes.get_errno()
        if err == errno.ENOSPC:
            raise WatchLimitReached(
                f"cannot watch {os.fsdecode(path)}: inotify's limit of watched "
                f"directories is reached ({self.watches} watched by this source). Raise "
                f"it (sysctl fs.inotify.max_user_watches=N, e.g. 4 times the directories "
                f"to protect; /etc/sysctl.d/ keeps it), or run as root to use fanotify, "
                f"which needs no watch per directory")
        if err == errno.ENOMEM:
            raise WatchUnavailable(f"cannot watch {os.fsdecode(path)}: the kernel is out "
                                   f"of memory for inotify watches")
        return None  # gone, not a directory any more, or unreadable: nothing to watch

    def _watch_tree(self, top: bytes, parent: int | None, name: bytes) -> None:
        """Watch ``top`` and every directory below it (``parent``/``name``: where ``top``
        hangs in the tree of watches)."""
        seen: set[int] = set()
        stack = [(top, parent, name)]
        while stack:
            path, par, nm = stack.pop()
            wd = self._add_watch(path)
            if wd is None or wd in seen:  # gone, or met again through a bind mount
                continue
            seen.add(wd)
            self._link(wd, par, nm)
            try:
                it = os.scandir(path)
            except OSError:
                continue
            with it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append((_join(path, e.name), wd, e.name))
                    except OSError:
                        pass

    def _link(self, wd: int, parent: int | None, name: bytes) -> None:
        """Place ``wd`` at ``parent``/``name`` in the tree of watches."""
        if wd in self._parent:
            old = self._parent[wd]
            if parent is None or (old == parent and self._name[wd] == name):
                return  # already there (a root stays where the walk that found it put it)
            siblings = self._children.get(old)
            if siblings is not None and siblings.get(self._name[wd]) == wd:
                del siblings[self._name[wd]]
            self._paths.clear()
        self._parent[wd] = parent
        self._name[wd] = name
        if parent is not None:
            self._children.setdefault(parent, {})[name] = wd

    def _path(self, wd: int) -> bytes | None:
        path = self._paths.get(wd)
        if path is not None:
            return path
        chain = []
        w = wd
        while True:
            cached = self._paths.get(w)
            if cached is not None:
                path = cached
                break
            if w not in self._parent:
                return None
            chain.append(w)
            if self._parent[w] is None:
                path = None
                break
            w = self._parent[w]
        for w in reversed(chain):
            path = self._name[w] if path is None else _join(path, self._name[w])
            self._paths[w] = path
        return path

    def _drop(self, wd: int) -> None:
        """Forget a watch the kernel removed (IN_IGNORED)."""
        parent = self._parent.pop(wd, None)
        name = self._name.pop(wd, None)
        siblings = self._children.get(parent)
        if siblings is not None and siblings.get(name) == wd:
            del siblings[name]
        self._children.pop(wd, None)
        self._paths.pop(wd, None)
        self._relocated.discard(wd)

    def _forget_tree(self, wd: int) -> None:
        """Remove the watches of a directory moved out of the roots, and of its subtree."""
        stack = [wd]
        while stack:
            w = stack.pop()
            stack.extend(self._children.get(w, {}).values())
            _libc.inotify_rm_watch(self._fd, w)
            self._drop(w)
        self._paths.clear()

    def _consume(self, buf: bytes, out: list[Change]) -> None:
        unpack = _IN_EVENT.unpack_from
        pos, end = 0, len(buf)
        while pos + 16 <= end:
            wd, mask, cookie, length = unpack(buf, pos)
            name = b""
            if length:
                nul = buf.find(b"\0", pos + 16, pos + 16 + length)
                name = buf[pos + 16:nul if nul >= 0 else pos + 16 + length]
            pos += 16 + length
            if mask & IN_Q_OVERFLOW:
                self._overflow(out)
                continue
            if mask & IN_IGNORED:
                self._drop(wd)
                continue
            base = self._path(wd)
            if base is None:
                continue
            if not name:
                self._self_event(wd, mask, base, out)
                continue
            path = _join(base, name)
            flags = self._flags.get(mask)
            if flags is None:
                flags = self._flags[mask] = in_flags(mask)
            if mask & IN_ISDIR:
                if mask & IN_MOVED_FROM:
                    child = self._children.get(wd, {}).get(name)
                    if child is not None:
                        self._moves[cookie] = child
                        if len(self._moves) > 4096:
                            self._moves.pop(next(iter(self._moves)))
                elif mask & IN_MOVED_TO and cookie in self._moves:
                    child = self._moves.pop(cookie)
                    self._link(child, wd, name)
                    self._relocated.add(child)
                elif mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch_tree(path, wd, name)
            out.append(Change(path, flags))

    def _self_event(self, wd: int, mask: int, path: bytes, out: list[Change]) -> None:
        """An event of a watched directory itself (no name)."""
        is_root = self._parent.get(wd, 0) is None
        if mask & IN_UNMOUNT:
            out.append(Change(path, OVERFLOW))
        elif mask & IN_MOVE_SELF:
            if wd in self._relocated:
                self._relocated.discard(wd)
            else:  # moved out of the roots (its MOVED_TO was elsewhere): stop watching
                if is_root:
                    out.append(Change(path, ENTRY | TREE))
                self._forget_tree(wd)
        elif mask & IN_DELETE_SELF:
            if is_root:
                out.append(Change(path, ENTRY | TREE))
        elif mask & IN_ATTRIB and is_root:  # others come with their name from the parent
            out.append(Change(path, META))

    def _overflow(self, out: list[Change]) -> None:
        """Events were lost: say so for every root, and watch the directories whose
        creation may have been among them."""
        out.extend(Change(r, OVERFLOW) for r, _ in self._roots)
        self._moves.clear()
        self._relocated.clear()
        for root, _ in self._roots:
            self._watch_tree(root, None, root)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- both --------------------------------------------------------------------------

class CombinedSource(EventSource):
    """fanotify for every root whose filesystem it can mark, inotify for the others;
    one epoll descriptor to wait on (module docstring: auto source)."""

    kind = "fanotify"

    def __init__(self, fanotify: FanotifyEvents):
        self.fanotify = fanotify
        self.inotify: InotifyEvents | None = None
        self._epoll = select.epoll()
        self._epoll.register(fanotify.fileno(), select.EPOLLIN)
        self._kinds: dict[bytes, str] = {}

    def add_tree(self, root: bytes) -> None:
        root = _root_pair(root)[0]
        try:
            self.fanotify.add_tree(root)
            self._kinds[root] = "fanotify"
            return
        except FilesystemNotMarkable:
            pass
        if self.inotify is None:
            self.inotify = InotifyEvents()
            self._epoll.register(self.inotify.fileno(), select.EPOLLIN)
        self.inotify.add_tree(root)
        self._kinds[root] = "inotify"

    def kind_of(self, root: bytes) -> str | None:
        """Which source watches ``root`` ("fanotify", "inotify"; None: not added)."""
        return self._kinds.get(_root_pair(root)[0])

    def fileno(self) -> int:
        return self._epoll.fileno()

    def read(self) -> list[Change]:
        out = self.fanotify.read()
        if self.inotify is not None:
            out = _unique(out + self.inotify.read())
        return out

    def close(self) -> None:
        self._epoll.close()
        self.fanotify.close()
        if self.inotify is not None:
            self.inotify.close()


def open_source(mode: str = "auto") -> EventSource:
    """A new event source: "fanotify", "inotify", or "auto" (fanotify where it can be
    initialised, falling back to inotify for the whole source or for the roots whose
    filesystem it cannot mark: :class:`CombinedSource`)."""
    if mode == "fanotify":
        return FanotifyEvents()
    if mode == "inotify":
        return InotifyEvents()
    if mode != "auto":
        raise ValueError(f"event source mode {mode!r} is not auto, fanotify or inotify")
    try:
        return CombinedSource(FanotifyEvents())
    except WatchUnavailable:
        return InotifyEvents()
