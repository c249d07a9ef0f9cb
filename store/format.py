"""Byte layouts of everything the repository writes: the constants named in docs/format.md.

Nothing here does I/O; :func:`block_id` defines how a block is named. Keys sort in the
order lookups need (big-endian integers), values are little-endian structs. Names are bytes everywhere: a path inside a volume
is the bytes of its components joined by ``b"/"``, without a leading slash; the
volume root is ``b""``.
"""

from __future__ import annotations

import stat as st_
import struct

try:  # the C module itself: hashlib would also load OpenSSL, at start-up of every command
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover - an interpreter without it
    from hashlib import blake2b as _blake2b

FORMAT_VERSION = 2
#: A writer of this repository may stage a commit (store/writer.py): readers must stop at
#: a volume's horizon, and writers must roll back a ``pending`` commit first. Listed in
#: new repositories, and added to older ones by their first staged commit, so that
#: programs that do neither refuse the repository.
FEATURE_STAGED = "staged-commits"
#: Small blocks may be compressed with a zstd dictionary kept in the index
#: (``CODEC_ZSTD_DICT``): readers must know the codec. Listed in new repositories, and
#: added to older ones when their first dictionary is stored.
FEATURE_ZDICT = "zstd-dictionaries"
#: A writer session may leave a pack open across commits (store/session.py): a listed
#: pack may be longer than its ``PACK_INFO`` says while it is marked open, and a writer
#: must cut marked packs back first. Added by the first session that keeps a pack open.
FEATURE_OPEN_PACKS = "open-packs"
#: Feature flags this program understands; a repository listing another is refused.
KNOWN_FEATURES: frozenset[str] = frozenset({FEATURE_STAGED, FEATURE_ZDICT,
                                            FEATURE_OPEN_PACKS})

# --- packs -------------------------------------------------------------------------
PACK_MAGIC = b"ANYTPACK"
#: magic(8) | format version u32 | pack id (16 bytes) | reserved u32
PACK_HEADER = struct.Struct("<8sI16sI")
RECORD_MAGIC = b"ATRC"
#: magic(4) | block id(32) | codec u8 | 3 pad | raw length u32 | stored length u32 | xxh3_64 of stored bytes
RECORD_HEADER = struct.Struct("<4s32sB3xIIQ")
#: A history record (store/history.py) has the same header with this magic: it holds
#: index records of a commit, a commit, a label change or a dictionary, so that the
#: index can be rebuilt from the packs alone. A chunk is never read from one.
HISTORY_MAGIC = b"ATHS"
#: The 32-byte id field of a history record: kind u8 | 3 pad | volume id u32 | instant
#: u64 | part u32 | commit nonce (8 random bytes per commit, zeros for other kinds) |
#: 4 pad (big-endian). ``part``: the batch's number within its commit; for a
#: dictionary, its id. The nonce keeps apart a commit that never reached its commit
#: point and a later one that happens to get the same instant.
HISTORY_ID = struct.Struct(">B3xIQI8s4x")
NO_NONCE = bytes(8)
HIST_BATCH = 1
HIST_COMMIT = 2
HIST_LABEL = 3
HIST_ZDICT = 4
#: A setting of a volume changed outside a commit: its retention policy, a hold added or
#: released (store/policies.py).
HIST_SETTING = 5
#: a prune's tombstone: the commits it dropped (store/prune.py)
HIST_PRUNE = 6
#: An index record in a batch: database code u8 | key length u16 | value length u32,
#: then the key and the value (little-endian).
HIST_ITEM = struct.Struct("<BHI")


def encode_history_items(items) -> bytes:
    """The payload of a batch: ``items`` are (database code, key, value)."""
    out = []
    for code, key, val in items:
        out += (HIST_ITEM.pack(code, len(key), len(val)), key, val)
    return b"".join(out)


def decode_history_items(buf: bytes) -> list[tuple[int, bytes, bytes]]:
    """The (database code, key, value) items of a batch payload; ValueError if torn."""
    out, off, n = [], 0, len(buf)
    while off < n:
        if off + HIST_ITEM.size > n:
            raise ValueError("a history batch ends inside an item header")
        code, klen, vlen = HIST_ITEM.unpack_from(buf, off)
        off += HIST_ITEM.size
        if off + klen + vlen > n:
            raise ValueError("a history batch ends inside an item")
        out.append((code, bytes(buf[off:off + klen]), bytes(buf[off + klen:off + klen + vlen])))
        off += klen + vlen
    return out


