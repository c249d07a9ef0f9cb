"""What a scan captures from trees that are not plain: pseudo-files whose size lies
(procfs, sysfs), unreadable files, mount points inside the tree, excludes, and an
interrupted first snapshot. End-to-end, through the installed command, on real kernel
files, real users, real mounts and real signals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from treeutil import snap, view_at

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind-mount")


@pytest.fixture
def repo(anytime):
    anytime("init", check=0)


@pytest.fixture
def binds():
    """``bind(source, target)`` bind-mounts a file or directory; undone at teardown."""
    done = []

    def bind(source, target) -> None:
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        done.append(target)

    yield bind
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], check=False)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- pseudo-files whose st_size is not their length ----------------------------------
#: (source, what its stat says): static kernel files, so two reads give the same bytes.
PSEUDO = {"version": "/proc/version",  # size 0, a hundred bytes
          "kallsyms": "/proc/kallsyms",  # size 0, megabytes: read on over many blocks
          "thp": "/sys/kernel/mm/transparent_hugepage/enabled"}  # size 4096, fewer bytes


@needs_root
@pytest.mark.parametrize("block_size", [None, "1024"])
def test_pseudo_files_are_stored_as_read(anytime, repo_dir, src_dir, binds, block_size):
    anytime("init", *(["--block-size", block_size] if block_size else []), check=0)
    (src_dir / "plain").write_bytes(b"plain\n")
    (src_dir / "empty").write_bytes(b"")
    (src_dir / "block").write_bytes(os.urandom(1 << 20))  # a multiple of the block size
    for name, source in PSEUDO.items():
        (src_dir / name).write_bytes(b"")
        binds(source, src_dir / name)
    want = {name: read(src_dir / name) for name in PSEUDO}
    assert os.stat(src_dir / "version").st_size == 0 and len(want["version"]) > 0
    assert len(want["kallsyms"]) > 3 << 20
    assert os.stat(src_dir / "thp").st_size > len(want["thp"]) > 0

    s = snap(anytime, src_dir)
    assert sorted(s["resized"]) == sorted(str(src_dir / n) for n in PSEUDO)
    assert s["bytes_read"] == sum(map(len, want.values())) + 6 + (1 << 20)
    for name in PSEUDO:
        assert anytime("cat", src_dir / name, check=0).stdout == want[name], name
    for name in ("plain", "empty", "block"):
        assert anytime("cat", src_dir / name, check=0).stdout == read(src_dir / name)
    with view_at(repo_dir, "src") as v:
        assert v.lookup(b"version").size == len(want["version"])  # the bytes stored
        assert v.lookup(b"thp").size == len(want["thp"])
    text = anytime("snapshot", src_dir, check=0).stdout.decode()
    assert "3 files read to another length than their size" in text
    assert str(src_dir / "version") in text


@needs_root
def test_a_sysfs_directory(anytime, repo, src_dir):
    """A real sysfs directory, as the kernel lists it: each readable file as read (the
    settings at its top; the counters below change between two reads)."""
    root = Path("/sys/kernel/mm/transparent_hugepage")
    s = json.loads(anytime("snapshot", root, "--json").stdout)
    assert s["resized"]
    for p in root.iterdir():
        if p.is_file() and not p.is_symlink() and os.access(p, os.R_OK):
            try:
                want = read(p)
            except OSError:
                continue  # write-only attributes: see the unreadable-file tests
            assert anytime("cat", p, check=0).stdout == want, p


def test_an_ordinary_copy_is_not_resized(anytime, repo, src_dir):
    """A copy of a pseudo-file is an ordinary file: its size is its length."""
    shutil.copyfile("/proc/version", src_dir / "version")
    s = snap(anytime, src_dir)
    assert s["resized"] == []
    assert anytime("cat", src_dir / "version", check=0).stdout == read("/proc/version")
