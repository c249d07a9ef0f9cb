"""Compacting the index (store/compaction.py): after a prune deletes most of a history's
records, `anytime prune` gives the index's free pages back to the disk when no other
process has the repository open, and every kept instant reads as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import TEST_OPTIONS
from test_prune import assert_clean, set_policy

from anytime.store import clock
from anytime.store.format import KIND_DIR, KIND_FILE, Entry
from anytime.store.repo import Repository
from anytime.store.volumes import create_volume, get_volume
from anytime.store.writer import CommitBuilder
from anytime.vfs.view import View

COMMITS, FILES = 30, 1500


def many_versions(root, source) -> list[int]:
    """A volume ``src`` of COMMITS commits, one a minute, the last 30 s ago, each changing every
    one of FILES files (written with the store API: fast); returns the instants."""
    step = 60 * 10**9
    base = clock.now_ns() - COMMITS * step - step // 2  # the last, 30 s ago
    with Repository.init(str(root), options=TEST_OPTIONS) as repo, repo.writer_lock():
        with repo.write_txn() as txn:
            vol = create_volume(repo, txn, "src", str(source), repo.block_size, base)
        fids, out = [], []
        for c in range(COMMITS):
            t = base + (c + 1) * step
            b = CommitBuilder(repo, vol)
            if c == 0:
                meta = dict(mode=0o40755, nlink=2, atime_ns=t, mtime_ns=t, ctime_ns=t)
                b.put_entry(b"", Entry(KIND_DIR, **meta))
                fids = [b.new_file_id() for _ in range(FILES)]
            for i in range(FILES):
                data = b"file %d version %d\n" % (i, c)
                b.put_block_version(fids[i], 0, b.store_chunk(data))
                b.put_entry(b"f%05d" % i, Entry(KIND_FILE, mode=0o100644, size=len(data),
                                                atime_ns=t, mtime_ns=t, ctime_ns=t,
                                                file_id=fids[i]))
            b.commit({"kind": "test"}, instant=t)
            out.append(t)
    return out


def read_at(root, instant: int, names) -> dict:
    with Repository.open(str(root), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        view = View(repo, vol, instant)
        return {n: view.read(e, 0, e.size) for n in names if (e := view.lookup(n))}


def test_prune_compacts_the_index_and_kept_instants_read_the_same(anytime, tmp_path):
    root, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    instants = many_versions(root, src)
    names = [b"f%05d" % i for i in (0, 777, FILES - 1)]
    newest = read_at(root, instants[-1], names)
    assert newest[names[1]] == b"file 777 version %d\n" % (COMMITS - 1)
    data = root / "index" / "data.mdb"
    before = data.stat().st_size
    set_policy(root, "src", keep_all="3m")  # the last three commits
    rep = json.loads(anytime("prune", "--json", check=0).stdout)
    assert rep["commits_dropped"] == COMMITS - 3, rep
    assert rep["index"]["skipped"] is None, rep["index"]
    after = data.stat().st_size
    assert rep["index"] == {"before_bytes": before, "after_bytes": after, "skipped": None}
    assert after < before / 4, (before, after)
    assert not (root / "index" / "data.mdb.compacting").exists()
    assert read_at(root, instants[-1], names) == newest
    assert read_at(root, instants[-3], names)[names[1]] == \
        b"file 777 version %d\n" % (COMMITS - 3)
    assert_clean(root)
    # the compacted index takes writes: a new commit lands and reads back
    (src / "new.txt").write_text("after the compaction\n")
    anytime("snapshot", str(src), check=0)
    out = anytime("cat", f"{src}/new.txt", check=0).stdout
    assert out == b"after the compaction\n"


HOLDER = """
import sys, time
from anytime.store.repo import Repository
with Repository.open(sys.argv[1]) as repo:
    with repo.read_txn() as txn:
        pass
    print("open", flush=True)
    time.sleep(60)
"""


def test_no_compaction_while_another_process_has_the_repository_open(tmp_path):
    root, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    instants = many_versions(root, src)
    from anytime.store import prune

    with Repository.open(str(root), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vid = get_volume(repo, txn, "src").id
        prune.prune(repo, {vid: {instants[-1]: True}})
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"open\n"
        size = (root / "index" / "data.mdb").stat().st_size
        with Repository.open(str(root), TEST_OPTIONS) as repo:
            got = repo.compact_index(min_free=0.0)
            assert got.skipped and got.skipped.startswith("another process"), got
            assert got.before == got.after == size
            # the lock LMDB marks this process with is shared again: others still open it
            other = subprocess.run([sys.executable, "-c", HOLDER.replace("60", "0"),
                                    str(root)], capture_output=True, timeout=30)
            assert other.stdout == b"open\n", other.stderr
        assert (root / "index" / "data.mdb").stat().st_size == size
    finally:
        holder.kill()
        holder.wait()
    with Repository.open(str(root), TEST_OPTIONS) as repo:
        (root / "index" / "data.mdb.compacting").write_bytes(b"a crashed copy")
        got = repo.compact_index(min_free=0.0)
        assert got.skipped is None and got.after < got.before, got
        assert not (root / "index" / "data.mdb.compacting").exists()
        assert repo.space_kept() <= repo.space_used()
    assert read_at(root, instants[-1], [b"f00001"]) == \
        {b"f00001": b"file 1 version %d\n" % (COMMITS - 1)}
    assert_clean(root)


def test_a_process_opening_the_index_during_a_compaction_waits_and_reads_the_new_one(
        tmp_path, monkeypatch):
    from anytime.store import compaction

    root, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    instants = many_versions(root, src)
    from anytime.store import prune

    opened = {}
    real_copy = compaction._copy

    def slow_copy(repo, index):
        # another process opens the repository while the copy is being made
        opened["proc"] = subprocess.Popen(
            [sys.executable, "-c", "import sys\nfrom anytime.store.repo import Repository\n"
             "with Repository.open(sys.argv[1]) as repo:\n"
             "    with repo.read_txn() as txn:\n"
             "        print(len(list(txn.cursor(db=repo.dbs[b'commits']))), flush=True)\n",
             str(root)], stdout=subprocess.PIPE)
        time.sleep(1.5)
        opened["early"] = opened["proc"].poll()
        return real_copy(repo, index)

    monkeypatch.setattr(compaction, "_copy", slow_copy)
    with Repository.open(str(root), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vid = get_volume(repo, txn, "src").id
        prune.prune(repo, {vid: {instants[-1]: True}})
        got = repo.compact_index(min_free=0.0)
    assert got.skipped is None, got
    assert opened["early"] is None, "the other process did not wait for the compaction"
    out, _ = opened["proc"].communicate(timeout=30)
    assert opened["proc"].returncode == 0
    assert int(out) == 1  # it read the compacted index: one commit left
    assert os.path.getsize(root / "index" / "data.mdb") == got.after
