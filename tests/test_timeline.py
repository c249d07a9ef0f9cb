"""Point-in-time lookups over many commits, through the store API only."""

from __future__ import annotations

import pytest
from conftest import TEST_OPTIONS

from anytime.store import timeline
from anytime.store.format import (
    DELETED,
    HOLE_ID,
    KIND_DIR,
    KIND_FILE,
    MAX_INSTANT,
    Entry,
)
from anytime.store.repo import Repository
from anytime.store.volumes import create_volume, get_volume, get_volume_by_id
from anytime.store.writer import CommitBuilder

BS = 4096


@pytest.fixture
def repo(repo_dir):
    r = Repository.init(str(repo_dir), block_size=BS, options=TEST_OPTIONS)
    yield r
    r.close()


def new_volume(repo, name="vol"):
    with repo.env.begin(write=True) as txn:
        return create_volume(repo, txn, name, f"/src/{name}", BS, 1)


def commit(repo, vol_name, t, entries=(), blocks=()):
    """One commit at instant ``t``: ``entries`` are (path, Entry), ``blocks`` are
    (file id, block number, data)."""
    with repo.read_txn() as txn:
        vol = get_volume(repo, txn, vol_name)
    b = CommitBuilder(repo, vol)
    # file ids chosen by the test, allocated as a scan's are (docs/format.md I18)
    fids = [e.file_id for _, e in entries] + [fid for fid, _, _ in blocks]
    vol.next_file_id = max([vol.next_file_id, *(fid + 1 for fid in fids)])
    for fid, bno, data in blocks:
        b.put_block_version(fid, bno, b.store_chunk(data))
    for path, e in entries:
        b.put_entry(path, e)
    return b.commit({"kind": "test"}, instant=t)


def f(fid, size=1, **kw):
    return Entry(KIND_FILE, mode=0o100644, size=size, file_id=fid, **kw)


def d():
    return Entry(KIND_DIR, mode=0o40755)


def at(repo, vol, path, t):
    with repo.read_txn() as txn:
        return timeline.entry_at(repo, txn, vol.id, path, t)


def ls(repo, vol, path, t):
    with repo.read_txn() as txn:
        return [n for n, _ in timeline.list_dir_at(repo, txn, vol.id, path, t)]


# Times of the commits below; lookups probe at, between, before and after each.
T = [1000, 2000, 3000, 4000, 5000]


@pytest.fixture
def history(repo):
    """A volume with five commits:

    T0: /, a (fid 1, size 1), dir/, dir/x (fid 2)
    T1: a modified (size 2), ab created (a name with ``a`` as prefix), dir/y
    T2: a deleted, dir/x deleted
    T3: a re-created (fid 3), dir deleted with its remaining child dir/y
    T4: dir re-created, empty
    """
    vol = new_volume(repo)
    commit(repo, "vol", T[0], [(b"", d()), (b"a", f(1, 1)), (b"dir", d()), (b"dir/x", f(2))])
    commit(repo, "vol", T[1], [(b"a", f(1, 2)), (b"ab", f(4)), (b"dir/y", f(5))])
    commit(repo, "vol", T[2], [(b"a", DELETED), (b"dir/x", DELETED)])
    commit(repo, "vol", T[3], [(b"a", f(3, 3)), (b"dir", DELETED), (b"dir/y", DELETED)])
    commit(repo, "vol", T[4], [(b"dir", d())])
    return vol


@pytest.mark.parametrize("t,size", [
    (0, None), (T[0] - 1, None), (T[0], 1), (T[0] + 1, 1), (T[1] - 1, 1), (T[1], 2),
    (T[1] + 500, 2), (T[2], None), (T[3] - 1, None), (T[3], 3), (T[4], 3),
    (T[4] + 10**12, 3), (MAX_INSTANT, 3),
])
def test_entry_at_across_commits(repo, history, t, size):
    e = at(repo, history, b"a", t)
    assert (e.size if e else None) == size


def test_entry_at_keeps_file_id_per_version(repo, history):
    assert at(repo, history, b"a", T[1]).file_id == 1
    assert at(repo, history, b"a", T[3]).file_id == 3


def test_prefix_names_do_not_mix(repo, history):
    # "ab" exists from T1 on; "a" being deleted at T2 does not hide it, and vice versa
    assert at(repo, history, b"ab", T[0]) is None
    for t in T[1:]:
        assert at(repo, history, b"ab", t).file_id == 4
    assert at(repo, history, b"a", T[2]) is None


@pytest.mark.parametrize("t,names", [
    (T[0] - 1, []), (T[0], [b"a", b"dir"]), (T[1], [b"a", b"ab", b"dir"]),
    (T[2] + 1, [b"ab", b"dir"]), (T[3], [b"a", b"ab"]), (T[4], [b"a", b"ab", b"dir"]),
    (MAX_INSTANT, [b"a", b"ab", b"dir"]),
])
def test_list_root_across_commits(repo, history, t, names):
    assert ls(repo, history, b"", t) == names


