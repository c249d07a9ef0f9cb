#!/usr/bin/env python3
"""anytime side by side with restic and borg: one run, the same data, one table.

Run it with the project's interpreter (it imports ``anytime`` to build the
10^6-version repository):

    .venv/bin/python bench/run.py [--only PART ...] [--scratch DIR] [--restore-dir DIR]
                                  [--keep]

PART: capture, startup, mount, restore, versions, shifted, watch (continuous capture),
shim (writes through the every-write shim).

Prints progress to stderr, a Markdown table to stdout, and writes
``bench/out/results.json``. See bench/README.md for what each figure means.

Every external command is timed with ``time.perf_counter`` around its whole run
(process start included); peak memory is the ``ru_maxrss`` of that child alone,
collected with ``os.wait4``. A tool or command that is missing gives "n/a" in the
table, never a crash.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter, sleep

MiB = 1 << 20
BIG_BYTES = 550 * MiB
BIG_NAME = "big.bin"
SO_ROOTS = ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/libexec", "/opt")
DIFF_FILES = 10
# The small-files corpus (bench/README.md): SMALL_FILES files of SMALL_BYTES in all, cut
# from real files under SMALL_ROOTS and spread over SMALL_DIRS directories.
SMALL_FILES = 50_000
SMALL_BYTES = 207_000_000
SMALL_DIRS = 2_500
SMALL_ROOTS = ("/usr/share", "/usr/lib")
SMALL_SEED = 8
SMALL_PER_SOURCE = 64 * 1024  # bytes taken from the start of each source file, at most
#: Corpora of the capture part, in order.
CAPTURE_CORPORA = ("stdlib", "bigfile", "small")
# The shifted-content part (bench/README.md): a text file of TEXT_BYTES, the .py files of
# the standard library concatenated, edited by SHIFT (105 bytes) at SHIFT_AT and in the
# middle; and DUP_BYTES of every regular file under DUP_ROOT concatenated.
TEXT_BYTES = 31_500_000
TEXT_NAME = "code.txt"
SHIFT_AT = 1000
SHIFT = (b"# 105 bytes inserted by bench/run.py: all that follows shifts by 105; "
         b"content-defined chunks survive it.\n")
assert len(SHIFT) == 105
DUP_ROOT = "/usr/lib/x86_64-linux-gnu"
DUP_BYTES = 580_000_000
DUP_NAME = "dup.bin"
#: The edits of the shifted-content part: name -> (what, offset or None for the middle,
#: bytes inserted, bytes deleted).
EDITS = {
    "insert-1000": (f"{len(SHIFT)} bytes inserted at offset {SHIFT_AT}", SHIFT_AT, SHIFT, 0),
    "delete-1000": (f"{len(SHIFT)} bytes deleted at offset {SHIFT_AT}", SHIFT_AT, b"",
                    len(SHIFT)),
    "insert-middle": (f"{len(SHIFT)} bytes inserted in the middle", None, SHIFT, 0),
}
#: Commands whose start-up time is measured (fig I), and how many times each.
STARTUP_RUNS = 30
HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
T_START = perf_counter()
PEERS = ("restic", "borg", "borg-zstd")
TOOLS = ("anytime",) + PEERS
#: The size goal of issue 9, against borg with zstd too (like for like).
SIZE_GOAL = "<= smaller peer (issue 9)"
#: Column heads of the table.
HEADS = {"anytime": "anytime", "restic": "restic", "borg": "borg (lz4)",
         "borg-zstd": "borg -C zstd,3"}
#: Parts a tool takes part in (borg-zstd: capture and shifted content, for sizes).
ALL_PARTS = ("capture", "startup", "mount", "restore", "versions", "shifted", "watch",
             "shim", "prune")
#: The retention policy of the prune part (fig P), over PRUNE_COMMITS commits a minute
#: apart that end ten minutes ago: every commit of the last 2 hours, then hourly for a day.
PRUNE_POLICY = ("--keep-all", "2h", "--hourly", "1d")
# The continuous-capture part (bench/README.md, fig W): a load generator changes files of
# a watched tree at each rate of WATCH_PHASES (changes per second, seconds), spread over
# WATCH_DIRS x WATCH_FILES files; every WATCH_NEW_EVERY-th change makes a new file.
WATCH_PHASES = ((1000, 20.0), (10_000, 10.0))
WATCH_DIRS = 8
WATCH_FILES = 40  # per directory
WATCH_NEW_EVERY = 10
WATCH_IDLE_S = 10.0
WATCH_POLL_S = 0.01  # the probe's poll of the volume's horizon
WATCH_MODES = ("fanotify", "inotify")
WATCH_COMMITS = 60  # commits of one changed file, timed in-process
# the every-write shim part (X): configurations, in the order they run, and the workload
SHIM_CONFIGS = ("direct", "floor", "shim", "shim --sync")
SHIM_PARAMS = {"seq_mib": 1024, "rand_file_mib": 256, "rand_n": 2000, "rand_max_s": 15.0,
               "sqlite_s": 5.0}


def log(msg: str) -> None:
    print(f"[bench {perf_counter() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A step could not be measured; its figure becomes n/a with this note."""


# --- running commands -----------------------------------------------------------------

@dataclass
class Res:
    rc: int
    secs: float
    maxrss: int  # bytes
    out: str = ""
    err: str = ""
    info: dict = field(default_factory=dict)
    maxanon: int = 0  # bytes: peak private (anonymous) memory, when measured
    cpu: float = 0.0  # s: the child's user + system time (without rss)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self) -> str:
        text = (self.err.strip() or self.out.strip()).splitlines()
        return " | ".join(text[-3:])[:300]


# A small process that starts the measured command and reports its wall time and
# peak RSS. Linux counts the memory of the process a child was forked (or vforked)
# from in the child's ru_maxrss, so a command started straight from this (big) bench
# process would report the bench's own peak. Started from this launcher, the floor is
# the launcher's few MB instead.
LAUNCHER = r"""
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as e:
    sys.stderr.write(f"{argv[0]}: {e}\n")
    sys.exit(127)
# Peak private memory (RssAnon, KiB), sampled every 5 ms: ru_maxrss also counts pages
# of mapped files (the LMDB index) that the kernel maps around each fault; those are
# shared page cache, not memory the command holds.
anon, status = 0, f"/proc/{pid}/status"
while True:
    done, st, ru = os.wait4(pid, os.WNOHANG)
    if done:
        break
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = max(anon, int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.005)
t = time.perf_counter() - t0
with open(out, "w") as f:
    f.write(f"{t!r} {ru.ru_maxrss} {anon}")
code = os.waitstatus_to_exitcode(st)
sys.exit(code if code >= 0 else 128 - code)
"""


# The load generator of the continuous-capture part: plain Python, a process of its own.
# argv: tree, output file, JSON parameters. Change number i (from 1) writes to the file
# it picks a small unique content: "%010d " % i, its path, and padding to the file's
# size (1-4 KB, fixed per file: watch_size), with one open/write/close, and records the
# wall time right after close(). Every new_every-th change makes a new file; the others
# overwrite one of the files already there (picked by a multiplicative hash of i) in
# place, without O_TRUNC: on ext4, close() after truncating a file that held data starts
# its writeback (auto_da_alloc), which alone caps truncating rewrites near 3,000/s here
# (bench/README.md). Each phase paces changes to its rate, never more than 1 ms ahead of
# the schedule; one that cannot keep up runs flat out.
LOADGEN = r"""
import array, json, os, sys, time
root, out, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
paths = list(params["pool"])
n_pool, new_every, n_dirs = len(paths), params["new_every"], params["dirs"]
pad = b"".join(b"%07d abcdefghijklmnopqrstuvwxyz\n" % k for k in range(128))
close_ns, which = array.array("q"), array.array("l")
flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
phases, i = [], 0
for rate, secs in params["phases"]:
    n = int(rate * secs)
    t0, w0 = time.monotonic(), time.time_ns()
    for k in range(n):
        d = t0 + k / rate - time.monotonic()
        if d > 0.001:
            time.sleep(d)
        i += 1
        if i % new_every == 0:
            f = len(paths)
            paths.append("d%02d/new%07d" % (i % n_dirs, i))
        else:
            f = (i * 2654435761) % n_pool
        rel = paths[f]
        head = b"%010d %s " % (i, rel.encode())
        data = head + pad[:1024 + (f * 7919) % 3072 - len(head)]
        fd = os.open(os.path.join(root, rel), flags, 0o644)
        os.write(fd, data)
        os.close(fd)
        close_ns.append(time.time_ns())
        which.append(f)
    phases.append({"rate": rate, "secs": secs, "n": n, "start_ns": w0,
                   "end_ns": time.time_ns(), "busy_s": time.monotonic() - t0})
with open(out + ".bin", "wb") as fo:
    close_ns.tofile(fo)
    which.tofile(fo)
with open(out, "w") as fo:
    json.dump({"phases": phases, "paths": paths, "n": i}, fo)
"""

# Commits of one changed file through one writer session, timed in-process (the cost of
# one watcher commit, fig W): argv: repository (made here), tree, commits. Prints JSON:
# the seconds of each whole PathScan.run (stat, read, store, commit) and of each
# CommitBuilder.commit alone (the commit point: pack flush, LMDB transaction).
COMMIT_LOOP = r"""
import json, os, sys, time
from anytime.capture.pathscan import PathScan
from anytime.capture.scan import Scanner
from anytime.store import clock, writer
from anytime.store.repo import Repository
from anytime.store.session import WriterSession
from anytime.store.volumes import volume_for_source
repo_dir, src, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
f = os.path.join(src, "f")
with open(f, "wb") as fo:
    fo.write(b"version 0\n" * 200)
Repository.init(repo_dir)
commits, scans = [], []
orig = writer.CommitBuilder.commit
def timed(self, *a, **kw):
    t = time.perf_counter()
    try:
        return orig(self, *a, **kw)
    finally:
        commits.append(time.perf_counter() - t)
writer.CommitBuilder.commit = timed
with Repository.open(repo_dir) as repo, WriterSession(repo) as session:
    vol = volume_for_source(repo, src, "v", clock.now_ns())
    Scanner(repo, vol, os.fsencode(src), session=session).run({"kind": "bench"})
    commits.clear()
    for i in range(1, n + 1):
        with open(f, "wb") as fo:
            fo.write(b"version %d\n" % i * 200)
        t = time.perf_counter()
        PathScan(repo, vol, os.fsencode(src), {b"f": False}, session=session).run(
            {"kind": "bench"})
        scans.append(time.perf_counter() - t)
print(json.dumps({"commit_s": commits, "scan_s": scans}))
"""


# The workload of the every-write shim part (fig X): plain Python, a process of its own,
# run in the tree (through the shim, the floor passthrough, or directly). argv: tree,
# phase, JSON parameters; prints JSON. Phases:
#   seq     SEQ.bin: params["mib"] writes of 1 MiB (incompressible: one random MiB, its
#           first 8 bytes the write's number, so no two writes are the same chunk), then
#           fsync; the seconds from open to after fsync.
#   reread  SEQ.bin read twice in 1 MiB readinto calls; the first read checks every MiB
#           against what seq wrote; the seconds of each read.
#   prefill RAND.bin: params["mib"] MiB written as seq writes them, then fsync.
#   rand    params["n"] writes of 4 KiB at seeded random 4 KiB-aligned offsets of
#           RAND.bin, each followed by fsync, at most params["max_s"] seconds; the
#           latency of each pwrite + fsync; a BLAKE2b digest of RAND.bin after.
#   sqlite  app.db in WAL mode, synchronous=FULL: a transaction of one small insert
#           (100 bytes) after another for params["secs"] seconds; integrity_check after.
SHIMLOAD = r"""
import hashlib, json, os, random, sqlite3, sys, time
tree, phase, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
MiB = 1 << 20
base = bytearray(random.Random(11).randbytes(MiB))
out = {}

def write_seq(path, mib):
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(mib):
        base[:8] = i.to_bytes(8, "little")
        os.write(fd, base)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0

if phase in ("seq", "prefill"):
    name = "SEQ.bin" if phase == "seq" else "RAND.bin"
    out["secs"] = write_seq(os.path.join(tree, name), params["mib"])
    out["bytes"] = params["mib"] * MiB
elif phase == "reread":
    buf = bytearray(MiB)
    view = memoryview(buf)
    bad, secs = 0, []
    for k in range(2):
        t0 = time.perf_counter()
        with open(os.path.join(tree, "SEQ.bin"), "rb", buffering=0) as f:
            i = 0
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                if k == 0:
                    base[:8] = i.to_bytes(8, "little")
                    bad += n != MiB or view[:n] != base[:n]
                i += 1
        secs.append(time.perf_counter() - t0)
    out.update(secs=secs, bytes=i * MiB, bad_mib=bad, mib=i)
elif phase == "rand":
    path = os.path.join(tree, "RAND.bin")
    blocks = os.stat(path).st_size // 4096
    rng = random.Random(5)
    fd = os.open(path, os.O_RDWR)
    lat = []
    end = time.perf_counter() + params["max_s"]
    for i in range(params["n"]):
        data = rng.randbytes(4096)
        off = rng.randrange(blocks) * 4096
        t0 = time.perf_counter()
        os.pwrite(fd, data, off)
        os.fsync(fd)
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 > end:
            break
    os.close(fd)
    h = hashlib.blake2b(digest_size=16)  # as digest() in run.py
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    out.update(lat=lat, bytes=len(lat) * 4096, digest=h.hexdigest())
elif phase == "sqlite":
    db = os.path.join(tree, "app.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, v BLOB)")
    n, t0 = 0, time.perf_counter()
    end = t0 + params["secs"]
    while time.perf_counter() < end:
        n += 1
        c.execute("BEGIN")
        c.execute("INSERT INTO t (v) VALUES (randomblob(100))")
        c.execute("COMMIT")
    secs = time.perf_counter() - t0
    ok = c.execute("PRAGMA integrity_check").fetchone()[0]
    rows = c.execute("SELECT count(*) FROM t").fetchone()[0]
    c.close()
    out.update(tx=n, secs=secs, integrity=ok, rows=rows)
print(json.dumps(out))
"""

