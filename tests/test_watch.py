"""Continuous capture end to end: a real ``anytime protect`` process watches a real tree
while real processes change it (tar, git, editor-style saves, a writer in place), and
every change must be readable at an instant after it. Also the overflow of the event
queue, kill -9 and restart, SIGTERM, idle cost, status and refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import anytime_command
from test_mount import mounted
from treeutil import Protecting

from anytime.store import timeline
from anytime.store.format import KIND_DIR, KIND_FILE, KIND_SYMLINK, MAX_INSTANT
from anytime.store.repo import Repository
from anytime.store.volumes import get_volume
from anytime.vfs.view import View

#: Seconds a test waits at most for a change to show (the goal is one; CI is slow).
SETTLE = 30.0


class Protect(Protecting):
    """A running ``anytime protect`` (watch), ready once its first scans are done."""

    def __init__(self, repo_dir: Path, *args: str | Path):
        super().__init__(repo_dir, args, "anytime: watching", SETTLE)


@pytest.fixture
def protect(anytime, repo_dir):
    anytime("init", check=0)
    running: list[Protect] = []

    def start(*args) -> Protect:
        pr = Protect(repo_dir, *args)
        running.append(pr)
        return pr
    yield start
    for pr in running:
        if pr.p.poll() is None:
            pr.stop(signal.SIGKILL)


def disk_tree(root: Path) -> dict:
    """rel path (bytes) -> (kind, content or link target) of the tree on disk."""
    root = os.fsencode(root)
    out = {}
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(top, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = (KIND_SYMLINK, os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = (KIND_DIR, None)
            else:
                with open(p, "rb") as f:
                    out[rel] = (KIND_FILE, f.read())
    return out


def view_tree(view: View, path: bytes = b"") -> dict:
    out = {}
    for name, e in view.listdir(path):
        rel = path + b"/" + name if path else name
        if e.kind == KIND_DIR:
            out[rel] = (KIND_DIR, None)
            out.update(view_tree(view, rel))
        elif e.kind == KIND_SYMLINK:
            out[rel] = (KIND_SYMLINK, e.target)
        else:
            out[rel] = (e.kind, view.read(e, 0, e.size) if e.kind == KIND_FILE else None)
    return out


class Volume:
    """Reads of a volume by this (test) process while protect writes it."""

    def __init__(self, repo: Repository, name: str):
        self.repo, self.name = repo, name

    def vol(self):
        with self.repo.read_txn() as txn:
            return get_volume(self.repo, txn, self.name)

    def view(self, at: int = MAX_INSTANT) -> View:
        return View(self.repo, self.vol(), at)

    def tree(self, at: int = MAX_INSTANT) -> dict:
        return view_tree(self.view(at))

    def commits(self) -> list[tuple[int, dict]]:
        with self.repo.read_txn() as txn:
            return list(timeline.commits(self.repo, txn, self.vol().id))

    def read(self, path: bytes, at: int = MAX_INSTANT) -> bytes | None:
        v = self.view(at)
        e = v.lookup(path)
        return None if e is None or e.kind != KIND_FILE else v.read(e, 0, e.size)

    def settle(self, want, timeout: float = SETTLE) -> int:
        """Wait until ``want()`` (a dict) equals the tree at the newest commit; returns
        that commit's instant."""
        end = time.monotonic() + timeout
        while True:
            vol = self.vol()
            got = view_tree(View(self.repo, vol, vol.horizon))
            expected = want()
            if got == expected:
                return vol.horizon
            if time.monotonic() > end:
                missing = sorted(set(expected) - set(got))[:5]
                extra = sorted(set(got) - set(expected))[:5]
                differ = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
                pytest.fail(f"not captured within {timeout} s: missing {missing}, extra "
                            f"{extra}, differing {differ[:5]}")
            time.sleep(0.05)


@pytest.fixture
def volume(repo_dir, protect):
    repos = []

    def open_volume(name: str = "src") -> Volume:
        r = Repository.open(str(repo_dir))
        repos.append(r)
        return Volume(r, name)
    yield open_volume
    for r in repos:
        r.close()


