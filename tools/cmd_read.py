"""Read-side commands: ``log``, ``ls``, ``cat``. They go through the vfs core."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import sys
from functools import lru_cache

from anytime.store import timeline
from anytime.store.errors import ContentUnavailable, PathNotFound
from anytime.store.format import (
    FLAG_UNREADABLE,
    FLAG_UNSTABLE,
    KIND_DELETED,
    KIND_DIR,
    KIND_SYMLINK,
    Entry,
)
from anytime.store.volumes import get_volume_by_id
from anytime.vfs.instants import format_instant

from .cmd_repo import open_repo
from .target import lookup_at, resolve_target


def register(sub, common) -> None:
    p = sub.add_parser("log", parents=[common],
                       help="commits of a volume, or the versions of a file")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("ls", parents=[common], help="list a directory at an instant")
    p.add_argument("path")
    p.add_argument("--at", help="instant (default: now)")
    p.add_argument("-l", dest="long", action="store_true", help="long listing")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", parents=[common], help="print a file as it was at an instant")
    p.add_argument("path")
    p.add_argument("--at", help="instant (default: now)")
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


def long_line(name: bytes, e: Entry) -> bytes:
    mt = format_instant(e.mtime_ns)[:19].replace("T", " ")
    size = e.size if e.kind != KIND_DIR else 0
    head = (f"{stat.filemode(e.mode)} {e.nlink:>3} {user_name(e.uid):<8} "
            f"{group_name(e.gid):<8} {size:>12} {mt} ").encode()
    tail = b" -> " + e.target if e.kind == KIND_SYMLINK else b""
    return head + name + tail + b"\n"


def cmd_ls(args) -> int:
    with open_repo(args) as repo:
        target, view, e = lookup_at(repo, args)
        out = sys.stdout.buffer
        if e.kind != KIND_DIR:
            name = os.path.basename(target.path) or target.path
            out.write(long_line(name, e) if args.long else name + b"\n")
            return 0
        for name, child in view.listdir(target.path):
            out.write(long_line(name, child) if args.long else name + b"\n")
    return 0


def cmd_cat(args) -> int:
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


def change_of(prev: Entry | None, e: Entry) -> str:
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
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for r in rows:
        lab = f"  [{', '.join(r['labels'])}]" if r["labels"] else ""
        if "change" in r:
            size = "-" if r["size"] is None else str(r["size"])
            flag = "  (unstable)" if r["unstable"] else ""
            print(f"{r['instant']}  {r['change']:<9} {size:>12}{flag}{lab}")
        else:
            part = "  (partial)" if r["partial"] else ""
            print(f"{r['instant']}  {r['kind']:<6} {r['changed']:>7} changed "
                  f"{r['deleted']:>6} deleted {r['new_bytes'] / 1e6:>9.1f} MB new{part}{lab}")
    return 0
