"""The shim end to end: a real ``anytime protect --mode shim`` mounted over a real tree,
real applications writing through it (SQLite in WAL and rollback-journal modes under
continuous transactions), and copies out of the time-travel mount at many instants
that must be consistent databases holding exactly the transactions committed before.
Also: files and metadata through the shim, SIGTERM, kill -9."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import anytime_command
from test_mount import mounted
from treeutil import at_epoch

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the shim mounts over a tree as root"),
]

SETTLE = 30.0


class Shim:
    def __init__(self, repo_dir: Path, src: Path, *extra: str):
        self.src = src
        self.p = subprocess.Popen([anytime_command(), "-r", str(repo_dir), "protect", str(src),
                                   "--mode", "shim", *extra], stderr=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(SETTLE):
            self.p.kill()
            pytest.fail("the shim did not mount:\n" + "".join(self.lines))

    def _read(self) -> None:
        for raw in self.p.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if "shim mounted" in line:
                self.ready.set()
        self.ready.set()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        return self.p.wait(SETTLE)


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
