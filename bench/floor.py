#!/usr/bin/env python3
"""Lower bounds on this machine for the benchmark goals anytime misses.

    .venv/bin/python bench/floor.py [--scratch DIR] [--results bench/out/results.json]

``bench/run.py`` compares anytime with restic and borg. Where a goal is missed, this
script measures the least work any design with the same output must do here, with
nothing of anytime around it, so the note on an issue can say whether the goal is within
reach at all:

1. **hashing and compression** (goal: first capture at most half the faster peer's
   time, and a repository no larger than the smaller peer's): the corpus's unique 1 MiB
   blocks, already in memory, hashed (keyed BLAKE3) and compressed by one thread per core, for zstd levels 1 to 3 and for
   anytime's own settings. Only settings whose output (block bytes alone, no index) is
   no larger than the smaller peer's whole repository keep the size goal; the fastest
   of them is a floor for the capture time. Reading, metadata and the index come on top.
2. **minimal capture** of the stdlib and small-files trees: one process per core (no
   GIL shared) opens, reads, hashes (keyed BLAKE3), compresses (anytime's settings, no
   dictionary) and appends every file to a scratch file; the parent only walks the tree
   and hands out batches. No index, no metadata, no change detection. For the small
   files the goal is the faster peer's time itself.
3. **cold read** (goal: at least 4x the faster peer's MB/s through the mount): the CPU a
   1 MiB read costs through an anytime mount (daemon plus reader, from /proc and
   os.times) divided over the cores gives a ceiling; next to it, decompression alone
   by one thread per core, in memory.
4. **FUSE round trip**: the time of one LOOKUP (a missing name) through an anytime
   mount, and the round trips ``find`` cannot avoid through libfuse's high-level API
   (OPENDIR, READDIRPLUS, READDIR at the end; RELEASEDIR is asynchronous) per directory.

The capture goal comes from ``borg create`` timed here, next to the floors (best of 3;
this VM's timings drift 10-30% between minutes); the size, find and read goals from the
peers' figures in ``--results`` (written by run.py). Corpora and repositories come from run.py's scratch
directory (run it once with ``--keep``); parts whose inputs are missing are skipped
with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import blake3
import zstandard
from run import Anytime, Borg, read_file, rmtree  # bench/ is sys.path[0]

from anytime.store import format as fmt

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
CORES = os.cpu_count() or 1
BATCH = 16


def log(msg: str) -> None:
    print(f"[floor] {msg}", file=sys.stderr, flush=True)


# --- inputs ---------------------------------------------------------------------------
def corpus_blocks(corpus: Path) -> list[bytes]:
    """Unique 1 MiB blocks of every regular file under ``corpus`` (file by file)."""
    seen, out = set(), []
    for dirpath, dirnames, files in os.walk(corpus):
        dirnames.sort()
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                data = f.read()
            for i in range(0, len(data), MiB):
                b = data[i:i + MiB]
                h = blake3.blake3(b).digest()
                if h not in seen and not fmt.is_zero(b):
                    seen.add(h)
                    out.append(b)
    return out


def anytime_cctx(size: int) -> zstandard.ZstdCompressor:
    """The compressor anytime's writer uses for a block of ``size`` bytes."""
    if size >= fmt.ZSTD_LARGE_MIN:
        return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
            write_content_size=0, **fmt.ZSTD_LARGE_PARAMS))
    return zstandard.ZstdCompressor(level=fmt.ZSTD_LEVEL, write_content_size=False)


def parallel(work, items: list, threads: int = CORES) -> tuple[float, list]:
    """Run ``work(part)`` on ``threads`` interleaved parts; (wall seconds, results)."""
    parts = [items[i::threads] for i in range(threads)]
    results: list = [None] * threads

    def run(i):
        results[i] = work(parts[i])

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, results


