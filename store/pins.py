"""Pins: instants that open readers show, which a prune must not thin away under them.

A mount at an instant T shows the view at T for as long as it is mounted, and the kernel
caches what it read (a past view never changes, I16). If a prune dropped the commit that
view reads while it is mounted, the files would change under the reader, half cached.
So a reader that shows past instants for long *pins* them, and a prune keeps every
pinned instant as it keeps a held one (store/retention.py: the newest commit at or
before it, and a timed commit around it whole) until the reader is gone.

Terms:
  pin file  ``run/pin-<pid>-<random>`` in the repository, one per reading process: lines
            ``<volume id> <instant>`` appended (each one ``write`` with ``O_APPEND``),
            and a shared ``flock`` on it held for the process's life. A pin file whose
            lock can be taken exclusively belongs to a process that is gone: a prune
            deletes it. Not part of the format: a lost pin file only lets a prune thin
            an instant a mount shows (its files may then change under it).
"""

from __future__ import annotations

import fcntl
import os

from . import modes
from .status import RUN_DIR

PREFIX = "pin-"


class Pins:
    """The pin file of this process for ``repo`` (made at the first :meth:`add`; best
    effort: a repository this process cannot write is not pinned)."""

    def __init__(self, repo):
        self.root = repo.root
        self._fd = -1
        self._pinned: set[tuple[int, int]] = set()

    def add(self, vol: int, instant: int) -> None:
        if (vol, instant) in self._pinned:
            return
        try:
            if self._fd < 0:
                d = os.path.join(self.root, RUN_DIR)
                modes.make_dir(d)
                name = f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
                fd = os.open(os.path.join(d, name),
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_SH)
                self._fd = fd
            os.write(self._fd, f"{vol} {instant}\n".encode())
        except OSError:
            return
        self._pinned.add((vol, instant))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def pinned(repo) -> dict[int, set[int]]:
    """Volume id -> the instants live readers pin; pin files of dead processes are
    deleted on the way."""
    d = os.path.join(repo.root, RUN_DIR)
    out: dict[int, set[int]] = {}
    try:
        names = [n for n in os.listdir(d) if n.startswith(PREFIX)]
    except OSError:
        return out
    for name in names:
        path = os.path.join(d, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # alive
                with os.fdopen(os.dup(fd), "rb") as f:
                    for line in f.read().splitlines():
                        parts = line.split()
                        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                            out.setdefault(int(parts[0]), set()).add(int(parts[1]))
                continue
            try:  # its process is gone
                os.unlink(path)
            except OSError:
                pass
        finally:
            os.close(fd)
    return out