# The floor of the shim part: a do-nothing mfusepy passthrough (high-level API, the
# shim's mount options and connection settings, mounted over the tree itself and
# reaching it through a directory descriptor opened before, as the shim does), with no
# recording. argv: tree, cached: 0 as the shim (nothing cached), or 1 with the kernel's
# caches on: a file's page cache kept across opens (keep_cache) and entries and
# attributes cached for 1 s. Prints "mounted" once it answers; ends when unmounted.
PASSTHRU = r"""
import errno, os, sys, threading, time
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy
tree, keep = sys.argv[1], sys.argv[2] == "1"
timeout = 1.0 if keep else 0.0
root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)

def rel(p):
    return p.lstrip("/") or "."

class Ops(mfusepy.Operations):
    use_ns = True  # times as integer nanoseconds
    def init_with_config(self, conn, config):
        if conn is not None:
            conn.max_write = 1 << 20
        if config is not None:
            config.use_ino = 1
            config.entry_timeout = config.attr_timeout = config.negative_timeout = timeout
    def getattr(self, path, fh=None):
        s = os.lstat(rel(path), dir_fd=root)
        return {k: getattr(s, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid",
                "st_gid", "st_size", "st_blocks")} | {
                k: getattr(s, k + "_ns") for k in ("st_atime", "st_mtime", "st_ctime")}
    def readdir(self, path, fh):
        fd = os.open(rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
        try:
            return [".", ".."] + os.listdir(fd)
        finally:
            os.close(fd)
    def access(self, path, amode):
        if not os.access(rel(path), amode, dir_fd=root):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0
    def statfs(self, path):
        s = os.statvfs(tree if False else "/proc/self/fd/%d" % root)
        return {k: getattr(s, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax")}
    def open(self, path, fi):
        fi.fh = os.open(rel(path), fi.flags & ~os.O_CREAT, dir_fd=root)
        fi.keep_cache = keep
        return 0
    def create(self, path, mode, fi):
        fi.fh = os.open(rel(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode, dir_fd=root)
        return 0
    def read(self, path, size, offset, fi):
        return os.pread(fi.fh, size, offset)
    def write(self, path, data, offset, fi):
        return os.pwrite(fi.fh, data, offset)
    def truncate(self, path, length, fh=None):
        fd = os.open(rel(path), os.O_WRONLY, dir_fd=root)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)
        return 0
    def fsync(self, path, datasync, fi):
        (os.fdatasync if datasync else os.fsync)(fi.fh)
        return 0
    def flush(self, path, fi):
        return 0
    def release(self, path, fi):
        os.close(fi.fh)
        return 0
    def unlink(self, path):
        os.unlink(rel(path), dir_fd=root)
        return 0
    def chmod(self, path, mode):
        os.chmod(rel(path), mode, dir_fd=root)
        return 0

def wrap(fn):
    def call(*a, **kw):
        try:
            return fn(*a, **kw)
        except OSError as e:
            if isinstance(e, mfusepy.FuseOSError):
                raise
            raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
    return call

for name in ("getattr", "readdir", "access", "statfs", "open", "create", "read", "write",
             "truncate", "fsync", "flush", "release", "unlink", "chmod"):
    setattr(Ops, name, wrap(getattr(Ops, name)))

under = os.fstat(root).st_dev
def ready():
    for _ in range(1000):
        try:
            if os.stat(tree).st_dev != under:
                print("mounted", flush=True)
                return
        except OSError:
            pass
        time.sleep(0.01)
threading.Thread(target=ready, daemon=True).start()
mfusepy.FUSE(Ops(), tree, raw_fi=True, foreground=True, use_ino=True, max_threads=16,
             default_permissions=True, allow_other=os.geteuid() == 0,
             fsname="bench-passthrough")
"""


def watch_size(f: int) -> int:
    """The size of file number ``f`` of the watched tree (LOADGEN): 1-4 KB."""
    return 1024 + (f * 7919) % 3072


def run(cmd, env=None, cwd=None, timeout: float = 900, stdout_path=None,
        keep_out: bool = True, rss: bool = False) -> Res:
    """Run ``cmd`` to completion; wall time, exit code, and the child's own max RSS.

    Output goes to temporary files, not pipes, so a daemonising child (a mount) that
    keeps the descriptors open cannot hang us. With ``rss`` the command is started by
    :data:`LAUNCHER`, which measures its time and peak memory itself (launcher start-up
    excluded); otherwise ``maxrss`` is not meaningful.
    """
    if rss:
        fd, stat_path = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        try:
            r = run([sys.executable, "-I", "-S", "-c", LAUNCHER, stat_path, *cmd], env=env,
                    cwd=cwd, timeout=timeout, stdout_path=stdout_path, keep_out=keep_out)
            with contextlib.suppress(OSError, ValueError):
                secs, kib, anon = open(stat_path).read().split()
                r.secs, r.maxrss, r.maxanon = float(secs), int(kib) * 1024, int(anon) * 1024
            return r
        finally:
            os.unlink(stat_path)
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        dest = open(stdout_path, "wb") if stdout_path else fo  # noqa: SIM115
        try:
            t0 = perf_counter()
            try:
                p = subprocess.Popen(cmd, stdout=dest, stderr=fe, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
            except OSError as e:
                return Res(127, 0.0, 0, "", f"{cmd[0]}: {e}")

            def _kill():
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)

            timer = threading.Timer(timeout, _kill)
            timer.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)
            finally:
                timer.cancel()
            secs = perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if stdout_path:
                dest.close()
        out = err = ""
        if keep_out:
            fo.seek(0)
            out = fo.read(1 << 20).decode(errors="replace")
        fe.seek(0)
        err = fe.read(1 << 16).decode(errors="replace")
        return Res(p.returncode, secs, ru.ru_maxrss * 1024, out, err,
                   cpu=ru.ru_utime + ru.ru_stime)


def must(r: Res, what: str) -> Res:
    if not r.ok:
        raise BenchError(f"{what} failed (exit {r.rc}): {r.tail()}")
    return r


def at_epoch(ns: int) -> str:
    """An instant as ``@SECONDS.NANOS``, exact (a float would round to ~200 ns)."""
    return f"@{ns // 10**9}.{ns % 10**9:09d}"


def du_bytes(path: Path) -> tuple[int, int]:
    """(disk usage, apparent size) in bytes of everything under ``path``, like du -s."""
    used = apparent = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                s = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (s.st_dev, s.st_ino) in seen:
                continue
            seen.add((s.st_dev, s.st_ino))
            used += s.st_blocks * 512
            apparent += s.st_size
    return used, apparent


def tree_bytes(path: Path) -> tuple[int, int]:
    """(regular files, their bytes) under ``path``: a cheap check that a copy is whole."""
    n = total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                s = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if stat.S_ISREG(s.st_mode):
                n += 1
                total += s.st_size
    return n, total


def rmtree(path: Path) -> None:
    if os.path.ismount(path):
        force_unmount(path)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # e.g. read-only bits left by a restore
        subprocess.run(["rm", "-rf", str(path)], check=False)


def read_file(path: Path, chunk: int = MiB) -> tuple[int, float]:
    """Sequential read in ``chunk`` requests; returns (bytes, seconds)."""
    buf = bytearray(chunk)
    total = 0
    t0 = perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
    return total, perf_counter() - t0


def warm(path: Path) -> None:
    """Read every regular file under ``path`` (symlinks skipped), so it is in the page
    cache: the corpora before anything is timed, and a repository right before its mount
    is measured ("repositories warm"; the kernel's proactive reclaim, DAMON on this VM,
    may have dropped pages written minutes earlier)."""
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink():
                continue
            try:
                read_file(p)
            except OSError:
                pass


def force_unmount(path: Path) -> None:
    for cmd in (["fusermount3", "-u", "-z"], ["fusermount", "-u", "-z"], ["umount", "-l"]):
        if shutil.which(cmd[0]):
            subprocess.run(cmd + [str(path)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            if not os.path.ismount(path):
                return


def wait_listable(path: Path, t0: float, timeout: float, proc=None) -> float:
    """Seconds from ``t0`` to the first successful ``os.listdir(path)``."""
    deadline = t0 + timeout
    while True:
        try:
            os.listdir(path)
            return perf_counter() - t0
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"mount process exited with {proc.returncode} before {path} "
                             f"could be listed")
        if perf_counter() > deadline:
            raise BenchError(f"{path} not listable after {timeout:.0f} s")
        sleep(0.002)


def small_sources(roots=SMALL_ROOTS) -> list[str]:
    """Regular files under ``roots``, each inode once, in sorted order."""
    out, seen = [], set()
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for f in sorted(files):
                p = os.path.join(dirpath, f)
                try:
                    s = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(s.st_mode) and s.st_size and (s.st_dev, s.st_ino) not in seen:
                    seen.add((s.st_dev, s.st_ino))
                    out.append(p)
    return out


def build_small(dest: Path, n_files: int = SMALL_FILES, total: int = SMALL_BYTES,
                n_dirs: int = SMALL_DIRS, seed: int = SMALL_SEED) -> dict:
    """The small-files corpus: ``n_files`` files of ``total`` bytes in all under ``dest``.

    Contents: the files under SMALL_ROOTS in an order shuffled by ``seed``, the first
    SMALL_PER_SOURCE bytes of each, concatenated and cut into consecutive pieces, so
    every file is a slice of real text, source, compressed or binary data and no two
    hold the same bytes. Sizes: log-normal (median about 2.5 KB, mean total/n_files,
    at most 64 KiB). Tree: ``n_dirs`` directories, each added under a directory picked
    at random among those less than 7 deep (a few large subtrees, many leaves), named
    after real directories under /usr/share; files spread over them with log-normal
    weights. Modification times within three years before 2026-01-01. The same
    machine gives the same tree, byte for byte.
    """
    import math
    import random

    rng = random.Random(seed)
    sources = small_sources()
    rng.shuffle(sources)
    dir_names = sorted({d for _, ds, _ in os.walk("/usr/share") for d in ds
                        if d.isprintable() and len(d) < 40})
    file_names = sorted({os.path.basename(p) for p in sources if len(os.path.basename(p)) < 60})
    sigma = 1.0
    mu = math.log(total / n_files) - sigma * sigma / 2
    sizes = [min(SMALL_PER_SOURCE, int(rng.lognormvariate(mu, sigma))) for _ in range(n_files)]
    scale = total / sum(sizes)
    sizes = [min(SMALL_PER_SOURCE, int(x * scale)) for x in sizes]
    sizes[-1] += total - sum(sizes)  # exact total
    dirs, depth, names_in = [b""], {b"": 0}, {b"": set()}
    for _ in range(n_dirs - 1):
        parent = rng.choice([d for d in dirs if depth[d] < 7]) if rng.random() < 0.3 \
            else rng.choice(dirs[-200:])
        if depth[parent] >= 7:
            parent = b""
        name = rng.choice(dir_names).encode()
        while name in names_in[parent]:
            name += b"_"
        names_in[parent].add(name)
        d = parent + b"/" + name if parent else name
        dirs.append(d)
        depth[d], names_in[d] = depth[parent] + 1, set()
    weights = [rng.lognormvariate(0, 1.2) for _ in dirs]
    homes = rng.choices(dirs, weights=weights, k=n_files)
    for d in dirs:
        os.makedirs(os.path.join(bytes(dest), d), exist_ok=True)
    buf = bytearray()
    it = iter(sources)
    base = 1_767_225_600  # 2026-01-01 UTC
    written = 0
    for size, home in zip(sizes, homes, strict=True):
        while len(buf) < size:
            try:
                with open(next(it), "rb") as f:
                    buf += f.read(SMALL_PER_SOURCE)
            except OSError:
                continue
            except StopIteration:
                raise BenchError("not enough source files for the small-files corpus") from None
        name = rng.choice(file_names).encode()
        while name in names_in[home]:
            name = b"%d-" % rng.randrange(100) + name
        names_in[home].add(name)
        path = os.path.join(bytes(dest), home, name)
        with open(path, "wb") as f:
            f.write(buf[:size])
        del buf[:size]
        t = (base - rng.randrange(3 * 365 * 86400)) * 10**9 + rng.randrange(10**9)
        os.utime(path, ns=(t, t))
        written += size
    for d in dirs:  # last: creating a file stamps its directory
        t = (base - rng.randrange(365 * 86400)) * 10**9
        os.utime(os.path.join(bytes(dest), d), ns=(t, t))
    return {"files": n_files, "dirs": n_dirs, "bytes": written,
            "max_depth": max(depth.values()), "sources": len(sources)}


def build_text(stdlib: Path, total: int = TEXT_BYTES) -> bytes:
    """``total`` bytes of text: the ``.py`` files of the standard library (without
    site-packages; regular files only) in sorted walk order (a directory's files, then
    its subdirectories), concatenated and cut at ``total``."""
    out = bytearray()
    for dirpath, dirnames, files in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if not (
            dirpath == str(stdlib) and d == "site-packages"))
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            if f.endswith(".py") and stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as fin:
                    out += fin.read()
                if len(out) >= total:
                    return bytes(out[:total])
    raise BenchError(f"only {len(out)} bytes of .py files under {stdlib}, want {total}")


def apply_edit(data: bytes, at: int | None, insert: bytes, delete: int) -> bytes:
    """``data`` with ``delete`` bytes removed and ``insert`` put at offset ``at`` (None:
    the middle)."""
    at = len(data) // 2 if at is None else at
    return data[:at] + insert + data[at + delete:]


def build_dup(dest: Path, root: str = DUP_ROOT, total: int = DUP_BYTES) -> dict:
    """Every regular file under ``root`` in sorted path order, each hard link and copy
    as often as it occurs, concatenated into ``dest`` and cut at ``total`` bytes."""
    paths = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(p).st_mode):
                    paths.append(os.fsencode(p))
    written, n, inodes = 0, 0, set()
    with open(dest, "wb") as out:
        for p in sorted(paths):
            try:
                with open(p, "rb") as fin:
                    inodes.add(os.fstat(fin.fileno()).st_ino)
                    while written < total and (buf := fin.read(min(MiB, total - written))):
                        out.write(buf)
                        written += len(buf)
            except OSError:
                continue
            n += 1
            if written >= total:
                break
    return {"bytes": written, "files": n, "inodes": len(inodes)}


