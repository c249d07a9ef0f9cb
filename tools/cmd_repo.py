"""Commands that create and fill a repository: ``init``, ``snapshot``, ``volumes``."""

from __future__ import annotations

import json
import os
import sys

from anytime.store.errors import PartialError

# The store, capture and vfs modules are imported by the commands that use them, not
# here: a command's --help imports its module too (tools/cli.py).


def default_location() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".local", "share")
    return os.path.join(base, "anytime", "repo")


def locate(repo: str | None = None) -> str:
    """The repository directory: ``--repo``, else ``$ANYTIME_REPO``, else
    :func:`default_location`."""
    return os.path.abspath(repo or os.environ.get("ANYTIME_REPO") or default_location())


#: Test knobs: environment variables that set fields of the store's options
#: (store/options.py), so that tests of the command can make small data span many
#: packs, stage a commit or train a dictionary. This is the one place anything reads
#: them; they change no format, only how much the store holds at once.
KNOBS = {"ANYTIME_PACK_TARGET": "pack_target", "ANYTIME_STAGE_RECORDS": "stage_records",
         "ANYTIME_ZDICT_SAMPLE_BLOCKS": "zdict_sample_blocks"}


def store_options():
    """The :class:`StoreOptions` the environment's test knobs (:data:`KNOBS`) set."""
    from anytime.store.errors import UsageError
    from anytime.store.options import StoreOptions

    fields = {}
    for var, field in KNOBS.items():
        text = os.environ.get(var)
        if text:
            if not text.isdigit() or int(text) < 1:
                raise UsageError(f"${var} is {text!r}: set it to a whole number of at "
                                 f"least 1, or unset it")
            fields[field] = int(text)
    return StoreOptions(**fields)


def open_repo(args):
    """The repository ``--repo`` (or its default) names, open (a Repository)."""
    from anytime.store.repo import Repository

    return Repository.open(locate(args.repo), store_options())


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
    p = sub.add_parser("init", parents=[common])
    p.add_argument("--block-size", type=block_size_arg, default=None, metavar="SIZE",
                   help="default block size of new volumes: a power of two from 1K to 16M "
                        "(default 1M)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("snapshot", parents=[common])
    p.add_argument("path")
    p.add_argument("--label", help="name the instant of this commit")
    p.add_argument("--name", help="volume name (default: derived from the path)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("-x", "--one-file-system", action="store_true",
                   help="do not cross into other filesystems mounted inside the tree "
                        "(their mount points are kept as empty directories)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out entries matching PATTERN (repeatable): '*.o' or "
                        "'node_modules' match names anywhere, '/srv/data/tmp' an absolute "
                        "path, '**' any number of directories")
    p.add_argument("--exclude-file", action="append", default=[], metavar="FILE",
                   help="read exclude patterns from FILE, one a line ('#' comments)")
    p.add_argument("--before-hook", help="command run before capturing (e.g. to flush an app)")
    p.add_argument("--after-hook", help="command run after committing")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("check", parents=[common])
    p.add_argument("--read-data", action="store_true",
                   help="also decompress every block and verify it against its id")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable report (counts, problems and the invariant "
                        "each breaks, warnings)")
    p.add_argument("--repair", action="store_true",
                   help="rebuild the index from the packs (after it was lost or damaged; "
                        "the old one is kept aside), then check")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("volumes", parents=[common])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_volumes)


