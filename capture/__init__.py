"""anytime.capture: sources of change turned into commits. Depends on anytime.store only.

Modes (this release has ``scan``): scan walks a tree and records what differs from the
stat cache (the previous versions in the index), leaving out what its excludes name and
the mounts it does not cross (capture/excludes.py). Each call of :func:`snapshot` makes
exactly one commit, or none if it fails (packs it wrote are reclaimed later). An
interrupted one (KeyboardInterrupt) commits nothing either, but keeps the blocks it
stored, indexed, and raises :class:`Interrupted` saying how many: the next snapshot
finds them instead of storing them again.
"""

from __future__ import annotations

import os
import stat

from anytime.store import clock
from anytime.store.errors import AnytimeError, PathNotFound, UsageError
from anytime.store.volumes import volume_for_source

from .excludes import Excluder, read_pattern_file
from .scan import Interrupted, Scanner, ScanReport

__all__ = ["snapshot", "Interrupted", "ScanReport", "read_pattern_file"]


def snapshot(repo, path: str, name: str | None = None, label: str | None = None,
             progress=None, workers: int | None = None, excludes: list[str] = (),
             one_file_system: bool = False) -> ScanReport:
    """Capture the tree at ``path`` as one commit of its volume (created on first use).

    ``excludes``: patterns of entries to leave out (syntax in capture/excludes.py);
    ``one_file_system``: do not cross into other filesystems mounted inside the tree.
    anytime's own mounts inside the tree are never captured."""
    excluder = Excluder(excludes) if excludes else None  # bad patterns: before any change
    source = os.path.abspath(path)
    try:  # lstat, as the scan does: checked here, before a volume is created
        s = os.lstat(source)
    except FileNotFoundError:
        raise PathNotFound(f"{source} does not exist; snapshot takes an existing directory "
                           f"tree") from None
    except OSError as e:
        raise AnytimeError(f"cannot read {source}: {e.strerror}") from None
    if stat.S_ISLNK(s.st_mode) and os.path.isdir(source):
        raise UsageError(f"{source} is a symbolic link; snapshot the directory it points "
                         f"to ({os.path.realpath(source)})")
    if not stat.S_ISDIR(s.st_mode):
        raise UsageError(f"{source} is not a directory; snapshot takes a directory tree "
                         f"(to protect one file, snapshot the directory that holds it)")
    with repo.writer_lock():
        vol = volume_for_source(repo, source, name, clock.now_ns())
        scanner = Scanner(repo, vol, os.fsencode(source), progress=progress, workers=workers,
                          excluder=excluder, one_file_system=one_file_system)
        info = {"kind": "scan", "source": source, "started_ns": clock.now_ns()}
        return scanner.run(info, label=label)
