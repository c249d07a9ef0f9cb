"""Volumes: named protected trees (or images), each with its own timeline.

A volume has a small integer id (used in every index key), a unique name, the source
path it was captured from, its block size and its horizon (the instant of its newest
commit: every view at or before the horizon is final).
"""

from __future__ import annotations

import json
import os

from .errors import AnytimeError, UnknownVolume
from .format import DB_META, DB_VOLNAMES, DB_VOLUMES, Record, vol_key


class Volume(Record):
    """A volume's record (plain class, not a dataclass: see format.Entry)."""

    FIELDS = ("id", "name", "source", "block_size", "created_ns", "horizon",
              "next_file_id", "kind")
    __slots__ = FIELDS
    __hash__ = None

    def __init__(self, id: int, name: str, source: str, block_size: int, created_ns: int,
                 horizon: int = 0, next_file_id: int = 1, kind: str = "tree"):
        self.id = id
        self.name = name
        self.source = source
        self.block_size = block_size
        self.created_ns = created_ns
        self.horizon = horizon
        self.next_file_id = next_file_id
        self.kind = kind

    def as_dict(self) -> dict:
        return {n: getattr(self, n) for n in self.FIELDS}

    def source_path(self, path: bytes) -> bytes:
        """The original absolute path of ``path`` inside the volume (``b""``: the root)."""
        src = os.fsencode(self.source)
        return os.path.join(src, path) if path else src

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

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


def volume_for_source(repo, source: str, name: str | None, now_ns: int) -> Volume:
    """The volume that protects ``source`` (named ``name`` if given), created with the
    repository's block size if there is none yet; in one write transaction. Call it
    under the writer lock. A ``name`` already protecting another source is an error."""
    with repo.write_txn("recording the volume") as txn:
        if name:
            try:
                vol = get_volume(repo, txn, name)
            except UnknownVolume:
                return create_volume(repo, txn, name, source, repo.block_size, now_ns)
            if os.path.realpath(vol.source) != os.path.realpath(source):
                raise AnytimeError(f"volume '{name}' protects {vol.source}, not {source}; "
                                   f"choose another --name")
            return vol
        for vol in list_volumes(repo, txn):
            if vol.source == source:
                return vol
        base = os.path.basename(source.rstrip("/")) or "root"
        return create_volume(repo, txn, unique_name(repo, txn, base), source,
                             repo.block_size, now_ns)