CODEC_RAW = 0
CODEC_ZSTD = 1
#: One zstd frame compressed with the dictionary whose id its frame header names (the
#: dictionary is in ``meta`` under :func:`zdict_key`).
CODEC_ZSTD_DICT = 2
#: Pack files are closed once they pass this size (bytes).
DEFAULT_PACK_TARGET = 64 * 1024 * 1024

# --- block ids ---------------------------------------------------------------------
BLOCK_ID_LEN = 32
#: The id recorded for an all-zero block (a hole). No data is stored for it.
HOLE_ID = bytes(BLOCK_ID_LEN)
#: Default block size of a directory-tree volume (docs/performance.md "Block size").
DEFAULT_BLOCK_SIZE = 1024 * 1024
#: Allowed block sizes: powers of two from MIN_BLOCK_SIZE to
#: MAX_BLOCK_SIZE (is_zero compares against a buffer of that size, and a record's raw
#: length must fit in u32 with room to spare).
MIN_BLOCK_SIZE = 1024
MAX_BLOCK_SIZE = 16 * 1024 * 1024
_ZERO = bytes(MAX_BLOCK_SIZE)


def block_size_problem(n) -> str | None:
    """Why ``n`` cannot be a block size (None: it can)."""
    if not isinstance(n, int) or isinstance(n, bool):
        return f"{n!r} is not a whole number of bytes"
    if not MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE or n & (n - 1):
        return (f"{n} is not a power of two from {MIN_BLOCK_SIZE} (1 KiB) to "
                f"{MAX_BLOCK_SIZE} (16 MiB) bytes")
    return None


def is_zero(data) -> bool:
    """True for an all-zero block (a hole) or view, compared in C (memcmp, without
    copying the zeros first: ``data == _ZERO[:n]`` would)."""
    n = len(data)
    return _ZERO.startswith(data) if n <= len(_ZERO) else data.count(0) == n


def block_id(key: bytes, data: bytes) -> bytes:
    """The id that names ``data`` in a repository whose block key is ``key``."""
    return HOLE_ID if is_zero(data) else (_blake3 or _import_blake3())(data, key=key).digest()


#: ``blake3.blake3``, imported by the first :func:`block_id`: commands that hash nothing
#: (``ls``, ``log``, ``--help``) start without loading it, and a hashing loop pays one
#: global lookup per block, as it did for the module.
_blake3 = None


def _import_blake3():
    global _blake3
    from blake3 import blake3

    _blake3 = blake3
    return blake3


# --- chunks and block references ---------------------------------------------------
#: Content-defined chunking of file content (store/chunker.py): FastCDC 2020, with
#: normalized chunking level CHUNK_NC and the gear table of the reference code XORed
#: with the repository's chunker seed. A chunk is at least CHUNK_MIN bytes (except a
#: file's last), at most CHUNK_MAX; CHUNK_AVG (a power of two) picks the cut masks and
#: where the stricter one ends; chunks come out about 700 KB on average
#: (docs/performance.md "Chunk sizes").
CHUNK_MIN = 128 * 1024
CHUNK_AVG = 512 * 1024
CHUNK_MAX = 2 * 1024 * 1024
CHUNK_NC = 1
#: A slice of a block reference: chunk id (32) | offset in the chunk u32 | length u32.
SLICE = struct.Struct("<32sII")


def encode_ref(slices: list[tuple[bytes, int, int]], chunk_len: int | None = None) -> bytes:
    """The block reference (a ``blockvers`` value) of a block made of ``slices``, each
    (chunk id, offset in the chunk, length), in order. A block that is exactly one
    whole chunk (``chunk_len``: that chunk's length) is just the chunk's id (32 bytes);
    ``HOLE_ID`` alone is a hole."""
    if len(slices) == 1:
        cid, off, n = slices[0]
        if off == 0 and n == chunk_len:
            return cid
    return b"".join(SLICE.pack(*sl) for sl in slices)


