"""Helpers for tests: build varied trees, compare trees byte- and metadata-exactly, take
snapshots through the command and look at a volume in-process."""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from anytime.store.format import MAX_INSTANT
from anytime.store.repo import Repository
from anytime.store.volumes import get_volume
from anytime.vfs.view import View


def at_epoch(ns: int) -> str:
    """An instant as ``@SECONDS.NANOS``, exact (a float would round to ~200 ns)."""
    return f"@{ns // 10**9}.{ns % 10**9:09d}"


def snap(anytime, path, *extra) -> dict:
    """Snapshot ``path`` through the command (exit 0 expected); the --json summary."""
    r = anytime("snapshot", path, "--json", *extra, check=0)
    return json.loads(r.stdout)


@contextmanager
def view_at(repo_dir, volume: str, instant: int = MAX_INSTANT):
    """An in-process View of ``volume`` (to inspect entries the CLI does not print)."""
    with Repository.open(str(repo_dir)) as repo:
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, volume)
        yield View(repo, vol, instant)


def build_tree(root: Path) -> None:
    """A tree with the entry kinds anytime must keep: text, binary, sparse, hardlinks,
    symlinks, a fifo, odd names, xattrs, unusual modes."""
    (root / "docs").mkdir()
    (root / "docs" / "report.txt").write_text("line one\nline two\nline three\n")
    (root / "docs" / "empty").write_bytes(b"")
    (root / "bin.dat").write_bytes(os.urandom(300_000))
    with open(root / "sparse.img", "wb") as f:
        f.write(b"head")
        f.seek(8 << 20)
        f.write(b"tail")
    (root / "hard1").write_bytes(b"shared content\n" * 100)
    os.link(root / "hard1", root / "hard2")
    os.symlink("docs/report.txt", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.mkfifo(root / "fifo")
    odd = os.fsencode(root) + b"/caf\xe9 \n-name"
    with open(odd, "wb") as f:
        f.write(b"latin-1 name\n")
    (root / "secret").write_bytes(b"top secret\n")
    os.chmod(root / "secret", 0o600)
    os.chmod(root / "docs", 0o750)
    os.setxattr(root / "docs" / "report.txt", b"user.comment", b"keep me")
    os.chown(root / "bin.dat", 1234, 5678)
    os.utime(root / "docs" / "report.txt", ns=(1_600_000_000_123_456_789,
                                                  1_600_000_000_987_654_321))


def snapshot_tree(root: Path | bytes) -> dict:
    """Everything a restore must reproduce, keyed by relative path (bytes)."""
    root = os.fsencode(root)
    out = {}
    inodes: dict[int, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames) + ([b""] if dirpath == root else []):
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            rec = {"mode": s.st_mode, "uid": s.st_uid, "gid": s.st_gid}
            if not stat.S_ISLNK(s.st_mode):
                rec["mtime"] = s.st_mtime_ns
                try:
                    rec["xattrs"] = {n: os.getxattr(p, n) for n in os.listxattr(p)}
                except OSError:
                    rec["xattrs"] = {}
            if stat.S_ISREG(s.st_mode):
                with open(p, "rb") as f:
                    rec["data"] = f.read()
                rec["sparse"] = s.st_blocks * 512 < s.st_size // 2
                if s.st_nlink > 1:
                    rec["link_group"] = inodes.setdefault(s.st_ino, rel)
            elif stat.S_ISLNK(s.st_mode):
                rec["target"] = os.readlink(p)
            if rel == b".":
                rec.pop("mtime", None)  # the root's mtime is the caller's business
            out[rel] = rec
    return out


def assert_same_tree(a: Path | bytes, b: Path | bytes, ignore_root_meta: bool = True) -> None:
    ta, tb = snapshot_tree(a), snapshot_tree(b)
    if ignore_root_meta:
        ta.pop(b".", None)
        tb.pop(b".", None)
    assert sorted(ta) == sorted(tb), f"entries differ: {set(ta) ^ set(tb)}"
    for k in ta:
        assert ta[k] == tb[k], f"{k!r} differs: {_short(ta[k])} != {_short(tb[k])}"


def _short(rec: dict) -> dict:
    return {k: (v[:40] if isinstance(v, bytes) else v) for k, v in rec.items()}


class Protecting:
    """A running ``anytime -r REPO protect ARGS...``, ready once its stderr has a line
    starting with ``ready`` (within ``timeout`` seconds; the test fails otherwise).
    ``lines``: its stderr so far, read by a thread."""

    def __init__(self, repo_dir, args, ready: str, timeout: float = 30.0):
        import subprocess
        import threading

        from conftest import anytime_command

        self.repo_dir, self.timeout, self._ready_line = repo_dir, timeout, ready
        self.p = subprocess.Popen([anytime_command(), "-r", str(repo_dir), "protect",
                                   *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(timeout):
            self.p.kill()
            import pytest

            pytest.fail(f"protect did not print '{ready}':\n" + "".join(self.lines))

    def _read(self) -> None:
        for raw in self.p.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if line.startswith(self._ready_line):
                self.ready.set()
        self.ready.set()

    def stop(self, sig=None, timeout: float | None = None) -> int:
        """Send ``sig`` (SIGTERM by default) and wait for the exit code."""
        import signal

        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM if sig is None else sig)
        rc = self.p.wait(timeout or self.timeout)
        self._reader.join(timeout or self.timeout)
        return rc

    @property
    def pid(self) -> int:
        return self.p.pid
