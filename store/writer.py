"""Building and committing one commit: the write side of the store.

A :class:`CommitBuilder` collects blocks (stored into packs as they come), path
versions, block versions and inode mappings; :meth:`CommitBuilder.commit` then

1. makes every pack written durable (fsync of packs and their directories), and
2. writes the commit's index records and makes them visible with one LMDB write
   transaction (fsynced by LMDB) that also moves the volume's horizon.

Step 2's last transaction is the one commit point. A commit of more than
``repo.options.stage_records`` index records is *staged*: its path versions, block
versions and inode mappings go in transactions of that many records before the last
one, keyed by the commit's instant, which is after the volume's horizon, so no view
sees them (views never look past the horizon, see vfs/view.py) until the last
transaction moves the horizon. LMDB keeps a transaction's dirty pages in memory; staging bounds them.

A crash before the commit point leaves pack files that no commit references, and maybe
staged records under a ``pending`` marker; the next writer deletes both
(:meth:`Repository.reclaim_leftover_packs`, :meth:`Repository.roll_back_unfinished`).

Thread-safety: :meth:`store_chunk` may be called from many threads (hashing and
compression release the GIL); everything else from the thread that owns the builder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading

import zstandard

from . import clock, history
from .errors import AnytimeError
from .format import (
    BLOCK_LOC,
    CODEC_RAW,
    CODEC_ZSTD,
    CODEC_ZSTD_DICT,
    DB_BLOCKS,
    DB_COMMITS,
    DB_LABELS,
    DB_META,
    DB_PACKS,
    DB_VOLUMES,
    FEATURE_STAGED,
    FEATURE_ZDICT,
    HIST_BLOCKVERS,
    HIST_DBS,
    HIST_DIRS,
    HIST_ENTRIES,
    HIST_INODES,
    HOLE_ID,
    INODE_VALUE,
    PACK_INFO,
    U32,
    U64,
    ZDICT_CURRENT,
    ZDICT_MAX_BLOCK,
    ZDICT_MIN_SAMPLE_BYTES,
    ZDICT_PARAMS,
    ZDICT_SAMPLE_BYTES,
    ZDICT_SIZE,
    ZDICT_STORE_LEVEL,
    ZDICT_TRAIN,
    ZSTD_LARGE_MIN,
    ZSTD_LARGE_PARAMS,
    Entry,
    block_id,
    blockver_prefix,
    commit_key,
    dir_key,
    entry_prefix,
    inode_key,
    label_key,
    open_pack_key,
    pending_key,
    split_path,
    vol_key,
    zdict_key,
)
from .mapping import TRIM_EVERY
from .packs import PackWriter
from .spill import SortedSpill
from .volumes import Volume, put_volume

#: New blocks held in memory before those in closed packs are indexed early.
FLUSH_BLOCKS = 65_536
#: Index records per LMDB write transaction of a staged commit, and new blocks per
#: transaction that indexes them. LMDB holds a transaction's dirty pages in memory (and
#: keeps them for reuse): at worst one 4 KiB page per record when keys land all over a
#: large database (block ids are random), so these bound memory whatever the sizes of
#: the commit and the repository. The first is ``repo.options.stage_records``
#: (``STAGE_RECORDS`` by default, store/options.py).
BLOCKS_PER_TXN = 2_048
#: Bytes of small blocks held back while the dictionary is trained, besides the sample
#: (training takes about a second; the blocks that come after these are stored without
#: the dictionary, so memory stays bounded however slow training is).
HOLD_BYTES = 4 << 20
#: Bytes of each sampled block the dictionary is trained on.
TRAIN_PREFIX = 4096


def _put_sorted(txn, db, items, suffix: bytes = b"", *, trim) -> None:
    """Put key-sorted ``items`` (each key extended by ``suffix``); append (pages filled,
    not split) when they all sort after the database's last key. The puts are counted on
    ``trim`` (the repository's :class:`~anytime.store.mapping.MapTrimmer`), so the index
    pages they map do not pile up in memory."""
    it = iter(items)
    first = next(it, None)
    if first is None:
        return
    cur = txn.cursor(db=db)
    append = not cur.last() or cur.key() < first[0] + suffix
    pairs = itertools.chain([(first[0] + suffix, first[1])], ((k + suffix, v) for k, v in it))
    while chunk := list(itertools.islice(pairs, TRIM_EVERY)):
        cur.putmulti(chunk, append=append)
        trim.touched(len(chunk))


def _put_records(txn, records: list[tuple], dbs: dict, *, trim) -> None:
    """Put (database code, key, value) records, key-sorted within each run of one
    database; ``dbs``: the database of each code (``HIST_DBS``, opened). Those of
    ``dirs`` go through :func:`_put_dirs`."""
    for code, run in itertools.groupby(records, key=lambda r: r[0]):
        if code == HIST_DIRS:
            _put_dirs(txn, dbs[code], ((k, v) for _, k, v in run))
        else:
            _put_sorted(txn, dbs[code], ((k, v) for _, k, v in run), trim=trim)


def _put_dirs(txn, db, items) -> None:
    """Put ``dirs`` records (directory hash -> path) that are not there yet. One already
    there with another path is a collision of two directories' hashes (format.DirHasher),
    whose entries would mix: refused, so nothing of the commit lands."""
    for key, path in items:
        if txn.put(key, path, db=db, overwrite=False):
            continue
        there = bytes(txn.get(key, db=db))
        if there != path:
            raise AnytimeError(
                f"the directories '{os.fsdecode(there)}' and '{os.fsdecode(path)}' have "
                f"the same path hash in this repository's index (a chance of about one in "
                f"2**64 per pair): nothing was committed. Please report it; snapshot the "
                f"volume into a new repository ('anytime init') meanwhile")


def _list_packs(txn, dbs, packs: list, instant: int, open_pack: bytes) -> None:
    """List ``packs`` ((pack id, size, records) each) in ``packs`` with ``instant``;
    mark ``open_pack`` (a session's, flushed) open, and the others not."""
    meta = dbs[DB_META]
    for pack_id, size, nrec in packs:
        txn.put(pack_id, PACK_INFO.pack(size, nrec, instant), db=dbs[DB_PACKS])
        if pack_id == open_pack:
            txn.put(open_pack_key(pack_id), b"", db=meta)
        else:
            txn.delete(open_pack_key(pack_id), db=meta)


def seal_open_pack(repo, packw: PackWriter) -> None:
    """Seal ``packw``'s open pack and list every pack it wrote since its last commit
    as it is now (keeping the instant a commit listed it with; 0 for one no commit
    listed), the open marker removed: the end of a writer session."""
    packs = packw.sync()
    dbs = repo.dbs
    with repo.write_txn("sealing the open pack") as txn:
        for pack_id, size, nrec in packs:
            old = txn.get(pack_id, db=dbs[DB_PACKS])
            t = PACK_INFO.unpack(old)[2] if old is not None else 0
            txn.put(pack_id, PACK_INFO.pack(size, nrec, t), db=dbs[DB_PACKS])
            txn.delete(open_pack_key(pack_id), db=dbs[DB_META])
    packw.committed()


class CommitBuilder:
    """Everything one commit of one volume will hold. Use once."""

    def __init__(self, repo, vol: Volume, session=None):
        self.repo = repo
        self.vol = vol
        #: the :class:`~anytime.store.session.WriterSession` whose pack writer this
        #: commit shares (None: a pack writer of its own, its last pack sealed at commit)
        self.session = session
        self.packw = session.packw if session else PackWriter(repo.pack_store,
                                                              repo.pack_target)
        self._staged = False  # records of this commit staged in the index
        #: whether every record has its own instant (None: no record yet; see put_entry)
        self.timed: bool | None = None
        self.last_at = 0  # the latest of those instants
        self.first_at = 0  # and the earliest
        self._lock = threading.Lock()
        self._new_blocks: dict[bytes, tuple] = {}
        tmp = os.path.join(repo.root, "tmp")
        # keys without the commit instant (appended at commit), values encoded
        self._entries = SortedSpill(tmp)
        self._dirs = SortedSpill(tmp)  # dirs records of the entries' directories
        self._last_parent: bytes | None = None
        self._blockvers = SortedSpill(tmp)
        self._inodes = SortedSpill(tmp)
        self._flushed_packs: set[bytes] = set()
        self._flush_lock = threading.Lock()
        self._cctx_free: dict[object, list] = {}  # compressors not in use, by kind
        self._flushes = 0  # times _flush_blocks indexed blocks and forgot them
        self._local = threading.local()  # a thread's transaction of reading()
        self.stats = {"blocks_new": 0, "bytes_new": 0, "bytes_stored": 0, "blocks_dup": 0}
        self.done = False
        # the repository's dictionary for small blocks; without one, the first small
        # blocks are kept (``_samples``) to train one
        self._zdict = repo.current_zdict()
        self._samples: list[tuple[bytes, bytes]] | None = [] if self._zdict is None else None
        self._sample_bytes = 0  # of the blocks in _samples, (block id, data) each
        self._training = False
        self._held_bytes = 0  # held back while the dictionary is trained
        # (id, this builder's copy of the dictionary, prepared for ZDICT_PARAMS)
        self._prepared: tuple[int, zstandard.ZstdCompressionDict] | None = None

    # --- blocks (any thread) -----------------------------------------------------------
    def _new_cctx(self, kind) -> zstandard.ZstdCompressor:
        """A compressor of ``kind``: "small", "large" (``ZSTD_LARGE_PARAMS``) or a
        dictionary id (with that dictionary)."""
        if kind == "large":
            params = zstandard.ZstdCompressionParameters(write_content_size=0,
                                                         **ZSTD_LARGE_PARAMS)
            return zstandard.ZstdCompressor(compression_params=params)
        if kind == "small":
            return zstandard.ZstdCompressor(level=self.repo.zstd_level,
                                            write_content_size=False)
        return self._dict_compressor(self._zdict)

    def _compress_with(self, kind, data, many: bool = False):
        """``data`` compressed by a compressor of ``kind`` taken from the free ones (a
        compressor is not thread-safe, and holds megabytes of tables: shared this way,
        there are only as many as compress at once, not one of each kind per thread).
        With ``many``, ``data`` is a list of blocks, compressed by one call (each to a
        frame of its own); returns the list of frames."""
        with self._lock:
            free = self._cctx_free.setdefault(kind, [])
            c = free.pop() if free else None
        if c is None:
            c = self._new_cctx(kind)
        try:
            if many:
                return [bytes(z) for z in c.multi_compress_to_buffer(data)]
            return c.compress(data)
        finally:
            with self._lock:
                self._cctx_free[kind].append(c)

    def store_chunk(self, data: bytes, bid: bytes | None = None) -> bytes:
        """Store chunk ``data`` unless an identical chunk exists; returns its id (the
        ``blocks`` database and pack records name chunks by it; ``HOLE_ID`` for zeros,
        which are not stored). ``bid``: that id, when the caller has just computed it
        (``format.block_id`` with this repository's key), so it is not hashed again."""
        bid, new = self._reserve(data, bid)
        if new:
            self._store_reserved(bid, data)
        return bid

    def store_chunks(self, chunks: list[bytes]) -> list[bytes]:
        """:meth:`store_chunk` of each of ``chunks`` (those of a batch of small files);
        returns their ids. The new ones of at most ``ZDICT_MAX_BLOCK`` bytes, once the
        dictionary is trained, are compressed by one call for all: each call releases
        and takes back the GIL, which for a small file cost about as much as the rest of
        storing it."""
        ids, todo = [], []
        for data in chunks:
            bid, new = self._reserve(data)
            ids.append(bid)
            if new:
                todo.append((bid, data))
        zd = self._zdict
        if self._samples is not None or zd is None or len(todo) < 2:
            for bid, data in todo:
                self._store_reserved(bid, data)
            return ids
        small = [(bid, data) for bid, data in todo if len(data) <= ZDICT_MAX_BLOCK]
        for bid, data in todo:
            if len(data) > ZDICT_MAX_BLOCK:
                self._store_new(bid, data)
        if small:
            frames = self._compress_with(zd[0], [data for _, data in small], many=True)
            for (bid, data), z in zip(small, frames, strict=True):
                self._append(bid, data, CODEC_ZSTD_DICT, z)
        return ids

    def _reserve(self, data: bytes, bid: bytes | None = None) -> tuple[bytes, bool]:
        """(id of chunk ``data``, whether it is to be stored): True once reserved in
        ``_new_blocks`` for this caller, False for zeros and chunks already stored or
        being stored (counted as duplicates). ``bid``: the id if known."""
        if bid is None:
            bid = block_id(self.repo.block_key, data)
        if bid == HOLE_ID:
            return bid, False
        with self._lock:
            if bid in self._new_blocks:
                self.stats["blocks_dup"] += 1
                return bid, False
            self._new_blocks[bid] = None  # reserve: another thread may race us
            flushes = self._flushes
        txn = getattr(self._local, "txn", None)
        if txn is not None and self._local.flushes == flushes:
            self.repo.map_trimmer.touched()
            loc = txn.get(bid, db=self.repo.dbs[DB_BLOCKS])
        else:  # outside reading(), or blocks were indexed since its transaction began
            with self.repo.read_txn() as txn:
                loc = txn.get(bid, db=self.repo.dbs[DB_BLOCKS])
        # a copy known damaged is not reused: stored again, the index then points at the
        # new copy, which mends every instant that uses the block (store/damage.py)
        known = loc is not None and not (self.repo.damage and self.repo.is_damaged(bid, loc))
        if known:
            with self._lock:
                del self._new_blocks[bid]
                self.stats["blocks_dup"] += 1
            return bid, False
        return bid, True

    def _store_reserved(self, bid: bytes, data: bytes) -> None:
        """Store a chunk reserved by :meth:`_reserve`, or hold it back for the dictionary."""
        if self._samples is not None and len(data) <= ZDICT_MAX_BLOCK and self._sample(bid, data):
            return  # held back: stored once the dictionary is trained (or at commit)
        self._store_new(bid, data)

    @contextlib.contextmanager
    def reading(self):
        """``with builder.reading():`` this thread's :meth:`store_chunk` calls inside
        look chunks up in one read transaction instead of one each (a batch of small
        files: one per file otherwise). Keep it short, as any read transaction: LMDB
        cannot reuse the pages it sees. Blocks indexed early meanwhile
        (:meth:`_flush_blocks`) leave the index and ``_new_blocks`` at once for such a
        transaction, so from then on each lookup takes a new one again."""
        with self._lock:
            flushes = self._flushes
        with self.repo.read_txn() as txn:
            self._local.txn, self._local.flushes = txn, flushes
            try:
                yield
            finally:
                self._local.txn = None

    def _store_new(self, bid: bytes, data: bytes) -> None:
        """Compress and append a block reserved in ``_new_blocks``."""
        self._append(bid, data, *self._compress(data))

    def _append(self, bid: bytes, data: bytes, codec: int, z: bytes) -> None:
        """Append a block reserved in ``_new_blocks``, compressed (``codec``) to ``z``:
        as it is if that is not smaller."""
        codec, stored = (codec, z) if len(z) < len(data) else (CODEC_RAW, data)
        pack_id, offset = self.packw.append(bid, codec, len(data), stored)
        with self._lock:
            self._new_blocks[bid] = (pack_id, offset, len(stored), len(data), codec)
            self.stats["blocks_new"] += 1
            self.stats["bytes_new"] += len(data)
            self.stats["bytes_stored"] += len(stored)
            flush = len(self._new_blocks) >= FLUSH_BLOCKS
        if flush:
            self._flush_blocks()

    def _compress(self, data: bytes) -> tuple[int, bytes]:
        """(codec, zstd frame) of a block: small blocks with the repository's dictionary
        when there is one."""
        n = len(data)
        zd = self._zdict
        if zd is not None and n <= ZDICT_MAX_BLOCK:
            return CODEC_ZSTD_DICT, self._compress_with(zd[0], data)
        return CODEC_ZSTD, self._compress_with("large" if n >= ZSTD_LARGE_MIN else "small",
                                               data)

    def _dict_compressor(self, zd: tuple[int, zstandard.ZstdCompressionDict]
                         ) -> zstandard.ZstdCompressor:
        """A compressor of small blocks with dictionary ``zd`` (id, dictionary) and
        ``ZDICT_PARAMS``. The dictionary's tables for them are computed once per commit
        and shared by its compressors (about 3 MB, instead of a copy each), in a copy of
        the dictionary this builder owns: computing them again frees the old ones, which
        a compressor of another builder may still use."""
        params = zstandard.ZstdCompressionParameters(write_content_size=0, write_dict_id=1,
                                                     **ZDICT_PARAMS)
        with self._lock:
            if self._prepared is None or self._prepared[0] != zd[0]:
                own = zstandard.ZstdCompressionDict(zd[1].as_bytes())
                own.precompute_compress(compression_params=params)
                self._prepared = zd[0], own
            own = self._prepared[1]
        return zstandard.ZstdCompressor(dict_data=own, compression_params=params)

    def _sample(self, bid: bytes, data: bytes) -> bool:
        """Hold a new small block back to train the dictionary on; False once sampling is
        over. The thread that completes the sample trains the dictionary; blocks that
        come meanwhile are held too, and then all are stored with it."""
        with self._lock:
            samples = self._samples
            if samples is None:
                return False
            if self._training:  # held meanwhile, up to HOLD_BYTES; later ones go on
                if self._held_bytes + len(data) > HOLD_BYTES:
                    return False
                self._held_bytes += len(data)
                samples.append((bid, data))
                return True
            samples.append((bid, data))
            self._sample_bytes += len(data)
            if (len(samples) < self.repo.options.zdict_sample_blocks
                    and self._sample_bytes < ZDICT_SAMPLE_BYTES):
                return True
            self._training = True
            # the start of each block: a tenth of the training memory for stdlib-like
            # samples, and about 0.2% larger output than training on whole blocks
            train = [d[:TRAIN_PREFIX] for _, d in samples]
        self._zdict = self._train(train)
        with self._lock:  # sampling is over, whatever training gave
            samples, self._samples = self._samples or [], None
        for b, d in samples:
            self._store_new(b, d)
        return True

    def _end_sampling(self) -> None:
        """Store the blocks held back for a dictionary that was not trained (too few)."""
        with self._lock:
            samples, self._samples = self._samples or [], None
        for bid, data in samples:
            self._store_new(bid, data)

    def _train(self, samples: list[bytes]) -> tuple[int, zstandard.ZstdCompressionDict] | None:
        """Train a dictionary on ``samples`` and store it as the repository's current
        one (its own transaction: it is durable before any block compressed with it is
        indexed). Returns (id, dictionary), or None if there are too few bytes or zstd
        cannot train on them."""
        if sum(map(len, samples)) < ZDICT_MIN_SAMPLE_BYTES:
            return None
        repo = self.repo
        meta = repo.dbs[DB_META]
        # ids below 32768 are reserved by zstd; one below 65536 takes 2 bytes of each
        # frame's header instead of 4 (a repository has one dictionary)
        while True:
            dict_id = 32768 + int.from_bytes(os.urandom(2), "big") % 32768
            with repo.read_txn() as txn:
                if txn.get(zdict_key(dict_id), db=meta) is None:
                    break
        try:
            zd = zstandard.train_dictionary(ZDICT_SIZE, samples, dict_id=dict_id,
                                            level=repo.zstd_level, **ZDICT_TRAIN)
        except zstandard.ZstdError:
            return None
        repo.require_feature(FEATURE_ZDICT)
        packed = zstandard.ZstdCompressor(level=ZDICT_STORE_LEVEL).compress(zd.as_bytes())
        with repo.write_txn("storing the compression dictionary") as txn:
            txn.put(zdict_key(dict_id), packed, db=meta)
            txn.put(ZDICT_CURRENT, U32.pack(dict_id), db=meta)
        # in the packs before any chunk compressed with it: whatever makes such a chunk
        # durable makes this record durable too
        history.append_zdict(self.packw, dict_id, packed)
        return dict_id, zd

    def _flush_blocks(self, wait: bool = False, synced: list | None = None) -> None:
        """Close the open pack, index the new blocks of closed (fsynced) packs, then
        forget them, so memory does not grow with the size of a commit.

        Their packs are listed in ``packs`` with commit instant 0 until the commit
        rewrites them. If the process dies before committing, these blocks stay indexed
        but referenced by no commit: a later snapshot dedups against them, and prune
        reclaims them. A worker that finds another flushing goes on (``wait`` False);
        the commit waits, and passes the packs it has just made durable (``synced``,
        what :meth:`PackWriter.sync` returned)."""
        if not self._flush_lock.acquire(blocking=wait):
            return  # another thread is flushing
        try:
            # every pending block in a durable pack, with a durable directory entry
            closed = {p: (size, n) for p, size, n in (synced or self.packw.sync())}
            with self._lock:
                todo = [(bid, loc) for bid, loc in self._new_blocks.items()
                        if loc is not None and loc[0] in closed]
            if not todo:
                return
            dbs = self.repo.dbs
            todo.sort()
            for i in range(0, len(todo), BLOCKS_PER_TXN):
                with self.repo.write_txn() as txn:
                    if i == 0:  # packs first: a pack named in `packs` is never reclaimed
                        # (a session's open pack again each time: its listed size grows)
                        opened = self.packw.open_pack
                        _list_packs(txn, dbs, [(p, size, n) for p, (size, n) in closed.items()
                                               if p not in self._flushed_packs or p == opened],
                                    0, opened)
                    _put_sorted(txn, dbs[DB_BLOCKS], ((bid, BLOCK_LOC.pack(*loc))
                                                      for bid, loc in todo[i:i + BLOCKS_PER_TXN]),
                                trim=self.repo.map_trimmer)
                if i == 0:  # listed: an abort must keep them (their blocks are indexed)
                    self._flushed_packs.update(closed)
            with self._lock:
                self._flushes += 1  # transactions of reading() do not see these
                for bid, _ in todo:
                    del self._new_blocks[bid]
        finally:
            self._flush_lock.release()

    # --- timeline records (owner thread) ---------------------------------------------
    def new_file_id(self) -> int:
        fid = self.vol.next_file_id
        self.vol.next_file_id += 1
        return fid

    def put_entry(self, path: bytes, entry: Entry, at: int | None = None) -> None:
        """Record ``entry`` as the version of ``path``: at the commit's instant, or, for a
        *timed* commit (every record given ``at``: the shim's, one instant per
        operation), at instant ``at``."""
        parent, name = split_path(path)
        dir_hash = self.repo.dir_hash(parent)
        self._entries.add(entry_prefix(self.vol.id, dir_hash, name) + self._at(at),
                          entry.encode())
        if parent != self._last_parent:  # entries are filed under its hash: name it
            self._last_parent = parent  # (once per run of one directory's entries)
            self._dirs.add(dir_key(self.vol.id, dir_hash), parent)

    def put_block_version(self, file_id: int, block_no: int, ref: bytes,
                          at: int | None = None) -> None:
        """Record block ``block_no`` of file ``file_id`` as block reference ``ref``
        (``format.encode_ref``: a chunk id, slices of chunks, or ``HOLE_ID``); ``at`` as
        for :meth:`put_entry`."""
        self._blockvers.add(blockver_prefix(self.vol.id, file_id, block_no) + self._at(at),
                            ref)

    def _at(self, at: int | None) -> bytes:
        """The instant suffix of a record's key now: b"" (the commit's, appended at
        commit) or ``at``'s; a commit is timed or not, throughout."""
        timed = at is not None
        if self.timed is None:
            self.timed = timed
        elif self.timed != timed:
            raise ValueError("a commit's records all have instants of their own, or none")
        if not timed:
            return b""
        if at <= self.vol.horizon:
            raise ValueError(f"instant {at} is not after the volume's horizon")
        self.last_at = max(self.last_at, at)
        self.first_at = min(self.first_at or at, at)
        return U64.pack(at)

    def map_inode(self, dev: int, ino: int, file_id: int, mtime_ns: int, size: int) -> None:
        """Remember which file id source inode (dev, ino) holds, and its recorded state."""
        self._inodes.add(inode_key(self.vol.id, dev, ino),
                         INODE_VALUE.pack(file_id, mtime_ns, size))

    # --- commit --------------------------------------------------------------------------
    def commit(self, info: dict, label: str | None = None, instant: int | None = None) -> int:
        """Make the commit durable and visible; returns its instant.

        Every index record also goes to the packs as a history record (a batch of each
        transaction's records, then the commit record: store/history.py) before the
        packs are synced and the last transaction commits."""
        self._end_sampling()
        # a session's open pack stays open (flushed, not sealed) unless it is old
        keep = self.session.keep_open() if self.session else False
        repo, dbs = self.repo, self.repo.dbs
        by_code = {code: dbs[name] for code, name in HIST_DBS.items()}
        vid = self.vol.id
        with repo.read_txn() as txn:  # the writer lock keeps it current until we commit
            stored = Volume.decode(txn.get(vol_key(vid), db=dbs[DB_VOLUMES]))
        if self.timed and self.first_at <= stored.horizon:
            raise ValueError(f"a record at {self.first_at} is not after the volume's "
                             f"horizon {stored.horizon}")
        t = max(instant or clock.now_ns(), stored.horizon + 1, self.last_at)
        suffix = U64.pack(t)
        rec_suffix = b"" if self.timed else suffix  # timed records have their own
        records = itertools.chain(
            ((HIST_DIRS, k, v) for k, v in self._dirs.items()),
            ((HIST_ENTRIES, k + rec_suffix, v) for k, v in self._entries.items()),
            ((HIST_BLOCKVERS, k + rec_suffix, v) for k, v in self._blockvers.items()),
            ((HIST_INODES, k, v) for k, v in self._inodes.items()))
        per_txn = repo.options.stage_records
        batch = list(itertools.islice(records, per_txn))
        more = list(itertools.islice(records, per_txn))
        if more or len(self._new_blocks) > BLOCKS_PER_TXN:
            # every new block indexed before a staged record names it, and at most
            # BLOCKS_PER_TXN of them in one transaction: their packs durable first (a
            # session's open pack flushed, left open for the history records)
            self._flush_blocks(wait=True, synced=self.packw.sync(self.session is not None))
        if more:
            repo.require_feature(FEATURE_STAGED)
        staged = False
        part = 0  # history batches written
        nonce = os.urandom(8)  # this commit's, in each of its history records
        while more:
            history.append_batch(self.packw, vid, t, nonce, part, batch)
            part += 1
            with repo.write_txn() as txn:  # staged: invisible, past the horizon
                if not staged:
                    txn.put(pending_key(vid), suffix, db=dbs[DB_META])
                _put_records(txn, batch, by_code, trim=repo.map_trimmer)
            staged = self._staged = True
            batch = more
            more = list(itertools.islice(records, per_txn))
        if batch:
            history.append_batch(self.packw, vid, t, nonce, part, batch)
            part += 1
        # the packs of this commit: those sealed, and the one the commit record goes in
        record = dict(info, packs=len(self.packw.finished) + 1, **self.stats)
        record["nonce"] = nonce.hex()  # which history records are this commit's (prune)
        if self.timed:
            record["timed"] = True  # its versions have their operations' instants (I15)
        if label:
            record["label"] = label
        self.vol.horizon = t
        self.vol.next_file_id = max(self.vol.next_file_id, stored.next_file_id)
        history.append_commit(self.packw, vid, t, nonce, record, self.vol.as_dict(), part, label,
                              self._zdict[0] if self._zdict else None)
        packs = self.packw.sync(keep)  # 1. pack bytes durable, history records included
        with repo.write_txn() as txn:  # 2. the one commit point
            _list_packs(txn, dbs, packs, t, self.packw.open_pack)
            _put_sorted(txn, dbs[DB_BLOCKS], sorted(
                (bid, BLOCK_LOC.pack(*loc)) for bid, loc in self._new_blocks.items()
                if loc is not None), trim=repo.map_trimmer)
            _put_records(txn, batch, by_code, trim=repo.map_trimmer)
            if label:
                txn.put(label_key(vid, label.encode()), suffix, db=dbs[DB_LABELS])
            txn.put(commit_key(vid, t), json.dumps(record, sort_keys=True).encode(),
                    db=dbs[DB_COMMITS])
            if staged:
                txn.delete(pending_key(vid), db=dbs[DB_META])
            put_volume(repo, txn, self.vol)
        self.done = True
        if self.session:
            self.session.committed()
        self._close_spills()
        return t

    def checkpoint(self) -> tuple[int, int]:
        """Abandon the commit but keep the blocks stored so far: make their packs durable
        and index them, listed with commit instant 0 as :meth:`_flush_blocks` does (no
        commit references them; the next snapshot dedups against them, prune reclaims
        what stays unreferenced); returns (blocks, bytes) kept. The owner thread calls
        it once no :meth:`store_chunk` runs, instead of :meth:`abort`; a crash or a
        second interrupt during it loses only blocks not yet indexed, as before."""
        if self.done:
            return 0, 0
        self._end_sampling()  # blocks held back for a dictionary are kept too
        self._flush_blocks(wait=True, synced=self.packw.sync())
        kept = self.stats["blocks_new"], self.stats["bytes_new"]
        self.abort()
        return kept

    def abort(self) -> None:
        """Give the commit up: its packs are deleted (a session's stay, since they may
        hold other commits: what this one appended is bytes no index record names), and
        its staged records, if any, removed."""
        if not self.done:
            if self.session is None:
                self.packw.abort(keep=self._flushed_packs)
            elif self._staged:  # the session's next commit would make them visible
                self.repo.roll_back_unfinished()
        self._close_spills()

    def _close_spills(self) -> None:
        for spill in (self._entries, self._dirs, self._blockvers, self._inodes):
            spill.close()