def decode_ref(ref: bytes) -> list[tuple[bytes, int, int | None]]:
    """The slices (chunk id, offset, length) of a block reference; a whole-chunk (or
    hole) reference gives one slice of length None: the whole chunk (or block)."""
    n = len(ref)
    if n == BLOCK_ID_LEN:
        return [(bytes(ref), 0, None)]
    if n == 0 or n % SLICE.size:
        raise ValueError(f"a block reference of {n} bytes is neither {BLOCK_ID_LEN} nor a "
                         f"multiple of {SLICE.size}")
    return [SLICE.unpack_from(ref, i) for i in range(0, n, SLICE.size)]


def ref_chunk_ids(ref: bytes) -> list[bytes]:
    """The ids of the chunks a block reference reads (holes left out)."""
    if len(ref) == BLOCK_ID_LEN:
        return [] if ref == HOLE_ID else [bytes(ref)]
    return [cid for cid, _, _ in decode_ref(ref) if cid != HOLE_ID]


ZSTD_LEVEL = 3
#: Blocks of at least ZSTD_LARGE_MIN bytes are compressed with these parameters instead
#: of ZSTD_LEVEL: level 3's "dfast" strategy with larger tables and shorter matches,
#: which on 1 MiB blocks of binaries gives 1.4% smaller output for about 15% more time
#: (docs/performance.md "Compression").
ZSTD_LARGE_MIN = 512 * 1024
#: Blocks of at most ZDICT_MAX_BLOCK bytes are compressed with the repository's zstd
#: dictionary once it has one (``CODEC_ZSTD_DICT``): a frame of a few KB has too little
#: context of its own (docs/format.md "Small blocks", docs/performance.md).
ZDICT_MAX_BLOCK = 64 * 1024
#: The dictionary is trained on the first small blocks a repository stores, until
#: ZDICT_SAMPLE_BLOCKS of them or ZDICT_SAMPLE_BYTES, whichever comes first; at least
#: ZDICT_MIN_SAMPLE_BYTES are needed (fewer train nothing).
ZDICT_SAMPLE_BLOCKS = 4000
ZDICT_SAMPLE_BYTES = 10 << 20
ZDICT_MIN_SAMPLE_BYTES = 1 << 20
#: Dictionary size (bytes) and fastCover training parameters (fixed: the parameter
#: search would cost 10x the time for 1% less).
ZDICT_SIZE = 512 * 1024
ZDICT_TRAIN = {"k": 1024, "d": 8, "accel": 4}
#: The dictionary is kept zstd-compressed (this level, content size in the frame). Level
#: 12 compresses a 512 KiB dictionary in a tenth of level 19's time (0.03 s instead of
#: 0.29 s here, while the capture that trained it waits) for 7% more bytes (13 KB).
ZDICT_STORE_LEVEL = 12
ZDICT_PREFIX = b"zdict/"
#: ``meta`` key of the dictionary used for new small blocks (its id, u32 BE).
ZDICT_CURRENT = b"zdict"
ZSTD_LARGE_PARAMS = {"window_log": 20, "hash_log": 19, "chain_log": 19, "search_log": 1,
                     "min_match": 4, "target_length": 0, "strategy": 2}
#: Small blocks are compressed with the dictionary with these parameters instead of
#: ZSTD_LEVEL: the "lazy" strategy of level 6 with one search attempt per position
#: (level 6 makes 8) and tables of 2^18 entries (level 6: 2^19), which stores the
#: benchmark's 50,000 small files 5% smaller than level 3 does with the same dictionary
#: for about 2.3 times its compression time (docs/performance.md "Small blocks").
ZDICT_PARAMS = {"window_log": 21, "hash_log": 18, "chain_log": 17, "search_log": 1,
                "min_match": 5, "target_length": 4, "strategy": 4}

