"""A repository is private to its owner: directories 0700, files 0600, whatever the
umask, for everything written later too; ``check`` warns when others can get in."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def world_dir():
    """A directory every user can enter (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="anytime-modes-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def modes_under(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_everything_in_a_repository_is_private(anytime, world_dir, src_dir, umask):
    repo = world_dir / "repo"
    env = {"ANYTIME_REPO": str(repo)}
    anytime("init", env=env, umask=umask, check=0)
    (src_dir / "secret").write_bytes(os.urandom(300_000))  # several packs (64 KiB target)
    anytime("snapshot", src_dir, env=env, umask=umask, check=0)
    (src_dir / "later").write_bytes(os.urandom(200_000))
    anytime("snapshot", src_dir, env=env, umask=umask, check=0)
    anytime("cat", src_dir / "secret", env=env, umask=umask, check=0)
    found = modes_under(repo)
    assert any(k.endswith(".pack") for k in found) and "index/lock.mdb" in found
    for path, mode in found.items():
        is_dir = (repo / path).is_dir()
        assert mode == (0o700 if is_dir else 0o600), f"{path}: {oct(mode)}"
    r = anytime("check", env=env, check=0)
    assert b"warning" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as another user")
def test_another_user_cannot_read_the_repository(anytime, world_dir, src_dir):
    repo = world_dir / "repo"
    env = {"ANYTIME_REPO": str(repo)}
    anytime("init", env=env, umask=0o022, check=0)
    (src_dir / "shadow").write_text("root:$6$secret\n")
    anytime("snapshot", src_dir, env=env, umask=0o022, check=0)
    pack = next(repo.glob("packs/*/*.pack"))
    for target in (repo / "config", pack, repo / "index" / "data.mdb"):
        r = subprocess.run([*NOBODY, "cat", str(target)], capture_output=True)
        assert r.returncode != 0 and b"Permission denied" in r.stderr, target
    r = anytime("cat", src_dir / "shadow", env=env, prefix=NOBODY)
    assert r.returncode != 0 and b"root:$6$secret" not in r.stdout


def test_check_warns_about_a_repository_others_can_read(anytime, repo_dir, src_dir):
    anytime("init", check=0)
    (src_dir / "a").write_text("x")
    anytime("snapshot", src_dir, check=0)
    os.chmod(repo_dir, 0o755)
    r = anytime("check", check=0)
    assert b"warning" in r.stderr and f"chmod -R go-rwx {repo_dir}".encode() in r.stderr
    assert b"unencrypted" in r.stderr
    report = json.loads(anytime("check", "--json", check=0).stdout)
    assert any("go-rwx" in w for w in report["warnings"])
    os.chmod(repo_dir, 0o700)
    assert b"warning" not in anytime("check", check=0).stderr
