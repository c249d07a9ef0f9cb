"""Retention: which commits of a volume a policy keeps, and why. Pure: no index, no I/O.

A volume's history is a list of commits; thinning it removes commits (their changes
fold into the next kept one, see docs/retention.md), so every kept instant still shows
exactly what it showed before. This module decides which; ``prune`` applies it.

Terms:
  duration    a span written with units ``s`` (seconds), ``m`` (minutes), ``h``, ``d``,
              ``w``, ``M`` (months), ``y`` (years = 12 months), concatenated (``1y6M``,
              ``48h``): :func:`parse_duration`, :class:`Duration`. Days, weeks, months
              and years are calendar spans of local time (a day across a change to
              summer time is 23 hours), as restic's ``--keep-within`` computes them.
  cutoff      the instant a duration before now (:meth:`Duration.before`). A tier keeps
              commits *newer* than its cutoff (strictly after it); ``max_age`` drops
              commits *older* than its cutoff (strictly before it).
  tier        ``keep_all`` (every commit newer than its cutoff) or a bucket tier,
              ``hourly``, ``daily``, ``weekly`` (ISO weeks, from Monday), ``monthly``,
              ``yearly``: the newest commit of each bucket (an hour, day, ... of local
              time) among the commits newer than the tier's cutoff, as restic's
              ``--keep-within-hourly`` and the others.
  policy      the tiers of a volume, ``max_age`` (commits older than it go, whatever
              keeps them but a hold), ``max_size`` (the capacity cap, bytes),
              ``keep_labels`` and per-path rules (:class:`Policy`). A policy that sets
              no tier keeps every commit (only ``max_age`` and the cap then thin), as
              does no policy at all.
  rule        a glob (store/globs.py: restic's and borg's exclude patterns, matched
              against ``/`` + the path inside the volume) with tiers and a ``max_age``
              of its own (:class:`PathRule`). For a path several rules match, the
              strictest keep wins: per tier the longer duration, and the shortest
              ``max_age`` (:meth:`Policy.effective`). A rule never keeps less than the
              volume's policy.
  hold        instants that are never thinned or removed, whatever the policy or the
              space (:class:`Hold`): a range [from, to], or the instant a label named
              when the hold was made; in force until ``until_ns`` (None: forever).
  timed commit  a commit whose records carry their own instants (the shim's): its
              *interior* is every instant after ``interior_from`` and before the commit's
              own, where the view differs from both neighbouring commits. Kept *whole*,
              every instant of its interior stays as it was; kept as a *point*, only its
              final state stays (the interior is thinned away).
  plan        what :func:`plan` decides: the kept commits, each with its reasons, and
              the dropped ones; and the *cap order*: the kept commits a capacity cap
              may remove, the finest, oldest detail first.

Durations compare (for rules) by their nominal length: a month is 30.436875 days.
"""

from __future__ import annotations

import functools
import json
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime

from .errors import RepositoryFormatError, UsageError

NS = 1_000_000_000
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_UNIT_DAYS = {"d": 1, "w": 7}
_UNIT_MONTHS = {"M": 1, "y": 12}
_DURATION = r"(?:\d+[smhdwMy])+"
_TOKEN = r"(\d+)([smhdwMy])"
#: seconds of a nominal month (an average Gregorian one), for comparing durations only
_MONTH_SECONDS = 2_629_746

#: The tiers, finest first: a policy's keep fields.
TIERS = ("keep_all", "hourly", "daily", "weekly", "monthly", "yearly")
BUCKET_TIERS = TIERS[1:]
#: Reason of a commit kept because the policy sets no tier (or there is no policy).
ALL = "all"
#: Reason names of the tiers ("keep-all", "hourly", ...).
TIER_REASON = {t: t.replace("_", "-") for t in TIERS}
#: Cap order rank of each reason: lower ranks are removed first.
_RANK = {ALL: 0, "keep-all": 0, "hourly": 1, "daily": 2, "weekly": 3, "monthly": 4,
         "yearly": 5}
