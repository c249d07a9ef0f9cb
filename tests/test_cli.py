"""End-to-end tests: the installed ``anytime`` command on real trees."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import anytime_command
from treeutil import at_epoch, snap, view_at

from anytime.store import timeline
from anytime.store.format import CHUNK_MAX, FLAG_DENSE, HOLE_ID, MAX_INSTANT
from anytime.store.repo import Repository

NS = 10**9
NOBODY = 65534


# --- helpers ----------------------------------------------------------------------------
def js(r: subprocess.CompletedProcess):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def at_arg(instant_ns: int) -> str:
    return f"--at={at_epoch(instant_ns)}"


def pack_files(repo_dir) -> set[bytes]:
    """Pack ids of the pack files on disk."""
    out = set()
    for _, _, files in os.walk(Path(repo_dir) / "packs"):
        out |= {bytes.fromhex(f[:-5]) for f in files if f.endswith(".pack")}
    return out


def referenced_packs(repo_dir) -> set[bytes]:
    """Pack ids the index knows (committed); every block location points into these."""
    with Repository.open(str(repo_dir)) as repo, repo.read_txn() as txn:
        known = repo.committed_packs(txn)
        in_blocks = {bytes(v[:16]) for _, v in txn.cursor(db=repo.dbs[b"blocks"])}
    assert in_blocks <= known
    return known


def disk_usage(path) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(d, f)).st_blocks * 512
    return total


@pytest.fixture
def repo(anytime):
    """An initialised repository (via the CLI)."""
    anytime("init", check=0)


# --- the first commands -------------------------------------------------------------------
def test_init_snapshot_volumes_log_ls_cat(anytime, repo, repo_dir, src_dir):
    (src_dir / "hello.txt").write_bytes(b"hello\n")
    (src_dir / "sub").mkdir()
    (src_dir / "sub" / "deep.bin").write_bytes(bytes(range(256)) * 1000)
    os.symlink("hello.txt", src_dir / "link")
    s1 = snap(anytime, src_dir, "--label", "first")
    assert s1["volume"] == "src" and s1["files"] == 2 and s1["files_read"] == 2
    assert not s1["partial"]

    vols = js(anytime("volumes", "--json"))
    assert [(v["name"], v["source"], v["commits"]) for v in vols] == [("src", str(src_dir), 1)]
    assert b"src" in anytime("volumes", check=0).stdout

    assert anytime("ls", src_dir, check=0).stdout == b"hello.txt\nlink\nsub\n"
    assert anytime("ls", "src:sub", check=0).stdout == b"deep.bin\n"
    assert anytime("ls", "src", check=0).stdout == b"hello.txt\nlink\nsub\n"
    long = anytime("ls", "-l", src_dir, check=0).stdout.decode()
    assert "-rw-" in long and "link -> hello.txt" in long and long.startswith("-")
    assert anytime("cat", src_dir / "hello.txt", check=0).stdout == b"hello\n"
    assert anytime("cat", "src:/sub/deep.bin", check=0).stdout == bytes(range(256)) * 1000
    assert anytime("cat", src_dir / "link", check=0).stdout == b"hello.txt"

    time.sleep(0.01)
    (src_dir / "hello.txt").write_bytes(b"hello again\n")
    (src_dir / "sub" / "deep.bin").unlink()
    s2 = snap(anytime, src_dir)
    assert s2["files_read"] == 1 and s2["deleted"] == 1

    commits = js(anytime("log", src_dir, "--json"))
    assert [c["instant_ns"] for c in commits] == [s1["instant_ns"], s2["instant_ns"]]
    assert commits[0]["labels"] == ["first"]
    versions = js(anytime("log", src_dir / "hello.txt", "--json"))
    assert [(v["change"], v["size"]) for v in versions] == [("created", 6), ("modified", 12)]
    deep = js(anytime("log", "src:sub/deep.bin", "--json"))
    assert [v["change"] for v in deep] == ["created", "deleted"]
    assert b"created" in anytime("log", src_dir / "hello.txt", check=0).stdout

    # the past, by instant, by label, and the present
    assert anytime("cat", src_dir / "hello.txt", at_arg(s1["instant_ns"]),
                   check=0).stdout == b"hello\n"
    assert anytime("cat", src_dir / "hello.txt", "--at", "first", check=0).stdout == b"hello\n"
    assert anytime("cat", src_dir / "hello.txt", "--at", s1["instant"],
                   check=0).stdout == b"hello\n"
    assert anytime("cat", src_dir / "hello.txt", at_arg(s2["instant_ns"] - 1),
                   check=0).stdout == b"hello\n"
    assert anytime("cat", src_dir / "hello.txt", check=0).stdout == b"hello again\n"
    assert anytime("ls", "src:sub", "--at", "first", check=0).stdout == b"deep.bin\n"
    assert anytime("ls", "src:sub", check=0).stdout == b""


def test_default_repository_location(anytime, tmp_path, src_dir):
    """Without --repo or $ANYTIME_REPO the per-user default ($XDG_DATA_HOME) is used."""
    (src_dir / "f").write_bytes(b"x")
    no_env = {"ANYTIME_REPO": None}
    anytime("init", env=no_env, check=0)
    assert (Path(os.environ["XDG_DATA_HOME"]) / "anytime" / "repo" / "config").exists()
    anytime("snapshot", src_dir, env=no_env, check=0)
    assert anytime("cat", src_dir / "f", env=no_env, check=0).stdout == b"x"
    a, b = tmp_path / "a", tmp_path / "b"
    anytime("init", "--repo", a, check=0)
    anytime("--repo", b, "init", check=0)  # before or after the command
    for other in (a, b):
        assert (other / "config").exists()
        r = anytime("volumes", "--repo", other, "--json", env=no_env, check=0)
        assert json.loads(r.stdout) == []
    r = anytime("init", env=no_env, check=10)  # exists already
    assert b"already exists" in r.stderr


def test_fifos_and_devices_are_metadata(anytime, repo, repo_dir, src_dir):
    os.mkfifo(src_dir / "fifo")
    if os.geteuid() == 0:
        os.mknod(src_dir / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    s = snap(anytime, src_dir)
    assert s["files_read"] == 0  # reading a fifo would hang; it is metadata only
    long = anytime("ls", "-l", src_dir, check=0).stdout
    assert b"prw-" in long
    with view_at(repo_dir, "src") as v:
        assert stat.S_ISFIFO(v.lookup(b"fifo").mode)
        if os.geteuid() == 0:
            e = v.lookup(b"null")
            assert stat.S_ISCHR(e.mode) and e.rdev == os.makedev(1, 3)


# --- hostile names ------------------------------------------------------------------------
HOSTILE = [b"\xff\xfe latin-1 \xe9", b"new\nline", b"with space", b"-leading-dash", b"--help",
           b"L" * 255, b"tab\tand\rcr", b"colon:in:name", b"back\\slash", b"\x01\x7f",
           b"* ? [glob]", b"'quote\""]


def test_hostile_names_come_back_exactly(anytime, repo, src_dir):
    root = os.fsencode(src_dir)
    contents = {}
    for i, name in enumerate(HOSTILE):
        data = f"content {i}\n".encode() + name
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        contents[name] = data
    nested = os.path.join(root, b"dir \xff\nx", b"-sub")
    os.makedirs(nested)
    with open(os.path.join(nested, b"\xc3(.txt"), "wb") as f:
        f.write(b"nested")
    snap(anytime, src_dir)

    listed = anytime("ls", src_dir, check=0).stdout
    assert listed == b"".join(n + b"\n" for n in sorted([*HOSTILE, b"dir \xff\nx"]))
    for name, data in contents.items():
        assert anytime("cat", os.path.join(root, name), check=0).stdout == data, name
        assert anytime("cat", b"src:" + name, check=0).stdout == data, name
    assert anytime("cat", os.path.join(nested, b"\xc3(.txt"), check=0).stdout == b"nested"
    assert anytime("cat", b"src:/dir \xff\nx/-sub/\xc3(.txt", check=0).stdout == b"nested"
    assert anytime("ls", nested, check=0).stdout == b"\xc3(.txt\n"
    long = anytime("ls", "-l", nested, check=0).stdout
    assert long.endswith(b" \xc3(.txt\n")


def test_a_renamed_file_keeps_its_file_id(anytime, repo, repo_dir, src_dir):
    """The stat cache follows a rename by inode: no new file id, nothing read again."""
    data = os.urandom(200_000)
    (src_dir / "old.bin").write_bytes(data)
    (src_dir / "keep.txt").write_text("stays")
    snap(anytime, src_dir)
    with view_at(repo_dir, "src") as v:
        fid = v.lookup(b"old.bin").file_id
    os.rename(src_dir / "old.bin", src_dir / "new.bin")
    s = snap(anytime, src_dir)
    assert s["bytes_read"] == len(data)  # read to check it, but
    assert js(anytime("log", "src", "--json"))[-1]["new_bytes"] == 0  # nothing stored
    with view_at(repo_dir, "src") as v:
        assert v.lookup(b"new.bin").file_id == fid
        assert v.lookup(b"old.bin") is None
    assert anytime("cat", src_dir / "new.bin", check=0).stdout == data


# --- hardlinks ----------------------------------------------------------------------------
def test_hardlinks_are_recorded_as_links(anytime, repo, repo_dir, src_dir):
    data = os.urandom(300_000)
    (src_dir / "a").write_bytes(data)
    (src_dir / "d").mkdir()
    os.link(src_dir / "a", src_dir / "b")
    os.link(src_dir / "a", src_dir / "d" / "c")
    s = snap(anytime, src_dir)
    assert s["files_read"] == 1, "a hardlinked file is read once"
    commits = js(anytime("log", "src", "--json"))
    assert commits[-1]["new_bytes"] == len(data)
    with view_at(repo_dir, "src") as v:
        ids = {v.lookup(p).file_id for p in (b"a", b"b", b"d/c")}
        assert len(ids) == 1
    long = anytime("ls", "-l", src_dir, check=0).stdout.splitlines()
    assert all(line.split()[1] == b"3" for line in long if line.startswith(b"-"))
    for p in ("a", "b", "d/c"):
        assert anytime("cat", src_dir / p, check=0).stdout == data

    # writing through one link changes them all
    with open(src_dir / "b", "r+b") as f:
        f.write(b"CHANGED")
    snap(anytime, src_dir)
    for p in ("a", "b", "d/c"):
        assert anytime("cat", src_dir / p, check=0).stdout == b"CHANGED" + data[7:]


# --- sparse files -------------------------------------------------------------------------
def test_sparse_file(anytime, repo, repo_dir, src_dir):
    size = 96 * 2**20
    head, tail = os.urandom(200_000), os.urandom(50_000)
    path = src_dir / "sparse.img"
    with open(path, "wb") as f:
        f.write(head)
        f.seek(40 * 2**20)
        f.write(tail)
        f.truncate(size)
    assert os.stat(path).st_blocks * 512 < size // 10, "the filesystem did not make a hole"
    snap(anytime, src_dir)
    out = anytime("cat", path, check=0).stdout
    assert len(out) == size
    assert out == path.read_bytes()
    assert disk_usage(repo_dir) < size // 20
    with view_at(repo_dir, "src") as v:
        e = v.lookup(b"sparse.img")
        _, ids = v.block_ids(e, 0, e.size)
        data_blocks = [i for i, b in enumerate(ids) if b != HOLE_ID]
        bs = v.bs
        want = set(range(0, (len(head) - 1) // bs + 1)) | set(
            range(40 * 2**20 // bs, (40 * 2**20 + len(tail) - 1) // bs + 1))
        assert set(data_blocks) == want
        with v.repo.read_txn() as txn:
            stored = list(timeline.block_versions(v.repo, txn, v.vol.id, e.file_id))
        assert len(stored) == len(want), "holes take no block versions"
        assert not e.flags & FLAG_DENSE, "a file with holes is not marked dense"


# --- xattrs and ACLs -----------------------------------------------------------------------
def test_xattrs_are_captured(anytime, repo, repo_dir, src_dir):
    f = src_dir / "f"
    f.write_bytes(b"x")
    (src_dir / "d").mkdir()
    try:
        os.setxattr(f, "user.comment", b"\xff\x00binary value")
        os.setxattr(f, "user.empty", b"")
        os.setxattr(src_dir / "d", "user.dir", b"on a directory")
    except OSError as e:
        pytest.skip(f"the filesystem of {src_dir} refuses user xattrs: {e}")
    snap(anytime, src_dir)
    with view_at(repo_dir, "src") as v:
        x = v.lookup(b"f").xattrs
        assert x[b"user.comment"] == b"\xff\x00binary value"
        assert x[b"user.empty"] == b""
        assert v.lookup(b"d").xattrs[b"user.dir"] == b"on a directory"
    # a changed xattr (ctime changes) is a new version
    os.setxattr(f, "user.comment", b"second")
    snap(anytime, src_dir)
    with view_at(repo_dir, "src") as v:
        assert v.lookup(b"f").xattrs[b"user.comment"] == b"second"


@pytest.mark.skipif(shutil.which("setfacl") is None,
                    reason="setfacl (Debian package 'acl') is not installed")
def test_posix_acl_is_captured(anytime, repo, repo_dir, src_dir):
    f = src_dir / "f"
    f.write_bytes(b"x")
    (src_dir / "d").mkdir()
    r = subprocess.run(["setfacl", "-m", "u:nobody:rw", str(f)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"setfacl failed on this filesystem: {r.stderr.decode().strip()}")
    subprocess.run(["setfacl", "-d", "-m", "g:nogroup:rx", str(src_dir / "d")], check=True)
    want_access = os.getxattr(f, "system.posix_acl_access")
    want_default = os.getxattr(src_dir / "d", "system.posix_acl_default")
    snap(anytime, src_dir)
    with view_at(repo_dir, "src") as v:
        assert v.lookup(b"f").xattrs[b"system.posix_acl_access"] == want_access
        assert v.lookup(b"d").xattrs[b"system.posix_acl_default"] == want_default


# --- an unreadable file ------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the snapshot as user nobody")
def test_unreadable_file_gives_a_partial_snapshot(anytime, world_dir):
    tree, repo_path = world_dir / "tree", world_dir / "repo"
    tree.mkdir()
    repo_path.mkdir()  # init accepts an empty directory; nobody may write this one
    os.chown(repo_path, NOBODY, NOBODY)
    (tree / "ok1").write_bytes(b"one")
    (tree / "sub").mkdir()
    (tree / "sub" / "ok2").write_bytes(b"two")
    for p in (tree, tree / "ok1", tree / "sub", tree / "sub" / "ok2"):
        os.chown(p, NOBODY, NOBODY)
    secret = tree / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0)
    locked = tree / "locked"
    locked.mkdir()
    (locked / "inside").write_bytes(b"hidden")
    os.chmod(locked, 0)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {"ANYTIME_REPO": str(repo_path), "HOME": str(world_dir)}

    anytime("init", prefix=as_nobody, env=env, check=0)
    r = anytime("snapshot", tree, prefix=as_nobody, env=env, check=3)
    err = r.stderr.decode()
    assert str(secret) in err and "ermission denied" in err
    assert str(locked) in err
    assert "partial" in err and "recorded as unreadable" in err

    assert anytime("cat", tree / "ok1", env=env, check=0).stdout == b"one"
    assert anytime("cat", tree / "sub" / "ok2", env=env, check=0).stdout == b"two"
    listed = anytime("ls", tree, env=env, check=0).stdout.split(b"\n")
    assert b"ok1" in listed and b"sub" in listed
    assert b"secret" in listed  # recorded, with its metadata, as unreadable
    log = js(anytime("log", tree, "--json", env=env))
    assert log[-1]["partial"] is True
    r = anytime("cat", tree / "secret", env=env, check=16)
    assert str(secret).encode() in r.stderr and b"could not be read" in r.stderr


# --- a file rewritten during the scan ----------------------------------------------------
WRITER = r"""
import os, sys, time
path, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_WRONLY)
value = 0
open(path + ".started", "w").close()
while True:
    value = value % 254 + 1  # 1..254; the initial state is 255, none is all zeros
    state = bytes([value]) * size
    if mode == "burst":   # the whole state in one write, then a pause
        os.pwrite(fd, state, 0)
        time.sleep(0.02)
    else:                 # continuously, 1 MiB at a time
        for off in range(0, size, 1 << 20):
            os.pwrite(fd, state[off:off + (1 << 20)], off)