# --- 1. compression -------------------------------------------------------------------
def compression_floor(blocks: list[bytes]) -> list[dict]:
    settings = [(f"zstd {lvl}", lambda n, lvl=lvl: zstandard.ZstdCompressor(
        level=lvl, write_content_size=False)) for lvl in (1, 2, 3)]
    settings.append(("anytime's settings", anytime_cctx))
    rows = []
    for name, make in settings:
        def work(part, make=make):
            cctx = {}
            total = 0
            key = bytes(32)
            for b in part:
                blake3.blake3(b, key=key).digest()
                large = len(b) >= fmt.ZSTD_LARGE_MIN
                c = cctx.get(large) or cctx.setdefault(large, make(len(b)))
                total += min(len(c.compress(b)), len(b))
            return total
        best = min((parallel(work, blocks) for _ in range(3)), key=lambda r: r[0])
        rows.append({"setting": name, "secs": best[0], "stored": sum(best[1])})
    return rows


# --- 2. minimal capture ---------------------------------------------------------------
def _capture_worker(conn, out_path: str) -> None:
    key = os.urandom(32)
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    seen: set[bytes] = set()
    cctx: dict[bool, zstandard.ZstdCompressor] = {}
    while (batch := conn.recv()) is not None:
        out = []
        for path in batch:
            try:
                f = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                out.append(None)
                continue
            try:
                s = os.fstat(f)
                ids = []
                for off in range(0, s.st_size, MiB):
                    data = os.pread(f, MiB, off)
                    h = blake3.blake3(data, key=key).digest()
                    if h not in seen:
                        seen.add(h)
                        large = len(data) >= fmt.ZSTD_LARGE_MIN
                        c = cctx.get(large) or cctx.setdefault(large, anytime_cctx(len(data)))
                        z = c.compress(data)
                        os.writev(fd, (h, z if len(z) < len(data) else data))
                    ids.append(h)
                out.append((ids, os.fstat(f).st_mtime_ns))
            finally:
                os.close(f)
        conn.send(out)
    os.fsync(fd)
    os.close(fd)
    conn.send("done")


def minimal_capture(tree: Path, scratch: Path) -> float:
    ctx = multiprocessing.get_context("fork")
    t0 = time.perf_counter()
    conns, procs = [], []
    for i in range(CORES):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_capture_worker, args=(b, str(scratch / f"floor-pack-{i}")))
        p.start()
        conns.append(a)
        procs.append(p)
    inflight: list = []
    batch: list[bytes] = []
    turn = 0

    def send():
        nonlocal batch, turn
        c = conns[turn % CORES]
        c.send(batch)
        inflight.append(c)
        turn += 1
        batch = []

    stack = [os.fsencode(tree)]
    while stack:
        with os.scandir(stack.pop()) as it:
            entries = list(it)
        for de in entries:
            if de.is_dir(follow_symlinks=False):
                stack.append(de.path)
            elif de.is_file(follow_symlinks=False):
                batch.append(de.path)
                if len(batch) >= BATCH:
                    send()
                    while len(inflight) > 4 * CORES:
                        inflight.pop(0).recv()
    if batch:
        send()
    for c in inflight:
        c.recv()
    for c in conns:
        c.send(None)
    for c in conns:
        c.recv()
    for p in procs:
        p.join()
    secs = time.perf_counter() - t0
    for i in range(CORES):
        (scratch / f"floor-pack-{i}").unlink(missing_ok=True)
    return secs


