"""The capturing commands' C heap: fewer malloc arenas than glibc's default.

glibc gives each thread that meets a busy arena one of its own (up to eight per core),
and an arena keeps what it once held. A capture's worker threads allocate and free
megabytes outside Python's allocator (file data, zstd contexts and frames), so each
kept an arena of its own full: a stdlib first capture peaked at 97-109 MiB of private
memory with four threads, 80-84 MiB with one arena (docs/performance.md "First snapshot
of small files"). The capturing commands own their process, so they set it there;
nothing else in anytime changes it.
"""

from __future__ import annotations

import sys

#: Arenas a capturing process may use (glibc's ``M_ARENA_MAX``).
CAPTURE_ARENAS = 1
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(n: int = CAPTURE_ARENAS) -> bool:
    """Make glibc's malloc use at most ``n`` arenas from now on; False where it cannot
    (not glibc, or mallopt refused)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_ARENA_MAX, n) == 1