@pytest.fixture
def src(tmp_path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


def test_a_burst_of_10000_small_files_from_tar_is_captured(protect, volume, src, tmp_path):
    payload = tmp_path / "payload"
    for d in range(100):
        (payload / f"d{d:02}").mkdir(parents=True)
        for f in range(100):
            (payload / f"d{d:02}" / f"f{f:02}.txt").write_bytes(b"file %d/%d\n" % (d, f) * (f + 1))
    with tarfile.open(tmp_path / "p.tar", "w") as t:
        t.add(payload, arcname="payload")
    protect(src)
    v = volume()
    subprocess.run(["tar", "xf", str(tmp_path / "p.tar"), "-C", str(src)], check=True)
    v.settle(lambda: disk_tree(src))
    assert len(disk_tree(src)) == 10_101


def test_a_git_branch_switch_is_captured_and_the_branch_before_stays(protect, volume, src):
    git = ["git", "-C", str(src), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", "-b", "main"], check=True)
    for i in range(200):
        (src / f"m{i % 10}").mkdir(exist_ok=True)
        (src / f"m{i % 10}" / f"f{i}.py").write_text(f"print({i})\n" * (i + 1))
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "main"], check=True)
    subprocess.run(git + ["checkout", "-q", "-b", "other"], check=True)
    shutil.rmtree(src / "m3")
    for i in range(50):
        (src / "m1" / f"f{i * 10 + 1}.py").write_text(f"changed {i}\n")
    (src / "new").mkdir()
    (src / "new" / "file").write_text("on other\n")
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "other"], check=True)
    subprocess.run(git + ["checkout", "-q", "main"], check=True)
    protect(src)
    v = volume()

    def work_tree():
        return {k: x for k, x in disk_tree(src).items() if not k.startswith(b".git")}

    def captured(at=MAX_INSTANT):
        return {k: x for k, x in v.tree(at).items() if not k.startswith(b".git")}
    on_main = v.settle(lambda: disk_tree(src))
    main_tree = work_tree()
    subprocess.run(git + ["checkout", "-q", "other"], check=True)
    v.settle(lambda: disk_tree(src))
    assert captured() == work_tree() != main_tree
    assert captured(on_main) == main_tree


def test_editor_saves_appends_and_truncates_each_read_back_at_its_instant(protect, volume,
                                                                            src):
    f = src / "notes.txt"
    f.write_text("draft 0\n")
    protect(src)
    v = volume()
    versions = []
    for i in range(1, 6):  # editor-style: write a temporary file, rename it over
        tmp = src / f".notes.txt.swp{i}"
        tmp.write_text(f"draft {i}\n" * i)
        os.rename(tmp, f)
        versions.append((v.settle(lambda: disk_tree(src)), f.read_bytes()))
    with open(f, "ab") as out:  # appends
        out.write(b"appended\n")
    versions.append((v.settle(lambda: disk_tree(src)), f.read_bytes()))
    os.truncate(f, 4)  # and a truncate
    versions.append((v.settle(lambda: disk_tree(src)), f.read_bytes()))
    for t, content in versions:
        assert v.read(b"notes.txt", t) == content
    assert not any(b".swp" in k for k in v.tree())  # renamed away: never left behind


def test_a_deep_rename_of_a_directory_is_recorded_as_moves(protect, volume, src):
    deep = src / "top"
    d = deep
    for level in range(8):
        d = d / f"level{level}"
        d.mkdir(parents=True)
        for i in range(20):
            (d / f"f{i}").write_bytes(os.urandom(2000))
    protect(src)
    v = volume()
    v.settle(lambda: disk_tree(src))
    before = len(v.commits())
    os.rename(deep, src / "renamed")
    v.settle(lambda: disk_tree(src))
    new = v.commits()[before:]
    assert new, "the rename made a commit"
    assert sum(c.get("files_read", 0) for _, c in new) == 0, "no file was read again"
    assert sum(c.get("moves", 0) for _, c in new) == 160


