"""Real-mount tests of ``anytime mount`` / ``umount`` (FUSE; skipped without /dev/fuse).

Trees are built, captured with ``anytime snapshot``, described in a manifest right after
the capture (metadata, content, xattrs, symlink targets, hardlink groups) and the
manifest of each mounted instant is compared with it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from treeutil import at_epoch, snap

from anytime.store import clock

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                       reason="/dev/fuse is missing: real-mount tests need FUSE"),
    pytest.mark.skipif(shutil.which("fusermount3") is None,
                       reason="fusermount3 is missing (apt-get install fuse3)"),
]

IS_ROOT = os.geteuid() == 0
FUTURE = clock.now_ns() + 7 * 86400 * 10**9  # atimes no read can bump (relatime)


# --- helpers ---------------------------------------------------------------------------
def _unmount(mp: Path) -> None:
    if not os.path.ismount(mp):
        return
    if subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True).returncode:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    for _ in range(50):
        if not os.path.ismount(mp):
            return
        time.sleep(0.05)


@pytest.fixture
def mnt_dirs():
    """A factory of empty mountpoints under a world-traversable directory; every mount
    is taken down in teardown (lazily if busy)."""
    base = Path(tempfile.mkdtemp(prefix="anytime-mnt-", dir="/tmp"))
    os.chmod(base, 0o755)
    made: list[Path] = []

    def make(name: str = "m") -> Path:
        p = base / f"{name}{len(made)}"
        p.mkdir()
        os.chmod(p, 0o755)
        made.append(p)
        return p

    yield make
    for p in made:
        _unmount(p)
    shutil.rmtree(base, ignore_errors=True)


@contextmanager
def mounted(anytime, target, mp: Path, *args):
    r = anytime("mount", target, mp, *args)
    assert r.returncode == 0, r.stderr.decode()
    assert os.path.ismount(mp)
    try:
        yield mp
    finally:
        anytime("umount", mp)
        _unmount(mp)


def snapshot(anytime, src: Path, *args) -> int:
    """Snapshot through the command; its instant."""
    return snap(anytime, src, *args)["instant_ns"]



def freeze_atimes(root: Path) -> None:
    """Set every atime in the future so reads (the capture's, ours) do not change it."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            if not stat.S_ISLNK(s.st_mode):
                os.utime(p, ns=(FUTURE, s.st_mtime_ns))
    s = os.lstat(root)
    os.utime(root, ns=(FUTURE, s.st_mtime_ns))


def manifest(root: Path) -> dict:
    """Everything the mount must reproduce, keyed by relative path."""
    out = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in [""] + sorted(filenames + dirnames) if dirpath == str(root) else sorted(
                filenames + dirnames):
            p = os.path.join(dirpath, n) if n else dirpath
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            rec = {"mode": s.st_mode, "uid": s.st_uid, "gid": s.st_gid, "nlink": s.st_nlink,
                   "mtime": s.st_mtime_ns, "ctime": s.st_ctime_ns}
            if not stat.S_ISLNK(s.st_mode):
                rec["atime"] = s.st_atime_ns
                rec["xattrs"] = {k: os.getxattr(p, k) for k in sorted(os.listxattr(p))}
            if stat.S_ISREG(s.st_mode):
                rec["size"] = s.st_size
                with open(p, "rb") as f:
                    rec["sha"] = hashlib.sha256(f.read()).hexdigest()
                inodes.setdefault(s.st_ino, []).append(rel)
            elif stat.S_ISLNK(s.st_mode):
                rec["target"] = os.readlink(p)
            out[rel] = rec
    out["#hardlinks"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


def build_tree(src: Path) -> None:
    (src / "docs").mkdir()
    (src / "docs" / "deep" / "er").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "hello.txt").write_text("hello\n")
    (src / "docs" / "report.txt").write_bytes(os.urandom(300_000))
    (src / "docs" / "deep" / "er" / "leaf").write_bytes(b"leaf" * 1000)
    os.link(src / "hello.txt", src / "docs" / "hello-link")
    os.symlink("../hello.txt", src / "docs" / "sym")
    os.symlink("/nonexistent/target", src / "dangling")
    with open(src / "sparse.img", "wb") as f:
        f.truncate(5 * 1024 * 1024)
        f.seek(3 * 1024 * 1024 + 17)
        f.write(b"data in the middle of a hole")
    (src / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "exec.sh", 0o751)
    os.setxattr(src / "hello.txt", "user.comment", b"\x00binary\xffvalue")
    os.setxattr(src / "docs", "user.dirattr", b"on a directory")
    (src / "secret").write_text("top secret\n")
    os.chmod(src / "secret", 0o600)
    if IS_ROOT:
        os.chown(src / "docs" / "report.txt", 1234, 5678)
        os.chown(src / "docs" / "sym", 4321, 8765, follow_symlinks=False)
    os.utime(src / "exec.sh", ns=(FUTURE, 1_234_567_890_123_456_789))


def modify_tree(src: Path) -> None:
    with open(src / "hello.txt", "a") as f:  # also changes the hardlink
        f.write("second line\n")
    os.chmod(src / "docs" / "report.txt", 0o640)
    (src / "docs" / "deep" / "er" / "leaf").unlink()
    (src / "new.txt").write_text("new file\n")
    os.unlink(src / "docs" / "sym")
    os.symlink("report.txt", src / "docs" / "sym")
    os.setxattr(src / "hello.txt", "user.comment", b"changed")
    with open(src / "sparse.img", "r+b") as f:
        f.seek(4096)
        f.write(b"more")


def compare(expected: dict, mp: Path) -> None:
    got = manifest(mp)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key] == expected[key], key


