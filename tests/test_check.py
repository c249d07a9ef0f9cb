"""``anytime check``: a clean repository passes; a flipped byte is found and named."""

from __future__ import annotations

import os


def test_check_clean_then_damaged(anytime, repo_dir, src_dir):
    anytime("init", check=0)
    (src_dir / "a.bin").write_bytes(os.urandom(200_000))
    (src_dir / "b.txt").write_text("hello\n" * 1000)
    anytime("snapshot", src_dir, check=0)
    r = anytime("check", "--read-data", check=0)
    assert b"no problems found" in r.stdout
    pack = max(repo_dir.glob("packs/*/*.pack"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x55
    pack.write_bytes(bytes(data))
    r = anytime("check")
    assert r.returncode == 16 and b"fails its checksum" in r.stderr
    assert pack.stem.encode() in r.stderr


def test_check_counts_leftover_packs(anytime, repo_dir, src_dir):
    anytime("init", check=0)
    (src_dir / "a").write_text("x")
    anytime("snapshot", src_dir, check=0)
    stray = repo_dir / "packs" / "ab" / ("ab" * 16 + ".pack")
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"ANYTPACK" + bytes(24))
    r = anytime("check", check=0)
    assert b"1 uncommitted pack file (" in r.stdout
    anytime("snapshot", src_dir, check=0)
    assert not stray.exists(), "the next writer reclaims packs no commit references"


def test_a_second_writer_is_refused_while_one_runs(anytime, repo_dir, src_dir):
    """Two snapshots at once: the second exits 11 with a plain message; readers go on.
    Labels are written under the writer lock too."""
    import fcntl

    anytime("init", check=0)
    (src_dir / "a").write_text("x")
    anytime("snapshot", src_dir, check=0)
    with open(repo_dir / "lock", "r+") as f:  # hold the writer lock as a snapshot would
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("pid 4242")
        f.flush()
        r = anytime("snapshot", src_dir)
        assert r.returncode == 11 and b"pid 4242" in r.stderr
        assert anytime("cat", src_dir / "a", check=0).stdout == b"x", "readers never wait"
        r = anytime("mark", src_dir, "during")
        assert r.returncode == 11 and b"pid 4242" in r.stderr, r.stderr
        anytime("unmark", src_dir, "during", check=11)
    anytime("snapshot", src_dir, check=0)
    anytime("mark", src_dir, "during", check=0)
    anytime("unmark", src_dir, "during", check=0)  # it was written: unmark finds it


def test_check_shows_progress_on_a_terminal(anytime, repo_dir, src_dir):
    """On a terminal, check shows the pack bytes checked of the total."""
    import pty
    import subprocess

    from conftest import anytime_command

    anytime("init", check=0)
    (src_dir / "a.bin").write_bytes(os.urandom(400_000))
    anytime("snapshot", src_dir, check=0)
    master, slave = pty.openpty()
    with subprocess.Popen([anytime_command(), "check"], stderr=slave,
                          stdout=subprocess.DEVNULL,
                          env=dict(os.environ, ANYTIME_REPO=str(repo_dir))) as p:
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the child has closed the terminal
                break
            if not chunk:
                break
            out += chunk
    os.close(master)
    assert p.returncode == 0
    assert b"100.0%" in out and b"MB" in out, out


# --- one test per invariant check verifies (docs/format.md "Invariants") ---------------
# Each builds a real repository by snapshots, breaks one invariant by editing the index
# or a pack directly, and sees check report it under that invariant with a clear message.

import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from conftest import TEST_OPTIONS  # noqa: E402

from anytime.capture import snapshot  # noqa: E402
from anytime.store import check as check_mod  # noqa: E402
from anytime.store import policies  # noqa: E402
from anytime.store.check import check  # noqa: E402
from anytime.store.format import (  # noqa: E402
    BLOCK_LOC,
    DB_BLOCKS,
    DB_BLOCKVERS,
    DB_COMMITS,
    DB_DIRS,
    DB_ENTRIES,
    DB_INODES,
    DB_LABELS,
    DB_META,
    DB_PACKS,
    DB_VOLNAMES,
    DB_VOLUMES,
    HIST_COMMIT,
    HISTORY_MAGIC,
    HOLE_ID,
    INODE_VALUE,
    PACK_INFO,
    RECORD_HEADER,
    SLICE,
    U32,
    U64,
    ZDICT_CURRENT,
    hold_key,
    label_key,
    pending_key,
    split_blockver_key,
    split_label_key,
    vol_key,
)
from anytime.store.history import split_history_id  # noqa: E402
from anytime.store.packs import walk_records  # noqa: E402
from anytime.store.packstore import LocalDirPackStore  # noqa: E402
from anytime.store.repo import Repository  # noqa: E402
from anytime.store.retention import Hold, Policy, parse_duration  # noqa: E402
from anytime.store.timeline import set_label  # noqa: E402
from anytime.store.volumes import Volume  # noqa: E402


@pytest.fixture
def made(tmp_path, src_dir):
    """A repository with two commits of one volume: a 2.5 MB random file (blocks made
    of slices of several chunks), small files, a symlink, a subdirectory, a label."""
    import random

    # the same bytes and cut points every run (seeded content, a fixed chunker seed)
    (src_dir / "big.bin").write_bytes(random.Random(9).randbytes(2_500_000))
    (src_dir / "a.txt").write_text("hello\n" * 100)
    (src_dir / "sub").mkdir()
    (src_dir / "sub" / "b.txt").write_text("other\n" * 50)
    os.symlink("a.txt", src_dir / "link")
    root = str(tmp_path / "repo")
    repo = Repository.init(root, options=TEST_OPTIONS, chunker_seed=12345)
    snapshot(repo, str(src_dir))
    (src_dir / "a.txt").write_text("changed\n")
    snapshot(repo, str(src_dir), label="second")
    vol = volume(repo)
    set_label(repo, vol.id, "marked", vol.horizon - 1)  # a pack of label changes only
    # packs of setting changes only (I7), a policy and a hold in the history (I26)
    policies.set_policy(repo, vol.id, Policy(daily=parse_duration("30d")))
    policies.add_hold(repo, vol.id, Hold("h1", vol.horizon - 1, vol.horizon - 1,
                                         label="marked"))
    yield repo
    repo.close()


def records(repo, db) -> list[tuple[bytes, bytes]]:
    with repo.read_txn() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=repo.dbs[db])]


