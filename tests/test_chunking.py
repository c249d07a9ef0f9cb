"""Content-defined chunking (store/chunker.py): blocks name slices of chunks, so content
that moves keeps its chunks. Stored-byte figures are deterministic here: the
repositories use a fixed chunker seed, and the text is the standard library's own."""

from __future__ import annotations

import hashlib
import os
import random
import sysconfig

import pytest

from anytime.capture import snapshot
from anytime.store import timeline
from anytime.store.chunker import Chunker, RefBuilder, StreamCutter, block_refs
from anytime.store.format import (
    CHUNK_MAX,
    CHUNK_MIN,
    HOLE_ID,
    MAX_INSTANT,
    SLICE,
    decode_ref,
    encode_ref,
    ref_chunk_ids,
)
from anytime.store.repo import Repository
from anytime.store.volumes import list_volumes
from anytime.vfs.view import View

SEED = 0x5EED
TEXT_BYTES = 31_500_000


@pytest.fixture(scope="module")
def py_text() -> bytes:
    """About 31.5 MB of the standard library's .py files, concatenated in sorted order."""
    out, n = [], 0
    for d, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        dirs.sort()
        dirs[:] = [x for x in dirs if x != "site-packages"]
        for f in sorted(files):
            if f.endswith(".py") and n < TEXT_BYTES:
                with open(os.path.join(d, f), "rb") as fh:
                    b = fh.read()
                out.append(b)
                n += len(b)
    return b"".join(out)[:TEXT_BYTES]


def _repo(path, block_size: int = 1 << 20) -> Repository:
    return Repository.init(str(path), block_size=block_size, chunker_seed=SEED)


def _vol(repo):
    """The repository's one volume."""
    with repo.read_txn() as txn:
        (vol,) = list_volumes(repo, txn)
    return vol


def _commit(repo, src) -> dict:
    """Snapshot ``src`` into ``repo``; the commit record (bytes_new, bytes_stored, ...)."""
    rep = snapshot(repo, str(src))
    with repo.read_txn() as txn:
        return dict(timeline.commits(repo, txn, _vol(repo).id, rep.instant,
                                     rep.instant))[rep.instant]


def _read(repo, src, name: str, instant: int = MAX_INSTANT, offset=0, size=None) -> bytes:
    view = View(repo, _vol(repo), instant)
    e = view.lookup(name.encode())
    return view.read(e, offset, e.size if size is None else size)


def _edit_and_commit(repo, src, f, data: bytes) -> dict:
    f.write_bytes(data)
    os.utime(f, ns=(1, 1))  # changed for the stat cache, and not "recent": read once
    return _commit(repo, src)


# --- what is stored -------------------------------------------------------------------
@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("edit", ["insert", "delete"])
def test_a_few_bytes_inserted_or_deleted_store_about_two_chunks(tmp_path, py_text, where,
                                                                edit):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "all.py.txt"
    repo = _repo(tmp_path / "repo")
    first = _edit_and_commit(repo, src, f, py_text)
    off = {"start": 1000, "middle": len(py_text) // 2, "end": len(py_text) - 5000}[where]
    changed = (py_text[:off] + b"# 105 new bytes ".ljust(105, b"#") + py_text[off:]
               if edit == "insert" else py_text[:off] + py_text[off + 105:])
    second = _edit_and_commit(repo, src, f, changed)
    assert second["blocks_new"] <= 2, second
    assert second["bytes_new"] <= 2 * CHUNK_MAX
    # a new version of every block after the edit (they moved), but tiny ones
    assert second["bytes_stored"] < first["bytes_stored"] / 10
    assert _read(repo, src, "all.py.txt") == changed
    assert _read(repo, src, "all.py.txt", instant=second["started_ns"] - 1) == py_text
    repo.close()


def test_the_issue_insertion_grows_less_than_restic_did(tmp_path, py_text):
    """105 bytes inserted at offset 1000 of 31.5 MB of text: restic 0.14 grew by 0.32 MB
    there (issue 9; 0.24 MB on this machine), borg 1.2 by 0.71 MB; fixed 1 MiB blocks
    stored the whole file again (6.6 MB). The figure is for this test's seed: with
    another, the first chunk (the one that changes) has another size; the benchmark
    measures repositories with random seeds."""
    src = tmp_path / "src"
    src.mkdir()
    f = src / "text"
    repo = _repo(tmp_path / "repo")
    _edit_and_commit(repo, src, f, py_text)
    before = _dir_bytes(tmp_path / "repo")
    _edit_and_commit(repo, src, f, py_text[:1000] + b"x" * 105 + py_text[1000:])
    growth = _dir_bytes(tmp_path / "repo") - before
    assert growth < 240_000, growth
    repo.close()


def _dir_bytes(path) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_size
               for d, _, files in os.walk(path) for n in files)


def test_content_copied_to_another_offset_is_stored_once(tmp_path):
    rnd = random.Random(7)
    body = rnd.randbytes(12 << 20)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(body)
    repo = _repo(tmp_path / "repo")
    first = _commit(repo, src)
    assert first["bytes_new"] == len(body)  # random: nothing dedups inside it
    (src / "b").write_bytes(rnd.randbytes(3333) + body[5000:] + rnd.randbytes(777))
    second = _commit(repo, src)
    # the bytes before and after, and the chunks cut across them: at most 3 chunks
    assert second["bytes_new"] <= 3 * CHUNK_MAX
    assert second["bytes_new"] < len(body) / 4
    assert _read(repo, src, "b") == (src / "b").read_bytes()
    repo.close()


