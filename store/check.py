"""Checking a repository: one function per invariant of the format, and for each damaged
chunk, which files at which instants it spoils.

docs/format.md "Invariants" numbers the rules (I1...I26) and names, for each one check
can verify, the function here that does (``INVARIANTS`` is that table; a test keeps the
two equal). Each ``check_*`` method verifies one invariant, over the whole repository or
one record at a time inside a walk (the walks over packs, ``entries`` and ``blockvers``
are shared, so each database is read once), and reports what breaks it as a *problem*
naming the invariant (:attr:`CheckReport.findings`).

Read-only for the index; the whole check is one read transaction. A chunk whose indexed
copy does not read back (I5, I6, I8, I9, I21) is *damaged*: check appends it to the
repository's ``damaged`` file (store/damage.py), so that the next capture meeting its
content stores it again, and reports the volumes, paths and instant ranges that read it
(:class:`Affected`). A damaged copy the index no longer points at (the chunk was stored
anew) and damage records superseded so are *reclaimable*, not damage. Pack files that
no ``packs`` record lists (left by a killed writer) are counted; the next writer
deletes them. With ``read_data`` every chunk is also decompressed and hashed (I8).
"""

from __future__ import annotations

import json
import os
import stat as st_
import struct
from dataclasses import asdict, dataclass, field

from . import damage, modes
from .errors import AnytimeError, PackMissing, RepositoryIOError
from .format import (
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
    DIR_HASH_LEN,
    ENTRY_FIXED,
    FORMAT_VERSION,
    HIST_BATCH,
    HIST_COMMIT,
    HIST_LABEL,
    HIST_SETTING,
    HIST_ZDICT,
    HISTORY_ID,
    HOLE_ID,
    IFMT_OF_KIND,
    INODE_VALUE,
    KIND_DELETED,
    KIND_FILE,
    KIND_NAMES,
    OPEN_PACK_PREFIX,
    PACK_HEADER,
    PACK_INFO,
    PACK_MAGIC,
    PENDING_PREFIX,
    RECORD_HEADER,
    RECORD_MAGIC,
    SEP,
    U32,
    U64,
    ZDICT_CURRENT,
    ZDICT_PREFIX,
    block_id,
    block_size_problem,
    commit_key,
    decode_ref,
    split_blockver_key,
    split_commit_key,
    split_dir_key,
    split_label_key,
    split_pending_key,
    split_zdict_key,
    vol_key,
)
from .packs import walk_records
from .timeline import entry_paths
from .volumes import Volume

#: invariant (docs/format.md) -> the function that verifies it
INVARIANTS = {
    "I2": "check_modes",
    "I4": "check_pack_headers",
    "I5": "check_pack_records",
    "I6": "check_pack_info",
    "I7": "check_pack_instants",
    "I8": "check_chunk_ids",
    "I9": "check_block_locations",
    "I10": "check_dictionaries",
    "I12": "check_volumes",
    "I13": "check_orphans",
    "I14": "check_horizons",
    "I15": "check_versions_committed",
    "I17": "check_pending",
    "I18": "check_file_ids",
    "I19": "check_entries",
    "I20": "check_block_refs",
    "I21": "check_refs_indexed",
    "I22": "check_block_lengths",
    "I23": "check_commit_records",
    "I24": "check_labels",
    "I25": "check_dirs",
    "I26": "check_history",
}

#: Keys every commit record has (I23): what the writer itself puts, and the capture's kind.
COMMIT_INTS = tuple("packs blocks_new blocks_dup bytes_new bytes_stored".split())
#: Databases whose keys start with a volume id (I13).
VOLUME_DBS = (DB_ENTRIES, DB_BLOCKVERS, DB_COMMITS, DB_LABELS, DB_INODES, DB_DIRS)
_KEY_LENS = {DB_BLOCKVERS: 28, DB_COMMITS: 12, DB_INODES: 20, DB_DIRS: 4 + DIR_HASH_LEN}
_U32LE = struct.Struct("<I")
_U16LE = struct.Struct("<H")


@dataclass
class Affected:
    """One path of one volume that reads a damaged chunk from ``from_ns`` until
    ``to_ns`` (exclusive; None: still at the volume's latest instant)."""

    volume: str
    source: str
    path: str
    block_no: int
    from_ns: int
    to_ns: int | None


@dataclass
class DamagedBlock:
    block: str  # chunk id, hex
    pack: str | None  # where the index puts it (None: not indexed)
    offset: int | None
    reason: str
    message: str  # as listed in CheckReport.problems
    affected: list[Affected] = field(default_factory=list)


@dataclass
class Finding:
    """A problem and the invariant it breaks."""

    invariant: str  # "I9"
    check: str  # the function that found it
    message: str


@dataclass
class CheckReport:
    packs: int = 0
    blocks: int = 0
    block_versions: int = 0
    bytes_checked: int = 0
    leftover_packs: int = 0
    #: damaged copies no longer used and damage records superseded by a good copy
    reclaimable: int = 0
    #: records in listed packs no kept instant uses, and their bytes (``prune`` reclaims)
    unused_records: int = 0
    unused_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: list[DamagedBlock] = field(default_factory=list)
    #: what is not damage but should be fixed (a repository others can read)
    warnings: list[str] = field(default_factory=list)
    #: every problem with the invariant it breaks (the same messages as ``problems``)
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(asdict(self), ok=not self.problems)


