"""Keeping the index map out of a process's resident set.

LMDB reads the index through one shared, read-only mapping of ``index/data.mdb``. A
page fault on it maps not one page but also the neighbouring ones already in the page
cache (the kernel's fault-around, 16 pages by default; ``MADV_RANDOM`` does not stop
it), and they stay mapped. A capture that looks up a few thousand random block ids in
a large index would end with hundreds of MB resident: page cache shared with every
other reader, not memory the process holds, but it is what ``top`` and ``ru_maxrss``
show, and it would grow with the index.

:class:`MapTrimmer` unmaps those pages now and then with ``madvise(MADV_DONTNEED)``.
On a shared file mapping that drops only this process's page-table entries: the data
stays in the page cache, and the next access maps it again (a minor fault). Safe at
any moment, from any thread, inside a transaction too. Linux only; a no-op elsewhere.
"""

from __future__ import annotations

import os
import sys

MADV_DONTNEED = 4
#: Index accesses (lookups, puts) between two trims: a few MB mapped at most between
#: them; a trim costs about 10 us plus about 0.2 ms per 1,000 pages it unmaps.
TRIM_EVERY = 256


class MapTrimmer:
    """Unmaps this process's pages of the file at ``path`` every ``TRIM_EVERY`` accesses."""

    def __init__(self, path: str):
        self.path = os.path.realpath(path)
        self._count = 0
        self._addr: int | None = None  # start of the mapping, found on first use (0: none)
        self._madvise = None  # found on the first trim: ctypes would slow every start-up

    def touched(self, n: int = 1) -> None:
        """Count ``n`` index accesses; trim every ``TRIM_EVERY`` (the count is shared by
        threads without a lock: a lost increment only delays a trim)."""
        self._count += n
        if self._count >= TRIM_EVERY:
            self._count = 0
            self.trim()

    def trim(self) -> None:
        """Unmap the pages of the mapping that hold the file's current contents."""
        if self._madvise is None:
            self._madvise = _madvise() or False
        if not self._madvise:
            return
        if self._addr is None:
            self._addr = self._find()
        if not self._addr:
            return
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return
        self._madvise(self._addr, size, MADV_DONTNEED)

    def _find(self) -> int:
        """Start address of this process's mapping of ``path`` (0 if none)."""
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.rstrip("\n").split(maxsplit=5)
                    if len(parts) == 6 and parts[5] == self.path:
                        return int(parts[0].split("-")[0], 16)
        except OSError:
            pass
        return 0


def _madvise():
    """libc's ``madvise`` through ctypes (None where there is none to call)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn
