"""The one clock: every read of the current time goes through here.

Instants are integers, nanoseconds since the Unix epoch (UTC). Tests replace the
clock with :func:`set_clock` to drive time; nothing else in the code base calls
``time.time`` or ``datetime.now`` (ruff's banned-api rule enforces it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

_now: Callable[[], int] = time.time_ns


def now_ns() -> int:
    """The current instant in nanoseconds since the epoch."""
    return _now()


def set_clock(fn: Callable[[], int] | None) -> None:
    """Replace the clock (``None`` restores the system clock)."""
    global _now
    _now = fn if fn is not None else time.time_ns


def file_time_ns() -> int:
    """The kernel's wall clock, the one it stamps file times with; never replaced.

    Only for comparing with ``st_mtime``/``st_ctime`` ("was this file changed a moment
    ago?"): a fake clock set for commit instants must not make every file look old or
    new. Instants of commits come from :func:`now_ns`.
    """
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def monotonic() -> float:
    """Seconds from a monotonic clock, for durations and timeouts only."""
    return time.monotonic()
