"""``anytime restore``: a file or tree as it was at an instant, back on disk."""

from __future__ import annotations

import json
import os
import sys

from anytime.store.errors import DestinationError, PartialError

from .cmd_repo import open_repo
from .text import plural

# The restore engine and the vfs are imported by cmd_restore when it runs:
# a command's --help imports its module too (tools/cli.py).


def register(sub, common) -> None:
    p = sub.add_parser("restore", parents=[common])
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


def destination(target, args) -> tuple[bytes, bytes | None]:
    """(where the restored entry goes, and in place the volume's root on disk)."""
    if args.in_place:
        return os.fsencode(target.original), os.fsencode(target.vol.source)
    dest = os.fsencode(os.path.abspath(args.dest))
    name = os.path.basename(target.path) or os.fsencode(
        os.path.basename(target.vol.source.rstrip("/")) or target.vol.name)
    if os.path.isdir(dest) and not os.path.islink(dest):
        return os.path.join(dest, name), None
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise DestinationError(f"{os.fsdecode(parent)} does not exist; create it first")
    return dest, None


def cmd_restore(args) -> int:
    from anytime.vfs.instants import format_instant

    from .progress import Progress
    from .restore import Interrupted, Restorer
    from .target import lookup_at

    with open_repo(args) as repo:
        target, view, entry = lookup_at(repo, args)
        from anytime.store.pins import Pins

        Pins(repo).add(target.vol.id, view.instant)  # no prune thins it under the restore
        dest, root = destination(target, args)
        progress = Progress(enabled=None if not (args.json or args.dry_run) else False)
        r = Restorer(view, policy=args.policy, delete=args.delete, progress=progress)
        try:
            r.plan(target.path, dest, entry, root=root)
        except KeyboardInterrupt:
            print("anytime: restore interrupted while planning; nothing was changed",
                  file=sys.stderr)
            return 130
        conflicts = r.conflicts
        if conflicts and not args.dry_run:
            raise DestinationError(
                f"{plural(len(conflicts), 'existing entry', 'existing entries')} "
                f"{('differs', 'differ')[len(conflicts) > 1]} from the version at "
                f"{format_instant(view.instant)}; nothing was changed. Choose --overwrite, "
                f"--skip or --keep-both:\n  {_listing([a.dest for a in conflicts])}")
        if args.dry_run:
            _print_plan(r, args.json)
            return 0
        try:
            r.execute()
        except Interrupted as e:
            progress.clear()
            print(f"anytime: {e}", file=sys.stderr)
            return 128 + r.signal
        finally:
            progress.clear()
    summary = _summary(r)
    failed = r.failed
    if args.json:
        summary["failed"] = [{"path": os.fsdecode(a.dest), "reason": a.failed} for a in failed]
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        c = summary["counts"]
        written = sum(c.get(k, 0) for k in ("create", "replace", "keep-both")) - len(failed)
        print(f"restored {summary['destination']} as of {summary['instant']}: {written} "
              f"written ({r.bytes_done / 1e6:.1f} MB), {c.get('same', 0)} unchanged, "
              f"{c.get('meta', 0)} metadata fixed, {c.get('skip', 0)} skipped, "
              f"{c.get('delete', 0)} deleted" + (f", {len(failed)} failed" if failed else ""))
    if failed:
        raise PartialError(
            f"{plural(len(failed), 'entry')} could not be restored (the rest was); what was "
            f"at {('its', 'their')[len(failed) > 1]} destination is unchanged. 'anytime "
            f"check' tells what is damaged:\n  "
            + _listing([b"%s: %s" % (a.dest, a.failed.encode()) for a in failed]))
    return 0


def _listing(lines: list[bytes], most: int = 20) -> str:
    text = "\n  ".join(os.fsdecode(x) for x in lines[:most])
    return text + (f"\n  ... and {len(lines) - most} more" if len(lines) > most else "")


def _summary(r) -> dict:
    from anytime.vfs.instants import format_instant

    counts: dict[str, int] = {}
    for a in r.actions:
        counts[a.op] = counts.get(a.op, 0) + 1
    return {"destination": os.fsdecode(r.dest), "instant": format_instant(r.view.instant),
            "bytes": r.bytes_done, "counts": counts, **counts}


def _print_plan(r, as_json: bool) -> None:
    """The plan of a --dry-run: every action (JSON), or those that change something."""
    if as_json:
        summary = _summary(r)
        summary["bytes"] = r.bytes_total
        json.dump({"plan": [a.row() for a in r.actions], "summary": summary}, sys.stdout,
                  indent=2)
        print()
        return
    out = sys.stdout.buffer
    for a in r.actions:
        if a.op not in ("same", "dir"):
            out.write(a.op.encode() + b"  " + a.dest + b"\n")
