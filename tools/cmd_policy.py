"""``policy`` (a volume's retention policy and per-path rules), ``hold`` and ``release``
(instants kept whatever the policy). What they mean: store/retention.py and
docs/retention.md; where they are kept: store/policies.py."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from anytime.store.errors import AnytimeError, UsageError

from .cmd_repo import open_repo
from .target import resolve_instant, resolve_target

#: (option, Policy field) of the durations ``policy`` sets.
DURATIONS = (("--keep-all", "keep_all"), ("--hourly", "hourly"), ("--daily", "daily"),
             ("--weekly", "weekly"), ("--monthly", "monthly"), ("--yearly", "yearly"),
             ("--max-age", "max_age"))

_POLICY_DESC = """\
Show or set the retention policy of the volume PATH is in: what 'anytime prune' keeps.
With no option it shows the policy, its per-path rules and the volume's holds; each
option sets one field and keeps the others.

Tiers: --keep-all keeps every commit of that last span; --hourly, --daily, --weekly
(ISO weeks), --monthly and --yearly keep the newest commit of each hour, day, ... of
local time within their span. --max-age removes everything older, whatever keeps it,
except holds. The newest commit is always kept, labels too unless --keep-labels no.
A policy without tiers keeps every commit. Example: --keep-all 48h --hourly 7d
--daily 30d --weekly 12w --monthly 12M --yearly 7y.

Durations: numbers with units s, m (minutes), h, d, w, M (months), y, joined: 90m, 48h,
1y6M. Sizes (--max-size, the capacity cap): K, M, G, T in binary units (1K = 1024
bytes, as borg and restic read them): 500M, 2G, 1.5T.