_LABEL_RANK = 6
_ORDER = ("latest", ALL, *TIER_REASON.values())


def _usage_duration(text: str, why: str) -> UsageError:
    return UsageError(f"'{text}' is not a duration ({why}): write numbers with units s, m "
                      f"(minutes), h, d, w, M (months) or y, such as 48h, 30d or 1y6M")


@dataclass(frozen=True, order=False)
class Duration:
    """A span of calendar months, calendar days and seconds; at least one positive."""

    months: int = 0
    days: int = 0
    seconds: int = 0

    def before(self, now_ns: int, tz=None) -> int:
        """The instant this long before ``now_ns`` (0 at the earliest): months and days
        subtracted from the local date as Go's ``AddDate`` does (restic's
        ``--keep-within``: 31 March less one month is 3 March, the day normalised),
        keeping the time of day; then the seconds. ``tz``: a ``tzinfo``, None for the
        local zone."""
        secs, frac = divmod(now_ns, NS)
        if self.months or self.days:
            wall = _wall(secs, tz)
            year, month0 = divmod(wall.month - 1 - self.months, 12)
            year += wall.year
            if year < 1970:
                return 0
            day = date(year, month0 + 1, 1).toordinal() + wall.day - 1 - self.days
            if day < date(1970, 1, 1).toordinal():
                return 0
            secs = _epoch(datetime.combine(date.fromordinal(day), wall.time()), tz)
        return max(0, (secs - self.seconds) * NS + frac)

    @property
    def nominal_seconds(self) -> int:
        """Length in seconds with a nominal month (30.436875 days): for comparing."""
        return self.months * _MONTH_SECONDS + self.days * 86400 + self.seconds

    def __str__(self) -> str:
        out = []
        y, mo = divmod(self.months, 12)
        h, rest = divmod(self.seconds, 3600)
        mi, s = divmod(rest, 60)
        for n, unit in ((y, "y"), (mo, "M"), (self.days, "d"), (h, "h"), (mi, "m"), (s, "s")):
            if n:
                out.append(f"{n}{unit}")
        return "".join(out)


def parse_duration(text: str) -> Duration:
    """A :class:`Duration` from ``48h``, ``30d``, ``1y6M`` (format in the docstring);
    UsageError for anything else, zero included."""
    s = text.strip()
    if not re.fullmatch(_DURATION, s):
        why = "negative" if s.startswith("-") else "no unit" if s.isdigit() else "unknown form"
        raise _usage_duration(text, why)
    months = days = seconds = 0
    for n, unit in re.findall(_TOKEN, s):
        months += int(n) * _UNIT_MONTHS.get(unit, 0)
        days += int(n) * _UNIT_DAYS.get(unit, 0)
        seconds += int(n) * _UNIT_SECONDS.get(unit, 0)
    if not (months or days or seconds):
        raise _usage_duration(text, "zero")
    return Duration(months, days, seconds)


