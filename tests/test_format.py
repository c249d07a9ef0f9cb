"""Unit tests of the on-disk format: entries, index keys, packs, the repository config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytime.store.errors import DamagedData, RepositoryFormatError, RepositoryNotFound
from anytime.store.format import (
    BLOCK_LOC,
    CODEC_RAW,
    CODEC_ZSTD,
    DELETED,
    DIR_HASH_LEN,
    FLAG_UNSTABLE,
    INODE_VALUE,
    KIND_FILE,
    KIND_SYMLINK,
    MAX_KEY,
    MAX_NAME,
    PACK_HEADER,
    PACK_INFO,
    RECORD_HEADER,
    DirHasher,
    Entry,
    blockver_key,
    commit_key,
    dir_key,
    entry_key,
    entry_prefix,
    inode_key,
    join_path,
    label_key,
    pending_key,
    split_blockver_key,
    split_commit_key,
    split_dir_key,
    split_entry_key,
    split_inode_key,
    split_label_key,
    split_path,
    split_pending_key,
    split_vol_key,
    split_zdict_key,
    vol_key,
    zdict_key,
)
from anytime.store.packs import PackReader, PackWriter, iter_records
from anytime.store.packstore import LocalDirPackStore
from anytime.store.repo import Repository

names = st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b and b"/" not in b)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
instants = st.integers(0, 2**64 - 1)


# --- entries --------------------------------------------------------------------------
@given(kind=st.integers(0, 7), flags=st.integers(0, 255), mode=u32, uid=u32, gid=u32,
       nlink=u32, size=u64, at=i64, mt=i64, ct=i64, fid=u64, rdev=u64, sdev=u64, sino=u64,
       target=st.binary(max_size=300),
       xattrs=st.dictionaries(st.binary(min_size=1, max_size=60), st.binary(max_size=500),
                              max_size=5))
def test_entry_round_trip(kind, flags, mode, uid, gid, nlink, size, at, mt, ct, fid, rdev,
                          sdev, sino, target, xattrs):
    e = Entry(kind, mode, uid, gid, nlink, size, at, mt, ct, fid, rdev, sdev, sino, flags,
              target, xattrs)
    assert Entry.decode(e.encode()) == e


def test_entry_keeps_non_utf8_bytes_exactly():
    e = Entry(KIND_SYMLINK, target=b"\xff\xfe/../\n-x \x80",
              xattrs={b"user.\xe9t\xe9": b"\x00\x01\xff", b"security.selinux": b"",
                      b"system.posix_acl_access": b"\x02\x00\x00\x00" * 7})
    d = Entry.decode(e.encode())
    assert d.target == e.target
    assert d.xattrs == e.xattrs


def test_entry_decode_accepts_memoryview():
    e = Entry(KIND_FILE, size=5, file_id=9, flags=FLAG_UNSTABLE, xattrs={b"user.a": b"b"})
    assert Entry.decode(memoryview(e.encode())) == e


def test_negative_source_device_survives():
    # st_dev can exceed 2**63 on some systems; it is stored modulo 2**64
    e = Entry(KIND_FILE, src_dev=-1)
    assert Entry.decode(e.encode()).src_dev == 2**64 - 1


def test_deleted_marker():
    assert DELETED.deleted
    assert Entry.decode(DELETED.encode()).deleted
    assert not Entry(KIND_FILE).deleted


# --- keys -----------------------------------------------------------------------------
#: a repository's directory hasher (any key: these are properties of the layout)
H = DirHasher(bytes(range(32)))
paths = st.lists(names, max_size=3).map(b"/".join)


@given(parent=paths, name=names, times=st.lists(instants, min_size=2, max_size=20, unique=True))
def test_versions_of_a_path_are_adjacent_and_time_sorted(parent, name, times):
    keys = sorted(entry_key(1, H(parent), name, t) for t in times)
    prefix = entry_prefix(1, H(parent), name)
    assert all(k.startswith(prefix) and len(k) == len(prefix) + 8 for k in keys)
    # key order is time order
    assert [int.from_bytes(k[-8:], "big") for k in keys] == sorted(times)


@given(parent=st.lists(names, max_size=2).map(b"/".join), name=names,
       suffix=st.binary(min_size=1, max_size=10).filter(lambda b: b"\x00" not in b),
       t1=instants, t2=instants, t3=instants)
def test_a_name_that_is_a_prefix_of_another_does_not_mix(parent, name, suffix, t1, t2, t3):
    """All versions of ``name`` sort together, never interleaved with ``name+suffix``."""
    longer = name + suffix
    a = [entry_key(1, H(parent), name, t) for t in (t1, t2)]
    b = entry_key(1, H(parent), longer, t3)
    assert (max(a) < b) or (min(a) > b)
    assert not b.startswith(entry_prefix(1, H(parent), name))
    # and both are in their directory, whose prefix is not shared with a sibling dir
    assert b.startswith(dir_key(1, H(parent))) and a[0].startswith(dir_key(1, H(parent)))


@given(parent=st.lists(names, min_size=1, max_size=3).map(b"/".join), name=names,
       other=names, t=instants)
def test_directory_prefix_excludes_other_directories(parent, name, other, t):
    child = entry_key(1, H(join_path(parent, other)), name, t)  # one level deeper
    sibling = entry_key(1, H(parent + b"x"), name, t)
    assert not child.startswith(dir_key(1, H(parent)))
    assert not sibling.startswith(dir_key(1, H(parent)))


@given(vol=u32, parent=paths, name=names, t=instants)
def test_entry_keys_read_back(vol, parent, name, t):
    assert split_entry_key(entry_key(vol, H(parent), name, t)) == (vol, H(parent), name, t)
    assert split_dir_key(dir_key(vol, H(parent))) == (vol, H(parent))


def test_an_entry_key_holds_any_path_and_a_name_of_max_name_bytes():
    """Keys are bounded by the name, not the path: a 4,000-byte path and the longest
    name fit LMDB's key limit; the root is the empty name in the empty directory."""
    deep = b"/".join([b"d" * 250] * 16)[:4000]
    longest = b"n" * MAX_NAME
    assert len(entry_key(1, H(deep), longest, 2**64 - 1)) == MAX_KEY == 511
    assert MAX_NAME >= 255  # NAME_MAX
    assert entry_key(1, H(b""), b"", 5).startswith(dir_key(1, H(b"")))
    assert len(H(deep)) == DIR_HASH_LEN == 16


