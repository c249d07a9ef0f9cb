"""``anytime diff``: what changed between two instants, or between an instant and now."""

from __future__ import annotations

import json
import os
import sys

# The store and vfs modules are imported by cmd_diff when it runs, not here:
# a command's --help imports its module too (tools/cli.py).

TEXT_LIMIT = 32 << 20


def register(sub, common) -> None:
    p = sub.add_parser("diff", parents=[common])
    p.add_argument("path")
    p.add_argument("--from", dest="t_from", required=True,
                   help="the old side: an instant, or 'live' for the tree as it is now")
    p.add_argument("--to", dest="t_to", default="now",
                   help="the new side: an instant, or 'live' (default: now)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--exit-code", action="store_true",
                   help="exit 1 when there are differences (like git diff)")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args) -> int:
    from anytime.store.errors import PathNotFound
    from anytime.store.format import KIND_FILE
    from anytime.vfs.diff import TreeDiff

    from .cmd_repo import open_repo
    from .target import resolve_target

    with open_repo(args) as repo:
        target = resolve_target(repo, args.path)
        vol = target.vol
        old, new = _side(repo, vol, args.t_from), _side(repo, vol, args.t_to)
        path = target.path
        a, b = old.lookup(path), new.lookup(path)
        if a is None and b is None:
            raise PathNotFound(f"{target.display} exists at neither instant")
        if a is not None and b is not None and a.kind == KIND_FILE == b.kind:
            return _file_diff(args, target, old, new, a, b)
        changes = TreeDiff(old, new).run(path)
        orig = vol.source_path

        if args.json:
            rows = [dict(c.as_dict(), path=os.fsdecode(orig(c.path)),
                         **({"old_path": os.fsdecode(orig(c.old_path))} if c.old_path else {}))
                    for c in changes]
            json.dump(rows, sys.stdout, indent=2)
            print()
        else:
            out = sys.stdout.buffer
            for c in changes:
                line = c.mark.encode() + b"    " + (
                    orig(c.old_path) + b" -> " if c.old_path is not None else b"") + orig(c.path)
                out.write(line + b"\n")
    return 1 if args.exit_code and changes else 0


def _side(repo, vol, text: str):
    """The side of a diff ``text`` names: 'live' (the tree on disk now) or an instant."""
    from anytime.vfs.diff import LiveSide, ViewSide
    from anytime.vfs.view import View

    from .target import resolve_instant

    if text == "live":
        return LiveSide(View(repo, vol, resolve_instant(repo, vol, "now")))
    return ViewSide(View(repo, vol, resolve_instant(repo, vol, text)))


def _side_name(side) -> str:
    from anytime.vfs.instants import format_instant

    return "live" if side.live else format_instant(side.view.instant)


def _file_diff(args, target, old, new, a, b) -> int:
    import difflib

    from anytime.vfs.diff import binary_ranges, differing_ranges, looks_text, merge_ranges, read_all

    name = target.original
    t1, t2 = _side_name(old), _side_name(new)
    path = target.path
    da = db = None
    if a.size <= TEXT_LIMIT and b.size <= TEXT_LIMIT:
        da, db = read_all(old, path, a), read_all(new, path, b)
        if da == db:
            if args.json:
                print(json.dumps({"path": name, "kind": "same"}))
            return 0
        if looks_text(da) and looks_text(db):
            lines = difflib.unified_diff(
                da.decode("utf-8", "surrogateescape").splitlines(keepends=True),
                db.decode("utf-8", "surrogateescape").splitlines(keepends=True),
                fromfile=f"{name}@{t1}", tofile=f"{name}@{t2}")
            text = "".join(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n"
                           for ln in lines)
            if args.json:
                print(json.dumps({"path": name, "kind": "text", "diff": text}))
            else:
                sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
            return 1 if args.exit_code else 0
    if da is not None:  # both already in memory: compare them, do not read them again
        ranges = merge_ranges(differing_ranges(da, db))
    else:
        ranges = binary_ranges(old, new, path, path, a, b)
    if args.json:
        print(json.dumps({"path": name, "kind": "binary", "old_size": a.size,
                          "new_size": b.size, "ranges": [list(r) for r in ranges]}))
    else:
        print(f"binary file {name} differs between {t1} and {t2}: size {a.size} -> {b.size}")
        for s, e in ranges:
            print(f"  bytes {s:#x}-{e - 1:#x} ({e - s} bytes)")
    return 1 if args.exit_code and (ranges or a.size != b.size) else 0
