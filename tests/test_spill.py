"""Bounded memory while building a commit: sorted spills and early block indexing."""

from __future__ import annotations

import os

from anytime.store import writer
from anytime.store.check import check
from anytime.store.format import HOLE_ID
from anytime.store.repo import Repository
from anytime.store.spill import SortedSpill
from anytime.store.volumes import create_volume


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


def _repo_with_volume(path):
    repo = Repository.init(str(path))
    with repo.env.begin(write=True) as txn:
        vol = create_volume(repo, txn, "v", "/nowhere", 4096, 1)
    return repo, vol


def test_blocks_are_indexed_early_and_the_commit_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "FLUSH_BLOCKS", 20)
    monkeypatch.setenv("ANYTIME_PACK_TARGET", "8192")
    repo, vol = _repo_with_volume(tmp_path / "r")
    b = writer.CommitBuilder(repo, vol)
    blocks = [os.urandom(1000) for _ in range(200)]
    ids = [b.store_block(d) for d in blocks]
    assert len(b._new_blocks) < 200, "blocks of closed packs left memory"
    for i, bid in enumerate(ids):
        b.put_block_version(1, i, bid)
    t = b.commit({"kind": "test"})
    with repo.read_txn() as txn:
        assert [repo.read_block(txn, bid) for bid in ids] == blocks
    assert t > 0 and not check(repo, read_data=True).problems


def test_abort_after_early_indexing_keeps_the_repository_consistent(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "FLUSH_BLOCKS", 10)
    monkeypatch.setenv("ANYTIME_PACK_TARGET", "4096")
    repo, vol = _repo_with_volume(tmp_path / "r")
    b = writer.CommitBuilder(repo, vol)
    ids = [b.store_block(os.urandom(1500)) for _ in range(80)]
    b.abort()
    rep = check(repo, read_data=True)
    assert not rep.problems, rep.problems
    assert rep.blocks > 0, "indexed blocks stay, usable for dedup"
    b2 = writer.CommitBuilder(repo, vol)
    with repo.read_txn() as txn:
        indexed = [bid for bid in ids if repo.block_location(txn, bid) is not None]
        again = [repo.read_block(txn, bid) for bid in indexed[:3]]
    assert indexed and [b2.store_block(d) for d in again] == indexed[:3]
    assert b2.stats["blocks_dup"] == 3 and HOLE_ID not in indexed