"""


def held_states(data: bytes) -> list[tuple[int, int]]:
    """(value, length) runs of ``data``."""
    runs, i = [], 0
    while i < len(data):
        j = len(data) - len(data[i:].lstrip(bytes([data[i]])))
        runs.append((data[i], j - i))
        i = j
    return runs


def is_a_state_the_file_held(data: bytes) -> bool:
    """The WRITER rewrites front to back, so at any instant the file holds one value, or
    the next value on a prefix and the previous one after it. A read torn across two
    states shows other patterns (an old prefix, or several runs)."""
    runs = held_states(data)
    if len(runs) == 1:
        return True
    return len(runs) == 2 and runs[0][0] == runs[1][0] % 254 + 1


@pytest.mark.parametrize("mode", ["chunks", "burst"])
def test_file_rewritten_during_scan_is_never_a_silent_mix(anytime, repo, src_dir, mode):
    """Each version is flagged unstable or holds what the file held at one instant.

    (A writer between two write calls, or preempted inside one, leaves the file holding
    the next state on a prefix: that is the file's real content at that instant.)
    """
    size = 16 * 2**20
    big = src_dir / "big"
    big.write_bytes(b"\xff" * size)
    (src_dir / "calm").write_bytes(b"calm")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(big), str(size), mode])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(str(big) + ".started") and time.monotonic() < deadline:
            time.sleep(0.01)
        os.unlink(str(big) + ".started")
        for _ in range(6):
            snap(anytime, src_dir)
            assert writer.poll() is None, "the writer must run through every snapshot"
    finally:
        writer.kill()
        writer.wait()
    versions = js(anytime("log", big, "--json"))
    assert len(versions) >= 2
    for v in versions:
        if v["unstable"]:
            continue  # flagged: best-effort content is allowed
        data = anytime("cat", big, at_arg(v["instant_ns"]), check=0).stdout
        assert len(data) == size
        assert is_a_state_the_file_held(data), (
            f"{v['instant']}: a read torn across states was recorded as stable: "
            f"(value, length) runs {held_states(data)[:8]}")
    assert anytime("cat", src_dir / "calm", check=0).stdout == b"calm"


# --- kill -9 during a snapshot --------------------------------------------------------------
def test_kill_9_during_snapshot(anytime, repo, repo_dir, src_dir):
    (src_dir / "early.txt").write_bytes(b"early commit")
    (src_dir / "keep").mkdir()
    (src_dir / "keep" / "k").write_bytes(b"k" * 1000)
    s1 = snap(anytime, src_dir)
    committed = referenced_packs(repo_dir)
    assert pack_files(repo_dir) == committed

    big = src_dir / "big"
    big.mkdir()
    blobs = {}
    for i in range(240):
        blobs[i] = os.urandom(256 * 1024)
        (big / f"f{i:03d}").write_bytes(blobs[i])
    (src_dir / "early.txt").write_bytes(b"changed in the killed commit")

    env = dict(os.environ, ANYTIME_REPO=str(repo_dir))
    proc = subprocess.Popen([anytime_command(), "snapshot", str(src_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill it in the middle: once it has written a few packs (a fraction of a second)
    deadline = time.monotonic() + 20
    while len(pack_files(repo_dir) - committed) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the snapshot finished before it could be killed; grow the tree"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftover = pack_files(repo_dir) - committed
    assert leftover, "the killed snapshot should have left pack files behind"
    assert referenced_packs(repo_dir) == committed

    # every earlier commit is intact and readable
    vols = js(anytime("volumes", "--json"))
    assert vols[0]["commits"] == 1
    assert anytime("cat", src_dir / "early.txt", check=0).stdout == b"early commit"
    assert anytime("cat", src_dir / "keep" / "k", check=0).stdout == b"k" * 1000
    assert anytime("ls", src_dir, at_arg(s1["instant_ns"]), check=0).stdout == \
        b"early.txt\nkeep\n"

    # a re-run completes and reclaims the leftover packs
    s2 = snap(anytime, src_dir)
    assert s2["files"] == 242
    on_disk, known = pack_files(repo_dir), referenced_packs(repo_dir)
    assert on_disk == known
    assert not (leftover & on_disk)
    assert anytime("cat", src_dir / "early.txt", check=0).stdout == b"changed in the killed commit"
    for i in (0, 119, 239):
        assert anytime("cat", big / f"f{i:03d}", check=0).stdout == blobs[i]
    assert anytime("cat", src_dir / "early.txt", at_arg(s1["instant_ns"]),
                   check=0).stdout == b"early commit"


def _pending_marker(repo_dir) -> bool:
    """Whether the index holds a staged commit's marker (read-only, beside the writer)."""
    import lmdb

    from anytime.store.format import DB_META, PENDING_PREFIX
    env = lmdb.open(str(repo_dir / "index"), readonly=True, max_dbs=16, lock=True)
    try:
        with env.begin() as txn:
            cur = txn.cursor(db=env.open_db(DB_META, txn=txn, create=False))
            return cur.set_range(PENDING_PREFIX) and cur.key().startswith(PENDING_PREFIX)
    finally:
        env.close()


def test_kill_9_while_a_large_commit_is_staged(anytime, repo, repo_dir, src_dir):
    """A commit staged in many transactions (ANYTIME_STAGE_RECORDS) and killed between
    them: the staged records never show, and the next writer removes them."""
    (src_dir / "a").mkdir()
    for i in range(5):
        (src_dir / "a" / f"old{i}").write_text(f"old {i}")
    s1 = snap(anytime, src_dir)
    for i in range(3000):  # 9,000 records: 450 staged transactions of 20
        (src_dir / "a" / f"new{i:04d}").write_text(f"new {i}")
    env = dict(os.environ, ANYTIME_REPO=str(repo_dir), ANYTIME_STAGE_RECORDS="20")
    proc = subprocess.Popen([anytime_command(), "snapshot", str(src_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _pending_marker(repo_dir) and time.monotonic() < deadline:
        assert proc.poll() is None, "the snapshot finished before it staged; grow the tree"
        time.sleep(0.002)
    assert proc.poll() is None, "the snapshot finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _pending_marker(repo_dir)

    # readers see the last commit only: listings, log, the mount's versions come later
    want = b"".join(f"old{i}\n".encode() for i in range(5))
    assert anytime("ls", src_dir / "a", check=0).stdout == want
    assert js(anytime("volumes", "--json"))[0]["commits"] == 1
    assert anytime("log", src_dir / "a" / "new0000", check=None).returncode != 0
    assert js(anytime("find", "new0*", "--json", check=0)) == []
    assert len(js(anytime("find", "old*", "--json", check=0))) == 5
    with view_at(repo_dir, "src") as v:
        assert v.instant == MAX_INSTANT and v.at == s1["instant_ns"]

    s2 = snap(anytime, src_dir)  # the next writer rolls back, then commits
    assert not _pending_marker(repo_dir)
    assert s2["files"] == 3005
    assert anytime("ls", src_dir / "a", check=0).stdout.count(b"\n") == 3005
    assert anytime("cat", src_dir / "a" / "new2999", check=0).stdout == b"new 2999"
    assert [r["change"] for r in js(anytime("log", src_dir / "a" / "new0000", "--json"))] \
        == ["created"]
    assert len(js(anytime("find", "new0*", "--json", check=0))) == 1000
    assert b"no problems found" in anytime("check", check=0).stdout


# --- incremental capture --------------------------------------------------------------------
@pytest.mark.parametrize("bs", [64 * 1024, 1024 * 1024])
def test_changed_file_stores_only_the_chunks_around_the_change(anytime, src_dir, bs):
    """Content-defined chunks: a byte changed in place, or bytes appended, store about
    one chunk, whatever the block size (blocks only index the chunks)."""
    anytime("init", "--block-size", str(bs), check=0)
    assert js(anytime("volumes", "--json")) == []
    data = bytearray(os.urandom(24 << 20))  # a large file: read as it is cut
    f = src_dir / "data.bin"
    f.write_bytes(data)
    (src_dir / "other").write_bytes(os.urandom(5000))
    snap(anytime, src_dir)
    assert js(anytime("volumes", "--json"))[0]["block_size"] == bs

    data[10 << 20 | 77] ^= 1  # one byte, in place
    f.write_bytes(data)
    s = snap(anytime, src_dir)
    assert s["files_read"] == 1
    last = js(anytime("log", "src", "--json"))[-1]
    assert 0 < last["new_bytes"] <= 2 * CHUNK_MAX
    assert anytime("cat", f, check=0).stdout == data

    extra = os.urandom(1000)
    with open(f, "ab") as fh:  # append: the last chunk again, and the new bytes
        fh.write(extra)
    snap(anytime, src_dir)
    last = js(anytime("log", "src", "--json"))[-1]
    assert 1000 < last["new_bytes"] <= CHUNK_MAX + 1000
    assert anytime("cat", f, check=0).stdout == data + extra


def test_unchanged_rescan_reads_no_files(anytime, repo, src_dir):
    for i in range(30):
        (src_dir / f"f{i}").write_bytes(os.urandom(3000))
    (src_dir / "d").mkdir()
    (src_dir / "d" / "x").write_bytes(b"x")
    first = snap(anytime, src_dir)
    assert first["files_read"] == 31
    again = snap(anytime, src_dir)
    assert again["files_read"] == 0 and again["bytes_read"] == 0
    assert again["changed"] == 0 and again["deleted"] == 0
    assert again["files"] == 31


# --- errors --------------------------------------------------------------------------------
def test_cat_of_a_path_absent_at_t(anytime, repo, src_dir):
    (src_dir / "old").write_bytes(b"old")
    s1 = snap(anytime, src_dir)
    (src_dir / "new").write_bytes(b"new")
    (src_dir / "old").unlink()
    s2 = snap(anytime, src_dir)
    r = anytime("cat", src_dir / "new", at_arg(s1["instant_ns"]), check=13)
    assert b"does not exist" in r.stderr and b"anytime log" in r.stderr
    assert r.stdout == b""
    r = anytime("cat", src_dir / "old", at_arg(s2["instant_ns"]), check=13)
    assert b"does not exist" in r.stderr
    r = anytime("ls", src_dir / "old", check=13)
    assert b"does not exist" in r.stderr
    r = anytime("cat", src_dir, check=13)  # a directory
    assert b"directory" in r.stderr


def test_snapshot_of_a_missing_path_or_a_file(anytime, repo, src_dir, tmp_path):
    r = anytime("snapshot", tmp_path / "no such dir", check=13)
    assert b"does not exist" in r.stderr and b"Traceback" not in r.stderr
    (src_dir / "f").write_bytes(b"f")
    r = anytime("snapshot", src_dir / "f", check=2)
    assert b"is not a directory" in r.stderr
    assert js(anytime("volumes", "--json")) == [], "nothing was created"


def test_instant_before_history_says_when_it_starts(anytime, repo, src_dir):
    (src_dir / "f").write_bytes(b"f")
    s = snap(anytime, src_dir)
    r = anytime("cat", src_dir / "f", "--at=@1", check=14)
    assert b"starts at" in r.stderr and s["instant"].encode() in r.stderr
    r = anytime("ls", src_dir, "--at", "2001-01-01", check=14)
    assert b"starts at" in r.stderr
    r = anytime("ls", src_dir, "--at", "not an instant at all", check=14)
    assert b"cannot understand" in r.stderr


def test_unknown_repository(anytime, tmp_path, src_dir):
    r = anytime("volumes", env={"ANYTIME_REPO": str(tmp_path / "missing")}, check=10)
    assert b"no anytime repository" in r.stderr and b"anytime init" in r.stderr
    r = anytime("cat", src_dir / "f", env={"ANYTIME_REPO": str(tmp_path / "missing")}, check=10)
    assert b"Traceback" not in r.stderr


def test_unprotected_path_and_unknown_volume(anytime, repo, tmp_path, src_dir):
    (src_dir / "f").write_bytes(b"f")
    snap(anytime, src_dir)
    r = anytime("cat", tmp_path / "elsewhere" / "f", check=12)
    assert b"not inside any protected tree" in r.stderr
    r = anytime("ls", "novolume:/x", check=12)
    assert b"Traceback" not in r.stderr