# --- tests -----------------------------------------------------------------------------
@pytest.fixture
def two_instants(anytime, src_dir):
    anytime("init", check=0)
    build_tree(src_dir)
    freeze_atimes(src_dir)
    t1 = snapshot(anytime, src_dir, "--label", "first")
    m1 = manifest(src_dir)
    time.sleep(1.2)
    modify_tree(src_dir)
    freeze_atimes(src_dir)
    t2 = snapshot(anytime, src_dir)
    m2 = manifest(src_dir)
    return t1, m1, t2, m2


def test_instants_are_exact(anytime, src_dir, two_instants, mnt_dirs):
    t1, m1, t2, m2 = two_instants
    assert m1 != m2
    for t, m in ((t1, m1), (t2, m2)):
        with mounted(anytime, src_dir, mnt_dirs(), "--at", at_epoch(t)) as mp:
            compare(m, mp)
            a, b = os.stat(mp / "hello.txt"), os.stat(mp / "docs" / "hello-link")
            assert a.st_ino == b.st_ino and a.st_nlink == 2
            s = os.stat(mp / "sparse.img")
            assert s.st_blocks * 512 < s.st_size  # holes are reported as holes
            s = os.stat(mp / "docs" / "report.txt")  # dense: its size, in 512-byte units
            assert s.st_blocks == (s.st_size + 511) // 512 and s.st_size == 300_000


def test_time_travel_root(anytime, src_dir, two_instants, mnt_dirs):
    from anytime.vfs.instants import format_instant

    t1, m1, t2, m2 = two_instants
    with mounted(anytime, "src", mnt_dirs()) as mp:
        names = set(os.listdir(mp))
        assert {"latest", "labels", "versions", format_instant(t1, utc=True),
                format_instant(t2, utc=True)} <= names
        compare(m2, mp / "latest")
        compare(m1, mp / format_instant(t1, utc=True))
        compare(m1, mp / "labels" / "first")
        assert os.listdir(mp / "labels") == ["first"]
        # any instant typed as a name opens the volume there, listed or not
        compare(m1, mp / format_instant(t1 + 500_000_000))  # local zone, between commits
        compare(m1, mp / at_epoch(t1))
        compare(m2, mp / at_epoch(t2 + 1))
        ago = (clock.now_ns() - t2) / 1e9 + 0.6  # 0.6 s before t2, after t1
        assert (mp / f"{ago:.3f} seconds ago" / "hello.txt").read_text() == "hello\n"
        assert not (mp / "10 years ago").exists()  # before history
        assert not (mp / "not an instant").exists()
        # instant directories do not share inode numbers across instants
        assert os.stat(mp / at_epoch(t1) / "secret").st_ino != \
            os.stat(mp / at_epoch(t2) / "secret").st_ino
        # versions/: each regular file is a directory of its distinct versions
        v = mp / "versions" / "hello.txt"
        assert sorted(os.listdir(v)) == [format_instant(t1, utc=True),
                                         format_instant(t2, utc=True)]
        assert (v / format_instant(t1, utc=True)).read_text() == "hello\n"
        assert (v / format_instant(t2, utc=True)).read_text() == "hello\nsecond line\n"
        assert os.getxattr(v / format_instant(t1, utc=True), "user.comment") \
            == b"\x00binary\xffvalue"
        # a file deleted since keeps its versions
        leaf = mp / "versions" / "docs" / "deep" / "er" / "leaf"
        assert os.listdir(leaf) == [format_instant(t1, utc=True)]
        assert (leaf / format_instant(t1, utc=True)).read_bytes() == b"leaf" * 1000
        # report.txt only changed mode: one distinct version
        assert len(os.listdir(mp / "versions" / "docs" / "report.txt")) == 1
        assert sorted(os.listdir(mp / "versions")) == sorted(
            ["docs", "empty", "exec.sh", "hello.txt", "new.txt", "secret", "sparse.img"])