_SIZE = r"(?i)(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?"
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``500M``, ``2G``, ``1.5T``, ``800KiB`` or a plain number: binary units
    (K = 1024), as borg and restic read them; UsageError otherwise, zero included."""
    m = re.fullmatch(_SIZE, text.strip())
    if not m:
        raise UsageError(f"'{text}' is not a size: write a number with K, M, G or T "
                         f"(binary: 1K = 1024 bytes), such as 500M or 1.5T")
    n = round(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n < 1:
        raise UsageError(f"'{text}' is not a size: it must be at least one byte")
    return n


def _wall(secs: int, tz) -> datetime:
    """The local wall time (naive) of ``secs`` since the epoch in ``tz`` (None: local)."""
    if tz is None:
        return datetime.fromtimestamp(secs)
    return datetime.fromtimestamp(secs, tz).replace(tzinfo=None)


def _epoch(wall: datetime, tz) -> int:
    """Seconds since the epoch of the local wall time ``wall`` in ``tz`` (None: local);
    a wall time that does not exist or exists twice (summer time) is read as before
    the change."""
    return int(wall.timestamp() if tz is None else wall.replace(tzinfo=tz).timestamp())


# --- policies ------------------------------------------------------------------------
def _damaged(what: str, why: str) -> RepositoryFormatError:
    return RepositoryFormatError(f"a stored {what} is damaged or was written by a newer "
                                 f"anytime ({why}); upgrade anytime, or set it again")


def _load_json(what: str, text: str | bytes):
    try:
        return json.loads(text)
    except ValueError as e:
        raise _damaged(what, f"not JSON: {e}") from None


def _check_object(what: str, d, known: set[str]) -> None:
    """RepositoryFormatError unless ``d`` is a JSON object with only ``known`` keys."""
    if not isinstance(d, dict):
        raise _damaged(what, "not a JSON object")
    extra = sorted(set(d) - known)
    if extra:
        raise _damaged(what, f"unknown key {', '.join(extra)}")


def _dur_json(d: Duration | None) -> str | None:
    return None if d is None else str(d)


def _dur_from(what: str, v) -> Duration | None:
    if v is None:
        return None
    try:
        return parse_duration(v)
    except (UsageError, AttributeError, TypeError):
        raise _damaged(what, f"{v!r} is not a duration") from None


@functools.lru_cache(maxsize=256)
def _pattern_matcher(pattern: str):
    from .globs import matcher

    return matcher([pattern.encode("utf-8", "surrogateescape").rstrip(b"/")])


def check_pattern(pattern: str) -> None:
    """UsageError for a pattern a rule cannot have (empty, or negated)."""
    if not pattern.rstrip("/"):
        raise UsageError(f"path pattern {pattern!r} is empty; give a name or a path "
                         f"inside the volume, such as 'finance/**' or '*.db'")
    if pattern.startswith("!"):
        raise UsageError(f"path pattern {pattern!r}: negation ('!') is not supported")


@dataclass(frozen=True)
class PathRule:
    """Tiers and a ``max_age`` for the paths ``pattern`` matches (see the docstring)."""

    pattern: str
    keep_all: Duration | None = None
    hourly: Duration | None = None
    daily: Duration | None = None
    weekly: Duration | None = None
    monthly: Duration | None = None
    yearly: Duration | None = None
    max_age: Duration | None = None

    def matches(self, path: bytes) -> bool:
        """True if ``pattern`` matches ``path`` (inside the volume, no leading ``/``)."""
        return _pattern_matcher(self.pattern)(path.rsplit(b"/", 1)[-1], b"/" + path)

    def to_dict(self) -> dict:
        out = {f: _dur_json(getattr(self, f)) for f in (*TIERS, "max_age")}
        out["pattern"] = self.pattern
        return out

    @classmethod
    def from_dict(cls, d) -> PathRule:
        _check_object("path rule", d, {f.name for f in fields(cls)})
        if not isinstance(d.get("pattern"), str):
            raise _damaged("path rule", "it has no pattern")
        return cls(d["pattern"], **{f: _dur_from("path rule", d.get(f))
                                    for f in (*TIERS, "max_age")})


def _longer(a: Duration | None, b: Duration | None) -> Duration | None:
    if a is None or b is None:
        return a or b
    return b if b.nominal_seconds > a.nominal_seconds else a


def _shorter(a: Duration | None, b: Duration | None) -> Duration | None:
    if a is None or b is None:
        return a or b
    return b if b.nominal_seconds < a.nominal_seconds else a


@dataclass(frozen=True)
class Policy:
    """A volume's retention policy (see the docstring). Every field optional."""

    keep_all: Duration | None = None
    hourly: Duration | None = None
    daily: Duration | None = None
    weekly: Duration | None = None
    monthly: Duration | None = None
    yearly: Duration | None = None
    max_age: Duration | None = None
    max_size: int | None = None
    keep_labels: bool = True
    rules: tuple[PathRule, ...] = field(default=())

    @property
    def has_tiers(self) -> bool:
        """True if any tier is set; without, the policy keeps every commit."""
        return any(getattr(self, t) is not None for t in TIERS)

    def effective(self, path: bytes) -> Policy:
        """The policy for ``path``: this one merged with every rule matching it, the
        strictest keep winning (per tier the longer duration, the shortest
        ``max_age``); without rules (``rules`` is empty). A policy without tiers keeps
        every commit, so rules' tiers add nothing to it."""
        return self.merged_with([r for r in self.rules if r.matches(path)])

    def merged_with(self, rules) -> Policy:
        """This policy merged with ``rules`` (as :meth:`effective` merges the rules a
        path matches), without rules."""
        merged = {f: getattr(self, f) for f in (*TIERS, "max_age")}
        for r in rules:
            if self.has_tiers:
                for t in TIERS:
                    merged[t] = _longer(merged[t], getattr(r, t))
            merged["max_age"] = _shorter(merged["max_age"], r.max_age)
        return replace(self, **merged, rules=())

    def with_rule(self, rule: PathRule) -> Policy:
        """This policy with ``rule`` added, or in place of the rule of its pattern."""
        rules = [r for r in self.rules if r.pattern != rule.pattern]
        return replace(self, rules=(*rules, rule))

    def without_rule(self, pattern: str) -> Policy:
        return replace(self, rules=tuple(r for r in self.rules if r.pattern != pattern))

    def rule(self, pattern: str) -> PathRule | None:
        return next((r for r in self.rules if r.pattern == pattern), None)

    def to_dict(self) -> dict:
        out = {f: _dur_json(getattr(self, f)) for f in (*TIERS, "max_age")}
        out.update(max_size=self.max_size, keep_labels=self.keep_labels,
                   rules=[r.to_dict() for r in self.rules])
        return out

    def to_json(self) -> str:
        """Stable JSON: every key, sorted; durations as :class:`Duration` prints them."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d) -> Policy:
        _check_object("retention policy", d, {f.name for f in fields(cls)})
        size, keep_labels, rules = d.get("max_size"), d.get("keep_labels", True), \
            d.get("rules", [])
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                                 or size < 1):
            raise _damaged("retention policy", f"max_size {size!r}")
        if not isinstance(keep_labels, bool) or not isinstance(rules, list):
            raise _damaged("retention policy", "keep_labels or rules of the wrong type")
        return cls(**{f: _dur_from("retention policy", d.get(f)) for f in (*TIERS, "max_age")},
                   max_size=size, keep_labels=keep_labels,
                   rules=tuple(PathRule.from_dict(r) for r in rules))

    @classmethod
    def from_json(cls, text: str | bytes) -> Policy:
        """The policy :meth:`to_json` wrote; RepositoryFormatError (damaged) for anything
        else, an unknown key included."""
        return cls.from_dict(_load_json("retention policy", text))


# --- holds ---------------------------------------------------------------------------
_HOLD_KEYS = ("id", "from_ns", "to_ns", "label", "until_ns", "created_ns")


@dataclass(frozen=True)
class Hold:
    """Instants ``from_ns`` to ``to_ns`` (both included) held until ``until_ns`` (None:
    until released). A hold on a label (``label`` set) holds the instant the label
    named when the hold was made (``from_ns == to_ns``); while it is in force the label
    can be neither removed nor moved, so the two stay the same. ``id``: short, unique
    among the volume's holds."""

    id: str
    from_ns: int
    to_ns: int
    label: str | None = None
    until_ns: int | None = None
    created_ns: int = 0

    def active(self, now_ns: int) -> bool:
        """True while the hold is in force."""
        return self.until_ns is None or now_ns < self.until_ns

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _HOLD_KEYS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d) -> Hold:
        _check_object("hold", d, set(_HOLD_KEYS))
        ints = ("from_ns", "to_ns", "created_ns")
        ok = (isinstance(d.get("id"), str) and d["id"]
              and all(isinstance(d.get(k), int) for k in ints)
              and isinstance(d.get("until_ns"), int | None)
              and isinstance(d.get("label"), str | None) and d["from_ns"] <= d["to_ns"])
        if not ok:
            raise _damaged("hold", "a field is missing or of the wrong type")
        return cls(**{k: d.get(k) for k in _HOLD_KEYS})

    @classmethod
    def from_json(cls, text: str | bytes) -> Hold:
        return cls.from_dict(_load_json("hold", text))


