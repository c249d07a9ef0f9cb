"""End-to-end restore, labels and find through the installed ``anytime`` command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import anytime_command
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


def test_keep_both_never_overwrites_an_earlier_copy(anytime, src_dir, captured):
    """A second --keep-both restore at the same instant picks NAME.restored-T.2."""
    docs = src_dir / "docs"
    anytime("restore", docs, "--at", "v1", "--in-place", "--keep-both", check=0)
    [first] = [p for p in docs.iterdir() if p.name.startswith("report.txt.restored-")]
    first.write_text("my edits of the restored copy\n")
    anytime("restore", docs, "--at", "v1", "--in-place", "--keep-both", check=0)
    assert first.read_text() == "my edits of the restored copy\n"
    kept = sorted(p.name for p in docs.iterdir() if p.name.startswith("report.txt.restored-"))
    assert kept == [first.name, first.name + ".2"]
    assert (docs / kept[1]).read_text() == "line one\nline two\nline three\n"
    assert "changed" in (docs / "report.txt").read_text()


def test_dry_run_json_is_a_plan(anytime, src_dir, captured):
    before = snapshot_tree(src_dir)
    r = anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", "--delete",
                "--dry-run", "--json", check=0)
    out = json.loads(r.stdout)
    ops = {(a["op"], os.path.relpath(a["path"], src_dir)) for a in out["plan"]}
    assert ("replace", "docs/report.txt") in ops and ("delete", "added.txt") in ops
    assert ("create", "bin.dat") in ops and ("same", "hard1") in ops
    assert out["summary"]["counts"]["delete"] == 1
    assert out["summary"]["bytes"] >= 300_000  # what would be written: bin.dat at least
    assert snapshot_tree(src_dir) == before


def test_dry_run_changes_nothing(anytime, src_dir, captured):
    before = snapshot_tree(src_dir)
    r = anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", "--delete",
                "--dry-run", check=0)
    assert b"replace" in r.stdout and b"delete" in r.stdout
    assert snapshot_tree(src_dir) == before


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
    assert b"full" in r.stderr and os.fsencode(small_disk) in r.stderr and b"()" not in r.stderr
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
    assert [r["path"] for r in rows] == ["added.txt", "docs/report.txt"], "in path order"
    rows = json.loads(anytime("find", "docs/*", "--json", check=0).stdout)
    assert "docs/empty" in {r["path"] for r in rows}
    log = anytime("log", src_dir / "bin.dat", check=0).stdout.decode()
    assert "created" in log and "deleted" in log
    v1 = _first_commit_instant(anytime, src_dir)
    assert json.loads(anytime("find", "bin.*", "--until", v1, "--deleted", "--json",
                              check=0).stdout) == []


# --- type changes in place, symlinks at the destination ------------------------------------
@pytest.fixture
def proj(anytime, src_dir, tmp_path):
    """src/proj with a subdirectory, captured (label v1); ``tmp_path/outside`` is a
    directory outside the tree that symlinks will point at."""
    anytime("init", check=0)
    (src_dir / "proj" / "sub").mkdir(parents=True)
    (src_dir / "proj" / "sub" / "a.txt").write_text("a at v1\n")
    (src_dir / "proj" / "keep.txt").write_text("keep\n")
    (src_dir / "docs").mkdir()
    (src_dir / "docs" / "d.txt").write_text("d at v1\n")
    (src_dir / "f.txt").write_text("a file at v1\n")
    anytime("snapshot", src_dir, "--label", "v1", check=0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("outside, not mine\n")
    return src_dir / "proj", outside


def _outside_state(outside):
    return snapshot_tree(outside), os.stat(outside).st_mtime_ns


def test_directory_replaced_by_a_symlink_is_restored_not_written_through(anytime, proj):
    p, outside = proj
    shutil.rmtree(p / "sub")
    os.symlink(outside, p / "sub")
    seen = _outside_state(outside)
    r = anytime("restore", p, "--at", "v1", "--in-place", check=15)
    assert b"sub" in r.stderr and os.path.islink(p / "sub")
    anytime("restore", p, "--at", "v1", "--in-place", "--skip", check=0)
    assert os.path.islink(p / "sub")
    anytime("restore", p, "--at", "v1", "--in-place", "--overwrite", check=0)
    assert not os.path.islink(p / "sub") and (p / "sub" / "a.txt").read_text() == "a at v1\n"
    assert (p / "keep.txt").read_text() == "keep\n"
    assert _outside_state(outside) == seen, "nothing outside the destination was touched"


def test_symlink_on_the_way_to_a_restored_file_is_never_followed(anytime, proj):
    p, outside = proj
    shutil.rmtree(p / "sub")
    os.symlink(outside, p / "sub")
    seen = _outside_state(outside)
    anytime("restore", p / "sub" / "a.txt", "--at", "v1", "--in-place", check=15)
    anytime("restore", p / "sub" / "a.txt", "--at", "v1", "--in-place", "--overwrite",
            check=0)
    assert _outside_state(outside) == seen, "nothing outside the destination was touched"
    assert not os.path.islink(p / "sub") and (p / "sub" / "a.txt").read_text() == "a at v1\n"


def test_keep_both_directory_beside_a_symlink(anytime, proj):
    p, outside = proj
    shutil.rmtree(p / "sub")
    os.symlink(outside, p / "sub")
    seen = _outside_state(outside)
    anytime("restore", p, "--at", "v1", "--in-place", "--keep-both", check=0)
    [kept] = [n for n in os.listdir(p) if n.startswith("sub.restored-")]
    assert (p / kept / "a.txt").read_text() == "a at v1\n" and os.path.islink(p / "sub")
    assert _outside_state(outside) == seen


def test_file_where_a_directory_was_and_back(anytime, src_dir, proj):
    shutil.rmtree(src_dir / "docs")
    (src_dir / "docs").write_text("now a file\n")
    os.unlink(src_dir / "f.txt")
    (src_dir / "f.txt").mkdir()
    (src_dir / "f.txt" / "inner").write_text("x\n")
    r = anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", "--dry-run",
                check=0)
    assert b"replace  " + os.fsencode(src_dir / "docs") in r.stdout
    assert (src_dir / "docs").read_text() == "now a file\n"
    anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite", check=0)
    assert (src_dir / "docs" / "d.txt").read_text() == "d at v1\n"
    assert (src_dir / "f.txt").read_text() == "a file at v1\n"
    assert not [n for n in os.listdir(src_dir) if n.startswith(".anytime-")]


def test_file_whose_parent_directories_are_gone(anytime, src_dir, proj):
    p, _ = proj
    os.chmod(p, 0o750)
    anytime("snapshot", src_dir, "--label", "v2", check=0)
    shutil.rmtree(p)
    anytime("restore", p / "sub" / "a.txt", "--at", "v2", "--in-place", check=0)
    assert (p / "sub" / "a.txt").read_text() == "a at v1\n"
    assert os.stat(p).st_mode & 0o777 == 0o750, "a recreated parent is as it was at T"
    assert not (p / "keep.txt").exists(), "only the path asked for is restored"
    (p / "sub").rename(p / "moved")
    (p / "sub").write_text("a file now\n")
    r = anytime("restore", p / "sub" / "a.txt", "--at", "v2", "--in-place", check=15)
    assert os.fsencode(p / "sub") in r.stderr
    anytime("restore", p / "sub" / "a.txt", "--at", "v2", "--in-place", "--keep-both",
            check=0)
    [kept] = [n for n in os.listdir(p) if n.startswith("sub.restored-")]
    assert (p / kept / "a.txt").read_text() == "a at v1\n"
    assert (p / "sub").read_text() == "a file now\n"


def test_failed_in_place_restore_changes_nothing(anytime, tmp_path, loop_fs):
    """A type change, a deletion and a file that does not fit on the disk: the restore
    fails on the full disk before anything at the destination changed."""
    disk = loop_fs(16)
    src = disk / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "d.txt").write_text("d\n")
    (src / "big").write_bytes(os.urandom(6 << 20))
    anytime("init", check=0)
    anytime("snapshot", src, check=0)
    at = json.loads(anytime("log", src, "--json", check=0).stdout)[-1]["instant"]
    shutil.rmtree(src / "docs")
    (src / "docs").write_text("a file now\n")
    os.unlink(src / "big")
    (src / "extra").write_text("extra\n")
    free = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:  # leave about 2 MB
        f.write(os.urandom(free.f_bavail * free.f_frsize - (2 << 20)))
    before = snapshot_tree(src)
    r = anytime("restore", src, "--at", at, "--in-place", "--overwrite", "--delete")
    assert r.returncode == 15, r.stderr
    assert b"full" in r.stderr and os.fsencode(disk) in r.stderr and b"()" not in r.stderr
    assert snapshot_tree(src) == before, "a failed restore changes nothing"


# --- damaged data -------------------------------------------------------------------------
def _damage_largest_pack(repo_dir) -> None:
    """Flip a byte in the middle of the largest pack (there, the random file's block)."""
    pack = max(repo_dir.glob("packs/*/*.pack"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))


@pytest.fixture
def damaged(anytime, src_dir, repo_dir):
    """A tree whose random file ``bad.bin`` has a damaged block in the repository."""
    anytime("init", check=0)
    (src_dir / "sub").mkdir()
    for i in range(5):
        (src_dir / "sub" / f"good{i}.txt").write_text(f"good {i}\n" * 100)
    (src_dir / "bad.bin").write_bytes(os.urandom(600_000))
    anytime("snapshot", src_dir, "--label", "v1", check=0)
    saved = {p.name: p.read_bytes() for p in (src_dir / "sub").iterdir()}
    _damage_largest_pack(repo_dir)
    return saved


def test_damaged_block_restores_everything_else(anytime, src_dir, tmp_path, damaged):
    dest = tmp_path / "out"
    r = anytime("restore", src_dir, "--at", "v1", "--to", dest, "--json")
    assert r.returncode == 3, r.stderr
    assert b"bad.bin" in r.stderr and b"damaged" in r.stderr
    assert {p.name: p.read_bytes() for p in (dest / "sub").iterdir()} == damaged
    assert not (dest / "bad.bin").exists(), "a damaged file is not left half-written"
    assert not [p for p in dest.rglob(".anytime-*")]
    summary = json.loads(r.stdout)
    assert [f["path"] for f in summary["failed"]] == [str(dest / "bad.bin")]


def test_damaged_block_never_replaces_a_good_file(anytime, src_dir, damaged):
    (src_dir / "bad.bin").write_bytes(b"my current good content\n")
    (src_dir / "sub" / "good0.txt").write_text("changed\n")
    r = anytime("restore", src_dir, "--at", "v1", "--in-place", "--overwrite")
    assert r.returncode == 3, r.stderr
    assert (src_dir / "bad.bin").read_bytes() == b"my current good content\n"
    assert (src_dir / "sub" / "good0.txt").read_bytes() == damaged["good0.txt"]
    assert not [p for p in src_dir.rglob(".anytime-*")]


# --- interruption -------------------------------------------------------------------------
def test_ctrl_c_stops_a_restore_at_once_and_leaves_nothing(anytime, src_dir, tmp_path,
                                                          repo_dir):
    """A restore of 1.5 GB (192 files of 8 MiB: about 5 s here) gets SIGINT once it is
    writing; it must exit 130 within 2 s and leave the destination as it was."""
    anytime("init", check=0)
    pattern = os.urandom(64 << 20)  # 8 distinct 8 MiB contents: a small repository
    for i in range(192):
        k = (i % 8) << 23
        (src_dir / f"f{i:03d}").write_bytes(pattern[k:k + (8 << 20)])
    anytime("snapshot", src_dir, check=0)
    parent = tmp_path / "restored"
    parent.mkdir()
    env = dict(os.environ, ANYTIME_REPO=str(repo_dir))
    proc = subprocess.Popen([anytime_command(), "restore", str(src_dir), "--at", "now",
                             "--to", str(parent / "out")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _staged_files(parent) >= 8 and proc.poll() is None:
            assert time.monotonic() < deadline, "the restore never started writing"
            time.sleep(0.01)
        assert proc.poll() is None, "the restore ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=2)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"nothing at the destination was changed" in err
    assert os.listdir(parent) == [], "temporary files are removed"


def _staged_files(parent) -> int:
    try:
        return sum(len(os.listdir(parent / n)) for n in os.listdir(parent))
    except OSError:
        return 0


# --- destinations that cannot be written ---------------------------------------------------
def test_read_only_destination_in_place(anytime, loop_fs):
    disk = loop_fs(8)
    src = disk / "src"
    src.mkdir()
    (src / "a").write_text("v1\n")
    anytime("init", check=0)
    anytime("snapshot", src, check=0)
    at = json.loads(anytime("log", src, "--json", check=0).stdout)[-1]["instant"]
    (src / "a").write_text("v2\n")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    r = anytime("restore", src, "--at", at, "--in-place", "--overwrite")
    assert r.returncode == 15, r.stderr
    assert b"read-only" in r.stderr and b"remount" in r.stderr


def test_permission_denied_destination(anytime, src_dir, loop_fs):
    """An immutable directory (chattr +i) refuses even root: exit 15, what to do."""
    disk = loop_fs(8)
    (src_dir / "a").write_text("x\n")
    anytime("init", check=0)
    anytime("snapshot", src_dir, check=0)
    subprocess.run(["chattr", "+i", str(disk)], check=True)
    try:
        r = anytime("restore", src_dir, "--at", "now", "--to", disk / "out")
        r2 = anytime("init", "--repo", disk / "repo")
    finally:
        subprocess.run(["chattr", "-i", str(disk)], check=True)
    assert r.returncode == 15, r.stderr
    assert b"permission denied" in r.stderr and b"--to" in r.stderr
    assert r2.returncode == 15, r2.stderr
    assert b"permission denied" in r2.stderr.lower()


NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the snapshot as user nobody")
def test_a_version_recorded_unreadable_fails_alone(anytime, world_dir):
    """A file nobody could not read when captured has no content at that instant: an
    in-place restore lists it (exit 3), keeps the live file and restores the rest."""
    tree, repo_path = world_dir / "tree", world_dir / "repo"
    tree.mkdir()
    repo_path.mkdir()
    (tree / "ok").write_text("ok at v1\n")
    (tree / "secret").write_text("root only\n")
    os.chmod(tree / "secret", 0o600)
    for p in (tree, tree / "ok", repo_path):
        os.chown(p, NOBODY, NOBODY)
    env = {"ANYTIME_REPO": str(repo_path), "HOME": str(world_dir)}
    anytime("init", prefix=AS_NOBODY, env=env, check=0)
    anytime("snapshot", tree, "--label", "v1", prefix=AS_NOBODY, env=env, check=3)
    (tree / "ok").write_text("ok changed\n")
    (tree / "secret").write_text("root edit\n")  # same size, another mtime
    r = anytime("restore", tree, "--at", "v1", "--in-place", "--overwrite", env=env)
    assert r.returncode == 3, r.stderr
    assert b"secret" in r.stderr and b"could not be read when this version" in r.stderr
    assert (tree / "secret").read_text() == "root edit\n"
    assert (tree / "ok").read_text() == "ok at v1\n"


def test_a_missing_pack_fails_its_files_not_the_destination(anytime, src_dir, tmp_path,
                                                            repo_dir, damaged):
    """A pack file gone from the repository is the repository's failure (exit 3 with the
    file listed), not a destination error."""
    os.unlink(max(repo_dir.glob("packs/*/*.pack"), key=lambda p: p.stat().st_size))
    dest = tmp_path / "out"
    r = anytime("restore", src_dir, "--at", "v1", "--to", dest)
    assert r.returncode == 3, r.stderr
    assert b"bad.bin" in r.stderr and b"missing" in r.stderr
    assert {p.name: p.read_bytes() for p in (dest / "sub").iterdir()} == damaged


# --- durability: fsync before rename ---------------------------------------------------------
@pytest.fixture
def syncs(monkeypatch, repo_dir):
    """Run ``anytime restore`` in-process, recording in order every ``fsync`` (the path its
    descriptor names) and every rename of a staged entry (the path it is renamed from):
    the real calls still happen. Returns ``restore(*args)``, which gives that list."""
    from anytime.tools import cli
    from anytime.tools import restore as restore_mod

    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_rename2 = os.fsync, os.rename, restore_mod._rename2

    def where(fd: int, name=b"") -> str:
        path = os.readlink(f"/proc/self/fd/{fd}")
        return os.path.join(path, os.fsdecode(name)) if name else path

    def fsync(fd):
        events.append(("fsync", where(fd)))
        return real_fsync(fd)

    def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        if src_dir_fd is not None:
            events.append(("rename", where(src_dir_fd, src)))
        return real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def rename2(src_fd, src, dst_fd, dst, flags):
        events.append(("rename", where(src_fd, src)))
        return real_rename2(src_fd, src, dst_fd, dst, flags)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(restore_mod, "_rename2", rename2)
    monkeypatch.setenv("ANYTIME_REPO", str(repo_dir))

    def restore(*args) -> list[tuple[str, str]]:
        events.clear()
        assert cli.main(["restore", *map(os.fspath, args)]) == 0
        return list(events)

    return restore


def test_in_place_restore_syncs_each_file_before_its_rename_and_dirs_after(
        src_dir, captured, syncs):
    events = syncs(src_dir, "--at", "v1", "--in-place", "--overwrite", "--delete")
    assert_same_tree(captured, src_dir)
    renames = [i for i, (op, _) in enumerate(events) if op == "rename"]
    staged = [events[i][1] for i in renames]
    assert len(staged) == 2, events  # docs/report.txt replaced, bin.dat created
    assert all(".anytime-" in p for p in staged)
    files = [p for op, p in events if op == "fsync" and ".anytime-" in p]
    assert sorted(files) == sorted(staged), "each written file is flushed once"
    for i, p in zip(renames, staged, strict=True):
        assert ("fsync", p) in events[:i], f"{p} renamed before it was flushed"
    dirs = [p for op, p in events[renames[-1]:] if op == "fsync"]
    assert sorted(dirs) == sorted([str(src_dir), str(src_dir / "docs")]), \
        "each changed directory is flushed once, after the renames"
    assert len(events) == 6, events


def test_restore_to_a_new_place_does_not_sync_but_overwriting_there_does(
        src_dir, tmp_path, captured, syncs):
    dest = tmp_path / "docs"
    events = syncs(src_dir / "docs", "--at", "v1", "--to", dest)
    assert [op for op, _ in events] == ["rename"], "a new place is not flushed"
    assert_same_tree(captured / "docs", dest)
    (dest / "report.txt").write_text("edited in the copy\n")
    events = syncs(src_dir / "docs", "--at", "v1", "--to", tmp_path, "--overwrite")
    assert (dest / "report.txt").read_text() == "line one\nline two\nline three\n"
    [(_, staged)] = [e for e in events if e[0] == "rename"]
    assert events == [("fsync", staged), ("rename", staged), ("fsync", str(dest))]


def test_in_place_restore_of_a_directory_syncs_what_it_holds_before_placing_it(
        src_dir, captured, syncs):
    shutil.rmtree(src_dir / "docs")
    events = syncs(src_dir / "docs", "--at", "v1", "--in-place")
    assert_same_tree(captured / "docs", src_dir / "docs")
    [(_, staged)] = [e for e in events if e[0] == "rename"]
    assert events[-2:] == [("rename", staged), ("fsync", str(src_dir))]
    assert sorted(events[:-2]) == [("fsync", staged), ("fsync", f"{staged}/empty"),
                                   ("fsync", f"{staged}/report.txt")]