@pytest.mark.parametrize("t,names", [
    (T[0], [b"x"]), (T[1], [b"x", b"y"]), (T[2], [b"y"]), (T[3], []), (T[4], []),
])
def test_list_subdir_across_commits(repo, history, t, names):
    assert ls(repo, history, b"dir", t) == names


def test_list_dir_include_deleted(repo, history):
    with repo.read_txn() as txn:
        rows = timeline.list_dir_at(repo, txn, history.id, b"dir", T[3], include_deleted=True)
    assert [(n, e.deleted) for n, e in rows] == [(b"x", True), (b"y", True)]


def test_entry_versions_and_names_ever(repo, history):
    with repo.read_txn() as txn:
        vers = list(timeline.entry_versions(repo, txn, history.id, b"a"))
        names = list(timeline.names_ever(repo, txn, history.id, b""))
    assert [t for t, _ in vers] == [T[0], T[1], T[2], T[3]]
    assert [e.deleted for _, e in vers] == [False, False, True, False]
    assert names == [b"a", b"ab", b"dir"]


@pytest.mark.parametrize("t,expected", [
    (0, None), (T[0] - 1, None), (T[0], T[0]), (T[0] + 1, T[0]), (T[2] + 999, T[2]),
    (T[4], T[4]), (MAX_INSTANT, T[4]),
])
def test_commit_at_or_before(repo, history, t, expected):
    with repo.read_txn() as txn:
        got = timeline.commit_at_or_before(repo, txn, history.id, t)
    assert (got[0] if got else None) == expected
    if got:
        assert got[1]["kind"] == "test"


def test_commits_range_and_horizon(repo, history):
    with repo.read_txn() as txn:
        assert [t for t, _ in timeline.commits(repo, txn, history.id)] == T
        assert [t for t, _ in timeline.commits(repo, txn, history.id, T[1], T[3])] == T[1:4]
        assert timeline.first_commit(repo, txn, history.id) == T[0]
        assert timeline.commit_count(repo, txn, history.id) == 5
        assert get_volume_by_id(repo, txn, history.id).horizon == T[4]


def test_volumes_do_not_see_each_other(repo, history):
    other = new_volume(repo, "other")
    commit(repo, "other", 1500, [(b"", d()), (b"a", f(1, 99))])
    assert at(repo, other, b"a", T[0]) is None
    assert at(repo, other, b"a", 1500).size == 99
    assert at(repo, history, b"a", 1500).size == 1
    assert ls(repo, other, b"", MAX_INSTANT) == [b"a"]
    with repo.read_txn() as txn:
        assert timeline.commit_at_or_before(repo, txn, other.id, 1499) is None
        assert [t for t, _ in timeline.commits(repo, txn, history.id)] == T


def test_commit_instants_never_go_backwards(repo):
    new_volume(repo)
    t1 = commit(repo, "vol", 5000, [(b"", d())])
    t2 = commit(repo, "vol", 4000, [(b"a", f(1))])  # a clock step back
    t3 = commit(repo, "vol", 5001, [(b"b", f(2))])
    assert t1 == 5000 and t2 == 5001 and t3 == 5002


def blk(c):
    return bytes([c]) * BS


@pytest.fixture
def file_history(repo):
    """File id 7 over four commits, block by block:

    T0: blocks 0,1,2 = A,B,C
    T1: block 1 = D (0 and 2 unchanged)
    T2: block 0 = hole
    T3: block 3 = E (the file grew)
    """
    vol = new_volume(repo)
    commit(repo, "vol", T[0], blocks=[(7, 0, blk(65)), (7, 1, blk(66)), (7, 2, blk(67))])
    commit(repo, "vol", T[1], blocks=[(7, 1, blk(68))])
    commit(repo, "vol", T[2], blocks=[(7, 0, bytes(BS))])
    commit(repo, "vol", T[3], blocks=[(7, 3, blk(69))])
    return vol


def contents(repo, vol, t, n=4):
    out = []
    with repo.read_txn() as txn:
        for bno in range(n):
            bid = timeline.block_at(repo, txn, vol.id, 7, bno, t)
            out.append(None if bid == HOLE_ID else repo.read_block(txn, bid)[0])
    return out


@pytest.mark.parametrize("t,expected", [
    (T[0] - 1, [None, None, None, None]),
    (T[0], [65, 66, 67, None]), (T[1] - 1, [65, 66, 67, None]),
    (T[1], [65, 68, 67, None]), (T[2], [None, 68, 67, None]),
    (T[3], [None, 68, 67, 69]), (MAX_INSTANT, [None, 68, 67, 69]),
])
def test_block_at_across_commits(repo, file_history, t, expected):
    assert contents(repo, file_history, t) == expected


def test_blocks_at_and_block_versions(repo, file_history):
    with repo.read_txn() as txn:
        ids = timeline.blocks_at(repo, txn, file_history.id, 7, 1, 3, T[1])
        assert ids[2] == HOLE_ID  # block 3 does not exist yet at T1
        assert repo.read_block(txn, ids[0]) == blk(68)
        vers = [(b, t) for b, t, _ in timeline.block_versions(repo, txn, file_history.id, 7)]
    assert vers == [(0, T[0]), (0, T[2]), (1, T[0]), (1, T[1]), (2, T[0]), (3, T[3])]


