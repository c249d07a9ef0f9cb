"""What a scan leaves out: exclude patterns and mount points it does not cross.

Patterns follow restic's and borg's shell-style rules, matched against each entry's
absolute path on the source filesystem (``/srv/data/build/x.o``):

  ``*``, ``?``, ``[abc]``, ``[!abc]``   glob within one path component (never across ``/``)
  ``**``                             any number of whole components, none included
  a pattern without ``/``            matches a name anywhere in the tree (``*.o``,
                                     ``node_modules``)
  a pattern with ``/`` inside        matches the end of a path at a component boundary
                                     (``cache/*.tmp`` excludes ``/a/cache/x.tmp``)
  a pattern starting with ``/``      an absolute path from the filesystem root
                                     (``/srv/data/tmp``, ``/home/*/.cache``)
  ``\\``                              makes the next character literal

A trailing ``/`` is ignored. An excluded directory is not walked: nothing under it is
captured. Negation (``!``) is not supported; such a pattern is refused rather than read
as a name. A pattern file holds one pattern a line; blank lines and lines whose first
non-blank character is ``#`` are ignored, and surrounding blanks are removed.

An entry captured before and excluded now is recorded as deleted by the commit that
excludes it, as restic's snapshots show the tree as captured with that run's excludes;
earlier instants keep it.

Mount points: ``mounts_of_type`` reads ``/proc/self/mountinfo``, so a scan can skip
anytime's own time-travel mounts (fstype ``fuse.anytime``) wherever they sit in the
tree, and with ``--one-file-system`` any other filesystem too.
"""

from __future__ import annotations

import os
import re

from anytime.store.errors import UsageError
from anytime.store.globs import matcher

#: The filesystem type (``fuse.`` + subtype) of anytime's own mounts in mountinfo.
ANYTIME_FSTYPE = "fuse.anytime"


class Excluder:
    """Compiled exclude patterns: ``excluded(name, abspath)`` for one directory entry.

    The matching itself is store/globs.py's, shared with retention policies' path
    rules."""

    def __init__(self, patterns: list[str]):
        self.patterns = list(patterns)
        raws = []
        for p in self.patterns:
            raw = p.rstrip("/")
            if not raw:
                raise UsageError(f"exclude pattern {p!r} would exclude everything; give a "
                                 f"name or a path inside the tree")
            if raw.startswith("!"):
                raise UsageError(f"exclude pattern {p!r}: negation ('!') is not supported; "
                                 f"write '\\!' for a name that starts with '!'")
            raws.append(os.fsencode(raw))
        self.excluded = matcher(raws)  # excluded(name, abspath) -> bool


def read_pattern_file(path: str) -> list[str]:
    """The patterns of an exclude file (format in this module's docstring)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read the exclude file {path}: {e.strerror}") from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def _unescape(field: str) -> bytes:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]),
                  os.fsencode(field))


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[bytes, str]]:
    """(mount point, filesystem type) of every mount; empty where unknown."""
    found = []
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split(" ")
                if len(fields) > 4:
                    found.append((_unescape(fields[4]), right.split(" ", 1)[0]))
    except OSError:
        pass
    return found


def mounts_of_type(fstype: str, mountinfo: str = "/proc/self/mountinfo") -> set[bytes]:
    """Mount points (bytes) of filesystems of type ``fstype``; empty where unknown."""
    return {m for m, t in mounts(mountinfo) if t == fstype}


def mounts_under(root: bytes) -> list[tuple[bytes, str]]:
    """(mount point, filesystem type) of the mounts strictly inside directory ``root``."""
    inside = root.rstrip(b"/") + b"/"
    return sorted((m, t) for m, t in mounts() if m.startswith(inside))