def test_read_only(anytime, src_dir, two_instants, mnt_dirs):
    with mounted(anytime, "src", mnt_dirs()) as mp:
        root = mp / "latest"
        cases = [
            lambda: open(root / "hello.txt", "r+b"),
            lambda: open(root / "hello.txt", "ab"),
            lambda: open(root / "created", "wb"),
            lambda: os.rename(root / "hello.txt", root / "renamed"),
            lambda: os.mkdir(root / "newdir"),
            lambda: os.unlink(root / "hello.txt"),
            lambda: os.rmdir(root / "empty"),
            lambda: os.chmod(root / "hello.txt", 0o777),
            lambda: os.setxattr(root / "hello.txt", "user.x", b"1"),
            lambda: os.symlink("x", root / "newlink"),
            lambda: os.link(root / "hello.txt", root / "newhard"),
            lambda: os.truncate(root / "hello.txt", 0),
            lambda: os.utime(root / "hello.txt"),
            lambda: os.mkdir(mp / "not-an-instant"),
        ]
        for i, case in enumerate(cases):
            with pytest.raises(OSError) as err:
                case()
            assert err.value.errno == errno.EROFS, (i, err.value)
        assert (root / "hello.txt").read_text() == "hello\nsecond line\n"


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as another user")
def test_permissions_as_other_user(anytime, src_dir, two_instants, mnt_dirs):
    with mounted(anytime, "src", mnt_dirs()) as mp:
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        r = subprocess.run(nobody + ["cat", str(mp / "latest" / "secret")],
                           capture_output=True)
        assert r.returncode != 0 and b"Permission denied" in r.stderr
        r = subprocess.run(nobody + ["cat", str(mp / "versions" / "secret")],
                           capture_output=True)
        assert r.returncode != 0
        r = subprocess.run(nobody + ["cat", str(mp / "latest" / "hello.txt")],
                           capture_output=True)
        assert r.returncode == 0 and r.stdout == b"hello\nsecond line\n"
        assert subprocess.run(["cat", str(mp / "latest" / "secret")],
                              capture_output=True).stdout == b"top secret\n"


def test_capture_while_reading(anytime, src_dir, mnt_dirs):
    anytime("init", check=0)
    (src_dir / "counter").write_text("0\n")
    for i in range(30):
        (src_dir / f"f{i}").write_bytes(os.urandom(20_000))
    freeze_atimes(src_dir)
    t0 = snapshot(anytime, src_dir)
    fixed = manifest(src_dir)
    stop = threading.Event()
    errors: list[BaseException] = []

    with mounted(anytime, "src", mnt_dirs()) as mp:
        def walker():
            try:
                while not stop.is_set():
                    compare(fixed, mp / at_epoch(t0))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        th = threading.Thread(target=walker)
        th.start()
        seen = set()
        try:
            for n in range(1, 4):
                (src_dir / "counter").write_text(f"{n}\n")
                snapshot(anytime, src_dir)  # commits while the walker reads
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    now = (mp / "latest" / "counter").read_text()
                    if now == f"{n}\n":
                        break
                    time.sleep(0.1)
                seen.add(now)
        finally:
            stop.set()
            th.join()
        assert not errors, errors[0]
        assert seen == {"1\n", "2\n", "3\n"}  # latest/ moved forward
        compare(fixed, mp / at_epoch(t0))  # a mounted instant never changes