# --- 3, 4: through a mount ------------------------------------------------------------
def cpu_secs(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def mounted(repo: Path, volume: str, mnt: Path):
    """``anytime mount VOLUME MNT --at now`` with run.py's tool (which also unmounts, by
    force if it must); yields the daemon's pid."""
    mnt.mkdir(parents=True, exist_ok=True)
    with Anytime(None).mount(repo, Path(), mnt, target=volume):
        out = subprocess.run(["pgrep", "-f", f"anytime mount {volume} {mnt}"],
                             capture_output=True, text=True).stdout.split()
        yield int(out[0])


def cold_read(repo: Path, mnt: Path) -> dict:
    runs = []
    for _ in range(3):
        with mounted(repo, "bigfile", mnt) as pid:
            path = next(p for p in mnt.rglob("*") if p.is_file())
            before_d, before_r = cpu_secs(pid), os.times()
            n, wall = read_file(path)
            after_r = os.times()
            daemon = cpu_secs(pid) - before_d
            reader = (after_r.user - before_r.user) + (after_r.system - before_r.system)
            runs.append({"bytes": n, "wall": wall, "daemon_cpu": daemon, "reader_cpu": reader})
    best = min(runs, key=lambda r: r["daemon_cpu"] + r["reader_cpu"])
    best["mbps"] = best["bytes"] / 1e6 / best["wall"]
    best["ceiling_mbps"] = best["bytes"] / 1e6 / ((best["daemon_cpu"] + best["reader_cpu"])
                                                  / CORES)
    return best


def decompression_ceiling(blocks: list[bytes]) -> float:
    stored = [anytime_cctx(len(b)).compress(b) for b in blocks]
    total = sum(len(b) for b in blocks)

    def work(part):
        d = zstandard.ZstdDecompressor()
        for z in part:
            d.decompress(z, max_output_size=MiB)

    secs = min(parallel(work, stored)[0] for _ in range(3))
    return total / 1e6 / secs


def round_trips(repo: Path, mnt: Path) -> dict:
    with mounted(repo, "stdlib", mnt):
        n = 2000
        t0 = time.perf_counter()
        for i in range(n):
            try:
                os.stat(mnt / f"no such name {i}")
            except FileNotFoundError:
                pass
        lookup = (time.perf_counter() - t0) / n
        dirs = sum(1 for _ in os.walk(mnt))
    return {"lookup_us": lookup * 1e6, "dirs": dirs, "find_floor": 3 * dirs * lookup}


def borg_capture(src: Path, work: Path) -> float | None:
    """Best of 3 first captures of ``src`` by borg (``-e none``, default lz4), timed here
    so the capture goal and the floors come from the same minutes of this VM."""
    borg = Borg(SimpleNamespace(scratch=work))  # run.py's tool: the same commands
    if not borg.available():
        return None
    best = None
    for i in range(3):
        repo = work / f"borg-{i}"
        borg.init(repo)
        secs = borg.capture(repo, src, first=True).secs
        best = secs if best is None else min(best, secs)
        rmtree(repo)
    rmtree(work / "cache")
    return best


# --- report ---------------------------------------------------------------------------
def peer_figures(results: Path) -> dict:
    """{(corpus, row key): {tool: value}} from run.py's results, if any (rows by their
    stable ``key``: capture, size, find, tar, cold)."""
    try:
        rows = json.loads(results.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {}
    return {(r["corpus"], r["key"]): r["values"] for r in rows if r.get("key")}


def faster(values: dict | None, higher_is_better: bool = False) -> float | None:
    peers = [v for k, v in (values or {}).items() if k != "anytime" and v]
    if not peers:
        return None
    return max(peers) if higher_is_better else min(peers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scratch", default=os.environ.get("ANYTIME_BENCH_SCRATCH",
                                                        "/tmp/anytime-bench"))
    ap.add_argument("--results", default=str(HERE / "out" / "results.json"))
    args = ap.parse_args(argv)
    scratch = Path(args.scratch)
    corpus, repos = scratch / "corpus", scratch / "repos"
    figs = peer_figures(Path(args.results))
    lines = ["| floor | corpus | measured | goal | the goal is within reach |",
             "| --- | --- | ---: | ---: | --- |"]
    notes = []
    work = Path(tempfile.mkdtemp(prefix="anytime-floor-", dir=scratch if scratch.is_dir()
                                 else None))
    try:
        for name in ("stdlib", "bigfile", "small"):
            src = corpus / name
            if not src.is_dir():
                notes.append(f"no corpus {src}: run bench/run.py --keep first")
                continue
            log(f"{name}: unique blocks into memory")
            blocks = corpus_blocks(src)
            log(f"{name}: borg create, the faster peer at capture")
            peers = dict(figs.get((name, "capture")) or {})
            now = borg_capture(src, work)
            if now is not None:
                peers["borg"] = now
            capture = faster(peers)
            # small files: faster than the faster peer; the others: half its time
            goal = capture * (1.0 if name == "small" else 0.5) if capture else None
            lines.append(f"| faster peer's first capture (borg, measured here) | {name} | "
                         f"{f'{capture:.3f} s' if capture else '-'} | - | - |")
            sizes = figs.get((name, "size"), {})
            limit = faster(sizes)
            log(f"{name}: compression, {CORES} threads")
            rows = compression_floor(blocks)
            for r in rows:
                keeps = limit is None or r["stored"] <= limit
                lines.append(
                    f"| hashing and compression alone, {r['setting']}: {r['stored'] / 1e6:.1f} MB "
                    f"({'keeps' if keeps else 'misses'} the size goal"
                    f"{f', <= {limit / 1e6:.1f} MB' if limit else ''}) | {name} | "
                    f"{r['secs']:.3f} s | {f'{goal:.3f} s' if goal else '-'} | "
                    f"{_reach(keeps and goal is not None and r['secs'] <= goal, goal)} |")
            if name in ("stdlib", "small"):
                log(f"{name}: minimal capture, a process per core")
                secs = min(minimal_capture(src, work) for _ in range(3))
                lines.append(f"| minimal capture (read, hash, compress, append; "
                             f"{CORES} processes) | {name} | {secs:.3f} s | "
                             f"{f'{goal:.3f} s' if goal else '-'} | "
                             f"{_reach(goal is not None and secs <= goal, goal)} |")
            else:
                log("bigfile: decompression alone")
                mbps = decompression_ceiling(blocks)
                cold = faster(figs.get((name, "cold")), higher_is_better=True)
                goal_r = cold * 4 if cold else None
                lines.append(f"| decompression alone, {CORES} threads, in memory | bigfile | "
                             f"{mbps:.0f} MB/s | {f'{goal_r:.0f} MB/s' if goal_r else '-'} | "
                             f"{_reach(goal_r is not None and mbps >= goal_r, goal_r)} |")
                if (repos / "anytime-bigfile").is_dir():
                    log("bigfile: cold read through a mount, CPU accounted")
                    r = cold_read(repos / "anytime-bigfile", work / "mnt")
                    per_mb = (r["daemon_cpu"] + r["reader_cpu"]) / (r["bytes"] / 1e6) * 1e3
                    goal_s = f"{goal_r:.0f} MB/s" if goal_r else "-"
                    lines.append(
                        f"| cold read through the mount: {per_mb:.2f} ms CPU per MB (daemon "
                        f"{r['daemon_cpu']:.2f} s, reader {r['reader_cpu']:.2f} s), spread "
                        f"over {CORES} cores | bigfile | {r['ceiling_mbps']:.0f} MB/s "
                        f"(measured {r['mbps']:.0f}) | {goal_s} | "
                        f"{_reach(goal_r is not None and r['ceiling_mbps'] >= goal_r, goal_r)} |")
                else:
                    notes.append("no anytime-bigfile repository: cold read skipped")
        if (repos / "anytime-stdlib").is_dir():
            log("stdlib: FUSE round trips")
            r = round_trips(repos / "anytime-stdlib", work / "mnt")
            find = faster(figs.get(("stdlib", "find")))
            goal = find / 2 if find else None
            lines.append(f"| find: 3 synchronous round trips x {r['dirs']} directories at "
                         f"{r['lookup_us']:.0f} us (one LOOKUP) | stdlib | "
                         f"{r['find_floor']:.3f} s | {f'{goal:.3f} s' if goal else '-'} | "
                         f"{_reach(goal is not None and r['find_floor'] <= goal, goal)} |")
        else:
            notes.append("no anytime-stdlib repository: round trips skipped")
    finally:
        rmtree(work)
    print("\n".join(lines))
    for n in notes:
        print(f"- {n}")
    return 0


def _reach(ok: bool, goal) -> str:
    if goal is None:
        return "no peer figures (run bench/run.py)"
    return "yes" if ok else "**no**"


if __name__ == "__main__":
    sys.exit(main())
