"""Bounded memory while building a commit: sorted spills and early block indexing."""

from __future__ import annotations

import os

from anytime.store import writer
from anytime.store.check import check
from anytime.store.format import DB_INODES, DB_META, HOLE_ID, INODE_VALUE, pending_key
from anytime.store.options import StoreOptions
from anytime.store.repo import Repository
from anytime.store.spill import SortedSpill
from anytime.store.volumes import create_volume, get_volume_by_id
from anytime.vfs.view import View


def test_spill_merges_runs_in_key_order_and_keeps_the_last_of_equal_keys(tmp_path):
    sp = SortedSpill(str(tmp_path), limit=7)
    pairs = [(os.urandom(3), os.urandom(5)) for _ in range(100)]
    pairs += [(b"same", b"first"), (b"same", b"second")]
    for k, v in pairs:
        sp.add(k, v)
    sp.add(b"same", b"third")
    got = list(sp.items())
    assert len(got) == len(pairs) + 1
    assert [k for k, _ in got] == sorted(k for k, _ in got)
    assert [v for k, v in got if k == b"same"] == [b"first", b"second", b"third"]
    assert len(os.listdir(tmp_path)) > 5, "past the limit pairs go to run files"
    sp.close()
    assert os.listdir(tmp_path) == []


def _repo_with_volume(path, **options):
    """A new repository with these store options (store/options.py) and a volume."""
    repo = Repository.init(str(path), options=StoreOptions(**options))
    with repo.env.begin(write=True) as txn:
        vol = create_volume(repo, txn, "v", "/nowhere", 4096, 1)
    return repo, vol


def test_blocks_are_indexed_early_and_the_commit_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "FLUSH_BLOCKS", 20)
    # zdict_sample_blocks 1: hold no blocks back for a dictionary
    repo, vol = _repo_with_volume(tmp_path / "r", pack_target=8192, zdict_sample_blocks=1)
    b = writer.CommitBuilder(repo, vol)
    blocks = [os.urandom(1000) for _ in range(200)]
    ids = [b.store_chunk(d) for d in blocks]
    assert len(b._new_blocks) < 200, "blocks of closed packs left memory"
    fid = b.new_file_id()
    for i, bid in enumerate(ids):
        b.put_block_version(fid, i, bid)
    t = b.commit({"kind": "test"})
    with repo.read_txn() as txn:
        assert [repo.read_block(txn, bid) for bid in ids] == blocks
    assert t > 0 and not check(repo, read_data=True).problems


def test_abort_after_early_indexing_keeps_the_repository_consistent(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "FLUSH_BLOCKS", 10)
    repo, vol = _repo_with_volume(tmp_path / "r", pack_target=4096, zdict_sample_blocks=1)
    b = writer.CommitBuilder(repo, vol)
    ids = [b.store_chunk(os.urandom(1500)) for _ in range(80)]
    b.abort()
    rep = check(repo, read_data=True)
    assert not rep.problems, rep.problems
    assert rep.blocks > 0, "indexed blocks stay, usable for dedup"
    b2 = writer.CommitBuilder(repo, vol)
    with repo.read_txn() as txn:
        indexed = [bid for bid in ids if repo.block_location(txn, bid) is not None]
        again = [repo.read_block(txn, bid) for bid in indexed[:3]]
    assert indexed and [b2.store_chunk(d) for d in again] == indexed[:3]
    assert b2.stats["blocks_dup"] == 3 and HOLE_ID not in indexed


def test_a_batch_transaction_still_finds_blocks_indexed_early_meanwhile(tmp_path):
    repo, vol = _repo_with_volume(tmp_path / "r", pack_target=4096, zdict_sample_blocks=1)
    b = writer.CommitBuilder(repo, vol)
    data = os.urandom(1500)
    with b.reading():  # one read transaction, begun before the block is indexed
        bid = b.store_chunk(data)
        b._flush_blocks(wait=True)  # indexed early: it left _new_blocks
        assert bid not in b._new_blocks
        assert b.store_chunk(data) == bid
    assert b.stats["blocks_new"] == 1 and b.stats["blocks_dup"] == 1, "stored once"
    b.abort()


