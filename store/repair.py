"""Rebuilding the index from the packs alone (``anytime check --repair``).

The packs hold every chunk and, as history records (store/history.py), every index
record of every commit, every label change and every dictionary. A rebuild walks every
pack once, then writes a new index from what it found:

- chunks: the ``blocks`` database (a chunk stored twice: the copy whose record checks
  out and that no damage record names);
- dictionaries: ``meta``;
- per volume, its commits in time order, each only when its commit record and all its
  batches were found: their records, the commit record, and the volume record as the
  last one left it. A commit that lost a batch (a torn or missing pack) ends the
  volume's history there: later commits were recorded against it (unchanged blocks
  are not recorded again), so they cannot be shown right without it; the rebuild
  reports them as lost. Batches without a commit record are a commit that never
  reached its commit point: ignored, as the old index ignored them;
- labels: set and removed in the order they were (commit labels at their commit);
- retention policies and holds (store/policies.py): set, added and released in the
  order they were;
- ``packs``: every pack found, so none is taken for a leftover and deleted.

The old index, if any, is kept beside the new one (``index.old-<instant>``), so the
rebuild loses nothing even if it is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

from . import clock, damage, history, modes
from .format import (
    BLOCK_LOC,
    DB_BLOCKS,
    DB_COMMITS,
    DB_LABELS,
    DB_META,
    DB_PACKS,
    HIST_BATCH,
    HIST_COMMIT,
    HIST_DBS,
    HIST_LABEL,
    HIST_PRUNE,
    HIST_SETTING,
    HIST_ZDICT,
    PACK_HEADER,
    PACK_INFO,
    RECORD_HEADER,
    RECORD_MAGIC,
    U32,
    U64,
    ZDICT_CURRENT,
    commit_key,
    label_key,
    zdict_key,
)
from .packs import walk_records
from .volumes import Volume, put_volume

#: Records per LMDB write transaction of the rebuild.
PUT_BATCH = 10_000


@dataclass
class RebuildReport:
    """What a rebuild found and wrote."""

    packs: int = 0
    chunks: int = 0
    commits: int = 0
    labels: int = 0
    settings: int = 0  # retention policies and holds
    volumes: int = 0
    old_index: str | None = None  # where the index that was there before is kept
    #: history lost, one line each (torn or missing packs); empty: nothing lost
    lost: list[str] = field(default_factory=list)
    #: records whose checksum failed or that did not decode (skipped)
    bad_records: list[str] = field(default_factory=list)
    torn_packs: list[str] = field(default_factory=list)


def move_index_aside(root: str) -> str | None:
    """Rename ``root``/index to ``index.old-<now>`` (if there is one) and make a new,
    empty index directory; returns the old one's new path."""
    index = os.path.join(root, "index")
    old = None
    if os.path.lexists(index):
        old = os.path.join(root, f"index.old-{clock.now_ns()}")
        os.rename(index, old)
    modes.private_dir(index)
    return old


def repair(root: str, options=None, packs=None) -> RebuildReport:
    """Rebuild the index of the repository at ``root`` from its packs, under the writer
    lock; the index that was there, if any, is kept aside (``RebuildReport.old_index``)."""
    from .options import DEFAULT_OPTIONS
    from .repo import Repository, hold_writer_lock

    if not os.path.exists(os.path.join(root, "config")):
        Repository.open(root, options or DEFAULT_OPTIONS, packs)  # raises what is wrong
    with hold_writer_lock(root):
        old = move_index_aside(root)
        try:
            repo = Repository.open(root, options or DEFAULT_OPTIONS, packs, new_index=True)
        except BaseException:  # the config is refused: put the index back as it was
            shutil.rmtree(os.path.join(root, "index"), ignore_errors=True)
            if old:
                os.rename(old, os.path.join(root, "index"))
            raise
        try:
            rep = rebuild(repo)
        finally:
            repo.close()
    rep.old_index = old
    return rep


