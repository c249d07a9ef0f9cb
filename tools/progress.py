"""A one-line progress display on stderr, shown only on a terminal."""

from __future__ import annotations

import sys

from anytime.store import clock


class Progress:
    def __init__(self, enabled: bool | None = None, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = False

    def update(self, report) -> None:
        if not self.enabled:
            return
        t = clock.monotonic()
        if t - self._last < 0.1:
            return
        self._last = t
        line = (f"\r{report.files} files, {report.dirs} dirs, read {report.files_read} "
                f"({report.bytes_read / 1e6:.1f} MB), {report.changed} changed")
        self.stream.write(line[:120].ljust(80))
        self.stream.flush()
        self._shown = True

    def bytes_done(self, done: int, total: int, what: str = "") -> None:
        if not self.enabled:
            return
        t = clock.monotonic()
        if t - self._last < 0.1 and done < total:
            return
        self._last = t
        pct = 100.0 * done / total if total else 100.0
        bar = "#" * int(pct / 5)
        self.stream.write(f"\r[{bar:<20}] {pct:5.1f}% {done / 1e6:.1f}/{total / 1e6:.1f} MB {what}"[:120])
        self.stream.flush()
        self._shown = True

    def warn(self, msg: str) -> None:
        self.clear()
        print(f"anytime: warning: {msg}", file=self.stream)

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._shown = False
