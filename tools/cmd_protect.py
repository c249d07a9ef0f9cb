"""Commands of continuous capture: ``protect`` (watch trees and commit their changes as
they happen) and ``status`` (what each protected volume's capture is doing)."""

from __future__ import annotations

import json
import sys

from .cmd_repo import open_repo

#: The systemd unit ``protect --systemd-unit`` prints (filled in with this command's
#: path and arguments).
UNIT = """\
[Unit]
Description=anytime continuous data protection of {paths}
Documentation=man:anytime(1)
After=local-fs.target
RequiresMountsFor={mounts}

[Service]
Type=simple
ExecStart={exec_start}
Environment=PYTHONUNBUFFERED=1
# SIGTERM: anytime commits what is pending and exits within a few seconds
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
Nice=5
IOSchedulingClass=best-effort
IOSchedulingPriority=6

[Install]
WantedBy=multi-user.target
"""


def register(sub, common) -> None:
    p = sub.add_parser(
        "protect", parents=[common],
        description="Capture changes to directory trees continuously, as they happen: "
                    "each tree becomes a volume (a first snapshot if new), then every "
                    "change is committed within about a second. Runs in the foreground "
                    "until SIGTERM or Ctrl-C, which commit what is pending first.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--mode", choices=["watch", "shim"], default="watch",
                   help="how changes are captured: watch (change events, about a second "
                        "behind; the default), or shim (a passthrough filesystem mounted "
                        "over PATH: every write recorded with its instant, RPO 0)")
    p.add_argument("--sync", action="store_true",
                   help="(shim) an application's fsync also waits until its writes are "
                        "durable in the repository")
    p.add_argument("--strict", action="store_true",
                   help="(shim) when the repository is full, make writes fail (ENOSPC) "
                        "instead of going on unrecorded, a gap shown by log and status")
    p.add_argument("--events", choices=["auto", "fanotify", "inotify"], default="auto",
                   help="change-event source: fanotify for the whole filesystem (needs "
                        "root), inotify (one watch per directory); auto: fanotify where "
                        "it works, else inotify")
    p.add_argument("--name", help="volume name (one PATH only; default: from the path)")
    p.add_argument("-x", "--one-file-system", action="store_true",
                   help="do not cross into other filesystems mounted inside the trees")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out entries matching PATTERN (repeatable; as for snapshot)")
    p.add_argument("--exclude-file", action="append", default=[], metavar="FILE",
                   help="read exclude patterns from FILE, one a line ('#' comments)")
    p.add_argument("--sweep", type=_seconds, default=None, metavar="SECONDS",
                   help="scan each whole tree this often against the stat cache, for "
                        "writes no event reports (shared writable mmap); 0: never "
                        "(default 600)")
    p.add_argument("--prune-every", type=_seconds, default=None, metavar="SECONDS",
                   help="prune the volumes by their retention policies ('anytime policy') "
                        "this often, between two commits; 0: never (default 3600, the "
                        "first 300 s after start)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print a line for each commit")
    p.add_argument("--systemd-unit", action="store_true",
                   help="print a systemd service unit running this command, and exit "
                        "(install it as shown in README)")
    p.set_defaults(func=cmd_protect)

    p = sub.add_parser("status", parents=[common])
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.set_defaults(func=cmd_status)


