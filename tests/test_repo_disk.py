"""The repository's disk fills up during a snapshot: a plain error, nothing half-done."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture
def small_fs(loop_fs):
    return loop_fs(24)


def test_full_repository_disk(anytime, src_dir, small_fs):
    repo = small_fs / "repo"
    env = {"ANYTIME_REPO": str(repo)}
    anytime("init", check=0, env=env)
    (src_dir / "small.txt").write_text("first state\n")
    anytime("snapshot", src_dir, check=0, env=env)
    (src_dir / "small.txt").write_text("second state\n")
    (src_dir / "random.bin").write_bytes(os.urandom(40 << 20))  # cannot fit
    r = anytime("snapshot", src_dir, env=env)
    assert r.returncode == 15, r.stderr
    assert b"no space left" in r.stderr
    # the earlier commit is intact and readable, and no uncommitted pack stays behind
    assert anytime("cat", src_dir / "small.txt", check=0, env=env).stdout == b"first state\n"
    packs_after_failure = list(repo.glob("packs/*/*.pack"))
    os.unlink(src_dir / "random.bin")
    anytime("snapshot", src_dir, check=0, env=env)
    assert anytime("cat", src_dir / "small.txt", check=0, env=env).stdout == b"second state\n"
    assert len(list(repo.glob("packs/*/*.pack"))) >= len(packs_after_failure)
    usage = shutil.disk_usage(small_fs)
    assert usage.free > 10 << 20, "the failed snapshot's packs were removed"