def digest(path: Path) -> str:
    """BLAKE2b of a file (the results name each corpus by it: same digest, same data)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while buf := f.read(4 * MiB):
            h.update(buf)
    return h.hexdigest()


# --- the tools ------------------------------------------------------------------------

class Tool:
    name = ""
    parts = ALL_PARTS

    def __init__(self, bench: Bench):
        self.b = bench

    def available(self) -> bool:
        raise NotImplementedError

    def has(self, what: str) -> bool:
        return self.available()


class Anytime(Tool):
    name = "anytime"

    def __init__(self, bench):
        super().__init__(bench)
        exe = Path(sys.executable).parent / "anytime"
        self.exe = str(exe) if exe.exists() else shutil.which("anytime")
        self._has: dict[str, bool] = {}

    def available(self) -> bool:
        return bool(self.exe)

    def has(self, cmd: str) -> bool:
        if not self.exe:
            return False
        if cmd not in self._has:
            self._has[cmd] = run([self.exe, cmd, "--help"], timeout=60).ok
        return self._has[cmd]

    def env(self, repo: Path) -> dict:
        return dict(os.environ, ANYTIME_REPO=str(repo))

    def init(self, repo: Path) -> Res:
        return must(run([self.exe, "init"], env=self.env(repo)), "anytime init")

    def capture(self, repo: Path, src: Path, first: bool) -> Res:
        r = must(run([self.exe, "snapshot", "--json", str(src)], env=self.env(repo), rss=True),
                 "anytime snapshot")
        with contextlib.suppress(ValueError):
            r.info = json.loads(r.out)
        return r

    @contextlib.contextmanager
    def mount(self, repo: Path, src: Path, mnt: Path, at: str = "now", target: str | None = None):
        if not self.has("mount"):
            raise BenchError("anytime has no 'mount' command yet")
        t0 = perf_counter()
        r = run([self.exe, "mount", target or str(src), str(mnt), "--at", at],
                env=self.env(repo), timeout=120)
        try:
            must(r, "anytime mount")
            secs = wait_listable(mnt, t0, 60)
            yield mnt, secs
        finally:
            self.umount(repo, mnt)

    def umount(self, repo: Path, mnt: Path) -> None:
        if os.path.ismount(mnt) and self.has("umount"):
            run([self.exe, "umount", str(mnt)], env=self.env(repo), timeout=60)
        if os.path.ismount(mnt):
            force_unmount(mnt)

    def restore(self, repo: Path, src_path: Path | str, dest: Path, at: str = "now") -> Res:
        if not self.has("restore"):
            raise BenchError("anytime has no 'restore' command yet")
        return must(run([self.exe, "restore", str(src_path), "--at", at, "--to", str(dest)],
                        env=self.env(repo)), "anytime restore")

    def restored_path(self, dest: Path, src_path: Path) -> Path:
        return dest


# restic picks its chunker's polynomial at random for each new repository, so where its
# chunk boundaries fall, and its repository sizes, change from run to run (the growth
# after one edit of the text file: 0.15 to 0.61 MB over 8 repositories). Every
# repository of the bench copies the polynomial 0x3292c9ee6656b5 from this empty
# reference repository (made once by restic 0.14's ``restic init``, password "bench"):
# its config and its one key file.
RESTIC_REF_CONFIG = (
    "N00jNiOX2jmexvOs5rr7m2Xxc9BGFspWlmCQ88iyKrc9Aw/+9qa85/6yfnLc4kLhGcylRqDfN2Gx3NyzFa6p"
    "KOC0U+Xt+eWG+pA//oHse/hVqqZ0r33avcG7tGlhenJg6R/FHz7+T3h1heoFT/woxyO22yRHuPq/qEy5mOsy"
    "7kSqx0T69SxzZkSLVCFlMFLQWNAQAAEY6Qh+1eE=")
RESTIC_REF_KEY = (
    '{"created":"2026-12-02T01:10:40.831230493Z","username":"root","hostname":"vm",'
    '"kdf":"scrypt","N":32768,"r":8,"p":4,"salt":"sbkEvDhpNb4qnrpx+3zhVq6CsqGqLUA9G1UojHx'
    'wC+PmdCWYbqztzp1ydWjXmSZVXjRqyyC7WfRcZWae+RPAhQ==","data":"TOZ7lDVFFzwFZDPPBVYH1leu+i'
    'MenG2SOCphq33rKBC/duHEY1EircLn5CZgSq6D8TZ01DqPQk1Aoypwr8Dymxe0g39XB75+/oAntso/hwssMMb'
    'tgR5wzYrC4W8G1WB6zYgiXHxXmcc9JZN9H3BolreZ8Soy8RXZfDxVJq7Mg9X2N/rkMEX6wQkRgYExcTpl9nAI'
    'exdbHOAAcHD4FgWIgQ=="}')
RESTIC_PASSWORD = "bench"


class Restic(Tool):
    name = "restic"

    def available(self) -> bool:
        return bool(shutil.which("restic"))

    def env(self, repo: Path) -> dict:
        return dict(os.environ, RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD=RESTIC_PASSWORD,
                    RESTIC_CACHE_DIR=str(self.b.scratch / "cache" / "restic"))

    def init(self, repo: Path) -> Res:
        ref, pw = self.reference()
        return must(run(["restic", "init", "--copy-chunker-params", "--from-repo", str(ref),
                         "--from-password-file", str(pw)], env=self.env(repo)), "restic init")

    def reference(self) -> tuple[Path, Path]:
        """The reference repository (RESTIC_REF_*) and a file holding its password."""
        ref = self.b.scratch / "cache" / "restic-reference"
        key = RESTIC_REF_KEY.encode()
        pw = ref.parent / "restic-reference.password"
        if not pw.exists():
            (ref / "keys").mkdir(parents=True, exist_ok=True)
            (ref / "config").write_bytes(base64.b64decode(RESTIC_REF_CONFIG))
            (ref / "keys" / hashlib.sha256(key).hexdigest()).write_bytes(key)
            pw.write_text(RESTIC_PASSWORD + "\n")  # last: it marks the copy complete
        return ref, pw

    def capture(self, repo: Path, src: Path, first: bool) -> Res:
        return must(run(["restic", "backup", "--quiet", str(src)], env=self.env(repo), rss=True),
                    "restic backup")

    @contextlib.contextmanager
    def mount(self, repo: Path, src: Path, mnt: Path):
        logf = tempfile.TemporaryFile()
        t0 = perf_counter()
        p = subprocess.Popen(["restic", "mount", str(mnt)], env=self.env(repo),
                             stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            latest = mnt / "snapshots" / "latest"
            secs = wait_listable(latest, t0, 120, proc=p)
            yield latest / str(src).lstrip("/"), secs
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    force_unmount(mnt)
                    p.kill()
                    p.wait(15)
            if os.path.ismount(mnt):
                force_unmount(mnt)
            logf.close()

    def restore(self, repo: Path, src_path: Path, dest: Path) -> Res:
        cmd = ["restic", "restore", "latest", "--target", str(dest)]
        if src_path.is_file():
            cmd += ["--include", str(src_path)]
        return must(run(cmd, env=self.env(repo)), "restic restore")

    def restored_path(self, dest: Path, src_path: Path) -> Path:
        return dest / str(src_path).lstrip("/")


class Borg(Tool):
    name = "borg"

    def available(self) -> bool:
        return bool(shutil.which("borg"))

    def env(self, repo: Path | None = None) -> dict:
        return dict(os.environ, BORG_BASE_DIR=str(self.b.scratch / "cache" / "borg"),
                    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                    BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

    def init(self, repo: Path) -> Res:
        return must(run(["borg", "init", "-e", "none", str(repo)], env=self.env()), "borg init")

    #: Options of ``borg create`` (none: borg's default compression, lz4).
    create_options: tuple[str, ...] = ()

    def capture(self, repo: Path, src: Path, first: bool) -> Res:
        archive = "a" if first else "b"
        return must(run(["borg", "create", *self.create_options, f"{repo}::{archive}",
                         str(src)], env=self.env(), rss=True),
                    f"borg create {' '.join(self.create_options)}".strip())

    @contextlib.contextmanager
    def mount(self, repo: Path, src: Path, mnt: Path):
        t0 = perf_counter()
        r = run(["borg", "mount", f"{repo}::a", str(mnt)], env=self.env(), timeout=120)
        try:
            must(r, "borg mount")
            secs = wait_listable(mnt, t0, 60)
            yield mnt / str(src).lstrip("/"), secs
        finally:
            if os.path.ismount(mnt):
                run(["borg", "umount", str(mnt)], env=self.env(), timeout=60)
            if os.path.ismount(mnt):
                force_unmount(mnt)

    def restore(self, repo: Path, src_path: Path, dest: Path) -> Res:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = ["borg", "extract", f"{repo}::a"]
        if src_path.is_file():
            cmd.append(str(src_path).lstrip("/"))
        return must(run(cmd, env=self.env(), cwd=str(dest)), "borg extract")

    def restored_path(self, dest: Path, src_path: Path) -> Path:
        return dest / str(src_path).lstrip("/")


class BorgZstd(Borg):
    """borg with ``-C zstd,3`` (anytime compresses with zstd too): its repository sizes
    compare like for like. Captures only; mounts and restores are borg's own."""

    name = "borg-zstd"
    parts = ("capture", "shifted")
    create_options = ("-C", "zstd,3")


# --- results --------------------------------------------------------------------------

@dataclass
class Row:
    fig: str
    what: str
    corpus: str
    unit: str  # s, MB, MB/s
    values: dict  # tool -> float | None
    goal: str  # human text
    kind: str  # how the ratio and the goal are computed (see judge)
    k: float = 0.0
    ref: float | None = None  # baseline for kind "vs_ref"
    ratio: float | None = None
    met: bool | None = None
    note: str = ""
    key: str = ""  # stable name for other scripts (bench/floor.py); labels may change
    extra: dict = field(default_factory=dict)

    def judge(self) -> None:
        a = self.values.get("anytime")
        peers = [self.values.get(p) for p in PEERS if self.values.get(p) is not None]
        if a is None:
            return
        if self.kind == "le_min_peer":  # a / min(peers) <= k
            if peers and min(peers) > 0:
                self.ratio = a / min(peers)
                self.met = self.ratio <= self.k
        elif self.kind == "le_restic":  # a / restic <= k
            r = self.values.get("restic")
            if r:
                self.ratio = a / r
                self.met = self.ratio <= self.k
        elif self.kind == "ge_max_peer":  # a / max(peers) >= k (rates)
            if peers and max(peers) > 0:
                self.ratio = a / max(peers)
                self.met = self.ratio >= self.k
        elif self.kind == "abs_le":  # a <= k (ratio vs smaller peer shown for context)
            if peers and min(peers) > 0:
                self.ratio = a / min(peers)
            self.met = a <= self.k
        elif self.kind == "abs_lt":
            if peers and min(peers) > 0:
                self.ratio = a / min(peers)
            self.met = a < self.k
        elif self.kind == "vs_ref":  # a / ref >= k (e.g. page-cache speed)
            if self.ref:
                self.ratio = a / self.ref
                self.met = self.ratio >= self.k
        elif self.kind == "le_ref":  # a / ref <= k (e.g. space against a fresh copy)
            if self.ref:
                self.ratio = a / self.ref
                self.met = self.ratio <= self.k
        elif self.kind == "ref_ratio":  # no goal: a / ref, for context
            if self.ref:
                self.ratio = a / self.ref
        elif self.kind == "info":  # no goal: the ratio vs the smaller peer, for context
            if peers and min(peers) > 0:
                self.ratio = a / min(peers)


def fmt(v, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    if unit == "MB":
        return f"{v / 1e6:.2f} MB" if abs(v) < 10e6 else f"{v / 1e6:.1f} MB"
    if unit == "MB/s":
        return f"{v:.0f} MB/s"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "%":
        return f"{v:.1f} %"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "n":
        return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.2g}"
    if unit == "x":
        return f"{v:.3f}"
    return f"{v}"


# --- the benchmark --------------------------------------------------------------------

#: Filesystems that live in memory: restores must not go there.
MEMORY_FS = ("tmpfs", "ramfs", "devtmpfs")