def test_damaged_block_gives_eio(anytime, repo_dir, src_dir, mnt_dirs, tmp_path):
    anytime("init", check=0)
    (src_dir / "good.txt").write_text("fine\n")
    t = snapshot(anytime, src_dir)
    (src_dir / "big.bin").write_bytes(os.urandom(400_000))
    snapshot(anytime, src_dir)
    # flip a byte inside the first record of every pack written by the second commit
    from anytime.store.format import PACK_HEADER, RECORD_HEADER
    for pack in (repo_dir / "packs").rglob("*.pack"):
        if pack.stat().st_mtime_ns >= t:
            with open(pack, "r+b") as f:
                f.seek(PACK_HEADER.size + RECORD_HEADER.size + 10)
                b = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([b[0] ^ 0xFF]))
    logfile = tmp_path / "mount.log"
    with mounted(anytime, "src", mnt_dirs(), "--log", logfile) as mp:
        with pytest.raises(OSError) as err:
            (mp / "latest" / "big.bin").read_bytes()
        assert err.value.errno == errno.EIO
        assert (mp / "latest" / "good.txt").read_text() == "fine\n"  # still serving
        text = logfile.read_text()
        assert "damaged data" in text and "src:/big.bin at " in text


def test_umount_with_open_files(anytime, src_dir, two_instants, mnt_dirs):
    mp = mnt_dirs()
    anytime("mount", src_dir, mp, check=0)
    f = open(mp / "latest" / "hello.txt", "rb")
    try:
        r = anytime("umount", mp, check=17)
        assert b"--lazy" in r.stderr
        anytime("umount", "--lazy", mp, check=0)
        assert not os.path.ismount(mp)
        assert f.read() == b"hello\nsecond line\n"  # an open file keeps working
    finally:
        f.close()


def test_mount_errors(anytime, src_dir, two_instants, tmp_path):
    r = anytime("mount", "src", tmp_path / "missing", check=17)
    assert b"does not exist" in r.stderr
    (tmp_path / "file").write_text("x")
    r = anytime("mount", "src", tmp_path / "file", check=17)
    assert b"not a directory" in r.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    r = anytime("mount", "src", full, check=17)
    assert b"not empty" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    anytime("mount", "nosuchvolume", empty, check=12)
    anytime("mount", "src", empty, "--at", "1990-01-01", check=14)
    assert not os.path.ismount(empty)


def test_stat_packer_writes_what_mfusepy_writes():
    """The one-call stat writer of listings gives the same bytes as mfusepy's setattr
    loop, fields absent from the dict included (zero), negative times included."""
    import ctypes

    import mfusepy

    from anytime.vfs.fuse import StatPacker, fill_stat

    packer = StatPacker()
    assert packer.usable
    full = {"st_mode": stat.S_IFREG | 0o640, "st_ino": (7 << 40) | 123456789,
            "st_nlink": 3, "st_uid": 4_000_000_000, "st_gid": 5, "st_size": 2**40 + 1,
            "st_atime": 1_700_000_000_123_456_789, "st_mtime": -1_500_000_001,
            "st_ctime": 0, "st_rdev": 0x0801, "st_blksize": 1 << 20, "st_blocks": 2**31 + 5}
    for attrs in (full, {"st_mode": stat.S_IFDIR | 0o555, "st_ino": 42}):
        want = mfusepy.c_stat()
        mfusepy.set_st_attrs(want, attrs, use_ns=True)
        got = mfusepy.c_stat()
        ctypes.memset(ctypes.byref(got), 0xAB, ctypes.sizeof(got))  # stale bytes go
        fill_stat(got, attrs)
        assert bytes(got) == bytes(want)
        if attrs is full:
            assert (got.st_mtimespec.tv_sec, got.st_mtimespec.tv_nsec) == (-2, 499_999_999)
            assert got.st_ino == full["st_ino"] and got.st_size == full["st_size"]


def test_mount_is_fast(anytime, src_dir, two_instants, mnt_dirs):
    mp = mnt_dirs()
    start = time.monotonic()
    with mounted(anytime, "src", mp):
        os.listdir(mp / "latest")
        elapsed = time.monotonic() - start
    assert elapsed < 1.5, elapsed  # goal 0.3 s; generous for loaded CI machines


