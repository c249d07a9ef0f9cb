"""Small blocks compressed with the repository's zstd dictionary (docs/format.md "Small
blocks"): trained on the first small blocks stored, used for later ones and by later
commits, read back exactly, and a missing dictionary is damaged data."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import lmdb
import pytest
import zstandard

from anytime.store.format import (
    CODEC_ZSTD,
    CODEC_ZSTD_DICT,
    FEATURE_STAGED,
    FEATURE_ZDICT,
    ZDICT_PREFIX,
)
from anytime.store.packs import iter_records
from anytime.store.packstore import LocalDirPackStore

#: Blocks of the dictionary's sample in these tests (ZDICT_SAMPLE_BLOCKS by default).
SAMPLE = 400
#: Enough small files to complete the sample, and some after it.
N_FILES = SAMPLE + 200


@pytest.fixture(autouse=True)
def small_sample(monkeypatch):
    monkeypatch.setenv("ANYTIME_ZDICT_SAMPLE_BLOCKS", str(SAMPLE))


def small_tree(root: Path, n: int = N_FILES) -> dict[Path, bytes]:
    """``n`` files of 3-5 KB cut from the standard library's sources, 100 a directory."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    need, chunks = 5000 * n, []
    for src in sorted(stdlib.rglob("*.py")):
        chunks.append(src.read_bytes())
        need -= len(chunks[-1])
        if need <= 0:
            break
    text = b"".join(chunks)
    out, pos = {}, 0
    for i in range(n):
        size = 3000 + (i * 7919) % 2000
        p = root / f"d{i // 100:02d}" / f"f{i:05d}.py"
        p.parent.mkdir(exist_ok=True)
        data = text[pos:pos + size]
        pos += size
        p.write_bytes(data)
        out[p] = data
    return out


def index_view(repo_dir: Path):
    """(codec of each stored block, the dictionaries in meta) straight from the index."""
    env = lmdb.open(str(repo_dir / "index"), readonly=True, lock=False, max_dbs=20)
    try:
        with env.begin() as txn:
            blocks = env.open_db(b"blocks", txn=txn, create=False)
            meta = env.open_db(b"meta", txn=txn, create=False)
            codecs = [v[-1] for v in txn.cursor(db=blocks).iternext(keys=False)]
            dicts = {k: v for k, v in txn.cursor(db=meta) if k.startswith(ZDICT_PREFIX)}
        return codecs, dicts
    finally:
        env.close()


def test_small_files_are_compressed_with_a_dictionary(anytime, repo_dir, src_dir):
    files = small_tree(src_dir)
    anytime("init", check=0)
    anytime("snapshot", src_dir, check=0)
    codecs, dicts = index_view(repo_dir)
    assert len(dicts) == 1
    # an id of 2 bytes in each frame's header: above those zstd reserves, below 65536
    assert 32768 <= int.from_bytes(next(iter(dicts))[len(ZDICT_PREFIX):], "big") < 65536
    assert codecs.count(CODEC_ZSTD_DICT) == len(files), "every small block, samples too"
    # smaller than each file compressed alone at the same level
    alone = sum(len(zstandard.ZstdCompressor(level=3, write_content_size=False).compress(d))
                for d in files.values())
    packs = LocalDirPackStore(str(repo_dir))
    stored = sum(r[4] for p in packs.list() for r in iter_records(packs, p))
    assert stored < 0.85 * alone
    assert FEATURE_ZDICT in json.loads((repo_dir / "config").read_text())["features"]
    for p in list(files)[::397]:
        assert anytime("cat", p, check=0).stdout == files[p]
    dest = src_dir.parent / "restored"
    anytime("restore", src_dir / "d03", "--at", "now", "--to", dest, check=0)
    assert all((dest / p.name).read_bytes() == files[p] for p in files if p.parent.name == "d03")
    assert b"no problems found" in anytime("check", "--read-data", check=0).stdout


def test_later_commits_use_the_same_dictionary(anytime, repo_dir, src_dir):
    small_tree(src_dir)
    anytime("init", check=0)
    anytime("snapshot", src_dir, check=0)
    _, dicts = index_view(repo_dir)
    extra = src_dir / "later.txt"
    extra.write_bytes(b"a file of a later commit\n" * 40)
    anytime("snapshot", src_dir, check=0)
    codecs, dicts2 = index_view(repo_dir)
    assert dicts2 == dicts, "no second dictionary"
    assert codecs.count(CODEC_ZSTD_DICT) == N_FILES + 1
    assert anytime("cat", extra, check=0).stdout == extra.read_bytes()