# --- LMDB databases ----------------------------------------------------------------
DB_META = b"meta"
DB_BLOCKS = b"blocks"
DB_PACKS = b"packs"
DB_VOLUMES = b"volumes"
DB_VOLNAMES = b"volnames"
DB_COMMITS = b"commits"
DB_ENTRIES = b"entries"
DB_BLOCKVERS = b"blockvers"
DB_LABELS = b"labels"
DB_INODES = b"inodes"
DB_DIRS = b"dirs"
#: The databases a history batch carries records of, by the code its items use.
HIST_ENTRIES, HIST_BLOCKVERS, HIST_INODES, HIST_DIRS = 1, 2, 3, 4
HIST_DBS = {HIST_ENTRIES: DB_ENTRIES, HIST_BLOCKVERS: DB_BLOCKVERS, HIST_INODES: DB_INODES,
            HIST_DIRS: DB_DIRS}
ALL_DBS = (DB_META, DB_BLOCKS, DB_PACKS, DB_VOLUMES, DB_VOLNAMES, DB_COMMITS, DB_ENTRIES,
           DB_BLOCKVERS, DB_LABELS, DB_INODES, DB_DIRS)

#: Bytes of a pack id (random).
PACK_ID_LEN = 16
#: blocks value: pack id(16) | offset u64 | stored length u32 | raw length u32 | codec u8
BLOCK_LOC = struct.Struct("<16sQIIB")
#: packs value: size u64 | record count u32 | commit instant u64
PACK_INFO = struct.Struct("<QIQ")

#: inodes value: file id u64 | mtime i64 | size u64 (big-endian) of the version last recorded
INODE_VALUE = struct.Struct(">QqQ")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
MAX_INSTANT = 2**64 - 1
SEP = b"\x00"


def vol_key(vol: int) -> bytes:
    """A volume's key in ``volumes``, and the prefix of all its records in ``entries``,
    ``blockvers``, ``commits``, ``labels`` and ``inodes``."""
    return U32.pack(vol)


def split_vol_key(key: bytes) -> int:
    """The volume id of a :func:`vol_key`."""
    return U32.unpack(key)[0]


def commit_key(vol: int, instant: int) -> bytes:
    return U32.pack(vol) + U64.pack(instant)


_COMMIT_KEY = struct.Struct(">IQ")


def split_commit_key(key: bytes) -> tuple[int, int]:
    """(volume id, instant) of a ``commits`` key (inverse of :func:`commit_key`)."""
    return _COMMIT_KEY.unpack(key)


#: LMDB's largest key (bytes).
MAX_KEY = 511
#: Bytes of a directory's path hash (:class:`DirHasher`) in ``entries`` and ``dirs`` keys.
DIR_HASH_LEN = 16
#: BLAKE2b personalisation of directory path hashes (so they are never the hash of
#: anything else made with the block key).
DIR_HASH_PERSON = b"anytime dirpath"
#: The longest name an entry key (volume u32, directory hash, name, 00, instant u64) can
#: hold: 482 bytes, above any filesystem's NAME_MAX (255). A path's length is bounded
#: only by the filesystem (PATH_MAX, 4096).
MAX_NAME = MAX_KEY - 4 - DIR_HASH_LEN - 1 - 8


class DirHasher:
    """The hash that names a directory inside index keys: BLAKE2b of its path inside the
    volume, 16 bytes, keyed with the repository's block key and personalised with
    ``DIR_HASH_PERSON``. Keyed, so nobody without the key can make two paths collide;
    a collision by chance (two of 2**64 directories) is caught when the second
    directory's ``dirs`` record is written (store/writer.py). Thread-safe.

    Remembers its last answer: the entries of one directory are hashed in a row."""

    __slots__ = ("_base", "_last")

    def __init__(self, key: bytes):
        self._base = _blake2b(digest_size=DIR_HASH_LEN, key=key, person=DIR_HASH_PERSON)
        self._last = (None, b"")  # (path, hash), replaced whole: safe across threads

    def __call__(self, path: bytes) -> bytes:
        last = self._last
        if last[0] == path:
            return last[1]
        h = self._base.copy()
        h.update(path)
        digest = h.digest()
        self._last = (path, digest)
        return digest


def dir_key(vol: int, dir_hash: bytes) -> bytes:
    """A directory's key in ``dirs`` (value: its path), and the key prefix in ``entries``
    of every version of every entry in it; ``dir_hash`` is its :class:`DirHasher` hash."""
    return U32.pack(vol) + dir_hash


def split_dir_key(key: bytes) -> tuple[int, bytes]:
    """(volume id, directory hash) of a :func:`dir_key`."""
    return U32.unpack_from(key)[0], bytes(key[4:4 + DIR_HASH_LEN])


