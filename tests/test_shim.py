"""The shim end to end: a real ``anytime protect --mode shim`` mounted over a real tree,
real applications writing through it (SQLite in WAL and rollback-journal modes under
continuous transactions), and copies out of the time-travel mount at many instants
that must be consistent databases holding exactly the transactions committed before.
Also: files and metadata through the shim, SIGTERM, kill -9."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_mount import mounted
from treeutil import Protecting, at_epoch

from anytime.store import clock

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the shim mounts over a tree as root"),
]

SETTLE = 30.0


class Shim(Protecting):
    """A running ``anytime protect --mode shim``, ready once mounted."""

    def __init__(self, repo_dir: Path, src: Path, *extra: str):
        self.src = src
        super().__init__(repo_dir, [src, "--mode", "shim", *extra], "anytime: shim mounted",
                         SETTLE)


@pytest.fixture
def shim(anytime, repo_dir, tmp_path):
    anytime("init", check=0)
    started: list[Shim] = []

    def start(src: Path, *extra) -> Shim:
        s = Shim(repo_dir, src, *extra)
        started.append(s)
        return s
    yield start
    for s in started:
        if s.p.poll() is None:
            s.stop(signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", str(s.src)], capture_output=True)


@pytest.fixture
def src(tmp_path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


WRITER = r"""
import sqlite3, sys, time, os
db, mode, seconds, log = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
c = sqlite3.connect(db, isolation_level=None)
c.execute(f"PRAGMA journal_mode={mode}")
c.execute("PRAGMA synchronous=FULL")
c.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, v BLOB)")
out = open(log, "w")
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    i += 1
    c.execute("BEGIN")
    c.execute("INSERT INTO t VALUES (?, randomblob(?))", (i, 200 + (i * 37) % 3000))
    if i % 7 == 0:
        c.execute("DELETE FROM t WHERE i = ?", (i - 5,))
    begin = time.time_ns()
    c.execute("COMMIT")
    out.write(f"{i} {begin} {time.time_ns()}\n")
    out.flush()
