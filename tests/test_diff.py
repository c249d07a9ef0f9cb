"""``anytime diff`` of trees, text files and binary files, between instants and live."""

from __future__ import annotations

import json
import os

import pytest

from anytime.vfs.diff import differing_ranges, merge_ranges


def test_differing_ranges_unit():
    a = bytes(1000)
    b = bytearray(a)
    b[10:13] = b"xyz"
    b[500] = 1
    assert differing_ranges(a, bytes(b), 100) == [(110, 113), (600, 601)]
    assert differing_ranges(b"abc", b"abcdef") == [(3, 6)]
    assert differing_ranges(b"same", b"same") == []
    assert merge_ranges([(0, 5), (5, 9), (20, 30)]) == [(0, 9), (20, 30)]


@pytest.fixture
def two_states(anytime, src_dir):
    anytime("init", check=0)
    (src_dir / "sub").mkdir()
    (src_dir / "sub" / "inner.txt").write_text("inner\n")
    (src_dir / "text.txt").write_text("alpha\nbeta\ngamma\n")
    (src_dir / "blob.bin").write_bytes(os.urandom(400_000))
    (src_dir / "gone.txt").write_text("bye\n")
    (src_dir / "meta.txt").write_text("same\n")
    (src_dir / "to-move").write_bytes(b"moving file\n")
    anytime("snapshot", src_dir, "--label", "one", check=0)
    (src_dir / "text.txt").write_text("alpha\nBETA\ngamma\n")
    with open(src_dir / "blob.bin", "r+b") as f:
        f.seek(200_000)
        f.write(b"\xff" * 16)
    os.unlink(src_dir / "gone.txt")
    (src_dir / "new.txt").write_text("hello\n")
    os.chmod(src_dir / "meta.txt", 0o600)
    os.rename(src_dir / "to-move", src_dir / "sub" / "moved")
    anytime("snapshot", src_dir, "--label", "two", check=0)
    return src_dir


def test_tree_diff_markers(anytime, two_states):
    src = str(two_states)
    out = anytime("diff", src, "--from", "one", "--to", "two", check=0).stdout.decode()
    lines = set(out.splitlines())
    assert f"M    {src}/text.txt" in lines
    assert f"M    {src}/blob.bin" in lines
    assert f"-    {src}/gone.txt" in lines
    assert f"+    {src}/new.txt" in lines
    assert f"U    {src}/meta.txt" in lines
    assert f"R    {src}/to-move -> {src}/sub/moved" in lines
    assert not any("inner.txt" in ln for ln in lines), "unchanged entries are not listed"


def test_tree_diff_json_and_exit_code(anytime, two_states):
    rows = json.loads(anytime("diff", two_states, "--from", "one", "--json", check=0).stdout)
    assert {"change": "+", "path": f"{two_states}/new.txt"} in rows
    anytime("diff", two_states, "--from", "one", "--exit-code", check=1)
    anytime("diff", two_states, "--from", "two", "--exit-code", check=0)


def test_text_file_unified_diff(anytime, two_states):
    out = anytime("diff", two_states / "text.txt", "--from", "one", check=0).stdout.decode()
    assert "-beta\n" in out and "+BETA\n" in out and out.startswith("---")


def test_binary_file_ranges(anytime, two_states):
    out = json.loads(anytime("diff", two_states / "blob.bin", "--from", "one", "--json",
                             check=0).stdout)
    assert out["kind"] == "binary"
    assert out["ranges"] == [[200_000, 200_016]] or all(
        200_000 <= s and e <= 200_016 for s, e in out["ranges"])


def test_block_wise_ranges_match_whole_file_ranges(anytime, repo_dir, two_states):
    """Files over TEXT_LIMIT are compared block by block (equal blocks unread); smaller
    ones whole, in memory. Both give the same ranges, against an instant and live."""
    from treeutil import view_at

    from anytime.store.format import MAX_INSTANT
    from anytime.tools.target import resolve_instant
    from anytime.vfs.diff import LiveSide, ViewSide, binary_ranges
    from anytime.vfs.view import View

    with open(two_states / "blob.bin", "r+b") as f:  # live: one more change, a longer file
        f.seek(5)
        f.write(b"\x01\x02")
        f.seek(0, 2)
        f.write(b"tail")
    with view_at(repo_dir, "src", MAX_INSTANT) as v2:
        v1 = View(v2.repo, v2.vol, resolve_instant(v2.repo, v2.vol, "one"))
        a, b = v1.lookup(b"blob.bin"), v2.lookup(b"blob.bin")
        whole = merge_ranges(differing_ranges(b"".join(v1.iter_read(a)),
                                              b"".join(v2.iter_read(b))))
        assert whole and binary_ranges(ViewSide(v1), ViewSide(v2), b"blob.bin",
                                       b"blob.bin", a, b) == whole
        live = LiveSide(v2)
        e = live.lookup(b"blob.bin")
        whole = merge_ranges(differing_ranges(b"".join(v1.iter_read(a)),
                                              (two_states / "blob.bin").read_bytes()))
        assert binary_ranges(ViewSide(v1), live, b"blob.bin", b"blob.bin", a, e) == whole