def put(repo, db, key: bytes, value: bytes) -> None:
    with repo.env.begin(write=True) as txn:
        txn.put(key, value, db=repo.dbs[db])


def volume(repo) -> Volume:
    return Volume.decode(records(repo, DB_VOLUMES)[0][1])


def found(repo, inv: str, pattern: str, read_data: bool = False) -> list[str]:
    """Check ``repo``; assert a problem of invariant ``inv`` matches ``pattern`` and
    return the messages of all problems."""
    rep = check(repo, read_data=read_data)
    mine = [f.message for f in rep.findings if f.invariant == inv]
    assert any(re.search(pattern, m) for m in mine), (inv, pattern, rep.problems)
    assert all(f.check == check_mod.INVARIANTS[f.invariant] for f in rep.findings)
    assert [f.message for f in rep.findings] == rep.problems
    return rep.problems


def a_pack(repo) -> tuple[bytes, Path]:
    pack_id = records(repo, DB_PACKS)[0][0]
    return pack_id, Path(LocalDirPackStore(repo.root).path(pack_id))


def test_a_clean_repository_has_no_problems(made):
    rep = check(made, read_data=True)
    assert (rep.problems, rep.findings, rep.warnings, rep.damaged) == ([], [], [], [])
    assert rep.packs > 3 and rep.blocks > 3 and rep.block_versions > 3


def test_the_invariant_table_of_the_docs_is_the_checks():
    """docs/format.md names, for each invariant, the function that verifies it: the
    same table as check.INVARIANTS, and each is a method of the checker."""
    doc = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    table = dict(re.findall(r"^\| (I\d+) \| `(check_\w+)`", doc, re.M))
    assert table == check_mod.INVARIANTS
    for name in table.values():
        assert callable(getattr(check_mod._Checker, name))


def test_I2_a_repository_others_can_read_is_warned_of(made):
    os.chmod(made.root, 0o755)
    rep = check(made)
    assert not rep.problems and any("can be read by users other" in w for w in rep.warnings)


def test_I4_a_pack_naming_another_id(made):
    pack_id, path = a_pack(made)
    data = bytearray(path.read_bytes())
    data[12:28] = bytes(16)
    path.write_bytes(bytes(data))
    found(made, "I4", f"pack {pack_id.hex()} names itself 0{{32}} in its header")


