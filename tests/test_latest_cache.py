"""latest/ of a real mount while commits land: page cache kept for unchanged files,
dropped for changed ones, and new content read back exactly once the timeouts pass.

Two non-timing witnesses of the kernel's page cache:

* ``resident(path)``: open the file through the mount (the open decides ``keep_cache``),
  map it and count its pages in the page cache with mincore(2);
* ``served(pid)``: bytes the mount process wrote (``wchar`` of ``/proc/PID/io``): every
  read that reaches it is answered with a write to /dev/fuse, so a re-read served by the
  kernel's cache leaves it almost unchanged.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import time
from pathlib import Path

import pytest
from test_mount import mnt_dirs, mounted  # noqa: F401 - the fixture is used by name
from treeutil import snap

from anytime.vfs.fuse import LIVE_TIMEOUT
from anytime.vfs.namespace import HORIZON_TTL

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                       reason="/dev/fuse is missing: real-mount tests need FUSE"),
    pytest.mark.skipif(shutil.which("fusermount3") is None,
                       reason="fusermount3 is missing (apt-get install fuse3)"),
]

SIZE = 3 << 20  # three blocks of the default size
PAGE = mmap.PAGESIZE
#: Longer than latest/ may lag a commit: the horizon's TTL plus the kernel's timeouts.
SETTLE = HORIZON_TTL + LIVE_TIMEOUT + 0.3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def resident(path: Path) -> int:
    """Pages of ``path`` in the page cache right after an open of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def mount_pid(mp: Path) -> int:
    """The process serving the mount at ``mp`` (its command line names the mountpoint)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            args = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in args and os.fsencode(str(mp)) in args:
            found.append(int(d))
    assert len(found) == 1, found
    return found[0]


def served(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def read_all(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def commit(anytime, src: Path) -> None:
    snap(anytime, src)
    time.sleep(SETTLE)  # not a timed assertion: the bound latest/ promises (docs/mount.md)


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """New content of the same size and mtime: only the ctime tells the change (the kernel
    would not notice it from the attributes)."""
    s = os.stat(path)
    assert len(data) == s.st_size
    path.write_bytes(data)
    os.utime(path, ns=(s.st_atime_ns, s.st_mtime_ns))


@pytest.fixture
def live(anytime, src_dir, mnt_dirs):  # noqa: F811 - the fixture imported above
    anytime("init", check=0)
    a = os.urandom(SIZE)
    (src_dir / "data").write_bytes(a)
    (src_dir / "other").write_text("0\n")
    (src_dir / "dir").mkdir()
    (src_dir / "dir" / "f").write_text("f\n")
    snap(anytime, src_dir)
    with mounted(anytime, "src", mnt_dirs()) as mp:
        yield mp, src_dir, a


def test_latest_paths_keep_their_inode_numbers(anytime, live):
    mp, src, a = live
    latest = mp / "latest"
    before = {p: os.stat(latest / p).st_ino for p in ("", "data", "dir", "dir/f")}
    (src / "other").write_text("1\n")  # a commit that changes another file
    commit(anytime, src)
    assert (latest / "other").read_text() == "1\n"
    assert {p: os.stat(latest / p).st_ino for p in before} == before
    (src / "dir" / "g").write_text("g\n")  # a new file: a number of its own
    commit(anytime, src)
    assert os.stat(latest / "dir" / "g").st_ino not in before.values()
    assert {p: os.stat(latest / p).st_ino for p in before} == before
    # an instant directory is another slot: the same file, another number there
    assert os.stat(mp / "now" / "data").st_ino != before["data"]


def test_unchanged_file_stays_in_page_cache(anytime, live):
    mp, src, a = live
    f = mp / "latest" / "data"
    pid = mount_pid(mp)
    before = served(pid)
    assert read_all(f) == a
    assert served(pid) - before >= SIZE  # the first read reached the mount
    ino = os.stat(f).st_ino
    assert resident(f) == SIZE // PAGE  # the reopen kept them
    before = served(pid)
    assert read_all(f) == a
    assert served(pid) - before < SIZE // 8  # the second read came from the cache

    (src / "other").write_text("1\n")  # a commit that does not touch data
    commit(anytime, src)
    assert (mp / "latest" / "other").read_text() == "1\n"
    assert os.stat(f).st_ino == ino  # same file in latest/: same inode number
    # kept, not dropped: an open without keep_cache leaves none of its pages; the
    # kernel may have reclaimed a few meanwhile for reasons of its own (seen: 761 of 768)
    assert resident(f) >= SIZE // PAGE * 9 // 10
    before = served(pid)
    assert read_all(f) == a
    assert served(pid) - before < SIZE // 8

    relative = mp / "now" / "data"  # a relative name: the same rule
    assert read_all(relative) == a
    assert resident(relative) == SIZE // PAGE


def test_changed_file_is_read_again(anytime, live):
    mp, src, a = live
    f = mp / "latest" / "data"
    assert read_all(f) == a
    b = os.urandom(SIZE)
    rewrite_keeping_mtime(src / "data", b)
    commit(anytime, src)
    assert resident(f) == 0  # the open that sees the new version dropped the old pages
    assert read_all(f) == b
    assert read_all(f) == b

    longer = os.urandom(SIZE + 12345)
    (src / "data").write_bytes(longer)
    commit(anytime, src)
    assert os.stat(f).st_size == len(longer)
    assert read_all(f) == longer

    shorter = b"short\n" * 1000
    (src / "data").write_bytes(shorter)
    commit(anytime, src)
    assert os.stat(f).st_size == len(shorter)
    assert read_all(f) == shorter
    assert read_all(f) == shorter


def test_a_handle_older_than_the_commit_cannot_leave_its_pages(anytime, live):
    """A file opened before a commit keeps reading its version; what those reads put in
    the page cache must not be kept by a later open that shows the new version."""
    mp, src, a = live
    f = mp / "latest" / "data"
    assert read_all(f) == a
    with open(f, "rb", buffering=0) as old:  # opened at a: keeps the cache
        b = os.urandom(SIZE)
        rewrite_keeping_mtime(src / "data", b)
        commit(anytime, src)
        assert resident(f) == 0  # this open shows b: the cache of a was dropped
        assert old.read() == a  # read through the old handle: a's pages cached again
    assert read_all(f) == b
    assert read_all(f) == b


def test_cat_at_now_reads_the_newest_commit(anytime, src_dir):
    anytime("init", check=0)
    (src_dir / "f").write_text("one\n")
    snap(anytime, src_dir)
    assert anytime("cat", src_dir / "f", "--at", "now", check=0).stdout == b"one\n"
    (src_dir / "f").write_text("two, longer\n")
    snap(anytime, src_dir)  # no wait: each command reads the horizon when it starts
    assert anytime("cat", src_dir / "f", "--at", "now", check=0).stdout == b"two, longer\n"
    assert anytime("cat", src_dir / "f", check=0).stdout == b"two, longer\n"
