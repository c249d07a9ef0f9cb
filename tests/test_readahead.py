"""Read-ahead of sequential reads (store/readahead.py, View._ahead): reads return the
exact bytes whatever the worker does, the worker loads only what the view shows, and it
stops when idle, when the repository closes or is dropped."""

from __future__ import annotations

import copy
import gc
import os
import random
import threading
import time
import weakref

import pytest
from treeutil import snap, view_at

from anytime.store import readahead, timeline
from anytime.store.format import BLOCK_ID_LEN, HOLE_ID, decode_ref
from anytime.store.repo import Repository
from anytime.store.volumes import get_volume
from anytime.vfs import view as view_mod
from anytime.vfs.view import View

MiB = 1 << 20
BLOCKS = 6


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)  # incompressible: chunks of about 700 KB


def _chunks(v, entry, block: int) -> set[bytes]:
    """Chunk ids block ``block`` of ``entry`` names at the view's instant."""
    repo = v.repo
    with repo.read_txn() as txn:
        ref = bytes(timeline.blocks_at(repo, txn, v.vol.id, entry.file_id, block, 1, v.at)[0])
    ids = {ref} if len(ref) == BLOCK_ID_LEN else {c for c, _o, _n in decode_ref(ref)}
    return ids - {HOLE_ID}


def _resized(entry, size: int):
    out = copy.copy(entry)
    out.size = size
    return out


def _cached(v, ids) -> set[bytes]:
    return {c for c in ids if v.repo.cache.get(c) is not None}


@pytest.fixture
def two_versions(anytime, src_dir):
    """big.bin of BLOCKS blocks at t1; at t2 its blocks 1.. hold other bytes."""
    one = _data(1, BLOCKS * MiB - 12345)
    two = one[:MiB] + _data(2, len(one) - MiB)
    anytime("init", check=0)
    (src_dir / "big.bin").write_bytes(one)
    t1 = snap(anytime, src_dir)["instant_ns"]
    (src_dir / "big.bin").write_bytes(two)
    os.utime(src_dir / "big.bin", ns=(t1 + 10**9, t1 + 10**9))
    t2 = snap(anytime, src_dir)["instant_ns"]
    return (t1, one), (t2, two)


def test_sequential_read_loads_the_next_blocks_ahead(repo_dir, two_versions):
    (t1, one), _ = two_versions
    with view_at(repo_dir, "src", t1) as v:
        e = v.lookup(b"big.bin")
        assert v.read(e, 0, MiB) == one[:MiB]
        assert v.repo._read_ahead.wait_done(10)
        ahead = set().union(*(_chunks(v, e, b) for b in range(1, 1 + view_mod.READ_AHEAD)))
        later = _chunks(v, e, BLOCKS - 1) - ahead - _chunks(v, e, 0)
        assert ahead and _cached(v, ahead) == ahead, "the next blocks' chunks are ready"
        assert later and not _cached(v, later), "nothing further than READ_AHEAD blocks"
        out = [v.read(e, off, MiB) for off in range(MiB, e.size, MiB)]
        assert b"".join(out) == one[MiB:]


def test_read_ahead_loads_only_what_the_view_shows(repo_dir, two_versions):
    (t1, one), (t2, two) = two_versions
    with view_at(repo_dir, "src", t2) as later:
        e2 = later.lookup(b"big.bin")
        newer = set().union(*(_chunks(later, e2, b) for b in range(1, BLOCKS)))
    with view_at(repo_dir, "src", t1) as v:
        e = v.lookup(b"big.bin")
        mine = set().union(*(_chunks(v, e, b) for b in range(BLOCKS)))
        newer -= mine
        assert newer
        for off in range(0, e.size, MiB):
            assert v.read(e, off, MiB) == one[off:off + MiB]
            assert v.repo._read_ahead.wait_done(10)
            assert not _cached(v, newer), "a later version's chunks were read ahead"
    with view_at(repo_dir, "src", t2) as v2:
        e2 = v2.lookup(b"big.bin")
        assert b"".join(v2.iter_read(e2)) == two


