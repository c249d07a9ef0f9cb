"""The repository's disk fills up during a snapshot: a plain error naming that disk
(exit 18), never blamed on a source file, nothing committed, and the next run works
once there is space again. Real small ext4 filesystems (``loop_fs``), real writes."""

from __future__ import annotations

import os
import shutil

import pytest

FULL = 18


@pytest.fixture
def small_fs(loop_fs):
    return loop_fs(24)


def assert_full_error(r, fs):
    assert r.returncode == FULL, (r.returncode, r.stderr[-3000:])
    err = r.stderr.decode()
    assert "disk is full" in err and str(fs) in err, err
    assert "warning" not in err and "skipped" not in err, "no source file is blamed"
    assert "Bus error" not in err and "Traceback" not in err


def test_packs_fill_the_disk(anytime, src_dir, small_fs):
    env = init_on(anytime, small_fs)
    (src_dir / "small.txt").write_text("first state\n")
    anytime("snapshot", src_dir, check=0, env=env)
    (src_dir / "small.txt").write_text("second state\n")
    (src_dir / "random.bin").write_bytes(os.urandom(40 << 20))  # cannot fit
    assert_full_error(anytime("snapshot", src_dir, env=env), small_fs)
    # the earlier commit is intact and readable, nothing of the failed run is visible
    assert anytime("cat", src_dir / "small.txt", check=0, env=env).stdout == b"first state\n"
    assert b"no problems found" in anytime("check", check=0, env=env).stdout
    os.unlink(src_dir / "random.bin")
    anytime("snapshot", src_dir, check=0, env=env)
    assert anytime("cat", src_dir / "small.txt", check=0, env=env).stdout == b"second state\n"
    assert shutil.disk_usage(small_fs).free > 10 << 20, "the failed run's packs are gone"
    assert b"no problems found" in anytime("check", check=0, env=env).stdout


def init_on(anytime, fs) -> dict:
    """A repository initialised on filesystem ``fs``; the environment that selects it."""
    env = {"ANYTIME_REPO": str(fs / "repo")}
    anytime("init", check=0, env=env)
    return env


def make_tree(src, dirs: int, per_dir: int, file_of):
    """``dirs`` directories d0.. under ``src``, each with ``per_dir`` files named and
    filled by ``file_of(i) -> (name, bytes)``."""
    for d in range(dirs):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(per_dir):
            name, data = file_of(i)
            (src / f"d{d}" / name).write_bytes(data)
    return src


def test_many_files_fill_the_disk_while_blocks_are_stored(anytime, tmp_path, small_fs):
    """Thousands of files, each its own blocks, written by every worker thread at once
    into a disk that fills: this died of SIGBUS in read_txn (LMDB's sparse lock file)."""
    env = init_on(anytime, small_fs)
    src = make_tree(tmp_path / "tree", 40, 60, lambda i: (f"f{i}", os.urandom(12_000)))
    for _attempt in range(2):  # and again, into the disk the first attempt left full
        assert_full_error(anytime("snapshot", src, env=env), small_fs)
    assert b"no problems found" in anytime("check", check=0, env=env).stdout
    for d in [0, *range(10, 40)]:  # what is left fits
        shutil.rmtree(src / f"d{d}")
    anytime("snapshot", src, check=0, env=env)
    assert anytime("cat", src / "d1" / "f1", check=0, env=env).stdout == (
        src / "d1" / "f1").read_bytes()


def test_the_index_fills_the_disk(anytime, tmp_path, small_fs):
    """Very many small files of one content: the packs fit, the index records do not
    (LMDB's data file growing into the full disk)."""
    env = init_on(anytime, small_fs)
    src = make_tree(tmp_path / "many", 30, 1000,
                    lambda i: (f"a-rather-long-file-name-{i:05}", b"same"))
    filler = small_fs / "filler"
    with open(filler, "wb") as f:  # leave about 9 MB: spill files fit, the index does not
        os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(small_fs).free - (9 << 20))
    r = anytime("snapshot", src, env=env)
    assert_full_error(r, small_fs)
    assert b"index" in r.stderr
    assert b"no problems found" in anytime("check", check=0, env=env).stdout
    assert b" 0 commits" in anytime("volumes", check=0, env=env).stdout, "nothing committed"
    os.unlink(filler)
    anytime("snapshot", src, check=0, env=env)
    assert anytime("cat", src / "d7" / "a-rather-long-file-name-00123", check=0,
                   env=env).stdout == b"same"
    assert b"no problems found" in anytime("check", check=0, env=env).stdout
