"""Read-side commands: ``log``, ``ls``, ``cat``. They go through the vfs core."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from functools import lru_cache

from .text import columns

# The store and vfs modules are imported by the commands when they run, not here:
# a command's --help imports its module too (tools/cli.py).


def register(sub, common) -> None:
    p = sub.add_parser("log", parents=[common])
    p.add_argument("path", help="a volume, or a path inside one (original path or VOLUME:PATH)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("ls", parents=[common])
    p.add_argument("path", help="a directory or file (original path or VOLUME:PATH)")
    p.add_argument("--at", metavar="INSTANT", help="instant (default: now)")
    p.add_argument("-l", dest="long", action="store_true", help="long listing")
    p.add_argument("-a", "--all", action="store_true",
                   help="include names that start with '.' (hidden otherwise, as ls does)")
    p.add_argument("-R", "--recursive", action="store_true",
                   help="list subdirectories too, each under a 'path:' heading")
    p.add_argument("--json", action="store_true",
                   help="print the entries as JSON (with -R: every entry below, flat)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", parents=[common])
    p.add_argument("path", help="a file (original path or VOLUME:PATH)")
    p.add_argument("--at", metavar="INSTANT", help="instant (default: now)")
    p.set_defaults(func=cmd_cat)


@lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=256)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def long_line(name: bytes, e) -> bytes:
    from anytime.store.format import KIND_DIR, KIND_SYMLINK
    from anytime.vfs.instants import format_instant

    mt = format_instant(e.mtime_ns)[:19].replace("T", " ")
    size = e.size if e.kind != KIND_DIR else 0
    head = (f"{stat.filemode(e.mode)} {e.nlink:>3} {user_name(e.uid):<8} "
            f"{group_name(e.gid):<8} {size:>12} {mt} ").encode()
    tail = b" -> " + e.target if e.kind == KIND_SYMLINK else b""
    return head + name + tail + b"\n"


def entry_dict(name: bytes, original: bytes, e) -> dict:
    """One ``ls --json`` row: ``original`` is the entry's original absolute path."""
    from anytime.store.format import KIND_DIR, KIND_NAMES, KIND_SYMLINK
    from anytime.vfs.instants import format_instant

    d = {"name": os.fsdecode(name), "path": os.fsdecode(original), "kind": KIND_NAMES[e.kind],
         "permissions": stat.filemode(e.mode), "mode": e.mode, "nlink": e.nlink,
         "uid": e.uid, "user": user_name(e.uid), "gid": e.gid, "group": group_name(e.gid),
         "size": e.size if e.kind != KIND_DIR else 0,
         "mtime": format_instant(e.mtime_ns), "mtime_ns": e.mtime_ns}
    if e.kind == KIND_SYMLINK:
        d["target"] = os.fsdecode(e.target)
    return d


def cmd_ls(args) -> int:
    from anytime.store.format import KIND_DIR, join_path

    from .cmd_repo import open_repo
    from .target import lookup_at

    with open_repo(args) as repo:
        target, view, e = lookup_at(repo, args)
        orig = target.vol.source_path
        out = sys.stdout.buffer
        rows: list[dict] = []
        if e.kind != KIND_DIR:
            name = os.path.basename(target.path) or target.path
            if args.json:
                rows.append(entry_dict(name, orig(target.path), e))
            else:
                out.write(long_line(name, e) if args.long else name + b"\n")
        todo = [target.path] if e.kind == KIND_DIR else []
        shown = os.fsencode(args.path.rstrip("/") or "/")
        while todo:
            path = todo.pop(0)
            listing = [(n, c) for n, c in view.listdir(path) if args.all or n[:1] != b"."]
            if args.json:
                rows += [entry_dict(n, orig(join_path(path, n)), c) for n, c in listing]
            else:
                if args.recursive:
                    rel = path[len(target.path):].lstrip(b"/")
                    head = os.path.join(shown, rel) if rel else shown
                    out.write((b"\n" if path != target.path else b"") + head + b":\n")
                for n, c in listing:
                    out.write(long_line(n, c) if args.long else n + b"\n")
            if args.recursive:
                todo[:0] = [join_path(path, n) for n, c in listing if c.kind == KIND_DIR]
    if args.json:
        import json

        json.dump(rows, sys.stdout, indent=2)
        print()
    return 0


