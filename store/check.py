"""Checking a repository: every pack readable, every indexed block where the index says.

Read-only. What it verifies:
  - every pack listed in ``packs`` exists and its records walk cleanly (checksums match);
  - every block in ``blocks`` points at a record of that id in a committed pack;
  - every block version names a block that is indexed (or a hole);
  - pack files that no commit references (left by a killed writer) are counted; the
    next writer reclaims them.
With ``read_data`` it also decompresses every block and compares its keyed BLAKE3 hash
with its id.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from . import modes
from .format import DB_BLOCKS, DB_BLOCKVERS, HOLE_ID, block_id
from .packs import iter_records, pack_path


@dataclass
class CheckReport:
    packs: int = 0
    blocks: int = 0
    block_versions: int = 0
    leftover_packs: int = 0
    problems: list[str] = field(default_factory=list)
    #: what is not damage but should be fixed (a repository others can read)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(asdict(self), ok=not self.problems)


def check(repo, read_data: bool = False, progress=None) -> CheckReport:
    rep = CheckReport()
    exposed = modes.exposure(repo.root)
    if exposed:
        rep.warnings.append(exposed)
    with repo.read_txn() as txn:
        records: dict[bytes, set[tuple[bytes, int]]] = {}
        known = repo.committed_packs(txn)
        for pack_id in sorted(known):
            rep.packs += 1
            path = pack_path(repo.root, pack_id)
            if not os.path.exists(path):
                rep.problems.append(f"pack {pack_id.hex()} is missing")
                continue
            for offset, bid, _codec, _raw, _slen, ok in iter_records(path):
                if not ok:
                    rep.problems.append(f"pack {pack_id.hex()}: record at {offset} "
                                        f"(block {bid.hex()[:16]}) fails its checksum")
                records.setdefault(bid, set()).add((pack_id, offset))
        for bid, loc in txn.cursor(db=repo.dbs[DB_BLOCKS]):
            rep.blocks += 1
            pack_id, offset = bytes(loc[:16]), int.from_bytes(loc[16:24], "little")
            if (pack_id, offset) not in records.get(bytes(bid), ()):
                rep.problems.append(f"block {bytes(bid).hex()[:16]} is indexed at "
                                    f"{pack_id.hex()}:{offset}, where no such record is")
                continue
            if read_data:
                try:
                    data = repo._read_block(txn, bytes(bid))
                except Exception as e:  # noqa: BLE001 - reported, the check goes on
                    rep.problems.append(str(e))
                    continue
                if block_id(repo.block_key, data) != bid:
                    rep.problems.append(f"block {bytes(bid).hex()[:16]} does not match its id")
        blocks_db = repo.dbs[DB_BLOCKS]
        for _key, bid in txn.cursor(db=repo.dbs[DB_BLOCKVERS]):
            rep.block_versions += 1
            if bid != HOLE_ID and txn.get(bytes(bid), db=blocks_db) is None:
                rep.problems.append(f"a block version names block {bytes(bid).hex()[:16]}, "
                                    f"which is not indexed")
    top = os.path.join(repo.root, "packs")
    for sub in os.listdir(top):
        for name in os.listdir(os.path.join(top, sub)):
            try:
                if bytes.fromhex(name.removesuffix(".pack")) not in known:
                    rep.leftover_packs += 1
            except ValueError:
                continue
    return rep