def test_I5_bytes_after_the_last_record_of_a_listed_pack(made):
    pack_id, path = a_pack(made)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"ATRC" + bytes(10))
    problems = found(made, "I5", f"pack {pack_id.hex()} is cut short, torn or overwritten: "
                                 f"its 14 bytes from offset {size} are not a whole record")
    assert any(f"pack {pack_id.hex()} was appended to after it was listed" in p
               for p in problems)


def test_I5_a_history_record_failing_its_checksum(made):
    store = LocalDirPackStore(made.root)
    pack_id, offset, slen = next((p, off, slen) for p, _ in records(made, DB_PACKS)
                                 for magic, off, _rid, _c, _r, slen, _ok
                                 in walk_records(store, p) if magic == HISTORY_MAGIC)
    path = Path(store.path(pack_id))
    data = bytearray(path.read_bytes())
    data[offset + RECORD_HEADER.size + slen - 1] ^= 1
    path.write_bytes(bytes(data))
    found(made, "I5", f"pack {pack_id.hex()}: the history record at offset {offset} fails "
                      f"its checksum; a rebuild of the index from the packs would lack it")


def test_I6_a_pack_unlike_its_record_and_a_missing_pack(made):
    gone = BLOCK_LOC.unpack(records(made, DB_BLOCKS)[0][1])[0]  # a pack holding a chunk
    pack_id, info = next((k, v) for k, v in records(made, DB_PACKS) if k != gone)
    size, n, t = PACK_INFO.unpack(info)
    put(made, DB_PACKS, pack_id, PACK_INFO.pack(size, n + 1, t))
    found(made, "I6", f"pack {pack_id.hex()} holds other records than listed: it has "
                      f"{size} bytes and {n} records, the index lists {size} bytes and "
                      f"{n + 1} records")
    LocalDirPackStore(made.root).delete(gone)
    rep = check(made)
    assert f"pack {gone.hex()} is missing: the index lists it" in rep.problems
    assert any(d.pack == gone.hex() and d.reason == "is in a pack that is missing"
               for d in rep.damaged)


def test_I7_a_pack_listed_with_no_commits_instant(made):
    pack_id = BLOCK_LOC.unpack(records(made, DB_BLOCKS)[0][1])[0]  # not the label's
    info = dict(records(made, DB_PACKS))[pack_id]
    size, n, _t = PACK_INFO.unpack(info)
    put(made, DB_PACKS, pack_id, PACK_INFO.pack(size, n, 12345))
    found(made, "I7", f"pack {pack_id.hex()} is listed with commit instant 12345, which "
                      f"is no commit's")


def test_I8_the_hole_id_indexed_and_a_chunk_that_is_not_its_content(made):
    bid, loc = next((k, v) for k, v in records(made, DB_BLOCKS)
                    if BLOCK_LOC.unpack(v)[4] == 0)  # a raw record: random data
    put(made, DB_BLOCKS, HOLE_ID, loc)
    found(made, "I8", "block 0{16} .* is the hole id, which is never stored")
    with made.env.begin(write=True) as txn:
        txn.delete(HOLE_ID, db=made.dbs[DB_BLOCKS])
    # the stored bytes replaced by others, with a checksum to match: only the id tells
    pack_id, offset, slen, raw, codec = BLOCK_LOC.unpack(loc)
    path = Path(LocalDirPackStore(made.root).path(pack_id))
    data = bytearray(path.read_bytes())
    other = os.urandom(slen)
    from xxhash import xxh3_64_intdigest

    data[offset:offset + RECORD_HEADER.size] = RECORD_HEADER.pack(
        b"ATRC", bid, codec, raw, slen, xxh3_64_intdigest(other))
    data[offset + RECORD_HEADER.size:offset + RECORD_HEADER.size + slen] = other
    path.write_bytes(bytes(data))
    assert not check(made).problems, "without --read-data only the hash tells"
    found(made, "I8", f"block {bid.hex()[:16]} .* does not match its id", read_data=True)
    rep = check(made, read_data=True)
    assert [a.path for d in rep.damaged for a in d.affected] != []