def test_directory_hashes_are_keyed_and_personalised():
    """The hash is BLAKE2b-128 of the path, keyed with the block key and personalised
    (docs/format.md "The index"): another repository's key gives other hashes."""
    import hashlib

    key = bytes(range(32))
    assert H(b"a/b") == hashlib.blake2b(b"a/b", digest_size=16, key=key,
                                        person=b"anytime dirpath").digest()
    assert DirHasher(bytes(32))(b"a/b") != H(b"a/b")
    assert H(b"a") != H(b"b") and H(b"a/b") == H(b"a/b") and H(b"x") != H(b"a/b")


@given(vol=u32, t1=instants, t2=instants)
def test_commit_keys_sort_by_volume_then_time(vol, t1, t2):
    assert (commit_key(vol, t1) < commit_key(vol, t2)) == (t1 < t2)
    if vol < 2**32 - 1:
        assert commit_key(vol, 2**64 - 1) < commit_key(vol + 1, 0)


@given(fid=u64, b1=u64, b2=u64, t1=instants, t2=instants)
def test_block_version_keys_group_by_block(fid, b1, b2, t1, t2):
    if b1 < b2:
        assert blockver_key(1, fid, b1, t1) < blockver_key(1, fid, b2, t2)
    if b1 == b2:
        assert (blockver_key(1, fid, b1, t1) < blockver_key(1, fid, b2, t2)) == (t1 < t2)


@given(vol=u32, t=instants, fid=u64, block=u64, dev=st.integers(-(2**63), 2**64 - 1),
       ino=u64, label=st.binary(min_size=1, max_size=100), dict_id=u32)
def test_every_key_encoder_has_its_decoder(vol, t, fid, block, dev, ino, label, dict_id):
    """format.py keeps a decoder beside every encoder: each key reads back as written."""
    assert split_vol_key(vol_key(vol)) == vol
    assert split_commit_key(commit_key(vol, t)) == (vol, t)
    assert split_blockver_key(blockver_key(vol, fid, block, t)) == (vol, fid, block, t)
    assert split_label_key(label_key(vol, label)) == (vol, label)
    assert split_pending_key(pending_key(vol)) == vol
    assert split_zdict_key(zdict_key(dict_id)) == dict_id
    assert split_inode_key(inode_key(vol, dev, ino)) == (vol, dev % 2**64, ino)


@given(size=u64, offset=u64, stored=u32, raw=u32, codec=st.integers(0, 255), count=u32,
       fid=u64, mtime=i64)
def test_every_value_struct_reads_back(size, offset, stored, raw, codec, count, fid, mtime):
    pack_id = bytes(range(16))
    assert BLOCK_LOC.unpack(BLOCK_LOC.pack(pack_id, offset, stored, raw, codec)) == (
        pack_id, offset, stored, raw, codec)
    assert PACK_INFO.unpack(PACK_INFO.pack(size, count, offset)) == (size, count, offset)
    assert INODE_VALUE.unpack(INODE_VALUE.pack(fid, mtime, size)) == (fid, mtime, size)