def test_other_file_ids_are_separate(repo, file_history):
    with repo.read_txn() as txn:
        assert timeline.block_at(repo, txn, file_history.id, 8, 0, MAX_INSTANT) == HOLE_ID
        assert timeline.block_at(repo, txn, file_history.id, 6, 0, MAX_INSTANT) == HOLE_ID


def test_identical_blocks_are_stored_once(repo):
    new_volume(repo)
    commit(repo, "vol", 100, blocks=[(1, 0, blk(1)), (2, 0, blk(1)), (1, 1, blk(1))])
    commit(repo, "vol", 200, blocks=[(3, 0, blk(1)), (3, 1, bytes(BS))])
    with repo.read_txn() as txn:
        recs = [r for _, r in timeline.commits(repo, txn, 1)]
    assert recs[0]["blocks_new"] == 1 and recs[0]["blocks_dup"] == 2
    assert recs[1]["blocks_new"] == 0  # already in the repository; the hole is not stored


def test_many_commits_lookup_each_instant(repo):
    """200 commits of one path: every instant between commits finds the right one."""
    new_volume(repo)
    commit(repo, "vol", 10, [(b"", d())])
    for i in range(1, 200):
        e = DELETED if i % 7 == 0 else f(1, i)
        commit(repo, "vol", 10 + 10 * i, [(b"p", e)])
    with repo.read_txn() as txn:
        vol = get_volume(repo, txn, "vol")
    for i in range(1, 200):
        for dt in (0, 5, 9):
            e = at(repo, vol, b"p", 10 + 10 * i + dt)
            if i % 7 == 0:
                assert e is None
            else:
                assert e.size == i


def test_last_alive_steps_back_over_deletions(repo):
    vol = new_volume(repo)
    commit(repo, "vol", 10, [(b"", d()), (b"a", f(1, size=5)), (b"ab", f(2))])
    commit(repo, "vol", 20, [(b"a", f(1, size=7))])
    commit(repo, "vol", 30, [(b"a", DELETED)])
    commit(repo, "vol", 40, [(b"a", DELETED)])
    with repo.read_txn() as txn:
        t, e = timeline.last_alive(repo, txn, vol.id, b"a")
        assert (t, e.size) == (20, 7)
        assert timeline.last_alive(repo, txn, vol.id, b"ab")[0] == 10
        assert timeline.last_alive(repo, txn, vol.id, b"zz") is None


def test_two_directories_with_one_path_hash_are_refused_not_mixed(repo, monkeypatch):
    """Entries are filed under their directory's path hash; should two directories ever
    share one (a chance of one in 2**64 per pair: forced here), the commit that records
    the second is refused, and nothing of it lands."""
    from anytime.store.errors import AnytimeError

    vol = new_volume(repo)
    commit(repo, "vol", T[0], [(b"", d()), (b"a", d()), (b"a/x", f(1))])
    real = repo.dir_hash
    monkeypatch.setattr(repo, "dir_hash", lambda p: real(b"a" if p == b"b" else p))
    with pytest.raises(AnytimeError, match="'a' and 'b' have the same path hash"):
        commit(repo, "vol", T[1], [(b"b", d()), (b"b/y", f(2))])
    monkeypatch.setattr(repo, "dir_hash", real)
    with repo.read_txn() as txn:
        vol = get_volume_by_id(repo, txn, vol.id)
    assert vol.horizon == T[0] and ls(repo, vol, b"", MAX_INSTANT) == [b"a"]
    assert ls(repo, vol, b"a", MAX_INSTANT) == [b"x"]


def test_find_and_check_name_paths_through_the_directory_records(repo):
    """path_histories (find) and check read each directory's path from its ``dirs``
    record; an entry filed under a directory without one is a problem check names."""
    from anytime.store.check import check
    from anytime.store.format import DB_DIRS, dir_key

    vol = new_volume(repo)
    commit(repo, "vol", T[0], [(b"", d()), (b"a", d()), (b"a/b", d()), (b"a/b/x", f(1)),
                               (b"x", f(2))])
    commit(repo, "vol", T[1], [(b"a/b/x", DELETED)])
    with repo.read_txn() as txn:
        got = [(p, [t for t, _ in vs]) for p, vs in
               timeline.path_histories(repo, txn, vol.id, lambda p, n: n == b"x")]
    assert sorted(got) == [(b"a/b/x", [T[0], T[1]]), (b"x", [T[0]])]
    assert not check(repo).problems
    with repo.env.begin(write=True) as txn:
        txn.delete(dir_key(vol.id, repo.dir_hash(b"a/b")), db=repo.dbs[DB_DIRS])
    problems = check(repo).problems
    assert len(problems) == 1 and "has no directory record" in problems[0], problems