# --- staged commits ----------------------------------------------------------------------
def _build(repo, vol, n, first_fid=1):
    """A builder holding ``n`` files (entry, one block version, inode mapping each)."""
    from anytime.store.format import KIND_FILE, Entry
    b = writer.CommitBuilder(repo, vol)
    for i in range(n):
        data = f"file {i}\n".encode() * 50
        e = Entry(KIND_FILE, size=len(data), file_id=first_fid + i, nlink=1, mode=0o100644)
        b.put_entry(f"d/f{i:04d}".encode(), e)
        b.put_block_version(e.file_id, 0, b.store_chunk(data))
        b.map_inode(1, 1000 + i, e.file_id, 0, len(data))
        vol.next_file_id = max(vol.next_file_id, e.file_id + 1)
    return b


def _past_horizon(repo, vid: int) -> int:
    """Records of volume ``vid`` in entries/blockvers whose instant is past its horizon."""
    from anytime.store.format import DB_BLOCKVERS, DB_ENTRIES, U32, U64
    with repo.read_txn() as txn:
        horizon = get_volume_by_id(repo, txn, vid).horizon
        return sum(1 for name in (DB_ENTRIES, DB_BLOCKVERS)
                   for key, _ in txn.cursor(db=repo.dbs[name])
                   if key.startswith(U32.pack(vid)) and U64.unpack(key[-8:])[0] > horizon)


def _staging_repo(tmp_path):
    """(repo, volume, instant of a first commit of 3 files); commits of more than 7
    records from here on are staged."""
    repo, vol = _repo_with_volume(tmp_path / "r", stage_records=7)
    return repo, vol, _build(repo, vol, 3).commit({"kind": "test"})


def test_a_large_commit_is_staged_and_shows_only_when_it_lands(tmp_path, monkeypatch):
    """Records go in several transactions; a reader between them sees the old state
    (views stop at the horizon), and the landed commit equals an unstaged one."""
    monkeypatch.setattr(writer, "BLOCKS_PER_TXN", 5)
    repo, vol, t1 = _staging_repo(tmp_path)
    seen = []
    put = writer._put_records

    def watching(txn, records, dbs, **kw):
        put(txn, records, dbs, **kw)
        with repo.read_txn() as rtxn:  # what any reader sees meanwhile
            fresh = get_volume_by_id(repo, rtxn, vol.id)
            marker = rtxn.get(pending_key(vol.id), db=repo.dbs[DB_META])
        v = View(repo, fresh, 2**63)
        seen.append((marker is not None, fresh.horizon,
                     len(v.listdir(b"d")), v.lookup(b"d/f0030") is None))

    monkeypatch.setattr(writer, "_put_records", watching)
    t2 = _build(repo, vol, 40, first_fid=100).commit({"kind": "test"})
    monkeypatch.setattr(writer, "_put_records", put)
    staged = seen[:-1]
    assert len(staged) >= 10, "120 records in transactions of 7"
    # while staging: a marker, the old horizon, the old listing (earlier staged
    # transactions are committed and visible to LMDB readers, not to views)
    assert all(s == (True, t1, 3, True) for s in staged[1:]), staged
    with repo.read_txn() as txn:
        assert txn.get(pending_key(vol.id), db=repo.dbs[DB_META]) is None
        vol = get_volume_by_id(repo, txn, vol.id)
    assert vol.horizon == t2 and _past_horizon(repo, vol.id) == 0
    v = View(repo, vol, t2)
    assert [n for n, _ in v.listdir(b"d")] == [f"f{i:04d}".encode() for i in range(40)]
    e = v.lookup(b"d/f0039")
    assert e.file_id == 139 and v.read(e, 0, e.size) == b"file 39\n" * 50
    assert View(repo, vol, t1).lookup(b"d/f0039") is None
    assert not check(repo, read_data=True).problems