--path PATTERN with tier options or --max-age sets a rule for the paths it matches
(patterns as --exclude reads them, from the volume's root: 'finance/**', '*.db');
where rules and the policy differ the strictest keep wins (the longer span of each
tier, the shortest --max-age). --clear removes the policy, or with --path that rule.
See docs/retention.md."""


def register(sub, common) -> None:
    p = sub.add_parser("policy", parents=[common], description=_POLICY_DESC)
    p.add_argument("path", help="a protected path or volume")
    for opt, _ in DURATIONS:
        p.add_argument(opt, metavar="DUR")
    p.add_argument("--max-size", metavar="SIZE", help="capacity cap of the volume's history")
    p.add_argument("--keep-labels", choices=("yes", "no"),
                   help="keep the commits labels show (default yes)")
    p.add_argument("--path", dest="pattern", metavar="PATTERN",
                   help="set (or with --clear remove) the rule for these paths")
    p.add_argument("--clear", action="store_true",
                   help="remove the policy, or with --path that rule")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("hold", parents=[common], description=(
        "Hold instants of the volume PATH is in: nothing held is ever thinned or removed, "
        "whatever the policy or the space. Hold a label's instant, or every instant "
        "from T1 to T2 (labels work there too); prints the hold's id, which 'anytime "
        "release' takes. Without LABEL or --from, lists the volume's holds. While a hold "
        "names a label, the label can be neither removed nor moved."))
    p.add_argument("path", help="a protected path or volume")
    p.add_argument("label", nargs="?", help="a label of the volume")
    p.add_argument("--from", dest="from_", metavar="T1", help="first instant held")
    p.add_argument("--to", metavar="T2", help="last instant held (default: now)")
    p.add_argument("--until", metavar="DATE", help="the hold ends then (default: never)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hold)

    p = sub.add_parser("release", parents=[common], description=(
        "Release a hold of the volume PATH is in: by its id, or every hold of a label."))
    p.add_argument("path", help="a protected path or volume")
    p.add_argument("which", metavar="ID|LABEL", help="the hold's id, or the label it holds")
    p.set_defaults(func=cmd_release)


def _updates(args, rule: bool) -> dict:
    """The fields the options set (Policy or PathRule fields)."""
    from anytime.store.retention import parse_duration, parse_size

    out = {f: parse_duration(getattr(args, f)) for _, f in DURATIONS
           if getattr(args, f) is not None}
    if args.max_size is not None or args.keep_labels is not None:
        if rule:
            raise UsageError("--max-size and --keep-labels are the volume's, not a path's: "
                             "give them without --path")
        if args.max_size is not None:
            out["max_size"] = parse_size(args.max_size)
        if args.keep_labels is not None:
            out["keep_labels"] = args.keep_labels == "yes"
    return out


def _new_policy(args, old):
    """The policy the options make of ``old`` (None: none); False when they change
    nothing (only show)."""
    from anytime.store.retention import PathRule, Policy, check_pattern

    rule = args.pattern is not None
    updates = _updates(args, rule)
    if args.clear:
        if updates:
            raise UsageError("--clear removes; give it without settings")
        if not rule:
            return None
        if old is None or old.rule(args.pattern) is None:
            raise UsageError(f"the policy has no rule for '{args.pattern}'; 'anytime "
                             f"policy {args.path}' lists them")
        return old.without_rule(args.pattern)
    if rule:
        check_pattern(args.pattern)
        if not updates:
            raise UsageError("--path needs a tier option or --max-age to set for it")
        base = (old or Policy()).rule(args.pattern) or PathRule(args.pattern)
        return (old or Policy()).with_rule(replace(base, **updates))
    if not updates:
        return False
    return replace(old or Policy(), **updates)


def cmd_policy(args) -> int:
    from anytime.store import policies

    with open_repo(args) as repo:
        target = resolve_target(repo, args.path)
        vol = target.vol
        with repo.read_txn() as txn:
            old = policies.get_policy(repo, txn, vol.id)
        new = _new_policy(args, old)
        if new is not False:
            policies.set_policy(repo, vol.id, new)
        with repo.read_txn() as txn:
            pol = policies.get_policy(repo, txn, vol.id)
            holds = policies.list_holds(repo, txn, vol.id)
    if args.json:
        json.dump({"volume": vol.name, "policy": None if pol is None else pol.to_dict(),
                   "holds": [_hold_json(h) for h in holds]}, sys.stdout, indent=2,
                  sort_keys=True)
        print()
        return 0
    print("\n".join(_policy_lines(vol.name, pol) + _hold_lines(holds)))
    return 0


def _policy_lines(name: str, pol) -> list[str]:
    from anytime.store.retention import TIERS

    if pol is None:
        return [f"{name}: no retention policy: every commit is kept"]
    lines = [f"{name}: retention policy"]
    fields = (*TIERS, "max_age")
    for f in fields:
        v = getattr(pol, f)
        lines.append(f"  {f.replace('_', '-'):<12}{v if v is not None else '-'}")
    lines.append(f"  {'max-size':<12}{_size(pol.max_size) if pol.max_size else '-'}")
    lines.append(f"  {'keep-labels':<12}{'yes' if pol.keep_labels else 'no'}")
    if not pol.has_tiers:
        lines.append("  (no tier set: every commit is kept"
                     f"{', up to max-age' if pol.max_age else ''})")
    for r in pol.rules:
        set_ = [f"{f.replace('_', '-')} {getattr(r, f)}" for f in fields
                if getattr(r, f) is not None]
        lines.append(f"  path '{r.pattern}': {', '.join(set_)}")
    return lines


def _size(n: int) -> str:
    """``n`` bytes in the largest binary unit it reaches (500M, 1.5T)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g}{unit} ({n} bytes)"
    return f"{n} bytes"


def _hold_lines(holds) -> list[str]:
    from anytime.store import clock
    from anytime.vfs.instants import format_instant

    if not holds:
        return ["holds: none"]
    lines, now = ["holds:"], clock.now_ns()
    for h in holds:
        what = (f"label '{h.label}' ({format_instant(h.from_ns)})" if h.label else
                f"{format_instant(h.from_ns)} to {format_instant(h.to_ns)}")
        until = ("until released" if h.until_ns is None else
                 f"until {format_instant(h.until_ns)}" if h.active(now) else
                 f"ended {format_instant(h.until_ns)} (no longer in force)")
        lines.append(f"  {h.id}  {what}, {until}")
    return lines


def _hold_json(h) -> dict:
    from anytime.vfs.instants import format_instant

    out = h.to_dict()
    out.update({"from": format_instant(h.from_ns), "to": format_instant(h.to_ns),
                "until": None if h.until_ns is None else format_instant(h.until_ns)})
    return out


def cmd_hold(args) -> int:
    from anytime.store import clock, policies, timeline
    from anytime.store.retention import Hold
    from anytime.vfs.instants import format_instant, parse_instant

    if args.label and (args.from_ or args.to):
        raise UsageError("hold a LABEL or --from T1 --to T2, not both")
    if args.to and not args.from_:
        raise UsageError("--to needs --from")
    with open_repo(args) as repo:
        vol = resolve_target(repo, args.path).vol
        if not args.label and not args.from_:
            if args.until:
                raise UsageError("--until needs a LABEL or --from to hold")
            with repo.read_txn() as txn:
                holds = policies.list_holds(repo, txn, vol.id)
            if args.json:
                json.dump([_hold_json(h) for h in holds], sys.stdout, indent=2,
                          sort_keys=True)
                print()
            else:
                print("\n".join(_hold_lines(holds)))
            return 0
        now = clock.now_ns()
        if args.label:
            with repo.read_txn() as txn:
                t = timeline.label_instant(repo, txn, vol.id, args.label)
            if t is None:
                raise AnytimeError(f"volume '{vol.name}' has no label '{args.label}'; "
                                   f"'anytime log {args.path}' shows its labels")
            lo = hi = t
        else:
            lo = resolve_instant(repo, vol, args.from_, strict=False)
            hi = resolve_instant(repo, vol, args.to, strict=False) if args.to else now
            if hi < lo:
                raise UsageError(f"--to ({format_instant(hi)}) is before --from "
                                 f"({format_instant(lo)})")
        until = parse_instant(args.until) if args.until else None
        if until is not None and until <= now:
            raise UsageError(f"--until {args.until} ({format_instant(until)}) is not in "
                             f"the future")
        with repo.read_txn() as txn:
            hid = policies.new_hold_id(repo, txn, vol.id)
        hold = Hold(hid, lo, hi, label=args.label, until_ns=until, created_ns=now)
        policies.add_hold(repo, vol.id, hold)
    if args.json:
        json.dump(_hold_json(hold), sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(hid)
    return 0


def cmd_release(args) -> int:
    from anytime.store import policies

    with open_repo(args) as repo:
        vol = resolve_target(repo, args.path).vol
        if not policies.release_hold(repo, vol.id, args.which):
            raise AnytimeError(f"volume '{vol.name}' has no hold '{args.which}' (by id or "
                               f"label); 'anytime hold {args.path}' lists them")
    print(f"{vol.name}: released {args.which}")
    return 0