def _seconds(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds (0 or more)")
    return v


def systemd_unit(args) -> str:
    import os
    import shlex

    from .cmd_repo import locate

    exe = os.path.realpath(sys.argv[0]) if os.path.exists(sys.argv[0]) else "anytime"
    argv = [exe, "--repo", locate(args.repo), "protect"]
    for pat in args.exclude:
        argv += ["--exclude", pat]
    for f in args.exclude_file:
        argv += ["--exclude-file", os.path.abspath(f)]
    if args.name:
        argv += ["--name", args.name]
    if args.one_file_system:
        argv.append("--one-file-system")
    if args.events != "auto":
        argv += ["--events", args.events]
    if args.sweep is not None:
        argv += ["--sweep", str(args.sweep)]
    paths = [os.path.abspath(p) for p in args.paths]
    # systemd splits ExecStart like a shell, but expands % and $: double them
    exec_start = " ".join(shlex.quote(a).replace("%", "%%").replace("$", "$$")
                          for a in argv + paths)
    return UNIT.format(paths=" ".join(paths), mounts=" ".join(paths + [locate(args.repo)]),
                       exec_start=exec_start)


def cmd_protect(args) -> int:

    from anytime.capture import read_pattern_file
    from anytime.vfs.instants import format_instant

    from .malloc import limit_arenas
    from .progress import Progress

    if args.systemd_unit:
        sys.stdout.write(systemd_unit(args))
        return 0
    limit_arenas()
    excludes = list(args.exclude)
    for f in args.exclude_file:
        excludes += read_pattern_file(f)
    kw = ({} if args.sweep is None else {"sweep": args.sweep}) | _prune_kw(args)

    def committed(tree, report) -> None:
        if args.verbose:
            print(f"{tree.vol.name}: committed {format_instant(report.instant)}: "
                  f"{report.changed} changed, {report.deleted} deleted", flush=True)

    def ready() -> None:
        print("anytime: watching; each change is committed within about a second",
              file=sys.stderr, flush=True)

    if args.mode == "shim":
        return _protect_shim(args)
    from anytime.capture import Interrupted

    with open_repo(args) as repo:
        progress = Progress()
        try:
            return _watch(repo, args, excludes, kw, committed, ready, progress)
        except Interrupted as e:
            progress.clear()
            print(f"anytime: stopped during a whole-tree scan; nothing of it was committed, "
                  f"but the {e.blocks} blocks ({e.bytes / 1e6:.1f} MB) stored so far are "
                  f"kept: the next start finds them instead of storing them again",
                  file=sys.stderr)
            return 130


def _watch(repo, args, excludes, kw, committed, ready, progress) -> int:
    """Run the watcher until SIGTERM or Ctrl-C (which stop it: see Watcher.stop)."""
    import signal

    from anytime.capture import protecting

    with protecting(repo, args.paths, name=args.name, excludes=excludes,
                    one_file_system=args.one_file_system, events=args.events,
                    progress=progress, on_commit=committed, on_ready=ready,
                    report=_note, **kw) as watcher:
        def stop(_signo, _frame) -> None:
            watcher.stop()

        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            names = ", ".join(f"{t.vol.name} ({t.source.decode(errors='replace')})"
                              for t in watcher.trees)
            print(f"anytime: protecting {names} with {watcher.events.kind} events; "
                  f"stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
            watcher.run()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    total = sum(t.commits for t in watcher.trees)
    print(f"anytime: stopped; {total} commits made, every change up to now committed",
          file=sys.stderr)
    return 0


def _note(msg: str) -> None:
    print(f"anytime: {msg}", file=sys.stderr, flush=True)


def _prune_kw(args) -> dict:
    return {} if args.prune_every is None else {"prune_every": args.prune_every}


def _protect_shim(args) -> int:
    from anytime.capture import protect_shim
    from anytime.store.errors import UsageError

    from .progress import Progress

    if len(args.paths) != 1 or args.exclude or args.exclude_file or args.one_file_system:
        raise UsageError("--mode shim protects one tree, whole (no --exclude or -x)")

    def warn(msg: str) -> None:
        print(f"anytime: warning: {msg}", file=sys.stderr, flush=True)

    def mounted() -> None:
        print(f"anytime: shim mounted over {args.paths[0]}; every write through it is "
              f"recorded with its instant", file=sys.stderr, flush=True)

    with open_repo(args) as repo:
        print(f"anytime: protecting {args.paths[0]} with a shim (every write recorded); "
              f"stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
        rec = protect_shim(repo, args.paths[0], name=args.name, sync=args.sync,
                           progress=Progress(), on_ready=mounted, warn=warn,
                           strict=args.strict, report=_note, **_prune_kw(args))
    print(f"anytime: stopped; {rec.ops} operations recorded in {rec.commits} commits, "
          f"the tree left as the applications last wrote it", file=sys.stderr)
    return 0


def volume_states(repo) -> tuple[list[dict], int]:
    """(the state of each volume, as ``status --json`` prints it; bytes the repository
    takes on disk)."""
    from anytime.store import clock, status
    from anytime.store.volumes import list_volumes
    from anytime.vfs.instants import format_instant

    with repo.read_txn() as txn:
        vols = list_volumes(repo, txn)
    published = status.published(repo)
    pruned = status.last_prune(repo)
    now = clock.now_ns()
    out = []
    for v in vols:
        st = published.get(v.name, {})
        running = bool(st.get("running"))
        pending = st.get("pending_since_ns") if running else None
        window = st.get("rate_window_s") or 10.0
        recent = [(t, n) for t, n in st.get("recent", []) if t >= now - window * 1e9]
        out.append({
            "volume": v.name, "source": v.source,
            "mode": st.get("mode", "scan") if st else "scan",
            "events": st.get("events") if running else None,
            "running": running, "pid": st.get("pid") if running else None,
            "newest_change": format_instant(v.horizon) if v.horizon else None,
            "newest_change_ns": v.horizon or None,
            # the RPO right now: how long the oldest change not yet committed has waited
            "behind_s": None if not running else
            (max(0, now - pending) / 1e9 if pending else 0.0),
            "changes_per_s": round(sum(n for _, n in recent) / window, 2) if running else 0.0,
            "queued": st.get("queued", 0) if running else 0,
            "commits_by_this_run": st.get("commits", 0) if running else 0,
            # a shim's writes not recorded since the repository filled up
            "gap_since": format_instant(st["gap_since_ns"])
            if running and st.get("gap_since_ns") else None,
            # the last prune: commits it dropped, of them beyond the policy (--max-size)
            "last_prune": format_instant(pruned["at_ns"])
            if v.name in pruned.get("volumes", {}) else None,
            "pruned": pruned.get("volumes", {}).get(v.name, {}).get("dropped", 0),
            "capped": pruned.get("volumes", {}).get(v.name, {}).get("capped", 0),
        })
    return out, repo.space_used()


def cmd_status(args) -> int:
    from .text import plural

    with open_repo(args) as repo:
        states, used = volume_states(repo)
    if args.json:
        json.dump({"repository": repo.root, "repository_bytes": used, "volumes": states},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"repository {repo.root}: {used / 1e6:.1f} MB, {plural(len(states), 'volume')}")
    if not states:
        print("no volumes yet; protect a tree with 'anytime protect PATH'")
        return 0
    rows = [("VOLUME", "MODE", "STATE", "NEWEST CHANGE", "BEHIND", "CHANGES/S", "QUEUED")]
    for s in states:
        state = f"running (pid {s['pid']}, {s['events']})" if s["running"] else "not running"
        if s["gap_since"]:
            state += f", NOT RECORDING since {s['gap_since']} (repository full)"
        behind = f"{s['behind_s']:.1f} s" if s["behind_s"] is not None else "-"
        rows.append((s["volume"], s["mode"], state, s["newest_change"] or "no commit yet",
                     behind, f"{s['changes_per_s']:g}" if s["running"] else "-",
                     str(s["queued"]) if s["running"] else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for s in states:
        if s["capped"]:
            print(f"{s['volume']}: the capacity cap (--max-size) thinned beyond the policy: "
                  f"the prune of {s['last_prune']} dropped "
                  f"{plural(s['capped'], 'commit')} the policy keeps, to stay under it")
    return 0
