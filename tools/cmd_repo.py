"""Commands that create and fill a repository: ``init``, ``snapshot``, ``volumes``."""

from __future__ import annotations

import json
import sys

from anytime.store.errors import PartialError

# The store, capture and vfs modules are imported by the commands that use them, not
# here: 'anytime --help' imports every command module (tools/cli.py).


def open_repo(args):
    """The repository ``--repo`` (or its default) names, open (a Repository)."""
    from anytime.store.repo import Repository, locate

    return Repository.open(locate(args.repo))


_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20}


def block_size_arg(text: str) -> int:
    """``--block-size``: bytes, or with a unit (``64K``, ``1MiB``); a power of two within
    the format's range (store/format.py), else a usage error saying what is allowed."""
    import argparse

    from anytime.store.format import block_size_problem

    t = text.strip().lower()
    digits = t.rstrip("kimb")
    unit = t[len(digits):]
    if not digits.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a size: give a power of two from 1K to 16M, in bytes or "
            f"with K or M (e.g. 65536, 64K, 1M)")
    n = int(digits) * _UNITS[unit]
    problem = block_size_problem(n)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return n


def register(sub, common) -> None:
    p = sub.add_parser("init", parents=[common], help="create a repository")
    p.add_argument("--block-size", type=block_size_arg, default=None, metavar="SIZE",
                   help="default block size of new volumes: a power of two from 1K to 16M "
                        "(default 1M)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("snapshot", parents=[common], help="capture a directory tree as one commit")
    p.add_argument("path")
    p.add_argument("--label", help="name the instant of this commit")
    p.add_argument("--name", help="volume name (default: derived from the path)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--before-hook", help="command run before capturing (e.g. to flush an app)")
    p.add_argument("--after-hook", help="command run after committing")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("check", parents=[common],
                       help="verify packs and index (read-only)")
    p.add_argument("--read-data", action="store_true",
                   help="also decompress every block and verify it against its id")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable report (counts, problems, warnings)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("volumes", parents=[common], help="list protected volumes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_volumes)


def cmd_init(args) -> int:
    from anytime.store.repo import Repository, locate

    root = locate(args.repo)
    kw = {"block_size": args.block_size} if args.block_size is not None else {}
    Repository.init(root, **kw).close()
    print(f"created anytime repository at {root}")
    return 0


def run_hook(cmd: str | None, what: str) -> None:
    if not cmd:
        return
    import subprocess

    from anytime.store.errors import AnytimeError

    r = subprocess.run(cmd, shell=True)
    if r.returncode != 0:
        raise AnytimeError(f"the {what} hook '{cmd}' failed with exit code {r.returncode}; "
                           f"nothing was captured" if what == "before" else
                           f"the {what} hook '{cmd}' failed with exit code {r.returncode}")


def cmd_snapshot(args) -> int:
    from anytime.capture import snapshot
    from anytime.vfs.instants import format_instant

    from .progress import Progress

    with open_repo(args) as repo:
        progress = Progress(enabled=None if not args.json else False)
        run_hook(args.before_hook, "before")
        try:
            report = snapshot(repo, args.path, name=args.name, label=args.label,
                              progress=progress)
        finally:
            progress.clear()
        run_hook(args.after_hook, "after")
    summary = {
        "volume": report.volume, "instant": format_instant(report.instant),
        "instant_ns": report.instant, "files": report.files, "dirs": report.dirs,
        "files_read": report.files_read, "bytes_read": report.bytes_read,
        "changed": report.changed, "deleted": report.deleted,
        "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
        "unreadable": [{"path": p, "reason": r} for p, r in report.unreadable],
        "unstable": report.unstable, "resized": report.resized, "partial": report.partial,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(f"{report.volume}: committed {format_instant(report.instant)}: "
              f"{report.files} files, {report.dirs} dirs; read {report.files_read} files "
              f"({report.bytes_read / 1e6:.1f} MB); {report.changed} changed, "
              f"{report.deleted} deleted")
        if report.resized:
            print(f"{len(report.resized)} files read to another length than their size says "
                  f"(as /proc and /sys files do); stored as read: {some(report.resized)}")
    if report.partial:
        parts = []
        if report.unreadable:
            parts.append(f"{len(report.unreadable)} files could not be read and are recorded "
                         f"as unreadable at this instant (the next snapshot that can read "
                         f"them stores their content):" + listing(report.unreadable))
        if report.skipped:
            parts.append(f"{len(report.skipped)} entries could not be read and keep their "
                         f"previous versions:" + listing(report.skipped))
        raise PartialError("the snapshot is partial: " + "\n".join(parts))
    return 0


def listing(items: list[tuple[str, str]]) -> str:
    return "".join(f"\n  {p}: {r}" for p, r in items)


def some(paths: list[str], n: int = 5) -> str:
    """The first ``n`` of ``paths``, and how many more (all of them are in --json)."""
    head = ", ".join(paths[:n])
    return head + (f" and {len(paths) - n} more (--json lists all)" if len(paths) > n else "")


def cmd_check(args) -> int:
    from anytime.store.check import check
    from anytime.store.errors import DamagedData

    with open_repo(args) as repo:
        rep = check(repo, read_data=args.read_data)
    if args.json:
        json.dump(rep.to_json(), sys.stdout, indent=2)
        print()
        if rep.problems:
            raise DamagedData(f"{len(rep.problems)} problems found (listed in the report)")
        return 0
    for w in rep.warnings:
        print(f"anytime: warning: {w}", file=sys.stderr)
    print(f"{rep.packs} packs, {rep.blocks} blocks, {rep.block_versions} block versions "
          f"checked; {rep.leftover_packs} uncommitted pack files (reclaimed by the next "
          f"snapshot)")
    if rep.problems:
        raise DamagedData(f"{len(rep.problems)} problems:\n  " + "\n  ".join(rep.problems[:50]))
    print("no problems found")
    return 0


def cmd_volumes(args) -> int:
    from anytime.store import timeline
    from anytime.store.volumes import list_volumes
    from anytime.vfs.instants import format_instant

    with open_repo(args) as repo, repo.read_txn() as txn:
        rows = []
        for v in list_volumes(repo, txn):
            first = timeline.first_commit(repo, txn, v.id)
            rows.append({"name": v.name, "source": v.source, "kind": v.kind,
                         "commits": timeline.commit_count(repo, txn, v.id),
                         "first": format_instant(first) if first else None,
                         "latest": format_instant(v.horizon) if v.horizon else None,
                         "block_size": v.block_size})
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for r in rows:
        print(f"{r['name']:<20} {r['commits']:>6} commits  {r['first'] or '-':<35} .. "
              f"{r['latest'] or '-':<35} {r['source']}")
    if not rows:
        print("no volumes yet; protect a tree with 'anytime snapshot PATH'", file=sys.stderr)
    return 0