def test_I9_a_block_record_unlike_its_pack_record(made):
    bid, loc = records(made, DB_BLOCKS)[0]
    pack_id, offset, slen, raw, codec = BLOCK_LOC.unpack(loc)
    put(made, DB_BLOCKS, bid, BLOCK_LOC.pack(pack_id, offset, slen, raw + 1, codec))
    found(made, "I9", f"block {bid.hex()[:16]} .* raw length {raw} .* but the "
                      f"index says {codec}, {raw + 1}")


def test_I10_the_current_dictionary_missing(made):
    put(made, DB_META, ZDICT_CURRENT, U32.pack(40000))
    found(made, "I10", "meta 'zdict' names dictionary 00009c40, which the index does "
                       "not hold")


def test_I12_a_volume_its_name_does_not_find(made):
    vol = volume(made)
    with made.env.begin(write=True) as txn:
        txn.delete(vol.name.encode(), db=made.dbs[DB_VOLNAMES])
    found(made, "I12", f"volume '{vol.name}' \\(id {vol.id}\\) is not found by its name")


def test_I13_records_of_a_volume_that_does_not_exist(made):
    put(made, DB_LABELS, label_key(99, b"stray"), U64.pack(1))
    found(made, "I13", "labels has records of volume 99, which does not exist")


def test_I14_a_horizon_that_is_not_the_newest_commit(made):
    vol = volume(made)
    newest = vol.horizon
    vol.horizon += 5
    put(made, DB_VOLUMES, vol_key(vol.id), vol.encode())
    found(made, "I14", f"horizon {newest + 5}, but its newest commit is at {newest}")


def test_I15_a_path_version_at_no_commits_instant(made):
    key, val = records(made, DB_ENTRIES)[0]
    put(made, DB_ENTRIES, key[:-8] + U64.pack(12345), val)
    found(made, "I15", "the path version .* at 12345, which is no commit's instant")


def test_I17_a_pending_marker_at_the_horizon_and_one_past_it(made):
    vol = volume(made)
    put(made, DB_META, pending_key(vol.id), U64.pack(vol.horizon))
    found(made, "I17", f"pending commit marker at {vol.horizon}, at or before its horizon")
    # past the horizon, with a staged record: an unfinished commit, not damage
    put(made, DB_META, pending_key(vol.id), U64.pack(vol.horizon + 1))
    key, val = records(made, DB_ENTRIES)[0]
    put(made, DB_ENTRIES, key[:-8] + U64.pack(vol.horizon + 1), val)
    ikey, ival = records(made, DB_INODES)[0]  # a mapping to a file id not yet committed
    put(made, DB_INODES, ikey, INODE_VALUE.pack(vol.next_file_id, *INODE_VALUE.unpack(ival)[1:]))
    rep = check(made)
    assert not rep.problems and any("unfinished commit" in w for w in rep.warnings)


def test_I18_an_inode_mapping_to_a_file_id_never_allocated(made):
    vol = volume(made)
    key, val = records(made, DB_INODES)[0]
    _fid, mtime, size = INODE_VALUE.unpack(val)
    put(made, DB_INODES, key, INODE_VALUE.pack(vol.next_file_id + 7, mtime, size))
    found(made, "I18", f"has file id {vol.next_file_id + 7}, not below the volume's next "
                       f"file id {vol.next_file_id}")


def test_I19_an_entry_with_bytes_after_its_parts_and_one_of_the_wrong_type(made):
    (key, val), (key2, val2) = records(made, DB_ENTRIES)[:2]
    put(made, DB_ENTRIES, key, val + b"\x00")
    found(made, "I19", "does not decode \\(1 bytes more than its parts\\)")
    put(made, DB_ENTRIES, key, val)
    put(made, DB_ENTRIES, key2, bytes([7]) + val2[1:])  # kind socket, mode another's
    found(made, "I19", "is a socket whose mode .* says another type")


def test_I20_a_block_reference_of_the_wrong_length(made):
    key, ref = records(made, DB_BLOCKVERS)[0]
    put(made, DB_BLOCKVERS, key, ref + b"x")
    found(made, "I20", "the block version is damaged \\(a block reference of 33 bytes")


def test_I21_a_block_reference_naming_a_chunk_not_indexed(made):
    key, _ref = records(made, DB_BLOCKVERS)[0]
    stray = bytes(range(1, 33))
    put(made, DB_BLOCKVERS, key, stray)
    found(made, "I21", f"block {stray.hex()[:16]} is named by a block version but not in "
                       f"the index")
    rep = check(made)
    assert [d.block for d in rep.damaged] == [stray.hex()] and rep.damaged[0].affected


