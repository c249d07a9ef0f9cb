"""The pack store contract (store/packstore.py), checked on every implementation: the
local directory, the in-memory store, and the faulty store wrapping each with no fault
set. A new implementation (object storage) joins by adding a factory to ``STORES``."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from anytime.store.errors import AnytimeError, DamagedData, PackMissing
from anytime.store.faulty import FaultyPackStore
from anytime.store.format import CODEC_RAW, CODEC_ZSTD
from anytime.store.packs import PackReader, PackWriter, iter_records
from anytime.store.packstore import LocalDirPackStore, MemoryPackStore


def _local(tmp: Path):
    """(store, reopen): ``reopen()`` is a new store over the same data, as the next
    process would see it."""
    return LocalDirPackStore(str(tmp)), lambda: LocalDirPackStore(str(tmp))


def _memory(_tmp: Path):
    store = MemoryPackStore()
    return store, lambda: store


def _faulty(inner):
    def make(tmp: Path):
        store, reopen = inner(tmp)
        return FaultyPackStore(store), lambda: FaultyPackStore(reopen())
    return make


STORES = {"local": _local, "memory": _memory, "faulty-local": _faulty(_local),
          "faulty-memory": _faulty(_memory)}


@pytest.fixture(params=sorted(STORES))
def stores(request, tmp_path):
    store, reopen = STORES[request.param](tmp_path)
    store.init()
    yield store, reopen
    store.close()


@pytest.fixture
def store(stores):
    return stores[0]


def pid(n: int) -> bytes:
    return n.to_bytes(2, "big") * 8


def write(store, pack_id: bytes, *parts) -> bytes:
    """Create, append ``parts``, seal and sync a pack; its bytes."""
    h = store.create(pack_id)
    for part in parts:
        store.append(h, part)
    store.seal(h)
    store.sync([pack_id])
    return b"".join(bytes(p) for p in parts)


def test_appended_bytes_read_back_in_any_range(store):
    data = write(store, pid(1), b"head", bytearray(os.urandom(5000)), memoryview(b"x" * 300),
                 b"")
    assert store.size(pid(1)) == len(data) == 5304
    assert store.read(pid(1), 0, len(data)) == data
    for off, n in [(0, 1), (3, 10), (4, 4096), (5000, 304), (len(data) - 1, 1)]:
        assert store.read(pid(1), off, n) == data[off:off + n]


def test_reads_past_the_end_are_short_not_errors(store):
    data = write(store, pid(1), os.urandom(1000))
    assert store.read(pid(1), 900, 500) == data[900:]
    assert store.read(pid(1), 1000, 10) == b""
    assert store.read(pid(1), 5000, 10) == b""


def test_an_empty_pack_is_a_pack(store):
    write(store, pid(1))
    assert store.size(pid(1)) == 0 and store.read(pid(1), 0, 10) == b""
    assert pid(1) in set(store.list())


def test_a_missing_pack_is_damaged_data_naming_it(store):
    for call in (lambda: store.read(pid(9), 0, 10), lambda: store.size(pid(9))):
        with pytest.raises(PackMissing, match=f"pack {pid(9).hex()} is missing") as e:
            call()
        assert isinstance(e.value, DamagedData) and e.value.exit_code == 16


def test_an_id_is_created_once(store):
    write(store, pid(1), b"first")
    with pytest.raises(FileExistsError):
        store.create(pid(1))
    assert store.read(pid(1), 0, 100) == b"first"


def test_list_has_every_sealed_pack_and_nothing_deleted(store):
    for i in range(5):
        write(store, pid(i), bytes([i]) * 10)
    open_one = store.create(pid(7))
    store.append(open_one, b"unsealed")
    listed = set(store.list())
    assert {pid(i) for i in range(5)} <= listed <= {pid(i) for i in (*range(5), 7)}
    store.delete(pid(2))
    store.discard(open_one)
    assert set(store.list()) == {pid(i) for i in (0, 1, 3, 4)}
    with pytest.raises(PackMissing):
        store.read(pid(7), 0, 1)


def test_delete_is_idempotent_and_forgets_the_pack(store):
    write(store, pid(1), b"data")
    assert store.read(pid(1), 0, 4) == b"data"  # cached for reading, then deleted
    store.delete(pid(1))
    store.delete(pid(1))
    store.delete(pid(2))  # never existed
    with pytest.raises(PackMissing):
        store.read(pid(1), 0, 4)
    write(store, pid(1), b"new bytes")  # the id is free again
    assert store.read(pid(1), 0, 100) == b"new bytes"


def test_a_flushed_open_pack_reads_back_and_takes_more(stores):
    """An open pack (store/packstore.py "Open packs"): a flush makes its bytes so far
    readable, by this store and the next process's, and appends go on after it."""
    store, reopen = stores
    assert store.can_flush
    h = store.create(pid(1))
    first = os.urandom(2000)
    store.append(h, first)
    store.flush(h)
    store.sync([pid(1)])
    assert store.read(pid(1), 0, 5000) == first
    assert reopen().read(pid(1), 0, 5000) == first
    store.append(h, b"second")
    store.flush(h)
    assert store.read(pid(1), 0, 5000) == first + b"second"
    store.seal(h)
    assert store.size(pid(1)) == 2006


def test_truncate_cuts_a_pack_back_for_the_next_process(stores):
    store, reopen = stores
    h = store.create(pid(1))
    store.append(h, b"committed" + b"tail of a commit never made")
    store.flush(h)
    store.sync([pid(1)])
    store.truncate(pid(1), 9)  # as the next writer does, once this one is gone
    assert store.size(pid(1)) == 9 and store.read(pid(1), 0, 100) == b"committed"
    later = reopen()
    assert later.size(pid(1)) == 9 and later.read(pid(1), 0, 100) == b"committed"
    with pytest.raises(PackMissing):
        store.truncate(pid(2), 0)