@pytest.mark.parametrize("path,expected", [
    (b"", (b"", b"")), (b"a", (b"", b"a")), (b"a/b", (b"a", b"b")),
    (b"a/b/\xff c", (b"a/b", b"\xff c")),
])
def test_split_and_join_path(path, expected):
    assert split_path(path) == expected
    if path:
        assert join_path(*expected) == path


# --- packs ----------------------------------------------------------------------------
def _records(n, size=3000):
    return [(bytes([i % 256]) * 31 + bytes([i // 256]), CODEC_RAW if i % 2 else CODEC_ZSTD,
             size + i, os.urandom(size)) for i in range(n)]


def _write_pack(root, records, target=10**9):
    w = PackWriter(LocalDirPackStore(str(root)), target)
    locs = [w.append(*r) for r in records]
    packs = w.sync()
    return locs, packs


def test_pack_round_trip_with_reader_and_iter_records(tmp_path):
    recs = _records(40)
    locs, packs = _write_pack(tmp_path, recs, target=20_000)
    assert len(packs) > 3, "a small target must split the records over several packs"
    assert sum(n for _, _, n in packs) == len(recs)
    reader = PackReader(LocalDirPackStore(str(tmp_path)))
    try:
        for (bid, codec, raw_len, stored), (pid, off) in zip(recs, locs, strict=True):
            assert reader.read_record(pid, off, len(stored), bid) == (codec, raw_len, stored)
    finally:
        reader.close()
    # the packs are self-describing: walking them without the index finds every record
    seen = {}
    for pid, size, nrec in packs:
        path = LocalDirPackStore(str(tmp_path)).path(pid)
        assert os.path.getsize(path) == size
        rows = list(iter_records(LocalDirPackStore(str(tmp_path)), pid))
        assert len(rows) == nrec
        for off, bid, codec, raw_len, slen, ok in rows:
            assert ok
            seen[(pid, off)] = (bid, codec, raw_len, slen)
    assert seen == {loc: (b, c, r, len(s)) for loc, (b, c, r, s) in zip(locs, recs, strict=True)}


def test_flipped_byte_is_damaged_data(tmp_path):
    recs = _records(3)
    locs, packs = _write_pack(tmp_path, recs)
    (pid, off), (bid, _, _, stored) = locs[1], recs[1]
    path = LocalDirPackStore(str(tmp_path)).path(pid)
    with open(path, "r+b") as f:
        pos = off + RECORD_HEADER.size + 100
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x40]))
    reader = PackReader(LocalDirPackStore(str(tmp_path)))
    try:
        with pytest.raises(DamagedData, match="damaged"):
            reader.read_record(pid, off, len(stored), bid)
        # the neighbours are still fine
        assert reader.read_record(*locs[0], len(recs[0][3]), recs[0][0])[2] == recs[0][3]
    finally:
        reader.close()
    oks = [ok for *_, ok in iter_records(LocalDirPackStore(str(tmp_path)), pid)]
    assert oks == [True, False, True]


def test_wrong_block_id_or_missing_pack_is_damaged_data(tmp_path):
    recs = _records(1)
    locs, _ = _write_pack(tmp_path, recs)
    reader = PackReader(LocalDirPackStore(str(tmp_path)))
    try:
        with pytest.raises(DamagedData):
            reader.read_record(*locs[0], len(recs[0][3]), b"\x01" * 32)
        with pytest.raises(DamagedData, match="missing"):
            reader.read_record(b"\x00" * 16, PACK_HEADER.size, 10, b"\x01" * 32)
    finally:
        reader.close()


@pytest.mark.parametrize("cut", [1, RECORD_HEADER.size - 1, RECORD_HEADER.size + 10])
def test_torn_tail_stops_iter_records(tmp_path, cut):
    recs = _records(4)
    locs, packs = _write_pack(tmp_path, recs)
    pid, size, _ = packs[0]
    path = LocalDirPackStore(str(tmp_path)).path(pid)
    last_off = locs[-1][1]
    os.truncate(path, last_off + cut)  # a crash in the middle of the last record
    rows = list(iter_records(LocalDirPackStore(str(tmp_path)), pid))
    assert [r[0] for r in rows] == [off for _, off in locs[:-1]]
    assert all(r[-1] for r in rows)
    reader = PackReader(LocalDirPackStore(str(tmp_path)))
    try:
        with pytest.raises(DamagedData, match="truncated"):
            reader.read_record(pid, last_off, len(recs[-1][3]), recs[-1][0])
    finally:
        reader.close()


def test_iter_records_ignores_files_that_are_not_packs(tmp_path):
    store = LocalDirPackStore(str(tmp_path))
    pid = b"\x42" * 16
    p = Path(store.path(pid))
    p.parent.mkdir(parents=True)
    p.write_bytes(b"not a pack at all" * 10)
    assert list(iter_records(store, pid)) == []
    p.write_bytes(b"")
    assert list(iter_records(store, pid)) == []