def entry_prefix(vol: int, dir_hash: bytes, name: bytes) -> bytes:
    """Key prefix of every version of entry ``name`` of the directory whose hash is
    ``dir_hash`` (the volume root: name ``b""`` in the directory ``b""``)."""
    return U32.pack(vol) + dir_hash + name + SEP


def entry_key(vol: int, dir_hash: bytes, name: bytes, instant: int) -> bytes:
    return entry_prefix(vol, dir_hash, name) + U64.pack(instant)


def split_entry_key(key: bytes) -> tuple[int, bytes, bytes, int]:
    """(volume id, directory hash, name, instant) of an ``entries`` key (inverse of
    :func:`entry_key`; the directory's path is its ``dirs`` record)."""
    key = bytes(key)
    return (U32.unpack_from(key)[0], key[4:4 + DIR_HASH_LEN], key[4 + DIR_HASH_LEN:-9],
            U64.unpack_from(key, len(key) - 8)[0])


def blockver_prefix(vol: int, file_id: int, block_no: int) -> bytes:
    return _BLOCKVER_PREFIX.pack(vol, file_id, block_no)


_BLOCKVER_PREFIX = struct.Struct(">IQQ")


def blockver_key(vol: int, file_id: int, block_no: int, instant: int) -> bytes:
    return blockver_prefix(vol, file_id, block_no) + U64.pack(instant)


_BLOCKVER_KEY = struct.Struct(">IQQQ")


def split_blockver_key(key: bytes) -> tuple[int, int, int, int]:
    """(volume id, file id, block number, instant) of a ``blockvers`` key."""
    return _BLOCKVER_KEY.unpack(key)


def label_key(vol: int, name: bytes) -> bytes:
    return U32.pack(vol) + name


def split_label_key(key: bytes) -> tuple[int, bytes]:
    """(volume id, label name) of a ``labels`` key (inverse of :func:`label_key`)."""
    return U32.unpack_from(key)[0], bytes(key[4:])


#: ``meta`` key of a commit whose records are being staged: ``PENDING_PREFIX`` + volume
#: id u32 BE -> the commit's instant u64 BE. Present only between a large commit's first
#: staged transaction and its commit point (see store/writer.py).
PENDING_PREFIX = b"pending/"
#: ``meta`` key of a volume's retention policy: ``POLICY_PREFIX`` + volume id u32 BE.
POLICY_PREFIX = b"policy/"
#: ``meta`` key of a hold: ``HOLD_PREFIX`` + volume id u32 BE + hold id (ASCII).
HOLD_PREFIX = b"hold/"


#: ``meta`` key of a pack left open across commits by a writer session
#: (store/session.py): ``OPEN_PACK_PREFIX`` + pack id -> b"". Present from the commit
#: that first lists the pack's flushed prefix until the one that lists it sealed; the
#: next writer cuts a pack so marked back to its ``PACK_INFO`` size (its writer died,
#: and bytes past that belong to no commit).
OPEN_PACK_PREFIX = b"openpack/"


def open_pack_key(pack_id: bytes) -> bytes:
    return OPEN_PACK_PREFIX + pack_id


def zdict_key(dict_id: int) -> bytes:
    """``meta`` key of zstd dictionary ``dict_id`` (the dictionary's bytes)."""
    return ZDICT_PREFIX + U32.pack(dict_id)


def split_zdict_key(key: bytes) -> int:
    """The dictionary id of a :func:`zdict_key`."""
    return U32.unpack(key[len(ZDICT_PREFIX):])[0]


def pending_key(vol: int) -> bytes:
    return PENDING_PREFIX + vol_key(vol)


def split_pending_key(key: bytes) -> int:
    """The volume id of a :func:`pending_key`."""
    return U32.unpack(key[len(PENDING_PREFIX):])[0]


def inode_key(vol: int, dev: int, ino: int) -> bytes:
    """``inodes`` key of source inode (``dev``, ``ino``); ``dev`` is kept modulo 2**64
    (``st_dev`` may be negative)."""
    return _INODE_KEY.pack(vol, dev & (2**64 - 1), ino)


