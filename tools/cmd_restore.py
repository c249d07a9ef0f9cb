"""``anytime restore``: a file or tree as it was at an instant, back on disk."""

from __future__ import annotations

import json
import os
import sys

from anytime.store.errors import DestinationError

from .cmd_repo import open_repo

# The restore engine and the vfs are imported by cmd_restore when it runs:
# 'anytime --help' imports every command module (tools/cli.py).


def register(sub, common) -> None:
    p = sub.add_parser("restore", parents=[common],
                       help="put a file or tree back as it was at an instant")
    p.add_argument("path")
    p.add_argument("--at", required=True, help="the instant to restore")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", dest="dest", help="destination (created; an existing "
                       "directory receives the restored entry under its own name)")
    where.add_argument("--in-place", action="store_true",
                       help="restore over the live original path")
    pol = p.add_mutually_exclusive_group()
    for name in ("overwrite", "skip", "keep-both"):
        pol.add_argument(f"--{name}", dest="policy", action="store_const", const=name,
                         help=f"when a different file exists at the destination: {name}")
    p.add_argument("--delete", action="store_true",
                   help="remove entries at the destination that did not exist at the instant")
    p.add_argument("--dry-run", action="store_true", help="show what would be done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_restore)


def destination(target, args) -> bytes:
    if args.in_place:
        return os.fsencode(target.original)
    dest = os.fsencode(os.path.abspath(args.dest))
    name = os.path.basename(target.path) or os.fsencode(
        os.path.basename(target.vol.source.rstrip("/")) or target.vol.name)
    if os.path.isdir(dest) and not os.path.islink(dest):
        return os.path.join(dest, name)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise DestinationError(f"{os.fsdecode(parent)} does not exist; create it first")
    return dest


def cmd_restore(args) -> int:
    from anytime.vfs.instants import format_instant

    from .progress import Progress
    from .restore import Restorer
    from .target import lookup_at

    with open_repo(args) as repo:
        target, view, entry = lookup_at(repo, args)
        dest = destination(target, args)
        progress = Progress(enabled=None if not (args.json or args.dry_run) else False)
        r = Restorer(view, policy=args.policy, delete=args.delete, progress=progress)
        r.plan(target.path, dest, entry)
        conflicts = r.conflicts
        if conflicts and not args.dry_run:
            listed = "\n  ".join(os.fsdecode(a.dest) for a in conflicts[:20])
            more = f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
            raise DestinationError(
                f"{len(conflicts)} existing files differ from the version at "
                f"{format_instant(view.instant)}; nothing was changed. Choose --overwrite, "
                f"--skip or --keep-both:\n  {listed}{more}")
        counts: dict[str, int] = {}
        for a in r.actions:
            counts[a.op] = counts.get(a.op, 0) + 1
        if args.dry_run:
            out = sys.stdout.buffer
            for a in r.actions:
                if a.op not in ("same", "dir") or not a.existed:
                    out.write(a.op.encode() + b"  " + a.dest + b"\n")
            return 0
        try:
            r.execute()
        finally:
            progress.clear()
    summary = {"destination": os.fsdecode(dest), "instant": format_instant(view.instant),
               "bytes": r.bytes_done, **counts}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        written = sum(counts.get(k, 0) for k in ("create", "replace", "keep-both"))
        print(f"restored {os.fsdecode(dest)} as of {summary['instant']}: {written} written "
              f"({r.bytes_done / 1e6:.1f} MB), {counts.get('same', 0)} unchanged, "
              f"{counts.get('meta', 0)} metadata fixed, {counts.get('skip', 0)} skipped, "
              f"{counts.get('delete', 0)} deleted")
    return 0
