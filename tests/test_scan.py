"""What a scan captures from trees that are not plain: pseudo-files whose size lies
(procfs, sysfs), unreadable files, mount points inside the tree, excludes, and an
interrupted first snapshot. End-to-end, through the installed command, on real kernel
files, real users, real mounts and real signals."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import anytime_command
from treeutil import snap, view_at

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind-mount")


@pytest.fixture
def repo(anytime):
    anytime("init", check=0)


@pytest.fixture
def binds():
    """``bind(source, target)`` bind-mounts a file or directory; undone at teardown."""
    done = []

    def bind(source, target) -> None:
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        done.append(target)

    yield bind
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], check=False)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- pseudo-files whose st_size is not their length ----------------------------------
#: (source, what its stat says): static kernel files, so two reads give the same bytes.
PSEUDO = {"version": "/proc/version",  # size 0, a hundred bytes
          "kallsyms": "/proc/kallsyms",  # size 0, megabytes: read on over many blocks
          "thp": "/sys/kernel/mm/transparent_hugepage/enabled"}  # size 4096, fewer bytes


@needs_root
@pytest.mark.parametrize("block_size", [None, "1024"])
def test_pseudo_files_are_stored_as_read(anytime, repo_dir, src_dir, binds, block_size):
    anytime("init", *(["--block-size", block_size] if block_size else []), check=0)
    (src_dir / "plain").write_bytes(b"plain\n")
    (src_dir / "empty").write_bytes(b"")
    (src_dir / "block").write_bytes(os.urandom(1 << 20))  # a multiple of the block size
    for name, source in PSEUDO.items():
        (src_dir / name).write_bytes(b"")
        binds(source, src_dir / name)
    want = {name: read(src_dir / name) for name in PSEUDO}
    assert os.stat(src_dir / "version").st_size == 0 and len(want["version"]) > 0
    assert len(want["kallsyms"]) > 3 << 20
    assert os.stat(src_dir / "thp").st_size > len(want["thp"]) > 0

    s = snap(anytime, src_dir)
    assert sorted(s["resized"]) == sorted(str(src_dir / n) for n in PSEUDO)
    assert s["bytes_read"] == sum(map(len, want.values())) + 6 + (1 << 20)
    for name in PSEUDO:
        assert anytime("cat", src_dir / name, check=0).stdout == want[name], name
    for name in ("plain", "empty", "block"):
        assert anytime("cat", src_dir / name, check=0).stdout == read(src_dir / name)
    with view_at(repo_dir, "src") as v:
        assert v.lookup(b"version").size == len(want["version"])  # the bytes stored
        assert v.lookup(b"thp").size == len(want["thp"])
    text = anytime("snapshot", src_dir, check=0).stdout.decode()
    assert "3 files read to another length than their size" in text
    assert str(src_dir / "version") in text


@needs_root
def test_a_sysfs_directory(anytime, repo, src_dir):
    """A real sysfs directory, as the kernel lists it: each readable file as read (the
    settings at its top; the counters below change between two reads)."""
    root = Path("/sys/kernel/mm/transparent_hugepage")
    s = json.loads(anytime("snapshot", root, "--json").stdout)
    assert s["resized"]
    for p in root.iterdir():
        if p.is_file() and not p.is_symlink() and os.access(p, os.R_OK):
            try:
                want = read(p)
            except OSError:
                continue  # write-only attributes: see the unreadable-file tests
            assert anytime("cat", p, check=0).stdout == want, p


def test_an_ordinary_copy_is_not_resized(anytime, repo, src_dir):
    """A copy of a pseudo-file is an ordinary file: its size is its length."""
    shutil.copyfile("/proc/version", src_dir / "version")
    s = snap(anytime, src_dir)
    assert s["resized"] == []
    assert anytime("cat", src_dir / "version", check=0).stdout == read("/proc/version")


# --- unreadable files ------------------------------------------------------------------
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the snapshot as user nobody")
def test_an_unreadable_file_is_recorded_unreadable_not_unchanged(anytime, world_dir,
                                                                 tmp_path):
    from test_mount import mounted

    tree, repo_path = world_dir / "tree", world_dir / "repo"
    tree.mkdir()
    repo_path.mkdir()
    f, secret = tree / "f", tree / "secret"
    f.write_bytes(b"version one\n")
    os.link(f, tree / "f2")  # a second link: never shows older content either
    secret.write_bytes(b"root only\n")
    os.chmod(secret, 0o600)  # root's: nobody never reads it
    for p in (tree, f, repo_path):
        os.chown(p, NOBODY, NOBODY)
    env = {"ANYTIME_REPO": str(repo_path), "HOME": str(world_dir)}

    def snap_as_nobody(code):
        r = anytime("snapshot", tree, "--json", prefix=AS_NOBODY, env=env, check=code)
        return json.loads(r.stdout)

    anytime("init", prefix=AS_NOBODY, env=env, check=0)
    s1 = snap_as_nobody(3)
    assert s1["unreadable"] == [{"path": str(secret), "reason": "Permission denied"}]
    assert s1["skipped"] == [] and s1["partial"] is True

    os.chmod(f, 0)  # nobody owns it but may no longer read it
    r = anytime("snapshot", tree, prefix=AS_NOBODY, env=env, check=3)
    err = r.stderr.decode()
    assert f"{f}: Permission denied" in err and "recorded as unreadable" in err
    assert str(secret) in err  # still unreadable: listed again

    # the content of the first snapshot is not passed off as current
    for path in (f, tree / "f2"):
        r = anytime("cat", path, env=env, check=16)
        assert str(path).encode() in r.stderr and b"could not be read" in r.stderr
    at1 = f"@{s1['instant_ns'] // 10**9}.{s1['instant_ns'] % 10**9:09d}"
    assert anytime("cat", f, "--at", at1, env=env, check=0).stdout == b"version one\n"
    log = json.loads(anytime("log", f, "--json", env=env, check=0).stdout)
    assert [row["change"] for row in log] == ["created", "unreadable"]
    assert log[1]["unreadable"] is True
    assert "unreadable" in anytime("log", f, env=env, check=0).stdout.decode()
    secret_log = json.loads(anytime("log", secret, "--json", env=env, check=0).stdout)
    assert [row["change"] for row in secret_log] == ["unreadable"]  # not one per snapshot
    assert b"----------" in anytime("ls", "-l", tree, env=env, check=0).stdout  # mode 000

    if os.path.exists("/dev/fuse") and shutil.which("fusermount3"):
        mp = world_dir / "mnt"
        mp.mkdir()
        logfile = tmp_path / "mount.log"
        with_env = functools.partial(anytime, env=env)
        with mounted(with_env, tree, mp, "--log", logfile) as m:
            assert os.stat(m / "latest" / "f").st_size == len(b"version one\n")  # metadata
            with pytest.raises(OSError) as e:
                (m / "latest" / "f").read_bytes()
            assert e.value.errno == 5  # EIO
            assert "tree:/f at " in logfile.read_text()
            assert "could not be read" in logfile.read_text()
            assert (m / at1 / "f").read_bytes() == b"version one\n"

    # readable again (as root, nothing about the files changed since): content recorded
    os.chmod(f, 0o644)
    r = anytime("snapshot", tree, "--json", env=env, check=0)
    assert json.loads(r.stdout)["unreadable"] == []
    assert anytime("cat", f, env=env, check=0).stdout == b"version one\n"
    assert anytime("cat", tree / "f2", env=env, check=0).stdout == b"version one\n"
    assert anytime("cat", secret, env=env, check=0).stdout == b"root only\n"
    log = json.loads(anytime("log", f, "--json", env=env, check=0).stdout)
    assert log[-1]["unreadable"] is False


# --- excludes and mount points ------------------------------------------------------------
def at(s: dict) -> str:
    return f"@{s['instant_ns'] // 10**9}.{s['instant_ns'] % 10**9:09d}"


def listed(anytime, path, *args) -> list[str]:
    return anytime("ls", path, *args, check=0).stdout.decode().split()


def test_excludes(anytime, repo, src_dir, tmp_path):
    for rel in ("a/x.o", "a/x.c", "a/node_modules/m.js", "node_modules/n.js", "b/c/d/x.tmp",
                "b/keep.tmp", "top.log", "a/top.log", "#hash", "!bang"):
        (src_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (src_dir / rel).write_text(rel)
    s1 = snap(anytime, src_dir)
    assert s1["excluded"] == 0
    patterns = tmp_path / "excludes"
    patterns.write_text(f"# build output\n*.o\n\n  node_modules  \n{src_dir}/top.log\n"
                        f"b/**/*.tmp\n\\!bang\n")
    s2 = snap(anytime, src_dir, "--exclude-file", patterns, "--exclude", "d")
    # x.o, both node_modules, /top.log, d (not walked), b/keep.tmp, !bang
    assert s2["excluded"] == 7
    assert sorted(listed(anytime, src_dir)) == ["#hash", "a", "b"]
    assert sorted(listed(anytime, src_dir / "a")) == ["top.log", "x.c"]  # anchored: only /top.log
    assert listed(anytime, src_dir / "b") == ["c"]  # keep.tmp too: '**' may be no directory
    assert listed(anytime, src_dir / "b" / "c") == []
    # as restic: the new commit shows the tree as captured with these excludes; earlier
    # instants keep what they had
    assert s2["deleted"] == 10  # the 7, and the 3 files under node_modules and d
    assert anytime("cat", src_dir / "a" / "x.o", "--at", at(s1), check=0).stdout == b"a/x.o"
    anytime("cat", src_dir / "a" / "x.o", check=13)
    # a re-run with the same excludes changes nothing
    s3 = snap(anytime, src_dir, "--exclude-file", patterns, "--exclude", "d")
    assert (s3["changed"], s3["deleted"]) == (0, 0)


def test_bad_excludes_change_nothing(anytime, repo, src_dir, tmp_path):
    (src_dir / "f").write_text("f")
    r = anytime("snapshot", src_dir, "--exclude", "!f", check=2)
    assert b"negation" in r.stderr
    r = anytime("snapshot", src_dir, "--exclude-file", tmp_path / "missing", check=2)
    assert b"cannot read the exclude file" in r.stderr and b"missing" in r.stderr
    r = anytime("snapshot", src_dir, "--exclude", "/", check=2)
    assert json.loads(anytime("volumes", "--json", check=0).stdout) == []


@needs_root
def test_one_file_system(anytime, repo, src_dir, loop_fs, binds):
    other = loop_fs(8)
    (other / "elsewhere.bin").write_bytes(os.urandom(100_000))
    (src_dir / "here.txt").write_text("here\n")
    (src_dir / "disk").mkdir()
    binds(other, src_dir / "disk")  # another filesystem mounted inside the tree
    crossed = snap(anytime, src_dir)
    assert crossed["mounts_skipped"] == []
    assert "elsewhere.bin" in listed(anytime, src_dir / "disk")

    s = snap(anytime, src_dir, "-x")
    assert s["mounts_skipped"] == [{"path": str(src_dir / "disk"),
                                    "reason": "another filesystem (--one-file-system)"}]
    assert listed(anytime, src_dir / "disk") == []  # the mount point, kept empty
    assert sorted(listed(anytime, src_dir)) == ["disk", "here.txt"]
    assert "elsewhere.bin" in listed(anytime, src_dir / "disk", "--at", at(crossed))
    text = anytime("snapshot", src_dir, "--one-file-system", check=0).stdout.decode()
    assert "1 mount point not crossed" in text and str(src_dir / "disk") in text


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                    reason="needs FUSE to mount a volume inside its own tree")
def test_an_anytime_mount_inside_the_tree_is_never_captured(anytime, repo, src_dir):
    from test_mount import mounted

    (src_dir / "data.bin").write_bytes(os.urandom(1 << 20))
    (src_dir / "tt").mkdir()
    first = snap(anytime, src_dir)
    with mounted(anytime, src_dir, src_dir / "tt") as mp:
        assert (mp / "latest" / "data.bin").stat().st_size == 1 << 20
        (src_dir / "new.txt").write_text("new\n")
        s = snap(anytime, src_dir)  # without -x
        assert s["mounts_skipped"] == [{"path": str(src_dir / "tt"),
                                        "reason": "an anytime mount (never captured)"}]
        assert s["bytes_read"] == 4  # new.txt only: nothing through the mount
        assert s["files"] == 2
    assert listed(anytime, src_dir / "tt") == []
    assert first["bytes_read"] == 1 << 20


# --- an interrupted first snapshot ----------------------------------------------------------
def pack_bytes(repo_dir) -> int:
    return sum(p.stat().st_size for p in (repo_dir / "packs").rglob("*.pack"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_first_snapshot_keeps_its_blocks(anytime, repo, repo_dir, src_dir, sig):
    files = {}
    for d in range(4):
        (src_dir / f"d{d}").mkdir()
        for i in range(25):
            files[f"d{d}/f{i:02d}"] = data = os.urandom(2 << 20)  # 200 MB, incompressible
            (src_dir / f"d{d}" / f"f{i:02d}").write_bytes(data)
    total = sum(map(len, files.values()))
    env = dict(os.environ, ANYTIME_REPO=str(repo_dir), ANYTIME_PACK_TARGET=str(4 << 20))
    # SIGINT as Ctrl-C gives it, even when the tests run in a background job, which
    # starts with SIGINT ignored (and Python then keeps it ignored)
    proc = subprocess.Popen([anytime_command(), "snapshot", str(src_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # interrupt it once most of the tree is stored, well before its commit
    while pack_bytes(repo_dir) < total * 6 // 10 and proc.poll() is None:
        time.sleep(0.002)
    at_signal = pack_bytes(repo_dir)
    assert proc.poll() is None, "the snapshot finished before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"nothing was committed" in err and b"stored so far are kept" in err
    assert b"Traceback" not in err
    assert json.loads(anytime("volumes", "--json", check=0).stdout)[0]["commits"] == 0
    anytime("check", check=0)

    s = json.loads(anytime("snapshot", src_dir, "--json", env={"ANYTIME_PACK_TARGET": str(4 << 20)},
                           check=0).stdout)
    # what was in packs at the signal is kept and found again, not stored again
    assert s["bytes_new"] <= total - at_signal + (1 << 20)
    assert s["blocks_dup"] >= at_signal // (1 << 20) - 1
    assert s["files"] == 100 and s["files_read"] == 100
    for rel in ("d0/f00", "d1/f13", "d3/f24"):
        assert anytime("cat", src_dir / rel, check=0).stdout == files[rel]
    anytime("check", "--read-data", check=0)


def test_a_name_too_long_for_an_entry_key_is_skipped_not_fatal(tmp_path, src_dir, monkeypatch):
    """A name longer than MAX_NAME (482 bytes: only a FUSE source can make one, NAME_MAX
    is 255 elsewhere; lowered here) is reported and skipped, a partial snapshot, and
    everything else is committed."""
    from conftest import TEST_OPTIONS

    from anytime.capture import scan, snapshot
    from anytime.store.repo import Repository

    monkeypatch.setattr(scan, "MAX_NAME", 12)
    (src_dir / "ok.txt").write_text("kept")
    (src_dir / ("x" * 13)).write_text("too long a name")
    with Repository.init(str(tmp_path / "r"), options=TEST_OPTIONS) as repo:
        report = snapshot(repo, str(src_dir))
    assert report.committed and report.partial
    assert [(os.path.basename(p), why) for p, why in report.skipped] == [
        ("x" * 13, "its name is 13 bytes long; the index holds names of up to 12 bytes")]
    with view_at(tmp_path / "r", "src") as v:
        assert [n for n, _ in v.listdir(b"")] == [b"ok.txt"]


# --- batches of small files and large files in flight --------------------------------
def test_a_batch_stores_what_it_holds_past_batch_bytes(tmp_path, src_dir, monkeypatch):
    """A worker's batch of small files stores their chunks together, but never holds
    more than BATCH_BYTES of them unstored (plus the file that passed it): past that it
    stores what it holds and reads on. Every file is stored, in its own chunk."""
    from conftest import TEST_OPTIONS

    from anytime.capture import reader, scan, snapshot
    from anytime.store.repo import Repository
    from anytime.store.writer import CommitBuilder

    monkeypatch.setattr(reader, "BATCH_BYTES", 10_000)
    monkeypatch.setattr(scan, "BATCH_FILES", 64)  # all 40 in one batch
    files = {f"f{i:02}": os.urandom(3000 + i) for i in range(40)}
    for name, data in files.items():
        (src_dir / name).write_bytes(data)
    time.sleep(1.1)  # not recent: a recent file is read twice and stored at once
    calls = []
    store_chunks = CommitBuilder.store_chunks

    def spy(self, chunks):
        calls.append([len(c) for c in chunks])
        return store_chunks(self, chunks)

    monkeypatch.setattr(CommitBuilder, "store_chunks", spy)
    with Repository.init(str(tmp_path / "r"), options=TEST_OPTIONS) as repo:
        report = snapshot(repo, str(src_dir), workers=1)
    assert report.committed and report.files_read == 40
    assert sorted(n for c in calls for n in c) == sorted(map(len, files.values()))
    assert len(calls) >= 40 * 3000 // 13_100  # 10,000 bytes and one file more each
    assert all(sum(c) - c[-1] < 10_000 for c in calls)
    with view_at(tmp_path / "r", "src") as v:
        for name, data in files.items():
            e = v.lookup(name.encode())
            assert v.read(e, 0, e.size) == data