def cmd_cat(args) -> int:
    from anytime.store.errors import ContentUnavailable, PathNotFound
    from anytime.store.format import FLAG_UNREADABLE, KIND_DIR, KIND_SYMLINK
    from anytime.vfs.instants import format_instant

    from .cmd_repo import open_repo
    from .target import lookup_at

    with open_repo(args) as repo:
        target, view, e = lookup_at(repo, args)
        if e.kind == KIND_DIR:
            raise PathNotFound(f"{target.display} is a directory; use 'anytime ls'")
        out = sys.stdout.buffer
        if e.kind == KIND_SYMLINK:
            out.write(e.target)
            return 0
        if e.flags & FLAG_UNREADABLE:
            from anytime.vfs.view import UNREADABLE

            raise ContentUnavailable(f"{target.display} at {format_instant(view.instant)}: "
                                     f"{UNREADABLE}; 'anytime log {args.path}' lists its "
                                     f"versions")
        for piece in view.iter_read(e):
            out.write(piece)
        out.flush()
    return 0


def change_of(prev, e) -> str:
    """What a version of a path did, next to the one before it (None: there was none)."""
    from anytime.store.format import FLAG_UNREADABLE, KIND_DELETED

    if e.kind == KIND_DELETED:
        return "deleted"
    if e.flags & FLAG_UNREADABLE:
        return "unreadable"
    if prev is None or prev.kind == KIND_DELETED:
        return "created"
    if prev.kind != e.kind:
        return "replaced"
    if (prev.size, prev.mtime_ns, prev.file_id, prev.target) != (
            e.size, e.mtime_ns, e.file_id, e.target):
        return "modified"
    return "metadata"


def cmd_log(args) -> int:
    from anytime.store import timeline
    from anytime.store.errors import PathNotFound
    from anytime.store.format import FLAG_UNREADABLE, FLAG_UNSTABLE
    from anytime.store.volumes import get_volume_by_id
    from anytime.vfs.instants import format_instant

    from .cmd_repo import open_repo
    from .target import resolve_target

    with open_repo(args) as repo:
        target = resolve_target(repo, args.path)
        with repo.read_txn() as txn:
            vid = target.vol.id
            labels_at: dict[int, list[str]] = {}
            for name, t in timeline.labels(repo, txn, vid):
                labels_at.setdefault(t, []).append(name)
            rows = []
            if not target.path:
                for t, rec in timeline.commits(repo, txn, vid):
                    rows.append({"instant": format_instant(t), "instant_ns": t,
                                 "kind": rec.get("kind"), "changed": rec.get("changed", 0),
                                 "deleted": rec.get("deleted", 0),
                                 "new_bytes": rec.get("bytes_new", 0),
                                 "stored_bytes": rec.get("bytes_stored", 0),
                                 "partial": rec.get("partial", False),
                                 "gap_from": format_instant(rec["gap_from_ns"])
                                 if rec.get("gap_from_ns") else None,
                                 "thinned_from": format_instant(rec["thinned_from"])
                                 if rec.get("thinned_from") else None,
                                 "labels": sorted(labels_at.get(t, []))})
            else:
                prev = None
                horizon = get_volume_by_id(repo, txn, vid).horizon  # this txn's
                for t, e in timeline.entry_versions(repo, txn, vid, target.path, horizon):
                    rows.append({"instant": format_instant(t), "instant_ns": t,
                                 "change": change_of(prev, e), "kind": e.kind,
                                 "size": e.size if not e.deleted else None,
                                 "unstable": bool(e.flags & FLAG_UNSTABLE),
                                 "unreadable": bool(e.flags & FLAG_UNREADABLE),
                                 "labels": sorted(labels_at.get(t, []))})
                    prev = e
                if not rows:
                    raise PathNotFound(f"{target.display} was never captured")
    if args.json:
        import json

        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print("\n".join(log_lines(rows)))
    return 0


def log_lines(rows: list[dict]) -> list[str]:
    """``log`` rows as text, every column aligned whatever the values."""
    cells, right = [], set()
    for r in rows:
        notes = (["(unstable)"] if r.get("unstable") else []) + \
            (["(partial)"] if r.get("partial") else []) + \
            ([f"(gap: writes from {r['gap_from']} on were not recorded, the repository "
              f"being full; this commit is the tree after them)"] if r.get("gap_from")
             else []) + \
            ([f"(thinned: views from {r['thinned_from']} up to this commit show the one "
              f"before)"] if r.get("thinned_from") else []) + \
            ([f"[{', '.join(r['labels'])}]"] if r["labels"] else [])
        if "change" in r:
            size = "-" if r["size"] is None else str(r["size"])
            cells.append([r["instant"], r["change"], size, " ".join(notes)])
            right = {2}
        else:
            cells.append([r["instant"], str(r["kind"]), f"{r['changed']} changed",
                          f"{r['deleted']} deleted", f"{r['new_bytes'] / 1e6:.1f} MB new",
                          " ".join(notes)])
            right = {2, 3, 4}
    return columns(cells, right)