def test_reads_are_exact_at_any_size_and_from_many_threads(repo_dir, two_versions):
    (t1, one), (t2, two) = two_versions
    errors = []

    def reader(v, e, want, step, start):
        try:
            got = bytearray()
            off = start
            while off < e.size:
                got += v.read(e, off, step)
                off += step
            if bytes(got) != want[start:]:
                errors.append((step, start))
        except Exception as ex:  # reported below
            errors.append(ex)

    with view_at(repo_dir, "src", t1) as v1:
        v2 = View(v1.repo, v1.vol, t2)
        jobs = []
        for v, want in ((v1, one), (v2, two)):
            e = v.lookup(b"big.bin")
            for step, start in ((MiB, 0), (300_001, 0), (128 << 10, 5 * 4096), (3 * MiB, 17)):
                jobs.append(threading.Thread(target=reader, args=(v, e, want, step, start)))
        for t in jobs:
            t.start()
        for t in jobs:
            t.join(60)
        assert not errors


def test_ahead_follows_the_reader_and_never_passes_the_file(repo_dir, two_versions):
    (t1, _one), _ = two_versions
    with view_at(repo_dir, "src", t1) as v:
        e = v.lookup(b"big.bin")
        n = view_mod.READ_AHEAD
        assert v._ahead(e, 0, 0) == (1, 1 + n)
        assert v._ahead(e, 2, 2) == (1 + n, 3 + n), "only blocks not asked for before"
        assert v._ahead(e, 1, 1) == (3 + n, 3 + n), "a read the kernel sent late"
        start, stop = v._ahead(e, BLOCKS - 2, BLOCKS - 1)
        assert stop <= BLOCKS, "never past the last block"
        assert v._ahead(e, 0, 0) == (1, 1 + n), "read again from the start"
        big = _resized(e, 100 * MiB)
        assert v._ahead(big, 50, 50) == (51, 51), "a jump: nothing"
        assert v._ahead(big, 51, 51) == (52, 52 + n), "reads follow on from there"
        small = _resized(e, MiB - 1)
        assert v._ahead(small, 0, 0)[0] == v._ahead(small, 0, 0)[1], "one block: nothing"


def test_worker_ends_when_idle_and_when_the_repository_closes(repo_dir, two_versions,
                                                               monkeypatch):
    monkeypatch.setattr(readahead, "IDLE", 0.05)
    (t1, one), _ = two_versions
    with view_at(repo_dir, "src", t1) as v:
        e = v.lookup(b"big.bin")
        ra = v.repo._read_ahead
        v.read(e, 0, MiB)
        assert ra.running()
        deadline = time.monotonic() + 5
        while ra.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not ra.running(), "the worker ends once idle"
        v.read(e, MiB, MiB)
        assert ra.running(), "the next sequential read starts another"
        monkeypatch.setattr(readahead, "IDLE", 30)
        v.read(e, 2 * MiB, MiB)
    assert not ra.running(), "closing the repository stops it"
    assert not [t for t in threading.enumerate() if t.name == "anytime-readahead"]


def test_worker_holds_the_repository_weakly(repo_dir, two_versions):
    (t1, one), _ = two_versions
    repo = Repository.open(str(repo_dir))
    with repo.read_txn() as txn:
        vol = get_volume(repo, txn, "src")
    v = View(repo, vol, t1)
    e = v.lookup(b"big.bin")
    v.read(e, 0, MiB)
    ra = repo._read_ahead
    assert ra.wait_done(10) and ra.loaded >= 1
    assert ra.running(), "the worker waits for more (IDLE seconds)"
    ref = weakref.ref(repo)
    del v, repo
    gc.collect()
    try:
        assert ref() is None, "only the worker is left, and it does not keep the repository"
    finally:
        ra.close()
    assert not ra.running()
