"""Every fault of the faulty pack store (store/faulty.py), injected while a real
snapshot runs in-process (the scan ``anytime snapshot`` runs, on a repository opened
with the faulty store over its real ``packs/``): the run fails with the error the CLI
reports for that case, every earlier commit reads back exact, ``check`` finds nothing
wrong with committed data, and the next snapshot works. Damage to packs (cut short,
a flipped byte) is reported by ``check`` and by reads, naming what it spoils."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TEST_OPTIONS

from anytime.capture import snapshot
from anytime.store.check import check
from anytime.store.errors import (
    AnytimeError,
    DamagedData,
    RepositoryFull,
    RepositoryIOError,
)
from anytime.store.faulty import FaultyPackStore
from anytime.store.format import KIND_DIR, KIND_FILE, PACK_HEADER, RECORD_HEADER
from anytime.store.packstore import LocalDirPackStore, MemoryPackStore
from anytime.store.repo import Repository
from anytime.store.volumes import get_volume
from anytime.vfs.view import View

BS = 65536  # with the tests' 64 KiB pack target: about one pack per new block


def fill(src: Path, seed: int) -> None:
    """Files of random blocks (several packs' worth) and a few small text files."""
    for i in range(6):
        (src / f"r{i}.bin").write_bytes(os.urandom(BS * (1 + i % 3) + 100 * seed))
    (src / "sub").mkdir(exist_ok=True)
    for i in range(4):
        (src / "sub" / f"t{i}.txt").write_text(f"version {seed} of text {i}\n" * (50 + i))


def tree_at(repo, volume: str, instant: int) -> dict[str, bytes | Exception]:
    """Every file of ``volume`` at ``instant``: its bytes, or the error reading it."""
    with repo.read_txn() as txn:
        view = View(repo, get_volume(repo, txn, volume), instant)
    out = {}

    def walk(path: bytes) -> None:
        for name, entry in view.listdir(path):
            p = path + b"/" + name if path else name
            if entry.kind == KIND_DIR:
                walk(p)
            elif entry.kind == KIND_FILE:
                try:
                    out[p.decode()] = b"".join(view.iter_read(entry))
                except AnytimeError as e:
                    out[p.decode()] = e
    walk(b"")
    return out


def files_of(src: Path) -> dict[str, bytes]:
    return {str(p.relative_to(src)): p.read_bytes() for p in sorted(src.rglob("*"))
            if p.is_file()}


@pytest.fixture
def first(tmp_path, src_dir):
    """A repository on a faulty store over a local directory, with one commit of
    ``src_dir``; then the source changed. (faulty store, root, volume, instant, files
    at that instant)."""
    root = str(tmp_path / "repo")
    faulty = FaultyPackStore(LocalDirPackStore(root))
    Repository.init(root, block_size=BS, options=TEST_OPTIONS, packs=faulty).close()
    fill(src_dir, 1)
    with Repository.open(root, TEST_OPTIONS, packs=faulty) as repo:
        rep = snapshot(repo, str(src_dir))
    files = files_of(src_dir)
    fill(src_dir, 2)  # every file changes: the next snapshot writes new packs
    return faulty, root, rep.volume, rep.instant, files


def assert_intact(root: str, volume: str, instant: int, files: dict) -> None:
    """What the next process sees (a plain local store): the commit at ``instant`` is
    the volume's newest, reads back exact, and check finds no problem, no leftover."""
    with Repository.open(root, TEST_OPTIONS) as repo:
        with repo.read_txn() as txn:
            assert get_volume(repo, txn, volume).horizon == instant, "nothing committed"
        assert tree_at(repo, volume, instant) == files
        rep = check(repo, read_data=True)
        assert not rep.problems, rep.problems
        assert rep.leftover_packs == 0, "the failed run deleted its packs"


def snapshot_again(root: str, src: Path, volume: str) -> None:
    """The next snapshot, without faults, commits the source as it is now."""
    with Repository.open(root, TEST_OPTIONS) as repo:
        rep = snapshot(repo, str(src))
        assert tree_at(repo, volume, rep.instant) == files_of(src)
        assert not check(repo).problems


@pytest.mark.parametrize("op,after", [("create", 0), ("create", 4), ("append", 0),
                                      ("append", 5), ("seal", 0), ("seal", 3),
                                      ("sync", 0)])
def test_an_io_error_writing_a_pack_fails_the_snapshot_cleanly(first, src_dir, op, after):
    faulty, root, volume, instant, files = first
    faulty.fail(op, after=after)
    before = dict(faulty.calls)
    with Repository.open(root, TEST_OPTIONS, packs=faulty) as repo:
        with pytest.raises(RepositoryIOError) as e:
            snapshot(repo, str(src_dir))
    assert faulty.calls[op] - before[op] == after + 1, "the fault hit during the snapshot"
    msg = str(e.value)
    assert "Input/output error" in msg and "Nothing of this run was committed" in msg
    assert root in msg and e.value.exit_code == 1
    assert not isinstance(e.value, OSError), "never taken for an unreadable source file"
    assert_intact(root, volume, instant, files)
    snapshot_again(root, src_dir, volume)


@pytest.mark.parametrize("room", [0, 1000, 3 * BS + 500])
def test_a_full_disk_fails_the_snapshot_as_the_cli_says(first, src_dir, room):
    faulty, root, volume, instant, files = first
    faulty.fill_disk(room)
    with Repository.open(root, TEST_OPTIONS, packs=faulty) as repo:
        with pytest.raises(RepositoryFull, match="disk is full") as e:
            snapshot(repo, str(src_dir))
    assert e.value.exit_code == 18 and "writing a pack" in str(e.value)
    faulty.make_room()
    assert_intact(root, volume, instant, files)
    snapshot_again(root, src_dir, volume)


def test_failing_reads_are_an_error_not_damage(first, src_dir):
    """A snapshot reads no pack, so it commits; reads of committed data while the disk
    fails give an I/O error (not recorded as damage), and are exact again after."""
    faulty, root, volume, instant, files = first
    faulty.fail_reads(count=10**6)
    with Repository.open(root, TEST_OPTIONS, packs=faulty) as repo:
        second = snapshot(repo, str(src_dir))
        got = tree_at(repo, volume, instant)
        assert {p: type(v) for p, v in got.items()} == dict.fromkeys(files,
                                                                     RepositoryIOError)
        assert "reading pack" in str(got["r0.bin"]) and got["r0.bin"].exit_code == 1
        assert not os.path.exists(os.path.join(root, "damaged")), "not recorded as damage"
        problems = check(repo).problems
        assert "Input/output error" in problems[0]
        assert any("is in a pack that cannot be read" in p for p in problems)
    faulty.make_room()
    with Repository.open(root, TEST_OPTIONS) as repo:
        assert tree_at(repo, volume, instant) == files
        assert tree_at(repo, volume, second.instant) == files_of(src_dir)
        assert not check(repo, read_data=True).problems


def committed_pack(root: str, instant: int) -> bytes:
    """The largest pack of the commit at ``instant`` (the only commit so far)."""
    store = LocalDirPackStore(root)
    return max(store.list(), key=store.size)


@pytest.mark.parametrize("fault", ["truncate", "flip"])
def test_damage_to_a_committed_pack_during_a_snapshot_is_reported(first, src_dir, fault):
    """A committed pack cut short or with a flipped byte (here: while the next snapshot
    seals its first pack): the snapshot commits, check names the damage and the files it
    spoils, those read as damaged, and everything else of the earlier commit is exact."""
    faulty, root, volume, instant, files = first
    victim = committed_pack(root, instant)
    size = LocalDirPackStore(root).size(victim)
    damage = {"truncate": lambda: faulty.truncate(victim, size // 2),
              "flip": lambda: faulty.flip(victim, PACK_HEADER.size + RECORD_HEADER.size + 7)}

    def once(_pack_id, done=[]):  # noqa: B006 - the hook fires once
        if not done:
            done.append(damage[fault]())
    faulty.when_sealed(once)
    with Repository.open(root, TEST_OPTIONS, packs=faulty) as repo:
        snapshot(repo, str(src_dir))
        got = tree_at(repo, volume, instant)
        spoiled = {p for p, v in got.items() if isinstance(v, Exception)}
        assert spoiled, "the damaged pack holds a block of the earlier commit"
        assert all(isinstance(got[p], DamagedData) and got[p].exit_code == 16
                   for p in spoiled)
        assert {p: v for p, v in got.items() if p not in spoiled} == \
            {p: v for p, v in files.items() if p not in spoiled}
        rep = check(repo)
        reason = {"truncate": "cut short", "flip": "fails its checksum"}[fault]
        assert rep.problems and all(victim.hex() in p and reason in p
                                    for p in rep.problems), rep.problems
        assert {a.path.removeprefix(str(src_dir) + "/") for d in rep.damaged
                for a in d.affected if a.from_ns <= instant} == spoiled


@pytest.mark.parametrize("fault", ["truncate", "flip"])
def test_damage_to_a_pack_the_snapshot_writes_spares_earlier_commits(first, src_dir, fault):
    """Storage that loses or garbles a pack just sealed: the commit lands (the store
    said the pack was durable), check finds the damage, and no earlier commit is
    touched (packs are never written again after their commit)."""
    faulty, root, volume, instant, files = first
    hit = []

    def once(pack_id):
        if not hit:
            hit.append(pack_id)
            if fault == "truncate":
                faulty.truncate(pack_id, PACK_HEADER.size + 10)
            else:
                faulty.flip(pack_id, PACK_HEADER.size + RECORD_HEADER.size + 3, 0x80)
    faulty.when_sealed(once)
    with Repository.open(root, TEST_OPTIONS, packs=faulty) as repo:
        snapshot(repo, str(src_dir))
        assert tree_at(repo, volume, instant) == files
        problems = check(repo).problems
    assert problems and all(hit[0].hex() in p for p in problems), problems


def test_a_repository_runs_on_a_memory_store(tmp_path, src_dir):
    """The repository takes any pack store: here no pack touches the disk."""
    root = str(tmp_path / "repo")
    packs = MemoryPackStore()
    Repository.init(root, block_size=BS, options=TEST_OPTIONS, packs=packs).close()
    fill(src_dir, 1)
    with Repository.open(root, TEST_OPTIONS, packs=packs) as repo:
        rep = snapshot(repo, str(src_dir))
        assert tree_at(repo, rep.volume, rep.instant) == files_of(src_dir)
        assert not check(repo, read_data=True).problems
    assert len(list(packs.list())) > 3
    assert not os.path.exists(os.path.join(root, "packs"))
