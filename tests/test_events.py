"""Change-event sources (capture/events.py) on real trees: ext4 under tmp_path and tmpfs
under /dev/shm, with fanotify and inotify (both work here, as root).

Each test makes real changes and waits for the expected Changes with select() on the
source's descriptor, up to ``WAIT`` seconds: the bound is a deadline for the kernel to
deliver, never a figure asserted on.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from anytime.capture.events import (
    CONTENT,
    ENTRY,
    META,
    OVERFLOW,
    TREE,
    Change,
    CombinedSource,
    InotifyEvents,
    open_source,
)
from anytime.store.errors import FilesystemNotMarkable, WatchLimitReached, WatchUnavailable

#: Seconds to wait for the kernel to deliver expected events.
WAIT = 5.0
KINDS = ["fanotify", "inotify"]


@pytest.fixture(params=["ext4", "tmpfs"])
def base(request, tmp_path):
    """An empty directory on the filesystem named by the parameter."""
    if request.param == "ext4":
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="anytime-events-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def root(base):
    r = base / "root"
    r.mkdir()
    return r


@pytest.fixture
def source(kind, root):
    with open_source(kind) as src:
        assert src.kind == kind
        src.add_tree(bytes(root))
        yield src


def b(p) -> bytes:
    return os.fsencode(p)


def wait_for(src, want: dict, seen: dict | None = None) -> dict:
    """Read ``src`` until every path of ``want`` has at least its flags (the union of
    its Changes'), or ``WAIT`` seconds passed; the flags seen per path."""
    seen = {} if seen is None else seen
    want = {b(p): f for p, f in want.items()}
    deadline = time.monotonic() + WAIT

    def done():
        return all(seen.get(p, 0) & f == f for p, f in want.items())

    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if select.select([src], [], [], left)[0]:
            for c in src.read():
                assert isinstance(c, Change) and isinstance(c.path, bytes)
                seen[c.path] = seen.get(c.path, 0) | c.flags
    return seen


def expect(src, want: dict, seen: dict | None = None) -> dict:
    seen = wait_for(src, want, seen)
    missing = {p: f for p, f in want.items() if seen.get(b(p), 0) & f != f}
    assert not missing, f"missing {missing}; seen {seen}"
    return seen


def settle(src, *dirs) -> None:
    """Wait for the creation of ``dirs`` to be reported: inotify then watches them, so
    files made in them next are reported one by one (not only through the TREE change
    of their directory)."""
    expect(src, {d: ENTRY | TREE for d in dirs})


def test_create_write_close(source, root):
    with open(root / "f", "wb") as f:
        f.write(b"data")
    expect(source, {root / "f": ENTRY | CONTENT})


def test_append_and_truncate(source, root):
    (root / "f").write_bytes(b"data")
    expect(source, {root / "f": ENTRY})
    with open(root / "f", "ab") as f:
        f.write(b"more")
    expect(source, {root / "f": CONTENT})
    os.truncate(root / "f", 2)
    expect(source, {root / "f": CONTENT})


def test_unlink(source, root):
    (root / "f").write_bytes(b"x")
    expect(source, {root / "f": ENTRY})
    os.unlink(root / "f")
    seen = expect(source, {root / "f": ENTRY})
    assert seen[b(root / "f")] & TREE == 0


def test_mkdir_rmdir(source, root):
    os.mkdir(root / "d")
    expect(source, {root / "d": ENTRY | TREE})
    os.rmdir(root / "d")
    expect(source, {root / "d": ENTRY | TREE})


def test_rename_file_within_and_across_dirs(source, root):
    (root / "a").mkdir()
    (root / "b").mkdir()
    settle(source, root / "a", root / "b")
    (root / "a" / "f").write_bytes(b"x")
    expect(source, {root / "a" / "f": ENTRY})
    os.rename(root / "a" / "f", root / "a" / "g")
    expect(source, {root / "a" / "f": ENTRY, root / "a" / "g": ENTRY})
    os.rename(root / "a" / "g", root / "b" / "h")
    expect(source, {root / "a" / "g": ENTRY, root / "b" / "h": ENTRY})


def test_renamed_directory_reports_new_paths(source, root):
    d = root / "d"
    (d / "sub").mkdir(parents=True)
    settle(source, d)  # sub is made before any read: inotify's walk of d finds it
    (d / "sub" / "f").write_bytes(b"x")
    expect(source, {d / "sub" / "f": ENTRY})
    os.rename(d, root / "e")
    expect(source, {d: ENTRY | TREE, root / "e": ENTRY | TREE})
    with open(root / "e" / "sub" / "f", "ab") as f:
        f.write(b"y")
    seen = expect(source, {root / "e" / "sub" / "f": CONTENT})
    assert not any(p.startswith(b(d) + b"/") for p in seen), seen


def test_write_then_rename_unread_reports_new_path(source, root):
    """A directory whose path was resolved before, renamed and written in before the
    next read: the write is reported under the new name."""
    (root / "d").mkdir()
    settle(source, root / "d")
    (root / "d" / "f").write_bytes(b"x")
    expect(source, {root / "d" / "f": ENTRY})
    os.rename(root / "d", root / "e")
    (root / "e" / "f").write_bytes(b"y")
    seen = expect(source, {root / "e" / "f": CONTENT, root / "e": ENTRY | TREE})
    assert b(root / "d" / "f") not in seen, seen


def test_chmod_and_xattr_are_meta(source, root):
    (root / "f").write_bytes(b"x")
    expect(source, {root / "f": ENTRY})
    os.chmod(root / "f", 0o600)
    seen = expect(source, {root / "f": META})
    assert seen[b(root / "f")] & (ENTRY | CONTENT) == 0
    os.setxattr(root / "f", "user.x", b"1")
    expect(source, {root / "f": META})
    os.chmod(root, 0o750)
    expect(source, {root: META})


def test_hardlink_is_entry_on_new_name(source, root):
    (root / "f").write_bytes(b"x")
    expect(source, {root / "f": ENTRY})
    os.link(root / "f", root / "g")
    expect(source, {root / "g": ENTRY})


def test_outside_root_not_reported(kind, base):
    inside, outside = base / "in", base / "inside-not"  # a shared prefix, no slash
    inside.mkdir()
    outside.mkdir()
    with open_source(kind) as src:
        src.add_tree(bytes(inside))
        (outside / "f").write_bytes(b"x")
        os.mkdir(base / "d")
        (inside / "marker").write_bytes(b"x")
        seen = expect(src, {inside / "marker": ENTRY})
    assert all(p == b(inside) or p.startswith(b(inside) + b"/") for p in seen), seen


def test_new_tree_written_at_once_is_found(source, root):
    """mkdir -p a/b/c && write a/b/c/f at once: what is reported leads the watcher to f
    (the file itself, or a TREE change of a directory holding it), and writes to f
    afterwards are reported (inotify watches the new directories)."""
    subprocess.run(["sh", "-c", "mkdir -p a/b/c && echo x > a/b/c/f"], cwd=root,
                   check=True)
    f = b(root / "a" / "b" / "c" / "f")
    seen = wait_for(source, {root / "a": ENTRY | TREE})

    def leads_to_f():
        return seen.get(f, 0) & ENTRY or any(
            fl & TREE and f.startswith(p + b"/") for p, fl in seen.items())

    deadline = time.monotonic() + WAIT
    while not leads_to_f() and time.monotonic() < deadline:
        wait_for(source, {f: ENTRY}, seen)
    assert leads_to_f(), seen
    with open(f, "ab") as fh:
        fh.write(b"y")
    expect(source, {f: CONTENT})


def test_non_utf8_name_round_trips(source, root):
    name = b(root) + b"/\xff\xfe"
    with open(name, "wb") as f:
        f.write(b"x")
    expect(source, {name: ENTRY | CONTENT})


def test_inotify_overflow(root):
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = knob.read_text()
    try:
        knob.write_text("64\n")  # applies to inotify instances made from now on
        src = open_source("inotify")
    finally:
        knob.write_text(saved)
    with src:
        src.add_tree(bytes(root))
        for i in range(200):
            (root / f"f{i}").write_bytes(b"x")
        changes = src.read()
        assert Change(b(root), OVERFLOW) in changes
        os.mkdir(root / "after")  # still watching after the overflow
        expect(src, {root / "after": ENTRY | TREE})


def test_inotify_overflow_watches_lost_directories(root):
    """Directories made while events were lost are watched after the overflow."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = knob.read_text()
    try:
        knob.write_text("16\n")
        src = open_source("inotify")
    finally:
        knob.write_text(saved)
    with src:
        src.add_tree(bytes(root))
        for i in range(40):
            (root / f"f{i}").write_bytes(b"x")
        (root / "late").mkdir()
        assert Change(b(root), OVERFLOW) in src.read()
        (root / "late" / "g").write_bytes(b"x")
        expect(src, {root / "late" / "g": ENTRY | CONTENT})


def test_fanotify_overflow(root):
    with open_source("fanotify") as src:
        src.add_tree(bytes(root))
        subprocess.run([sys.executable, "-c",
                        "import sys\nfor i in range(20000):\n"
                        "    open(f'{sys.argv[1]}/f{i}', 'wb').close()\n", str(root)],
                       check=True)
        changes = src.read()
        while changes and Change(b(root), OVERFLOW) not in changes:
            changes = src.read()
        assert Change(b(root), OVERFLOW) in changes
        os.mkdir(root / "after")
        expect(src, {root / "after": ENTRY | TREE})


def test_auto_is_fanotify_as_root(root):
    with open_source("auto") as src:
        assert src.kind == "fanotify" and isinstance(src, CombinedSource)
        src.add_tree(bytes(root))
        assert src.kind_of(bytes(root)) == "fanotify"
        (root / "f").write_bytes(b"x")
        expect(src, {root / "f": ENTRY | CONTENT})


@pytest.fixture
def ramfs(tmp_path):
    """A ramfs mount: no file handles, so fanotify cannot mark it."""
    d = tmp_path / "ram"
    d.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "none", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def test_auto_falls_back_to_inotify_for_unmarkable_filesystem(ramfs, root):
    with open_source("fanotify") as src:
        with pytest.raises(FilesystemNotMarkable, match="inotify"):
            src.add_tree(bytes(ramfs))
    with open_source("auto") as src:
        src.add_tree(bytes(ramfs))
        src.add_tree(bytes(root))
        assert (src.kind_of(bytes(ramfs)), src.kind_of(bytes(root))) == ("inotify",
                                                                         "fanotify")
        (ramfs / "f").write_bytes(b"x")
        (root / "g").write_bytes(b"x")
        expect(src, {ramfs / "f": ENTRY | CONTENT, root / "g": ENTRY | CONTENT})


def test_unprivileged_gets_inotify_and_a_reason(tmp_path):
    code = ("from anytime.capture.events import open_source\n"
            "from anytime.store.errors import WatchUnavailable\n"
            "print(open_source('auto').kind)\n"
            "try:\n    open_source('fanotify')\n"
            "except WatchUnavailable as e:\n    print(e.exit_code, e)\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", code], capture_output=True, check=True,
                         cwd=tmp_path).stdout.decode()
    assert out.splitlines()[0] == "inotify"
    assert out.splitlines()[1].startswith("19 ") and "root" in out, out


def test_inotify_watch_limit_is_a_clear_error(root):
    """In a user namespace whose inotify watch limit is 5, a tree of 10 directories
    cannot be watched: WatchLimitReached says how to raise the limit."""
    for i in range(10):
        (root / f"d{i}").mkdir()
    code = ("import sys\nfrom anytime.capture.events import open_source\n"
            "from anytime.store.errors import WatchLimitReached\n"
            "try:\n    open_source('inotify').add_tree(sys.argv[1].encode())\n"
            "except WatchLimitReached as e:\n    print(e.exit_code, e)\n")
    out = subprocess.run(["unshare", "-U", "-r", "sh", "-c",
                          'echo 5 > /proc/sys/user/max_inotify_watches && exec "$@"', "-",
                          sys.executable, "-c", code, str(root)],
                         capture_output=True, check=True).stdout.decode()
    assert out.startswith("19 ") and "sysctl fs.inotify.max_user_watches=" in out, out
    assert issubclass(WatchLimitReached, WatchUnavailable)


def test_inotify_follows_moves_and_forgets_what_leaves(base):
    inside, outside = base / "in", base / "out"
    (inside / "d" / "sub").mkdir(parents=True)
    outside.mkdir()
    with InotifyEvents() as src:
        src.add_tree(bytes(inside))
        assert src.watches == 3
        os.rename(inside / "d", outside / "d")
        expect(src, {inside / "d": ENTRY | TREE})
        (outside / "d" / "sub" / "f").write_bytes(b"x")
        (inside / "marker").write_bytes(b"x")
        seen = expect(src, {inside / "marker": ENTRY})
        assert all(p.startswith(b(inside)) for p in seen), seen
        assert src.watches == 1
        os.rename(outside / "d", inside / "back")
        (inside / "back" / "sub" / "g").write_bytes(b"x")
        expect(src, {inside / "back": ENTRY | TREE})
        (inside / "back" / "sub" / "h").write_bytes(b"x")
        expect(src, {inside / "back" / "sub" / "h": ENTRY | CONTENT})
        assert src.watches == 3


def test_root_deleted_is_reported(kind, base):
    r = base / "gone"
    r.mkdir()
    with open_source(kind) as src:
        src.add_tree(bytes(r))
        os.rmdir(r)
        expect(src, {r: ENTRY | TREE})


def test_bad_mode_and_relative_root():
    with pytest.raises(ValueError):
        open_source("poll")
    with open_source("inotify") as src, pytest.raises(ValueError):
        src.add_tree(b"relative/dir")
