"""``prune``: apply the retention policies (``anytime policy``) and reclaim space."""

from __future__ import annotations

import json
import sys

from .cmd_repo import open_repo


def register(sub, common) -> None:
    p = sub.add_parser("prune", parents=[common])
    p.add_argument("path", nargs="?",
                   help="a protected tree (or VOLUME:): prune only its volume (default: all)")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="write nothing: list what would go and the space it would free")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
    from anytime.store import prune
    from anytime.store.errors import RepositoryLocked

    from .target import resolve_target

    with open_repo(args) as repo:
        vols = [resolve_target(repo, args.path).vol.id] if args.path else None
        try:
            with repo.writer_lock():
                rep = prune.apply_policies(repo, vols, args.dry_run).to_json()
                if not args.dry_run:  # protect's prunes leave the free pages for reuse
                    rep["index"] = repo.compact_index().to_json()
        except RepositoryLocked as locked:  # protect runs: it prunes between two commits
            from anytime.store import control

            rep = control.request(repo, {"op": "prune", "vols": vols,
                                         "dry_run": args.dry_run}, locked,
                                  timeout=control.PRUNE_TIMEOUT)["report"]
    if args.json:
        json.dump(rep, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print("\n".join(summary_lines(rep)))
    return 0


def summary_lines(rep: dict) -> list[str]:
    """A prune report (``PruneReport.to_json``) as text."""
    from anytime.vfs.instants import format_instant

    from .text import plural

    would = "would be " if rep["dry_run"] else ""
    lines = []
    for name, v in sorted(rep["volumes"].items()):
        line = f"{name}: {plural(v['kept'], 'commit')} kept"
        if v.get("dropped"):
            line += f", {len(v['dropped'])} {would}dropped"
        lines.append(line)
        for t in v.get("dropped", [])[:20]:
            lines.append(f"  {would}dropped {format_instant(t)}")
        if len(v.get("dropped", [])) > 20:
            lines.append(f"  ... and {len(v['dropped']) - 20} more")
        if v.get("capped"):
            lines.append(f"  {plural(len(v['capped']), 'commit')} {would}dropped beyond the "
                         f"policy to stay under its --max-size")
    gone = rep.get("gone", [])
    for v in gone[:20]:
        lines.append(f"  {would}removed: {v['volume']}:{v['path']} "
                     f"@ {format_instant(v['instant'])}")
    if len(gone) > 20:
        lines.append(f"  ... and more path versions (--json lists the first {len(gone)})")
    lines.append(
        f"{plural(rep['commits_dropped'], 'commit')} and "
        f"{plural(rep['versions_deleted'], 'version')} {would}removed, "
        f"{plural(rep['chunks_deleted'], 'chunk')} ({rep['bytes_freed'] / 1e6:.1f} MB) "
        f"{would}freed; {plural(rep['packs_rewritten'], 'pack')} {would}rewritten")
    index = rep.get("index")
    if index and index["skipped"] is None:
        lines.append(f"index compacted: {index['before_bytes'] / 1e6:.1f} MB -> "
                     f"{index['after_bytes'] / 1e6:.1f} MB")
    elif index and index["skipped"].startswith("another"):
        lines.append(f"index not compacted: {index['skipped']}")
    return lines