def test_a_file_rewritten_in_place_continuously_is_never_a_mix(protect, volume, src):
    f = src / "live.dat"
    f.write_bytes(b"0" * 8 + b"\n" * 4096)
    protect(src)
    v = volume()
    writer = subprocess.Popen([sys.executable, "-c", f"""
import os, time
fd = os.open({str(f)!r}, os.O_WRONLY)
end = time.monotonic() + 3
i = 0
while time.monotonic() < end:
    i += 1
    rec = b"%08d" % i + b"\\n" * 4096  # the same number throughout: a mix shows
    os.pwrite(fd, rec[:2048], 0)
    os.pwrite(fd, rec[2048:], 2048)
    time.sleep(0.002)
os.close(fd)
"""])
    writer.wait(60)
    v.settle(lambda: disk_tree(src))
    with v.repo.read_txn() as txn:
        versions = list(timeline.entry_versions(v.repo, txn, v.vol().id, b"live.dat"))
    seen = []
    for t, e in versions:
        if e.kind != KIND_FILE:
            continue
        data = v.read(b"live.dat", t)
        assert data[8:] == b"\n" * 4096 and data[:8].isdigit(), data[:16]
        seen.append(int(data[:8]))
    assert len(seen) >= 4, f"a file changing for 3 s was captured {len(seen)} times"
    assert seen == sorted(seen)


@pytest.mark.parametrize("events", ["fanotify", "inotify"])
def test_more_changes_than_the_event_queue_holds_lose_nothing(protect, volume, src, events):
    (src / "keep").write_text("here before\n")
    pr = protect(src, "--events", events)
    v = volume()
    v.settle(lambda: disk_tree(src))
    os.kill(pr.pid, signal.SIGSTOP)  # it reads no event meanwhile: the queue overflows
    try:
        for d in range(20):
            (src / f"d{d}").mkdir()
            for i in range(1000):  # 20,000 creates, beyond the 16,384 queued at most
                (src / f"d{d}" / f"{i}").write_bytes(b"%d" % i)
        (src / "keep").write_text("changed while it slept\n")
    finally:
        os.kill(pr.pid, signal.SIGCONT)
    v.settle(lambda: disk_tree(src))
    stat = json.loads(_status(pr.repo_dir))["volumes"][0]
    assert stat["running"]


