"""The repository config: options checked at ``init``, configs checked when opened, and
other tools' repositories recognised for what they are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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


def test_a_borg_repository_is_named(anytime, tmp_path):
    borg = shutil.which("borg")
    if borg is None:
        pytest.fail("borg is not installed (apt-get install borgbackup)")
    repo = tmp_path / "borgrepo"
    subprocess.run([borg, "init", "-e", "none", str(repo)], check=True, capture_output=True,
                   env=dict(os.environ, BORG_BASE_DIR=str(tmp_path / "borgbase")))
    for cmd in (["log", "/etc"], ["check"], ["snapshot", str(tmp_path)]):
        r = anytime(*cmd, env={"ANYTIME_REPO": str(repo)})
        assert r.returncode == 10, r.stderr
        assert f"{repo} is a borg repository, not an anytime one; use borg".encode() in r.stderr
        assert b"JSON" not in r.stderr and b"utf-8" not in r.stderr.lower()


def test_a_restic_repository_is_named(anytime, tmp_path):
    restic = shutil.which("restic")
    if restic is None:
        pytest.fail("restic is not installed (apt-get install restic)")
    repo = tmp_path / "resticrepo"
    subprocess.run([restic, "init", "-r", str(repo)], check=True, capture_output=True,
                   env=dict(os.environ, RESTIC_PASSWORD="pw",
                            RESTIC_CACHE_DIR=str(tmp_path / "cache")))
    r = anytime("ls", "/etc", env={"ANYTIME_REPO": str(repo)})
    assert r.returncode == 10, r.stderr
    assert f"{repo} is a restic repository, not an anytime one; use restic".encode() in r.stderr


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"{not json", b"[1, 2]", b"{}"])
def test_a_damaged_config_is_told_as_such(anytime, repo_dir, content):
    anytime("init", check=0)
    (repo_dir / "config").write_bytes(content)
    r = anytime("check")
    assert r.returncode == 10, r.stderr
    assert b"is not an anytime repository config: it is damaged" in r.stderr
    assert str(repo_dir / "config").encode() in r.stderr
    assert b"anytime check" not in r.stderr


def test_a_damaged_index_gives_advice_that_is_not_check_itself(anytime, repo_dir, src_dir):
    anytime("init", check=0)
    (src_dir / "f").write_text("x")
    anytime("snapshot", src_dir, check=0)
    data = repo_dir / "index" / "data.mdb"
    data.write_bytes(os.urandom(data.stat().st_size))
    for cmd in (["check"], ["log", str(src_dir)]):
        r = anytime(*cmd)
        assert r.returncode == 10, r.stderr
        assert b"index" in r.stderr and b"damaged" in r.stderr
        assert b"run 'anytime check'" not in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as another user")
def test_another_users_repository_names_its_owner(anytime, src_dir):
    base = Path(tempfile.mkdtemp(prefix="anytime-owner-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        repo = base / "repo"
        env = {"ANYTIME_REPO": str(repo)}
        anytime("init", env=env, check=0)
        (src_dir / "f").write_text("x")
        anytime("snapshot", src_dir, env=env, check=0)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        for cmd in (["log", str(src_dir)], ["check"]):
            r = anytime(*cmd, env=env, prefix=nobody)
            assert r.returncode == 10, r.stderr
            assert b"permission denied" in r.stderr.lower() and b"root (uid 0)" in r.stderr
            assert b"anytime check" not in r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_bad_test_knob_is_a_usage_error(anytime, repo_dir):
    """The CLI's test knobs (tools/cmd_repo.py KNOBS) are checked, not half-used."""
    anytime("init", check=0)
    r = anytime("volumes", env={"ANYTIME_STAGE_RECORDS": "lots"})
    assert r.returncode == 2 and b"$ANYTIME_STAGE_RECORDS is 'lots'" in r.stderr, r.stderr
    assert b"Traceback" not in r.stderr
