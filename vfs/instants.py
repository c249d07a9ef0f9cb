"""Instants as people type them, and as anytime prints them.

Accepted forms (see :func:`parse_instant`):
  ``now``; ``@EPOCH_SECONDS`` (fractions allowed); ISO 8601 with or without a zone and
  with up to nanosecond fractions (``2026-11-24T10:03:17.25+01:00``, ``2026-11-24 10:03``,
  ``2026-11-24``; no zone means local time), also in ISO 8601's basic form without
  separators (``20261124T100317.25Z``, what a mount lists on Windows, where ``:`` cannot
  be in a file name); relative (``10 minutes ago``, ``-2h``,
  ``yesterday 17:00``, ``today 9:30``); a label name (looked up by the caller's
  ``labels`` function).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from anytime.store import clock
from anytime.store.errors import InstantError

# datetime is imported where a typed date is parsed, not here: printing instants (ls,
# log) and reading 'now' need only the time module, already loaded.

NS = 1_000_000_000
_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800,
          "weeks": 604800}
# Patterns as text, compiled by re on first use (and cached there): compiling them all
# at import took longer than the rest of this module, for every command that only
# prints instants or reads 'now'.
_REL_AGO = r"^(\d+(?:\.\d+)?)\s*([a-z]+)\s+ago$"
_REL_MINUS = r"^-(\d+(?:\.\d+)?)\s*([a-z]+)$"
_DAYWORD = r"^(today|yesterday)(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$"
_ISO = (r"(?i)^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
        r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?$")
_ISO_BASIC = (r"(?i)^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(?:(\d{2})(?:[.,](\d{1,9}))?)?"
              r"(Z|[+-]\d{2}(?:\d{2})?)?$")


def _to_ns(dt) -> int:
    """A ``datetime`` as ns since the epoch (no zone: local time)."""
    from datetime import UTC, datetime

    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    delta = dt - epoch
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def _zone(text: str | None):
    from datetime import UTC, timedelta, timezone

    if not text:
        return None
    if text.upper() == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_instant(text: str, labels: Callable[[str], int | None] | None = None,
                  now: int | None = None) -> int:
    """The instant (ns since the epoch) that ``text`` names; raises InstantError."""
    raw = text.strip()
    s = raw.lower()
    now = clock.now_ns() if now is None else now
    if s in ("now", "latest"):
        return now
    if s.startswith("@"):
        try:
            whole, _, frac = s[1:].partition(".")
            return int(whole) * NS + int((frac + "000000000")[:9] or 0)
        except ValueError:
            raise InstantError(f"'{raw}' is not @EPOCH_SECONDS") from None
    m = re.match(_REL_AGO, s) or re.match(_REL_MINUS, s)
    if m and m.group(2) in _UNITS:
        return now - int(float(m.group(1)) * _UNITS[m.group(2)] * NS)
    from datetime import datetime, timedelta

    m = re.match(_DAYWORD, s)
    if m:
        today = datetime.fromtimestamp(now / NS).astimezone()
        day = today.date() - timedelta(days=1 if m.group(1) == "yesterday" else 0)
        hh, mm, ss = int(m.group(2) or 0), int(m.group(3) or 0), int(m.group(4) or 0)
        if hh > 23 or mm > 59 or ss > 59:
            raise InstantError(f"'{raw}' has an impossible time of day")
        return _to_ns(datetime(day.year, day.month, day.day, hh, mm, ss))
    m = re.match(_ISO, raw)
    b = None if m else re.match(_ISO_BASIC, raw)
    if b:
        y, mo, d, hh, mi, ss, frac, zone = b.groups()
        date = f"{y}-{mo}-{d}"
    if m:
        date, hh, mi, ss, frac, zone = m.groups()
    if m or b:
        try:
            dt = datetime.fromisoformat(date).replace(hour=int(hh or 0), minute=int(mi or 0),
                                                      second=int(ss or 0),
                                                      tzinfo=_zone(zone))
        except ValueError as e:
            raise InstantError(f"'{raw}' is not a valid date and time: {e}") from None
        return _to_ns(dt) + int(((frac or "") + "000000000")[:9])
    if labels is not None:
        t = labels(raw)
        if t is not None:
            return t
    raise InstantError(
        f"cannot understand the instant '{raw}'; use ISO 8601 (2026-11-24T10:03:17), "
        f"'now', '10 minutes ago', '-2h', 'yesterday 17:00', '@EPOCH' or a label name")


def is_relative(text: str) -> bool:
    """True if ``text`` names an instant that moves with the clock (``now``, ``10 minutes
    ago``, ``-2h``, ``today 9:30``, ``yesterday``): what parse_instant reads from ``now``."""
    s = text.strip().lower()
    return (s in ("now", "latest") or bool(re.match(_DAYWORD, s))
            or any(m is not None and m.group(2) in _UNITS
                   for m in (re.match(_REL_AGO, s), re.match(_REL_MINUS, s))))


def format_instant(ns: int, utc: bool = False, basic: bool = False) -> str:
    """ISO 8601 with the zone offset and as many fraction digits as needed (up to 9);
    ``basic``: without separators (``20261124T100317.25Z``: no ``:``, for Windows names)."""
    secs, frac = divmod(ns, NS)
    tm = time.gmtime(secs) if utc else time.localtime(secs)
    base = time.strftime("%Y%m%dT%H%M%S" if basic else "%Y-%m-%dT%H:%M:%S", tm)
    fs = f".{frac:09d}".rstrip("0") if frac else ""
    off = _offset(tm.tm_gmtoff)
    zone = "Z" if utc else (off if basic else f"{off[:3]}:{off[3:]}")
    return base + (fs if fs != "." else "") + zone


def _offset(seconds: int) -> str:
    """A UTC offset as datetime's ``%z`` writes it: ``+HHMM``, ``+HHMMSS`` if it has
    seconds (local mean time before standard zones)."""
    sign = "-" if seconds < 0 else "+"
    hh, rest = divmod(abs(seconds), 3600)
    mm, ss = divmod(rest, 60)
    return f"{sign}{hh:02d}{mm:02d}" + (f"{ss:02d}" if ss else "")