def test_a_crash_while_staging_is_rolled_back_by_the_next_writer(tmp_path, monkeypatch):
    repo, vol, t1 = _staging_repo(tmp_path)
    calls = []
    put = writer._put_records

    def dying(txn, records, dbs, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("killed between staged transactions")
        put(txn, records, dbs, **kw)

    monkeypatch.setattr(writer, "_put_records", dying)
    b = _build(repo, vol, 40, first_fid=100)
    try:
        b.commit({"kind": "test"})
    except KeyboardInterrupt:
        pass
    b.abort()
    monkeypatch.setattr(writer, "_put_records", put)
    with repo.read_txn() as txn:
        assert txn.get(pending_key(vol.id), db=repo.dbs[DB_META]) is not None
        fresh = get_volume_by_id(repo, txn, vol.id)
    assert fresh.horizon == t1 and _past_horizon(repo, vol.id) > 0
    assert [n for n, _ in View(repo, fresh, 2**63).listdir(b"d")] == [
        b"f0000", b"f0001", b"f0002"], "staged records stay invisible"

    with repo.writer_lock():  # the next writer cleans up first
        pass
    with repo.read_txn() as txn:
        assert txn.get(pending_key(vol.id), db=repo.dbs[DB_META]) is None
        fids = [INODE_VALUE.unpack(v)[0] for _, v in txn.cursor(db=repo.dbs[DB_INODES])]
    assert _past_horizon(repo, vol.id) == 0
    assert sorted(fids) == [1, 2, 3], "mappings to file ids never committed are gone"
    vol = fresh
    t3 = _build(repo, vol, 5, first_fid=vol.next_file_id).commit({"kind": "test"})
    assert t3 > t1 and len(View(repo, vol, t3).listdir(b"d")) == 5
    assert not check(repo, read_data=True).problems


def test_an_interrupted_block_flush_keeps_the_packs_it_listed(tmp_path, monkeypatch):
    """A failure between two block-index transactions, then abort: every indexed block
    still reads (its pack was listed in the first transaction and is kept)."""
    monkeypatch.setattr(writer, "BLOCKS_PER_TXN", 5)
    repo, vol = _repo_with_volume(tmp_path / "r", pack_target=4096)
    b = writer.CommitBuilder(repo, vol)
    blocks = [os.urandom(1500) for _ in range(30)]
    for d in blocks:
        b.store_chunk(d)
    calls = []
    put = writer._put_sorted

    def failing(txn, db, items, suffix=b"", **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return put(txn, db, items, suffix, **kw)

    monkeypatch.setattr(writer, "_put_sorted", failing)
    try:
        b.commit({"kind": "test"})
    except OSError:
        pass
    monkeypatch.setattr(writer, "_put_sorted", put)
    b.abort()
    rep = check(repo, read_data=True)
    assert rep.blocks >= 5 and not rep.problems, rep.problems


def test_a_repository_made_before_staging_gets_the_feature_flag(tmp_path):
    """Programs that do not stop at the horizon must refuse a repository that stages."""
    import json

    repo, vol = _repo_with_volume(tmp_path / "r")
    cfg = tmp_path / "r" / "config"
    old = json.loads(cfg.read_text())
    old["features"] = []  # as written before staged commits existed
    cfg.write_text(json.dumps(old))
    repo.close()
    repo = Repository.open(str(tmp_path / "r"), StoreOptions(stage_records=7))
    _build(repo, vol, 2).commit({"kind": "test"})  # 6 records: not staged
    assert json.loads(cfg.read_text())["features"] == []
    _build(repo, vol, 5, first_fid=10).commit({"kind": "test"})  # staged
    assert json.loads(cfg.read_text())["features"] == ["staged-commits"]
