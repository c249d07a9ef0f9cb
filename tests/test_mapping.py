"""The index map does not pile up in a process's resident set (store/mapping.py)."""

from __future__ import annotations

import os
import random
import sys

import pytest
from conftest import TEST_OPTIONS

from anytime.store.format import DB_BLOCKS
from anytime.store.mapping import MapTrimmer
from anytime.store.repo import Repository

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="madvise and /proc/self/smaps are Linux's")


def mapped_kb(path: str) -> int:
    """Resident kB of this process's mapping of ``path`` (from /proc/self/smaps)."""
    path, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5:  # a mapping's first line
                inside = len(head) == 6 and head[5].rstrip("\n") == path
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_trim_unmaps_index_pages_and_reads_go_on(tmp_path):
    repo = Repository.init(str(tmp_path / "r"), options=TEST_OPTIONS)
    keys = [os.urandom(32) for _ in range(60_000)]
    with repo.env.begin(write=True) as txn:
        for k in sorted(keys):
            txn.put(k, b"x" * 40, db=repo.dbs[DB_BLOCKS])
    data = os.path.join(repo.root, "index", "data.mdb")
    assert os.path.getsize(data) > 4 << 20
    trimmer = MapTrimmer(data)
    trimmer.trim()
    random.seed(7)
    with repo.read_txn() as txn:
        for k in random.sample(keys, 3000):
            assert txn.get(k, db=repo.dbs[DB_BLOCKS]) == b"x" * 40
    before = mapped_kb(data)
    assert before > 1024, "random lookups map index pages"
    trimmer.trim()
    after = mapped_kb(data)
    assert after < before / 4, (before, after)
    with repo.read_txn() as txn:  # the data is still there, mapped again on access
        assert all(txn.get(k, db=repo.dbs[DB_BLOCKS]) == b"x" * 40 for k in keys[:500])


def test_touched_trims_every_so_often(tmp_path):
    t = MapTrimmer(str(tmp_path / "nothing-mapped"))
    calls = []
    t.trim = lambda: calls.append(1)
    for _ in range(1000):
        t.touched()
    assert 3 <= len(calls) <= 4  # every 256 accesses