class _Checker:
    """One check of one repository in one read transaction: a ``check_*`` method per
    invariant (``INVARIANTS``), the walks that feed the per-record ones, and the
    report they fill."""

    def __init__(self, repo, txn, read_data: bool, progress):
        self.repo, self.txn, self.read_data, self.progress = repo, txn, read_data, progress
        self.dbs = repo.dbs
        self.rep = CheckReport()
        self.bad: dict[bytes, DamagedBlock] = {}
        #: (pack id, offset) -> (chunk id, checksum ok, codec, raw length, stored length)
        self.records: dict[tuple[bytes, int], tuple] = {}
        #: packs that could not be walked: missing, or failing to read
        self.missing: dict[bytes, str] = {}
        #: listed packs: pack id -> PACK_INFO (size, records, commit instant)
        self.packs: dict[bytes, tuple[int, int, int]] = {}
        self.vols: dict[int, Volume] = {}
        #: history records of listed packs whose checksum matches: (pack, offset, id,
        #: codec, raw length, stored length)
        self.history: list[tuple] = []
        self.zdict_ids: list[int] = []  # the dictionaries the index holds
        #: volume id -> instant of its pending marker
        self.pending: dict[int, int] = {}
        self.referenced: set[bytes] = set()  # chunks some block version names
        self.indexed: dict[bytes, tuple[bytes, int]] = {}  # chunk -> (pack, offset)
        self._commit_seen: set[tuple[int, int]] = set()
        self._timed: dict[tuple[int, int], bool] = {}  # (volume, commit instant) -> timed

    # --- reporting ---------------------------------------------------------------------
    def problem(self, inv: str, msg: str) -> None:
        self.rep.problems.append(msg)
        self.rep.findings.append(Finding(inv, INVARIANTS[inv], msg))

    def damaged(self, inv: str, bid: bytes, loc, reason: str) -> None:
        if bid in self.bad:
            return
        pack, offset = (loc[0].hex(), loc[1]) if loc else (None, None)
        where = f" (pack {pack} at offset {offset})" if loc else ""
        msg = f"block {bid.hex()[:16]}{where} {reason}"
        self.bad[bid] = DamagedBlock(bid.hex(), pack, offset, reason, msg)
        self.problem(inv, msg)

    # --- the repository ----------------------------------------------------------------
    def check_modes(self) -> None:
        """I2: nobody but the owner may read or enter the repository (a warning)."""
        exposed = modes.exposure(self.repo.root)
        if exposed:
            self.rep.warnings.append(exposed)

    # --- packs -------------------------------------------------------------------------
    def walk_packs(self) -> None:
        self.packs = {bytes(k): PACK_INFO.unpack(v)
                      for k, v in self.txn.cursor(db=self.dbs[DB_PACKS])}
        # packs a writer session keeps open: what follows their listed size is a
        # running writer's next commit (or a dead one's, cut back by the next writer)
        self.open_packs = self._open_packs()
        total, done = sum(p[0] for p in self.packs.values()), 0
        store = self.repo.pack_store
        for pack_id in sorted(self.packs):
            self.rep.packs += 1
            try:
                size = store.size(pack_id)
                self.check_pack_headers(pack_id, store.read(pack_id, 0, PACK_HEADER.size))
                end, count, history = PACK_HEADER.size, 0, []
                listed = self.packs[pack_id][0]
                if pack_id in self.open_packs:
                    size = min(size, listed)
                for magic, offset, rid, codec, raw, slen, ok in walk_records(store, pack_id):
                    if offset + RECORD_HEADER.size + slen > size:
                        break  # past an open pack's listed size
                    if magic == RECORD_MAGIC:
                        self.records[(pack_id, offset)] = (rid, ok, codec, raw, slen)
                    else:
                        history.append((offset, rid, ok))
                        if ok:
                            self.history.append((pack_id, offset, rid, codec, raw, slen))
                    end, count = offset + RECORD_HEADER.size + slen, count + 1
                    if self.progress:
                        self.progress.bytes_done(done + end, total)
                self.rep.bytes_checked += size
                self.check_pack_records(pack_id, end, size, history)
                self.check_pack_info(pack_id, size, count)
                self.check_pack_instants(pack_id, history, count)
            except PackMissing:
                self.missing[pack_id] = "is in a pack that is missing"
                self.check_pack_info(pack_id, None, 0, "is missing: the index lists it")
            except RepositoryIOError as e:
                self.missing[pack_id] = "is in a pack that cannot be read"
                self.check_pack_info(pack_id, None, 0, f"cannot be read ({e})")
            done += self.packs[pack_id][0]
        if self.progress:
            self.progress.bytes_done(total, total)

    def _open_packs(self) -> set[bytes]:
        cur = self.txn.cursor(db=self.dbs[DB_META])
        found = set()
        if cur.set_range(OPEN_PACK_PREFIX):
            for key in cur.iternext(values=False):
                if not key.startswith(OPEN_PACK_PREFIX):
                    break
                found.add(bytes(key[len(OPEN_PACK_PREFIX):]))
        return found

    def check_pack_headers(self, pack_id: bytes, head: bytes) -> None:
        """I4: a pack starts with PACK_HEADER: the magic, this format version and the
        pack's own id."""
        if len(head) < PACK_HEADER.size or head[:8] != PACK_MAGIC:
            self.problem("I4", f"pack {pack_id.hex()} does not start with a pack header "
                               f"(it is not an anytime pack, or its start is damaged)")
            return
        _magic, version, own_id, _ = PACK_HEADER.unpack(head)
        if version != FORMAT_VERSION:
            self.problem("I4", f"pack {pack_id.hex()} has format version {version} in its "
                               f"header, not {FORMAT_VERSION}")
        if own_id != pack_id:
            self.problem("I4", f"pack {pack_id.hex()} names itself {own_id.hex()} in its "
                               f"header: it was copied or renamed over another")

    def check_pack_records(self, pack_id: bytes, end: int, size: int, history: list
                           ) -> None:
        """I5: a listed pack's records follow one another to its end (only a leftover
        pack, or one a rebuild of the index listed as it found it, may end in a torn
        record: a warning), and its history records' checksums match (its chunk
        records' are check_block_locations')."""
        for offset, _rid, ok in history:
            if not ok:
                self.problem("I5", f"pack {pack_id.hex()}: the history record at offset "
                                   f"{offset} fails its checksum; a rebuild of the index "
                                   f"from the packs would lack it")
        if end == size:
            return
        torn = (f"pack {pack_id.hex()} is cut short, torn or overwritten: its "
                f"{size - end} bytes from offset {end} are not a whole record")
        if size == self.packs[pack_id][0]:  # listed as it is: by a rebuild of the index
            self.rep.warnings.append(f"{torn} (listed so by a rebuild of the index; the "
                                     f"records before it are intact)")
        else:
            self.problem("I5", torn)

    def check_pack_info(self, pack_id: bytes, size: int | None, count: int,
                        unreadable: str = "") -> None:
        """I6: a listed pack exists and is what its PACK_INFO says: it was complete when
        listed, and nothing was appended since. ``size`` None: the store could not give
        the pack (``unreadable`` says why)."""
        want_size, want_count, _t = self.packs[pack_id]
        if size is None:
            self.problem("I6", f"pack {pack_id.hex()} {unreadable}")
        elif (size, count) != (want_size, want_count):
            how = ("is cut short" if size < want_size else "was appended to after it was "
                   "listed" if size > want_size else "holds other records than listed")
            self.problem("I6", f"pack {pack_id.hex()} {how}: it has {size} bytes and "
                               f"{count} records, the index lists {want_size} bytes and "
                               f"{want_count} records")

    def check_pack_instants(self, pack_id: bytes, history: list, count: int) -> None:
        """I7: a pack's commit instant is 0 (indexed before its commit) or a commit's,
        unless it holds label and setting changes only (``mark``, ``unmark``,
        ``policy``, ``hold``, ``release``)."""
        t = self.packs[pack_id][2]
        labels_only = len(history) == count and all(
            HISTORY_ID.unpack(rid)[0] in (HIST_LABEL, HIST_SETTING) for _, rid, _ in history)
        if t and not labels_only and not any(self._is_commit(vid, t) for vid in self.vols):
            self.problem("I7", f"pack {pack_id.hex()} is listed with commit instant {t}, "
                               f"which is no commit's")

    # --- chunks ------------------------------------------------------------------------
    def walk_blocks(self) -> None:
        for bid, val in self.txn.cursor(db=self.dbs[DB_BLOCKS]):
            bid = bytes(bid)
            self.rep.blocks += 1
            where = BLOCK_LOC.unpack(val)
            self.indexed[bid] = where[:2]  # the copy the index uses (count_unused)
            if bid == HOLE_ID or self.check_block_locations(bid, where):
                self.check_chunk_ids(bid, where)
        # a bad copy the index no longer uses (its chunk was stored again): reclaimable
        in_use = {(bytes.fromhex(d.pack), d.offset) for d in self.bad.values() if d.pack}
        self.rep.reclaimable += sum(1 for loc, rec in self.records.items()
                                    if not rec[1] and loc not in in_use)

    def check_block_locations(self, bid: bytes, where: tuple) -> bool:
        """I9: a ``blocks`` record names a record of that chunk, at that offset, in a
        listed pack, with its sizes and codec, whose checksum matches. True if so."""
        pack_id, offset, slen, raw, codec = where
        loc = (pack_id, offset)
        found = self.records.get(loc)
        if pack_id in self.missing:
            self.damaged("I9", bid, loc, self.missing[pack_id])
        elif pack_id not in self.packs:
            self.damaged("I9", bid, loc, "is in a pack the index does not list")
        elif found is None or found[0] != bid:
            self.damaged("I9", bid, loc, "is not there: the pack is damaged or cut short "
                                         "before it")
        elif not found[1]:
            self.damaged("I9", bid, loc, "fails its checksum")
        elif found[2:] != (codec, raw, slen):
            self.damaged("I9", bid, loc, f"is there with codec {found[2]}, raw length "
                                         f"{found[3]} and stored length {found[4]}, but "
                                         f"the index says {codec}, {raw} and {slen}")
        else:
            return True
        return False

    def check_chunk_ids(self, bid: bytes, where: tuple) -> None:
        """I8: ``HOLE_ID`` is never indexed; with ``read_data``, a chunk's record decodes
        to its raw length and hashes (keyed BLAKE3) to its id."""
        loc = where[:2]
        if bid == HOLE_ID:
            self.damaged("I8", bid, loc, "is the hole id, which is never stored")
            return
        if not self.read_data:
            return
        try:
            data = self.repo.read_located(self.txn, bid, where)
        except Exception as e:  # noqa: BLE001 - reported, the check goes on
            self.damaged("I8", bid, loc, f"cannot be read back: {e}")
            return
        if block_id(self.repo.block_key, data) != bid:
            self.damaged("I8", bid, loc, "does not match its id")

    def check_dictionaries(self) -> None:
        """I10: every zstd dictionary is under its own id and decodes; ``zdict`` names one."""
        import zstandard

        meta = self.dbs[DB_META]
        cur = self.txn.cursor(db=meta)
        ok = cur.set_range(ZDICT_PREFIX)
        while ok and cur.key().startswith(ZDICT_PREFIX):
            key, val = bytes(cur.key()), bytes(cur.value())
            ok = cur.next()
            if len(key) != len(ZDICT_PREFIX) + 4:
                self.problem("I10", f"meta key {key!r} is not a dictionary key")
                continue
            want = split_zdict_key(key)
            self.zdict_ids.append(want)
            try:
                got = zstandard.ZstdCompressionDict(
                    zstandard.ZstdDecompressor().decompress(val)).dict_id()
            except zstandard.ZstdError as e:
                self.problem("I10", f"zstd dictionary {want} does not decompress ({e}): "
                                    f"every small chunk compressed with it is unreadable")
                continue
            if got != want:
                self.problem("I10", f"zstd dictionary {want} is stored under its id but "
                                    f"names itself {got}")
        current = self.txn.get(ZDICT_CURRENT, db=meta)
        if current is not None and (len(current) != 4 or self.txn.get(
                ZDICT_PREFIX + bytes(current), db=meta) is None):
            self.problem("I10", f"meta 'zdict' names dictionary {bytes(current).hex()}, "
                                f"which the index does not hold")

    # --- volumes -----------------------------------------------------------------------
    def check_volumes(self) -> None:
        """I12: ``volumes`` and ``volnames`` are inverse maps, every volume's block size
        is valid, and ``next_volume_id`` is above every volume id."""
        for key, val in self.txn.cursor(db=self.dbs[DB_VOLUMES]):
            try:
                vid = U32.unpack(key)[0]
                vol = Volume.decode(val)
            except Exception as e:  # noqa: BLE001 - any damage is reported, check goes on
                self.problem("I12", f"the volume record under {bytes(key).hex()} is "
                                    f"damaged ({e})")
                continue
            self.vols[vid] = vol
            if vol.id != vid:
                self.problem("I12", f"the volume record under id {vid} says id {vol.id}")
            problem = block_size_problem(vol.block_size)
            if problem:
                self.problem("I12", f"volume {vol.name!r}: its block size {problem}")
            back = self.txn.get(vol.name.encode(), db=self.dbs[DB_VOLNAMES])
            if back != vol_key(vid):
                self.problem("I12", f"volume {vol.name!r} (id {vid}) is not found by its "
                                    f"name in volnames")
        for name, vid in self.txn.cursor(db=self.dbs[DB_VOLNAMES]):
            vol = self.vols.get(U32.unpack(vid)[0]) if len(vid) == 4 else None
            if vol is None or vol.name.encode() != bytes(name):
                self.problem("I12", f"the volume name {bytes(name)!r} names volume "
                                    f"{bytes(vid).hex()}, which is not a volume of that name")
        nxt = self.txn.get(b"next_volume_id", db=self.dbs[DB_META])
        top = max(self.vols, default=0)
        if top and (nxt is None or not bytes(nxt).isdigit() or int(nxt) <= top):
            self.problem("I12", f"meta next_volume_id is {nxt!r}, not above volume id {top}: "
                                f"the next volume would reuse an id")

    def check_orphans(self) -> None:
        """I13: every record keyed by a volume, and every pending marker, belongs to a
        volume in ``volumes``. Seeks from one volume's records to the next."""
        for name in VOLUME_DBS:
            cur = self.txn.cursor(db=self.dbs[name])
            ok = cur.first()
            while ok:
                key = bytes(cur.key())
                if len(key) < 4:
                    self.problem("I13", f"{name.decode()} has a key too short to name a "
                                        f"volume: {key.hex()}")
                    ok = cur.next()
                    continue
                vid = U32.unpack_from(key)[0]
                if vid not in self.vols:
                    self.problem("I13", f"{name.decode()} has records of volume {vid}, "
                                        f"which does not exist")
                ok = vid < 2**32 - 1 and cur.set_range(vol_key(vid + 1))
        for vid in self.pending:
            if vid not in self.vols:
                self.problem("I13", f"a pending commit marker names volume {vid}, which "
                                    f"does not exist")

    def check_horizons(self) -> None:
        """I14: a volume's horizon is the instant of its newest commit (0 before one)."""
        cur = self.txn.cursor(db=self.dbs[DB_COMMITS])
        for vid, vol in sorted(self.vols.items()):
            # the last key before the next volume's first
            ok = cur.prev() if vid < 2**32 - 1 and cur.set_range(vol_key(vid + 1)) \
                else cur.last()
            key = bytes(cur.key()) if ok else b""
            newest = U64.unpack_from(key, 4)[0] \
                if key[:4] == vol_key(vid) and len(key) == _KEY_LENS[DB_COMMITS] else 0
            if vol.horizon != newest:
                self.problem("I14", f"volume {vol.name!r} has horizon {vol.horizon}, but its "
                                    f"newest commit is at {newest}")

    def _vol_of(self, key: bytes) -> Volume | None:
        """The volume a key starts with (None: none; check_orphans reports it)."""
        return self.vols.get(U32.unpack_from(key)[0]) if len(key) >= 4 else None

    def _is_commit(self, vid: int, t: int) -> bool:
        if (vid, t) in self._commit_seen:
            return True
        if self.txn.get(commit_key(vid, t), db=self.dbs[DB_COMMITS]) is None:
            return False
        if len(self._commit_seen) > 1 << 16:
            self._commit_seen.clear()
        self._commit_seen.add((vid, t))
        return True

    def check_versions_committed(self, vol: Volume, t: int, what: str) -> None:
        """I15: a path or block version has the instant of a commit of its volume, or
        one after the commit before and at most that of a *timed* commit (the shim's:
        one instant per operation), or is a staged record of an unfinished commit (at
        most its pending marker's instant, past the horizon)."""
        if self._is_commit(vol.id, t):
            return
        staged = self.pending.get(vol.id)
        if staged is not None and vol.horizon < t <= staged:
            return
        if self._timed_commit_after(vol.id, t):
            return
        self.problem("I15", f"volume {vol.name!r}: {what} at {t}, which is no commit's "
                            f"instant")

    def _timed_commit_after(self, vid: int, t: int) -> bool:
        """True if the first commit of volume ``vid`` after instant ``t`` is timed."""
        cur = self.txn.cursor(db=self.dbs[DB_COMMITS])
        if not cur.set_range(commit_key(vid, t)) or bytes(cur.key()[:4]) != vol_key(vid):
            return False
        at = split_commit_key(bytes(cur.key()))[1]
        known = self._timed.get((vid, at))
        if known is None:
            try:
                known = bool(json.loads(bytes(cur.value())).get("timed"))
            except (ValueError, AttributeError):
                known = False
            if len(self._timed) > 1 << 16:
                self._timed.clear()
            self._timed[(vid, at)] = known
        return known

    def read_pending(self) -> None:
        cur = self.txn.cursor(db=self.dbs[DB_META])
        ok = cur.set_range(PENDING_PREFIX)
        while ok and cur.key().startswith(PENDING_PREFIX):
            self.pending[split_pending_key(bytes(cur.key()))] = U64.unpack(cur.value())[0]
            ok = cur.next()

    def check_pending(self) -> None:
        """I17: a pending marker names an instant past its volume's horizon (an
        unfinished commit: a warning, the next writer rolls it back)."""
        for vid, t in sorted(self.pending.items()):
            vol = self.vols.get(vid)
            if vol is None:
                continue  # check_orphans
            if t <= vol.horizon:
                self.problem("I17", f"volume {vol.name!r} has a pending commit marker at "
                                    f"{t}, at or before its horizon {vol.horizon}")
            else:
                self.rep.warnings.append(
                    f"volume {vol.name!r} has an unfinished commit (staged at {t}); the next "
                    f"snapshot rolls it back first")
        from .prune import unfinished_in

        for plan in unfinished_in(self.repo, self.txn):  # not damage: every kept view is exact
            vol = self.vols.get(plan.vol)
            self.rep.warnings.append(
                f"volume {vol.name if vol else plan.vol!r}: a prune was interrupted; views at "
                f"the {len(plan.dropped)} commits it drops may show a mix of their time and "
                f"the kept commit before them until 'anytime prune' finishes it")

    def check_file_ids(self, vol: Volume, fid: int, what: str, t: int | None) -> None:
        """I18: a volume's file ids are below its ``next_file_id``, except in the records
        of an unfinished commit (at its pending marker's instant ``t``; an inode
        mapping, which has no instant: while the volume has a marker), which the next
        writer rolls back."""
        if fid >= vol.next_file_id:
            staged = self.pending.get(vol.id)
            if staged is not None and t in (staged, None):
                return
            self.problem("I18", f"volume {vol.name!r}: {what} has file id {fid}, not below "
                                f"the volume's next file id {vol.next_file_id}")

    def walk_inodes(self) -> None:
        for key, val in self.txn.cursor(db=self.dbs[DB_INODES]):
            vol = self._vol_of(key)
            if vol is None:
                continue  # check_orphans
            if len(key) != _KEY_LENS[DB_INODES] or len(val) != INODE_VALUE.size:
                self.problem("I18", f"volume {vol.name!r}: the inode mapping "
                                    f"{bytes(key).hex()} is not an inode key and INODE_VALUE")
                continue
            self.check_file_ids(vol, INODE_VALUE.unpack(val)[0],
                                f"the inode mapping {bytes(key[4:]).hex()}", None)

    # --- path versions -----------------------------------------------------------------
    def walk_entries(self, vol: Volume) -> dict[tuple[int, int], int]:
        """Check every path version of ``vol``; returns the size of each file version
        by (file id, instant), for check_block_lengths."""
        sizes: dict[tuple[int, int], int] = {}
        prefix = vol_key(vol.id)
        cur = self.txn.cursor(db=self.dbs[DB_ENTRIES])
        ok = cur.set_range(prefix)
        while ok and cur.key().startswith(prefix):
            key, val = bytes(cur.key()), bytes(cur.value())
            ok = cur.next()
            fixed = self.check_entries(vol, key, val)
            if fixed is None:
                continue
            t = U64.unpack_from(key, len(key) - 8)[0]
            what = f"the path version {key[4 + DIR_HASH_LEN:-9]!r} at {t}"
            self.check_versions_committed(vol, t, what)
            self.check_file_ids(vol, fixed[10], what, t)
            if fixed[0] == KIND_FILE:
                sizes[(fixed[10], t)] = fixed[6]
        return sizes

    def check_entries(self, vol: Volume, key: bytes, val: bytes) -> tuple | None:
        """I19: an entry decodes exactly, with a known kind matching its mode's type
        bits, under a key whose name holds no 00 or '/'. Returns its ENTRY_FIXED fields
        (None if it is damaged)."""
        name = key[4 + DIR_HASH_LEN:-9]
        where = f"volume {vol.name!r}: the path version {name!r}"
        if len(key) < 4 + DIR_HASH_LEN + 9 or key[-9:-8] != SEP or SEP in name \
                or b"/" in name:
            self.problem("I19", f"{where} has a malformed key {key.hex()}")
            return None
        try:
            fixed = ENTRY_FIXED.unpack_from(val, 0)
            pos = ENTRY_FIXED.size
            (tlen,) = _U32LE.unpack_from(val, pos)
            pos += 4 + tlen
            (nx,) = _U32LE.unpack_from(val, pos)
            pos += 4
            for _ in range(nx):
                pos += 2 + _U16LE.unpack_from(val, pos)[0]
                pos += 4 + _U32LE.unpack_from(val, pos)[0]
            if pos != len(val):
                raise ValueError(f"{len(val) - pos} bytes more than its parts")
        except Exception as e:  # noqa: BLE001 - struct.error, ValueError
            self.problem("I19", f"{where} does not decode ({e})")
            return None
        kind, mode = fixed[0], fixed[2]
        if kind not in KIND_NAMES:
            self.problem("I19", f"{where} has unknown kind {kind}")
            return None
        if kind != KIND_DELETED and st_.S_IFMT(mode) != IFMT_OF_KIND[kind]:
            self.problem("I19", f"{where} is a {KIND_NAMES[kind]} whose mode {mode:o} says "
                                f"another type")
        return fixed

    # --- block versions ----------------------------------------------------------------
    def walk_block_versions(self, vol: Volume, sizes: dict, spoiled: dict) -> None:
        """Check every block version of ``vol``, and gather the ranges that read damaged
        chunks into ``spoiled``: (volume id, file id) -> [[block number, from, to, id]]."""
        prefix = vol_key(vol.id)
        cur = self.txn.cursor(db=self.dbs[DB_BLOCKVERS])
        ok = cur.set_range(prefix)
        prev_prefix, prev_ranges = None, []
        while ok and cur.key().startswith(prefix):
            key, ref = bytes(cur.key()), bytes(cur.value())
            ok = cur.next()
            self.rep.block_versions += 1
            if len(key) != _KEY_LENS[DB_BLOCKVERS]:
                self.problem("I20", f"volume {vol.name!r}: block version key {key.hex()} "
                                    f"is not a block version key")
                continue
            _vid, fid, block_no, t = split_blockver_key(key)
            if prev_prefix == (fid, block_no):
                for r in prev_ranges:
                    r[2] = t  # the next version of that block ends the range
            prev_prefix, prev_ranges = (fid, block_no), []
            what = f"file {fid}, block {block_no} at {t}"
            self.check_versions_committed(vol, t, f"the block version of {what}")
            self.check_file_ids(vol, fid, f"the block version of {what}", t)
            slices = self.check_block_refs(vol, what, ref)
            if slices is None:
                continue
            lens = self.check_refs_indexed(slices)
            self.check_block_lengths(vol, what, fid, block_no, t, slices, lens, sizes)
            for cid, _, _ in slices:
                if cid in self.bad:
                    prev_ranges.append([block_no, t, None, cid])
                    spoiled.setdefault((vol.id, fid), []).append(prev_ranges[-1])

    def check_block_refs(self, vol: Volume, what: str, ref: bytes) -> list | None:
        """I20: a block reference is one chunk id (or HOLE_ID) or whole slices. Returns
        its slices (None if it is damaged)."""
        try:
            return decode_ref(ref)
        except ValueError as e:
            self.problem("I20", f"volume {vol.name!r}, {what}: the block version is "
                                f"damaged ({e})")
            return None

    def check_refs_indexed(self, slices: list) -> list[int | None]:
        """I21: every chunk a block reference names (but HOLE_ID) is in ``blocks``.
        Returns each slice's chunk length (None: a hole or not indexed)."""
        lens = []
        for cid, _, _ in slices:
            if cid == HOLE_ID:
                lens.append(None)
                continue
            self.referenced.add(cid)
            val = self.txn.get(cid, db=self.dbs[DB_BLOCKS])
            if val is None:
                self.damaged("I21", cid, None, "is named by a block version but not in the "
                                               "index")
                lens.append(None)
            else:
                lens.append(BLOCK_LOC.unpack(val)[3])
        return lens

    def check_block_lengths(self, vol: Volume, what: str, fid: int, block_no: int, t: int,
                            slices: list, lens: list, sizes: dict) -> None:
        """I22: every slice lies within its chunk, and a block's slices (or its whole
        chunk) are as long as the block: the block size, or what the file's size leaves
        for its last block."""
        where = f"volume {vol.name!r}, {what}"
        total = 0
        for (cid, off, n), chunk_len in zip(slices, lens, strict=True):
            if n is None:  # a whole chunk (or a whole hole: its length is the block's)
                n = chunk_len
            elif chunk_len is not None and off + n > chunk_len:
                self.problem("I22", f"{where}: a slice [{off}, {off + n}) of chunk "
                                    f"{cid.hex()[:16]} ends past the chunk's {chunk_len} "
                                    f"bytes")
            if n is None:
                return  # a whole hole, or a chunk check_refs_indexed reported
            total += n
        bs = vol.block_size
        size = sizes.get((fid, t))
        want = bs if size is None else min(bs, size - block_no * bs)
        if want <= 0:
            self.problem("I22", f"{where}: the block is past the end of the file "
                                f"({size} bytes)")
        elif total != want and (size is not None or total > bs):
            self.problem("I22", f"{where}: the block reference makes {total} bytes, not "
                                f"the block's {want}")

    # --- commits and labels ------------------------------------------------------------
    def check_commit_records(self) -> None:
        """I23: every commit record is a JSON object with a kind and the writer's counts."""
        for key, val in self.txn.cursor(db=self.dbs[DB_COMMITS]):
            vol = self._vol_of(key)
            if vol is None:
                continue  # check_orphans
            where = f"volume {vol.name!r}: the commit record {bytes(key[4:]).hex()}"
            try:
                if len(key) != _KEY_LENS[DB_COMMITS]:
                    raise ValueError("its key is not a commit key")
                rec = json.loads(bytes(val))
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                self.problem("I23", f"{where} is damaged ({e})")
                continue
            wrong = [k for k in COMMIT_INTS if not isinstance(rec.get(k), int)]
            if not isinstance(rec.get("kind"), str):
                wrong.insert(0, "kind")
            if wrong:
                self.problem("I23", f"{where} lacks {', '.join(wrong)}")

    def check_labels(self) -> None:
        """I24: every label names an instant."""
        for key, val in self.txn.cursor(db=self.dbs[DB_LABELS]):
            vol = self._vol_of(key)
            if vol is not None and len(val) != U64.size:
                self.problem("I24", f"volume {vol.name!r}: label {bytes(key[4:])!r} holds "
                                    f"{len(val)} bytes, not an instant")

    def check_dirs(self) -> None:
        """I25: every directory that entries are filed under (by its path hash,
        format.DirHasher) has its ``dirs`` record, and every record's path hashes to
        its key. Seeks from one directory's entries to the next: one lookup each."""
        dirs_db = self.dbs[DB_DIRS]
        for key, path in self.txn.cursor(db=dirs_db):
            vid, dh = split_dir_key(key)
            if self.repo.dir_hash(bytes(path)) != dh:
                self.problem("I25", f"the directory record {dh.hex()} of volume {vid} names "
                                    f"{os.fsdecode(bytes(path))!r}, whose hash is another")
        cur = self.txn.cursor(db=self.dbs[DB_ENTRIES])
        width = 4 + DIR_HASH_LEN
        ok = cur.first()
        while ok:
            group = bytes(cur.key()[:width])
            if self.txn.get(group, db=dirs_db) is None:
                vid, dh = split_dir_key(group)
                self.problem("I25", f"entries of volume {vid} are filed under directory "
                                    f"{dh.hex()}, which has no directory record: their "
                                    f"paths cannot be named")
            nxt = int.from_bytes(group, "big") + 1
            ok = nxt < 1 << (8 * width) and cur.set_range(nxt.to_bytes(width, "big"))

    # --- damage ------------------------------------------------------------------------
    def affected(self, spoiled) -> None:
        """Attach to each damaged chunk the paths and instants that read it."""
        for vid in sorted({vid for vid, _ in spoiled}):
            vol = self.vols[vid]
            fids = {f for v, f in spoiled if v == vid}
            for path, fid, size, start, end in self._file_versions(vid, fids):
                for block_no, t0, t1, bid in spoiled[(vid, fid)]:
                    lo = max(start, t0)
                    ends = [t for t in (end, t1) if t is not None]
                    hi = min(ends) if ends else None
                    if (hi is not None and hi <= lo) or block_no * vol.block_size >= size:
                        continue  # not at the same time, or past the end of the file
                    self.bad[bid].affected.append(Affected(
                        vol.name, vol.source, os.fsdecode(path), block_no, lo, hi))

    def _file_versions(self, vid: int, fids: set[int]):
        """(path, file id, size, from, to) for each path version of volume ``vid`` that
        is a file with one of ``fids`` (to: the next version's instant, None for the
        last)."""
        pending, same = None, None
        for path, dh, name, t, val in entry_paths(self.repo, self.txn, vid):
            if pending is not None:
                yield (*pending, t if same == (dh, name) else None)
                pending = None
            fixed = ENTRY_FIXED.unpack_from(val, 0)
            kind, size, fid = fixed[0], fixed[6], fixed[10]
            if kind == KIND_FILE and fid in fids:
                # a directory without its record is reported by check_dirs
                pending = (path if path is not None else b"?/" + name, fid, size, t)
                same = (dh, name)
        if pending is not None:
            yield (*pending, None)

    def record_damage(self) -> None:
        """Record what this check found in ``damaged`` (I11); count superseded records."""
        on_file = damage.load(self.repo.root)
        blocks_db = self.dbs[DB_BLOCKS]
        for bid, wheres in on_file.items():
            val = self.txn.get(bid, db=blocks_db)
            now = BLOCK_LOC.unpack(val)[:2] if val is not None else (damage.NO_PACK, 0)
            for where in wheres:
                if where != now or bid not in self.bad:
                    self.rep.reclaimable += 1
        for bid, d in self.bad.items():
            where = (bytes.fromhex(d.pack), d.offset) if d.pack else (damage.NO_PACK, 0)
            if where not in on_file.get(bid, {}):
                damage.record(self.repo.root, bid, where[0], where[1], d.reason)


    def check_history(self) -> None:
        """I26: the packs hold what the index holds: every commit has its commit record
        and all its batches in listed packs, every label was written there (by its
        commit or as a label change), every retention policy and hold by a setting
        change. Without them a rebuild of the index (``check --repair``) would lose
        that history. A dictionary without its record is only a
        warning: no listed pack then holds a chunk compressed with it."""
        from . import history as hist

        store = self.repo.pack_store
        # (volume, instant) -> its commit records (a prune writes a changed commit again)
        recs: dict[tuple[int, int], list[tuple]] = {}
        batches: dict[tuple, int] = {}  # (volume, instant, nonce) -> batches found
        labels: set[tuple[int, str]] = set()
        settings: set[tuple[int, str]] = set()  # (volume, "policy" or "hold:ID") logged
        zdicts: set[int] = set()
        for pack_id, offset, rid, codec, raw, slen in self.history:
            kind, vid, t, part, nonce = hist.split_history_id(rid)
            if kind == HIST_BATCH:
                batches[(vid, t, nonce)] = batches.get((vid, t, nonce), 0) + 1
            elif kind == HIST_ZDICT:
                zdicts.add(part)
            elif kind in (HIST_COMMIT, HIST_LABEL, HIST_SETTING):
                try:
                    got = hist.decode_json(hist.decode_payload(
                        codec, raw, store.read(pack_id, offset + RECORD_HEADER.size, slen)))
                except (ValueError, AnytimeError) as e:
                    self.problem("I26", f"pack {pack_id.hex()}: the history record at "
                                        f"offset {offset} does not decode ({e})")
                    continue
                if kind == HIST_COMMIT:
                    recs.setdefault((vid, t), []).append((nonce, got.get("batches")))
                if kind == HIST_SETTING:
                    settings |= _settings_named(vid, got)
                    continue
                if got.get("label"):
                    labels.add((vid, got["label"]))
        instants: dict[int, list[tuple[int, str | None]]] = {}  # each volume's commits
        for key, val in self.txn.cursor(db=self.dbs[DB_COMMITS]):
            if len(key) == 12:
                vid, t = split_commit_key(bytes(key))
                try:
                    nonce = json.loads(bytes(val)).get("nonce")
                except (ValueError, AttributeError):
                    nonce = None  # I23's to report
                instants.setdefault(vid, []).append((t, nonce))
        for vid, vol in sorted(self.vols.items()):
            for t, nonce in instants.get(vid, []):
                gens = recs.get((vid, t), [])
                # the generation the index holds (any, for a commit without a nonce)
                rec = next((g for g in gens if nonce is None or g[0].hex() == nonce), None)
                if rec is None:
                    self.problem("I26", f"volume {vol.name}: the commit of {t} has no commit "
                                        f"record in the packs; a rebuild of the index "
                                        f"would lose it and every later commit")
                elif batches.get((vid, t, rec[0]), 0) != rec[1]:
                    self.problem("I26", f"volume {vol.name}: the commit of {t} has "
                                        f"{batches.get((vid, t, rec[0]), 0)} of its {rec[1]} "
                                        f"record batches in the packs")
        for key in self.txn.cursor(db=self.dbs[DB_LABELS]).iternext(values=False):
            vid, raw_name = split_label_key(bytes(key))
            name = raw_name.decode(errors="surrogateescape")
            vol = self.vols.get(vid)
            if vol is not None and (vid, name) not in labels:
                self.problem("I26", f"volume {vol.name}: label '{name}' is in no history "
                                    f"record of the packs")
        from .policies import stored_settings

        for vid, what in sorted(stored_settings(self.repo, self.txn) - settings):
            name = self.vols[vid].name if vid in self.vols else str(vid)
            self.problem("I26", f"volume {name}: its {what.replace(':', ' ')} is in no "
                                f"history record of the packs")
        for dict_id in self.zdict_ids:
            if dict_id not in zdicts:  # a warning: its record and the chunks compressed
                # with it share packs, so no listed pack holds such a chunk either (the
                # snapshot that trained it failed before its commit point)
                self.rep.warnings.append(
                    f"dictionary {dict_id} is in no history record of the listed packs: "
                    f"no chunk in them was compressed with it (the snapshot that trained "
                    f"it did not commit); a rebuild of the index leaves it out")


    def count_unused(self) -> None:
        """What packs hold that no kept instant uses (not damage; ``prune`` removes it):
        chunk records that are not the indexed copy, or whose chunk no block version
        names, and history records of dropped commits or of replaced generations. Zero
        after a prune with ``--max-age`` proves that what it dropped is gone from the
        packs."""
        from .prune import history_live, live_commits

        live = live_commits(self.repo, self.txn)
        for (pack_id, offset), (rid, _ok, _codec, _raw, slen) in self.records.items():
            if self.indexed.get(rid) != (pack_id, offset) or rid not in self.referenced:
                self.rep.unused_records += 1
                self.rep.unused_bytes += RECORD_HEADER.size + slen
        for _pack_id, _offset, rid, _codec, _raw, slen in self.history:
            if not history_live(live, rid):
                self.rep.unused_records += 1
                self.rep.unused_bytes += RECORD_HEADER.size + slen