def test_namespace_root_selection(anytime, src_dir, repo_dir):
    """The root lists every commit while there are few (platform-neutral core)."""
    from anytime.store.repo import Repository
    from anytime.store.volumes import get_volume
    from anytime.vfs.instants import format_instant
    from anytime.vfs.namespace import Namespace

    anytime("init", check=0)
    ts = []
    for i in range(3):
        (src_dir / "f").write_text(str(i))
        ts.append(snapshot(anytime, src_dir))
    with Repository.open(str(repo_dir)) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "src")
        ns = Namespace(repo, vol)
        assert ns.root_selection() == ts[::-1]
        node = ns.resolve(b"/versions/f")
        assert [t for t, _ in ns.file_versions(node.inner)] == ts
        # Windows: names without ':' (ISO 8601 basic form); both forms open
        win = Namespace(repo, vol, basic_names=True)
        names = [n for n, _ in win.listdir(win.resolve(b"/"))]
        basic = [format_instant(t, utc=True, basic=True).encode() for t in ts[::-1]]
        assert names[3:] == basic and not any(b":" in n for n in names)
        assert [n for n, _ in win.listdir(win.resolve(b"/versions/f"))] == basic[::-1]
        for t in ts:
            for name in (format_instant(t, utc=True, basic=True),
                         format_instant(t, utc=True)):
                assert win.read(win.resolve(f"/{name}/f".encode()), 0, 10) == \
                    str(ts.index(t)).encode()


def test_a_path_of_4000_bytes_round_trips(anytime, src_dir, mnt_dirs, tmp_path):
    """Entry keys hold a directory's path hash and one name (docs/format.md "The index"),
    so a path is bounded only by the filesystem: a 4,000-byte path (15 directories of
    names of 250 bytes) goes through snapshot, cat, ls, find, check, the mount, restore,
    a new version and the deletion of its tree."""
    anytime("init", check=0)
    dirs = [f"{i:02d}".encode() + b"d" * 248 for i in range(15)]
    rel = b"/".join(dirs) + b"/" + b"f" * 235
    assert len(rel) == 4000 and max(map(len, dirs)) == 250
    deep = os.path.join(os.fsencode(src_dir), *dirs)
    os.makedirs(deep)
    first, second = os.urandom(1_500_000), b"second version\n" * 1000
    with open(os.path.join(os.fsencode(src_dir), rel), "wb") as f:
        f.write(first)
    with open(os.path.join(deep, b"near"), "wb") as f:
        f.write(b"a neighbour\n")
    t1 = snap(anytime, src_dir)["instant_ns"]  # exit 0: nothing skipped
    vpath = b"src:/" + rel
    assert anytime("cat", vpath, check=0).stdout == first
    assert anytime("ls", b"src:/" + b"/".join(dirs), check=0).stdout.split() == [
        b"f" * 235, b"near"]
    found = json.loads(anytime("find", "f" * 235, "--json", check=0).stdout)
    assert [r["path"].encode() for r in found] == [rel]
    assert anytime("check", check=0).returncode == 0
    with mounted(anytime, src_dir, mnt_dirs(), "--at", at_epoch(t1)) as mp:
        inside = os.path.join(os.fsencode(mp), rel)
        with open(inside, "rb") as f:
            assert f.read() == first
        assert sorted(os.listdir(os.path.dirname(inside))) == [b"f" * 235, b"near"]
    back = tmp_path / "back"
    anytime("restore", src_dir, "--at", at_epoch(t1), "--to", back, check=0)
    with open(os.path.join(os.fsencode(back), rel), "rb") as f:
        assert f.read() == first

    with open(os.path.join(os.fsencode(src_dir), rel), "wb") as f:
        f.write(second)
    t2 = snap(anytime, src_dir)["instant_ns"]
    assert anytime("cat", vpath, check=0).stdout == second
    assert anytime("cat", vpath, "--at", at_epoch(t1), check=0).stdout == first
    shutil.rmtree(os.path.join(os.fsencode(src_dir), dirs[0]))
    snap(anytime, src_dir)
    assert anytime("cat", vpath, check=13).returncode == 13  # deleted with its tree
    assert anytime("cat", vpath, "--at", at_epoch(t2), check=0).stdout == second
    found = json.loads(anytime("find", "near", "--deleted", "--json", check=0).stdout)
    assert [r["path"].encode() for r in found] == [b"/".join(dirs) + b"/near"]
    assert anytime("check", check=0).returncode == 0
