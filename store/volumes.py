"""Volumes: named protected trees (or images), each with its own timeline.

A volume has a small integer id (used in every index key), a unique name, the source
path it was captured from, its block size and its horizon (the instant of its newest
commit: every view at or before the horizon is final).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from .errors import UnknownVolume
from .format import DB_META, DB_VOLNAMES, DB_VOLUMES, vol_key


@dataclass
class Volume:
    id: int
    name: str
    source: str
    block_size: int
    created_ns: int
    horizon: int = 0
    next_file_id: int = 1
    kind: str = "tree"

    def source_path(self, path: bytes) -> bytes:
        """The original absolute path of ``path`` inside the volume (``b""``: the root)."""
        src = os.fsencode(self.source)
        return os.path.join(src, path) if path else src

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, buf: bytes) -> Volume:
        return cls(**json.loads(bytes(buf)))


def list_volumes(repo, txn) -> list[Volume]:
    cur = txn.cursor(db=repo.dbs[DB_VOLUMES])
    return [Volume.decode(v) for _, v in cur]


def get_volume(repo, txn, name: str) -> Volume:
    vid = txn.get(name.encode(), db=repo.dbs[DB_VOLNAMES])
    if vid is None:
        raise UnknownVolume(f"no volume named '{name}'; 'anytime volumes' lists them")
    return Volume.decode(txn.get(bytes(vid), db=repo.dbs[DB_VOLUMES]))


def get_volume_by_id(repo, txn, vid: int) -> Volume:
    return Volume.decode(txn.get(vol_key(vid), db=repo.dbs[DB_VOLUMES]))


def find_by_source(repo, txn, path: str) -> Volume | None:
    """The volume whose source is ``path`` or its nearest ancestor."""
    best = None
    for v in list_volumes(repo, txn):
        src = v.source.rstrip("/") or "/"
        if path == src or path.startswith(src.rstrip("/") + "/"):
            if best is None or len(src) > len(best.source):
                best = v
    return best


def put_volume(repo, txn, vol: Volume) -> None:
    txn.put(vol_key(vol.id), vol.encode(), db=repo.dbs[DB_VOLUMES])
    txn.put(vol.name.encode(), vol_key(vol.id), db=repo.dbs[DB_VOLNAMES])


def create_volume(repo, txn, name: str, source: str, block_size: int, created_ns: int,
                  kind: str = "tree") -> Volume:
    """Create a volume inside a write transaction; ``name`` must be unused."""
    meta = repo.dbs[DB_META]
    nxt = txn.get(b"next_volume_id", db=meta)
    vid = int(nxt) if nxt else 1
    txn.put(b"next_volume_id", str(vid + 1).encode(), db=meta)
    vol = Volume(vid, name, source, block_size, created_ns, kind=kind)
    put_volume(repo, txn, vol)
    return vol


def unique_name(repo, txn, base: str) -> str:
    name, n = base or "root", 1
    while txn.get(name.encode(), db=repo.dbs[DB_VOLNAMES]) is not None:
        n += 1
        name = f"{base}-{n}"
    return name