@pytest.mark.parametrize("bs", [4096, 64 * 1024, 1 << 20, 4 << 20])
def test_every_offset_reads_back_whatever_the_block_size(tmp_path, bs):
    """Blocks smaller and larger than chunks; sparse holes; reads across every kind of
    boundary (block, chunk, hole)."""
    rnd = random.Random(bs)
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    size = 9 * (1 << 20) + 12345
    with open(f, "wb") as fh:
        fh.write(rnd.randbytes(3 << 20))
        fh.seek(5 << 20)  # a hole of 2 MiB
        fh.write(rnd.randbytes(size - (5 << 20)))
    data = f.read_bytes()
    repo = _repo(tmp_path / "repo", block_size=bs)
    _commit(repo, src)
    assert _read(repo, src, "f") == data
    for _ in range(200):
        off = rnd.randrange(size)
        n = rnd.choice([1, 100, bs - 1, bs, bs + 1, 1 << 20, 3 << 20])
        assert _read(repo, src, "f", offset=off, size=n) == data[off:off + n], (off, n)
    view = View(repo, _vol(repo), MAX_INSTANT)
    _, refs = view.block_ids(view.lookup(b"f"), 0, size)
    hole_blocks = [i for i, r in enumerate(refs) if r == HOLE_ID]
    # the blocks wholly inside the hole, and no others
    assert hole_blocks == list(range(-(-(3 << 20) // bs), (5 << 20) // bs))
    repo.close()


# --- the parts --------------------------------------------------------------------------
def test_block_references_round_trip():
    a, b = os.urandom(32), os.urandom(32)
    assert encode_ref([(a, 0, 100)], 100) == a  # one whole chunk: its id
    for slices in ([(a, 0, 99)], [(a, 5, 95)], [(a, 10, 20), (b, 0, 7)],
                   [(a, 1, 2), (HOLE_ID, 0, 3), (b, 4, 5)]):
        ref = encode_ref(slices, 100)
        assert len(ref) == SLICE.size * len(slices)
        assert decode_ref(ref) == slices
        assert ref_chunk_ids(ref) == [c for c, _, _ in slices if c != HOLE_ID]
    assert decode_ref(a) == [(a, 0, None)]
    assert ref_chunk_ids(HOLE_ID) == []
    with pytest.raises(ValueError):
        decode_ref(b"\x01" * 41)


def test_block_refs_map_blocks_onto_chunks():
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    # blocks of 4 (then 2, a hole, 4) over chunks of 3, 5 and 2 bytes
    refs = block_refs([4, None, 4, 2], [(a, 3), (b, 5), (c, 2)])
    assert refs[1] == HOLE_ID
    assert decode_ref(refs[0]) == [(a, 0, 3), (b, 0, 1)]
    assert decode_ref(refs[2]) == [(b, 1, 4)]
    assert refs[3] == c  # exactly chunk c
    with pytest.raises(ValueError):
        block_refs([1], [(a, 1), (b, 1)])


def test_cutting_in_pieces_gives_the_chunks_of_the_whole():
    ch = Chunker(SEED)
    data = random.Random(3).randbytes(20 << 20)
    whole = ch.cut(data)
    assert sum(whole) == len(data)
    assert all(CHUNK_MIN <= n <= CHUNK_MAX for n in whole[:-1])
    for piece in (1 << 20, 3 << 20, 8 << 20):
        cutter, got = StreamCutter(ch), []
        for i in range(0, len(data), piece):
            got += [len(x) for x in cutter.feed(data[i:i + piece])]
        got += [len(x) for x in cutter.finish()]
        assert got == whole, piece
    other = Chunker(SEED + 2)  # another repository cuts elsewhere
    assert other.cut(data) != whole


def test_zero_blocks_are_holes_and_store_nothing():
    stored = []

    def store(data):
        stored.append(len(data))
        return bytes([len(stored)]) * 32

    rb = RefBuilder(Chunker(SEED), store)
    for data in (b"x" * 1000, bytes(1000), None, b"y" * 10):
        rb.add(data)
    refs = rb.finish()
    assert refs[1] == refs[2] == HOLE_ID
    assert stored == [1010]  # one chunk: the two non-hole blocks joined
    assert decode_ref(refs[0]) == [(b"\x01" * 32, 0, 1000)]
    assert decode_ref(refs[3]) == [(b"\x01" * 32, 1000, 10)]


def test_blocks_read_into_the_buffer_give_the_references_of_blocks_added():
    """A reader that reads each block straight into the stream's buffer (space, wrote)
    gets the references of one that hands over bytes (add): the same chunks, the same
    holes, and blocks of 3 MiB (larger than the part of the buffer left) fit too."""
    rnd = random.Random(5)
    blocks = [rnd.randbytes(1 << 20) for _ in range(9)]
    blocks[3] = bytes(1 << 20)
    blocks += [rnd.randbytes(3 << 20), rnd.randbytes(1000)]

    def name(data):
        return hashlib.sha256(data).digest()

    ch = Chunker(SEED)
    added = RefBuilder(ch, name)
    for b in blocks:
        added.add(b)
    want = added.finish()
    read = RefBuilder(ch, name)
    for b in blocks:
        read.space(len(b) + 1)[:len(b)] = b  # a reader asks a byte more at the end
        read.wrote(len(b))
    assert read.finish() == want
    assert want[3] == HOLE_ID
    assert sum(1 for r in want if r != HOLE_ID) == len(blocks) - 1


def test_cut_points_are_pinned():
    """The cut points of fixed bytes with a fixed seed: were pyfastcdc (or the
    parameters) to cut elsewhere, existing repositories would stop deduplicating
    against what they hold. Change this only with a new format version."""
    data = random.Random(3).randbytes(8 << 20)
    assert Chunker(SEED).cut(data) == [693994, 875750, 499077, 1336633, 592172, 346617,
                                        900254, 978670, 1281949, 883492]
