"""Checking a repository: every pack readable, every indexed block where the index says,
and for each damaged block, which files at which instants it spoils.

Read-only for the index. What it verifies:
  - every pack listed in ``packs`` exists and its records walk cleanly (checksums match);
  - every block in ``blocks`` points at a record of that id in a committed pack;
  - every block version names a block that is indexed (or a hole);
  - every directory that entries are filed under has its ``dirs`` record (its path);
  - pack files that no commit references (left by a killed writer) are counted; the
    next writer reclaims them.
With ``read_data`` it also decompresses every block and compares its keyed BLAKE3 hash
with its id.

A block whose indexed copy fails any of these is *damaged*: check appends it to the
repository's ``damaged`` file (store/damage.py), so that the next capture meeting its
content stores it again, and reports the volumes, paths and instant ranges that read it
(:class:`Affected`). A damaged copy the index no longer points at (the block was stored
anew) and damage records superseded so are *reclaimable*, not damage.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from . import damage, modes
from .errors import PackMissing, RepositoryIOError
from .format import (
    BLOCK_LOC,
    DB_BLOCKS,
    DB_BLOCKVERS,
    DB_DIRS,
    DB_ENTRIES,
    DB_PACKS,
    DIR_HASH_LEN,
    ENTRY_FIXED,
    KIND_FILE,
    PACK_INFO,
    block_id,
    ref_chunk_ids,
    split_blockver_key,
    split_dir_key,
)
from .packs import iter_records
from .timeline import entry_paths
from .volumes import list_volumes


@dataclass
class Affected:
    """One path of one volume that reads a damaged block from ``from_ns`` until
    ``to_ns`` (exclusive; None: still at the volume's latest instant)."""

    volume: str
    source: str
    path: str
    block_no: int
    from_ns: int
    to_ns: int | None


@dataclass
class DamagedBlock:
    block: str  # id, hex
    pack: str | None  # where the index puts it (None: not indexed)
    offset: int | None
    reason: str
    message: str  # as listed in CheckReport.problems
    affected: list[Affected] = field(default_factory=list)


@dataclass
class CheckReport:
    packs: int = 0
    blocks: int = 0
    block_versions: int = 0
    bytes_checked: int = 0
    leftover_packs: int = 0
    #: damaged copies no longer used and damage records superseded by a good copy
    reclaimable: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: list[DamagedBlock] = field(default_factory=list)
    #: what is not damage but should be fixed (a repository others can read)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(asdict(self), ok=not self.problems)


class _Checker:
    def __init__(self, repo, txn, read_data: bool, progress):
        self.repo, self.txn, self.read_data, self.progress = repo, txn, read_data, progress
        self.rep = CheckReport()
        self.bad: dict[bytes, DamagedBlock] = {}
        #: (pack id, offset) -> (block id, checksum ok), for every record walked
        self.records: dict[tuple[bytes, int], tuple[bytes, bool]] = {}
        #: packs that could not be walked: missing, or failing to read
        self.missing: dict[bytes, str] = {}

    def damaged(self, bid: bytes, loc, reason: str) -> None:
        if bid in self.bad:
            return
        pack, offset = (loc[0].hex(), loc[1]) if loc else (None, None)
        where = f" (pack {pack} at offset {offset})" if loc else ""
        msg = f"block {bid.hex()[:16]}{where} {reason}"
        self.bad[bid] = DamagedBlock(bid.hex(), pack, offset, reason, msg)
        self.rep.problems.append(msg)

    def walk_packs(self, known: dict[bytes, int]) -> None:
        total, done = sum(known.values()), 0
        store = self.repo.pack_store
        for pack_id in sorted(known):
            self.rep.packs += 1
            try:
                size = store.size(pack_id)
                for offset, bid, _codec, _raw, slen, ok in iter_records(store, pack_id):
                    self.records[(pack_id, offset)] = (bid, ok)
                    if self.progress:
                        self.progress.bytes_done(done + offset + slen, total)
                self.rep.bytes_checked += size
            except PackMissing:
                self.missing[pack_id] = "is in a pack that is missing"
                self.rep.problems.append(f"pack {pack_id.hex()} is missing")
            except RepositoryIOError as e:
                self.missing[pack_id] = "is in a pack that cannot be read"
                self.rep.problems.append(str(e))
            done += known[pack_id]
        if self.progress:
            self.progress.bytes_done(total, total)

    def check_blocks(self) -> None:
        for bid, val in self.txn.cursor(db=self.repo.dbs[DB_BLOCKS]):
            bid = bytes(bid)
            self.rep.blocks += 1
            where = BLOCK_LOC.unpack(val)
            pack_id, offset = where[:2]
            loc = (pack_id, offset)
            found = self.records.get(loc)
            if pack_id in self.missing:
                self.damaged(bid, loc, self.missing[pack_id])
            elif found is None or found[0] != bid:
                self.damaged(bid, loc, "is not there: the pack is damaged or cut short "
                                       "before it")
            elif not found[1]:
                self.damaged(bid, loc, "fails its checksum")
            elif self.read_data:
                self.read_back(bid, loc, where)
        # a bad copy the index no longer uses (its block was stored again): reclaimable
        in_use = {(bytes.fromhex(d.pack), d.offset) for d in self.bad.values() if d.pack}
        self.rep.reclaimable += sum(1 for loc, (_bid, ok) in self.records.items()
                                    if not ok and loc not in in_use)

    def read_back(self, bid: bytes, loc, where: tuple) -> None:
        """Read the block back from ``where`` (its index value, unpacked) and hash it."""
        try:
            data = self.repo.read_located(self.txn, bid, where)
        except Exception as e:  # noqa: BLE001 - reported, the check goes on
            self.damaged(bid, loc, f"cannot be read back: {e}")
            return
        if block_id(self.repo.block_key, data) != bid:
            self.damaged(bid, loc, "does not match its id")

    def check_versions(self) -> dict[tuple[int, int], list[tuple[int, int, int | None]]]:
        """Count block versions, find those naming unindexed blocks, and return the
        ranges that read damaged blocks: (volume id, file id) -> [(block number, from,
        to)]."""
        blocks_db = self.repo.dbs[DB_BLOCKS]
        spoiled: dict[tuple[int, int], list[list]] = {}
        prev_prefix, prev_ranges = None, []
        for key, ref in self.txn.cursor(db=self.repo.dbs[DB_BLOCKVERS]):
            self.rep.block_versions += 1
            vid, fid, block_no, t = split_blockver_key(key)
            if prev_prefix == (vid, fid, block_no):
                for r in prev_ranges:
                    r[2] = t  # the next version of that block ends the range
            prev_prefix, prev_ranges = (vid, fid, block_no), []
            try:
                cids = ref_chunk_ids(ref)
            except ValueError as e:
                self.rep.problems.append(f"volume {vid}, file {fid}, block {block_no} at "
                                         f"{t}: the block version is damaged ({e})")
                continue
            for cid in cids:
                if cid not in self.bad and self.txn.get(cid, db=blocks_db) is None:
                    self.damaged(cid, None, "is named by a block version but not in the "
                                            "index")
                if cid in self.bad:
                    prev_ranges.append([block_no, t, None, cid])
                    spoiled.setdefault((vid, fid), []).append(prev_ranges[-1])
        return spoiled

    def affected(self, spoiled) -> None:
        """Attach to each damaged block the paths and instants that read it."""
        vols = {v.id: v for v in list_volumes(self.repo, self.txn)}
        for vid in sorted({vid for vid, _ in spoiled}):
            vol = vols.get(vid)
            if vol is None:
                continue
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

    def check_dirs(self) -> None:
        """Invariant: every directory that entries are filed under (by its path hash,
        format.DirHasher) has its ``dirs`` record, and every record's path hashes to
        its key. Seeks from one directory's entries to the next: one lookup each."""
        dirs_db = self.repo.dbs[DB_DIRS]
        for key, path in self.txn.cursor(db=dirs_db):
            vid, dh = split_dir_key(key)
            if self.repo.dir_hash(bytes(path)) != dh:
                self.rep.problems.append(
                    f"the directory record {dh.hex()} of volume {vid} names "
                    f"{os.fsdecode(bytes(path))!r}, whose hash is another")
        cur = self.txn.cursor(db=self.repo.dbs[DB_ENTRIES])
        width = 4 + DIR_HASH_LEN
        ok = cur.first()
        while ok:
            group = bytes(cur.key()[:width])
            if self.txn.get(group, db=dirs_db) is None:
                vid, dh = split_dir_key(group)
                self.rep.problems.append(
                    f"entries of volume {vid} are filed under directory {dh.hex()}, which "
                    f"has no directory record: their paths cannot be named")
            nxt = int.from_bytes(group, "big") + 1
            ok = nxt < 1 << (8 * width) and cur.set_range(nxt.to_bytes(width, "big"))

    def damage_records(self) -> None:
        """Record what this check found in ``damaged``; count superseded records."""
        on_file = damage.load(self.repo.root)
        blocks_db = self.repo.dbs[DB_BLOCKS]
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


def check(repo, read_data: bool = False, progress=None) -> CheckReport:
    with repo.read_txn() as txn:
        c = _Checker(repo, txn, read_data, progress)
        known = {bytes(k): PACK_INFO.unpack(v)[0]
                 for k, v in txn.cursor(db=repo.dbs[DB_PACKS])}
        c.walk_packs(known)
        c.check_blocks()
        c.check_dirs()
        spoiled = c.check_versions()
        if spoiled:
            c.affected(spoiled)
        c.damage_records()
    rep = c.rep
    rep.damaged = list(c.bad.values())
    exposed = modes.exposure(repo.root)
    if exposed:
        rep.warnings.append(exposed)
    rep.leftover_packs = sum(1 for p in repo.pack_store.list() if p not in known)
    return rep