# --- the plan ------------------------------------------------------------------------
@dataclass(frozen=True)
class Keep:
    """A kept commit: its instant, why it is kept (``latest``, ``all``, ``keep-all``,
    ``hourly`` ... ``yearly``, ``label:NAME``, ``hold:ID``), and for a timed commit
    whether it is kept ``whole`` (its interior continuous: keep-all, a hold or a label
    covers it) or as a point; ``whole`` is False for an ordinary commit."""

    instant: int
    reasons: tuple[str, ...]
    whole: bool = False


@dataclass
class Plan:
    """What :func:`plan` decided. ``drop``: instants of the commits that go, oldest
    first. ``max_age_cutoff``: commits before it go (None: no ``max_age``).
    ``cap_order``: the kept commits a capacity cap may remove, in the order it removes
    them; never a held one, never the newest."""

    keep: dict[int, Keep]
    drop: list[int]
    max_age_cutoff: int | None
    cap_order: list[int]


def _hour_span(secs: int, tz) -> tuple[int, dict[str, object]]:
    """(first second, bucket keys) of the local hour holding second ``secs``: every
    second from the first to ``secs`` has these keys. One local-time conversion per
    hour of history instead of one per commit; where the zone's offset changes inside
    the hour, the span is ``secs`` alone."""
    wall = _wall(secs, tz)
    start = secs - wall.minute * 60 - wall.second
    if _wall(start, tz) != wall.replace(minute=0, second=0):
        start = secs
    day = wall.toordinal()
    return start, {"hourly": (day, wall.hour), "daily": day, "weekly": day - wall.weekday(),
                   "monthly": (wall.year, wall.month), "yearly": wall.year}


