"""End-to-end restore, labels and find through the installed ``anytime`` command."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from treeutil import assert_same_tree, build_tree, snapshot_tree


def _first_commit_instant(anytime, path) -> str:
    rows = json.loads(anytime("log", path, "--json", check=0).stdout)
    return rows[0]["instant"]


@pytest.fixture
def captured(anytime, src_dir, tmp_path):
    """A tree captured twice: the first state is saved in ``tmp_path/v1`` and labelled v1."""
    anytime("init", check=0)
    build_tree(src_dir)
    anytime("snapshot", src_dir, "--label", "v1", check=0)
    saved = tmp_path / "v1"
    subprocess.run(["cp", "-a", "--sparse=always", str(src_dir), str(saved)], check=True)
    (src_dir / "docs" / "report.txt").write_text("line one\nline 2 changed\nline three\n")
    os.unlink(src_dir / "bin.dat")
    (src_dir / "added.txt").write_text("new\n")
    os.chmod(src_dir / "secret", 0o640)
    anytime("snapshot", src_dir, check=0)
    return saved


def test_restore_tree_round_trip_is_exact(anytime, src_dir, tmp_path, captured):
    dest = tmp_path / "out"
    anytime("restore", src_dir, "--at", "v1", "--to", dest, check=0)
    assert_same_tree(captured, dest)
    assert snapshot_tree(dest)[b"sparse.img"]["sparse"], "holes must be restored as holes"
    d = snapshot_tree(dest)
    assert d[b"hard2"]["link_group"] == d[b"hard1"]["link_group"], "hardlinks stay links"


def test_restore_into_existing_directory_uses_own_name(anytime, src_dir, tmp_path, captured):
    dest = tmp_path / "existing"
    dest.mkdir()
    anytime("restore", src_dir / "docs", "--at", "v1", "--to", dest, check=0)
    assert (dest / "docs" / "report.txt").read_text() == "line one\nline two\nline three\n"
    assert os.getxattr(dest / "docs" / "report.txt", "user.comment") == b"keep me"
    assert os.stat(dest / "docs" / "report.txt").st_mtime_ns == 1_600_000_000_987_654_321


def test_restore_single_file_and_latest(anytime, src_dir, tmp_path, captured):
    anytime("restore", src_dir / "docs" / "report.txt", "--at", "now", "--to",
            tmp_path / "r.txt", check=0)
    assert (tmp_path / "r.txt").read_text() == "line one\nline 2 changed\nline three\n"


def test_in_place_refuses_conflicts_without_policy(anytime, src_dir, captured):
    before = snapshot_tree(src_dir)
    r = anytime("restore", src_dir, "--at", "v1", "--in-place", check=15)
    assert b"--overwrite" in r.stderr and b"report.txt" in r.stderr
    assert snapshot_tree(src_dir) == before, "a refused restore changes nothing"


def test_in_place_overwrite_delete_gives_exact_tree(anytime, src_dir, captured):
    anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", "--delete", check=0)
    assert_same_tree(captured, src_dir)
    leftovers = [p for p in src_dir.rglob(".anytime-*")]
    assert not leftovers


def test_in_place_without_delete_keeps_extra_files(anytime, src_dir, captured):
    anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", check=0)
    assert (src_dir / "added.txt").read_text() == "new\n"
    assert (src_dir / "bin.dat").read_bytes() == (captured / "bin.dat").read_bytes()


def test_in_place_skip_leaves_changed_files(anytime, src_dir, captured):
    anytime("restore", src_dir, "--at", "v1", "--in-place", "--skip", check=0)
    assert "changed" in (src_dir / "docs" / "report.txt").read_text()
    assert (src_dir / "bin.dat").exists(), "missing files are restored under --skip"


def test_in_place_keep_both(anytime, src_dir, captured):
    anytime("restore", src_dir / "docs", "--at", "v1", "--in-place", "--keep-both", check=0)
    kept = [p for p in (src_dir / "docs").iterdir() if p.name.startswith("report.txt.restored-")]
    assert len(kept) == 1
    assert kept[0].read_text() == "line one\nline two\nline three\n"
    assert "changed" in (src_dir / "docs" / "report.txt").read_text()


def test_in_place_writes_only_what_differs(anytime, src_dir, captured):
    ino = os.stat(src_dir / "hard1").st_ino
    out = anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", "--json",
                  check=0)
    summary = json.loads(out.stdout)
    assert os.stat(src_dir / "hard1").st_ino == ino, "an identical file is not rewritten"
    assert summary.get("same", 0) >= 5
    assert summary["bytes"] < 400_000


def test_dry_run_changes_nothing(anytime, src_dir, captured):
    before = snapshot_tree(src_dir)
    r = anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", "--delete",
                "--dry-run", check=0)
    assert b"replace" in r.stdout and b"delete" in r.stdout
    assert snapshot_tree(src_dir) == before


def test_restore_verifies_blocks(anytime, src_dir, repo_dir, tmp_path, captured):
    """A flipped byte in a pack makes restore fail with the damaged-data code."""
    packs = sorted(repo_dir.glob("packs/*/*.pack"), key=lambda p: p.stat().st_size)
    for p in packs:
        data = bytearray(p.read_bytes())
        data[-10] ^= 0xFF
        p.write_bytes(bytes(data))
    r = anytime("restore", src_dir, "--at", "v1", "--to", tmp_path / "bad")
    assert r.returncode == 16, r.stderr
    assert not (tmp_path / "bad").exists(), "a failed restore leaves no partial destination"


def test_restore_errors_are_plain(anytime, src_dir, tmp_path, captured):
    r = anytime("restore", "/never/protected", "--at", "now", "--to", tmp_path / "x")
    assert r.returncode == 12 and b"not inside any protected tree" in r.stderr
    r = anytime("restore", src_dir, "--at", "2001-01-01", "--to", tmp_path / "x")
    assert r.returncode == 14 and b"starts at" in r.stderr
    r = anytime("restore", src_dir / "bin.dat", "--at", "now", "--to", tmp_path / "x")
    assert r.returncode == 13 and b"does not exist" in r.stderr
    r = anytime("restore", src_dir, "--at", "v1", "--to", tmp_path / "no" / "such" / "dir")
    assert r.returncode == 15


@pytest.fixture
def small_disk(loop_fs):
    return loop_fs(4)


def test_full_destination_disk_leaves_it_as_it_was(anytime, src_dir, small_disk):
    anytime("init", check=0)
    (src_dir / "a").write_bytes(b"small file\n")
    (src_dir / "big").write_bytes(os.urandom(8 << 20))
    anytime("snapshot", src_dir, check=0)
    before = sorted(os.listdir(small_disk))
    r = anytime("restore", src_dir, "--at", "now", "--to", small_disk / "out")
    assert r.returncode == 15, r.stderr
    assert b"full" in r.stderr
    assert sorted(os.listdir(small_disk)) == before, "no partial tree or temp file is left"


def test_read_only_destination(anytime, src_dir, small_disk):
    anytime("init", check=0)
    (src_dir / "a").write_bytes(b"x")
    anytime("snapshot", src_dir, check=0)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    r = anytime("restore", src_dir, "--at", "now", "--to", small_disk / "out")
    assert r.returncode == 15 and b"read-only" in r.stderr


def test_labels_are_instants_everywhere(anytime, src_dir, captured):
    assert anytime("cat", src_dir / "docs" / "report.txt", "--at", "v1",
                   check=0).stdout == b"line one\nline two\nline three\n"
    log = json.loads(anytime("log", src_dir, "--json", check=0).stdout)
    assert log[0]["labels"] == ["v1"]
    anytime("mark", src_dir, "second", check=0)
    r = anytime("mark", src_dir, "second")
    assert r.returncode != 0 and b"already names" in r.stderr
    assert anytime("cat", src_dir / "added.txt", "--at", "second", check=0).stdout == b"new\n"
    anytime("unmark", src_dir, "second", check=0)
    r = anytime("cat", src_dir / "added.txt", "--at", "second")
    assert r.returncode == 14
    r = anytime("mark", src_dir, "yesterday")
    assert r.returncode == 2 and b"reads as an instant" in r.stderr


def test_mark_hooks_run_around_the_instant(anytime, src_dir, tmp_path, captured):
    trace = tmp_path / "trace"
    anytime("mark", src_dir, "flushed", "--before-hook", f"echo before >> {trace}",
            "--after-hook", f"echo after >> {trace}", check=0)
    assert trace.read_text() == "before\nafter\n"
    r = anytime("snapshot", src_dir, "--before-hook", "exit 3")
    assert r.returncode != 0 and b"hook" in r.stderr


def test_find_deleted_files_and_log_of_deleted(anytime, src_dir, captured):
    rows = json.loads(anytime("find", "bin.*", "--deleted", "--json", check=0).stdout)
    assert [r["path"] for r in rows] == ["bin.dat"]
    assert rows[0]["deleted"] and rows[0]["last_version"]
    rows = json.loads(anytime("find", "*.txt", "--json", check=0).stdout)
    assert {r["path"] for r in rows} == {"docs/report.txt", "added.txt"}
    rows = json.loads(anytime("find", "docs/*", "--json", check=0).stdout)
    assert "docs/empty" in {r["path"] for r in rows}
    log = anytime("log", src_dir / "bin.dat", check=0).stdout.decode()
    assert "created" in log and "deleted" in log
    v1 = _first_commit_instant(anytime, src_dir)
    assert json.loads(anytime("find", "bin.*", "--until", v1, "--deleted", "--json",
                              check=0).stdout) == []
