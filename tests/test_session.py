"""A writer session (store/session.py): one writer lock and one open pack across many
commits; a session killed mid-way is cut back by the next writer; check and repair
agree with what was committed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import TEST_OPTIONS

from anytime.capture.scan import Scanner
from anytime.store import clock
from anytime.store.check import check
from anytime.store.errors import RepositoryLocked
from anytime.store.format import MAX_INSTANT
from anytime.store.repo import Repository
from anytime.store.session import WriterSession
from anytime.store.volumes import get_volume, volume_for_source
from anytime.vfs.view import View


def _commit(repo, session, src, vol_name="v"):
    vol = volume_for_source(repo, str(src), vol_name, clock.now_ns())
    rep = Scanner(repo, vol, os.fsencode(src), session=session).run({"kind": "test"})
    return rep.instant


def _read(repo, name, path, at=MAX_INSTANT) -> bytes:
    with repo.read_txn() as txn:
        vol = get_volume(repo, txn, name)
    view = View(repo, vol, at)
    e = view.lookup(path)
    return view.read(e, 0, e.size)


def _packs(repo_dir) -> list:
    return [p for _, _, files in os.walk(repo_dir / "packs") for p in files]


def test_many_commits_share_one_open_pack_and_each_reads_back(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Repository.init(str(tmp_path / "repo"))
    instants = []
    with Repository.open(str(tmp_path / "repo")) as repo:  # default pack target (64 MiB)
        with WriterSession(repo) as session:
            for i in range(30):
                (src / "f").write_bytes(f"version {i}\n".encode() * (i + 1))
                instants.append(_commit(repo, session, src))
                # readable by another reader right after each commit
                assert _read(repo, "v", b"f") == f"version {i}\n".encode() * (i + 1)
            assert session.packw.open_pack, "the pack stays open between commits"
        assert len(_packs(tmp_path / "repo")) == 1
        for i, t in enumerate(instants):
            assert _read(repo, "v", b"f", t) == f"version {i}\n".encode() * (i + 1)
        rep = check(repo)
        assert rep.problems == [], rep.problems


def test_a_commit_of_an_old_pack_seals_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Repository.init(str(tmp_path / "repo"))
    with Repository.open(str(tmp_path / "repo")) as repo:
        with WriterSession(repo, max_age=0.0) as session:
            for i in range(4):
                (src / "f").write_bytes(b"x" * (i + 1))
                _commit(repo, session, src)
        # the first commit opened a pack, the second found it too old and sealed it;
        # the third opened a new one, the fourth sealed it
        assert len(_packs(tmp_path / "repo")) == 2
        assert check(repo).problems == []


def test_the_session_holds_the_writer_lock_throughout(anytime, tmp_path, repo_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    anytime("init", check=0)
    with Repository.open(str(repo_dir)) as repo:
        with WriterSession(repo) as session:
            _commit(repo, session, src)
            r = anytime("snapshot", src, check=None)
            assert r.returncode == RepositoryLocked.exit_code, r.stderr
            _commit(repo, session, src)  # and still commits


def test_check_during_a_session_ignores_the_next_commits_bytes(anytime, tmp_path, repo_dir):
    """Bytes appended to the open pack for a commit not yet made are no problem."""
    src = tmp_path / "src"
    src.mkdir()
    anytime("init", check=0)
    with Repository.open(str(repo_dir)) as repo:
        with WriterSession(repo) as session:
            (src / "f").write_bytes(os.urandom(50_000))
            _commit(repo, session, src)
            vol = volume_for_source(repo, str(src), "v", clock.now_ns())
            b = session.builder(vol)
            b.store_chunk(os.urandom(70_000))  # appended, flushed by nothing yet
            session.packw.sync(keep_open=True)  # even durable, it is past the listed size
            r = anytime("check", "--json", check=None)  # another process, as users run it
            assert r.returncode == 0, r.stdout + r.stderr
            b.abort()


_KILLED = textwrap.dedent("""
    import os, sys, time
    from anytime.capture.scan import Scanner
    from anytime.store import clock
    from anytime.store.repo import Repository
    from anytime.store.session import WriterSession
    from anytime.store.volumes import volume_for_source
    repo_dir, src = sys.argv[1], sys.argv[2]
    with Repository.open(repo_dir) as repo, WriterSession(repo) as session:
        i = 0
        while True:
            with open(os.path.join(src, "f"), "wb") as f:
                f.write(b"%d\\n" % i * 1000)
            vol = volume_for_source(repo, src, "v", clock.now_ns())
            t = Scanner(repo, vol, os.fsencode(src), session=session).run({"kind": "test"})
            print(i, t.instant, flush=True)
            if i >= 5:  # then bytes of a commit never made: a chunk appended, flushed
                b = session.builder(vol)
                b.store_chunk(os.urandom(100_000))
                session.packw.sync(keep_open=True)
                print("tail", flush=True)
                time.sleep(60)
            i += 1
