"""Instants as people type them (parse_instant) and as anytime prints them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anytime.store import clock
from anytime.store.errors import InstantError
from anytime.vfs.instants import format_instant, is_relative, parse_instant

NS = 1_000_000_000
#: 2026-11-24T12:00:00Z, a Tuesday; the "now" of the relative forms below.
NOW = int(datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()) * NS + 123


def utc(*args, ns=0):
    return int(datetime(*args, tzinfo=UTC).timestamp()) * NS + ns


@pytest.mark.parametrize("text,expected", [
    ("2026-11-24T10:03:17.25+01:00", utc(2026, 11, 24, 9, 3, 17, ns=250_000_000)),
    ("2026-11-24T10:03:17Z", utc(2026, 11, 24, 10, 3, 17)),
    ("2026-11-24t10:03:17z", utc(2026, 11, 24, 10, 3, 17)),
    ("2026-11-24T10:03:17.123456789Z", utc(2026, 11, 24, 10, 3, 17, ns=123_456_789)),
    ("2026-11-24T10:03:17.000000001Z", utc(2026, 11, 24, 10, 3, 17, ns=1)),
    ("2026-11-24T10:03:17,5Z", utc(2026, 11, 24, 10, 3, 17, ns=500_000_000)),
    ("2026-11-24T10:03:17-05:30", utc(2026, 11, 24, 15, 33, 17)),
    ("2026-11-24T10:03:17+0200", utc(2026, 11, 24, 8, 3, 17)),
    ("2026-11-24T10:03:17+02", utc(2026, 11, 24, 8, 3, 17)),
    ("2026-11-24 10:03", utc(2026, 11, 24, 10, 3)),
    ("2026-11-24T10:03:17", utc(2026, 11, 24, 10, 3, 17)),  # no zone: local (TZ=UTC)
    ("2026-11-24", utc(2026, 11, 24)),
    ("  2026-11-24  ", utc(2026, 11, 24)),
    # ISO 8601 basic form (no separators): how a mount names instants on Windows
    ("20261124T100317.25Z", utc(2026, 11, 24, 10, 3, 17, ns=250_000_000)),
    ("20261124T100317+0100", utc(2026, 11, 24, 9, 3, 17)),
    ("20261124T1003Z", utc(2026, 11, 24, 10, 3)),
])
def test_iso_8601(text, expected):
    assert parse_instant(text, now=NOW) == expected


def test_iso_without_zone_is_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        assert parse_instant("2026-11-24T10:03:17") == utc(2026, 11, 24, 15, 3, 17)
        assert parse_instant("2026-11-24T10:03:17Z") == utc(2026, 11, 24, 10, 3, 17)
    finally:
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()


@pytest.mark.parametrize("text,expected", [
    ("now", NOW), ("NOW", NOW),
    ("10 minutes ago", NOW - 600 * NS), ("1 minute ago", NOW - 60 * NS),
    ("90s ago", NOW - 90 * NS), ("1.5 hours ago", NOW - 5400 * NS),
    ("2 days ago", NOW - 2 * 86400 * NS), ("1 week ago", NOW - 7 * 86400 * NS),
    ("-2h", NOW - 7200 * NS), ("-30m", NOW - 1800 * NS), ("-45 seconds", NOW - 45 * NS),
    ("yesterday 17:00", utc(2026, 11, 23, 17, 0)),
    ("yesterday", utc(2026, 11, 23)),
    ("today 9:30", utc(2026, 11, 24, 9, 30)),
    ("today 09:30:15", utc(2026, 11, 24, 9, 30, 15)),
])
def test_relative(text, expected):
    assert parse_instant(text, now=NOW) == expected


@pytest.mark.parametrize("text,moves", [
    ("now", True), ("10 minutes ago", True), ("-2h", True), ("today 9:30", True),
    ("yesterday", True), ("Yesterday 17:00", True), ("2026-11-24T10:03:17Z", False),
    ("20261124T100317Z", False), ("@1764000000", False), ("a-label", False),
])
def test_is_relative(text, moves):
    """What moves with the clock: a mount must not keep such a name's content."""
    assert is_relative(text) is moves


def test_now_reads_the_one_clock():
    clock.set_clock(lambda: 42 * NS + 7)
    assert parse_instant("now") == 42 * NS + 7
    assert parse_instant("-1s") == 41 * NS + 7


