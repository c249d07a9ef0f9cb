"""The index rebuilt from the packs alone (``anytime check --repair``): every instant of
every volume reads back exactly as before, labels included; a damaged or missing index
is never taken for an empty one; a torn pack loses only what was in it, and says so."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from conftest import TEST_OPTIONS
from treeutil import build_tree, snap

from anytime.store import timeline
from anytime.store.format import HIST_COMMIT, HISTORY_MAGIC, KIND_DIR, KIND_FILE
from anytime.store.history import split_history_id
from anytime.store.packs import walk_records
from anytime.store.packstore import LocalDirPackStore
from anytime.store.repo import Repository
from anytime.store.volumes import list_volumes
from anytime.vfs.view import View

#: the staged-commit and dictionary paths too: small transactions, an early dictionary
KNOBS = {"ANYTIME_STAGE_RECORDS": "25", "ANYTIME_ZDICT_SAMPLE_BLOCKS": "260"}


def picture(repo_dir) -> dict:
    """Everything the index says, as readers see it: per volume, its record, its
    commits, its labels, and at every commit instant every path with its metadata and
    a hash of its content."""
    out = {}
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            vols = list_volumes(repo, txn)
            for vol in vols:
                commits = list(timeline.commits(repo, txn, vol.id))
                out[vol.name] = {"volume": vol.as_dict(), "commits": commits,
                                 "labels": timeline.labels(repo, txn, vol.id), "at": {}}
        for vol in vols:
            for t, _ in out[vol.name]["commits"]:
                out[vol.name]["at"][t] = _tree(View(repo, vol, t))
    return out


def _tree(view: View, path: bytes = b"") -> dict:
    got = {}
    for name, e in view.listdir(path):
        p = path + b"/" + name if path else name
        rec = (e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.target, e.file_id,
               sorted(e.xattrs.items()))
        if e.kind == KIND_FILE:
            rec += (hashlib.sha256(b"".join(view.iter_read(e))).hexdigest(),)
        got[p] = rec
        if e.kind == KIND_DIR:
            got.update(_tree(view, p))
    return got


def history_repo(anytime, tmp_path, monkeypatch):
    """A repository (the ``repo_dir`` fixture's) with two volumes and a history worth
    rebuilding: staged commits, a dictionary, deletions, a rename, labels set by
    snapshot and mark, one removed."""
    for k, v in KNOBS.items():
        monkeypatch.setenv(k, v)
    anytime("init", check=0)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    build_tree(a)
    (a / "many").mkdir()
    for i in range(300):  # small files: a dictionary, and more records than one txn
        (a / "many" / f"f{i:03d}").write_bytes(f"small file {i}\n".encode() * (850 + i))
    (a / "big.bin").write_bytes(os.urandom(5 << 20))
    (b / "only").write_text("volume b\n")
    snap(anytime, a, "--label", "first")
    snap(anytime, b)
    with open(a / "big.bin", "r+b") as f:  # an in-place change
        f.seek(3 << 20)
        f.write(b"changed in place")
    shutil.rmtree(a / "many")  # a deleted tree
    os.rename(a / "docs", a / "papers")
    (a / "new.txt").write_text("new\n")
    snap(anytime, a)
    anytime("mark", "a", "second", check=0)
    anytime("mark", "a", "gone", check=0)
    anytime("unmark", "a", "gone", check=0)
    (a / "new.txt").write_text("newer\n")
    snap(anytime, a)


def test_a_lost_index_is_rebuilt_and_every_instant_reads_back(anytime, tmp_path, monkeypatch):
    history_repo(anytime, tmp_path, monkeypatch)
    repo_dir = tmp_path / "repo"
    before = picture(repo_dir)
    assert len(before["a"]["commits"]) == 3
    assert [n for n, _ in before["a"]["labels"]] == ["first", "second"]
    first = before["a"]["at"][before["a"]["commits"][0][0]]
    assert len(first) > 310 and b"many/f299" in first and b"papers" not in first
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        assert repo.current_zdict() is not None, "small chunks use a dictionary"
    shutil.rmtree(repo_dir / "index")

    r = anytime("check", "--repair")
    assert r.returncode == 0, r.stderr
    assert b"index rebuilt from" in r.stdout and b"no problems found" in r.stdout
    assert picture(repo_dir) == before
    assert b"no problems found" in anytime("check", "--read-data", check=0).stdout
    # and the rebuilt index takes new commits: nothing was taken for a leftover
    packs = sorted(p.name for p in repo_dir.glob("packs/*/*.pack"))
    (tmp_path / "a" / "after.txt").write_text("after the repair\n")
    snap(anytime, tmp_path / "a")
    assert set(packs) <= {p.name for p in repo_dir.glob("packs/*/*.pack")}
    assert anytime("cat", tmp_path / "a" / "after.txt", check=0).stdout == \
        b"after the repair\n"


def test_a_missing_index_is_never_taken_for_an_empty_one(anytime, tmp_path, monkeypatch):
    history_repo(anytime, tmp_path, monkeypatch)
    repo_dir = tmp_path / "repo"
    packs = sorted(repo_dir.glob("packs/*/*.pack"))
    shutil.rmtree(repo_dir / "index")
    for cmd in (["snapshot", tmp_path / "a"], ["ls", tmp_path / "a"], ["check"]):
        r = anytime(*cmd)
        assert r.returncode == 10, (cmd, r.stderr)
        assert b"index" in r.stderr and b"anytime check --repair" in r.stderr
    assert sorted(repo_dir.glob("packs/*/*.pack")) == packs, "no pack was deleted"


def test_a_damaged_index_is_rebuilt_and_kept_aside(anytime, tmp_path, monkeypatch):
    history_repo(anytime, tmp_path, monkeypatch)
    repo_dir = tmp_path / "repo"
    before = picture(repo_dir)
    data = repo_dir / "index" / "data.mdb"
    data.write_bytes(b"\x5a" * data.stat().st_size)  # every page overwritten
    r = anytime("ls", tmp_path / "a")
    assert r.returncode == 10 and b"anytime check --repair" in r.stderr, r.stderr
    anytime("check", "--repair", check=0)
    assert picture(repo_dir) == before
    (old,) = repo_dir.glob("index.old-*")
    assert (old / "data.mdb").read_bytes()[:4] == b"\x5a" * 4, "the damaged one is kept"


def test_a_torn_pack_tail_loses_only_the_commit_written_there(anytime, tmp_path, monkeypatch):
    history_repo(anytime, tmp_path, monkeypatch)
    repo_dir = tmp_path / "repo"
    before = picture(repo_dir)
    t_last = before["a"]["commits"][-1][0]
    store = LocalDirPackStore(str(repo_dir))
    for pack_id in store.list():  # the pack holding the last commit's commit record
        for magic, off, rid, *_ in walk_records(store, pack_id):
            if magic == HISTORY_MAGIC and split_history_id(rid)[0] == HIST_COMMIT \
                    and split_history_id(rid)[2] == t_last:
                victim, cut = store.path(pack_id), off + 30
    os.truncate(victim, cut)  # a crash while the pack was written: its tail torn
    shutil.rmtree(repo_dir / "index")

    r = anytime("check", "--repair")
    assert r.returncode == 3, r.stderr  # partial: rebuilt, but something is lost
    err = r.stderr.decode()
    assert "torn" in err and "not in the rebuilt index" in err, err
    after = picture(repo_dir)
    # volume b and every commit of a before the torn one are exact
    assert after["b"] == before["b"]
    assert after["a"]["commits"] == before["a"]["commits"][:-1]
    assert after["a"]["at"] == {t: v for t, v in before["a"]["at"].items() if t != t_last}
    assert after["a"]["labels"] == before["a"]["labels"]
    assert after["a"]["volume"]["horizon"] == before["a"]["commits"][-2][0]


def test_history_records_are_written_before_the_commit_point(anytime, tmp_path, monkeypatch):
    """Each commit's record is in a pack that the index lists: what the index holds,
    the packs hold."""
    history_repo(anytime, tmp_path, monkeypatch)
    repo_dir = tmp_path / "repo"
    store = LocalDirPackStore(str(repo_dir))
    found = {}
    for pack_id in store.list():
        for magic, _off, rid, *_ in walk_records(store, pack_id):
            kind, vol, t, _part, _nonce = (split_history_id(rid) if magic == HISTORY_MAGIC
                                           else (0,) * 5)
            if kind == HIST_COMMIT:
                found[(vol, t)] = pack_id
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo, repo.read_txn() as txn:
        listed = repo.committed_packs(txn)
        commits = {(v.id, t) for v in list_volumes(repo, txn)
                   for t, _ in timeline.commits(repo, txn, v.id)}
    assert set(found) == commits
    assert set(found.values()) <= listed
    assert json.loads(anytime("volumes", "--json", check=0).stdout)


def test_a_commit_killed_while_staged_stays_out_of_the_rebuilt_index(anytime, tmp_path,
                                                                      monkeypatch):
    """Its batches are in the packs, its commit record never was: the rebuild leaves it
    out, as the index did, and the next commit reads back."""
    import signal
    import subprocess
    import time

    from conftest import anytime_command
    from test_cli import _pending_marker

    history_repo(anytime, tmp_path, monkeypatch)
    repo_dir, a = tmp_path / "repo", tmp_path / "a"
    for i in range(3000):
        (a / f"n{i:04d}").write_text(f"new {i}")
    proc = subprocess.Popen([anytime_command(), "snapshot", str(a)],
                            env=dict(os.environ, ANYTIME_REPO=str(repo_dir),
                                     ANYTIME_STAGE_RECORDS="20"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _pending_marker(repo_dir) and time.monotonic() < deadline:
        assert proc.poll() is None, "the snapshot finished before it staged"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for i in range(0, 3000, 2):
        (a / f"n{i:04d}").unlink()
    snap(anytime, a)  # rolls the staged records back, then commits
    before = picture(repo_dir)
    shutil.rmtree(repo_dir / "index")
    anytime("check", "--repair", check=0)
    assert picture(repo_dir) == before