def test_chunks_stored_together_read_back_and_dedup_as_one_by_one(anytime, repo_dir,
                                                                    src_dir):
    from anytime.store.repo import Repository
    from anytime.store.volumes import get_volume
    from anytime.store.writer import CommitBuilder

    files = small_tree(src_dir)
    anytime("init", check=0)
    anytime("snapshot", src_dir, "--name", "v", check=0)  # trains the dictionary
    repo = Repository.open(str(repo_dir))
    with repo.writer_lock():
        with repo.read_txn() as txn:
            vol = get_volume(repo, txn, "v")
        b = CommitBuilder(repo, vol)
        assert b._zdict is not None
        new = [bytes([i]) * 100 + b"a chunk of a batch %d\n" % i * 50 for i in range(5)]
        old = list(files.values())[0]
        chunks = [new[0], old, new[1], bytes(300), new[0], *new[2:], b"x" * 70000]
        ids = b.store_chunks(chunks)
        assert ids == [b.store_chunk(c) for c in chunks], "the ids store_chunk gives"
        assert b.stats["blocks_new"] == 6, "5 small ones and the large one, each once"
        for i, bid in enumerate(ids[:3] + ids[5:]):
            b.put_block_version(1, i, bid)
        b.commit({"kind": "test"})
    with repo.read_txn() as txn:
        assert [repo.read_block(txn, bid) for bid in ids if bid != ids[3]] == [
            c for c in chunks if c != bytes(300)]
        codecs = {bid: repo.block_location(txn, bid)[-1] for bid in ids[2:3] + ids[5:8]}
    assert set(codecs.values()) == {CODEC_ZSTD_DICT}
    repo.close()


def test_few_small_files_train_nothing_and_read_back(anytime, repo_dir, src_dir):
    files = small_tree(src_dir, 30)  # 30 x 4 KB: short of ZDICT_MIN_SAMPLE_BYTES too
    anytime("init", check=0)
    anytime("snapshot", src_dir, check=0)
    codecs, dicts = index_view(repo_dir)
    assert not dicts and codecs == [CODEC_ZSTD] * 30
    for p in list(files)[::7]:
        assert anytime("cat", p, check=0).stdout == files[p]


def test_an_older_repository_gets_the_feature_flag(anytime, repo_dir, src_dir):
    small_tree(src_dir)
    anytime("init", check=0)
    cfg = json.loads((repo_dir / "config").read_text())
    cfg["features"] = [FEATURE_STAGED]  # as made before dictionaries
    (repo_dir / "config").write_text(json.dumps(cfg))
    anytime("snapshot", src_dir, check=0)
    assert FEATURE_ZDICT in json.loads((repo_dir / "config").read_text())["features"]


def test_a_missing_dictionary_is_damaged_data(anytime, repo_dir, src_dir):
    files = small_tree(src_dir)
    anytime("init", check=0)
    anytime("snapshot", src_dir, check=0)
    env = lmdb.open(str(repo_dir / "index"), max_dbs=20)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        for k in [k for k, _ in txn.cursor(db=meta) if k.startswith(ZDICT_PREFIX)]:
            txn.delete(k, db=meta)
    env.close()
    r = anytime("cat", next(iter(files)))
    assert r.returncode == 16 and b"dictionary" in r.stderr and b"Traceback" not in r.stderr


def test_an_interrupted_commit_keeps_the_blocks_held_for_the_dictionary(tmp_path):
    """checkpoint (Ctrl-C during a snapshot) stores and indexes the small blocks still
    held back as the dictionary's sample, so the re-run finds them."""
    from anytime.store import writer
    from anytime.store.repo import Repository
    from anytime.store.volumes import create_volume

    repo = Repository.init(str(tmp_path / "r"))
    with repo.env.begin(write=True) as txn:
        vol = create_volume(repo, txn, "v", "/nowhere", 1 << 20, 1)
    b = writer.CommitBuilder(repo, vol)
    blocks = [b"small block %d\n" % i * 50 for i in range(20)]  # fewer than the sample
    ids = [b.store_chunk(d) for d in blocks]
    assert b.checkpoint() == (20, sum(map(len, blocks)))
    with repo.read_txn() as txn:
        assert [repo.read_block(txn, bid) for bid in ids] == blocks
    repo.close()