def test_abort_removes_the_writers_packs(tmp_path):
    w = PackWriter(LocalDirPackStore(str(tmp_path)), 5000)
    locs = [w.append(*r) for r in _records(6)]
    w.abort()
    for pid, _ in locs:
        assert not os.path.exists(LocalDirPackStore(str(tmp_path)).path(pid))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=2000), min_size=1, max_size=12))
def test_any_payload_round_trips(tmp_path_factory, payloads):
    root = tmp_path_factory.mktemp("packs")
    recs = [(os.urandom(32), CODEC_RAW, len(p), p) for p in payloads]
    locs, _ = _write_pack(root, recs, target=3000)
    reader = PackReader(LocalDirPackStore(str(root)))
    try:
        for (bid, _, _, p), (pid, off) in zip(recs, locs, strict=True):
            assert reader.read_record(pid, off, len(p), bid)[2] == p
    finally:
        reader.close()


# --- repository config ------------------------------------------------------------------
def _edit_config(root, **changes):
    path = os.path.join(root, "config")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_init_then_open(repo_dir):
    from conftest import TEST_OPTIONS, TEST_PACK_TARGET

    from anytime.store.format import DEFAULT_PACK_TARGET

    Repository.init(str(repo_dir)).close()
    with Repository.open(str(repo_dir)) as repo:
        # $ANYTIME_PACK_TARGET is set (conftest), but only the CLI reads it
        assert repo.pack_target == DEFAULT_PACK_TARGET
        assert len(repo.block_key) == 32
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        assert repo.pack_target == TEST_PACK_TARGET


def test_an_lmdb_error_leaves_the_store_as_an_error_users_can_act_on(repo_dir):
    """LMDB's errors are translated inside the store (the CLI and the mount never see
    one): in a read or write transaction they are the damaged-index error, exit 10."""
    import lmdb

    with Repository.init(str(repo_dir)) as repo:
        for txn in (repo.read_txn, repo.write_txn):
            with pytest.raises(RepositoryFormatError, match="index .* cannot be used") as ei:
                with txn():
                    raise lmdb.CorruptedError("mdb_get: MDB_CORRUPTED: Located page was wrong type")
            assert ei.value.exit_code == 10 and "MDB_CORRUPTED" in str(ei.value)
        with repo.read_txn() as txn:  # and the repository is still usable
            assert repo.committed_packs(txn) == set()


def test_other_format_version_is_refused_plainly(repo_dir):
    Repository.init(str(repo_dir)).close()
    _edit_config(repo_dir, format_version=3)
    with pytest.raises(RepositoryFormatError) as ei:
        Repository.open(str(repo_dir))
    msg = str(ei.value)
    assert "format version 3" in msg and "format version 2" in msg
    assert ei.value.exit_code == 10


def test_a_format_1_repository_is_refused_with_what_to_do(repo_dir):
    Repository.init(str(repo_dir)).close()
    _edit_config(repo_dir, format_version=1)
    with pytest.raises(RepositoryFormatError) as ei:
        Repository.open(str(repo_dir))
    msg = str(ei.value)
    assert "format version 1" in msg and "anytime 0.1" in msg and "anytime init" in msg
    assert ei.value.exit_code == 10


@pytest.mark.parametrize("chunker", [None, {"algorithm": "rabin"},
                                     {"algorithm": "fastcdc2020", "min": 1, "avg": 2,
                                      "max": 3, "nc": 1, "seed": 5}])
def test_a_damaged_chunker_config_is_refused(repo_dir, chunker):
    Repository.init(str(repo_dir)).close()
    _edit_config(repo_dir, chunker=chunker)
    with pytest.raises(RepositoryFormatError, match="chunker settings"):
        Repository.open(str(repo_dir))


def test_unknown_feature_is_refused_plainly(repo_dir):
    Repository.init(str(repo_dir)).close()
    _edit_config(repo_dir, features=["time-travel-v9"])
    with pytest.raises(RepositoryFormatError, match="time-travel-v9.*upgrade"):
        Repository.open(str(repo_dir))


def test_unreadable_config_is_a_format_error(repo_dir):
    Repository.init(str(repo_dir)).close()
    (repo_dir / "config").write_text("{ not json")
    with pytest.raises(RepositoryFormatError, match="unreadable"):
        Repository.open(str(repo_dir))


def test_missing_repository(tmp_path):
    with pytest.raises(RepositoryNotFound, match="anytime init"):
        Repository.open(str(tmp_path / "nothing"))


def test_other_format_version_via_cli(anytime, repo_dir):
    anytime("init", check=0)
    _edit_config(repo_dir, format_version=99)
    r = anytime("volumes", check=10)
    assert b"format version 99" in r.stderr
    assert b"Traceback" not in r.stderr