def cmd_init(args) -> int:
    from anytime.store.repo import Repository

    root = locate(args.repo)
    kw = {"block_size": args.block_size} if args.block_size is not None else {}
    Repository.init(root, options=store_options(), **kw).close()
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
    import signal

    from anytime.capture import Interrupted, read_pattern_file, snapshot
    from anytime.vfs.instants import format_instant

    from .malloc import limit_arenas
    from .progress import Progress
    from .text import plural

    limit_arenas()
    excludes = list(args.exclude)
    for f in args.exclude_file:
        excludes += read_pattern_file(f)
    with open_repo(args) as repo:
        progress = Progress(enabled=None if not args.json else False,
                            expect_entries=expected_entries(repo, args.path, args.name))
        run_hook(args.before_hook, "before")
        term = signal.signal(signal.SIGTERM, _interrupt)  # stopped as by Ctrl-C
        try:
            report = snapshot(repo, args.path, name=args.name, label=args.label,
                              progress=progress, excludes=excludes,
                              one_file_system=args.one_file_system)
        except Interrupted as e:
            progress.clear()
            print(f"anytime: interrupted; nothing was committed, but the {e.blocks} blocks "
                  f"({e.bytes / 1e6:.1f} MB) stored so far are kept: the next snapshot of "
                  f"{args.path} finds them instead of storing them again", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, term)
            progress.clear()
        run_hook(args.after_hook, "after")
    summary = {
        "volume": report.volume, "instant": format_instant(report.instant),
        "instant_ns": report.instant, "files": report.files, "dirs": report.dirs,
        "symlinks": report.symlinks, "others": report.others, "excluded": report.excluded,
        "mounts_skipped": [{"path": p, "reason": r} for p, r in report.mounts],
        "files_read": report.files_read, "bytes_read": report.bytes_read, **report.stored,
        "changed": report.changed, "deleted": report.deleted,
        "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
        "unreadable": [{"path": p, "reason": r} for p, r in report.unreadable],
        "unstable": report.unstable, "resized": report.resized, "partial": report.partial,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        others = f", {plural(report.others, 'other entry', 'other entries')}" \
            if report.others else ""
        links = f", {plural(report.symlinks, 'symlink')}" if report.symlinks else ""
        print(f"{report.volume}: committed {format_instant(report.instant)}: "
              f"{plural(report.files, 'file')}, {plural(report.dirs, 'dir')}{links}{others}; "
              f"read {plural(report.files_read, 'file')} ({report.bytes_read / 1e6:.1f} MB); "
              f"{report.changed} changed, {report.deleted} deleted")
        if report.excluded:
            print(f"{plural(report.excluded, 'entry')} excluded by patterns")
        if report.mounts:
            print(f"{plural(len(report.mounts), 'mount point')} not crossed, kept as empty "
                  f"{('directory', 'directories')[len(report.mounts) > 1]}:"
                  + listing(report.mounts))
        if report.resized:
            n = len(report.resized)
            print(f"{plural(n, 'file')} read to another length than {('its', 'their')[n > 1]} "
                  f"size says (as /proc and /sys files do); stored as read: "
                  f"{some(report.resized)}")
    if report.partial:
        parts = []
        if report.unreadable:
            n = len(report.unreadable)
            parts.append(f"{plural(n, 'file')} could not be read and {('is', 'are')[n > 1]} "
                         f"recorded as unreadable at this instant (the next snapshot that can "
                         f"read {('it', 'them')[n > 1]} stores {('its', 'their')[n > 1]} "
                         f"content):" + listing(report.unreadable))
        if report.skipped:
            n = len(report.skipped)
            parts.append(f"{plural(n, 'entry')} could not be read and "
                         f"{('keeps its previous version', 'keep their previous versions')[n > 1]}"
                         f":" + listing(report.skipped))
        raise PartialError("the snapshot is partial: " + "\n".join(parts))
    return 0


def expected_entries(repo, path: str, name: str | None) -> int:
    """How many entries (files, dirs, others) the volume's last whole-tree scan counted:
    about what this snapshot walks (0: a first snapshot, unknown). For the progress
    line."""
    import os

    from anytime.store import timeline
    from anytime.store.errors import UnknownVolume
    from anytime.store.volumes import find_by_source, get_volume

    source = os.path.abspath(path)
    with repo.read_txn() as txn:
        try:
            vol = get_volume(repo, txn, name) if name else find_by_source(repo, txn, source)
        except UnknownVolume:
            return 0
        if vol is None or vol.source != source:
            return 0
        last = timeline.last_commit_of_kind(repo, txn, vol.id, "scan")
    if last is None:
        return 0
    rec = last[1]
    return rec.get("files", 0) + rec.get("dirs", 0) + rec.get("others", 0)


def listing(items: list[tuple[str, str]]) -> str:
    return "".join(f"\n  {p}: {r}" for p, r in items)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def some(paths: list[str], n: int = 5) -> str:
    """The first ``n`` of ``paths``, and how many more (all of them are in --json)."""
    head = ", ".join(paths[:n])
    return head + (f" and {len(paths) - n} more (--json lists all)" if len(paths) > n else "")


def cmd_check(args) -> int:
    from dataclasses import asdict

    from anytime.store.check import check
    from anytime.store.errors import DamagedData, PartialError
    from anytime.vfs.instants import format_instant

    from .progress import Progress
    from .text import plural

    progress = Progress(enabled=None if not args.json else False)
    repaired = repair_index(args) if args.repair else None
    with open_repo(args) as repo:
        try:
            rep = check(repo, read_data=args.read_data, progress=progress)
        finally:
            progress.clear()
    if args.json:
        out = rep.to_json()
        if repaired is not None:
            out["repair"] = asdict(repaired)
        for d in out["damaged"]:
            for a in d["affected"]:
                a["from"] = format_instant(a["from_ns"])
                a["to"] = format_instant(a["to_ns"]) if a["to_ns"] is not None else None
        json.dump(out, sys.stdout, indent=2)
        print()
        if repaired is not None and repaired.lost:
            raise PartialError(f"the index was rebuilt, but history was lost: "
                               f"{'; '.join(repaired.lost)}")
        if rep.problems:
            raise DamagedData(f"{plural(len(rep.problems), 'problem')} found (listed in the "
                              f"report)")
        return 0
    for w in rep.warnings:
        print(f"anytime: warning: {w}", file=sys.stderr)
    print(f"{plural(rep.packs, 'pack')} ({rep.bytes_checked / 1e6:.1f} MB), "
          f"{plural(rep.blocks, 'block')}, {plural(rep.block_versions, 'block version')} "
          f"checked; {plural(rep.leftover_packs, 'uncommitted pack file')} (reclaimed by "
          f"the next snapshot); {rep.reclaimable} damaged copies or records superseded by "
          f"good copies (reclaimable)")
    print(f"{rep.unused_bytes / 1e6:.1f} MB in {plural(rep.unused_records, 'record')} of "
          f"the packs that no kept instant uses ('anytime prune' removes them as it "
          f"rewrites their packs)"
          if rep.unused_records else "nothing in the packs that no kept instant uses")
    if rep.problems:
        raise DamagedData(damage_text(rep))
    if repaired is not None and repaired.lost:
        raise PartialError("the index was rebuilt and checks out, but history was lost:\n"
                           + "\n".join(f"  {x}" for x in repaired.lost))
    print("no problems found")
    return 0


def repair_index(args):
    """``check --repair``: rebuild the index from the packs; prints what was found."""
    from anytime.store.repair import repair

    from .text import plural

    root = locate(args.repo)
    rep = repair(root, store_options())
    if not args.json:
        print(f"index rebuilt from {plural(rep.packs, 'pack')}: {plural(rep.chunks, 'chunk')}, "
              f"{plural(rep.volumes, 'volume')}, {plural(rep.commits, 'commit')}, "
              f"{plural(rep.labels, 'label')}, "
              f"{plural(rep.settings, 'retention setting')}")
        if rep.old_index:
            print(f"the index that was there is kept at {rep.old_index}; delete it once "
                  f"the rebuilt one reads right")
        for line in rep.torn_packs + rep.bad_records:
            print(f"anytime: warning: {line}", file=sys.stderr)
    return rep


def damage_text(rep, limit: int = 50, per_block: int = 10) -> str:
    """The problems of a check report, each damaged block with the files and instants it
    spoils, and what to do."""
    from anytime.vfs.instants import format_instant

    from .text import plural

    blocks = {d.message for d in rep.damaged}
    lines, sources = [f"  {p}" for p in rep.problems if p not in blocks], {}
    for d in rep.damaged[:limit]:
        lines.append(f"  {d.message}")
        for a in d.affected[:per_block]:
            sources[a.volume] = a.source
            until = f"to {format_instant(a.to_ns)}" if a.to_ns is not None else \
                "on (still in the latest instant)"
            lines.append(f"    spoils {a.volume}:/{a.path} from {format_instant(a.from_ns)} "
                         f"{until} (block {a.block_no})")
        if len(d.affected) > per_block:
            lines.append(f"    ... and {len(d.affected) - per_block} more ('anytime check "
                         f"--json' lists them all)")
        if not d.affected:
            lines.append("    used by no file version (harmless; reclaimed by prune)")
    if len(rep.damaged) > limit:
        lines.append(f"  ... and {len(rep.damaged) - limit} more damaged blocks ('anytime "
                     f"check --json' lists them all)")
    todo = ""
    if sources:
        runs = "; ".join(f"'anytime snapshot {src}'" for src in sorted(set(sources.values())))
        todo = (f"\nTo mend them, re-run {runs} while the live files are intact: a damaged "
                f"block met again is stored anew, and every instant that uses it reads "
                f"right again. Where a live file no longer holds that content, those "
                f"instants of it stay unreadable; 'anytime restore' still restores "
                f"everything else.")
    return f"{plural(len(rep.problems), 'problem')}:\n" + "\n".join(lines) + todo


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
    from .text import columns, plural

    for line in columns([[r["name"], plural(r["commits"], "commit"), r["first"] or "-", "..",
                          r["latest"] or "-", r["source"]] for r in rows], right={1}):
        print(line)
    if not rows:
        print("no volumes yet; protect a tree with 'anytime snapshot PATH'", file=sys.stderr)
    return 0

