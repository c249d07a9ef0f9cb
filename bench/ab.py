"""A/B of mount reads between anytime installs, interleaved in one run.

The store 2 issue asks for mount reads within 10% of format 1's. This compares any
anytime commands on the same corpora (the benchmark's stdlib tree and bigfile), each
with a repository of its own made by its own ``snapshot``:

    .venv/bin/python bench/ab.py --variant fmt1=/path/to/old/.venv/bin/anytime \\
        --variant now=.venv/bin/anytime --runs 5

Per run, per corpus, per cache state, every variant mounts its repository (``mount
--at now``), reads the corpus through it twice (cold: first read on a fresh mount;
warm: the second), and unmounts; the variants' order rotates each run. "repo warm"
reads the repository into the page cache first (as part F of run.py does); "dropped"
drops the page cache first (needs root). Figures: MB/s medians, and the median of each
run's ratio to the first variant ("paired", steadier on a shared machine). The table
goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402 - the benchmark's corpora and helpers


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def tree_read(root: Path) -> tuple[int, float]:
    """Bytes and seconds of reading every regular file under ``root``, in sorted order."""
    total, t0 = 0, time.perf_counter()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                total += B.read_file(p)[0]
    return total, time.perf_counter() - t0


def corpora(scratch: Path) -> dict[str, Path]:
    """The stdlib tree and bigfile, made as run.py makes them (kept in ``scratch``)."""
    bench = B.Bench(argparse.Namespace(scratch=str(scratch), restore_dir=None, keep=True,
                                       runs=1, only=["mount"], versions_commits=0,
                                       versions_files=0, prune_commits=0, prune_files=0,
                                       watch_scale=1.0, shim_scale=1.0))
    bench.build_main_corpora()
    return {"stdlib": bench.src("stdlib"), "bigfile": bench.src("bigfile")}


def one(exe: str, repo: Path, src: Path, mnt: Path, big: bool) -> tuple[float, float]:
    """(cold MB/s, warm MB/s) of reading ``src``'s copy through a fresh mount."""
    env = dict(os.environ, ANYTIME_REPO=str(repo))
    mnt.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([exe, "mount", str(src), str(mnt), "--at", "now"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        B.wait_listable(mnt, t0, 60)
        read = (lambda: B.read_file(mnt / B.BIG_NAME)) if big else (lambda: tree_read(mnt))
        n1, s1 = read()
        n2, s2 = read()
    finally:
        subprocess.run([exe, "umount", str(mnt)], env=env, check=False)
        if os.path.ismount(mnt):
            B.force_unmount(mnt)
    return n1 / s1 / 1e6, n2 / s2 / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=EXE",
                    help="an anytime command to compare (repeat; the first is the base)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--corpora", default="bigfile,stdlib")
    ap.add_argument("--caches", default="warm,dropped")
    ap.add_argument("--scratch", default="/var/tmp/anytime-ab")
    a = ap.parse_args(argv)
    variants = dict(v.split("=", 1) for v in a.variant)
    scratch = Path(a.scratch)
    srcs = corpora(scratch)
    for name, exe in variants.items():  # a repository per variant and corpus
        for corpus in a.corpora.split(","):
            repo = scratch / "ab" / f"{name}-{corpus}"
            if not (repo / "config").exists():
                env = dict(os.environ, ANYTIME_REPO=str(repo))
                subprocess.run([exe, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
                subprocess.run([exe, "snapshot", str(srcs[corpus])], env=env, check=True,
                               stdout=subprocess.DEVNULL)
    res: dict[tuple, list] = {}
    names = list(variants)
    for r in range(a.runs):
        for corpus in a.corpora.split(","):
            for caches in a.caches.split(","):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    repo = scratch / "ab" / f"{name}-{corpus}"
                    if caches == "dropped":
                        drop_caches()
                    else:
                        B.warm(repo)
                    got = one(variants[name], repo, srcs[corpus],
                              scratch / "mnt" / f"{name}-{r}", corpus == "bigfile")
                    res.setdefault((corpus, caches, name), []).append(got)
                    print(f"run {r} {corpus} {caches} {name}: cold {got[0]:.0f} MB/s, "
                          f"warm {got[1]:.0f} MB/s", file=sys.stderr, flush=True)
    print(f"| corpus | caches | variant | cold MB/s | / {names[0]} (paired) | warm MB/s | "
          f"/ {names[0]} (paired) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for corpus in a.corpora.split(","):
        for caches in a.caches.split(","):
            base = res[(corpus, caches, names[0])]
            for name in names:
                xs = res[(corpus, caches, name)]
                cells = []
                for i in (0, 1):
                    med = statistics.median(x[i] for x in xs)
                    ratio = med / statistics.median(x[i] for x in base)
                    paired = statistics.median(x[i] / y[i] for x, y in zip(xs, base, strict=True))
                    cells += [f"{med:.0f}", f"{ratio:.2f} ({paired:.2f})"]
                print(f"| {corpus} | {caches} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
