"""The capturing commands' malloc arenas (tools/malloc.py)."""

from __future__ import annotations

import subprocess
import sys

CHILD = r"""
import ctypes, sys, threading
from anytime.tools.malloc import limit_arenas
if sys.argv[1] == "limit":
    assert limit_arenas(1)
def work():
    held = [bytearray(300_000) for _ in range(3)]  # malloc'd by this thread
    del held
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.stderr.flush()
ctypes.CDLL(None).malloc_stats()  # glibc: one "Arena N:" paragraph per arena
"""


def arenas(mode: str) -> int:
    r = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True,
                       text=True, check=True)
    return sum(line.startswith("Arena ") for line in r.stderr.splitlines())


def test_limit_arenas_keeps_threads_in_one_arena():
    assert arenas("default") > 1  # a thread of its own, an arena of its own
    assert arenas("limit") == 1


def test_snapshot_limits_arenas(monkeypatch, tmp_path):
    """``anytime snapshot`` sets the limit before its workers start."""
    from anytime.tools import cli, malloc

    calls = []
    monkeypatch.setattr(malloc, "limit_arenas", lambda n=malloc.CAPTURE_ARENAS: calls.append(n))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    monkeypatch.setenv("ANYTIME_REPO", str(tmp_path / "r"))
    assert cli.main(["init"]) == 0
    assert cli.main(["snapshot", str(tmp_path / "src")]) == 0
    assert calls == [malloc.CAPTURE_ARENAS]
