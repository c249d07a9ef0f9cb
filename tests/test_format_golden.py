"""Golden bytes: fixed inputs through every encoder of the on-disk format, compared with
hex literals written down once (docs/format.md describes each layout).

A change to any encoder, struct, key layout, hash or JSON form fails here, whatever
the round-trip tests say: a repository written before the change would be misread
after it. A deliberate format change updates the literal, the Changes section of
docs/format.md and, if old repositories cannot be read, the format version.
"""

from __future__ import annotations

import os

import pytest

from anytime.store import damage
from anytime.store import format as f
from anytime.store.chunker import seed_of
from anytime.store.volumes import Volume

KEY = bytes(range(32))  # a block key
CID = bytes(range(0x40, 0x60))  # a chunk id
PACK = bytes(range(16))  # a pack id
T = 0x0102030405060708  # an instant
DH = f.DirHasher(KEY)


def _xxh3(data: bytes) -> int:
    from xxhash import xxh3_64_intdigest

    return xxh3_64_intdigest(data)


GOLDEN = {
    # entries (path versions): ENTRY_FIXED, target, xattrs sorted by name
    "entry of a file": (
        lambda: f.Entry(kind=f.KIND_FILE, mode=0o100644, uid=1000, gid=100, nlink=2,
                        size=5000, atime_ns=1, mtime_ns=-2, ctime_ns=3, file_id=7,
                        src_dev=-1, src_ino=99, flags=f.FLAG_DENSE,
                        xattrs={b"user.b": b"2", b"user.a": b"1"}).encode(),
        "01020000a4810000e8030000640000000200000088130000000000000100000000000000"
        "feffffffffffffff030000000000000007000000000000000000000000000000ffffffff"
        "ffffffff630000000000000000000000020000000600757365722e610100000031060075"
        "7365722e620100000032"),
    "entry of a symlink": (
        lambda: f.Entry(kind=f.KIND_SYMLINK, mode=0o120777, size=3, target=b"a/b").encode(),
        "03000000ffa10000000000000000000001000000030000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000003000000612f6200000000"),
    "a deletion": (
        lambda: f.DELETED.encode(),
        "0000000000000000000000000000000001000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000"),
    # block references
    "whole-chunk reference": (lambda: f.encode_ref([(CID, 0, 10)], 10),
                              "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"),
    "slices reference": (
        lambda: f.encode_ref([(CID, 5, 10), (f.HOLE_ID, 0, 3)], 100),
        "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f050000000a000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000003000000"),
    # names: chunk ids, directory hashes, the chunker seed, record checksums
    "chunk id": (lambda: f.block_id(KEY, b"hello"),
                 "23278c18c8c9fe0fbfadfb940af5f08d3fd1802bf919dd6d77ebd211a19fbe29"),
    "chunk id of zeros": (lambda: f.block_id(KEY, bytes(4096)), "00" * 32),
    "root directory hash": (lambda: DH(b""), "e13b7755a1f0349506ca7dbea99c2335"),
    "directory hash": (lambda: DH(b"a/b"), "d1d1c5590961f56cd6a2efda1e2221f0"),
    "chunker seed": (lambda: seed_of(KEY).to_bytes(8, "big"), "4bd326e699eb0bcd"),
    "record checksum": (lambda: _xxh3(b"hello").to_bytes(8, "big"), "9555e8555c62dcfd"),
    # index keys
    "volume key": (lambda: f.vol_key(1), "00000001"),
    "commit key": (lambda: f.commit_key(1, T), "000000010102030405060708"),
    "directory key": (lambda: f.dir_key(1, DH(b"a/b")), "00000001d1d1c5590961f56cd6a2efda1e2221f0"),
    "entry key": (lambda: f.entry_key(1, DH(b"a/b"), b"c.txt", T),
                  "00000001d1d1c5590961f56cd6a2efda1e2221f0632e747874000102030405060708"),
    "block version key": (lambda: f.blockver_key(1, 7, 2, T),
                          "00000001000000000000000700000000000000020102030405060708"),
    "label key": (lambda: f.label_key(1, b"before"), "000000016265666f7265"),
    "pending key": (lambda: f.pending_key(1), "70656e64696e672f00000001"),
    "dictionary key": (lambda: f.zdict_key(40000), "7a646963742f00009c40"),
    "inode key": (lambda: f.inode_key(1, -1, 99), "00000001ffffffffffffffff0000000000000063"),
    # index values
    "BLOCK_LOC": (lambda: f.BLOCK_LOC.pack(PACK, 32, 1000, 2000, f.CODEC_ZSTD),
                  "000102030405060708090a0b0c0d0e0f2000000000000000e8030000d007000001"),
    "PACK_INFO": (lambda: f.PACK_INFO.pack(300150, 2, T), "76940400000000000200000008070605"
                                                         "04030201"),
    "INODE_VALUE": (lambda: f.INODE_VALUE.pack(7, -2, 5000),
                    "0000000000000007fffffffffffffffe0000000000001388"),
    "label value": (lambda: f.U64.pack(T), "0102030405060708"),
    "volume record": (
        lambda: Volume(1, "src", "/srv/src", 1048576, 10, 20, 3).encode(),
        b'{"block_size": 1048576, "created_ns": 10, "horizon": 20, "id": 1, "kind": "tree", '
        b'"name": "src", "next_file_id": 3, "source": "/srv/src"}'.hex()),
    # packs
    "history record id": (
        lambda: f.HISTORY_ID.pack(f.HIST_COMMIT, 1, T, 0, bytes(range(8))),
        "0200000000000001010203040506070800000000000102030405060700000000"),
    "history batch items": (
        lambda: f.encode_history_items([(f.HIST_ENTRIES, b"key", b"value"),
                                        (f.HIST_DIRS, b"k2", b"")]),
        "010300050000006b657976616c7565040200000000006b32"),
    "pack header": (lambda: f.PACK_HEADER.pack(f.PACK_MAGIC, f.FORMAT_VERSION, PACK, 0),
                    "414e59545041434b02000000000102030405060708090a0b0c0d0e0f00000000"),
    "record header": (
        lambda: f.RECORD_HEADER.pack(f.RECORD_MAGIC, CID, f.CODEC_ZSTD, 5, 5, _xxh3(b"hello")),
        "41545243404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f0100000005"
        "00000005000000fddc625c55e85595"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_encoder_gives_the_golden_bytes(name):
    encode, want = GOLDEN[name]
    got = encode().hex()
    assert got == want, f"{name}: the format changed (docs/format.md, Changes): {got}"


def test_constants_of_the_format():
    """Values written in docs/format.md and stored in every repository."""
    assert (f.FORMAT_VERSION, f.PACK_MAGIC, f.RECORD_MAGIC, f.HISTORY_MAGIC) == (
        2, b"ANYTPACK", b"ATRC", b"ATHS")
    assert (f.HIST_BATCH, f.HIST_COMMIT, f.HIST_LABEL, f.HIST_ZDICT) == (1, 2, 3, 4)
    assert f.HIST_DBS == {1: b"entries", 2: b"blockvers", 3: b"inodes", 4: b"dirs"}
    assert (f.PACK_HEADER.size, f.RECORD_HEADER.size, f.ENTRY_FIXED.size) == (32, 56, 84)
    assert (f.BLOCK_LOC.size, f.PACK_INFO.size, f.INODE_VALUE.size, f.SLICE.size) == (
        33, 20, 24, 40)
    assert (f.CODEC_RAW, f.CODEC_ZSTD, f.CODEC_ZSTD_DICT) == (0, 1, 2)
    assert [f.KIND_NAMES[k] for k in range(8)] == [
        "deleted", "file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket"]
    assert (f.FLAG_UNSTABLE, f.FLAG_DENSE, f.FLAG_UNREADABLE) == (1, 2, 4)
    assert (f.CHUNK_MIN, f.CHUNK_AVG, f.CHUNK_MAX, f.CHUNK_NC) == (
        128 << 10, 512 << 10, 2 << 20, 1)
    assert (f.DIR_HASH_LEN, f.DIR_HASH_PERSON) == (16, b"anytime dirpath")
    assert f.ALL_DBS == (b"meta", b"blocks", b"packs", b"volumes", b"volnames", b"commits",
                         b"entries", b"blockvers", b"labels", b"inodes", b"dirs")
    assert (f.PENDING_PREFIX, f.ZDICT_PREFIX, f.ZDICT_CURRENT) == (
        b"pending/", b"zdict/", b"zdict")


def test_damage_record_line(tmp_path):
    damage.record(str(tmp_path), CID, PACK, 32, "fails its\nchecksum")
    assert (tmp_path / damage.NAME).read_bytes() == (
        b"\n404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f "
        b"000102030405060708090a0b0c0d0e0f 32 fails its checksum\n")
    assert os.stat(tmp_path / damage.NAME).st_mode & 0o777 == 0o600
