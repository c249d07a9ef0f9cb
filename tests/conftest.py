"""Fixtures shared by every test file.

Tiers: unit tests use the store API in-process (``Repository.init(repo_dir)``);
end-to-end tests drive the installed ``anytime`` command through the ``anytime``
fixture. Every test runs in a clean environment (:func:`clean_env`, autouse): no
``ANYTIME_*`` variable leaks in from the caller, ``HOME`` and ``XDG_DATA_HOME`` point
into a temporary directory (so the per-user default repository is never the real
one), ``TZ=UTC`` and ``ANYTIME_PACK_TARGET=65536`` so that even small test data spans
many pack files (in-process repositories get the same from :data:`TEST_OPTIONS`).

Reuse in other test files (``test_mount.py``, ...)::

    def test_something(anytime, repo_dir, src_dir):
        anytime("init", check=0)
        (src_dir / "f").write_bytes(b"x")
        anytime("snapshot", src_dir, check=0)
        assert anytime("cat", src_dir / "f").stdout == b"x"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from anytime.store import clock
from anytime.store.options import StoreOptions

#: Pack target forced on every test: small data still spans many packs.
TEST_PACK_TARGET = 65536
#: Store options of repositories made in-process (the store reads no environment;
#: the CLI takes ``ANYTIME_PACK_TARGET`` from it, tools/cmd_repo.py).
TEST_OPTIONS = StoreOptions(pack_target=TEST_PACK_TARGET)


def anytime_command() -> str:
    """The installed ``anytime`` command (on PATH, else next to this interpreter)."""
    found = shutil.which("anytime")
    if found:
        return found
    sibling = Path(sys.executable).parent / "anytime"
    if sibling.exists():
        return str(sibling)
    pytest.fail("the 'anytime' command is not installed; run: .venv/bin/pip install -e .")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path_factory):
    """A hermetic environment for every test; also restores the real clock afterwards."""
    for name in list(os.environ):
        if name.startswith("ANYTIME_"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("ANYTIME_PACK_TARGET", str(TEST_PACK_TARGET))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    clock.set_clock(None)


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    """Where the test's repository lives (not created: ``init`` wants a new directory)."""
    return tmp_path / "repo"


@pytest.fixture
def src_dir(tmp_path) -> Path:
    """An empty directory for the tree a test protects."""
    d = tmp_path / "src"
    d.mkdir()
    return d


Arg = str | bytes | os.PathLike


@pytest.fixture
def anytime(repo_dir) -> Callable[..., subprocess.CompletedProcess]:
    """Run the installed ``anytime`` command with ``ANYTIME_REPO=repo_dir``.

    ``anytime(*args, check=None, prefix=(), env=None, timeout=120, **popen_kw)``:
    arguments may be str, bytes (names that are not UTF-8) or paths. Returns the
    ``CompletedProcess`` with bytes stdout/stderr. With ``check=N`` it asserts the exit
    code is N and shows stderr otherwise. ``prefix`` is prepended to the command line
    (e.g. ``["setpriv", "--reuid=65534", ...]``); ``env`` entries override the
    environment (``None`` values remove a variable).
    """
    exe = anytime_command()

    def run(*args: Arg, check: int | None = None, prefix: tuple | list = (),
            env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, ANYTIME_REPO=str(repo_dir))
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        argv = [*prefix, exe, *(os.fspath(a) for a in args)]
        r = subprocess.run(argv, capture_output=True, env=full_env, timeout=timeout, **kw)
        if check is not None:
            assert r.returncode == check, (
                f"anytime {' '.join(map(repr, args))} exited {r.returncode}, wanted {check}\n"
                f"stdout: {r.stdout[-2000:]!r}\nstderr: {r.stderr[-2000:]!r}")
        return r

    return run


@pytest.fixture
def world_dir():
    """A directory others can reach (pytest's tmp_path is private to its owner), for
    tests that run commands as another user."""
    d = tempfile.mkdtemp(prefix="anytime-test-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def loop_fs(tmp_path):
    """``loop_fs(megabytes)`` mounts a fresh ext4 filesystem of that size on a loop device
    and returns its mountpoint (unmounted at teardown). Needs root; skips otherwise."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 to loop-mount a small filesystem")
    mounted = []

    def make(megabytes: int) -> Path:
        img, mnt = tmp_path / f"fs{len(mounted)}.img", tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        subprocess.run(["truncate", "-s", f"{megabytes}M", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot loop-mount here: {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
