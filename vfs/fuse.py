"""The FUSE adapter (mfusepy on libfuse 3; WinFsp's FUSE layer on Windows): it only
translates :class:`~anytime.vfs.namespace.Namespace` calls into FUSE replies.

Caching: the kernel keeps file data per inode, and libfuse's high-level API gives each
mount path an inode of its own (its node id; the ``st_ino`` shown is only an attribute).
So the adapter remembers, per mount path, the content key (``Namespace.content_key``) of
the last open, and opens with ``keep_cache`` exactly when the new open shows the same
content: a file of ``latest/`` (or of a relative name, or a label) that did not change
across commits stays in the page cache, and one that changed is opened without it, which
makes the kernel drop that inode's cached pages. A read served through a handle whose
key is no longer the path's (a file opened before a commit, still read after one) may
put its older bytes into that cache: it forgets the path's key, so the next open drops
them. Without a key (a path not opened yet, or the table full and cleared) the open
drops the cache too, which costs nothing when it is empty. (Two handles of different
versions reading the same path at once share the kernel's pages: each may see the
other's bytes, as without keep_cache.)

Attribute and entry timeouts are per mount in libfuse's high-level API: long for a fixed
mount at a final instant, short (LIVE_TIMEOUT) for the time-travel root, where
``latest/`` must move forward. When the kernel refreshes a file's attributes and its size
or mtime changed, it drops the file's cached pages itself (libfuse asks for
FUSE_CAP_AUTO_INVAL_DATA), so a stale size never outlives the attribute timeout.

A mount fixed at a final instant (``--at``) answers the first OPEN with ENOSYS, so the
kernel stops sending OPEN/RELEASE altogether (FUSE_CAP_NO_OPEN_SUPPORT) and keeps file
data cached; reads then arrive by path, resolved once and cached. This halves the round
trips of tools that read many small files (tar, cp -a).

Permissions: the kernel checks every request against the owners, modes and POSIX ACLs
the mount shows (``default_permissions`` plus FUSE_CAP_POSIX_ACL: the kernel reads each
inode's ``system.posix_acl_access`` through getxattr once and applies it exactly as on
the original filesystem, with the caller's uid, gid and supplementary groups, root's
capabilities included). That is the original tree's own check, and it costs nothing per
request once an inode's ACL is cached (an owner's requests never fetch it). What the
kernel cannot see is checked here: a node of versions/ hangs under directories of
versions/, not under the directories of its own instant, so its lookups, opens and
xattr reads also need search permission on those (``Namespace.reachable``, with the
caller from ``fuse_get_context`` and its groups from ``/proc/PID/status``). On a kernel
without FUSE_CAP_POSIX_ACL (before Linux 4.9) the kernel checks mode bits only, whose
group bits are an ACL's mask: opens of files and directories with an ACL are then
checked here too (never granting more than the ACL; a named user the mode bits refuse
stays refused), and OPEN is never skipped.

Threads: libfuse's multithreaded loop calls in here from several threads; each call uses
its own short LMDB read transactions. The open-file table is guarded by a lock.

Errors: a damaged block gives EIO for that read and one log line naming the file and
the instant; any other unexpected exception gives EIO and a logged traceback. Nothing
a reader does can stop the mount.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import struct
import sys
import threading

from anytime.fusekit.mounting import (
    MAX_READ,
    SignalUnmount,
    detach,
    load_mfusepy,
    mount_device,
    raise_readahead,
)
from anytime.store import clock

mfusepy = load_mfusepy()

from anytime.store.errors import DamagedData  # noqa: E402

from .access import ACL_XATTR, Caller, R  # noqa: E402
from .namespace import Namespace, Node  # noqa: E402

log = logging.getLogger("anytime.mount")

#: Kernel attribute/entry cache timeouts (seconds).
FINAL_TIMEOUT = 86400.0
#: With namespace.HORIZON_TTL, how stale latest/ may be after a commit (0.1 + 0.2 s).
LIVE_TIMEOUT = 0.2
#: Resolved paths kept by a final mount (entries; cleared when full).
NODE_CACHE = 200_000
#: Content keys of opened paths kept for keep_cache (entries; cleared when full).
SHOWN_CACHE = 200_000
FUSE_READDIR_PLUS = 1
FUSE_CAP_POSIX_ACL = 1 << 19
#: How long a caller's supplementary groups (read from /proc/PID/status) are kept (s).
GROUPS_TTL = 1.0
FUSE_FILL_DIR_PLUS = 2


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _erofs(*_args, **_kw):
    raise mfusepy.FuseOSError(errno.EROFS)


def _guard(fn):
    """OSErrors pass through as errno; anything else is logged and becomes EIO."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kw):
        try:
            return fn(self, *args, **kw)
        except OSError:
            raise
        except DamagedData as e:
            log.error("damaged data reading %s: %s", args[0] if args else "?", e)
            raise mfusepy.FuseOSError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s(%r)", fn.__name__, args[:1])
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper


class Adapter(mfusepy.Operations):
    """FUSE operations over a Namespace. Read-only: every change fails with EROFS."""

    use_ns = True

    def __init__(self, ns: Namespace, mountpoint: str, on_ready=None):
        self.ns = ns
        self.mountpoint = mountpoint
        self.on_ready = on_ready
        self._handles: dict[int, _Handle] = {}
        self._shown: dict[str, tuple] = {}  # mount path -> content key of its last open
        self._dirs: dict[int, list | None] = {}
        self._next = itertools.count(1)
        self._lock = threading.Lock()
        # A mount whose every file is final needs no OPEN/RELEASE round trips, and its
        # paths resolve to the same node forever (cached here).
        self.no_open = ns.kernel_cacheable()
        self._nodes: dict[str, Node] | None = {} if self.no_open else None
        self.kernel_acl = False  # set by init: the kernel enforces ACLs itself
        self._groups: dict[int, tuple[float, frozenset[int]]] = {}

    # --- lifecycle ---------------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        timeout = FINAL_TIMEOUT if self.ns.kernel_cacheable() else LIVE_TIMEOUT
        if config is not None:
            config.use_ino = 1
            config.readdir_ino = 0
            config.entry_timeout = timeout
            config.attr_timeout = timeout
            config.negative_timeout = timeout if self.ns.at is not None else LIVE_TIMEOUT
            config.kernel_cache = 0  # decided per open (keep_cache)
        if conn is not None:
            if conn.capable & FUSE_CAP_POSIX_ACL:
                conn.want |= FUSE_CAP_POSIX_ACL  # implies default_permissions
                self.kernel_acl = True
            else:
                log.warning("this kernel does not enforce POSIX ACLs on FUSE mounts: "
                            "opens of files with an ACL are checked by the mount instead")
            conn.max_readahead = MAX_READ
            if hasattr(conn, "max_read"):
                conn.max_read = MAX_READ
        if self.on_ready is not None:
            # INIT is answered when this returns; the callback waits for that.
            threading.Thread(target=self.on_ready, name="anytime-ready", daemon=True).start()

    def destroy(self, path) -> None:
        with self._lock:
            if self._handles:
                log.info("unmounted with %d files still open", len(self._handles))
            self._handles.clear()

    # --- lookups -----------------------------------------------------------------------
    def _node(self, path: str) -> Node:
        cache = self._nodes
        if cache is None:
            return self.ns.resolve(_b(path))
        node = cache.get(path)
        if node is None:
            node = self.ns.resolve(_b(path))
            if len(cache) > NODE_CACHE:
                cache.clear()
            cache[path] = node
        return node

    def _caller(self) -> Caller:
        """The identity of the current request; supplementary groups are read from
        ``/proc/PID/status`` (kept GROUPS_TTL seconds per pid; none if unreadable)."""
        uid, gid, pid = mfusepy.fuse_get_context()
        if uid == 0:
            return Caller(0, gid)
        now = clock.monotonic()
        hit = self._groups.get(pid)
        if hit is None or now - hit[0] > GROUPS_TTL:
            hit = (now, _proc_groups(pid))
            if len(self._groups) > 4096:
                self._groups.clear()
            self._groups[pid] = hit
        return Caller(uid, gid, hit[1])

    def _check(self, node: Node, mask: int = 0) -> None:
        """EACCES unless the caller may reach ``node`` (its ancestors at its instant, for
        nodes of versions/) and, where the kernel does not apply ACLs, ``mask`` on a node
        with one."""
        acl = (mask and not self.kernel_acl and node.entry is not None
               and ACL_XATTR in node.entry.xattrs)
        if not (node.hidden_parents or acl):
            return
        caller = self._caller()
        ok = self.ns.may(node, caller, mask) if acl else self.ns.reachable(node, caller)
        if not ok:
            raise mfusepy.FuseOSError(errno.EACCES)

    def _handle_node(self, fh) -> Node | None:
        if fh is None:
            return None
        with self._lock:
            h = self._handles.get(fh.fh if hasattr(fh, "fh") else fh)
        return None if h is None else h.node

    @_guard
    def getattr(self, path, fh=None):
        node = self._handle_node(fh)
        if node is None:
            node = self._node(path)
            self._check(node)  # a lookup: the ancestors at the node's instant
        return self.ns.getattr(node)

    @_guard
    def opendir(self, path):
        # (ENOSYS here would save the OPENDIR round trip, but libfuse 3.14's high-level
        # readdir then dereferences a missing directory handle and crashes.)
        if not self.kernel_acl or self.ns.checks_parents(_b(path)):
            self._check(self._node(path), R)
        fh = next(self._next)
        with self._lock:
            self._dirs[fh] = None
        return fh

    def releasedir(self, path, fh):
        with self._lock:
            self._dirs.pop(fh, None)
        return 0

    @_guard
    def dir_items(self, path, fh) -> list[tuple[bytes, dict | None]]:
        """The listing of an open directory (names as bytes), made once per opendir
        (readdir is called again with offsets for long directories)."""
        with self._lock:
            items = self._dirs.get(fh)
        if items is None:
            node = self._node(path)
            caller = self._caller() if node.kind == "vfile" else None
            items = [(b".", None), (b"..", None)] + self.ns.listdir(node, caller)
            with self._lock:
                if fh in self._dirs:
                    self._dirs[fh] = items
        return items

    def readdir(self, path, fh):  # plain mfusepy (libfuse 2): names and modes only
        return [(_s(name), attrs, 0) for name, attrs in self.dir_items(path, fh)]

    @_guard
    def readlink(self, path):
        return _s(self.ns.readlink(self._node(path)))

    def _checked(self, path: str) -> Node:
        node = self._node(path)
        self._check(node)
        return node

    @_guard
    def listxattr(self, path):
        return [_s(k) for k in self.ns.xattrs(self._checked(path))]

    @_guard
    def getxattr(self, path, name, position=0):
        val = self.ns.xattrs(self._checked(path)).get(_b(name))
        if val is None:
            raise mfusepy.FuseOSError(errno.ENODATA)
        return val

    @_guard
    def statfs(self, path):
        bs = self.ns.vol.block_size
        return {"f_bsize": bs, "f_frsize": bs, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    # --- files -------------------------------------------------------------------------
    @_guard
    def open(self, path, fi):
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise mfusepy.FuseOSError(errno.EROFS)
        node = self._node(path)
        if node.kind != "entry":
            raise mfusepy.FuseOSError(errno.EISDIR)
        self._check(node, R)
        if self.no_open and self.kernel_acl:
            # Every file of this mount is final: ENOSYS tells the kernel to stop sending
            # OPEN/RELEASE at all (FUSE_CAP_NO_OPEN_SUPPORT); reads then come by path.
            raise mfusepy.FuseOSError(errno.ENOSYS)
        fh = next(self._next)
        key = self.ns.content_key(node)
        with self._lock:
            keep = self._shown.get(path) == key
            if not keep:
                if len(self._shown) >= SHOWN_CACHE:
                    self._shown.clear()
                self._shown[path] = key
            self._handles[fh] = _Handle(node, path, key)
        fi.fh = fh
        fi.keep_cache = 1 if keep else 0
        return 0

    def read(self, path, size, offset, fi):
        with self._lock:
            h = self._handles.get(fi.fh)
            if h is not None and self._shown.get(h.path) != h.key:
                # these bytes may enter the page cache of a path now showing others
                self._shown.pop(h.path, None)
        if h is not None:
            node = h.node
        elif not (self.no_open and self.kernel_acl):
            raise mfusepy.FuseOSError(errno.EBADF)
        else:
            node = self._node(path)
        try:
            return self.ns.read(node, offset, size)
        except DamagedData as e:
            log.error("damaged data: %s, bytes %d-%d: %s; the read got EIO",
                      self.ns.describe(node), offset, offset + size, e)
            raise mfusepy.FuseOSError(errno.EIO) from None
        except OSError:
            raise
        except Exception:
            log.exception("reading %s failed", self.ns.describe(node))
            raise mfusepy.FuseOSError(errno.EIO) from None

    def release(self, path, fi):
        with self._lock:
            self._handles.pop(fi.fh, None)
        return 0

    # --- read-only ---------------------------------------------------------------------
    chmod = chown = create = link = mkdir = mknod = removexattr = rename = rmdir = \
        setxattr = symlink = truncate = unlink = utimens = write = fallocate = _erofs


class _Handle:
    """An open file: its node, the mount path it was opened by, and the content key it
    shows (``Namespace.content_key``)."""

    __slots__ = ("node", "path", "key")

    def __init__(self, node: Node, path: str, key: tuple):
        self.node, self.path, self.key = node, path, key


def _proc_groups(pid: int) -> frozenset[int]:
    """Supplementary groups of process ``pid`` (the ``Groups:`` line of its status)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


_pinned: set[int] = set()
_pinned_lock = threading.Lock()


def _pin_thread_state() -> None:
    """Keep a Python thread state on this libfuse thread for good.

    ctypes enters every callback from a foreign thread with PyGILState_Ensure and leaves
    with PyGILState_Release, which creates and destroys a thread state each time (and
    with it every threading.local). One extra, never released Ensure per thread keeps
    the state alive: a cheaper callback, and thread-locals that last. At most
    ``max_threads`` states are kept."""
    tid = threading.get_native_id()
    if tid in _pinned:
        return
    with _pinned_lock:
        if tid not in _pinned:
            ctypes.pythonapi.PyGILState_Ensure()
            _pinned.add(tid)


class StatPacker:
    """Writes a whole ``struct stat`` (mfusepy's ``c_stat``) from an attribute dict in one
    ``struct.pack_into``, instead of one ctypes attribute store per field
    (``mfusepy.set_st_attrs``): listings fill one stat per entry.

    The layout is read from ``c_stat``'s fields, so it follows the platform's. Integer
    fields take the dict's ``st_*`` value (0 when absent); ``st_Xtimespec`` fields take
    ``st_Xtime`` in nanoseconds. ``usable`` is False if a field has another shape; then
    use ``mfusepy.set_st_attrs``."""

    _CODES = {(1, True): "b", (1, False): "B", (2, True): "h", (2, False): "H",
              (4, True): "i", (4, False): "I", (8, True): "q", (8, False): "Q"}

    def __init__(self, cstat=None):
        cstat = cstat or mfusepy.c_stat
        self.size = ctypes.sizeof(cstat)
        fmt, pos, self._fields = ["="], 0, []
        self.usable = True
        for name, ctype in cstat._fields_:
            offset = getattr(cstat, name).offset
            subs = [(name, ctype, offset, None)]
            if name.endswith("timespec"):  # st_atimespec -> st_atime (ns): sec, nsec
                subs = [(name[:-4], ftype, offset + getattr(ctype, f).offset, part)
                        for part, (f, ftype) in enumerate(ctype._fields_)]
            for key, ftype, off, part in subs:
                tcode = getattr(ftype, "_type_", None)
                code = self._CODES.get((ctypes.sizeof(ftype), tcode in "bhilq"), None) \
                    if isinstance(tcode, str) else None
                if code is None or off < pos:
                    if key.startswith("st_"):
                        self.usable = False
                    continue  # padding, reserved arrays: left zero
                if off > pos:
                    fmt.append(f"{off - pos}x")
                fmt.append(code)
                pos = off + ctypes.sizeof(ftype)
                self._fields.append((key, part))
        if self.size > pos:
            fmt.append(f"{self.size - pos}x")
        self._struct = struct.Struct("".join(fmt))
        self.usable = self.usable and self._struct.size == self.size
        self._keys = [key for key, _ in self._fields]
        self._split = [i for i, (_, part) in enumerate(self._fields) if part == 0]
        if any(self._fields[i + 1] != (key, 1) for i in self._split
               for key in [self._fields[i][0]]):
            self.usable = False  # tv_sec not followed by its tv_nsec

    def pack_into(self, buf, attrs: dict) -> None:
        """Fill ``buf`` (a writable buffer of ``size`` bytes) from ``attrs``."""
        get = attrs.get
        vals = [get(key, 0) for key in self._keys]
        for i in self._split:  # a time in ns at i: seconds at i, nanoseconds at i + 1
            vals[i], vals[i + 1] = divmod(vals[i], 1_000_000_000)
        self._struct.pack_into(buf, 0, *vals)


_STAT = StatPacker()


def fill_stat(st, attrs: dict, raw=None) -> None:
    """Write ``attrs`` over the whole ``c_stat`` ``st`` (absent fields zero); ``raw``:
    ``st`` as bytes (``memoryview(st).cast("B")``), made once by callers that loop."""
    if _STAT.usable:
        _STAT.pack_into(memoryview(st).cast("B") if raw is None else raw, attrs)
    else:
        ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
        mfusepy.set_st_attrs(st, attrs, use_ns=True)


class _PlusFUSE(mfusepy.FUSE):
    """mfusepy.FUSE with readdirplus: when the kernel asks for it, listings carry full
    attributes (and libfuse registers the entries), so ``ls -l`` and ``find`` need no
    lookup per entry. mfusepy itself passes only st_mode and st_ino. Stats are written
    with one :class:`StatPacker` call each, listings and getattr alike."""

    def _wrapper(self, func, *args, **kwargs):
        _pin_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        plus = bool(flags & FUSE_READDIR_PLUS)
        items = self.operations.dir_items(None if path is None else _s(path), fip.contents.fh)
        st = mfusepy.c_stat()
        raw = memoryview(st).cast("B")
        # Non-zero offsets make libfuse pass entries through at once (with a lookup when
        # FUSE_FILL_DIR_PLUS is set); with offset 0 it drops readdirplus attributes.
        for i in range(offset, len(items)):
            name, attrs = items[i]
            full = False
            if attrs:
                fill_stat(st, attrs, raw)
                full = "st_nlink" in attrs
            fill = FUSE_FILL_DIR_PLUS if plus and full else 0
            if filler(buf, name, st if attrs else None, i + 1, fill) != 0:
                break
        return 0

    def fgetattr(self, path, buf, fip) -> int:
        fh = fip.contents if fip else None
        attrs = self.operations.getattr(None if path is None else _s(path), fh)
        fill_stat(buf.contents, attrs)
        return 0


def mount_options(ns: Namespace) -> dict:
    """Options for the FUSE mount (foreground: the CLI daemonizes itself)."""
    opts = {"foreground": True, "ro": True, "fsname": f"anytime:{ns.vol.name}",
            "use_ino": True}
    if sys.platform == "win32":  # WinFsp: a drive letter, no Unix permission options
        return opts
    opts.update(subtype="anytime", default_permissions=True, max_read=MAX_READ,
                max_threads=16, max_idle_threads=8,
                noatime=True)
    if os.geteuid() == 0:
        opts["allow_other"] = True  # others may read what their original rights allow
    return opts


def serve(ns: Namespace, mountpoint: str, on_ready=None, debug: bool = False) -> int | None:
    """Mount ``ns`` at ``mountpoint`` and serve requests until it is unmounted.

    Returns the signal (SIGINT, SIGTERM, SIGHUP) that asked for the unmount, or None if
    it was unmounted from outside (``anytime umount``); see :class:`SignalUnmount`."""
    opts = mount_options(ns)
    if debug:
        opts["debug"] = True
    cls = _PlusFUSE if mfusepy.fuse_version_major == 3 else mfusepy.FUSE
    with SignalUnmount(mountpoint) as stop:
        cls(Adapter(ns, mountpoint, on_ready), mountpoint, raw_fi=True, **opts)
    return stop.signum


__all__ = ["Adapter", "serve", "SignalUnmount", "detach", "mount_device", "raise_readahead",
           "MAX_READ"]