class _Marks:
    """Reasons and wholeness gathered per commit instant."""

    def __init__(self, commits):
        self.instants = [t for t, _ in commits]
        self.interior = {t: f for t, f in commits if f is not None}
        self.reasons: dict[int, list[str]] = {}
        self.whole: set[int] = set()

    def add(self, t: int, reason: str, whole: bool = False) -> None:
        self.reasons.setdefault(t, []).append(reason)
        if whole and t in self.interior:
            self.whole.add(t)

    def newest_at_or_before(self, instant: int) -> int | None:
        i = bisect_right(self.instants, instant) - 1
        return self.instants[i] if i >= 0 else None

    def after(self, instant: int) -> int | None:
        """The first commit after ``instant``."""
        i = bisect_right(self.instants, instant)
        return self.instants[i] if i < len(self.instants) else None


def _keep_tiers(m: _Marks, policy: Policy, now_ns: int, tz) -> None:
    if policy.keep_all is not None:
        cut = policy.keep_all.before(now_ns, tz)
        for t in m.instants[bisect_right(m.instants, cut):]:
            m.add(t, "keep-all", whole=True)
    cuts = {t: getattr(policy, t).before(now_ns, tz) for t in BUCKET_TIERS
            if getattr(policy, t) is not None}
    if not cuts:
        return
    seen: dict[str, set] = {t: set() for t in cuts}
    span_start, keys = None, {}
    for t in reversed(m.instants[bisect_right(m.instants, min(cuts.values())):]):
        if span_start is None or t // NS < span_start:
            span_start, keys = _hour_span(t // NS, tz)
        for tier, cut in cuts.items():
            if t > cut and keys[tier] not in seen[tier]:
                seen[tier].add(keys[tier])
                m.add(t, tier)


def _keep_labels(m: _Marks, labels: dict[str, int]) -> None:
    for name, at in labels.items():
        base = m.newest_at_or_before(at)
        if base is not None:
            m.add(base, f"label:{name}")
        nxt = m.after(at)
        if nxt is not None and nxt in m.interior and m.interior[nxt] < at:
            m.add(nxt, f"label:{name}", whole=True)


def _keep_hold(m: _Marks, hold: Hold) -> set[int]:
    """Mark what ``hold`` keeps; returns those instants."""
    reason = f"hold:{hold.id}"
    lo = bisect_left(m.instants, hold.from_ns)
    hi = bisect_right(m.instants, hold.to_ns)
    held = set(m.instants[lo:hi])
    base = m.newest_at_or_before(hold.from_ns)
    if base is not None:
        held.add(base)
    nxt = m.after(hold.to_ns)
    if nxt is not None and nxt in m.interior and m.interior[nxt] < hold.to_ns:
        held.add(nxt)
    for t in held:
        # a timed commit's interior (interior_from, t) overlaps [from, to]
        m.add(t, reason, whole=t in m.interior and m.interior[t] < hold.to_ns
              and t > hold.from_ns)
    return held


def _reason_key(r: str) -> tuple:
    if r in _ORDER:
        return (0, _ORDER.index(r), "")
    return (1 if r.startswith("label:") else 2, 0, r)


def plan(commits, labels: dict[str, int], holds, policy: Policy | None, now_ns: int,
         tz=None) -> Plan:
    """Which of a volume's ``commits`` ``policy`` keeps at ``now_ns`` (see the module
    docstring and docs/retention.md). ``commits``: (instant, interior_from) sorted by
    instant, ``interior_from`` None for an ordinary commit; ``labels``: name -> instant;
    ``holds``: :class:`Hold` (those no longer in force are ignored); ``tz``: the zone of
    the buckets (None: local time)."""
    m = _Marks(commits)
    if not m.instants:
        return Plan({}, [], None, [])
    newest = m.instants[-1]
    m.add(newest, "latest")
    if policy is None or not policy.has_tiers:
        for t in m.instants:
            m.add(t, ALL, whole=True)
    else:
        _keep_tiers(m, policy, now_ns, tz)
    if policy is None or policy.keep_labels:
        _keep_labels(m, labels)
    held: set[int] = set()
    for h in holds:
        if h.active(now_ns):
            held |= _keep_hold(m, h)
    cutoff = None
    if policy is not None and policy.max_age is not None:
        cutoff = policy.max_age.before(now_ns, tz)
        for t in m.instants[:bisect_left(m.instants, cutoff)]:
            if t not in held and t != newest:
                m.reasons.pop(t, None)
        for t, start in m.interior.items():  # its oldest instants are past max_age
            if start < cutoff < t and t not in held:
                m.whole.discard(t)
    keep = {t: Keep(t, tuple(sorted(rs, key=_reason_key)), t in m.whole)
            for t, rs in sorted(m.reasons.items())}
    drop = [t for t in m.instants if t not in keep]
    return Plan(keep, drop, cutoff, _cap_order(keep, held, newest))


def _cap_order(keep: dict[int, Keep], held: set[int], newest: int) -> list[int]:
    """The finest, oldest detail first: commits kept only by keep-all (or by a policy
    without tiers), oldest first, then those kept at most by hourly, ..., yearly, then
    by labels; never a held commit, never the newest."""
    ranked = []
    for t, k in keep.items():
        if t == newest or t in held:
            continue
        rank = max((_RANK.get(r, _LABEL_RANK) for r in k.reasons), default=0)
        ranked.append((rank, t))
    return [t for _, t in sorted(ranked)]