_INODE_KEY = struct.Struct(">IQQ")


def split_inode_key(key: bytes) -> tuple[int, int, int]:
    """(volume id, source device modulo 2**64, source inode) of an ``inodes`` key."""
    return _INODE_KEY.unpack(key)


def split_path(path: bytes) -> tuple[bytes, bytes]:
    """``b"a/b/c"`` -> ``(b"a/b", b"c")``; the root ``b""`` -> ``(b"", b"")``."""
    i = path.rfind(b"/")
    if i < 0:
        return b"", path
    return path[:i], path[i + 1:]


def join_path(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


# --- entries (path versions) -------------------------------------------------------
KIND_DELETED = 0
KIND_FILE = 1
KIND_DIR = 2
KIND_SYMLINK = 3
KIND_FIFO = 4
KIND_CHR = 5
KIND_BLK = 6
KIND_SOCK = 7
KIND_NAMES = {KIND_DELETED: "deleted", KIND_FILE: "file", KIND_DIR: "dir",
              KIND_SYMLINK: "symlink", KIND_FIFO: "fifo", KIND_CHR: "chardev",
              KIND_BLK: "blockdev", KIND_SOCK: "socket"}

FLAG_UNSTABLE = 1  # the file kept changing while it was read; content is a best effort
#: The file had no hole when this version was read (st_blocks is its size in 512-byte
#: units, no block lookup needed). Absent: unknown (not read with this version, or old).
FLAG_DENSE = 2
#: The file could not be read (EACCES, EIO, ...) when this version was captured: its
#: metadata is current, its content unknown. Readers refuse to read it (no earlier
#: content may pass for current); its file id has no blocks of this version.
FLAG_UNREADABLE = 4

#: kind u8 | flags u8 | 2 pad | mode u32 | uid u32 | gid u32 | nlink u32 | size u64 |
#: atime i64 | mtime i64 | ctime i64 (ns) | file id u64 | rdev u64 | source dev u64 | source ino u64
ENTRY_FIXED = struct.Struct("<BB2xIIIIQqqqQQQQ")
_U32LE = struct.Struct("<I")
_U16LE = struct.Struct("<H")
_NO_TARGET_NO_XATTRS = _U32LE.pack(0) * 2  # the tail of an entry without either


class Record:
    """Equality and repr of a plain slotted class from its ``FIELDS`` (what a dataclass
    would give, without importing dataclasses at start-up)."""

    FIELDS: tuple[str, ...] = ()
    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, n) for n in self.FIELDS)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}("
                + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.FIELDS) + ")")