def rebuild(repo) -> RebuildReport:
    """Fill ``repo``'s index, new and empty, from its packs. The caller holds the
    writer lock and opened ``repo`` on a new index (``Repository.open(new_index=True)``)."""
    rep = RebuildReport()
    store = repo.pack_store
    bad_copies = damage.load(repo.root)
    chunks: dict[bytes, tuple] = {}  # chunk id -> (pack, offset, stored, raw, codec)
    batches: dict[tuple, dict[int, tuple]] = {}  # (vol, t, nonce) -> part -> where
    commits: dict[tuple[int, int], list[dict]] = {}  # generations of each commit
    dropped: set[tuple[int, int]] = set()  # commits a prune removed (its tombstones)
    labels: list[tuple[int, int, str, int | None]] = []  # (at, vol, name, instant)
    settings: list[tuple[int, int, dict]] = []  # (at, vol, change)
    zdicts: dict[int, bytes] = {}
    packs: dict[bytes, tuple[int, int, int]] = {}
    for pack_id in sorted(store.list()):
        size = store.size(pack_id)
        n, end, held = 0, PACK_HEADER.size, []  # the commits whose records it holds
        for magic, off, rid, codec, raw, slen, ok, data in walk_records(store, pack_id,
                                                                        payload=True):
            n += 1
            end = off + RECORD_HEADER.size + slen
            where = (pack_id, off, slen, raw, codec)
            if magic == RECORD_MAGIC:
                good = ok and (pack_id, off) not in bad_copies.get(rid, ())
                known = chunks.get(rid)
                if known is None or (good and not known[5]):
                    chunks[rid] = (*where, good)  # the first good copy, or the first
                continue
            if not ok:
                rep.bad_records.append(f"pack {pack_id.hex()} offset {off}: a history "
                                       f"record fails its checksum")
                continue
            kind, vol, t, part, nonce = history.split_history_id(rid)
            try:
                if kind == HIST_BATCH:
                    batches.setdefault((vol, t, nonce), {})[part] = where
                elif kind == HIST_COMMIT:
                    got = history.decode_json(history.decode_payload(codec, raw, data))
                    got["nonce"] = nonce
                    commits.setdefault((vol, t), []).append(got)
                    held.append((vol, t))
                elif kind == HIST_PRUNE:
                    got = history.decode_json(history.decode_payload(codec, raw, data))
                    dropped.update((vol, int(u)) for u in got["dropped"])
                elif kind == HIST_LABEL:
                    got = history.decode_json(history.decode_payload(codec, raw, data))
                    labels.append((t, vol, got["label"], got["instant"]))
                elif kind == HIST_SETTING:
                    got = history.decode_json(history.decode_payload(codec, raw, data))
                    settings.append((t, vol, got))
                elif kind == HIST_ZDICT:
                    zdicts[part] = history.decode_payload(codec, raw, data)
            except (ValueError, KeyError) as e:
                rep.bad_records.append(f"pack {pack_id.hex()} offset {off}: a history "
                                       f"record does not decode ({e})")
        if end < size:
            rep.torn_packs.append(f"pack {pack_id.hex()} ends in a torn record at offset "
                                  f"{end} of {size}")
        packs[pack_id] = (size, n, held)
    rep.packs = len(packs)
    _put_chunks(repo, chunks)
    rep.chunks = len(chunks)
    for key in dropped:
        commits.pop(key, None)
    # a pack's commit instant: the newest commit it holds a record of, that is still one
    packs = {pid: (size, n, max((t for key in held if key in commits for t in key[1:]),
                                default=0))
             for pid, (size, n, held) in packs.items()}
    gens = commits
    commits = {(v, t): _generation(v, t, cands, batches) for (v, t), cands in gens.items()}
    _put_zdicts(repo, zdicts, commits)
    vols = _replay_commits(repo, rep, commits, batches, labels)
    if rep.torn_packs:  # records of commits whose commit record may have been torn off
        done = {(v, t, c["nonce"]) for (v, t), cands in gens.items() for c in cands}
        for vid, t, _nonce in sorted(set(batches) - done):
            rep.lost.append(f"volume {vid}: records of a commit at {t} were found without "
                            f"its commit record, and a pack is torn (see the warnings): "
                            f"if that commit had been made, it is not in the rebuilt index")
    _put_labels(repo, rep, labels, vols)
    _put_settings(repo, rep, settings, vols)
    with repo.write_txn("rebuilding the index") as txn:
        for pack_id, info in packs.items():
            txn.put(pack_id, PACK_INFO.pack(*info), db=repo.dbs[DB_PACKS])
        for vol in vols.values():
            put_volume(repo, txn, vol)
        if vols:
            txn.put(b"next_volume_id", str(max(vols) + 1).encode(), db=repo.dbs[DB_META])
    rep.volumes = len(vols)
    return rep


def _generation(vid: int, t: int, cands: list[dict], batches: dict) -> dict:
    """The generation of commit (``vid``, ``t``) to rebuild: the newest (a prune writes a
    changed commit's records again, with ``rewritten_ns``) whose batches are all there,
    else the newest (which the replay then reports as incomplete)."""
    cands = sorted(cands, key=lambda c: c["commit"].get("rewritten_ns", 0), reverse=True)
    for c in cands:
        if set(batches.get((vid, t, c["nonce"]), {})) == set(range(c["batches"])):
            return c
    return cands[0]