def _settings_named(vid: int, change) -> set[tuple[int, str]]:
    """(volume, ``policy`` or ``hold:ID``) a setting change record sets."""
    if not isinstance(change, dict):
        return set()
    out = {(vid, "policy")} if change.get("policy") is not None else set()
    hold = change.get("hold")
    if isinstance(hold, dict) and isinstance(hold.get("id"), str):
        out.add((vid, f"hold:{hold['id']}"))
    return out


def check(repo, read_data: bool = False, progress=None) -> CheckReport:
    """Verify every invariant check can (docs/format.md, ``INVARIANTS``)."""
    with repo.read_txn() as txn:
        c = _Checker(repo, txn, read_data, progress)
        c.check_modes()
        c.check_volumes()
        c.read_pending()
        c.check_orphans()
        c.check_horizons()
        c.check_pending()
        c.walk_packs()
        c.walk_blocks()
        c.check_dictionaries()
        c.check_dirs()
        spoiled: dict = {}
        for vol in sorted(c.vols.values(), key=lambda v: v.id):
            sizes = c.walk_entries(vol)
            c.walk_block_versions(vol, sizes, spoiled)
        c.walk_inodes()
        c.check_commit_records()
        c.check_labels()
        c.check_history()
        c.count_unused()
        if spoiled:
            c.affected(spoiled)
        c.record_damage()
        known = set(c.packs)
    rep = c.rep
    rep.damaged = list(c.bad.values())
    rep.leftover_packs = sum(1 for p in repo.pack_store.list() if p not in known)
    return rep