def test_diff_against_live_tree(anytime, two_states):
    (two_states / "live-only").write_text("x")
    (two_states / "new.txt").write_text("hello again\n")
    out = anytime("diff", two_states, "--from", "two", "--to", "live", check=0).stdout.decode()
    lines = set(out.splitlines())
    assert f"+    {two_states}/live-only" in lines
    assert f"M    {two_states}/new.txt" in lines
    assert not any("text.txt" in ln for ln in lines)


def test_diff_bad_instant(anytime, two_states):
    r = anytime("diff", two_states, "--from", "1999-01-01")
    assert r.returncode == 14 and b"starts at" in r.stderr


def test_change_deep_inside_an_unchanged_directory(anytime, src_dir):
    """A file rewritten in place leaves its directory's entry unchanged; diff still sees it."""
    anytime("init", check=0)
    (src_dir / "a" / "b").mkdir(parents=True)
    (src_dir / "a" / "b" / "f.txt").write_text("one\n")
    anytime("snapshot", src_dir, "--label", "before", check=0)
    with open(src_dir / "a" / "b" / "f.txt", "r+") as f:
        f.write("two\n")
    anytime("snapshot", src_dir, check=0)
    out = anytime("diff", src_dir, "--from", "before", check=0).stdout.decode()
    assert out.splitlines() == [f"M    {src_dir}/a/b/f.txt"]


def _reuse_inode(directory, ino: int, name: str, data: bytes, tries: int = 20):
    """Create ``directory/name`` with ``data`` on inode number ``ino`` (just freed): the
    filesystem hands a freed inode out again at once; files made meanwhile that got
    another number are removed again. Asserts the reuse happened."""
    for i in range(tries):
        p = directory / name
        p.write_bytes(data)
        if os.lstat(p).st_ino == ino:
            return p
        p.rename(directory / f"spare{i}")  # keep it: freeing it would hand its number out
    pytest.fail(f"inode {ino} was not reused in {tries} tries")


def test_reused_inode_is_no_rename_against_live(anytime, loop_fs):
    """A file deleted and an unrelated one created on its inode number: the live side
    uses the scan's identity rule (same size and mtime as recorded), so diff says - and +,
    not R; a real rename still says R. Both ways: --to live and --from live."""
    src = loop_fs(16) / "src"
    src.mkdir()
    anytime("init", check=0)
    (src / "old.txt").write_bytes(b"first file\n")
    (src / "moved-from").write_bytes(b"a file that is renamed\n")
    anytime("snapshot", src, "--label", "one", check=0)
    ino = os.lstat(src / "old.txt").st_ino
    os.unlink(src / "old.txt")
    _reuse_inode(src, ino, "unrelated.txt", b"other file\n")  # same size, new mtime
    os.rename(src / "moved-from", src / "moved-to")
    spares = sorted(p.name for p in src.iterdir() if p.name.startswith("spare"))

    out = anytime("diff", src, "--from", "one", "--to", "live", check=0).stdout.decode()
    assert sorted(out.splitlines()) == sorted(
        [f"+    {src}/unrelated.txt", f"-    {src}/old.txt",
         f"R    {src}/moved-from -> {src}/moved-to"] + [f"+    {src}/{n}" for n in spares])

    out = anytime("diff", src, "--from", "live", "--to", "one", check=0).stdout.decode()
    assert sorted(out.splitlines()) == sorted(
        [f"-    {src}/unrelated.txt", f"+    {src}/old.txt",
         f"R    {src}/moved-to -> {src}/moved-from"] + [f"-    {src}/{n}" for n in spares])

    # the scan agrees: after a snapshot, the two instants diff the same way
    anytime("snapshot", src, "--label", "two", check=0)
    out = anytime("diff", src, "--from", "one", "--to", "two", check=0).stdout.decode()
    assert f"+    {src}/unrelated.txt" in out.splitlines()


def test_file_diff_from_live(anytime, two_states):
    (two_states / "text.txt").write_text("alpha\nBETA\nlive\n")
    out = anytime("diff", two_states / "text.txt", "--from", "live", "--to", "two",
                  check=0).stdout.decode()
    assert f"--- {two_states}/text.txt@live" in out
    assert "-live\n+gamma\n" in out