def test_I22_slices_longer_than_the_block_and_past_their_chunk(made):
    key, ref = next((k, v) for k, v in records(made, DB_BLOCKVERS) if len(v) > 40)
    slices = [SLICE.unpack_from(ref, i) for i in range(0, len(ref), SLICE.size)]
    cid, off, n = slices[-1]
    _vid, fid, block_no, t = split_blockver_key(key)
    longer = ref[:-SLICE.size] + SLICE.pack(cid, off, n + 1)
    put(made, DB_BLOCKVERS, key, longer)
    want = sum(s[2] for s in slices)
    found(made, "I22", f"file {fid}, block {block_no} at {t}: the block "
                                  f"reference makes {want + 1} bytes, not the block's {want}")
    past = ref[:-SLICE.size] + SLICE.pack(cid, 10**8, n)
    put(made, DB_BLOCKVERS, key, past)
    found(made, "I22", f"a slice \\[{10**8}, {10**8 + n}\\) of chunk {cid.hex()[:16]} ends "
                       f"past the chunk's")


def test_I23_a_commit_record_without_the_writers_counts(made):
    key, val = records(made, DB_COMMITS)[0]
    rec = json.loads(val)
    del rec["packs"]
    put(made, DB_COMMITS, key, json.dumps(rec).encode())
    found(made, "I23", "the commit record .* lacks packs")
    put(made, DB_COMMITS, key, b"{not json")
    found(made, "I23", "the commit record .* is damaged")


def test_I24_a_label_that_is_not_an_instant(made):
    key, _val = records(made, DB_LABELS)[0]
    put(made, DB_LABELS, key, b"abc")
    found(made, "I24", "label b'\\w+' holds 3 bytes, not an instant")


def test_I25_a_directory_record_naming_another_path(made):
    key, path = next((k, v) for k, v in records(made, DB_DIRS) if v)
    put(made, DB_DIRS, key, path + b"x")
    found(made, "I25", f"names '{path.decode()}x', whose hash is another")


def test_I26_index_records_the_packs_do_not_hold(made):
    """A label put in the index alone, and a commit whose commit record is in no
    listed pack: a rebuild from the packs would lose them."""
    key, val = records(made, DB_LABELS)[0]
    vid, _name = split_label_key(key)
    put(made, DB_LABELS, label_key(vid, b"sneaked-in"), val)
    found(made, "I26", "label 'sneaked-in' is in no history record")
    vid = volume(made).id
    put(made, DB_META, hold_key(vid, "h9"), Hold("h9", 1, 2).to_json().encode())
    found(made, "I26", "its hold h9 is in no history record")
    # the history of the last commit, as if its packs were never listed
    t = volume(made).horizon
    with made.read_txn() as txn:
        listed = made.committed_packs(txn)
    holder = next(p for p in listed if any(
        m == HISTORY_MAGIC and split_history_id(rid)[:3] == (HIST_COMMIT, vid, t)
        for m, _o, rid, *_ in walk_records(made.pack_store, p)))
    with made.env.begin(write=True) as txn:
        txn.delete(holder, db=made.dbs[DB_PACKS])
    problems = check(made).problems
    assert any(f"the commit of {t} has no commit record in the packs" in p
               for p in problems), problems


def test_check_json_names_the_invariant_of_each_problem(anytime, repo_dir, src_dir):
    """check --json keeps its keys and adds, for each problem, its invariant and the
    function that found it."""
    anytime("init", check=0)
    (src_dir / "a").write_text("x" * 1000)
    anytime("snapshot", src_dir, check=0)
    out = json.loads(anytime("check", "--json", check=0).stdout)
    assert {"packs", "blocks", "block_versions", "bytes_checked", "leftover_packs",
            "reclaimable", "problems", "damaged", "warnings", "ok", "findings"} <= set(out)
    assert out["ok"] and out["findings"] == []
    with Repository.open(str(repo_dir)) as repo:
        key, _ = records(repo, DB_BLOCKVERS)[0]
        put(repo, DB_BLOCKVERS, key, b"short")
    r = anytime("check", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 16 and not out["ok"]
    assert out["findings"] == [{"invariant": "I20", "check": "check_block_refs",
                                "message": out["problems"][0]}]