c.close()
"""


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_sqlite_copied_from_any_instant_is_consistent_and_exact(anytime, shim, src,
                                                                 tmp_path, mode):
    s = shim(src)
    log = tmp_path / "commits.log"
    subprocess.run([sys.executable, "-c", WRITER, str(src / "app.db"), mode, "4", str(log)],
                   check=True, timeout=120)
    commits = [tuple(map(int, ln.split())) for ln in log.read_text().splitlines()]
    assert len(commits) > 20
    assert s.stop() == 0
    rng = random.Random(7)
    lo, hi = commits[0][1], commits[-1][2]
    instants = sorted(rng.randrange(lo, hi) for _ in range(12)) + [hi + 1]
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(anytime, "src", mp):
        for t in instants:
            at = mp / at_epoch(t)
            copy = tmp_path / f"copy-{t}"
            copy.mkdir()
            for name in os.listdir(at):
                if name.startswith("app.db"):
                    shutil.copyfile(at / name, copy / name)
            c = sqlite3.connect(copy / "app.db")
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok", t
            got = c.execute("SELECT max(i) FROM t").fetchone()[0] or 0
            c.close()
            done = max((i for i, _b, e in commits if e < t), default=0)
            begun = max((i for i, b, _e in commits if b < t), default=0)
            assert done <= got <= begun, (t, done, got, begun)


def test_files_and_metadata_through_the_shim(anytime, shim, src, tmp_path):
    (src / "before").write_text("there before\n")
    s = shim(src)
    (src / "a").write_bytes(b"x" * 3_000_000)  # several blocks
    with open(src / "a", "r+b") as f:  # small writes in place
        for off in (5, 1_048_570, 2_500_000):
            f.seek(off)
            f.write(b"CHANGED")
    os.truncate(src / "a", 1_100_000)
    with open(src / "a", "ab") as f:
        f.write(b"tail")
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_text("deep\n")
    os.rename(src / "d", src / "moved")
    os.symlink("a", src / "link")
    os.chmod(src / "before", 0o600)
    os.setxattr(src / "before", "user.k", b"v")
    os.unlink(src / "link")
    want = {p: (src / p).read_bytes() for p in ("a", "before", "moved/e/f")}
    assert s.stop() == 0
    assert not os.path.ismount(src), "the tree is left as it was, unmounted"
    for p, data in want.items():
        assert (src / p).read_bytes() == data, "the real tree holds what was written"
        assert anytime("cat", src / p, check=0).stdout == data
    r = anytime("ls", "-R", "--json", src, check=0)
    names = {row["path"] for row in json.loads(r.stdout)}
    assert str(src / "moved" / "e" / "f") in names and str(src / "link") not in names
    assert str(src / "d") not in names
    r = anytime("check", "--json", check=0)
    assert json.loads(r.stdout)["ok"]


def test_kill_9_leaves_the_repository_consistent_and_the_tree_intact(anytime, shim, src):
    s = shim(src)
    (src / "f").write_bytes(b"written before the kill\n")
    time.sleep(0.5)  # committed by a group commit
    s.stop(signal.SIGKILL)
    with pytest.raises(OSError):  # the application sees an error, not other data
        (src / "f").read_bytes()
    subprocess.run(["fusermount3", "-u", "-z", str(src)], check=True)
    assert (src / "f").read_bytes() == b"written before the kill\n"
    assert anytime("cat", src / "f", check=0).stdout == b"written before the kill\n"
    r = anytime("check", "--json", check=0)
    assert json.loads(r.stdout)["ok"]
    s = shim(src)  # and it starts again over the same tree
    (src / "g").write_text("after\n")
    assert s.stop() == 0
    assert anytime("cat", src / "g", check=0).stdout == b"after\n"


def _run(*cmd) -> str:
    return subprocess.run(list(map(str, cmd)), check=True, capture_output=True,
                          text=True).stdout.strip()


def test_an_ext4_image_under_the_shim_mounts_as_it_was(anytime, shim, src, tmp_path):
    """A disk image in a shimmed tree, on a loop device with ext4 on it: captured block
    by block as ext4 writes, and the image at a past instant is that filesystem then."""
    img = src / "disk.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    _run("mkfs.ext4", "-q", "-F", img)
    s = shim(src)
    live = tmp_path / "live"
    live.mkdir()
    loop = _run("losetup", "-f", "--show", img)
    try:
        _run("mount", loop, live)
        first = {f"first{i}": os.urandom(20_000 + i) for i in range(40)}
        for name, data in first.items():
            (live / name).write_bytes(data)
        _run("umount", live)
        t = clock.now_ns()  # the filesystem clean, holding the first files
        _run("mount", loop, live)
        for i in range(40):
            (live / f"second{i}").write_bytes(os.urandom(30_000))
        os.unlink(live / "first0")
        _run("umount", live)
    finally:
        subprocess.run(["umount", str(live)], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    assert s.stop() == 0
    mp, then = tmp_path / "mnt", tmp_path / "then"
    mp.mkdir()
    then.mkdir()
    with mounted(anytime, "src", mp, "--at", at_epoch(t)):
        ro = _run("losetup", "-r", "-f", "--show", mp / "disk.img")
        try:
            fsck = subprocess.run(["e2fsck", "-fn", ro], capture_output=True, text=True)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            _run("mount", "-o", "ro", ro, then)
            try:
                names = set(os.listdir(then)) - {"lost+found"}
                assert names == set(first)
                for name, data in first.items():
                    assert (then / name).read_bytes() == data
            finally:
                _run("umount", then)
        finally:
            subprocess.run(["losetup", "-d", ro], capture_output=True)


def test_shared_writable_mmap_through_the_shim_is_captured(anytime, shim, src):
    import mmap

    (src / "mapped").write_bytes(b"\0" * 65536)
    s = shim(src)
    with open(src / "mapped", "r+b") as f:
        m = mmap.mmap(f.fileno(), 65536)
        m[100:112] = b"through mmap"
        m[60000:60005] = b"again"
        m.flush()  # msync: the kernel writes the pages back through the shim
        m.close()
    assert s.stop() == 0
    data = anytime("cat", src / "mapped", check=0).stdout
    assert data[100:112] == b"through mmap" and data[60000:60005] == b"again"
    assert data == (src / "mapped").read_bytes()


def test_status_shows_a_shim(anytime, shim, src):
    s = shim(src)
    (src / "x").write_text("x\n")
    time.sleep(0.3)
    (vol,) = json.loads(anytime("status", "--json", check=0).stdout)["volumes"]
    assert vol["running"] and vol["mode"] == "shim" and vol["pid"] == s.p.pid
    assert vol["behind_s"] == 0.0
    assert s.stop() == 0
    (vol,) = json.loads(anytime("status", "--json", check=0).stdout)["volumes"]
    assert not vol["running"] and vol["mode"] == "shim"


def test_times_set_through_the_shim_are_exact(anytime, shim, src):
    (src / "f").write_text("x\n")
    s = shim(src)
    atime, mtime = 1_000_000_000_123_456_789, 1_500_000_000_987_654_321
    os.utime(src / "f", ns=(atime, mtime))  # utimensat with both times given
    st = os.stat(src / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), "nanoseconds, not a float"
    before = os.stat(src / "f").st_ctime_ns  # the filesystem's clock, just now
    subprocess.run(["touch", "-m", str(src / "f")], check=True)  # UTIME_OMIT, UTIME_NOW
    st = os.stat(src / "f")
    assert st.st_atime_ns == atime and st.st_mtime_ns >= before
    subprocess.run(["touch", str(src / "g")], check=True)  # create, then both now
    assert os.stat(src / "g").st_mtime_ns >= before
    assert s.stop() == 0
    assert os.stat(src / "f").st_mtime_ns == st.st_mtime_ns, "the real file has them"
    r = anytime("ls", "--json", src / "f", check=0)
    assert [row["mtime_ns"] for row in json.loads(r.stdout)] == [st.st_mtime_ns]


def test_many_small_writes_through_a_write_only_descriptor(anytime, shim, src):
    """More small writes into one block than a block reference holds slices: the block
    is read back from the file, also when the application opened it write-only."""
    s = shim(src)
    want = b""
    for i in range(60):  # open(2) with O_WRONLY | O_APPEND each time, as >> does
        line = b"line %d\n" % i
        with open(src / "log", "ab") as f:
            f.write(line)
        want += line
    fd = os.open(src / "log", os.O_WRONLY)  # one descriptor, write-only, in place
    for i in range(60):
        os.pwrite(fd, b"%02d" % i, 2 * i)
    os.close(fd)
    want = b"".join(b"%02d" % i for i in range(60)) + want[120:]
    assert (src / "log").read_bytes() == want
    assert s.stop() == 0
    assert (src / "log").read_bytes() == want
    assert anytime("cat", src / "log", check=0).stdout == want


@pytest.mark.parametrize("strict", [False, True])
def test_a_full_repository_is_a_gap_shown_and_closed_never_a_silent_hole(
        anytime, tmp_path, src, loop_fs, strict):
    fs = loop_fs(48)
    repo = fs / "repo"
    anytime("-r", repo, "init", check=0)
    ballast = fs / "ballast"  # leaves 8 MiB; room made later by deleting it
    ballast.write_bytes(os.urandom(shutil.disk_usage(fs).free - (8 << 20)))
    (src / "kept").write_text("before\n")
    s = Shim(repo, src, *(["--strict"] if strict else []))
    try:
        failed = None
        try:
            with open(src / "big", "wb") as f:
                # 16 MiB through the shim, more than the disk holds; with --strict, on
                # until the writes fail (the recorder meets the full disk a moment later)
                for i in range(200 if strict else 16):
                    f.write(os.urandom(1 << 20))
                    f.flush()
                    time.sleep(0.05 if i >= 16 else 0.01)
        except OSError as e:
            failed = e.errno
        if strict:
            assert failed == errno.ENOSPC, "with --strict the application's writes fail"
        else:
            assert failed is None, "without --strict the application keeps running"
        end = time.monotonic() + SETTLE  # the recorder meets the full disk
        while time.monotonic() < end:
            st = json.loads(anytime("-r", repo, "status", "--json", check=0).stdout)
            if st["volumes"][0]["gap_since"]:
                break
            time.sleep(0.2)
        assert st["volumes"][0]["gap_since"], st
        ballast.unlink()
        size = (src / "big").stat().st_size
        end = time.monotonic() + SETTLE
        while time.monotonic() < end:
            st = json.loads(anytime("-r", repo, "status", "--json", check=0).stdout)
            if not st["volumes"][0]["gap_since"]:
                break
            time.sleep(0.2)
        assert not st["volumes"][0]["gap_since"], "the gap ends once there is room"
        (src / "kept").write_text("after the gap\n")
    finally:
        assert s.stop() == 0
    log = anytime("-r", repo, "log", src, check=0).stdout.decode()
    assert "gap: writes from" in log, log
    assert anytime("-r", repo, "cat", src / "kept", check=0).stdout == b"after the gap\n"
    r = anytime("-r", repo, "ls", "-l", "--json", src, check=0)
    assert {row["name"]: row["size"] for row in json.loads(r.stdout)}["big"] == size
    assert json.loads(anytime("-r", repo, "check", "--json", check=0).stdout)["ok"]


def test_a_hardlinked_file_grown_through_one_name_grows_under_both(anytime, shim, src):
    (src / "one").write_text("short\n")
    os.link(src / "one", src / "two")
    s = shim(src)
    (src / "two").read_bytes()  # the shim meets both names
    (src / "one").read_bytes()
    with open(src / "one", "ab") as f:
        f.write(b"grown through one\n")
    assert s.stop() == 0
    want = b"short\ngrown through one\n"
    assert anytime("cat", src / "one", check=0).stdout == want
    assert anytime("cat", src / "two", check=0).stdout == want


def test_renames_through_the_shim_keep_their_flags_and_leave_no_old_names(anytime, shim,
                                                                          src):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    (src / "a").write_text("a\n")
    (src / "b").write_text("b\n")
    (src / "logs").mkdir()
    (src / "logs" / "x").write_text("old log\n")
    s = shim(src)
    # RENAME_NOREPLACE: refused when the target exists, as on the real filesystem
    rc = libc.renameat2(-100, str(src / "a").encode(), -100, str(src / "b").encode(), 1)
    assert rc != 0 and ctypes.get_errno() == errno.EEXIST
    assert (src / "b").read_text() == "b\n"
    os.rename(src / "logs", src / "logs.1")  # a log rotation
    (src / "logs").mkdir()
    (src / "logs" / "y").write_text("new log\n")
    assert s.stop() == 0
    r = anytime("ls", "--json", src / "logs", check=0)
    assert [row["name"] for row in json.loads(r.stdout)] == ["y"]
    assert anytime("cat", src / "logs.1" / "x", check=0).stdout == b"old log\n"
    assert anytime("cat", src / "b", check=0).stdout == b"b\n"


def test_a_write_in_place_through_the_shim_records_the_new_mtime(anytime, shim, src):
    (src / "page").write_bytes(b"a" * 8192)
    s = shim(src)
    with open(src / "page", "r+b") as f:  # the size stays: only the times change
        f.seek(100)
        f.write(b"rewritten in place")
    mtime = (src / "page").stat().st_mtime_ns
    assert s.stop() == 0
    r = anytime("ls", "-l", "--json", src, check=0)
    (row,) = [x for x in json.loads(r.stdout) if x["name"] == "page"]
    assert row["mtime_ns"] == mtime


def test_fallocate_through_the_shim_is_applied_and_recorded(anytime, shim, src):
    """Allocation that grows a file, a hole punched across blocks and in a whole block,
    a zeroed range that grows it: each is applied to the real file and each instant
    after one reads as the file did then; collapsing a range is refused."""
    mib = 1 << 20
    path = src / "falloc"
    path.write_bytes(os.urandom(3 * mib))
    s = shim(src)
    steps = [["-l", "5M"], ["-p", "-o", str(mib + mib // 2), "-l", "1M"],
             ["-z", "-o", "4M", "-l", "2M"], ["-p", "-o", "0", "-l", "1M"]]
    seen = []
    for args in steps:
        subprocess.run(["fallocate", *args, str(path)], check=True, capture_output=True)
        seen.append((path.read_bytes(), clock.now_ns()))
        time.sleep(0.01)
    r = subprocess.run(["fallocate", "-c", "-o", "0", "-l", "1M", str(path)],
                       capture_output=True)
    assert r.returncode != 0 and b"not supported" in r.stderr.lower(), r.stderr
    assert path.stat().st_size == 6 * mib
    assert seen[1][0][mib + mib // 2:2 * mib + mib // 2] == bytes(mib)
    assert path.stat().st_blocks * 512 < 6 * mib  # holes underneath too
    assert s.stop() == 0
    for want, t in seen:
        got = anytime("cat", path, "--at", at_epoch(t), check=0).stdout
        assert len(got) == len(want) and got == want
    assert anytime("cat", path, check=0).stdout == path.read_bytes()


def test_rename_exchange_through_the_shim_swaps_both_names(anytime, shim, src):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    (src / "p").write_text("was p\n")
    (src / "q").write_text("was q\n")
    for d, names in (("x", ("x1", "both")), ("y", ("y1", "both"))):
        (src / d).mkdir()
        for n in names:
            (src / d / n).write_text(f"{d}/{n}\n")
    s = shim(src)
    for a, b in (("p", "q"), ("x", "y")):
        rc = libc.renameat2(-100, str(src / a).encode(), -100, str(src / b).encode(), 2)
        assert rc == 0, os.strerror(ctypes.get_errno())
    assert (src / "p").read_text() == "was q\n"
    (src / "p").write_text("was q, then written\n")  # its file id followed it
    assert s.stop() == 0
    tree = {}
    for d in ("x", "y"):
        r = anytime("ls", "--json", src / d, check=0)
        tree[d] = sorted(row["name"] for row in json.loads(r.stdout))
    assert tree == {"x": ["both", "y1"], "y": ["both", "x1"]}
    assert anytime("cat", src / "x" / "both", check=0).stdout == b"y/both\n"
    assert anytime("cat", src / "y" / "x1", check=0).stdout == b"x/x1\n"
    assert anytime("cat", src / "p", check=0).stdout == b"was q, then written\n"
    assert anytime("cat", src / "q", check=0).stdout == b"was p\n"


def test_modes_of_what_is_created_through_the_shim_follow_the_callers_umask(anytime, shim,
                                                                           src):
    """The kernel applies the caller's umask; the shim's own must not narrow the bits
    again (the real tree gives 664/775 under umask 002)."""
    (src / "dacl").mkdir()
    subprocess.run(["setfacl", "-d", "-m", "g::rwx", str(src / "dacl")], check=True)
    s = shim(src)
    script = (f"umask {{}}; touch {src}/f{{}}; mkdir {src}/d{{}}; touch {src}/dacl/f{{}}; "
              f"stat -c '%a' {src}/f{{}} {src}/d{{}} {src}/dacl/f{{}}")
    got = {m: subprocess.run(["sh", "-c", script.format(m, *[m] * 6)], capture_output=True,
                             text=True, check=True).stdout.split() for m in ("002", "077")}
    assert s.stop() == 0
    assert got["002"][:2] == ["664", "775"] and got["077"][:2] == ["600", "700"], got
    # a default ACL decides, as on the real filesystem (umask 077 masked what it allows)
    assert got["002"][2] == "664", got
    rows = {r["name"]: r for r in json.loads(anytime("ls", "-l", "--json", src,
                                                     check=0).stdout)}
    assert oct(rows["f002"]["mode"] & 0o777) == "0o664"
