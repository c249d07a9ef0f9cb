"""store/retention.py: durations, sizes, policies, holds and the plan, on histories made
as integer lists (days of commits a few seconds apart) and checked bucket by bucket
against plain arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytime.store.errors import RepositoryFormatError, UsageError
from anytime.store.retention import (
    TIERS,
    Duration,
    Hold,
    PathRule,
    Policy,
    parse_duration,
    parse_size,
    plan,
)

NS = 1_000_000_000
H = 3600 * NS
D = 86400 * NS
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> int:
    """ns of an ISO instant with a zone."""
    return int(datetime.fromisoformat(text).timestamp()) * NS


def d(text: str) -> Duration:
    return parse_duration(text)


# --- durations and sizes ---------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("48h", Duration(seconds=48 * 3600)), ("30d", Duration(days=30)),
    ("2w3d", Duration(days=17)), ("1y6M", Duration(months=18)), ("90m", Duration(seconds=5400)),
    ("15s", Duration(seconds=15)), ("1y2M3w4d5h6m7s", Duration(14, 25, 5 * 3600 + 367)),
])
def test_parse_duration(text, want):
    assert parse_duration(text) == want
    assert parse_duration(str(want)) == want  # str round-trips


def test_duration_str_is_canonical():
    assert str(d("18M")) == "1y6M"
    assert str(d("2w")) == "14d"  # weeks are shown as days
    assert str(d("3600s")) == "1h"
    assert str(d("25h")) == "25h"  # hours are not days (a day may be 23 h)


@pytest.mark.parametrize("text", ["", "0d", "0h0m", "-1d", "5", "1x", "1.5d", "d", "1d 2h",
                                  "1D", "one day"])
def test_parse_duration_refuses(text):
    with pytest.raises(UsageError, match="is not a duration"):
        parse_duration(text)


def test_before_is_calendar_aware_like_adddate():
    now = at("2026-03-31T10:00:00+00:00")
    assert d("1M").before(now, UTC) == at("2026-03-03T10:00:00+00:00")  # Feb 31 -> Mar 3
    assert d("1y").before(at("2024-02-29T00:00:00+00:00"), UTC) == at("2023-03-01T00:00:00+00:00")
    assert d("1y6M").before(now, UTC) == at("2024-10-01T10:00:00+00:00")  # Sep 31 -> Oct 1
    assert d("2w").before(now, UTC) == now - 14 * D
    assert d("36h").before(now + 123, UTC) == now - 36 * H + 123  # fractions kept
    assert d("100y").before(now, UTC) == 0


def test_before_days_are_local_calendar_days():
    now = at("2026-03-29T12:00:00+02:00")  # the day summer time began in Berlin
    assert d("1d").before(now, BERLIN) == at("2026-03-28T12:00:00+01:00")
    assert now - d("1d").before(now, BERLIN) == 23 * H
    assert now - d("24h").before(now, BERLIN) == 24 * H


@pytest.mark.parametrize("text,want", [
    ("500M", 500 << 20), ("2G", 2 << 30), ("1.5T", 3 << 39), ("800KiB", 800 << 10),
    ("4096", 4096), ("1g", 1 << 30), ("10MB", 10 << 20),
])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["0", "-1M", "1.5X", "M", "", "1 T B", "0.0001"])
def test_parse_size_refuses(text):
    with pytest.raises(UsageError, match="size"):
        parse_size(text)


# --- policies, rules, holds as JSON ---------------------------------------------------
FULL = Policy(keep_all=d("48h"), hourly=d("7d"), daily=d("30d"), weekly=d("12w"),
              monthly=d("12M"), yearly=d("7y"), max_age=d("10y"), max_size=500 << 20,
              keep_labels=False,
              rules=(PathRule("finance/**", yearly=d("10y")), PathRule("*.tmp", max_age=d("7d"))))


def test_policy_json_round_trip_and_stable():
    text = FULL.to_json()
    assert Policy.from_json(text) == FULL
    assert Policy.from_json(text).to_json() == text
    keys = list(__import__("json").loads(text))
    assert keys == sorted(keys) and "max_age" in keys and "rules" in keys
    assert Policy.from_json(Policy().to_json()) == Policy()
    assert '"yearly": "7y"' in text


@pytest.mark.parametrize("text", [
    '{"daily": "30d", "colour": "blue"}', '{"rules": [{"pattern": "a", "x": 1}]}',
    '{"daily": "thirty"}', '[1]', 'not json', '{"max_size": 0}', '{"keep_labels": 1}',
    '{"rules": [{"daily": "1d"}]}',
])
def test_policy_json_refuses_damage(text):
    with pytest.raises(RepositoryFormatError, match="damaged"):
        Policy.from_json(text)


def test_hold_json_round_trip_and_active():
    h = Hold("h1", 10, 20, label="before", until_ns=100, created_ns=5)
    assert Hold.from_json(h.to_json()) == h
    assert h.active(99) and not h.active(100)
    assert Hold("h2", 1, 2).active(10**20)  # no until: forever
    for bad in ('{"id": "x", "from_ns": 1, "to_ns": 2, "created_ns": 0, "extra": 1}',
                '{"id": "x", "from_ns": 3, "to_ns": 2, "created_ns": 0}',
                '{"id": "", "from_ns": 1, "to_ns": 2, "created_ns": 0}', "{"):
        with pytest.raises(RepositoryFormatError, match="damaged"):
            Hold.from_json(bad)


def test_effective_nested_rules():
    base = Policy(daily=d("30d"), yearly=d("7y"), rules=(
        PathRule("finance/**", yearly=d("10y"), daily=d("7d")),
        PathRule("finance/tax/**", max_age=d("12y"), monthly=d("2y")),
        PathRule("*.tmp", keep_all=d("1h"), max_age=d("7d")),
        PathRule("/logs/**", max_age=d("30d")),
    ))
    e = base.effective(b"finance/tax/2020.pdf")
    assert (e.daily, e.yearly, e.monthly, e.max_age) == (d("30d"), d("10y"), d("2y"), d("12y"))
    assert e.rules == ()
    e = base.effective(b"finance/scratch.tmp")
    assert (e.yearly, e.keep_all, e.max_age) == (d("10y"), d("1h"), d("7d"))  # shortest max_age
    assert base.effective(b"docs/a.txt") == Policy(daily=d("30d"), yearly=d("7y"))
    assert base.effective(b"logs/x").max_age == d("30d")
    assert base.effective(b"app/logs/x").max_age is None  # '/logs' is from the volume root
    assert base.effective(b"app/finance/x").yearly == d("10y")  # 'finance/' anywhere
    # a policy without tiers keeps everything: rules' tiers cannot keep less, max_age applies
    loose = Policy(rules=(PathRule("a/**", yearly=d("1y"), max_age=d("2y")),))
    e = loose.effective(b"a/b")
    assert not e.has_tiers and e.max_age == d("2y")


def test_rules_replace_by_pattern():
    p = Policy(daily=d("1d")).with_rule(PathRule("a/**", daily=d("2d")))
    p = p.with_rule(PathRule("a/**", daily=d("3d"))).with_rule(PathRule("b", weekly=d("1w")))
    assert [r.pattern for r in p.rules] == ["a/**", "b"] and p.rule("a/**").daily == d("3d")
    assert p.without_rule("a/**").rules == (PathRule("b", weekly=d("1w")),)


# --- the plan ----------------------------------------------------------------------------
NOW = at("2026-06-15T12:00:00+00:00")


def history(days: int, step_s: int, end: int = NOW) -> list[tuple[int, None]]:
    """Ordinary commits every ``step_s`` seconds for ``days`` days up to ``end``."""
    start = end - days * D
    return [(t, None) for t in range(start + step_s * NS, end + 1, step_s * NS)]


def newest_per_bucket(instants, cutoff, bucket) -> set[int]:
    best: dict[int, int] = {}
    for t in instants:
        if t > cutoff:
            best[bucket(t)] = max(best.get(bucket(t), 0), t)
    return set(best.values())


def reasons_of(p, tier: str) -> set[int]:
    return {t for t, k in p.keep.items() if tier in k.reasons}


def test_driven_history_bucket_by_bucket():
    commits = history(days=20, step_s=7)
    ts = [t for t, _ in commits]
    pol = Policy(keep_all=d("90m"), hourly=d("2d"), daily=d("8d"), weekly=d("3w"))
    p = plan(commits, {}, [], pol, NOW, UTC)
    assert reasons_of(p, "keep-all") == {t for t in ts if t > NOW - 90 * 60 * NS}
    hourly = reasons_of(p, "hourly")
    assert hourly == newest_per_bucket(ts, NOW - 2 * D, lambda t: t // H)
    assert len(hourly) == 48  # the 48 hours before 12:00, the first commit after each
    daily = reasons_of(p, "daily")
    assert daily == newest_per_bucket(ts, NOW - 8 * D, lambda t: t // D)
    assert len(daily) == 9
    # ISO weeks from Monday: 1970-01-01 was a Thursday
    weekly = reasons_of(p, "weekly")
    assert weekly == newest_per_bucket(ts, NOW - 21 * D, lambda t: (t // D + 3) // 7)
    for k in sorted(weekly)[:-1]:
        assert datetime.fromtimestamp(k // NS, UTC).weekday() == 6  # the last of a Sunday
    kept = set(p.keep)
    assert kept == reasons_of(p, "keep-all") | hourly | daily | weekly
    assert p.drop == [t for t in ts if t not in kept]
    assert p.keep[ts[-1]].reasons[0] == "latest"
    assert p.max_age_cutoff is None
    # one commit has every reason it earns, in order
    assert p.keep[ts[-1]].reasons == ("latest", "keep-all", "hourly", "daily", "weekly")


def test_monthly_and_yearly_buckets_in_local_time():
    days = [(NOW - k * D + 3 * H, None) for k in range(3 * 365, -1, -1)]  # 15:00 UTC daily
    p = plan(days, {}, [], Policy(monthly=d("6M"), yearly=d("3y")), NOW, BERLIN)
    def month(t):
        w = datetime.fromtimestamp(t // NS, BERLIN)
        return (w.year, w.month)
    ts = [t for t, _ in days]
    assert reasons_of(p, "monthly") == newest_per_bucket(
        ts, d("6M").before(NOW, BERLIN), month)
    assert len(reasons_of(p, "monthly")) == 7  # Dec..Jun, the first one partly
    assert reasons_of(p, "yearly") == newest_per_bucket(
        ts, d("3y").before(NOW, BERLIN), lambda t: datetime.fromtimestamp(t // NS, BERLIN).year)


def test_daily_buckets_follow_the_zone():
    # 22:30 UTC is the next day in Berlin (summer time, +2)
    a, b = at("2026-06-14T20:30:00+00:00"), at("2026-06-14T22:30:00+00:00")
    commits = [(a, None), (b, None), (NOW, None)]
    berlin = plan(commits, {}, [], Policy(daily=d("7d")), NOW, BERLIN)
    utc = plan(commits, {}, [], Policy(daily=d("7d")), NOW, UTC)
    assert berlin.drop == [b] and utc.drop == [a]


def test_no_policy_or_no_tiers_keeps_everything():
    commits = [(1 * D, None), (2 * D, 1 * D), (3 * D, None)]
    for pol in (None, Policy(), Policy(max_size=1 << 30)):
        p = plan(commits, {}, [], pol, NOW, UTC)
        assert p.drop == [] and set(p.keep) == {1 * D, 2 * D, 3 * D}
        assert p.keep[2 * D].whole and not p.keep[1 * D].whole  # ordinary: no interior
        assert p.keep[1 * D].reasons == ("all",)
        assert p.cap_order == [1 * D, 2 * D]
    assert plan([], {}, [], FULL, NOW) == plan([], {}, [], None, NOW)


def test_latest_always_kept():
    commits = history(days=3, step_s=3600, end=NOW - 2 * D)
    p = plan(commits, {}, [], Policy(keep_all=d("1h"), max_age=d("1d")), NOW, UTC)
    assert list(p.keep) == [commits[-1][0]]
    assert p.keep[commits[-1][0]].reasons == ("latest",)
    assert p.cap_order == []


def test_labels_keep_the_commit_they_show():
    commits = [(10 * D, None), (11 * D, None), (12 * D, 11 * D + 2 * H), (13 * D, None)]
    labels = {"plain": 11 * D + H,         # before the timed interior: the commit before
              "exact": 10 * D,             # on a commit
              "inside": 11 * D + 5 * H,    # inside the timed commit's interior
              "end": 12 * D,               # at the timed commit itself: a point
              "early": 1 * D}              # before history: nothing
    pol = Policy(keep_all=d("1h"))
    p = plan(commits, labels, [], pol, NOW, UTC)
    assert p.keep[10 * D].reasons == ("label:exact",)
    assert p.keep[11 * D].reasons == ("label:inside", "label:plain")
    assert p.keep[12 * D].reasons == ("label:end", "label:inside") and p.keep[12 * D].whole
    assert p.drop == []
    p = plan(commits, {"end": 12 * D}, [], pol, NOW, UTC)
    assert not p.keep[12 * D].whole and p.drop == [10 * D, 11 * D]
    p = plan(commits, labels, [], Policy(keep_all=d("1h"), keep_labels=False), NOW, UTC)
    assert list(p.keep) == [13 * D]


def test_holds_keep_ranges_whole_and_expire():
    commits = [(t * D, None) for t in range(1, 10)]
    commits[4] = (5 * D, 4 * D + H)  # timed, its interior inside the range
    commits[6] = (7 * D, 6 * D)      # timed, its interior reaching into the range's end
    pol = Policy(keep_all=d("1h"))
    hold = Hold("h1", 3 * D + H, 6 * D + H)
    expired = Hold("h2", 1 * D, 9 * D, until_ns=NOW - 1)
    p = plan(commits, {}, [hold, expired], pol, NOW, UTC)
    assert sorted(p.keep) == [3 * D, 4 * D, 5 * D, 6 * D, 7 * D, 9 * D]  # + base 3D, 7D
    assert all(p.keep[t].reasons == ("hold:h1",) for t in (3 * D, 4 * D, 6 * D, 7 * D))
    assert p.keep[5 * D].whole and p.keep[7 * D].whole
    assert not p.keep[3 * D].whole
    assert p.drop == [1 * D, 2 * D, 8 * D]
    assert p.cap_order == []  # held commits and the newest are never capped
    future = Hold("h3", 1 * D, 1 * D, until_ns=NOW + 1)
    assert 1 * D in plan(commits, {}, [future], pol, NOW, UTC).keep


def test_max_age_wins_over_keeps_but_not_holds():
    commits = history(days=10, step_s=3600)
    ts = [t for t, _ in commits]
    old_label = ts[10]
    held = Hold("keep-me", ts[20], ts[22], label=None)
    pol = Policy(daily=d("30d"), max_age=d("5d"))
    p = plan(commits, {"old": old_label, "new": ts[-30]}, [held], pol, NOW, UTC)
    cut = NOW - 5 * D
    assert p.max_age_cutoff == cut
    assert all(t >= cut for t in p.keep if t not in (ts[20], ts[21], ts[22]))
    assert {ts[20], ts[21], ts[22]} <= set(p.keep)
    assert old_label in p.drop and ts[-30] in p.keep
    assert reasons_of(p, "daily") == newest_per_bucket(ts, cut - 1, lambda t: t // D)


def test_timed_commits_whole_or_point():
    # timed commits of one hour each, the last three hours of them
    commits = [(NOW - k * H, NOW - (k + 1) * H) for k in range(47, -1, -1)]
    p = plan(commits, {}, [], Policy(keep_all=d("3h"), hourly=d("2d")), NOW, UTC)
    whole = {t for t, k in p.keep.items() if k.whole}
    assert whole == {NOW - 2 * H, NOW - H, NOW}  # newer than the cutoff: keep-all
    assert len(p.keep) == 48 and NOW - 5 * H in p.keep and not p.keep[NOW - 5 * H].whole
    # max_age cuts through the interior of a timed commit: kept, as a point
    p = plan(commits, {}, [], Policy(keep_all=d("3d"), max_age=d("90m")), NOW, UTC)
    assert sorted(p.keep) == [NOW - H, NOW] and not p.keep[NOW - H].whole
    assert p.keep[NOW].whole


def test_cap_order_finest_oldest_first():
    commits = history(days=3, step_s=1800)
    ts = [t for t, _ in commits]
    pol = Policy(keep_all=d("2h"), hourly=d("6h"), daily=d("3d"))
    labels = {"x": ts[0]}
    hold = Hold("h", ts[5], ts[5])
    p = plan(commits, labels, [hold], pol, NOW, UTC)
    order = p.cap_order
    assert ts[-1] not in order and ts[5] not in order
    assert set(order) == set(p.keep) - {ts[-1], ts[5]}

    def rank(t):
        rs = p.keep[t].reasons
        return max(("keep-all", "hourly", "daily").index(r) if not r.startswith("label")
                   else 3 for r in rs if r != "latest")
    assert [rank(t) for t in order] == sorted(rank(t) for t in order)
    for r in range(4):
        group = [t for t in order if rank(t) == r]
        assert group == sorted(group) and group  # oldest first within each
    assert order[-1] == ts[0]  # the label's commit goes last
    only_keep_all = [t for t in order if p.keep[t].reasons == ("keep-all",)]
    assert order[:len(only_keep_all)] == only_keep_all


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Kathmandu", "Australia/Lord_Howe",
                                  "America/Santiago", "UTC"])
def test_buckets_across_changes_of_offset(zone):
    """Commits every 13 minutes for 400 days (every change of summer time in a year, the
    half-hour one of Lord Howe included): each bucket tier keeps exactly the newest
    commit of each local hour, day, week, month, year, as datetime says per commit."""
    tz = ZoneInfo(zone)
    now = at("2026-06-15T12:00:00+00:00")
    ts = list(range(now - 400 * D, now + 1, 13 * 60 * NS))
    pol = Policy(hourly=d("400d"), daily=d("400d"), weekly=d("400d"), monthly=d("400d"),
                 yearly=d("400d"))
    p = plan([(t, None) for t in ts], {}, [], pol, now, tz)

    walls = {t: datetime.fromtimestamp(t // NS, tz) for t in ts}
    wall = walls.__getitem__
    cut = d("400d").before(now, tz)
    assert reasons_of(p, "hourly") == newest_per_bucket(
        ts, cut, lambda t: (wall(t).date(), wall(t).hour))
    assert reasons_of(p, "daily") == newest_per_bucket(ts, cut, lambda t: wall(t).date())
    assert reasons_of(p, "weekly") == newest_per_bucket(
        ts, cut, lambda t: wall(t).isocalendar()[:2])
    assert reasons_of(p, "monthly") == newest_per_bucket(
        ts, cut, lambda t: (wall(t).year, wall(t).month))
    assert reasons_of(p, "yearly") == newest_per_bucket(ts, cut, lambda t: wall(t).year)


# --- what every plan keeps, whatever the history (hypothesis) ------------------------
SPANS = [None, d("30m"), d("6h"), d("2d"), d("1w"), d("1M")]


@st.composite
def histories(draw):
    """(commits, labels, holds, policy): up to 80 commits, some timed, over weeks."""
    gaps = draw(st.lists(st.integers(1, 18 * H), min_size=1, max_size=80))
    timed = draw(st.lists(st.booleans(), min_size=len(gaps), max_size=len(gaps)))
    commits, t, prev = [], NOW - sum(gaps), 0
    for gap, is_timed in zip(gaps, timed, strict=True):
        t += gap
        commits.append((t, prev if is_timed and prev else None))
        prev = t
    first = commits[0][0] - 2 * H
    instant = st.integers(first, NOW)
    labels = draw(st.dictionaries(st.sampled_from("abcde"), instant, max_size=4))
    holds = []
    for k, (a, b) in enumerate(draw(st.lists(st.tuples(instant, instant), max_size=3))):
        until = draw(st.sampled_from([None, NOW - 1, NOW + 1]))
        holds.append(Hold(f"h{k}", min(a, b), max(a, b), until_ns=until))
    policy = draw(st.none() | st.builds(
        Policy, **{f: st.sampled_from(SPANS) for f in (*TIERS, "max_age")},
        keep_labels=st.booleans()))
    return commits, labels, holds, policy


def f_before_cut(commits, t, p) -> bool:
    """True if timed commit ``t``'s interior starts before the max-age cutoff (it is
    then kept as a point)."""
    f = dict(commits)[t]
    return p.max_age_cutoff is not None and f < p.max_age_cutoff


@settings(max_examples=300, deadline=None)
@given(histories())
def test_every_plan_keeps_what_it_must(h):
    commits, labels, holds, policy = h
    p = plan(commits, labels, holds, policy, NOW, UTC)
    ts = [t for t, _ in commits]
    timed = {t for t, f in commits if f is not None}
    assert sorted(set(p.keep) | set(p.drop)) == ts and not set(p.keep) & set(p.drop)
    assert p.drop == sorted(p.drop) and ts[-1] in p.keep
    held = set()
    for hold in holds:
        mine = {t for t, k in p.keep.items() if f"hold:{hold.id}" in k.reasons}
        if not hold.active(NOW):
            assert not mine
            continue
        want = {t for t in ts if hold.from_ns <= t <= hold.to_ns}
        before = [t for t in ts if t <= hold.from_ns]
        want |= set(before[-1:])
        assert want <= mine
        for t, f in commits:  # a timed commit whose interior overlaps the range: whole
            if f is not None and f < hold.to_ns and t > hold.from_ns:
                assert p.keep[t].whole
        held |= mine
    assert all(not k.whole for t, k in p.keep.items() if t not in timed)
    if policy is None:
        assert p.drop == []
    if p.max_age_cutoff is not None:
        assert all(t >= p.max_age_cutoff or t in held or t == ts[-1] for t in p.keep)
    if policy is None or policy.keep_labels:
        for at_ in labels.values():
            shown = [t for t in ts if t <= at_][-1:]
            for t in shown:
                assert t in p.keep or t < (p.max_age_cutoff or 0)
            inside = [t for t, f in commits if f is not None and f < at_ < t]
            for t in inside:  # the label shows an instant of its interior: whole
                if t in p.keep:
                    assert p.keep[t].whole or f_before_cut(commits, t, p)
                else:
                    assert t < (p.max_age_cutoff or 0)
    assert sorted(p.cap_order) == sorted(set(p.keep) - held - {ts[-1]})
    # a hold never makes the plan keep less
    without = plan(commits, labels, [], policy, NOW, UTC)
    assert set(without.keep) <= set(p.keep)
