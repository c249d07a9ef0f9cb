"""Several processes share one repository (a mount, a snapshot, ``ls``): each keeps the
index marked as in use for as long as it has it open, so a process that opens it beside
them never takes it for unused and resets their reader slots."""

from __future__ import annotations

import os
import subprocess
import sys

from anytime.store.repo import Repository

READERS = """
import sys
from anytime.store.repo import Repository
rep = Repository.open(sys.argv[1])
print(rep.env.readers())
rep.close()
"""


def test_a_second_process_sees_the_first_ones_reader(anytime, repo_dir):
    anytime("init", check=0)
    with Repository.open(str(repo_dir)) as rep, rep.env.begin():  # holds a reader slot
        out = subprocess.run([sys.executable, "-c", READERS, str(repo_dir)],
                             capture_output=True, check=True).stdout.decode()
        # the slot survives the other process's open and close: lookups still work
        assert rep.env.readers().split().count(str(os.getpid())) == 1
    pids = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert str(os.getpid()) in pids, out