class Entry(Record):
    """One version of one path: its metadata, and for files the id of its content.

    ``file_id`` names the content (the volume's inode): hardlinked paths share it, and
    the blocks of a file are versioned under it. ``src_dev``/``src_ino`` are the
    identity of the source inode, kept for the scan's stat cache.

    Written out rather than as a dataclass: importing ``dataclasses`` (it imports
    ``inspect``) took a fifth of the start-up time of ``ls`` and ``cat``. Equality
    compares every field, as a dataclass's would; ``FIELDS`` lists them in order.
    """

    FIELDS = ("kind", "mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns",
              "ctime_ns", "file_id", "rdev", "src_dev", "src_ino", "flags", "target",
              "xattrs")
    __slots__ = FIELDS
    __hash__ = None  # mutable, compared by value

    def __init__(self, kind: int, mode: int = 0, uid: int = 0, gid: int = 0,
                 nlink: int = 1, size: int = 0, atime_ns: int = 0, mtime_ns: int = 0,
                 ctime_ns: int = 0, file_id: int = 0, rdev: int = 0, src_dev: int = 0,
                 src_ino: int = 0, flags: int = 0, target: bytes = b"",
                 xattrs: dict[bytes, bytes] | None = None):
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = nlink
        self.size = size
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.file_id = file_id
        self.rdev = rdev
        self.src_dev = src_dev
        self.src_ino = src_ino
        self.flags = flags
        self.target = target
        self.xattrs = {} if xattrs is None else xattrs

    def _values(self) -> tuple:  # spelled out: diff compares many entries
        return (self.kind, self.mode, self.uid, self.gid, self.nlink, self.size,
                self.atime_ns, self.mtime_ns, self.ctime_ns, self.file_id, self.rdev,
                self.src_dev, self.src_ino, self.flags, self.target, self.xattrs)

    def encode(self) -> bytes:
        fixed = ENTRY_FIXED.pack(self.kind, self.flags, self.mode, self.uid, self.gid,
                                 self.nlink, self.size, self.atime_ns, self.mtime_ns,
                                 self.ctime_ns, self.file_id, self.rdev,
                                 self.src_dev & (2**64 - 1), self.src_ino)
        if not self.target and not self.xattrs:  # most entries: one concatenation
            return fixed + _NO_TARGET_NO_XATTRS
        parts = [fixed, _U32LE.pack(len(self.target)), self.target,
                 _U32LE.pack(len(self.xattrs))]
        for k in sorted(self.xattrs):
            v = self.xattrs[k]
            parts += [_U16LE.pack(len(k)), k, _U32LE.pack(len(v)), v]
        return b"".join(parts)

    @classmethod
    def decode(cls, buf: bytes) -> Entry:
        (kind, flags, mode, uid, gid, nlink, size, at, mt, ct, fid, rdev, sdev,
         sino) = ENTRY_FIXED.unpack_from(buf, 0)
        pos = ENTRY_FIXED.size
        (tlen,) = _U32LE.unpack_from(buf, pos)
        pos += 4
        target = bytes(buf[pos:pos + tlen])
        pos += tlen
        (nx,) = _U32LE.unpack_from(buf, pos)
        pos += 4
        xattrs = {}
        for _ in range(nx):
            (kl,) = _U16LE.unpack_from(buf, pos)
            pos += 2
            k = bytes(buf[pos:pos + kl])
            pos += kl
            (vl,) = _U32LE.unpack_from(buf, pos)
            pos += 4
            xattrs[k] = bytes(buf[pos:pos + vl])
            pos += vl
        return cls(kind, mode, uid, gid, nlink, size, at, mt, ct, fid, rdev, sdev, sino,
                   flags, target, xattrs)

    @property
    def deleted(self) -> bool:
        return self.kind == KIND_DELETED

    @classmethod
    def from_stat(cls, s, kind: int | None = None) -> Entry:
        """The entry an ``os.lstat`` result describes (no xattrs, target or file id)."""
        kind = kind_of(s.st_mode) if kind is None else kind
        return cls(kind=kind, mode=s.st_mode, uid=s.st_uid, gid=s.st_gid, nlink=s.st_nlink,
                   size=s.st_size if kind in (KIND_FILE, KIND_SYMLINK) else 0,
                   atime_ns=s.st_atime_ns, mtime_ns=s.st_mtime_ns, ctime_ns=s.st_ctime_ns,
                   rdev=s.st_rdev if kind in (KIND_CHR, KIND_BLK) else 0,
                   src_dev=s.st_dev, src_ino=s.st_ino)


_IFMT_KIND = {st_.S_IFREG: KIND_FILE, st_.S_IFDIR: KIND_DIR, st_.S_IFLNK: KIND_SYMLINK,
              st_.S_IFIFO: KIND_FIFO, st_.S_IFCHR: KIND_CHR, st_.S_IFBLK: KIND_BLK,
              st_.S_IFSOCK: KIND_SOCK}


#: The file-type bits of each entry kind (inverse of kind_of).
IFMT_OF_KIND = {kind: ifmt for ifmt, kind in _IFMT_KIND.items()}


def kind_of(mode: int) -> int:
    """The entry kind of an ``st_mode``."""
    return _IFMT_KIND.get(st_.S_IFMT(mode), KIND_FILE)


DELETED = Entry(KIND_DELETED)


def policy_key(vol: int) -> bytes:
    return POLICY_PREFIX + vol_key(vol)


def hold_key(vol: int, hold_id: str) -> bytes:
    return HOLD_PREFIX + vol_key(vol) + hold_id.encode()


def split_hold_key(key: bytes) -> tuple[int, str]:
    """(volume id, hold id) of a :func:`hold_key`."""
    n = len(HOLD_PREFIX)
    return U32.unpack(key[n:n + 4])[0], key[n + 4:].decode(errors="surrogateescape")
