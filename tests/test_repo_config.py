"""The repository config: options checked at ``init``, configs checked when opened, and
other tools' repositories recognised for what they are."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("bad", ["-5", "0", "3", "1000", "6K", "32M", "1G", "x", ""])
def test_init_refuses_a_bad_block_size(anytime, repo_dir, bad):
    r = anytime("init", f"--block-size={bad}")
    assert r.returncode == 2, r.stderr
    assert b"power of two from 1K to 16M" in r.stderr or b"power of two from 1024" in r.stderr
    assert not (repo_dir / "config").exists(), "nothing is created"


def test_a_valid_block_size_keeps_content(anytime, repo_dir, src_dir):
    anytime("init", "--block-size", "4K", check=0)
    assert json.loads((repo_dir / "config").read_text())["block_size"] == 4096
    (src_dir / "f").write_bytes(b"abc" * 5000)
    anytime("snapshot", src_dir, check=0)
    assert anytime("cat", src_dir / "f", check=0).stdout == b"abc" * 5000


@pytest.mark.parametrize("bad", [-5, 0, 3, 1 << 30, "1M"])
def test_a_config_with_a_bad_block_size_is_refused(anytime, repo_dir, src_dir, bad):
    """A damaged config would make every later snapshot drop the content of every file:
    refused when opened, exit 10, naming the config."""
    anytime("init", check=0)
    cfg = json.loads((repo_dir / "config").read_text())
    cfg["block_size"] = bad
    (repo_dir / "config").write_text(json.dumps(cfg))
    (src_dir / "f").write_text("data")
    r = anytime("snapshot", src_dir)
    assert r.returncode == 10, r.stderr
    assert b"block size" in r.stderr and str(repo_dir / "config").encode() in r.stderr
    assert anytime("check").returncode == 10