def test_sealed_and_synced_packs_are_there_for_the_next_process(stores):
    store, reopen = stores
    data = write(store, pid(1), os.urandom(3000))
    store.close()
    later = reopen()
    assert set(later.list()) == {pid(1)}
    assert later.read(pid(1), 0, 5000) == data
    assert store.read(pid(1), 0, 10) == data[:10], "a closed store may be used again"


def test_packs_are_written_and_read_from_many_threads(store):
    """Each thread writes its own packs while others read sealed ones."""
    chunks = {t: [os.urandom(997 * (t + 1)) for _ in range(20)] for t in range(6)}
    errors = []

    def work(t):
        try:
            for k in range(3):
                p = pid(100 * t + k)
                h = store.create(p)
                for c in chunks[t]:
                    store.append(h, c)
                store.seal(h)
                store.sync([p])
                n = 997 * (t + 1)
                for j in range(k + 1):
                    assert store.read(pid(100 * t + j), n, n) == chunks[t][1]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert set(store.list()) == {pid(100 * t + k) for t in chunks for k in range(3)}
    for t in chunks:
        assert store.read(pid(100 * t + 2), 0, 10**6) == b"".join(chunks[t])


def test_records_round_trip_through_every_store(store):
    """The pack format on top of the store: written by PackWriter (several packs),
    read by PackReader and walked by iter_records, as the repository does."""
    recs = [(os.urandom(32), CODEC_RAW if i % 2 else CODEC_ZSTD, 2000 + i, os.urandom(
        1500 + 37 * i)) for i in range(60)]
    w = PackWriter(store, 20_000)
    locs = [w.append(*r) for r in recs]
    packs = w.sync()
    assert len(packs) > 3 and set(store.list()) == {p for p, _, _ in packs}
    reader = PackReader(store)
    for (bid, codec, raw_len, stored), (p, off) in zip(recs, locs, strict=True):
        assert reader.read_record(p, off, len(stored), bid) == (codec, raw_len, stored)
    walked = {(p, off): (bid, codec, raw, slen)
              for p, size, n in packs
              for off, bid, codec, raw, slen, ok in iter_records(store, p) if ok}
    assert walked == {loc: (b, c, r, len(s)) for loc, (b, c, r, s) in
                      zip(locs, recs, strict=True)}
    assert all(store.size(p) == size for p, size, _ in packs)


def test_abort_leaves_only_the_packs_kept(store):
    w = PackWriter(store, 5000)
    locs = [w.append(os.urandom(32), CODEC_RAW, 1200, os.urandom(1200)) for _ in range(12)]
    kept = w.sync()[0][0]
    w.append(os.urandom(32), CODEC_RAW, 10, b"0123456789")  # an open pack, discarded too
    w.abort(keep={kept})
    assert set(store.list()) == {kept}
    assert len({p for p, _ in locs}) > 2


# --- the local directory ----------------------------------------------------------------
def test_the_local_store_keeps_the_repository_layout_and_modes(tmp_path):
    store = LocalDirPackStore(str(tmp_path))
    store.init()
    write(store, pid(0x1234), b"bytes")
    path = tmp_path / "packs" / "12" / (pid(0x1234).hex() + ".pack")
    assert store.path(pid(0x1234)) == str(path) and path.read_bytes() == b"bytes"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "packs").stat().st_mode & 0o777 == 0o700


def test_the_local_store_lists_only_pack_files(tmp_path):
    store = LocalDirPackStore(str(tmp_path))
    assert list(store.list()) == [], "no packs/ yet: no packs"
    store.init()
    write(store, pid(0xABCD), b"a pack")
    top = tmp_path / "packs"
    (top / "ab" / "notes.txt").write_text("not a pack")
    (top / "ab" / ("ff" * 16 + ".pack")).write_bytes(b"in the wrong directory")
    (top / "ab" / ("zz" * 16 + ".pack")).write_bytes(b"not hex")
    (top / "stray").write_text("a file in packs/")
    assert list(store.list()) == [pid(0xABCD)]


# --- the faulty store itself --------------------------------------------------------------
@pytest.mark.parametrize("inner", ["local", "memory"])
def test_the_faulty_store_fails_writes_on_command(tmp_path, inner):
    base, _ = STORES[inner](tmp_path)
    base.init()
    store = FaultyPackStore(base)
    store.fail("append", after=1)
    h = store.create(pid(1))
    store.append(h, b"kept")
    with pytest.raises(AnytimeError, match="Input/output error") as e:
        store.append(h, b"torn-half")
    assert not isinstance(e.value, OSError) and e.value.exit_code == 1
    assert base.read(pid(1), 0, 100) in (b"", b"kepttorn"), "the part written is a prefix"
    store.append(h, b"!")  # the fault is spent
    store.fill_disk(room=3)
    with pytest.raises(AnytimeError, match="full") as e:
        store.append(h, b"abcdef")
    assert e.value.exit_code == 18
    store.make_room()
    store.append(h, b"more")
    store.seal(h)
    assert store.read(pid(1), 0, 100) == b"kepttorn!abcmore"
    store.fail_reads()
    with pytest.raises(AnytimeError, match="reading pack") as e:
        store.read(pid(1), 0, 4)
    assert not isinstance(e.value, (OSError, DamagedData))
    assert store.read(pid(1), 0, 4) == b"kept"
    store.flip(pid(1), 1, 0x20)
    store.truncate(pid(1), 6)
    assert base.read(pid(1), 0, 100) == b"kEptto"