@pytest.mark.parametrize("text,expected", [
    ("@0", 0), ("@1700000000", 1_700_000_000 * NS), ("@1700000000.5", 1_700_000_000 * NS + 5 * 10**8),
    ("@1700000000.000000001", 1_700_000_000 * NS + 1),
    ("@1700000000.123456789", 1_700_000_000 * NS + 123_456_789),
])
def test_epoch(text, expected):
    assert parse_instant(text) == expected


def test_label_lookup():
    labels = {"before-upgrade": 5 * NS, "release 1.0": 7 * NS}
    assert parse_instant("before-upgrade", labels=labels.get) == 5 * NS
    assert parse_instant("release 1.0", labels=labels.get) == 7 * NS
    with pytest.raises(InstantError):
        parse_instant("no-such-label", labels=labels.get)


@pytest.mark.parametrize("text", [
    "", "garbage", "10 parsecs ago", "@abc", "@1.2.3", "2026-13-01", "2026-02-30",
    "2026-11-24T25:00", "yesterday 25:00", "today 12:61", "2026/11/24", "-h",
    "2026-11-24T10:03:17.1234567890Z",
])
def test_garbage_is_an_instant_error(text):
    with pytest.raises(InstantError) as ei:
        parse_instant(text, labels=lambda name: None, now=NOW)
    assert ei.value.exit_code == 14
    assert str(ei.value)  # a plain message, not an empty one


# 0 .. 9998-12-31T23:59:59.999999999Z (a year of margin: local time may be in year 10000)
ns_instants = st.integers(0, utc(9998, 12, 31, 23, 59, 59) + NS - 1)


@given(ns_instants)
def test_format_round_trip(t):
    assert parse_instant(format_instant(t)) == t
    assert parse_instant(format_instant(t, utc=True)) == t
    basic = format_instant(t, utc=True, basic=True)
    assert parse_instant(basic) == t and ":" not in basic and "-" not in basic
    assert parse_instant(format_instant(t, basic=True)) == t


@given(ns_instants)
def test_format_round_trip_in_another_zone(t):
    # a zone with an offset and daylight saving time: the printed offset is exact
    import os

    old = os.environ.get("TZ")
    os.environ["TZ"] = "CET-1CEST,M3.5.0,M10.5.0/3"
    time.tzset()
    try:
        text = format_instant(t)
        assert parse_instant(text) == t, text
    finally:
        os.environ["TZ"] = old or "UTC"
        time.tzset()


@pytest.mark.parametrize("zone", ["NPT-5:45", "NST+3:30NDT,M3.2.0,M11.1.0",
                                  "<+1245>-12:45<+1345>,M9.5.0/2:45,M4.1.0/3:45",
                                  "LMT-0:19:32"])
@given(t=ns_instants)
def test_format_agrees_with_datetime(zone, t):
    """format_instant (time.localtime, so ls and log need not import datetime) prints
    what datetime prints, in zones of odd offsets, with daylight saving time, and with
    an offset in seconds."""
    import os

    old = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        dt = datetime.fromtimestamp(t // NS, tz=UTC).astimezone()
        frac = f".{t % NS:09d}".rstrip("0") if t % NS else ""
        off = dt.strftime("%z")
        assert format_instant(t) == \
            dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + f"{off[:3]}:{off[3:]}"
        assert format_instant(t, basic=True) == dt.strftime("%Y%m%dT%H%M%S") + frac + off
    finally:
        os.environ["TZ"] = old or "UTC"
        time.tzset()


def test_format_shape_basic():
    t = utc(2026, 11, 24, 10, 3, 17, ns=250_000_000)
    assert format_instant(t, utc=True, basic=True) == "20261124T100317.25Z"
    assert format_instant(utc(2026, 11, 24, 10, 3, 17), basic=True) == "20261124T100317+0000"


def test_format_shape():
    assert format_instant(utc(2026, 11, 24, 10, 3, 17, ns=250_000_000), utc=True) == \
        "2026-11-24T10:03:17.25Z"
    assert format_instant(utc(2026, 11, 24, 10, 3, 17)) == "2026-11-24T10:03:17+00:00"
    assert format_instant(utc(2026, 11, 24, 10, 3, 17, ns=1), utc=True) == \
        "2026-11-24T10:03:17.000000001Z"