""")


def test_a_killed_session_is_cut_back_and_every_commit_reads_back(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    repo_dir = tmp_path / "repo"
    Repository.init(str(repo_dir))
    p = subprocess.Popen([sys.executable, "-c", _KILLED, str(repo_dir), str(src)],
                         stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        for line in p.stdout:
            if line.startswith("tail"):
                break
            i, t = line.split()
            committed.append((int(i), int(t)))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert len(committed) == 6
    (pack,) = _packs(repo_dir)
    path = next(repo_dir.glob(f"packs/*/{pack}"))
    size_killed = path.stat().st_size
    with Repository.open(str(repo_dir), TEST_OPTIONS) as repo:
        with repo.read_txn():
            pass
        rep = check(repo)  # the open pack's tail is past its listed size: not a problem
        assert rep.problems == [], rep.problems
        with repo.writer_lock():  # the next writer cuts the tail off
            pass
        assert path.stat().st_size < size_killed - 100_000
        rep = check(repo)
        assert rep.problems == [] and rep.warnings == [], (rep.problems, rep.warnings)
        for i, t in committed:
            assert _read(repo, "v", b"f", t) == b"%d\n" % i * 1000
        with WriterSession(repo) as session:  # and goes on writing
            (src / "f").write_bytes(b"after\n")
            _commit(repo, session, src)
        assert _read(repo, "v", b"f") == b"after\n"
        assert check(repo).problems == []


def test_a_rebuilt_index_has_every_commit_of_a_session(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    repo_dir = tmp_path / "repo"
    Repository.init(str(repo_dir))
    instants = []
    with Repository.open(str(repo_dir)) as repo, WriterSession(repo) as session:
        for i in range(5):
            (src / "f").write_bytes(b"%d" % i * 5000)
            instants.append(_commit(repo, session, src))
    shutil.rmtree(repo_dir / "index")
    r = subprocess.run([shutil.which("anytime") or os.path.join(os.path.dirname(
        sys.executable), "anytime"), "-r", str(repo_dir), "check", "--repair"],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with Repository.open(str(repo_dir)) as repo:
        for i, t in enumerate(instants):
            assert _read(repo, "v", b"f", t) == b"%d" % i * 5000


def test_a_timed_commit_gives_each_record_its_own_instant(tmp_path):
    """The shim's commits (docs/format.md I15): one commit, records at the instants of
    the operations they record; a view between two of them sees the first only."""
    from anytime.store.format import KIND_FILE, Entry

    src = tmp_path / "src"
    src.mkdir()
    Repository.init(str(tmp_path / "repo"))
    with Repository.open(str(tmp_path / "repo")) as repo:
        with WriterSession(repo) as session:
            vol = volume_for_source(repo, str(src), "v", clock.now_ns())
            Scanner(repo, vol, os.fsencode(src), session=session).run({"kind": "test"})
            b = session.builder(vol)  # (the volume record the scan kept current)
            base = vol.horizon
            for i, name in enumerate([b"a", b"b", b"c"]):
                e = Entry(KIND_FILE, mode=0o100644)
                e.file_id = b.new_file_id()
                e.size = 1
                ref = b.store_chunk(name)
                b.put_block_version(e.file_id, 0, ref, at=base + 10 + i * 10)
                b.put_entry(name, e, at=base + 10 + i * 10)
            t = b.commit({"kind": "test"})
            assert t >= base + 30
            with repo.read_txn() as txn:
                vol = get_volume(repo, txn, "v")
            for i, seen in enumerate([[b"a"], [b"a", b"b"], [b"a", b"b", b"c"]]):
                view = View(repo, vol, base + 10 + i * 10 + 5)
                assert [n for n, _ in view.listdir(b"")] == seen
                assert _read(repo, "v", seen[-1], base + 10 + i * 10) == seen[-1]
            assert View(repo, vol, base + 5).listdir(b"") == []
        rep = check(repo)
        assert rep.problems == [], rep.problems
        with WriterSession(repo) as session:
            b2 = session.builder(vol)
            with pytest.raises(ValueError):  # not after the horizon
                b2.put_entry(b"d", Entry(KIND_FILE), at=vol.horizon)
            b2.abort()
