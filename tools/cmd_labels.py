"""``mark``/``unmark`` (named instants) and ``find`` (names across the whole history)."""

from __future__ import annotations

import fnmatch
import json
import os
import sys

from anytime.store import clock, timeline
from anytime.store.errors import AnytimeError, InstantError, UsageError
from anytime.store.format import MAX_INSTANT
from anytime.store.volumes import get_volume_by_id, list_volumes
from anytime.vfs.instants import format_instant, parse_instant

from .cmd_repo import open_repo, run_hook
from .target import resolve_instant, resolve_target


def register(sub, common) -> None:
    p = sub.add_parser("mark", parents=[common])
    p.add_argument("path")
    p.add_argument("label")
    p.add_argument("--at", help="instant to name (default: now)")
    p.add_argument("--force", action="store_true", help="move an existing label")
    p.add_argument("--before-hook", help="command run before the instant is taken")
    p.add_argument("--after-hook", help="command run after the label is written")
    p.set_defaults(func=cmd_mark)

    p = sub.add_parser("unmark", parents=[common])
    p.add_argument("path")
    p.add_argument("label")
    p.set_defaults(func=cmd_unmark)

    p = sub.add_parser("find", parents=[common])
    p.add_argument("pattern", help="glob on the name, or on the path if it contains '/'")
    p.add_argument("--volume", help="search only this volume (name or path)")
    p.add_argument("--since", help="only versions at or after this instant")
    p.add_argument("--until", help="only versions at or before this instant")
    p.add_argument("--deleted", action="store_true", help="only paths deleted in the range")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_find)


def check_label_name(name: str) -> None:
    if not name or "/" in name or "\x00" in name:
        raise UsageError(f"'{name}' cannot be a label: use a non-empty name without '/'")
    try:
        parse_instant(name)
    except InstantError:
        return
    raise UsageError(f"'{name}' reads as an instant, so it cannot be a label name")


def cmd_mark(args) -> int:
    check_label_name(args.label)
    with open_repo(args) as repo:
        target = resolve_target(repo, args.path)
        run_hook(args.before_hook, "before")
        t = resolve_instant(repo, target.vol, args.at) if args.at else clock.now_ns()
        old = timeline.set_label(repo, target.vol.id, args.label, t, force=args.force)
        if old is not None and not args.force:
            raise AnytimeError(
                f"label '{args.label}' already names {format_instant(old)} "
                f"on '{target.vol.name}'; 'anytime unmark' it first or use --force")
        run_hook(args.after_hook, "after")
    print(f"{target.vol.name}: '{args.label}' names {format_instant(t)}")
    return 0


def cmd_unmark(args) -> int:
    with open_repo(args) as repo:
        target = resolve_target(repo, args.path)
        if not timeline.remove_label(repo, target.vol.id, args.label):
            raise AnytimeError(f"volume '{target.vol.name}' has no label '{args.label}'; "
                               f"'anytime log {args.path}' shows its labels")
    print(f"{target.vol.name}: removed label '{args.label}'")
    return 0


def _matcher(pattern: str):
    pat = os.fsencode(pattern)
    if b"/" in pat:
        pat = pat.lstrip(b"/")
        return lambda path, name: fnmatch.fnmatchcase(path, pat)
    return lambda path, name: fnmatch.fnmatchcase(name, pat)


def cmd_find(args) -> int:
    match = _matcher(args.pattern)
    with open_repo(args) as repo, repo.read_txn() as txn:
        if args.volume:
            vols = [resolve_target(repo, args.volume).vol]
        else:
            vols = list_volumes(repo, txn)
        rows = []
        for vol in vols:
            since = resolve_instant(repo, vol, args.since, strict=False) if args.since else 0
            until = (resolve_instant(repo, vol, args.until, strict=False) if args.until
                     else MAX_INSTANT)
            rows += _find_in_volume(repo, txn, vol, match, since, until, args.deleted)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    out = sys.stdout.buffer
    for r in rows:
        state = f"deleted {r['deleted']}" if r["deleted"] else "present"
        line = (f"{r['volume']}:/{r['path']}  first {r['first']}  last version "
                f"{r['last_version']}  {state}  ({r['original']})")
        out.write(line.encode("utf-8", "surrogateescape") + b"\n")
    return 0


def _find_in_volume(repo, txn, vol, match, since, until, deleted_only) -> list[dict]:
    """Scan the volume's entries once, in key order (all versions of a path adjacent),
    and list the paths found in path order (the index files directories by hash).
    Versions past the volume's horizon (a commit still being written) are left out."""
    horizon = get_volume_by_id(repo, txn, vol.id).horizon  # as of this transaction
    rows = []
    for current, versions in timeline.path_histories(repo, txn, vol.id, match, horizon):
        inrange = [(t, e) for t, e in versions if since <= t <= until]
        if not inrange:
            continue
        last_t, last_e = inrange[-1]
        if deleted_only and not last_e.deleted:
            continue
        live = [(t, e) for t, e in versions if not e.deleted and t <= last_t]
        rows.append((current, {
            "volume": vol.name, "path": current.decode("utf-8", "surrogateescape"),
            "original": os.fsdecode(vol.source_path(current)),
            "first": format_instant(versions[0][0]),
            "last_version": format_instant(live[-1][0]) if live else None,
            "last_version_ns": live[-1][0] if live else None,
            "size": live[-1][1].size if live else None,
            "deleted": format_instant(last_t) if last_e.deleted else None,
        }))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]