def _put_chunks(repo, chunks: dict) -> None:
    items = sorted(chunks.items())
    for i in range(0, len(items), PUT_BATCH):
        with repo.write_txn("rebuilding the index") as txn:
            cur = txn.cursor(db=repo.dbs[DB_BLOCKS])
            cur.putmulti([(cid, BLOCK_LOC.pack(*where[:5])) for cid, where in
                          items[i:i + PUT_BATCH]], append=True)


def _put_zdicts(repo, zdicts: dict, commits: dict) -> None:
    if not zdicts:
        return
    named = [c["zdict"] for _, c in sorted(commits.items(), key=lambda kv: kv[0][1])
             if c.get("zdict") in zdicts]
    current = named[-1] if named else max(zdicts)
    with repo.write_txn("rebuilding the index") as txn:
        for dict_id, packed in zdicts.items():
            txn.put(zdict_key(dict_id), packed, db=repo.dbs[DB_META])
        txn.put(ZDICT_CURRENT, U32.pack(current), db=repo.dbs[DB_META])


def _replay_commits(repo, rep: RebuildReport, commits: dict, batches: dict,
                    labels: list) -> dict[int, Volume]:
    """Put each volume's complete commits, oldest first, up to the first incomplete one;
    returns the volumes as their last commit left them. Commit labels join ``labels``."""
    vols: dict[int, Volume] = {}
    by_code = {code: repo.dbs[name] for code, name in HIST_DBS.items()}
    for vid in sorted({v for v, _ in commits}):
        for t in sorted(t for v, t in commits if v == vid):
            c = commits[(vid, t)]
            parts = batches.get((vid, t, c["nonce"]), {})
            if set(parts) != set(range(c["batches"])):
                later = sum(1 for v, u in commits if v == vid and u > t)
                rep.lost.append(
                    f"volume {c['volume']['name']}: the commit of {t} lost "
                    f"{c['batches'] - len(set(parts) & set(range(c['batches'])))} of its "
                    f"{c['batches']} record batches (a torn or missing pack); it and the "
                    f"{later} later commit{'s' if later != 1 else ''} of the volume are "
                    f"not in the rebuilt index")
                break
            try:
                got = [_read_batch(repo, parts[part]) for part in range(c["batches"])]
            except ValueError as e:
                rep.lost.append(f"volume {c['volume']['name']}: a record batch of the "
                                f"commit of {t} does not decode ({e}); it and the later "
                                f"commits of the volume are not in the rebuilt index")
                break
            for items in got:
                for i in range(0, len(items), PUT_BATCH):
                    with repo.write_txn("rebuilding the index") as txn:
                        for code, key, val in items[i:i + PUT_BATCH]:
                            txn.put(key, val, db=by_code[code])
            with repo.write_txn("rebuilding the index") as txn:
                txn.put(commit_key(vid, t), json.dumps(c["commit"], sort_keys=True).encode(),
                        db=repo.dbs[DB_COMMITS])
            if c.get("label"):
                labels.append((t, vid, c["label"], t))
            vols[vid] = Volume(**c["volume"])
            rep.commits += 1
    return vols


def _read_batch(repo, where: tuple) -> list[tuple[int, bytes, bytes]]:
    pack_id, off, slen, raw, codec = where
    buf = repo.pack_store.read(pack_id, off + RECORD_HEADER.size, slen)
    if len(buf) != slen:
        raise ValueError("it is cut short")
    return history.decode_batch(history.decode_payload(codec, raw, buf))


def _put_settings(repo, rep: RebuildReport, settings: list, vols: dict) -> None:
    """Replay policy and hold changes in the order they were made."""
    from .errors import AnytimeError
    from .policies import Replay

    replay = Replay()
    for at, vid, change in sorted(settings, key=lambda x: x[0]):
        try:
            replay.apply(vid, change)
        except (AnytimeError, KeyError, TypeError) as e:
            rep.bad_records.append(f"volume {vid}: a setting change made at {at} does not "
                                   f"decode ({e}); it is left out")
    records = replay.records(vols)
    with repo.write_txn("rebuilding the index") as txn:
        for key, val in records:
            txn.put(key, val, db=repo.dbs[DB_META])
    rep.settings = len(records)


def _put_labels(repo, rep: RebuildReport, labels: list, vols: dict) -> None:
    """Apply label changes in the order they happened (a label may name any instant,
    past its volume's horizon too, as ``mark`` allows)."""
    state: dict[tuple[int, str], int | None] = {}
    for _at, vid, name, instant in sorted(labels, key=lambda x: (x[0], x[1])):
        state[(vid, name)] = instant
    with repo.write_txn("rebuilding the index") as txn:
        for (vid, name), instant in sorted(state.items()):
            if instant is None or vid not in vols:
                continue
            txn.put(label_key(vid, name.encode()), U64.pack(instant), db=repo.dbs[DB_LABELS])
            rep.labels += 1