def _status(repo_dir) -> str:
    r = subprocess.run([anytime_command(), "-r", str(repo_dir), "status", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_kill_9_loses_only_the_uncommitted_and_a_restart_reads_only_changes(
        protect, volume, src, repo_dir, anytime):
    for i in range(300):
        (src / f"f{i}").write_bytes(os.urandom(3000))
    pr = protect(src)
    v = volume()
    v.settle(lambda: disk_tree(src))
    (src / "f1").write_bytes(b"changed before the kill\n")
    v.settle(lambda: disk_tree(src))
    assert pr.stop(signal.SIGKILL) == -signal.SIGKILL
    (src / "f2").write_bytes(b"changed while nothing ran\n")
    (src / "f3").unlink()
    n = len(v.commits())
    pr = protect(src)
    v.settle(lambda: disk_tree(src))
    restart = v.commits()[n:]
    assert sum(c.get("files_read", 0) for _, c in restart) == 1, "only the changed file is read"
    assert pr.stop() == 0
    r = anytime("check", "--json", check=0)
    assert json.loads(r.stdout)["ok"]


def test_sigterm_commits_what_is_pending_and_exits(protect, volume, src):
    pr = protect(src, "--sweep", "0")
    v = volume()
    (src / "last").write_text("written just before the stop\n")
    t0 = time.monotonic()
    assert pr.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < SETTLE
    assert v.read(b"last") == b"written just before the stop\n"
    assert any("stopped" in ln for ln in pr.lines)


def test_an_idle_watcher_uses_no_cpu_and_ignores_its_repository(anytime, tmp_path, src):
    repo = src / "repo-inside"  # the repository inside the tree it protects
    anytime("-r", repo, "init", check=0)
    (src / "a").write_text("a\n")
    (src / "scratch.tmp").write_text("excluded\n")
    # inotify: fanotify marks the whole filesystem, where other processes of this
    # machine (other tests) make events it must read and drop
    pr = Protect(repo, src, "--exclude", "*.tmp", "--events", "inotify")
    try:
        r = Repository.open(str(repo))
        v = Volume(r, "src")
        v.settle(lambda: {k: x for k, x in disk_tree(src).items()
                          if not k.startswith(b"repo-inside") and not k.endswith(b".tmp")})
        time.sleep(1)  # its own last writes have been seen
        n = len(v.commits())
        cpu, wakeups = _cpu_ticks(pr.pid), _switches(pr.pid)
        time.sleep(3)
        assert _cpu_ticks(pr.pid) - cpu <= 1, "CPU used while nothing changed"
        assert _switches(pr.pid) - wakeups <= 2, "it woke up while nothing changed"
        assert len(v.commits()) == n, "it commits its own repository's writes"
        r.close()
    finally:
        pr.stop()


def _switches(pid: int) -> int:
    """Context switches of every thread of ``pid`` (each sleep and wake-up counts)."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches:" in line:
                n += int(line.split()[1])
    return n


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_status_shows_a_running_capture_and_then_a_stopped_one(protect, volume, src,
                                                              repo_dir):
    pr = protect(src)
    v = volume()
    (src / "x").write_text("x\n")
    t = v.settle(lambda: disk_tree(src))
    s = json.loads(_status(repo_dir))
    (vol,) = s["volumes"]
    assert vol["running"] and vol["pid"] == pr.pid and vol["mode"] == "watch"
    assert vol["events"] in ("fanotify", "inotify")
    assert vol["newest_change_ns"] == t and vol["behind_s"] == 0.0 and vol["queued"] == 0
    assert s["repository_bytes"] > 0
    pr.stop()
    (vol,) = json.loads(_status(repo_dir))["volumes"]
    assert not vol["running"] and vol["behind_s"] is None


def test_protect_refuses_what_it_cannot_do(anytime, protect, src, tmp_path):
    (src / "f").write_text("f\n")
    r = anytime("protect", src / "f", check=None)
    assert r.returncode == 2 and b"not a directory" in r.stderr
    r = anytime("protect", tmp_path / "missing", check=None)
    assert r.returncode != 0 and b"does not exist" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    r = anytime("protect", src, other, "--name", "one", check=None)
    assert r.returncode == 2 and b"--name" in r.stderr
    protect(src)
    r = anytime("protect", other, check=None)  # one writer at a time
    assert r.returncode == 11 and b"another anytime process" in r.stderr
    r = anytime("snapshot", other, check=None)
    assert r.returncode == 11


def test_the_systemd_unit_runs_this_command(anytime, src, repo_dir):
    r = anytime("protect", src, "--exclude", "*.tmp", "--systemd-unit", check=0)
    unit = r.stdout.decode()
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert f"--repo {repo_dir} protect --exclude '*.tmp' {src}" in exec_start
    assert "KillSignal=SIGTERM" in unit and "WantedBy=multi-user.target" in unit


def test_a_filesystem_mounted_inside_the_tree_is_watched_too(protect, volume, src):
    inner = src / "scratch"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(inner)], check=True)
    try:
        (inner / "before").write_text("before\n")
        protect(src, "--sweep", "0")  # only events can find what follows
        v = volume()
        v.settle(lambda: disk_tree(src))
        (inner / "after").write_text("written on the inner filesystem\n")
        v.settle(lambda: disk_tree(src))
        assert v.read(b"scratch/after") == b"written on the inner filesystem\n"
    finally:
        subprocess.run(["umount", "-l", str(inner)], check=False)


def test_labels_are_set_and_removed_while_protect_holds_the_lock(anytime, protect, volume,
                                                                  src):
    (src / "f").write_text("v1\n")
    protect(src)
    v = volume()
    v.settle(lambda: disk_tree(src))
    anytime("mark", src, "before-upgrade", check=0)  # served by the protect process
    (src / "f").write_text("v2\n")
    v.settle(lambda: disk_tree(src))
    assert anytime("cat", src / "f", "--at", "before-upgrade", check=0).stdout == b"v1\n"
    r = anytime("mark", src, "before-upgrade", check=None)  # taken: refused, as before
    assert r.returncode != 0 and b"before-upgrade" in r.stderr
    anytime("unmark", src, "before-upgrade", check=0)
    r = anytime("cat", src / "f", "--at", "before-upgrade", check=None)
    assert r.returncode != 0
    with v.repo.read_txn() as txn:
        assert timeline.labels(v.repo, txn, v.vol().id) == []


def meta_tree(root: Path) -> dict:
    """rel path -> (mode, uid, gid, xattrs, link count, link target) of the tree on disk."""
    out = {}
    root_b = os.fsencode(root)
    for top, dirs, files in os.walk(root_b):
        for n in dirs + files:
            p = os.path.join(top, n)
            s = os.lstat(p)
            xattrs = {} if os.path.islink(p) else {
                a: os.getxattr(p, a) for a in os.listxattr(p) if a.startswith("user.")}
            out[os.path.relpath(p, root_b)] = (
                s.st_mode, s.st_uid, s.st_gid, xattrs,
                s.st_nlink if not os.path.isdir(p) else 0,
                os.readlink(p) if os.path.islink(p) else None)
    return out


def view_meta(view: View, path: bytes = b"") -> dict:
    out = {}
    for name, e in view.listdir(path):
        rel = path + b"/" + name if path else name
        xattrs = {k.decode() if isinstance(k, bytes) else k: v for k, v in e.xattrs.items()
                  if (k.decode() if isinstance(k, bytes) else k).startswith("user.")}
        out[rel] = (e.mode, e.uid, e.gid, xattrs, e.nlink if e.kind != KIND_DIR else 0,
                    e.target if e.kind == KIND_SYMLINK else None)
        if e.kind == KIND_DIR:
            out.update(view_meta(view, rel))
    return out


@pytest.mark.parametrize("events", ["fanotify", "inotify"])
def test_metadata_links_and_directories_are_captured(protect, volume, src, events):
    (src / "f").write_text("f\n")
    (src / "gone").mkdir()
    protect(src, "--events", events)
    v = volume()
    v.settle(lambda: disk_tree(src))
    os.chmod(src / "f", 0o640)
    os.chown(src / "f", 1234, 5678)
    os.setxattr(src / "f", "user.note", b"kept")
    os.link(src / "f", src / "hard")
    os.symlink("f", src / "soft")
    (src / "new" / "sub").mkdir(parents=True)
    os.rmdir(src / "gone")
    v.settle(lambda: disk_tree(src))
    end = time.monotonic() + SETTLE
    while view_meta(v.view()) != meta_tree(src) and time.monotonic() < end:
        time.sleep(0.05)
    assert view_meta(v.view()) == meta_tree(src)
    hard, f = v.view().lookup(b"hard"), v.view().lookup(b"f")
    assert hard.file_id == f.file_id, "a hardlink shares its file's content"


def test_latest_of_a_mount_follows_protect(anytime, protect, volume, src, tmp_path):
    """While protect runs, a change shows in latest/ of a mount (the watcher commits it,
    the mount re-reads the horizon): waited for, not timed (the benchmark times it)."""
    (src / "doc").write_text("first\n")
    protect(src)
    v = volume()
    v.settle(lambda: disk_tree(src))
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(anytime, "src", mp):
        assert (mp / "latest" / "doc").read_text() == "first\n"
        (src / "doc").write_text("second, longer than the first\n")
        (src / "added").write_text("new\n")
        end = time.monotonic() + SETTLE
        while time.monotonic() < end:
            try:
                if ((mp / "latest" / "doc").read_text() == "second, longer than the first\n"
                        and (mp / "latest" / "added").read_text() == "new\n"):
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        assert (mp / "latest" / "doc").read_text() == "second, longer than the first\n"
        assert (mp / "latest" / "added").read_text() == "new\n"


def test_a_protected_tree_that_vanishes_stops_protect_with_a_clear_error(protect, volume,
                                                                         src):
    (src / "f").write_text("f\n")
    pr = protect(src)
    v = volume()
    v.settle(lambda: disk_tree(src))
    shutil.rmtree(src)
    rc = pr.p.wait(SETTLE)
    err = "".join(pr.lines)
    assert rc == 1 and "cannot be read" in err and "Traceback" not in err, err
    # nothing is recorded deleted for a root that went (an unmounted disk, say)
    assert v.read(b"f") == b"f\n"


def test_sigterm_during_the_first_scan_stops_it_and_keeps_its_blocks(anytime, repo_dir, src,
                                                                     tmp_path):
    anytime("init", check=0)
    for d in range(40):
        (src / f"d{d}").mkdir()
        for i in range(100):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(40_000))
    p = subprocess.Popen([anytime_command(), "-r", str(repo_dir), "protect", str(src)],
                         stderr=subprocess.PIPE)
    first = p.stderr.readline().decode()  # printed just before the first scan starts
    assert first.startswith("anytime: protecting"), first
    time.sleep(0.3)  # inside the first scan of 160 MB of random data (seconds here)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(SETTLE)
    err = p.stderr.read().decode()
    assert rc == 130, err
    assert "stopped during a whole-tree scan" in err and "Traceback" not in err, err
    r = anytime("check", "--json", check=0)
    assert json.loads(r.stdout)["ok"]