def filesystem_of(path: Path) -> dict:
    """The mount that holds ``path`` (its nearest existing ancestor): type, device and
    mount point, from /proc/self/mountinfo."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    dev = os.stat(path).st_dev
    best = {"type": "unknown", "source": "?", "mount": "/"}
    with contextlib.suppress(OSError):
        for line in open("/proc/self/mountinfo"):
            left, right = line.split(" - ", 1)
            f = left.split()
            major, minor = map(int, f[2].split(":"))
            mnt = f[4].replace("\\040", " ")
            if os.makedev(major, minor) == dev and (
                    str(path) + "/").startswith(mnt.rstrip("/") + "/"):
                if len(mnt) >= len(best["mount"]) or best["type"] == "unknown":
                    fstype, source = right.split()[:2]
                    best = {"type": fstype, "source": source, "mount": mnt}
    return best


def restore_dir(wanted: str | None, scratch: Path) -> Path:
    """Where restores go: ``wanted`` (--restore-dir) if given, else ``scratch/restore``,
    or ``/var/tmp/anytime-bench-restore`` when the scratch is on a memory filesystem."""
    if wanted:
        return Path(wanted).resolve()
    rest = scratch / "restore"
    if filesystem_of(rest)["type"] in MEMORY_FS:
        rest = Path("/var/tmp/anytime-bench-restore")
    return rest


class Bench:
    def __init__(self, args):
        self.args = args
        self.scratch = Path(args.scratch).resolve()
        self.corpus = self.scratch / "corpus"
        self.repos = self.scratch / "repos"
        self.mnt = self.scratch / "mnt"
        # Restores go onto a disk filesystem, as users restore (restore_dir).
        self.rest = restore_dir(args.restore_dir, self.scratch)
        self.state_path = self.scratch / "state.json"
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.tools = {t.name: t for t in (Anytime(self), Restic(self), Borg(self),
                                          BorgZstd(self))}
        self.state = self._load_state()
        self.mount_seq = 0
        self.extra: dict = {}

    # state kept between --only runs (with --keep)
    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.state, indent=2))

    def src(self, corpus: str) -> Path:
        return self.corpus / corpus

    def src_path(self, corpus: str) -> Path:
        """What is restored/read: the stdlib tree, or the big file itself."""
        return self.src("stdlib") if corpus == "stdlib" else self.src("bigfile") / BIG_NAME

    def repo(self, tool: str, corpus: str) -> Path:
        return self.repos / f"{tool}-{corpus}"

    def avail(self, tool: str) -> bool:
        return self.tools[tool].available()

    def add(self, row: Row) -> Row:
        row.judge()
        self.rows.append(row)
        return row

    def note(self, msg: str) -> None:
        log("NOTE: " + msg)
        self.notes.append(msg)

    # --- corpora ------------------------------------------------------------------
    def build_corpora(self, parts) -> None:
        """The corpora ``parts`` need, each made once and kept (``NAME.done`` marks one
        complete), then read once so every tool sees a warm source."""
        self.corpus.mkdir(parents=True, exist_ok=True)
        if "shifted" in parts:
            self.build_shifted()
        if set(parts) - {"shifted", "watch", "shim", "prune"}:
            self.build_main_corpora()

    def build_main_corpora(self) -> None:
        std = self.src("stdlib")
        done = self.corpus / "stdlib.done"
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        if not done.exists():
            rmtree(std)
            std.mkdir(parents=True)
            log(f"copying the standard library {stdlib} (without site-packages) to {std}")
            items = [str(stdlib / n) for n in sorted(os.listdir(stdlib)) if n != "site-packages"]
            must(run(["cp", "-a", "--", *items, str(std)]), "cp -a of the standard library")
            done.write_text(str(stdlib))
        big = self.src("bigfile") / BIG_NAME
        bdone = self.corpus / "bigfile.done"
        if not bdone.exists():
            rmtree(self.src("bigfile"))
            self.src("bigfile").mkdir(parents=True)
            log(f"concatenating shared libraries into {big} ({BIG_BYTES // MiB} MiB)")
            self._build_big(big)
            bdone.write_text("ok")
        small = self.src("small")
        built = 0.0
        sdone = self.corpus / "small.done"
        want = f"{SMALL_FILES} {SMALL_BYTES} {SMALL_DIRS} {SMALL_SEED} {SMALL_PER_SOURCE}"
        if not sdone.exists() or sdone.read_text() != want:
            rmtree(small)
            small.mkdir(parents=True)
            log(f"making the small-files corpus: {SMALL_FILES:,} files, "
                f"{SMALL_BYTES / 1e6:.0f} MB, cut from files under {', '.join(SMALL_ROOTS)}")
            self.extra["small_build"] = build_small(small)
            sdone.write_text(want)
            built = perf_counter()
        log("reading the corpora once so every tool sees a warm source")
        for name in CAPTURE_CORPORA:
            warm(self.src(name))
        # A file changed within the last second is read twice by anytime (a write may be
        # in flight, capture/scan.py "recent"); a real tree has settled, so let it.
        if built:
            sleep(max(0.0, built + 1.5 - perf_counter()))
        entries = sum(len(d) + len(f) for _, d, f in os.walk(std))
        files, fbytes = tree_bytes(std)
        self.extra.setdefault("corpora", {}).update({
            "stdlib": {"source": str(stdlib), "entries": entries, "files": files,
                       "bytes": fbytes},
            "bigfile": {"bytes": big.stat().st_size},
            "small": dict(zip(("files", "bytes"), tree_bytes(small), strict=True)),
        })
        log(f"corpora ready: stdlib {entries} entries, {fbytes / 1e6:.0f} MB; "
            f"bigfile {big.stat().st_size / 1e6:.0f} MB; small "
            f"{self.extra['corpora']['small']['files']:,} files, "
            f"{self.extra['corpora']['small']['bytes'] / 1e6:.0f} MB")

    def _build_big(self, big: Path) -> None:
        seen = set()
        written = 0
        with open(big, "wb") as out:
            for root in SO_ROOTS:
                for dirpath, dirnames, files in os.walk(root):
                    dirnames.sort()
                    for f in sorted(files):
                        if ".so" not in f:
                            continue
                        p = os.path.join(dirpath, f)
                        try:
                            s = os.lstat(p)
                        except OSError:
                            continue
                        if not stat.S_ISREG(s.st_mode) or (s.st_dev, s.st_ino) in seen:
                            continue
                        seen.add((s.st_dev, s.st_ino))
                        try:
                            with open(p, "rb") as fin:
                                data = fin.read(BIG_BYTES - written)
                        except OSError:
                            continue
                        out.write(data)
                        written += len(data)
                        if written >= BIG_BYTES:
                            return
        if written < BIG_BYTES:
            self.note(f"only {written / MiB:.0f} MiB of shared libraries found for bigfile")

    # --- shifted content: corpora -------------------------------------------------
    def shifted_dir(self) -> Path:
        return self.corpus / "shifted"

    def build_shifted(self) -> None:
        """The text file and its edited versions (``shifted/text/EDIT.txt``), and the
        duplicate-rich concatenation (``shifted/dup/dup.bin``, alone in its directory)."""
        base = self.shifted_dir()
        stdlib = Path(sysconfig.get_paths()["stdlib"])

        def make_text(text: Path) -> dict:
            log(f"concatenating the standard library's .py files into {TEXT_BYTES / 1e6} MB "
                f"of text, and its edited versions")
            data = build_text(stdlib)
            (text / "base.txt").write_bytes(data)
            for name, edit in EDITS.items():
                (text / f"{name}.txt").write_bytes(apply_edit(data, *edit[1:]))
            return {"bytes": len(data), "blake2b": digest(text / "base.txt")}

        def make_dup(dup: Path) -> dict:
            log(f"concatenating every regular file under {DUP_ROOT} (sorted by path, hard "
                f"links and copies kept) into {DUP_BYTES / 1e6:.0f} MB")
            info = build_dup(dup / DUP_NAME)
            if info["bytes"] < DUP_BYTES:
                self.note(f"only {info['bytes'] / 1e6:.0f} MB under {DUP_ROOT} for {DUP_NAME}")
            return dict(info, blake2b=digest(dup / DUP_NAME))

        self.extra.setdefault("corpora", {})["shifted"] = {
            "text": self.made(base / "text", f"{TEXT_BYTES} {SHIFT_AT} {SHIFT!r} {stdlib}",
                              make_text),
            "dup": self.made(base / "dup", f"{DUP_ROOT} {DUP_BYTES}", make_dup)}
        log("reading the shifted-content corpora once (warm page cache)")
        warm(base)

    @staticmethod
    def made(where: Path, params: str, make) -> dict:
        """A corpus directory ``where`` made by ``make(where)`` with ``params``: kept from
        an earlier run when ``where``.done records the same params, else made anew.
        Returns what ``make`` said about it (kept in the .done file)."""
        done = where.with_suffix(".done")
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(done.read_text())
            if info.get("params") == params:
                return info
        rmtree(where)
        where.mkdir(parents=True)
        info = dict(make(where), params=params)
        done.write_text(json.dumps(info))
        return info

    # --- S: shifted content -------------------------------------------------------
    def section_shifted(self) -> None:
        """Fig S: what an edit that shifts content costs each tool (repository growth),
        and the repository size of the duplicate-rich concatenation."""
        log("== shifted content (S growth after an edit that shifts content, C dup size)")
        text, work = self.shifted_dir() / "text", self.repos / "shifted"
        src = work / "src"  # the directory captured: code.txt, base then edited
        tools = {n: t for n, t in self.tools.items() if "shifted" in t.parts}
        res: dict = {}
        for edit in EDITS:
            for name, tool in tools.items():
                r = res.setdefault(f"{name} {edit}", {})
                try:
                    if not tool.available():
                        raise BenchError(f"{name} is not installed")
                    repo = work / f"{name}-{edit}"
                    self.place(text / "base.txt", src / TEXT_NAME, offset_ns=0)
                    size0, r["base_secs"] = self.fresh_capture(tool, repo, src)
                    self.place(text / f"{edit}.txt", src / TEXT_NAME, offset_ns=60 * 10**9)
                    r["edit_secs"] = tool.capture(repo, src, first=False).secs
                    size1 = du_bytes(repo)[0]
                    r.update(base=size0, after=size1, growth=size1 - size0)
                    log(f"{name} {edit}: base {size0 / 1e6:.2f} MB, growth "
                        f"{(size1 - size0) / 1e6:.3f} MB")
                    if not self.args.keep:
                        rmtree(repo)
                except BenchError as e:
                    r["error"] = str(e)
                    self.note(f"{name} shifted {edit}: {e}")
        rmtree(src)
        dup = self.shifted_dir() / "dup"
        for name, tool in tools.items():
            r = res.setdefault(f"{name} dup", {})
            try:
                if not tool.available():
                    raise BenchError(f"{name} is not installed")
                repo = work / f"{name}-dup"
                r["size"], r["secs"] = self.fresh_capture(tool, repo, dup)
                log(f"{name} dup: {r['secs']:.1f} s, repository {r['size'] / 1e6:.1f} MB")
                if not self.args.keep:
                    rmtree(repo)
            except BenchError as e:
                r["error"] = str(e)
                self.note(f"{name} shifted dup: {e}")
        self.extra["shifted"] = res

        def vals(key: str, what: str) -> dict:
            return {t: res.get(f"{t} {key}", {}).get(what) for t in tools}

        first = next(iter(EDITS))
        mb = TEXT_BYTES / 1e6
        self.add(Row("S", f"repository size, the {mb} MB text file captured once", "text",
                     "MB", vals(first, "base"), "(context)", "info"))
        for edit, (what, *_rest) in EDITS.items():
            row = self.add(Row("S", f"repository growth, {what}, captured again", "text",
                               "MB", vals(edit, "growth"), "<= restic's growth (issue 9)",
                               "le_restic", 1.0, key=f"growth_{edit}"))
            self.min_peer_ratio(row)
        dup_mb = self.extra["corpora"]["shifted"]["dup"]["bytes"] / 1e6
        self.add(Row("C", f"repository size, {dup_mb:.0f} MB concatenation of "
                     f"{DUP_ROOT} (duplicates kept)", "dup", "MB", vals("dup", "size"),
                     SIZE_GOAL, "le_min_peer", 1.0, key="size"))
        self.add(Row("S", "first capture of the concatenation", "dup", "s",
                     vals("dup", "secs"), "(context)", "info"))

    def min_peer_ratio(self, row: Row) -> None:
        """Keep anytime / the smaller peer beside a row judged against restic."""
        a = row.values.get("anytime")
        peers = [v for t, v in row.values.items() if t != "anytime" and v]
        if a is not None and peers:
            row.extra["anytime_per_smaller_peer"] = a / min(peers)

    def fresh_capture(self, tool: Tool, repo: Path, src: Path) -> tuple[int, float]:
        """Capture ``src`` into a new repository; its size (du) and the capture's time."""
        rmtree(repo)
        repo.parent.mkdir(parents=True, exist_ok=True)
        tool.init(repo)
        secs = tool.capture(repo, src, first=True).secs
        return du_bytes(repo)[0], secs

    @staticmethod
    def place(data: Path, dest: Path, offset_ns: int) -> None:
        """Copy ``data`` to ``dest`` with a fixed modification time (2026-01-01 plus
        ``offset_ns``), so every tool and run sees the same file."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data, dest)
        t = 1_767_225_600 * 10**9 + offset_ns
        os.utime(dest, ns=(t, t))

    # --- A, B, C, D: capture ------------------------------------------------------
    def section_capture(self) -> None:
        log("== capture (A first capture, B re-scan, C repository size, D peak memory)")
        self.repos.mkdir(parents=True, exist_ok=True)
        res: dict = {}
        for corpus in CAPTURE_CORPORA:
            src = self.src(corpus)
            for name, tool in self.tools.items():
                repo = self.repo(name, corpus)
                rmtree(repo)
                r = res.setdefault((name, corpus), {})
                if not tool.available():
                    r["error"] = f"{name} is not installed"
                    continue
                try:
                    if not isinstance(tool, Borg):
                        repo.parent.mkdir(parents=True, exist_ok=True)
                    ri = tool.init(repo)
                    r["init"] = ri.secs
                    # warm for each tool: the kernel's proactive reclaim (DAMON here)
                    # pages out what no one read for a minute, and the corpora were read
                    # minutes before the last tools' turns; the first tool would read
                    # from disk and warm the cache for those after it
                    warm(src)
                    log(f"{name} {corpus}: first capture")
                    r1 = tool.capture(repo, src, first=True)
                    r["first"], r["rss"], r["anon"] = r1.secs, r1.maxrss, r1.maxanon
                    r["size"], r["apparent"] = du_bytes(repo)
                    log(f"{name} {corpus}: first {r1.secs:.2f} s, rss {r1.maxrss / 1e6:.0f} MB, "
                        f"repo {r['size'] / 1e6:.1f} MB; re-scan")
                    r2 = tool.capture(repo, src, first=False)
                    r["rescan"], r["rescan_rss"] = r2.secs, r2.maxrss
                    log(f"{name} {corpus}: re-scan {r2.secs:.2f} s")
                    if name == "anytime":
                        inst = [x.info.get("instant_ns") for x in (r1, r2)]
                        self.state.setdefault("instants", {})[corpus] = inst
                except BenchError as e:
                    r["error"] = str(e)
                    self.note(f"{name} {corpus}: {e}")
        self.state["repos"] = {f"{t}-{c}": ("error" not in v) for (t, c), v in res.items()}
        self.save_state()
        self.extra["capture"] = {f"{t}-{c}": v for (t, c), v in res.items()}

        def vals(corpus, key):
            return {t: res.get((t, corpus), {}).get(key) for t in TOOLS}

        for corpus in ("stdlib", "bigfile"):
            self.add(Row("A", "first capture", corpus, "s", vals(corpus, "first"),
                         "<= 0.5x faster peer", "le_min_peer", 0.5, key="capture"))
        self.add(Row("A", f"first capture, {SMALL_FILES:,} small files", "small", "s",
                     vals("small", "first"), "< faster peer", "le_min_peer", 1.0,
                     key="capture"))
        for corpus in CAPTURE_CORPORA:
            self.add(Row("B", "re-scan, nothing changed", corpus, "s", vals(corpus, "rescan"),
                         "<= 0.25x faster peer", "le_min_peer", 0.25))
        for corpus in CAPTURE_CORPORA:
            self.add(Row("C", "repository size after first capture (du)", corpus, "MB",
                         vals(corpus, "size"), SIZE_GOAL, "le_min_peer", 1.0, key="size"))
        for corpus in ("stdlib", "bigfile"):
            self.add(Row("D", "peak RSS, first capture", corpus, "MB",
                         vals(corpus, "rss"), "<= 100 MB", "abs_le", 100e6))
            self.add(Row("D", "peak private memory (RssAnon), first capture", corpus, "MB",
                         vals(corpus, "anon"), "<= 100 MB", "abs_le", 100e6))
        self.bigger_repo_rss()

    # --- I: start-up ---------------------------------------------------------------
    def section_startup(self) -> None:
        """Fig I: start-up of short commands (process start to exit) of anytime as
        ``pip install .`` installs it, on the stdlib repository: the minimum of
        STARTUP_RUNS runs, next to ``python -c pass`` of the same interpreter measured
        in the same runs. The tests' editable install is measured too (JSON, notes)."""
        log("== start-up (I: short commands, process start to exit)")
        at = self.tools["anytime"]
        std, repo = self.src("stdlib"), self.repo("anytime", "stdlib")
        keys = ["python", "--help", "ls", "cat", "log"]
        best: dict[str, dict] = {"installed": {}, "editable": {}}  # min wall time
        cpu: dict[str, dict] = {"installed": {}, "editable": {}}  # min user + system time
        note = ""
        try:
            if not at.available():
                raise BenchError("anytime is not installed")
            if not (self.state.get("repos", {}).get("anytime-stdlib") and repo.exists()):
                log("anytime stdlib repository missing: capturing it")
                rmtree(repo)
                repo.parent.mkdir(parents=True, exist_ok=True)
                at.init(repo)
                at.capture(repo, std, first=True)
                self.state.setdefault("repos", {})["anytime-stdlib"] = True
                self.save_state()
            copies = {"editable": (sys.executable, at.exe)}
            try:
                copies["installed"] = self.installed_copy()
            except BenchError as e:
                note = f"no installed copy ({e}); the figures are the editable install's"
                self.note(f"start-up: {note}")
            args = {"python": ["-c", "pass"], "--help": ["--help"], "ls": ["ls", str(std)],
                    "cat": ["cat", str(std / "os.py")], "log": ["log", str(std / "os.py")]}
            times: dict = {(c, k): [] for c in copies for k in keys}
            for _ in range(STARTUP_RUNS):  # interleaved: load on the machine hits all alike
                for (c, k), got in times.items():
                    exe = copies[c][0] if k == "python" else copies[c][1]
                    got.append(must(run([exe, *args[k]], env=at.env(repo)), f"{c} {k}"))
            for (c, k), got in times.items():
                best[c][k] = min(r.secs for r in got)
                cpu[c][k] = min(r.cpu for r in got)
            if "installed" not in copies:
                best["installed"], cpu["installed"] = best["editable"], cpu["editable"]
            for c in copies:
                log(f"start-up of the {c} copy, min of {STARTUP_RUNS} runs (wall / cpu): "
                    + ", ".join(f"{k} {best[c][k] * 1000:.0f} / {cpu[c][k] * 1000:.0f} ms"
                                for k in keys))
            self.extra["startup"] = {"runs": STARTUP_RUNS, "wall": best, "cpu": cpu}
        except BenchError as e:
            note = str(e)
            self.note(f"start-up: {e}")
        for k in keys:
            i, e = best["installed"], best["editable"]
            text = note or (f"cpu {cpu['installed'][k] * 1000:.0f} ms; editable install "
                            f"{e[k] * 1000:.0f} ms (cpu {cpu['editable'][k] * 1000:.0f} ms)"
                            if k in e else "")
            if k == "python":
                self.add(Row("I", "start-up: python -c pass (reference: the same interpreter)",
                             "—", "s", {"anytime": i.get(k)}, "reference", "reference",
                             note=text, key="startup_python"))
            else:
                self.add(Row("I", f"start-up: anytime {k}", "stdlib", "s", {"anytime": i.get(k)},
                             "< 60 ms", "abs_lt", 0.06, note=text, key=f"startup_{k}"))

    def installed_copy(self) -> tuple[str, str]:
        """(python, anytime) of anytime as README's setup installs it (``pip install .``,
        which byte-compiles every module) into a fresh venv in the scratch directory. It
        is built from a copy of the sources, so the checkout gets no build/ directory."""
        venv, src = self.scratch / "startup-venv", self.scratch / "startup-src"
        rmtree(venv)
        rmtree(src)
        shutil.copytree(HERE.parent, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "out", "*.egg-info", "__pycache__", ".*_cache",
            ".hypothesis"))
        log(f"installing anytime (pip install .) into {venv}")
        must(run([sys.executable, "-m", "venv", str(venv)], timeout=300), "python -m venv")
        must(run([str(venv / "bin" / "pip"), "install", "-q", str(src)], timeout=900),
             "pip install .")
        return str(venv / "bin" / "python"), str(venv / "bin" / "anytime")

    def bigger_repo_rss(self) -> None:
        """anytime's peak RSS when the repository already holds the other corpus."""
        at = self.tools["anytime"]
        val, anon, note = None, None, ""
        if at.available():
            repo = self.repos / "anytime-both"
            rmtree(repo)
            try:
                at.init(repo)
                log("anytime both: bigfile into a fresh repo, then stdlib into the same repo")
                at.capture(repo, self.src("bigfile"), True)
                r = at.capture(repo, self.src("stdlib"), True)
                val, anon = r.maxrss, r.maxanon
                note = f"stdlib first capture into a repo already holding bigfile: {r.secs:.2f} s"
                self.extra["both_repo"] = {"secs": r.secs, "rss": r.maxrss,
                                           "size": du_bytes(repo)[0]}
            except BenchError as e:
                note = str(e)
                self.note(f"anytime both-corpora repo: {e}")
            finally:
                rmtree(repo)
        self.add(Row("D", "peak RSS, stdlib first capture, repo already holding bigfile",
                     "both", "MB", {"anytime": val}, "<= 100 MB", "abs_le", 100e6, note=note))
        self.add(Row("D", "peak private memory, same", "both", "MB", {"anytime": anon},
                     "<= 100 MB", "abs_le", 100e6))

    def ensure_repos(self) -> None:
        """Mount and restore need the capture repositories; build them if missing."""
        want = [f"{t}-{c}" for t in TOOLS for c in ("stdlib", "bigfile")
                if self.avail(t) and "mount" in self.tools[t].parts]
        have = self.state.get("repos", {})
        if all(have.get(k) and (self.repos / k).exists() for k in want):
            return
        log("capture repositories missing: running the capture section first")
        self.section_capture()

    # --- E, F: mounts -------------------------------------------------------------
    def fresh_mnt(self, tool: str) -> Path:
        self.mount_seq += 1
        p = self.mnt / f"{tool}-{self.mount_seq}"
        if os.path.ismount(p):
            force_unmount(p)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def section_mount(self) -> None:
        log("== mount (E mount to first listing, F find / tar / reads through the mount)")
        self.ensure_repos()
        # The captures just wrote about 1 GB: let writeback finish first (pages stay
        # cached), or it competes with the first mounts for CPU (seen: cold reads at
        # half speed in the first two runs only).
        os.sync()
        std, big = self.src("stdlib"), self.src("bigfile")
        n_entries = self.extra.get("corpora", {}).get("stdlib", {}).get("entries")
        keys = ["mount_stdlib", "mount_bigfile", "find", "tar", "cold", "second"]
        m: dict[str, dict] = {k: {} for k in keys}
        errs: dict[str, str] = {}
        for name, tool in self.tools.items():
            if "mount" not in tool.parts:
                continue
            if not tool.available() or not self.state.get("repos", {}).get(f"{name}-stdlib"):
                errs[name] = "not available"
                continue
            try:
                repo = self.repo(name, "stdlib")
                warm(repo)
                with tool.mount(repo, std, self.fresh_mnt(name)) as (root, secs):
                    m["mount_stdlib"][name] = secs
                    log(f"{name}: mounted stdlib in {secs:.3f} s; find")
                    out = self.scratch / "find.out"
                    r = must(run(["find", str(root), "-printf", r"%s %T@ %m\n"],
                                 stdout_path=out, timeout=600), f"find through {name} mount")
                    lines = sum(1 for _ in open(out, "rb"))
                    out.unlink()
                    m["find"][name] = r.secs
                    log(f"{name}: find {r.secs:.2f} s, {lines} lines")
                    if n_entries and lines != n_entries + 1:
                        self.note(f"{name}: find through the mount printed {lines} lines, "
                                  f"the tree has {n_entries + 1} entries")
                with tool.mount(repo, std, self.fresh_mnt(name)) as (root, secs):
                    m.setdefault("mount_stdlib_2", {})[name] = secs
                    r = run(["bash", "-o", "pipefail", "-c",
                             'tar -cf - -C "$1" . | cat > /dev/null', "tar", str(root)],
                            timeout=900)
                    if r.rc not in (0, 1):
                        raise BenchError(f"tar through {name} mount failed: {r.tail()}")
                    m["tar"][name] = r.secs
                    log(f"{name}: tar {r.secs:.2f} s")
            except BenchError as e:
                errs[name] = str(e)
                self.note(f"{name} stdlib mount: {e}")
            try:
                if not self.state.get("repos", {}).get(f"{name}-bigfile"):
                    raise BenchError("no bigfile repository")
                repo = self.repo(name, "bigfile")
                warm(repo)
                with tool.mount(repo, big, self.fresh_mnt(name)) as (root, secs):
                    m["mount_bigfile"][name] = secs
                    n, s1 = read_file(root / BIG_NAME)
                    n2, s2 = read_file(root / BIG_NAME)
                    if n != BIG_BYTES and n != (big / BIG_NAME).stat().st_size:
                        self.note(f"{name}: read {n} bytes of the big file through the mount")
                    m["cold"][name] = n / s1 / 1e6
                    m["second"][name] = n2 / s2 / 1e6
                    log(f"{name}: mounted bigfile in {secs:.3f} s; cold read "
                        f"{n / s1 / 1e6:.0f} MB/s, second read {n2 / s2 / 1e6:.0f} MB/s")
            except BenchError as e:
                errs[name] = str(e)
                self.note(f"{name} bigfile mount: {e}")
        n, s = read_file(big / BIG_NAME)
        pagecache = n / s / 1e6
        self.extra["mount"] = dict(m, errors=errs, pagecache_mbps=pagecache)
        self.add(Row("E", "mount to first listing", "stdlib", "s", m["mount_stdlib"],
                     "< 0.3 s", "abs_lt", 0.3))
        self.add(Row("E", "mount to first listing", "bigfile", "s", m["mount_bigfile"],
                     "< 0.3 s", "abs_lt", 0.3))
        self.add(Row("F", "find -printf '%s %T@ %m' over the mount", "stdlib", "s", m["find"],
                     "<= 0.5x faster peer", "le_min_peer", 0.5, key="find"))
        self.add(Row("F", "tar -cf - of the mounted tree", "stdlib", "s", m["tar"],
                     "<= 0.5x faster peer", "le_min_peer", 0.5, key="tar"))
        self.add(Row("F", "cold sequential read, fresh mount (1 MiB reads)", "bigfile", "MB/s",
                     m["cold"], ">= 4x faster peer", "ge_max_peer", 4.0, key="cold"))
        self.add(Row("F", "second read, same mount", "bigfile", "MB/s", m["second"],
                     f"~page cache ({pagecache:.0f} MB/s; >= 0.5x)", "vs_ref", 0.5,
                     ref=pagecache, note="ratio is vs page-cache read of the source file"))

    # --- H: restore and diff ------------------------------------------------------
    def section_restore(self) -> None:
        log("== restore (H restore of the tree and of the big file, diff)")
        self.ensure_repos()
        self.rest.mkdir(parents=True, exist_ok=True)
        fs = filesystem_of(self.rest)
        self.extra["restore_target"] = dict(fs, path=str(self.rest))
        log(f"restores go to {self.rest}: {fs['type']} {fs['source']} mounted at {fs['mount']}")
        if fs["type"] in MEMORY_FS:
            self.note(f"restores went to {self.rest}, a {fs['type']} (memory), not a disk")
        for corpus in ("stdlib", "bigfile"):
            src_path = self.src_path(corpus)
            want = tree_bytes(src_path) if corpus == "stdlib" else (1, src_path.stat().st_size)
            vals: dict = {}
            notes = []
            for name, tool in self.tools.items():
                if "restore" not in tool.parts or not tool.available() or not self.state.get(
                        "repos", {}).get(f"{name}-{corpus}"):
                    continue
                dest = self.rest / f"{name}-{corpus}"
                rmtree(dest)
                os.sync()  # the disk idle: no writeback of the last restore in this one
                try:
                    log(f"{name}: restore {corpus}")
                    r = tool.restore(self.repo(name, corpus), src_path, dest)
                    vals[name] = r.secs
                    got_path = tool.restored_path(dest, src_path)
                    got = (tree_bytes(got_path) if corpus == "stdlib" else
                           (1, got_path.stat().st_size if got_path.exists() else -1))
                    log(f"{name}: restore {corpus} {r.secs:.2f} s "
                        f"({got[0]} files, {got[1] / 1e6:.0f} MB)")
                    if got != want:
                        self.note(f"{name} restore {corpus}: got {got} (files, bytes), "
                                  f"want {want}")
                except BenchError as e:
                    notes.append(f"{name}: {e}")
                    self.note(f"{name} restore {corpus}: {e}")
                finally:
                    rmtree(dest)
            self.add(Row("H", "restore (anytime restore / restic restore / borg extract)",
                         corpus, "s", vals, "<= 0.5x restic", "le_restic", 0.5,
                         note="; ".join(notes)))
        with contextlib.suppress(OSError):
            self.rest.rmdir()  # each restore was removed; the directory goes if it is empty
        self.diff_figure()

    def diff_figure(self) -> None:
        at = self.tools["anytime"]
        val, note = None, ""
        std = self.src("stdlib")
        repo = self.repo("anytime", "stdlib")
        changed: list[tuple[Path, bytes, int, int]] = []
        try:
            if not at.has("diff"):
                raise BenchError("anytime has no 'diff' command yet")
            t1 = (self.state.get("instants", {}).get("stdlib") or [None, None])[-1]
            if not t1:
                raise BenchError("instant of the stdlib snapshot unknown")
            files = sorted(p for p in std.glob("*.py") if p.is_file())[:DIFF_FILES]
            for p in files:
                s = p.stat()
                changed.append((p, p.read_bytes(), s.st_atime_ns, s.st_mtime_ns))
                with open(p, "ab") as f:
                    f.write(b"# changed by bench/run.py\n")
            r2 = at.capture(repo, std, first=False)
            t2 = r2.info.get("instant_ns")
            if not t2:
                raise BenchError("anytime snapshot --json gave no instant_ns")
            cmd = [at.exe, "diff", str(std), "--from", at_epoch(t1), "--to", at_epoch(t2)]
            r = run(cmd, env=at.env(repo))
            if r.rc not in (0, 1):
                raise BenchError(f"anytime diff failed (exit {r.rc}): {r.tail()}")
            val = r.secs
            lines = [ln for ln in r.out.splitlines() if ln.strip()]
            note = f"{len(lines)} lines of output for {len(files)} changed files"
            if len(lines) < len(files):
                self.note(f"anytime diff printed {len(lines)} lines for {len(files)} "
                          f"changed files")
            log(f"anytime diff: {r.secs:.3f} s, {note}")
        except BenchError as e:
            note = str(e)
            self.note(f"anytime diff: {e}")
        finally:
            for p, data, atime, mtime in changed:  # put the corpus back as it was
                p.write_bytes(data)
                os.utime(p, ns=(atime, mtime))
            if changed:  # later re-scans must not count these files as changed
                with contextlib.suppress(BenchError):
                    r3 = at.capture(repo, std, first=False)
                    self.state.setdefault("instants", {}).setdefault("stdlib", []).append(
                        r3.info.get("instant_ns"))
                    self.save_state()
        self.add(Row("H", f"anytime diff of two snapshots, {DIFF_FILES} files changed",
                     "stdlib", "s", {"anytime": val}, "< 1 s", "abs_lt", 1.0, note=note))

    # --- G: 10^6 versions ---------------------------------------------------------
    def section_versions(self) -> None:
        n_commits, n_files = self.args.versions_commits, self.args.versions_files
        total = n_commits * n_files
        log(f"== versions (G: {n_commits} commits x {n_files} files = {total:,} versions)")
        at = self.tools["anytime"]
        repo = self.repos / "anytime-versions"
        mount_v = restore_v = cat_v = rss_v = anon_v = None
        notes: list[str] = []
        try:
            info = self.build_versions_repo(repo, n_commits, n_files)
        except Exception as e:  # noqa: BLE001 - any failure of the store API is a finding
            traceback.print_exc()
            self.note(f"building the versions repository failed: {e!r}")
            info = None
        if info:
            self.extra["versions"] = {k: v for k, v in info.items() if k != "expect"}
            target, t_past, expect = info["target"], info["t_past"], info["expect"]
            at_text = at_epoch(t_past)
            src = Path(info["source"])
            # mount to first listing on the big-history repository
            try:
                with at.mount(repo, src, self.fresh_mnt("anytime"),
                              target=info["volume"]) as (root, secs):
                    mount_v = secs
                    log(f"anytime: mounted the {total:,}-version volume in {secs:.3f} s")
            except BenchError as e:
                notes.append(f"mount: {e}")
                self.note(f"anytime versions mount: {e}")
            # one file back from a past instant
            try:
                dest = self.rest / "versions-one"
                rmtree(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                r = at.restore(repo, target, dest, at=at_text)
                restore_v = r.secs
                got = dest.read_bytes() if dest.is_file() else None
                if got != expect:
                    self.note(f"restore of {target} at {at_text} gave {got!r:.60}, "
                              f"want {expect!r:.60}")
                rmtree(dest)
                log(f"anytime: restore one file at a past instant {r.secs:.3f} s")
            except (BenchError, OSError) as e:
                notes.append(f"restore: {e}")
                self.note(f"anytime versions restore: {e}")
            try:
                r = must(run([at.exe, "cat", target, "--at", at_text], env=at.env(repo)),
                         "anytime cat")
                cat_v = r.secs
                if r.out.encode() != expect:
                    self.note(f"cat of {target} at {at_text} gave {r.out!r:.60}, "
                              f"want {expect!r:.60}")
                log(f"anytime: cat one file at a past instant {r.secs:.3f} s")
            except BenchError as e:
                notes.append(f"cat: {e}")
                self.note(f"anytime versions cat: {e}")
            # peak memory of a capture into the big-history repository
            try:
                r = at.capture(repo, self.src("stdlib"), first=True)
                rss_v, anon_v = r.maxrss, r.maxanon
                log(f"anytime: stdlib snapshot into the {total:,}-version repo {r.secs:.2f} s, "
                    f"rss {r.maxrss / 1e6:.0f} MB")
                self.extra["versions"]["stdlib_capture_secs"] = r.secs
            except BenchError as e:
                self.note(f"anytime stdlib capture into versions repo: {e}")
        if not self.args.keep:
            rmtree(repo)
        hist = f"{total:,} versions"
        self.add(Row("G", f"mount to first listing, {hist}", "versions", "s",
                     {"anytime": mount_v}, "< 0.3 s", "abs_lt", 0.3))
        self.add(Row("G", f"restore one file from a past instant, {hist}", "versions", "s",
                     {"anytime": restore_v}, "< 1 s", "abs_lt", 1.0))
        self.add(Row("G", f"cat one file from a past instant, {hist}", "versions", "s",
                     {"anytime": cat_v}, "< 1 s", "abs_lt", 1.0))
        self.add(Row("D", f"peak RSS, stdlib first capture into the {hist} repo", "both",
                     "MB", {"anytime": rss_v}, "<= 100 MB", "abs_le", 100e6,
                     note="includes index pages the kernel maps around each fault"))
        self.add(Row("D", f"peak private memory, stdlib first capture into the {hist} repo",
                     "both", "MB", {"anytime": anon_v}, "<= 100 MB", "abs_le", 100e6))

    def build_versions_repo(self, repo: Path, n_commits: int, n_files: int,
                            only: set[int] | None = None) -> dict:
        """A volume with n_commits x n_files file versions, written with the store API;
        with ``only``, just the commits of those numbers (the same instants and bytes)."""
        from anytime.store import clock
        from anytime.store.format import KIND_DIR, KIND_FILE, Entry
        from anytime.store.repo import Repository
        from anytime.store.volumes import create_volume
        from anytime.store.writer import CommitBuilder

        rmtree(repo)
        source = self.corpus / "versions"
        source.mkdir(parents=True, exist_ok=True)
        step = 60 * 10**9  # one commit a minute
        base = clock.now_ns() - (n_commits + 10) * step
        per_dir = 100
        names = [(f"d{i // per_dir:03d}".encode(), f"f{i:05d}".encode()) for i in range(n_files)]
        t0 = perf_counter()
        r = Repository.init(str(repo))
        try:
            with r.writer_lock():
                with r.env.begin(write=True) as txn:
                    vol = create_volume(r, txn, "versions", str(source), r.block_size, base)
                fids: list[int] = []
                for c in range(n_commits):
                    if only is not None and c not in only:
                        continue
                    t = base + (c + 1) * step
                    b = CommitBuilder(r, vol)
                    if not fids:
                        dmeta = dict(mode=0o40755, nlink=2, atime_ns=t, mtime_ns=t, ctime_ns=t)
                        b.put_entry(b"", Entry(KIND_DIR, **dmeta))
                        for d in sorted({d for d, _ in names}):
                            b.put_entry(d, Entry(KIND_DIR, **dmeta))
                        fids = [b.new_file_id() for _ in names]
                    for i, (d, f) in enumerate(names):
                        data = b"file %d version %d\n" % (i, c)
                        bid = b.store_chunk(data)
                        b.put_block_version(fids[i], 0, bid)
                        b.put_entry(d + b"/" + f, Entry(
                            KIND_FILE, mode=0o100644, size=len(data), atime_ns=t, mtime_ns=t,
                            ctime_ns=t, file_id=fids[i]))
                    b.commit({"kind": "bench"}, instant=t)
                    if (c + 1) % max(1, n_commits // 10) == 0:
                        log(f"versions: {c + 1}/{n_commits} commits "
                            f"({perf_counter() - t0:.1f} s)")
        finally:
            r.close()
        pick_c = n_commits // 2
        pick_i = min(n_files - 1, n_files // 2 + 7)
        d, f = names[pick_i]
        secs = perf_counter() - t0
        size = du_bytes(repo)[0]
        log(f"versions repository built in {secs:.1f} s, {size / 1e6:.0f} MB")
        return {"build_secs": secs, "commits": n_commits, "files": n_files,
                "versions": n_commits * n_files, "volume": "versions", "source": str(source),
                "base": base, "step": step, "names": names,
                "target": f"versions:{(d + b'/' + f).decode()}",
                "t_past": base + (pick_c + 1) * step + step // 2,
                "expect": b"file %d version %d\n" % (pick_i, pick_c),
                "repo_bytes": size}

    # --- P: prune of 10^6 versions ---------------------------------------------------
    def section_prune(self) -> None:
        """Thin a 10^6-version history by PRUNE_POLICY with ``anytime prune``: its time
        and peak memory, then the repository's size against the kept instants written
        fresh into a new repository (the same builder, only the kept commits)."""
        n_commits, n_files = self.args.prune_commits, self.args.prune_files
        total = n_commits * n_files
        log(f"== prune (P: {n_commits} commits x {n_files} files = {total:,} versions)")
        at = self.tools["anytime"]
        repo, fresh = self.repos / "anytime-prune", self.repos / "anytime-prune-fresh"
        vals: dict = {}
        try:
            info = self.build_versions_repo(repo, n_commits, n_files)
            before = du_bytes(repo)[0]
            must(run([at.exe, "policy", "versions:", *PRUNE_POLICY], env=at.env(repo)),
                 "anytime policy")
            r = must(run([at.exe, "prune", "--json"], env=at.env(repo), rss=True,
                         timeout=3600), "anytime prune")
            rep = json.loads(r.out)
            vals.update(secs=r.secs, rss=r.maxrss, anon=r.maxanon)
            base, step = info["base"], info["step"]
            dropped = set(rep["volumes"]["versions"]["dropped"])
            kept = [c for c in range(n_commits) if base + (c + 1) * step not in dropped]
            log(f"anytime: prune {r.secs:.1f} s, peak private {r.maxanon / 1e6:.0f} MB, "
                f"rss {r.maxrss / 1e6:.0f} MB; kept {len(kept)} of {n_commits} commits, "
                f"{rep['versions_deleted']:,} versions deleted, index "
                f"{rep['index']['before_bytes'] / 1e6:.0f} -> "
                f"{rep['index']['after_bytes'] / 1e6:.0f} MB")
            self.check_pruned(at, repo, info, kept, dropped)
            c = must(run([at.exe, "check", "--json"], env=at.env(repo), rss=True,
                         timeout=3600), "anytime check after prune")
            if json.loads(c.out).get("problems"):
                self.note(f"check after prune found problems: {c.out[:300]}")
            vals["check_secs"] = c.secs
            self.build_versions_repo(fresh, n_commits, n_files, only=set(kept))
            vals.update(pruned=du_bytes(repo)[0], fresh=du_bytes(fresh)[0],
                        packs=du_bytes(repo / "packs")[0],
                        fresh_packs=du_bytes(fresh / "packs")[0])
            log(f"repository {before / 1e6:.0f} MB -> {vals['pruned'] / 1e6:.0f} MB after "
                f"prune; the kept instants fresh: {vals['fresh'] / 1e6:.0f} MB")
            self.extra["prune"] = {"commits": n_commits, "files": n_files, "kept": len(kept),
                                   "before_bytes": before, "report": {
                                       k: v for k, v in rep.items() if k != "volumes"},
                                   **vals}
        except (BenchError, OSError, ValueError, KeyError) as e:
            self.note(f"anytime prune: {e}")
        finally:
            if not self.args.keep:
                rmtree(repo)
                rmtree(fresh)
        hist = f"{total:,} versions"
        self.add(Row("P", f"prune, {hist}", "prune", "s", {"anytime": vals.get("secs")},
                     "(time)", "info"))
        self.add(Row("P", f"peak private memory, prune of {hist}", "prune", "MB",
                     {"anytime": vals.get("anon")}, "< 200 MB", "abs_lt", 200e6))
        self.add(Row("P", f"peak RSS, prune of {hist}", "prune", "MB",
                     {"anytime": vals.get("rss")}, "(mapped index pages included)", "info"))
        self.add(Row("P", "repository after prune / kept instants captured fresh", "prune",
                     "MB", {"anytime": vals.get("pruned")}, "<= 1.10x fresh", "le_ref", 1.10,
                     ref=vals.get("fresh")))
        self.add(Row("P", "packs after prune / packs of the fresh copy", "prune", "MB",
                     {"anytime": vals.get("packs")}, "(context)", "ref_ratio",
                     ref=vals.get("fresh_packs")))

    def check_pruned(self, at, repo: Path, info: dict, kept: list[int], dropped) -> None:
        """A kept instant reads its own version; an instant inside a dropped stretch reads
        the version of the kept commit before it."""
        base, step, names = info["base"], info["step"], info["names"]
        i = len(names) // 3
        target = f"versions:{(names[i][0] + b'/' + names[i][1]).decode()}"
        gaps = [c for c in range(1, info["commits"]) if base + (c + 1) * step in dropped
                and c - 1 in kept]
        probes = [(kept[len(kept) // 2], kept[len(kept) // 2])]
        if gaps:
            probes.append((gaps[0], gaps[0] - 1))
        for c, shown in probes:
            t = base + (c + 1) * step + step // 2
            r = must(run([at.exe, "cat", target, "--at", at_epoch(t)], env=at.env(repo)),
                     "anytime cat after prune")
            want = b"file %d version %d\n" % (i, shown)
            if r.out.encode() != want:
                self.note(f"after prune, {target} at commit {c} read {r.out!r:.60}, "
                          f"want {want!r}")

    # --- W: continuous capture ----------------------------------------------------
    def watch_dir(self) -> Path:
        """Where the watched tree lives: on a disk filesystem, as users have it
        (``SCRATCH/watch``, or ``/var/tmp/anytime-bench-watch`` when the scratch is on a
        memory filesystem)."""
        d = self.scratch / "watch"
        if filesystem_of(d)["type"] in MEMORY_FS:
            d = Path("/var/tmp/anytime-bench-watch")
        return d

    def section_watch(self) -> None:
        """Fig W: ``anytime protect`` under a steady load of file changes: the RPO (close
        of each change to the instant it became readable), the watcher's CPU use, what
        continuous commits cost in packs and index, and one commit's cost."""
        log("== watch (W: RPO of continuous capture under load, CPU, repository growth)")
        at = self.tools["anytime"]
        if not at.has("protect"):
            raise BenchError("anytime has no 'protect' command yet")
        base = self.watch_dir()
        tree, work = base / "tree", self.repos / "watch"
        work.mkdir(parents=True, exist_ok=True)
        self.extra["watch"] = info = {
            "tree": str(tree), "tree_fs": filesystem_of(base),
            "repo_fs": filesystem_of(work), "phases": WATCH_PHASES,
            "files": WATCH_DIRS * WATCH_FILES, "new_every": WATCH_NEW_EVERY}
        log(f"watch: tree {tree} ({info['tree_fs']['type']}), repositories under {work} "
            f"({info['repo_fs']['type']})")
        res: dict = {}
        try:
            for mode in WATCH_MODES:
                try:
                    res[mode] = self.watch_run(mode, tree, work / f"anytime-{mode}")
                except BenchError as e:
                    res[mode] = {"error": str(e)}
                    self.note(f"watch {mode}: {e}")
                if mode == WATCH_MODES[0] and "error" not in res[mode]:
                    self.peer_backup(tree, work, first=True)  # the burst of the next run
            peers = self.peer_backup(tree, work, first=False)
        finally:
            rmtree(tree)
            if base != self.scratch / "watch":
                rmtree(base)
        try:
            cost = self.commit_cost(work)
        except BenchError as e:
            cost = {}
            self.note(f"watch commit cost: {e}")
        if not self.args.keep:
            rmtree(work)
        info.update(runs=res, commit_cost=cost, peers=peers)
        self.watch_rows(res, cost, peers)
        self.note(f"watch (W): the watched tree on {info['tree_fs']['type']} "
                  f"({info['tree_fs']['source']}), the repositories on "
                  f"{info['repo_fs']['type']} ({info['repo_fs']['source']}); "
                  f"with fanotify the watcher reads and drops the events of every other "
                  f"process writing to the tree's filesystem, idle included; the per-hour "
                  f"rows are extrapolated from the {WATCH_PHASES[0][1] * self.args.watch_scale:g}"
                  f" s phase; restic and borg have no continuous mode: their RPO is their "
                  f"schedule, one backup's time at best")
        for mode, r in res.items():
            for ph in r.get("phases", []):
                if ph.get("missing"):
                    self.note(f"watch {mode}: {ph['missing']} of {ph['n']} changes at "
                              f"{ph['rate']:,}/s never became readable")

    def watch_run(self, mode: str, tree: Path, repo: Path) -> dict:
        """One ``anytime protect --events MODE`` of a fresh tree into a fresh repository,
        under the load of WATCH_PHASES, then idle; what the probe and the generator saw."""
        import array

        from anytime.store import clock, status
        from anytime.store.repo import Repository
        from anytime.store.volumes import get_volume

        at = self.tools["anytime"]
        rmtree(tree)
        rmtree(repo)
        pool = [f"d{d:02d}/f{f:03d}" for d in range(WATCH_DIRS) for f in range(WATCH_FILES)]
        for f, rel in enumerate(pool):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            head = b"%010d %s " % (0, rel.encode())
            (tree / rel).write_bytes(head + b"." * (watch_size(f) - len(head)))
        at.init(repo)
        errf = tempfile.NamedTemporaryFile(prefix="bench-protect-", suffix=".log")  # noqa: SIM115
        p = subprocess.Popen([at.exe, "-r", str(repo), "protect", str(tree), "--name", "watch",
                              "--events", mode], stdout=subprocess.DEVNULL, stderr=errf,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        clk = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:  # seconds: utime + stime, children excluded
            f = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / clk

        def errtext() -> str:
            return Path(errf.name).read_text(errors="replace")

        r = None
        out: dict = {"mode": mode}
        try:
            deadline = perf_counter() + 60
            while "anytime: watching" not in errtext():
                if p.poll() is not None:
                    raise BenchError(f"protect --events {mode} exited with {p.returncode}: "
                                     f"{errtext().strip()[-300:]}")
                if perf_counter() > deadline:
                    raise BenchError(f"protect --events {mode} not ready after 60 s")
                sleep(0.05)
            if f"with {mode} events" not in errtext():
                raise BenchError(f"protect did not use {mode}: {errtext().strip()[-200:]}")
            r = Repository.open(str(repo))

            def horizon() -> int:
                with r.read_txn() as txn:
                    return get_volume(r, txn, "watch").horizon

            # the probe: each horizon with the wall time it was first seen; the watcher's
            # CPU time and the repository's packs and index, sampled as it goes
            seen: list[tuple[int, int]] = [(horizon(), clock.now_ns())]
            samples: list[tuple] = []
            stop = threading.Event()

            def probe() -> None:
                k = 0
                while not stop.is_set():
                    h = horizon()
                    if h != seen[-1][0]:
                        seen.append((h, clock.now_ns()))
                    if k % 10 == 0:
                        samples.append((clock.now_ns(), cpu(), *self.repo_files(repo)))
                    k += 1
                    stop.wait(WATCH_POLL_S)

            th = threading.Thread(target=probe, daemon=True)
            th.start()
            changes = repo.parent / f"changes-{mode}.json"
            scale = self.args.watch_scale  # shorter phases, to try the part out
            phases = [(rate, secs * scale) for rate, secs in WATCH_PHASES]
            params = {"pool": pool, "new_every": WATCH_NEW_EVERY, "dirs": WATCH_DIRS,
                      "phases": phases}
            log(f"watch {mode}: load " + ", ".join(f"{rate:,}/s for {secs:g} s"
                                                   for rate, secs in phases))
            must(run([sys.executable, "-I", "-S", "-c", LOADGEN, str(tree), str(changes),
                      json.dumps(params)], timeout=300), "the load generator")
            gen_end = perf_counter()
            # settled: nothing queued or pending, and the horizon still for 0.5 s
            last, still = None, 0.0
            while True:
                st = status.published(r).get("watch", {})
                h = seen[-1][0]
                quiet = not st.get("queued") and not st.get("pending_since_ns")
                if quiet and h == last and perf_counter() - gen_end > 1.0:
                    if perf_counter() - still >= 0.5:
                        break
                else:
                    last, still = h, perf_counter()
                if p.poll() is not None:
                    raise BenchError(f"protect exited with {p.returncode} under load: "
                                     f"{errtext().strip()[-300:]}")
                if perf_counter() - gen_end > 120:
                    self.note(f"watch {mode}: still committing 120 s after the load ended")
                    break
                sleep(0.05)
            out["settle_s"] = perf_counter() - gen_end
            stop.set()
            th.join()
            log(f"watch {mode}: settled {out['settle_s']:.1f} s after the load ended; "
                f"idle for {WATCH_IDLE_S:g} s")
            sleep(1.0)
            c0, t0 = cpu(), perf_counter()
            sleep(WATCH_IDLE_S)
            out["idle_cpu_pct"] = 100 * (cpu() - c0) / (perf_counter() - t0)
            out["idle_commits"] = 0 if horizon() == seen[-1][0] else 1
            p.send_signal(signal.SIGTERM)
            rc = p.wait(60)
            if rc != 0:
                self.note(f"watch {mode}: protect exited with {rc} on SIGTERM")
            load = json.loads(changes.read_text())
            n = load["n"]
            raw = changes.with_suffix(".json.bin").read_bytes()
            close_ns, which = array.array("q"), array.array("l")
            close_ns.frombytes(raw[:8 * n])
            which.frombytes(raw[8 * n:])
            out.update(self.watch_analysis(r, load, close_ns, which, seen, samples))
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"protect --events {mode} did not stop: {e}") from None
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            if r is not None:
                r.close()
            out["log_tail"] = errtext().strip()[-500:]
            errf.close()
        return out

    @staticmethod
    def repo_files(repo: Path) -> tuple[int, int, int, int]:
        """(pack files, their bytes, index data.mdb size, its disk usage)."""
        n = size = 0
        for dirpath, _dirs, files in os.walk(repo / "packs"):
            for f in files:
                with contextlib.suppress(OSError):
                    size += os.stat(os.path.join(dirpath, f)).st_size
                    n += 1
        try:
            s = os.stat(repo / "index" / "data.mdb")
            return n, size, s.st_size, s.st_blocks * 512
        except OSError:
            return n, size, 0, 0

    def watch_analysis(self, r, load, close_ns, which, seen, samples) -> dict:
        """Per change: when the first commit holding its content (or a later content of
        the same file) became readable, from the probe's horizons; per phase: the RPO
        percentiles, the rate reached, CPU, commits, packs and index growth."""
        import bisect

        from anytime.store import timeline
        from anytime.store.format import KIND_FILE
        from anytime.store.volumes import get_volume
        from anytime.vfs.view import View

        t0 = perf_counter()
        with r.read_txn() as txn:
            vol = get_volume(r, txn, "watch")
            commits = [t for t, _ in timeline.commits(r, txn, vol.id)]
        # every version of every file changed: (instant, sequence number it holds)
        versions: dict[int, tuple[list[int], list[int]]] = {}
        for f in sorted(set(which)):
            path = load["paths"][f].encode()
            ts, best = [], []
            with r.read_txn() as txn:
                vs = list(timeline.entry_versions(r, txn, vol.id, path))
            top = -1
            for t, e in vs:
                seq = -1
                if e.kind == KIND_FILE and not e.deleted and e.size >= 10:
                    with contextlib.suppress(Exception):
                        seq = int(View(r, vol, t).read(e, 0, 10))
                top = max(top, seq)
                ts.append(t)
                best.append(top)
            versions[f] = (ts, best)
        horizons = [h for h, _ in seen]
        out: dict = {"commits": len(commits), "changes": len(close_ns),
                     "analysis_s": 0.0, "phases": []}
        lost = 0
        first = 0
        for ph in load["phases"]:
            lags = []
            for i in range(first, first + ph["n"]):
                ts, best = versions[which[i]]
                k = bisect.bisect_left(best, i + 1)
                if k == len(best):
                    lost += 1
                    continue
                j = bisect.bisect_left(horizons, ts[k])
                if j == len(horizons):
                    lost += 1
                    continue
                lags.append((seen[j][1] - close_ns[i]) / 1e9)
            first += ph["n"]
            lags.sort()
            a, b = ph["start_ns"], ph["end_ns"]
            secs = (b - a) / 1e9

            def near(t):  # the probe sample nearest to wall time t
                return min(samples, key=lambda s: abs(s[0] - t)) if samples else None

            s0, s1 = near(a), near(b)
            q = {"rate": ph["rate"], "n": ph["n"], "achieved_per_s": ph["n"] / secs,
                 "secs": secs, "missing": ph["n"] - len(lags),
                 "commits": sum(1 for t in commits if a <= t <= b)}
            # how long each commit of the phase took: its reads began (its instant) to
            # readable (the probe saw its horizon)
            took = sorted((w - h) / 1e9 for h, w in seen if a <= h <= b)
            if took:
                q.update(commit_s_p50=took[len(took) // 2], commit_s_max=took[-1])
            if lags:
                q.update(p50=lags[len(lags) // 2], p99=lags[min(len(lags) - 1,
                         int(len(lags) * 0.99))], max=lags[-1])
            if s0 and s1 and s1[0] > s0[0]:
                dt = (s1[0] - s0[0]) / 1e9
                q.update(cpu_pct=100 * (s1[1] - s0[1]) / dt, sample_s=dt,
                         packs=s1[2] - s0[2], pack_bytes=s1[3] - s0[3],
                         index_bytes=s1[4] - s0[4], index_du=s1[5] - s0[5])
            out["phases"].append(q)
        out["lost"] = lost
        # what the index holds at the end: entries and pages of each LMDB database (the
        # bench reads the store's internals here; capture and vfs may not)
        with r.read_txn() as txn:
            out["index_dbs"] = {
                name.decode() if isinstance(name, bytes) else str(name): {
                    k: v for k, v in txn.stat(db).items() if k != "psize"}
                for name, db in r.dbs.items()}
        out["index_info"] = {k: v for k, v in r.env.info().items() if k != "map_addr"}
        out["pack_target"] = r.pack_target
        out["analysis_s"] = perf_counter() - t0
        return out

    def peer_backup(self, tree: Path, work: Path, first: bool) -> dict:
        """restic and borg of the watched tree: a first backup (``first``, not timed),
        or the timed backup after the next run's burst of changes."""
        out: dict = {}
        for name in ("restic", "borg"):
            tool = self.tools[name]
            if not tool.available():
                continue
            repo = work / name
            try:
                if first:
                    rmtree(repo)
                    tool.init(repo)
                    tool.capture(repo, tree, first=True)
                elif repo.exists():
                    out[name] = tool.capture(repo, tree, first=False).secs
                    log(f"watch: {name} backup after the burst {out[name]:.2f} s")
            except BenchError as e:
                self.note(f"watch {name}: {e}")
        return out

    def commit_cost(self, work: Path) -> dict:
        """WATCH_COMMITS commits of one changed file through one writer session, timed
        in-process; then the same under ``strace -c`` for the fsync calls per commit."""
        src, repo = work / "commit-src", work / "commit-repo"
        out: dict = {}
        for traced in (False, True):
            rmtree(src)
            rmtree(repo)
            src.mkdir(parents=True)
            cmd = [sys.executable, "-c", COMMIT_LOOP, str(repo), str(src), str(WATCH_COMMITS)]
            if traced:
                if not shutil.which("strace"):
                    self.note("strace not installed: fsyncs per commit not counted")
                    break
                trace = work / "strace.txt"
                cmd = ["strace", "-f", "-c", "-o", str(trace), "-e",
                       "trace=fsync,fdatasync,sync_file_range,msync,syncfs"] + cmd
            res = must(run(cmd, timeout=300), "the commit loop")
            got = json.loads(res.out.strip().splitlines()[-1])
            if traced:
                calls = {}
                for line in trace.read_text().splitlines():
                    f = line.split()
                    if len(f) >= 5 and f[-1] in ("fsync", "fdatasync", "sync_file_range",
                                                 "msync", "syncfs"):
                        calls[f[-1]] = int(f[3])
                # the repository's init and first scan are in the count too: per commit
                # is (traced calls - those of a zero-commit run) / commits
                out["strace_calls"] = calls
            else:
                cs, ss = sorted(got["commit_s"]), sorted(got["scan_s"])
                out.update(commit_ms=1000 * cs[len(cs) // 2], scan_ms=1000 * ss[len(ss) // 2],
                           commits=len(cs), repo_fs=filesystem_of(work))
        if "strace_calls" in out:
            # a run with no commits after the first scan: what init and that scan cost
            rmtree(src)
            rmtree(repo)
            src.mkdir(parents=True)
            trace0 = work / "strace0.txt"
            must(run(["strace", "-f", "-c", "-o", str(trace0), "-e",
                      "trace=fsync,fdatasync,sync_file_range,msync,syncfs", sys.executable,
                      "-c", COMMIT_LOOP, str(repo), str(src), "0"], timeout=300),
                 "the commit loop (no commits)")
            base = {}
            for line in trace0.read_text().splitlines():
                f = line.split()
                if len(f) >= 5 and f[-1] in out["strace_calls"]:
                    base[f[-1]] = int(f[3])
            out["strace_base"] = base
            out["fsyncs_per_commit"] = {k: (v - base.get(k, 0)) / WATCH_COMMITS
                                        for k, v in out["strace_calls"].items()}
        rmtree(src)
        rmtree(repo)
        log(f"watch: one commit {out.get('commit_ms', 0):.2f} ms (PathScan.run "
            f"{out.get('scan_ms', 0):.2f} ms), syncs per commit "
            f"{out.get('fsyncs_per_commit')}")
        return out

    def watch_rows(self, res: dict, cost: dict, peers: dict) -> None:
        for mode in WATCH_MODES:
            phases = res.get(mode, {}).get("phases") or [{} for _ in WATCH_PHASES]
            for (rate, _secs), ph in zip(WATCH_PHASES, phases, strict=True):
                load = f"{rate:,} changes/s, {mode}"
                took = (f"{ph['commits']} commits; each took (reads began to readable) "
                        f"{ph['commit_s_p50']:.3f} s median, {ph['commit_s_max']:.3f} s at "
                        f"most" if ph.get("commit_s_p50") is not None else "")
                for stat_, goal in (("p50", None), ("p99", 1.0), ("max", None)):
                    g = goal if rate == WATCH_PHASES[0][0] else None
                    self.add(Row("W", f"RPO {stat_} (close to readable), {load}", "watch", "s",
                                 {"anytime": ph.get(stat_)}, "<= 1 s" if g else "(context)",
                                 "abs_le" if g else "info", g or 0.0,
                                 key=f"watch_rpo_{stat_}_{rate}_{mode}",
                                 note=took if stat_ == "p99" else ""))
                missing = ph.get("missing")
                self.add(Row("W", f"changes the load generator made per second, {load}",
                             "watch", "/s", {"anytime": ph.get("achieved_per_s")},
                             f"{rate:,}/s", "info", note="" if not missing else
                             f"{missing} changes never readable"))
                self.add(Row("W", f"CPU of the watcher, % of one core, {load}", "watch", "%",
                             {"anytime": ph.get("cpu_pct")}, "(context)", "info"))
            self.add(Row("W", f"CPU of the watcher at idle ({WATCH_IDLE_S:g} s), {mode}",
                         "watch", "%", {"anytime": res.get(mode, {}).get("idle_cpu_pct")},
                         "(context)", "info",
                         note="fanotify marks the whole filesystem: other processes' "
                              "changes there are read and dropped" if mode == "fanotify"
                         else ""))
        ph = (res.get(WATCH_MODES[0], {}).get("phases") or [{}])[0]
        hour = 3600 / ph["secs"] if ph.get("secs") else None

        def per_hour(k):
            return ph[k] * hour if hour and ph.get(k) is not None else None

        load = f"{WATCH_PHASES[0][0]:,} changes/s, {WATCH_MODES[0]}, extrapolated"
        self.add(Row("W", f"commits per hour, {load}", "watch", "n",
                     {"anytime": per_hour("commits")}, "(context)", "info"))
        # a phase of seconds rarely sees a pack sealed: a session seals its open pack
        # once it passes the pack target or PACK_MAX_AGE, so per hour that is
        from anytime.store.session import PACK_MAX_AGE

        target = res.get(WATCH_MODES[0], {}).get("pack_target")
        packs_h = None
        if per_hour("pack_bytes") is not None and target:
            packs_h = max(per_hour("pack_bytes") / target, 3600 / PACK_MAX_AGE)
        self.add(Row("W", f"pack files per hour, {load} from the pack bytes and the "
                     f"sealing rule", "watch", "n", {"anytime": packs_h}, "(context)", "info",
                     note=f"a session seals its open pack at {(target or 0) / MiB:.0f} MiB or "
                          f"{PACK_MAX_AGE:.0f} s; {ph.get('packs')} pack files created in the "
                          f"{ph.get('secs', 0):.0f} s phase"))
        self.add(Row("W", f"pack bytes per hour, {load}", "watch", "MB",
                     {"anytime": per_hour("pack_bytes")}, "(context)", "info"))
        self.add(Row("W", f"index (data.mdb) growth per hour, {load}", "watch", "MB",
                     {"anytime": per_hour("index_bytes")}, "(context)", "info",
                     note="LMDB's file: pages in use and free pages it reuses later "
                          "(details.watch: each database's entries and pages)"))
        self.add(Row("W", "one commit of one changed file (CommitBuilder.commit), median",
                     "watch", "ms", {"anytime": cost.get("commit_ms")}, "(context)", "info",
                     note=f"the whole PathScan.run: {cost['scan_ms']:.2f} ms"
                     if cost.get("scan_ms") else ""))
        fs = cost.get("fsyncs_per_commit") or {}
        self.add(Row("W", "fsync + fdatasync calls per commit (strace -c)", "watch", "n",
                     {"anytime": (fs.get("fsync", 0) + fs.get("fdatasync", 0)) if fs
                      else None}, "(context)", "info",
                     note=", ".join(f"{k} {v:.2f}" for k, v in fs.items())))
        self.add(Row("W", "peers' best RPO: one backup of the tree after the bursts, run "
                     "back to back", "watch", "s",
                     {"restic": peers.get("restic"), "borg": peers.get("borg")},
                     "(context)", "info",
                     note="restic and borg have no continuous mode: their RPO is their "
                          "schedule, at best one backup's time"))

    # --- X: the every-write shim ----------------------------------------------------
    def section_shim(self) -> None:
        """Fig X: applications writing through ``anytime protect --mode shim`` (with and
        without ``--sync``) next to the same operations straight on the disk, and
        through a do-nothing mfusepy passthrough (the floor: what FUSE in Python allows
        here, nothing recorded)."""
        log("== shim (X: writes through the every-write shim, vs direct and a passthrough)")
        at = self.tools["anytime"]
        if not at.has("protect"):
            raise BenchError("anytime has no 'protect' command yet")
        base = self.scratch / "shim"  # on a disk filesystem, as users have it
        if filesystem_of(base)["type"] in MEMORY_FS:
            base = Path("/var/tmp/anytime-bench-shim")
        tree, work = base / "tree", self.repos / "shim"
        work.mkdir(parents=True, exist_ok=True)
        self.extra["shim"] = info = {
            "tree": str(tree), "tree_fs": filesystem_of(base), "repo_fs": filesystem_of(work),
            "params": self.shim_params()}
        log(f"shim: tree {tree} ({info['tree_fs']['type']}), repositories under {work} "
            f"({info['repo_fs']['type']})")
        res: dict = {}
        try:
            for cfg in SHIM_CONFIGS:
                try:
                    res[cfg] = self.shim_run(cfg, tree, work / f"anytime-{cfg}")
                except BenchError as e:
                    res[cfg] = {"error": str(e)}
                    self.note(f"shim {cfg}: {e}")
        finally:
            force_unmount(tree)
            rmtree(base)
            if not self.args.keep:
                rmtree(work)
        info["runs"] = res
        self.shim_rows(res)
        self.note(f"shim (X): the tree on {info['tree_fs']['type']} "
                  f"({info['tree_fs']['source']}, {tree}), the repositories on "
                  f"{info['repo_fs']['type']} ({info['repo_fs']['source']}, {work}); "
                  f"'direct' runs the same workload on the tree with nothing mounted; the "
                  f"floor is a do-nothing mfusepy passthrough (PASSTHRU in run.py) with the "
                  f"shim's mount options, nothing recorded")

    def shim_params(self) -> dict:
        """SHIM_PARAMS, scaled by --shim-scale (shorter, to try the part out)."""
        k = self.args.shim_scale
        par = dict(SHIM_PARAMS)
        for name in ("seq_mib", "rand_file_mib", "rand_n"):
            par[name] = max(1, int(par[name] * k))
        par["rand_max_s"] *= k
        par["sqlite_s"] *= k
        return par

    def shim_run(self, cfg: str, tree: Path, repo: Path) -> dict:
        """The workload (SHIMLOAD) in a fresh tree, through configuration ``cfg``:
        ``direct``, ``floor`` (PASSTHRU), ``shim`` or ``shim --sync`` (into a fresh
        repository); per phase its figures, and for the shim the repository's growth
        and the shim's CPU from the phase's start until all it recorded is committed."""
        from anytime.store import clock
        from anytime.store.repo import Repository
        from anytime.store.volumes import get_volume

        at = self.tools["anytime"]
        force_unmount(tree)
        rmtree(tree)
        rmtree(repo)
        tree.mkdir(parents=True)
        shim = cfg.startswith("shim")
        p = r = None
        errf = tempfile.NamedTemporaryFile(prefix="bench-shim-", suffix=".log")  # noqa: SIM115
        out: dict = {"cfg": cfg, "phases": {}}

        def errtext() -> str:
            return Path(errf.name).read_text(errors="replace")

        def cpu() -> float:
            if p is None:
                return 0.0
            f = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

        def start(cmd, ready: str) -> subprocess.Popen:
            before = len(errtext())  # (the log of an earlier mount says it too)
            q = subprocess.Popen(cmd, stdout=errf, stderr=errf, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            deadline = perf_counter() + 60
            while ready not in errtext()[before:]:
                if q.poll() is not None:
                    raise BenchError(f"{cfg} exited with {q.returncode} before it was "
                                     f"mounted: {errtext().strip()[-300:]}")
                if perf_counter() > deadline:
                    raise BenchError(f"{cfg} not mounted after 60 s")
                sleep(0.02)
            return q

        def horizon() -> int:
            with r.read_txn() as txn:
                return get_volume(r, txn, "shim").horizon

        def settle() -> float:
            """Seconds until all recorded so far is committed: a write to a marker file
            through the shim is stamped after every operation before it."""
            if not shim:
                return 0.0
            t0, mark = perf_counter(), clock.now_ns()
            fd = os.open(tree / "MARK", os.O_WRONLY)
            try:
                os.pwrite(fd, b"m", 0)
            finally:
                os.close(fd)
            while horizon() < mark:
                if p.poll() is not None:
                    raise BenchError(f"{cfg} exited with {p.returncode}: "
                                     f"{errtext().strip()[-300:]}")
                if perf_counter() - t0 > 120:
                    raise BenchError(f"{cfg}: not committed 120 s after the phase")
                sleep(0.01)
            return perf_counter() - t0

        def phase(name: str, params: dict, as_name: str = "") -> dict:
            c0, t0 = cpu(), perf_counter()
            du0 = du_bytes(repo) if shim else (0, 0)
            got = must(run([sys.executable, "-I", "-S", "-c", SHIMLOAD, str(tree), name,
                            json.dumps(params)], timeout=300), f"the {name} workload")
            ph = json.loads(got.out)
            ph["commit_lag_s"] = settle()
            ph["wall_s"] = perf_counter() - t0
            if p is not None:
                ph["cpu_s"] = cpu() - c0
                ph["cpu_pct"] = 100 * ph["cpu_s"] / ph["wall_s"]
            if shim:
                du1 = du_bytes(repo)
                ph["repo_growth"], ph["repo_growth_apparent"] = du1[0] - du0[0], du1[1] - du0[1]
            out["phases"][as_name or name] = ph
            log(f"shim {cfg}: {as_name or name}: " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in ph.items()
                if k not in ("lat", "secs", "digest") or isinstance(v, float)))
            return ph

        try:
            if shim:
                at.init(repo)
                (tree / "MARK").touch()
                p = start([at.exe, "-r", str(repo), "protect", str(tree), "--mode", "shim",
                           "--name", "shim", *cfg.split()[1:]], "shim mounted over")
                r = Repository.open(str(repo))
            elif cfg == "floor":
                p = start([sys.executable, "-c", PASSTHRU, str(tree), "0"], "mounted")
            par = self.shim_params()
            phase("seq", {"mib": par["seq_mib"]})
            phase("reread", {})
            phase("prefill", {"mib": par["rand_file_mib"]})
            phase("rand", {"n": par["rand_n"], "max_s": par["rand_max_s"]})
            phase("sqlite", {"secs": par["sqlite_s"]})
            if p is not None:
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            out["peak_rss"] = int(line.split()[1]) * 1024
            if shim:
                p.send_signal(signal.SIGTERM)
                rc = p.wait(120)
                if rc != 0:
                    self.note(f"shim {cfg}: protect exited with {rc} on SIGTERM: "
                              f"{errtext().strip()[-300:]}")
                out["check"] = self.shim_check(cfg, tree, repo, out["phases"]["rand"])
            elif cfg == "floor":
                must(run(["fusermount3", "-u", str(tree)]), "fusermount3 -u of the floor")
                p.wait(60)
                # again with the kernel's caches on: what the shim could have with them
                p = start([sys.executable, "-c", PASSTHRU, str(tree), "1"], "mounted")
                phase("reread", {}, as_name="reread_cached")
                phase("sqlite", {"secs": par["sqlite_s"]}, as_name="sqlite_cached")
                must(run(["fusermount3", "-u", str(tree)]), "fusermount3 -u of the floor")
                p.wait(60)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"{cfg} did not stop: {e}") from None
        finally:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
            if p is not None:  # (a dead mount answers ENOTCONN: ismount says False)
                force_unmount(tree)
            if r is not None:
                r.close()
            out["log_tail"] = errtext().strip()[-500:]
            errf.close()
        return out

    def shim_check(self, cfg: str, tree: Path, repo: Path, rand: dict) -> dict:
        """What the shim recorded last is what the tree holds: ``anytime cat`` of the
        randomly written file and of the database, against the files."""
        at = self.tools["anytime"]
        got: dict = {}
        for name in ("RAND.bin", "app.db"):
            dest = repo.parent / f"cat-{name}"
            c = run([at.exe, "-r", str(repo), "cat", str(tree / name)], stdout_path=dest,
                    keep_out=False, timeout=300)
            same = c.ok and digest(dest) == digest(tree / name)
            got[name] = same
            if not same:
                self.note(f"shim {cfg}: the recorded {name} differs from the file"
                          + (f" (cat failed: {c.tail()})" if not c.ok else ""))
            dest.unlink(missing_ok=True)
        if rand.get("digest") and digest(tree / "RAND.bin") != rand["digest"]:
            self.note(f"shim {cfg}: RAND.bin on disk differs from what the workload read "
                      f"back through the shim")
        return got

    def shim_rows(self, res: dict) -> None:
        def ph(cfg, name):
            return res.get(cfg, {}).get("phases", {}).get(name, {})

        def mbps(cfg, name, k=None):
            d = ph(cfg, name)
            if not d.get("secs"):
                return None
            secs = d["secs"][k] if k is not None else d["secs"]
            return d["bytes"] / secs / 1e6

        def lat(cfg, q):
            xs = sorted(ph(cfg, "rand").get("lat") or [])
            return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else None

        def tps(cfg):
            d = ph(cfg, "sqlite")
            return d["tx"] / d["secs"] if d.get("secs") else None

        def per_byte(cfg, name):
            d = ph(cfg, name)
            return d["repo_growth"] / d["bytes"] if d.get("bytes") and "repo_growth" in d \
                else None

        par = self.shim_params()
        fig = {"seq": (f"sequential write of {par['seq_mib'] / 1024:g} GiB in 1 MiB writes, "
                       f"fsync included, MB/s", "MB/s", lambda c: mbps(c, "seq")),
               "rand_p50": (f"4 KiB random write + fsync into a {par['rand_file_mib']} MiB "
                            f"file, p50 latency", "ms", lambda c: lat(c, 0.5)),
               "rand_p99": ("4 KiB random write + fsync, p99 latency", "ms",
                            lambda c: lat(c, 0.99)),
               "sqlite": ("SQLite WAL, synchronous=FULL: transactions of one small insert "
                          "per second", "/s", tps),
               "reread": ("second read of the file written (1 MiB readinto), MB/s", "MB/s",
                          lambda c: mbps(c, "reread", 1))}
        goals = {"seq": (">= 0.5x direct", "vs_ref", 0.5),
                 "sqlite": (">= 0.5x direct", "vs_ref", 0.5),
                 "reread": ("about page-cache speed: >= 0.5x direct", "vs_ref", 0.5)}
        d = ph("floor", "sqlite_cached")
        cached = {"reread": mbps("floor", "reread_cached", 1),
                  "sqlite": d["tx"] / d["secs"] if d.get("secs") else None}
        for key, (what, unit, get) in fig.items():
            direct, floor = get("direct"), get("floor")
            for cfg in ("shim", "shim --sync"):
                goal, kind, k = goals.get(key, ("(context: direct as reference)", "ref_ratio",
                                                0.0))
                note = f"direct {fmt(direct, unit)}, floor (passthrough) {fmt(floor, unit)}"
                if key.startswith("rand"):
                    note += f"; {len(ph(cfg, 'rand').get('lat') or [])} writes"
                self.add(Row("X", f"{what}, {cfg}", "shim", unit, {"anytime": get(cfg)}, goal,
                             kind, k, ref=direct, note=note, key=f"shim_{key}_{cfg}",
                             extra={"direct": direct, "floor": floor}))
            self.add(Row("X", f"{what}, floor: a do-nothing mfusepy passthrough", "shim",
                         unit, {"anytime": floor}, "(context: what FUSE in Python allows)",
                         "ref_ratio", ref=direct, key=f"shim_{key}_floor",
                         note=f"direct {fmt(direct, unit)}"))
            if key in cached:
                self.add(Row("X", f"{what}, floor with the kernel's caches (keep_cache, "
                             f"1 s entry and attribute timeouts)", "shim", unit,
                             {"anytime": cached[key]}, "(context: what caching would allow)",
                             "ref_ratio", ref=direct, key=f"shim_{key}_floor_cached",
                             note=f"direct {fmt(direct, unit)}"))
        for cfg in ("shim", "shim --sync"):
            for name, what in (("seq", "the sequential write"), ("rand", "the random writes")):
                d = ph(cfg, name)
                self.add(Row("X", f"bytes recorded per byte written, {what}, {cfg}", "shim",
                             "x", {"anytime": per_byte(cfg, name)}, "(context)", "info",
                             key=f"shim_growth_{name}_{cfg}",
                             note=f"repository growth (du) {fmt(d.get('repo_growth'), 'MB')} "
                                  f"for {fmt(d.get('bytes'), 'MB')} written; apparent "
                                  f"{fmt(d.get('repo_growth_apparent'), 'MB')}"))
            for name, what in (("seq", "sequential write"), ("rand", "random writes"),
                               ("sqlite", "SQLite")):
                d = ph(cfg, name)
                self.add(Row("X", f"CPU of the shim, % of one core, {what}, {cfg}", "shim",
                             "%", {"anytime": d.get("cpu_pct")}, "(context)", "info",
                             key=f"shim_cpu_{name}_{cfg}",
                             note=f"{d.get('cpu_s', 0):.1f} s of CPU over {d.get('wall_s', 0):.1f}"
                                  f" s, until committed ({d.get('commit_lag_s', 0):.2f} s after "
                                  f"the workload ended)" if d else ""))
            self.add(Row("X", f"peak RSS of the shim, {cfg}", "shim", "MB",
                         {"anytime": res.get(cfg, {}).get("peak_rss")}, "(context)", "info",
                         key=f"shim_rss_{cfg}"))

    # --- output -------------------------------------------------------------------
    def table(self) -> str:
        heads = " | ".join(HEADS[t] for t in TOOLS)
        head = (f"| fig | what | corpus | {heads} | anytime / peer | goal | met |\n"
                f"| --- | --- | --- | {' | '.join('---:' for _ in TOOLS)} | ---: | --- | --- |")
        lines = [head]
        for r in self.rows:
            met = {True: "yes", False: "**no**", None: "n/a"}[r.met]
            ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
            cells = [fmt(r.values.get(t), r.unit) if t in r.values else "—" for t in TOOLS]
            lines.append(f"| {r.fig} | {r.what} | {r.corpus} | " + " | ".join(cells)
                         + f" | {ratio} | {r.goal} | {met} |")
        return "\n".join(lines)

    def write_json(self) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / "results.json"
        data = {
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": os.cpu_count(), "tools": self.versions()},
            "scratch": str(self.scratch),
            "total_secs": perf_counter() - T_START,
            "rows": [{"figure": r.fig, "what": r.what, "corpus": r.corpus, "unit": r.unit,
                      "values": r.values, "ratio": r.ratio, "goal": r.goal, "met": r.met,
                      "note": r.note, "key": r.key, "extra": r.extra} for r in self.rows],
            "notes": self.notes,
            "details": self.extra,
        }
        path.write_text(json.dumps(data, indent=2, default=str))
        return path

    def versions(self) -> dict:
        out = {}
        for cmd in (["restic", "version"], ["borg", "--version"]):
            if shutil.which(cmd[0]):
                out[cmd[0]] = run(cmd, timeout=60).out.strip()
        if self.tools["anytime"].available():
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                out["anytime"] = importlib.metadata.version("anytime")
        return out


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """One row per figure: each tool's median over the runs that measured it."""
    order: list[tuple] = []
    seen: dict[tuple, list[Row]] = {}
    for rows in runs:
        for row in rows:
            key = (row.fig, row.what, row.corpus)
            if key not in seen:
                order.append(key)
                seen[key] = []
            seen[key].append(row)
    out = []
    for key in order:
        rows = seen[key]
        values = {}
        for tool in rows[0].values:
            got = sorted(r.values.get(tool) for r in rows if r.values.get(tool) is not None)
            values[tool] = got[len(got) // 2] if got else None
        row = dataclasses.replace(rows[0], values=values, ratio=None, met=None)
        row.judge()
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append",
                    choices=list(ALL_PARTS),
                    help="run only this part (repeatable); default: all")
    ap.add_argument("--scratch", default=os.environ.get("ANYTIME_BENCH_SCRATCH",
                                                         "/tmp/anytime-bench"),
                    help="scratch directory for corpora, repositories, mounts "
                         "(default /tmp/anytime-bench)")
    ap.add_argument("--restore-dir", default=os.environ.get("ANYTIME_BENCH_RESTORE"),
                    help="where restores go: a directory on a disk filesystem (default "
                         "SCRATCH/restore, or /var/tmp/anytime-bench-restore when the "
                         "scratch is on tmpfs)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch directory (corpora and repositories) afterwards")
    ap.add_argument("--runs", type=int, default=3,
                    help="repeat the capture, mount and restore parts this many times and "
                         "report the median of each figure (default 3; this VM's timings "
                         "vary by 10-30%% from run to run)")
    ap.add_argument("--versions-commits", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--versions-files", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--prune-commits", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--prune-files", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--watch-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--shim-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    parts = args.only or list(ALL_PARTS)

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    # Byte-compile anytime as a regular install would: an editable install under
    # PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every module on every run.
    import anytime.store

    pkg_root = Path(anytime.store.__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(pkg_root / d) for d in
                    ("store", "fusekit", "capture", "vfs", "tools"))], check=False,
                   stdout=subprocess.DEVNULL)
    b = Bench(args)
    missing = [t for t in TOOLS if not b.avail(t)]
    if missing:
        b.note(f"not installed: {', '.join(missing)} (their figures are n/a)")
    for t in ("fusermount3", "find", "tar", "cp"):
        if not shutil.which(t):
            b.note(f"{t} not found")
    log(f"scratch {b.scratch}; parts: {', '.join(parts)}")
    try:
        b.build_corpora(parts)
        order = list(ALL_PARTS)
        once = ("versions", "startup", "shifted", "watch", "shim", "prune")  # one run each
        runs: list[list[Row]] = []
        try:
            for i in range(max(1, args.runs)):
                b.rows = []
                for part in order:
                    if part not in parts or (part in once and i > 0):
                        continue
                    log(f"run {i + 1}/{args.runs}: {part}")
                    try:
                        getattr(b, f"section_{part}")()
                    except BenchError as e:
                        b.note(f"{part}: {e}")
                    except Exception as e:  # noqa: BLE001 - keep going, report what we have
                        traceback.print_exc()
                        b.note(f"{part} crashed: {e!r}")
                runs.append(b.rows)
        finally:
            b.rows = median_rows(runs)
            if len(runs) > 1:
                b.note(f"each figure is the median of {len(runs)} runs (the 10^6-version, "
                       f"start-up, shifted-content, continuous-capture and prune figures: one run)")
    except KeyboardInterrupt:
        b.note("interrupted")
    finally:
        for p in sorted(b.mnt.glob("*")) if b.mnt.exists() else []:
            if os.path.ismount(p):
                force_unmount(p)
        path = b.write_json()
        print(b.table())
        if b.notes:
            print("\nNotes:")
            for n in b.notes:
                print(f"- {n}")
        print(f"\n({perf_counter() - T_START:.0f} s in all; JSON: {path})")
        if not args.keep:
            rmtree(b.scratch)
        with contextlib.suppress(OSError):
            b.rest.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
