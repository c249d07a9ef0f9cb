"""The repository: a directory holding ``config``, ``packs/`` and the LMDB ``index/``.

Finding it is the CLI's business (tools/cmd_repo.py :func:`locate`): the store reads
no environment.

Concurrency: many readers (each a short LMDB read transaction) and one writer. The
writer holds an exclusive ``flock`` on ``lock`` for its whole run, so only it creates
packs; when it starts it reclaims pack files that no commit references (left by a
killed writer). An LMDB environment must never be carried across ``fork()``: open the
repository after daemonising.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager

import lmdb

from . import clock, damage, modes, space
from .chunker import Chunker, file_refs, seed_of
from .errors import (
    AnytimeError,
    DamagedData,
    PackMissing,
    RepositoryAccessDenied,
    RepositoryExists,
    RepositoryFormatError,
    RepositoryLocked,
    RepositoryNotFound,
    UsageError,
)
from .format import (
    ALL_DBS,
    BLOCK_ID_LEN,
    BLOCK_LOC,
    CHUNK_AVG,
    CHUNK_MAX,
    CHUNK_MIN,
    CHUNK_NC,
    CODEC_ZSTD,
    CODEC_ZSTD_DICT,
    DB_BLOCKS,
    DB_BLOCKVERS,
    DB_ENTRIES,
    DB_INODES,
    DB_META,
    DB_PACKS,
    DB_VOLUMES,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_PACK_TARGET,
    FORMAT_VERSION,
    HOLE_ID,
    INODE_VALUE,
    KNOWN_FEATURES,
    OPEN_PACK_PREFIX,
    PACK_INFO,
    PENDING_PREFIX,
    RECORD_HEADER,
    U32,
    U64,
    ZDICT_CURRENT,
    ZSTD_LEVEL,
    DirHasher,
    block_size_problem,
    decode_ref,
    open_pack_key,
    pending_key,
    ref_chunk_ids,
    split_pending_key,
    vol_key,
    zdict_key,
)
from .format import (
    block_id as block_id_of,
)
from .mapping import MapTrimmer
from .options import DEFAULT_OPTIONS, StoreOptions
from .packs import PackReader
from .packstore import LocalDirPackStore, PackStore
from .readahead import ReadAhead
from .volumes import Volume

#: Address space reserved for the index up front: growing it later would invalidate
#: the read transactions of running mounts.
MAP_SIZE = 1 << 40
MAX_READERS = 512


#: Chunk ids ``read_block_verified`` remembers as verified, at most (then forgotten).
VERIFIED_KEPT = 65_536


class BlockCache:
    """A small thread-safe LRU of decompressed blocks, bounded in bytes."""

    def __init__(self, max_bytes: int = 16 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[bytes, threading.Lock] = {}

    def get(self, block_id: bytes) -> bytes | None:
        with self._lock:
            data = self._items.get(block_id)
            if data is not None:
                self._items.move_to_end(block_id)
            return data

    def get_or_load(self, block_id: bytes, load, wait: bool = True) -> bytes | None:
        """The cached block, or ``load()``'s result; concurrent callers for one block wait
        for a single load instead of decompressing it twice. With ``wait`` false, a
        block another caller is loading is left to it: None at once (read-ahead).

        A load in flight is a held lock in ``_loading``; waiters block on it, then look
        in the cache again (a failed load leaves nothing, and the next caller tries)."""
        while True:
            with self._lock:
                data = self._items.get(block_id)
                if data is not None:
                    self._items.move_to_end(block_id)
                    return data
                busy = self._loading.get(block_id)
                if busy is None:
                    busy = self._loading[block_id] = threading.Lock()
                    busy.acquire()
                    mine = True
                else:
                    mine = False
            if not mine:
                if not wait:
                    return None
                with busy:  # wait for the loader to finish
                    pass
                continue
            try:
                data = load()
                self.put(block_id, data)
                return data
            finally:
                with self._lock:
                    del self._loading[block_id]
                busy.release()

    def put(self, block_id: bytes, data: bytes) -> None:
        with self._lock:
            if block_id in self._items or len(data) > self.max_bytes // 4:
                return
            self._items[block_id] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


def _write_config(root: str, config: dict) -> None:
    """Write ``config`` atomically: to config.tmp, fsync, rename, fsync the directory."""
    tmp = os.path.join(root, "config.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     modes.FILE_MODE)
        os.fchmod(fd, modes.FILE_MODE)  # a config.tmp left by a crash keeps its old mode
        with open(fd, "w") as f:
            json.dump(config, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(root, "config"))
        _fsync_dir(root)
    except OSError as e:
        space.check(e, root, "writing the config")
        raise


def chunker_problem(c) -> str | None:
    """Why ``c`` (a config's ``chunker`` object) cannot be used (None: it can)."""
    if not isinstance(c, dict) or c.get("algorithm") != "fastcdc2020":
        return "are missing or name an unknown algorithm"
    vals = [c.get(k) for k in ("min", "avg", "max", "nc", "seed")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "are not whole numbers"
    lo, avg, hi, nc, seed = vals
    # pyfastcdc's bounds (min 64 B..1 MiB, max 1 KiB..16 MiB, avg 256 B..4 MiB)
    if not (64 <= lo <= 1 << 20 and 256 <= avg <= 4 << 20 and 1024 <= hi <= 16 << 20
            and lo <= avg <= hi and 0 <= nc <= 3 and 0 < seed < 1 << 63):
        return f"are out of range (min {lo}, avg {avg}, max {hi}, nc {nc})"
    return None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zstandard():
    """The zstandard module, imported when the first block is decompressed: ``ls`` and
    ``log`` read none, and start faster without it (once per decompressor made, not
    per block)."""
    import zstandard

    return zstandard


def _allocate(path: str) -> int:
    """Give every page of ``path`` its disk blocks now; return the descriptor used, which
    the caller must keep open until it has closed its LMDB environment.

    LMDB's lock file (reader slots) is made sparse with ftruncate and mapped shared; the
    first store to a slot on a page without blocks allocates them, and on a full disk
    that is a SIGBUS that kills the process (seen: a snapshot filling its repository's
    disk died in read_txn). Allocated up front, a full disk fails here, as an error.
    A no-op for blocks already allocated; skipped where the filesystem cannot do it.

    Why the descriptor stays open: LMDB marks the environment in use with an fcntl
    lock on the lock file, and POSIX drops every fcntl lock a process holds on a file
    when that process closes *any* descriptor of it. Closing this one would leave the
    environment unmarked; the next process to open it would then take it for unused
    and reset the reader table under the live readers and the writer (seen: a reader
    beside a snapshot found no databases, and the snapshot failed with a damaged
    index)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            os.close(fd)
            raise
    return fd


def _users_lock(index: str) -> int:
    """Open ``index/users`` and lock it shared (waiting while a compaction holds it,
    store/compaction.py); the descriptor, or -1 where it cannot be opened (a read-only
    repository, which no compaction can change either)."""
    try:
        modes.make_dir(index)
        fd = os.open(os.path.join(index, "users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     modes.FILE_MODE)
    except OSError:
        try:
            fd = os.open(os.path.join(index, "users"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def index_error(err: Exception, root: str, what: str = "writing the index") -> AnytimeError:
    """What to tell the user about LMDB failure ``err`` on the index of the repository
    at ``root`` (``what``: the write that failed, if the disk is full). Every LMDB error
    is translated here, inside the store: the other layers never see one."""
    if space.is_full(err, root):
        return space.full_error(root, what)
    text = str(err)
    index = os.path.join(root, "index")
    if "permission denied" in text.lower():
        return access_denied(root, index)
    return RepositoryFormatError(
        f"the repository index {index} cannot be used ({text}): it is damaged, or not "
        f"an anytime index. The packs hold everything it held: rebuild it from them with "
        f"'anytime check --repair' (the damaged index is kept beside the new one)")


def index_missing(root: str) -> RepositoryFormatError:
    """The error for a repository whose packs are there but whose index is not."""
    return RepositoryFormatError(
        f"the repository {root} holds packs but its index ({os.path.join(root, 'index')}) "
        f"is missing or new: nothing can be read or written until it is rebuilt. The "
        f"packs hold everything it held: run 'anytime check --repair'")


def _not_ours(root: str, raw: bytes) -> str:
    """Why the config at ``root`` is not an anytime config: another tool's repository
    (borg: an INI config with a [repository] section; restic: config beside keys/,
    data/ and snapshots/), or a damaged file."""
    if raw.lstrip().startswith(b"[repository]"):
        return (f"{root} is a borg repository, not an anytime one; use borg to read it "
                f"(for example 'borg list {root}')")
    if all(os.path.isdir(os.path.join(root, d)) for d in ("keys", "data", "snapshots")):
        return (f"{root} is a restic repository, not an anytime one; use restic to read it "
                f"(for example 'restic -r {root} snapshots')")
    return (f"{os.path.join(root, 'config')} is not an anytime repository config: it is "
            f"damaged, or {root} belongs to another program. If it was anytime's, put "
            f"back the config from a copy of the repository (it holds the block key, "
            f"without which nothing can be read)")


def user_error(err: BaseException, root: str) -> AnytimeError | None:
    """``err`` as an error users can act on if it is an LMDB failure on the index of the
    repository at ``root``, else None (the last net of the CLI: the store translates the
    errors of its transactions itself)."""
    return index_error(err, root) if isinstance(err, lmdb.Error) else None


class _ReadTxn:
    """``with repo.read_txn() as txn``: an LMDB read transaction whose LMDB errors
    leave as :func:`index_error` (a class, not a generator: a mount opens one per
    request)."""

    __slots__ = ("txn", "root")

    def __init__(self, txn, root: str):
        self.txn = txn
        self.root = root

    def __enter__(self) -> lmdb.Transaction:
        return self.txn

    def __exit__(self, typ, err, tb) -> bool:
        self.txn.abort()  # read-only: nothing to commit
        if typ is not None and issubclass(typ, lmdb.Error):
            raise index_error(err, self.root, "reading the index") from None
        return False


def access_denied(root: str, path: str) -> RepositoryAccessDenied:
    try:
        owner = modes.owner_name(os.stat(root).st_uid)
    except OSError:
        owner = "another user"
    return RepositoryAccessDenied(
        f"permission denied on {path}: the repository {root} belongs to {owner} and is "
        f"private to it (it holds every protected file unencrypted). Run anytime as that "
        f"user, or as root; or let the owner change its modes or owner (chmod, chown)")


@contextmanager
def hold_writer_lock(root: str, wait: bool = False):
    """Hold the writer lock of the repository at ``root`` (the ``lock`` file's flock,
    which names the holder's pid); without ``wait``, another holder raises
    :class:`RepositoryLocked`. ``Repository.writer_lock`` is this plus the writer's
    cleanup; a rebuild of the index (store/repair.py) holds it bare."""
    path = os.path.join(root, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, modes.FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise RepositoryLocked(
                f"another anytime process ({holder or 'unknown pid'}) is writing to "
                f"{root}; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


class Repository:
    """An open repository. Thread-safe for reading; see the module doc for writing."""

    def __init__(self, root: str, config: dict, options: StoreOptions = DEFAULT_OPTIONS,
                 packs: PackStore | None = None):
        self.root = root
        #: where the packs are: the repository's ``packs/`` unless a store is given
        #: (tests open repositories on a memory or faulty store: store/packstore.py)
        self.pack_store = packs if packs is not None else LocalDirPackStore(root)
        self.config = config
        #: knobs that are not part of the format (store/options.py)
        self.options = options
        self.block_key = bytes.fromhex(config["block_key"])
        #: names directories in index keys (format.DirHasher)
        self.dir_hash = DirHasher(self.block_key)
        self.block_size = int(config.get("block_size", DEFAULT_BLOCK_SIZE))
        self.zstd_level = int(config.get("zstd_level", ZSTD_LEVEL))
        c = config["chunker"]
        #: cuts file content into chunks, the same way for every writer of the repository
        self.chunker = Chunker(c["seed"], c["min"], c["avg"], c["max"], c["nc"])
        self.pack_target = int(options.pack_target
                               or config.get("pack_target", DEFAULT_PACK_TARGET))
        self._lock_fd = -1  # see _allocate: closed only after self.env
        self._users_fd = -1  # index/users, locked shared while the index is open
        self._open_index()
        self.packs = PackReader(self.pack_store)
        self.cache = BlockCache()
        self._read_ahead = ReadAhead(self)
        # decompressors by dictionary id (0: none), and the dictionaries read so far
        # (zstandard.ZstdDecompressor, zstandard.ZstdCompressionDict)
        self._dctx_pools: dict[int, list] = {0: []}
        self._zdicts: dict[int, object] = {}
        #: damage records in force for the writer (read when it takes the writer lock)
        self.damage: damage.Damage = {}
        self._noted: set[tuple[bytes, bytes, int]] = set()
        #: chunks whose plaintext hashed to their id lately (read_block_verified); the
        #: plaintext is read from packs only through checksums and the cache, so a chunk
        #: a restore reads for two neighbouring blocks need not be hashed twice
        self._verified: set[bytes] = set()
        self._writing = False  # this object holds the writer lock (writer_lock)

    # --- opening ---------------------------------------------------------------------
    @classmethod
    def init(cls, root: str, block_size: int = DEFAULT_BLOCK_SIZE,
             options: StoreOptions = DEFAULT_OPTIONS, packs: PackStore | None = None,
             chunker_seed: int | None = None) -> Repository:
        """Create a repository at ``root`` (empty or new). ``chunker_seed`` (tests:
        chunk boundaries the same in every run) replaces the one derived from the new
        repository's block key."""
        root = os.path.abspath(root)
        problem = block_size_problem(block_size)
        if problem:
            raise UsageError(f"block size {problem}")
        if os.path.exists(os.path.join(root, "config")):
            raise RepositoryExists(f"a repository already exists at {root}")
        if os.path.isdir(root) and os.listdir(root):
            raise RepositoryExists(f"{root} is not empty; choose an empty or new directory")
        modes.private_dir(root)  # only the owner may read what it will hold
        packs = packs if packs is not None else LocalDirPackStore(root)
        packs.init()
        config = {
            "format_version": FORMAT_VERSION,
            "features": sorted(KNOWN_FEATURES),
            "id": os.urandom(16).hex(),  # as secrets.token_hex (which imports hashlib)
            "block_key": os.urandom(32).hex(),
            "block_size": block_size,
            "zstd_level": ZSTD_LEVEL,
            "created_ns": clock.now_ns(),
        }
        config["chunker"] = {"algorithm": "fastcdc2020", "min": CHUNK_MIN, "avg": CHUNK_AVG,
                             "max": CHUNK_MAX, "nc": CHUNK_NC,
                             "seed": chunker_seed or seed_of(bytes.fromhex(config["block_key"]))}
        modes.private_dir(os.path.join(root, "index"))
        _write_config(root, config)  # the config file marks a repository
        return cls(root, config, options, packs)

    def require_feature(self, name: str) -> None:
        """List feature ``name`` in the config (once), so that programs that do not know
        it refuse this repository from now on."""
        features = self.config.get("features", [])
        if name not in features:
            self.config["features"] = sorted({*features, name})
            _write_config(self.root, self.config)

    @classmethod
    def open(cls, root: str, options: StoreOptions = DEFAULT_OPTIONS,
             packs: PackStore | None = None, new_index: bool = False) -> Repository:
        """Open the repository at ``root``. ``new_index``: the index may be missing and is
        then made empty (a rebuild fills it, store/repair.py); otherwise a repository with
        packs and no index is refused with what to do."""
        root = os.path.abspath(root)
        path = os.path.join(root, "config")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise RepositoryNotFound(
                f"no anytime repository at {root}; create one with 'anytime init' "
                f"(or point --repo / $ANYTIME_REPO at an existing one)") from None
        except PermissionError:
            raise access_denied(root, path) from None
        except OSError as e:
            raise RepositoryFormatError(f"the repository config {path} cannot be read: "
                                        f"{e.strerror}") from None
        try:
            config = json.loads(raw)
            if not isinstance(config, dict) or "format_version" not in config:
                raise ValueError("not an anytime config")
        except ValueError:  # UnicodeDecodeError and JSONDecodeError too
            raise RepositoryFormatError(_not_ours(root, raw)) from None
        version = config.get("format_version")
        if version == 1:
            raise RepositoryFormatError(
                f"the repository at {root} has format version 1 (fixed blocks, made by "
                f"anytime 0.1); this anytime reads and writes format version "
                f"{FORMAT_VERSION} only, and does not convert it. Its data is intact: "
                f"restore what you need with anytime 0.1 (or keep it for that), and start "
                f"a new repository with 'anytime init' for this release")
        if version != FORMAT_VERSION:
            raise RepositoryFormatError(
                f"the repository at {root} has format version {version}; this anytime "
                f"reads format version {FORMAT_VERSION}. Use a matching anytime release.")
        unknown = set(config.get("features", [])) - KNOWN_FEATURES
        if unknown:
            raise RepositoryFormatError(
                f"the repository at {root} uses features this anytime does not know "
                f"({', '.join(sorted(unknown))}); upgrade anytime to use it.")
        key = config.get("block_key")
        if not (isinstance(key, str) and len(key) == 64
                and all(c in "0123456789abcdef" for c in key)):
            raise RepositoryFormatError(
                f"the repository config {path} is damaged: it has no valid block key, "
                f"without which no block can be named. Put back the config from a copy of "
                f"the repository")
        problem = block_size_problem(config.get("block_size", DEFAULT_BLOCK_SIZE))
        if problem:  # a volume made with it would drop every file's content
            raise RepositoryFormatError(
                f"the repository config {path} is damaged: its block size {problem}")
        problem = chunker_problem(config.get("chunker"))
        if problem:  # chunks cut otherwise would not dedup with those stored
            raise RepositoryFormatError(
                f"the repository config {path} is damaged: its chunker settings {problem}. "
                f"Put back the config from a copy of the repository")
        if not new_index and not os.path.exists(os.path.join(root, "index", "data.mdb")):
            store = packs if packs is not None else LocalDirPackStore(root)
            if next(iter(store.list()), None) is not None:
                raise index_missing(root)
        return cls(root, config, options, packs)

    def _open_index(self) -> None:
        """Open the LMDB index (``self.env``, ``self.dbs``, ``self.map_trimmer``)."""
        root = self.root
        if self._users_fd < 0:  # before LMDB opens anything: a compaction may be running
            self._users_fd = _users_lock(os.path.join(root, "index"))
        # mode: the index directory 0700, data.mdb and lock.mdb 0600 (py-lmdb drops the
        # execute bits for the files; the umask can only narrow them)
        try:
            self.env = lmdb.open(os.path.join(root, "index"), map_size=MAP_SIZE,
                                 max_dbs=len(ALL_DBS) + 2, max_readers=MAX_READERS,
                                 readahead=False, subdir=True, mode=modes.DIR_MODE)
        except lmdb.Error as e:
            raise index_error(e, root) from None
        try:
            self._lock_fd = _allocate(os.path.join(root, "index", "lock.mdb"))
            with self.env.begin(write=True) as txn:
                self.dbs = {name: self.env.open_db(name, txn=txn) for name in ALL_DBS}
        except (OSError, lmdb.Error) as e:
            self._close_env()
            if isinstance(e, OSError):
                space.check(e, root, "allocating the index's lock file")
                raise
            raise index_error(e, root) from None
        #: index accesses are counted here (read_txn, writers, scans; store/mapping.py)
        self.map_trimmer = MapTrimmer(os.path.join(root, "index", "data.mdb"))

    def hold_index_alone(self) -> bool:
        """Make this process's shared lock on ``index/users`` exclusive, without waiting:
        True when no other process has the repository open; other processes opening it
        then wait until :meth:`share_index` (store/compaction.py)."""
        if self._users_fd < 0:
            return False
        try:
            fcntl.flock(self._users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the conversion may have dropped the shared lock
            fcntl.flock(self._users_fd, fcntl.LOCK_SH)
            return False
        try:  # and LMDB's own mark of the processes that have the environment open
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            self.share_index()
            return False
        fcntl.lockf(self._lock_fd, fcntl.LOCK_SH, 1, 0)  # as LMDB holds it
        return True

    def share_index(self) -> None:
        """Back to the shared lock on ``index/users`` after :meth:`hold_index_alone`."""
        fcntl.flock(self._users_fd, fcntl.LOCK_SH)

    def reopen_index(self) -> None:
        """Close the index and open it again (its file was replaced: compaction),
        keeping the lock on ``index/users``."""
        self._close_env(keep_users=True)
        self._open_index()

    def compact_index(self, min_free: float | None = None):
        """Give the index's free pages back to the disk when this process alone has the
        repository open (store/compaction.py); returns a :class:`compaction.Compaction`."""
        from . import compaction

        return compaction.compact(self, min_free)

    def index_usage(self):
        """The index's file size and the bytes of it in use (store/compaction.py)."""
        from . import compaction

        return compaction.usage(self)

    def close(self) -> None:
        self._read_ahead.close()
        self.packs.close()
        self._close_env()

    def _close_env(self, keep_users: bool = False) -> None:
        """Close the index, then the lock file's descriptor kept by _allocate (in this
        order: closing the descriptor first would drop LMDB's lock while it is open),
        then (unless ``keep_users``) the lock on ``index/users``."""
        self.env.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._users_fd >= 0 and not keep_users:
            os.close(self._users_fd)
            self._users_fd = -1

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------
    def read_txn(self) -> _ReadTxn:
        """``with repo.read_txn() as txn``: a read transaction, a consistent view of the
        index; keep it short. Counted as an index access (:class:`MapTrimmer`), so
        long-running readers such as a mount do not accumulate mapped index pages
        either. An LMDB error inside it is raised as :func:`index_error`."""
        self.map_trimmer.touched()
        try:
            return _ReadTxn(self.env.begin(buffers=False), self.root)
        except lmdb.Error as e:
            raise index_error(e, self.root, "reading the index") from None

    def _decompress(self, stored: bytes, raw_len: int, zdict=None) -> bytes:
        """zstd-decompress with a pooled decompressor (one per concurrent caller), with
        dictionary ``zdict`` (id, dictionary) if given.

        A pool rather than thread-locals: FUSE calls arrive on libfuse's threads, which
        get a fresh Python thread state for every callback, so a thread-local would be
        rebuilt on each read."""
        dict_id = zdict[0] if zdict else 0
        pool = self._dctx_pools.get(dict_id)
        if pool is None:
            pool = self._dctx_pools.setdefault(dict_id, [])
        try:
            d = pool.pop()
        except IndexError:
            zstd = _zstandard()
            d = zstd.ZstdDecompressor(dict_data=zdict[1]) if zdict else zstd.ZstdDecompressor()
        try:
            return d.decompress(stored, max_output_size=raw_len)
        finally:
            pool.append(d)

    def zdict(self, txn, dict_id: int):
        """zstd dictionary ``dict_id`` (a ``zstandard.ZstdCompressionDict``, kept once
        read: dictionaries never change), or None if the index has none of that id."""
        d = self._zdicts.get(dict_id)
        if d is None:
            raw = txn.get(zdict_key(dict_id), db=self.dbs[DB_META])
            if raw is None:
                return None
            zstd = _zstandard()
            d = self._zdicts.setdefault(dict_id, zstd.ZstdCompressionDict(
                zstd.ZstdDecompressor().decompress(bytes(raw))))
        return d

    def current_zdict(self) -> tuple[int, object] | None:
        """(id, dictionary) that new small blocks are compressed with, if there is one
        (store/writer.py)."""
        with self.read_txn() as txn:
            v = txn.get(ZDICT_CURRENT, db=self.dbs[DB_META])
            if v is None:
                return None
            dict_id = U32.unpack(v)[0]
            d = self.zdict(txn, dict_id)
        return None if d is None else (dict_id, d)

    def block_location(self, txn, block_id: bytes) -> tuple[bytes, int, int, int, int] | None:
        loc = txn.get(block_id, db=self.dbs[DB_BLOCKS])
        return None if loc is None else BLOCK_LOC.unpack(loc)

    def read_block(self, txn, block_id: bytes) -> bytes:
        """The plaintext of a stored block (checksum verified).

        The last few blocks read are kept decompressed (:class:`BlockCache`): the kernel
        often asks for one block in several requests (a small first read, then
        readahead), and each would otherwise decompress the whole block again.
        """
        return self.cache.get_or_load(block_id, lambda: self._read_block(txn, block_id))

    def _read_block(self, txn, block_id: bytes) -> bytes:
        loc = self.block_location(txn, block_id)
        try:
            return self.read_located(txn, block_id, loc)
        except DamagedData as e:
            # a prune may have moved the chunk since this transaction began (its pack
            # rewritten, the old one deleted): read the copy the index names now
            with self.read_txn() as fresh:
                moved = self.block_location(fresh, block_id)
                if moved is not None and moved != loc:
                    return self.read_located(fresh, block_id, moved)
            self.note_damage(block_id, loc, str(e))
            raise DamagedData(
                f"{e}. It is recorded in {os.path.join(self.root, damage.NAME)}: the next "
                f"'anytime snapshot' that reads the same content (the live file, if it is "
                f"still intact) stores the block again, and every instant that uses it "
                f"reads right again; 'anytime check' lists the files and instants it "
                f"spoils") from None

    def read_block_verified(self, txn, block_id: bytes) -> bytes:
        """:meth:`read_block`, and the plaintext hashed against its id (a restore's
        check); a mismatch is recorded as damage and raises :class:`DamagedData`."""
        data = self.read_block(txn, block_id)
        if block_id in self._verified:  # a chunk read for two blocks is hashed once
            return data
        if block_id_of(self.block_key, data) != block_id:
            self.note_damage(block_id, self.block_location(txn, block_id),
                             "does not match its id")
            raise DamagedData(f"block {block_id.hex()[:16]} does not match its id")
        if len(self._verified) >= VERIFIED_KEPT:
            self._verified.clear()
        self._verified.add(block_id)
        return data

    def read_ref(self, txn, ref: bytes, lo: int = 0, hi: int | None = None,
                 verified: bool = False) -> list:
        """Bytes [lo, hi) of the block that block reference ``ref`` names (all of it
        by default), as a list of pieces (bytes or memoryviews of cached chunks: the
        caller joins them once, so a block made of slices is copied once, not twice).
        Slices of ``HOLE_ID`` read as zeros; a whole-block ``HOLE_ID`` is the caller's
        (it knows the block's length). ``verified``: each chunk is hashed against its
        id (:meth:`read_block_verified`)."""
        read = self.read_block_verified if verified else self.read_block
        if len(ref) == BLOCK_ID_LEN:
            data = read(txn, bytes(ref))
            end = len(data) if hi is None else min(hi, len(data))
            return [data] if (lo, end) == (0, len(data)) else [memoryview(data)[lo:end]]
        pieces = []
        pos = 0  # where the current slice starts in the block
        for cid, off, n in decode_ref(ref):
            a = max(lo, pos)
            b = pos + n if hi is None else min(hi, pos + n)
            if a < b:
                if cid == HOLE_ID:
                    pieces.append(bytes(b - a))
                else:
                    data = read(txn, cid)
                    if off + n > len(data):
                        self.note_damage(cid, self.block_location(txn, cid),
                                         "shorter than a slice that names it")
                        raise DamagedData(f"chunk {cid.hex()[:16]} is shorter than a block "
                                          f"reference says")
                    pieces.append(memoryview(data)[off + a - pos:off + b - pos])
            pos += n
        return pieces

    def read_ahead(self, refs) -> None:
        """Load the chunks of block references ``refs`` into the cache in a worker
        thread, for reads that will want them soon (store/readahead.py); returns at
        once. ``HOLE_ID`` is the caller's to leave out."""
        self._read_ahead.want(refs)

    def will_read_ref(self, txn, ref: bytes) -> None:
        """Tell the pack store which stored bytes the chunks of block reference ``ref``
        not in the cache are (:meth:`PackStore.will_read`, a hint)."""
        for cid in ref_chunk_ids(ref):
            if self.cache.get(cid) is None:
                loc = self.block_location(txn, cid)
                if loc is not None:
                    self.pack_store.will_read(loc[0], loc[1], RECORD_HEADER.size + loc[2])

    def load_ref(self, txn, ref: bytes) -> None:
        """Load the chunks of block reference ``ref`` into the cache, but none another
        thread is loading (it will have it; read-ahead moves on to the next)."""
        for cid in ref_chunk_ids(ref):
            self.cache.get_or_load(cid, lambda cid=cid: self._read_block(txn, cid), wait=False)

    def file_refs(self, f, block_size: int) -> list[bytes]:
        """The block references a snapshot into this repository would record for the
        content of open binary file ``f`` (nothing is stored): equal to a stored
        version's references exactly when the content is the same."""
        key = self.block_key
        return file_refs(f, block_size, self.chunker, lambda d: block_id_of(key, d))

    def note_damage(self, block_id: bytes, loc, reason: str) -> None:
        """Append a damage record (store/damage.py) for a block found damaged at ``loc``
        (its ``BLOCK_LOC`` fields, or None when it is not indexed); once per process.
        Safe for readers: an O_APPEND write, no lock, no LMDB write."""
        pack_id, offset = (loc[0], loc[1]) if loc else (damage.NO_PACK, 0)
        key = (block_id, pack_id, offset)
        if key in self._noted:
            return
        self._noted.add(key)
        damage.record(self.root, block_id, pack_id, offset, reason)

    def is_damaged(self, block_id: bytes, loc: bytes) -> bool:
        """True if a damage record in force names block ``block_id`` at index value
        ``loc``: the writer stores the block again instead of deduplicating."""
        wheres = self.damage.get(block_id)
        return bool(wheres) and BLOCK_LOC.unpack(loc)[:2] in wheres

    def read_located(self, txn, block_id: bytes, loc) -> bytes:
        """The plaintext of the record at ``loc`` (:meth:`block_location`'s tuple; None:
        not indexed), checked against its header, checksum and length."""
        if loc is None:
            raise DamagedData(f"block {block_id.hex()[:16]} is referenced but not in the "
                              f"index")
        pack_id, offset, stored_len, raw_len, _codec = loc
        codec, raw_len, stored = self.packs.read_record(pack_id, offset, stored_len, block_id)
        if codec in (CODEC_ZSTD, CODEC_ZSTD_DICT):
            try:
                data = self._decompress(stored, raw_len, self._frame_zdict(txn, codec, stored,
                                                                        block_id))
            except _zstandard().ZstdError as e:
                raise DamagedData(f"block {block_id.hex()[:16]} does not decompress: {e}") from None
        else:
            data = stored
        if len(data) != raw_len:
            raise DamagedData(f"block {block_id.hex()[:16]} has the wrong length")
        return data

    def _frame_zdict(self, txn, codec: int, stored: bytes, block_id: bytes):
        """(id, dictionary) named by the header of a ``CODEC_ZSTD_DICT`` frame."""
        if codec != CODEC_ZSTD_DICT:
            return None
        dict_id = _zstandard().get_frame_parameters(stored).dict_id
        d = self.zdict(txn, dict_id)
        if d is None:
            raise DamagedData(f"block {block_id.hex()[:16]} needs zstd dictionary {dict_id}, "
                              f"which the index does not hold")
        return dict_id, d

    def space_used(self) -> int:
        """Bytes the repository takes on its disk (allocated blocks of every file)."""
        total = 0
        for top, _dirs, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(top, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def space_kept(self) -> int:
        """:meth:`space_used` less the index's free pages, which LMDB reuses for later
        writes and a compaction gives back (store/compaction.py): what the capacity cap
        (``--max-size``) counts."""
        top, used = self.index_usage()
        return self.space_used() - max(0, top - used)

    def committed_packs(self, txn) -> set[bytes]:
        return {bytes(k) for k in txn.cursor(db=self.dbs[DB_PACKS]).iternext(values=False)}

    # --- writing ---------------------------------------------------------------------
    @contextmanager
    def write_txn(self, what: str = "writing the index"):
        """An LMDB write transaction, committed on leaving; an LMDB error raises
        :func:`index_error`: :class:`RepositoryFull` for lack of space (LMDB's map
        growing into a full disk), naming ``what`` failed."""
        try:
            with self.env.begin(write=True) as txn:
                yield txn
        except lmdb.Error as e:
            raise index_error(e, self.root, what) from None

    @contextmanager
    def writer_lock(self, wait: bool = False):
        """Hold the repository's writer lock; reclaims uncommitted packs on entry.

        Re-entrant for the thread that holds it: a nested ``writer_lock`` (the store's
        own writes that need the lock take it themselves, such as labels) only goes on.
        Without ``wait``, another process holding it raises :class:`RepositoryLocked`."""
        if self._writing:
            yield
            return
        with hold_writer_lock(self.root, wait):
            try:
                self.damage = damage.load(self.root)
                self.cut_open_packs()
                self.roll_back_unfinished()
                self.reclaim_leftover_packs()
                import shutil

                shutil.rmtree(os.path.join(self.root, "tmp"), ignore_errors=True)
                self._writing = True
                yield
            finally:
                self._writing = False

    def roll_back_unfinished(self) -> list[tuple[int, int]]:
        """Delete the staged records of commits that never reached their commit point
        (store/writer.py); returns the (volume id, instant) of each.

        A staged commit leaves a ``pending`` marker. Its path and block versions are the
        volume's records after the horizon; its inode mappings that matter are those
        naming a file id the volume never committed (mappings of committed file ids are
        hints checked against mtime and size, and stay harmless). Costs one pass over
        the volume's records; deletions go in transactions of bounded size. Only safe
        under the writer lock."""
        with self.read_txn() as txn:
            cur = txn.cursor(db=self.dbs[DB_META])
            pending = []
            if cur.set_range(PENDING_PREFIX):
                for key, val in cur:
                    if not key.startswith(PENDING_PREFIX):
                        break
                    pending.append((split_pending_key(key), U64.unpack(val)[0]))
            vols = {vid: txn.get(vol_key(vid), db=self.dbs[DB_VOLUMES]) for vid, _ in pending}
        for vid, _instant in pending:
            if vols[vid] is not None:
                vol = Volume.decode(vols[vid])
                self._roll_back_volume(vid, vol.horizon, vol.next_file_id)
            with self.write_txn() as txn:
                txn.delete(pending_key(vid), db=self.dbs[DB_META])
        return pending

    def _roll_back_volume(self, vid: int, horizon: int, next_file_id: int) -> None:
        prefix = vol_key(vid)

        def staged(key, _val) -> bool:
            return U64.unpack(key[-8:])[0] > horizon

        self._delete_matching(DB_ENTRIES, prefix, staged)
        self._delete_matching(DB_BLOCKVERS, prefix, staged)
        self._delete_matching(DB_INODES, prefix,
                              lambda _key, val: INODE_VALUE.unpack(val)[0] >= next_file_id)

    def _delete_matching(self, name: bytes, prefix: bytes, doomed, per_txn: int = 20_000
                         ) -> int:
        """Delete the records of database ``name`` under ``prefix`` for which
        ``doomed(key, value)`` holds, at most ``per_txn`` per write transaction."""
        db = self.dbs[name]
        removed, start = 0, prefix
        while start is not None:
            with self.write_txn() as txn:
                cur = txn.cursor(db=db)
                cur.set_range(start)
                start, n = None, 0
                key = cur.key()
                while key.startswith(prefix):  # b"" when past the end
                    if doomed(key, cur.value()):
                        cur.delete()  # and on to the next record
                        n += 1
                        if n >= per_txn:
                            start = cur.key() or None
                            break
                    elif not cur.next():
                        break
                    key = cur.key()
                removed += n
        return removed

    def cut_open_packs(self) -> list[bytes]:
        """Cut each pack a writer session left open (its writer died) back to the size
        the index lists, and unmark it; returns their ids (store/session.py). Only safe
        under the writer lock."""
        meta, packs = self.dbs[DB_META], self.dbs[DB_PACKS]
        with self.read_txn() as txn:
            cur = txn.cursor(db=meta)
            marked = []
            if cur.set_range(OPEN_PACK_PREFIX):
                for key in cur.iternext(values=False):
                    if not key.startswith(OPEN_PACK_PREFIX):
                        break
                    pack_id = bytes(key[len(OPEN_PACK_PREFIX):])
                    info = txn.get(pack_id, db=packs)
                    marked.append((pack_id, PACK_INFO.unpack(info)[0] if info else None))
        for pack_id, size in marked:
            try:
                if size is not None and self.pack_store.size(pack_id) > size:
                    self.pack_store.truncate(pack_id, size)
            except PackMissing:
                pass  # check reports a listed pack that is missing
        if marked:
            with self.write_txn() as txn:
                for pack_id, _ in marked:
                    txn.delete(open_pack_key(pack_id), db=meta)
        return [p for p, _ in marked]

    def reclaim_leftover_packs(self) -> list[bytes]:
        """Delete the packs no commit references (a writer died before committing);
        returns their ids.

        Only safe under the writer lock: no other writer has packs in flight.
        """
        with self.read_txn() as txn:
            known = self.committed_packs(txn)
        removed = [p for p in self.pack_store.list() if p not in known]
        if removed and not known:  # an index made anew beside old packs: keep them all
            raise index_missing(self.root)
        for pack_id in removed:
            self.pack_store.delete(pack_id)
        return removed
