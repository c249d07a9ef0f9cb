"""A one-line progress display on stderr, shown only on a terminal.

Totals, a percentage and an ETA appear once the size of the work is known: for a
snapshot, the entries the volume's previous commit counted (``expect_entries``); for
:meth:`Progress.bytes_done`, the total its caller passes. The ETA assumes the rate so
far holds.
"""

from __future__ import annotations

import sys

from anytime.store import clock

from .text import plural


def eta(elapsed: float, done: float, total: float) -> str:
    """``ETA m:ss`` (or ``h:mm:ss``) for the rest of ``total`` at the rate so far."""
    if done <= 0 or total <= done or elapsed <= 0:
        return ""
    left = int(elapsed * (total - done) / done + 0.5)
    h, rest = divmod(left, 3600)
    m, s = divmod(rest, 60)
    return f"ETA {h}:{m:02}:{s:02}" if h else f"ETA {m}:{s:02}"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Progress:
    def __init__(self, enabled: bool | None = None, stream=sys.stderr,
                 expect_entries: int = 0):
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        #: entries (files, dirs, others) the walk is expected to meet; 0: unknown
        self.expect_entries = expect_entries
        self._last = 0.0
        self._start: float | None = None
        self._shown = False

    def _due(self, final: bool = False) -> float | None:
        """The time now if a redraw is due (at most ten a second), else None."""
        t = clock.monotonic()
        if self._start is None:
            self._start = t
        if t - self._last < 0.1 and not final:
            return None
        self._last = t
        return t

    def _show(self, line: str) -> None:
        self.stream.write("\r" + line[:120].ljust(80))
        self.stream.flush()
        self._shown = True

    def update(self, report) -> None:
        """Redraw from a snapshot's ScanReport (its counts so far)."""
        if not self.enabled:
            return
        t = self._due()
        if t is None:
            return
        self._show(self.scan_line(report, t - self._start))

    def scan_line(self, report, elapsed: float) -> str:
        entries = report.files + report.dirs + getattr(report, "others", 0)
        total = self.expect_entries
        if total:
            pct = min(100.0 * entries / total, 99.9)
            head = f"{entries} of ~{plural(total, 'entry')} ({pct:.0f}%)"
        else:
            head = f"{plural(report.files, 'file')}, {plural(report.dirs, 'dir')}"
        tail = eta(elapsed, entries, total) if total else ""
        return (f"{head}, read {plural(report.files_read, 'file')} "
                f"({megabytes(report.bytes_read)}), {report.changed} changed"
                + (f", {tail}" if tail else ""))

    def bytes_done(self, done: int, total: int, what: str = "") -> None:
        if not self.enabled:
            return
        t = self._due(final=done >= total)
        if t is None:
            return
        self._show(self.bytes_line(done, total, what, t - self._start))

    @staticmethod
    def bytes_line(done: int, total: int, what: str, elapsed: float) -> str:
        pct = 100.0 * done / total if total else 100.0
        bar = "#" * int(pct / 5)
        left = eta(elapsed, done, total)
        return (f"[{bar:<20}] {pct:5.1f}% {done / 1e6:.1f}/{megabytes(total)}"
                + (f" {left}" if left else "") + (f" {what}" if what else ""))

    def warn(self, msg: str) -> None:
        self.clear()
        print(f"anytime: warning: {msg}", file=self.stream)

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._shown = False
