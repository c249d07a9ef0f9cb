"""Prune: thin volumes' histories (store/thinning.py) and reclaim what no kept view uses.

A prune runs under the writer lock, in two parts:

1. **Thinning**, per volume with something to drop. Its plan is put in ``meta`` first
   (``prune/<volume>``, the *prune marker*), so a prune that was killed is finished, with
   the same plan, by the next one before anything else. Then one walk over the volume's
   path and block versions deletes the versions no kept view needs and moves the others
   to their targets, in transactions of ``stage_records`` changes (``StoreOptions``, as a
   commit's staged transactions): every kept view reads the same
   after each of them, so readers (mounts, restores) go on meanwhile. The records of the
   changed commits are gathered (a sorted spill, store/spill.py) and written to a pack
   as new generations, then a *tombstone* history record naming the dropped commits;
   once that pack is synced, one transaction deletes the dropped commits' records, puts
   the changed ones, lists the pack and removes the marker: the prune's commit point
   for that volume.
2. **Collecting garbage.** A chunk no block version references any more is garbage
   (also chunks indexed early by a snapshot that never committed). A pack whose garbage
   is at least ``REWRITE_RATIO`` of it (or that holds any, with ``everything``, as after a
   ``--max-age`` drop: the data must be gone) is rewritten: its live chunk records and
   live history records are copied to new packs, which are synced; one transaction
   points ``blocks`` at the copies, deletes the garbage chunks and the old packs'
   ``packs`` records; then the old pack files are deleted. A pack wholly garbage is only
   deleted. A crash leaves unlisted packs, which the next writer deletes (leftovers).

A reader that read a chunk's location just before its pack was rewritten finds the pack
gone or different: :meth:`Repository.read_block` then looks the chunk up again and reads
the copy, and records no damage.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from . import clock, history, timeline
from .errors import AnytimeError
from .format import (
    BLOCK_LOC,
    DB_BLOCKS,
    DB_BLOCKVERS,
    DB_COMMITS,
    DB_DIRS,
    DB_ENTRIES,
    DB_META,
    DB_PACKS,
    DIR_HASH_LEN,
    ENTRY_FIXED,
    HIST_BATCH,
    HIST_BLOCKVERS,
    HIST_COMMIT,
    HIST_DIRS,
    HIST_ENTRIES,
    HISTORY_MAGIC,
    HOLE_ID,
    KIND_DELETED,
    KIND_DIR,
    KIND_FILE,
    OPEN_PACK_PREFIX,
    PACK_ID_LEN,
    PACK_INFO,
    RECORD_HEADER,
    RECORD_MAGIC,
    U64,
    commit_key,
    join_path,
    ref_chunk_ids,
    split_commit_key,
    vol_key,
)
from .packs import PackWriter, walk_records
from .spill import SortedSpill
from .thinning import FOREVER, VolumePlan, decide_one
from .volumes import get_volume_by_id

#: Garbage chunks deleted from ``blocks`` per LMDB write transaction.
OPS_PER_TXN = 20_000
#: A pack is rewritten when at least this share of its bytes is garbage.
REWRITE_RATIO = 0.2
#: Path versions a dry run lists (``PruneReport.gone``); it counts them all.
LISTED = 1000
#: Live chunks copied per group of rewritten packs (one index transaction each).
REWRITE_GROUP = 8_000
#: ``meta`` key of the packs a garbage collection is rewriting (pack ids end to end).
GC_KEY = b"gc/rewrite"
#: ``meta`` key prefix (+ pack id) of the garbage bytes a pack holds that the index no
#: longer shows (u64 BE): a pack left with less than ``REWRITE_RATIO`` garbage is
#: rewritten once later collections bring it there.
GC_DEAD_PREFIX = b"gc/dead/"
PRUNE_PREFIX = b"prune/"
_KEY = struct.Struct(">QB")  # a generation spill key: owner commit instant, db code
_LIFE = struct.Struct(">QI")  # a file version's life: until, the class of its path
_BLOCKVER_PREFIX = struct.Struct(">IQQ")  # volume, file id, block number


def prune_key(vol: int) -> bytes:
    return PRUNE_PREFIX + vol_key(vol)


@dataclass
class PruneReport:
    """What a prune did (or, dry, would do)."""

    dry_run: bool = False
    commits_dropped: int = 0
    commits_coarsened: int = 0
    versions_deleted: int = 0
    versions_moved: int = 0
    chunks_deleted: int = 0
    bytes_freed: int = 0  # pack bytes no longer taken (stored, compressed)
    packs_rewritten: int = 0
    packs_deleted: int = 0
    history_dropped: int = 0  # dead history records removed from packs
    volumes: dict[str, dict] = field(default_factory=dict)
    #: dry: the first ``LISTED`` path versions that would go (not of directories, not
    #: deletions), as
    #: (volume id, path, instant); the volume's name replaces its id in apply_policies
    gone: list[tuple] = field(default_factory=list)

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["gone"] = [{"volume": v, "path": os.fsdecode(p), "instant": t}
                       for v, p, t in self.gone]
        return out


# --- planning input --------------------------------------------------------------------
def commits_of(repo, txn, vol: int) -> list[tuple[int, dict]]:
    """Every commit of volume ``vol``, oldest first: (instant, record)."""
    return list(timeline.commits(repo, txn, vol))


def make_plan(vol: int, commits: list[tuple[int, int | None]], keep: dict[int, bool]
              ) -> VolumePlan:
    """The plan that keeps the commits in ``keep`` (instant -> whole: a timed commit kept
    continuous) and drops the others; the newest commit is kept whatever ``keep`` says."""
    if not commits:
        return VolumePlan(vol, 0, [], [])
    horizon = commits[-1][0]
    keep = dict(keep)
    keep.setdefault(horizon, True)
    plan = VolumePlan(vol, horizon, [], [])
    prev = 0
    for t, interior in commits:
        plan.previous[t] = prev
        prev = t
        if t not in keep:
            plan.dropped.append(t)
            continue
        plan.kept.append(t)
        if interior is not None:
            if keep[t]:
                plan.whole[t] = interior
            else:
                plan.coarsened.append(t)
    return plan


# --- thinning --------------------------------------------------------------------------
def start(repo, plan: VolumePlan) -> None:
    """Put the prune marker of ``plan`` (the caller holds the writer lock)."""
    with repo.write_txn("starting a prune") as txn:
        txn.put(prune_key(plan.vol), json.dumps(plan.to_json()).encode(), db=repo.dbs[DB_META])


def unfinished(repo) -> list[VolumePlan]:
    """Plans of prunes that were interrupted (their markers), to be finished first."""
    with repo.read_txn() as txn:
        return unfinished_in(repo, txn)


def unfinished_in(repo, txn) -> list[VolumePlan]:
    out = []
    cur = txn.cursor(db=repo.dbs[DB_META])
    if cur.set_range(PRUNE_PREFIX):
        for key, val in cur:
            if not bytes(key).startswith(PRUNE_PREFIX):
                break
            out.append(VolumePlan.from_json(json.loads(bytes(val))))
    return out


def thin(repo, plan: VolumePlan, rep: PruneReport, dry_run: bool = False,
         refs: set | None = None, stop=None, classes=None, resumed: bool = False) -> None:
    """Apply ``plan`` to its volume (its marker is in place unless ``dry_run``): the walk,
    the generations and the tombstone, and the commit point. With ``refs``, the chunk ids
    (8-byte prefixes, as ints) the volume's remaining block versions name are added.

    Path versions are decided first; each file version's life (file id, from, to, and
    the class of its path) goes to a spill sorted by file id, and a block version is
    needed only where a view point lies both in its own life and in the life of a path
    version naming its file: the blocks of a file deleted before every kept instant go,
    even though no later block version replaced them.

    ``classes``: per-path rules, as (plans, class_of): ``class_of(path)`` is the index in
    ``plans`` of the plan a path's versions are decided by (``plan`` itself for paths no
    rule changes: it keeps the commits any class keeps, so every target is a kept
    commit); a block version follows the plan of the path versions that name its file
    (``plan`` when paths of several classes do). ``resumed``: finishing an interrupted
    prune, whose walk may have moved or deleted versions already: every kept commit's
    records are written again, as the walk cannot tell which changed."""
    plans, class_of = classes if classes is not None else ([plan], None)
    changed: dict[int, int | None] = dict(plan.changed())
    if resumed:
        for k in plan.kept:
            changed.setdefault(k, None)
    tmp = os.path.join(repo.root, "tmp")
    lives = SortedSpill(tmp)
    try:
        ops: list[tuple[bytes, bytes, bytes | None, bytes]] = []  # (db, old key, new key, val)
        paths = _PathNames(repo, plan.vol) if class_of is not None or dry_run else None
        there = False  # whether a version kept so far shows the path (not a deletion)
        for prefix, t, val, nxt, first in _versions(repo, DB_ENTRIES, plan.vol):
            if first:
                cls = class_of(paths.of(prefix)) if class_of is not None else 0
                p, there = plans[cls], False
            to = decide_one(p, t, nxt)
            fixed = ENTRY_FIXED.unpack_from(val)
            if fixed[0] == KIND_FILE:
                lives.add(U64.pack(fixed[10]) + U64.pack(t),
                          _LIFE.pack(min(nxt, FOREVER - 1), cls))
            if to is not None and t <= plan.horizon and fixed[0] == KIND_DELETED \
                    and not there:
                to = None  # a deletion of what no kept view shows: it says nothing
            if to is not None:
                there = fixed[0] != KIND_DELETED
            elif dry_run and fixed[0] not in (KIND_DELETED, KIND_DIR) \
                    and len(rep.gone) < LISTED:
                rep.gone.append((plan.vol, paths.of(prefix), t))
            _decided(plan, rep, ops, changed, DB_ENTRIES, prefix, t, val, to, dry_run)
            if len(ops) >= repo.options.stage_records:
                _apply(repo, ops, stop)
                ops = []
        life_iter = iter(lives.items())
        pending = next(life_iter, None)
        fid_now, spans, p = -1, [], plan
        for prefix, t, val, nxt, first in _versions(repo, DB_BLOCKVERS, plan.vol):
            fid = _BLOCKVER_PREFIX.unpack(prefix)[1]
            if first and fid != fid_now:
                fid_now, spans = fid, []
                while pending is not None and U64.unpack_from(pending[0])[0] < fid:
                    pending = next(life_iter, None)
                while pending is not None and U64.unpack_from(pending[0])[0] == fid:
                    end, cls = _LIFE.unpack(pending[1])
                    spans.append((U64.unpack_from(pending[0], 8)[0], end, plans[cls]))
                    pending = next(life_iter, None)
                one = {id(sp[2]) for sp in spans}
                p = spans[0][2] if len(one) == 1 else plan
            to = decide_one(p, t, nxt)
            if to is not None and t <= plan.horizon and not _seen_in(spans, t, nxt):
                to = None  # no kept view shows a file that reads it
            _decided(plan, rep, ops, changed, DB_BLOCKVERS, prefix, t, val, to, dry_run)
            if refs is not None and to is not None:
                _add_refs(refs, val)
            if len(ops) >= repo.options.stage_records:
                _apply(repo, ops, stop)
                ops = []
        if ops:
            _apply(repo, ops, stop)
        rep.commits_dropped += len(plan.dropped)
        rep.commits_coarsened += len(plan.coarsened)
        if dry_run:
            return
        if not changed and not plan.dropped:  # nothing to write again: only the marker goes
            with repo.write_txn("ending a prune") as txn:
                txn.delete(prune_key(plan.vol), db=repo.dbs[DB_META])
            return
        gens = _generations(repo, plan, changed)
        try:
            _commit(repo, plan, changed, gens)
        finally:
            gens.close()
    finally:
        lives.close()


def _generations(repo, plan: VolumePlan, changed: dict) -> SortedSpill:
    """The records of the changed commits, as the index holds them once thinned, sorted
    by (commit, database, key): a second walk, read-only."""
    spill = SortedSpill(os.path.join(repo.root, "tmp"))
    if not changed:
        return spill
    for db, code in ((DB_ENTRIES, HIST_ENTRIES), (DB_BLOCKVERS, HIST_BLOCKVERS)):
        for prefix, t, val, _nxt, _first in _versions(repo, db, plan.vol):
            if t <= plan.horizon:
                owner = plan.owner(t)
                if owner in changed:
                    spill.add(_KEY.pack(owner, code) + prefix + U64.pack(t), val)
    return spill


class _PathNames:
    """The path of an ``entries`` key prefix (volume, directory hash, name, 00), from the
    directory's ``dirs`` record (read once per directory)."""

    def __init__(self, repo, vol: int):
        self.repo, self.vol = repo, vol
        self._dh, self._dir = None, b""

    def of(self, prefix: bytes) -> bytes:
        dh = prefix[4:4 + DIR_HASH_LEN]
        if dh != self._dh:
            with self.repo.read_txn() as txn:
                got = txn.get(prefix[:4 + DIR_HASH_LEN], db=self.repo.dbs[DB_DIRS])
            self._dh, self._dir = dh, bytes(got) if got is not None else b""
        return join_path(self._dir, prefix[4 + DIR_HASH_LEN:-1])


def _seen_in(spans: list[tuple[int, int, VolumePlan]], t: int, end: int) -> bool:
    """True if, in one of the file's ``spans`` (from, to, the plan of its path), a view
    point of that plan lies in [t, end) and in the span."""
    for s, e, p in spans:
        lo, hi = max(t, s), min(end, e)
        if lo < hi:
            v = p.target(lo)
            if v is not None and v < hi:
                return True
    return False


def _decided(plan, rep, ops, changed, db, prefix, t, val, to, dry_run) -> None:
    """Count and queue what :func:`decide` said of one version (``to`` None: deleted),
    and note its commit as changed when a kept commit's records change by it."""
    if to == t:
        return
    if t <= plan.horizon:  # the commit that held it, and the one it moves to, change
        changed.setdefault(plan.owner(t), None)
        if to is not None:
            changed.setdefault(plan.owner(to), None)
    if to is None:
        rep.versions_deleted += 1
        if not dry_run:
            ops.append((db, prefix + U64.pack(t), None, val))
        return
    rep.versions_moved += 1
    if not dry_run:
        ops.append((db, prefix + U64.pack(t), prefix + U64.pack(to), val))


def _versions(repo, db: bytes, vol: int):
    """Each version of ``vol``'s versioned keys in ``db``, in key order, as (key prefix,
    instant, value, the instant of the key's next version (FOREVER: none), whether it
    is the key's first version).

    Read ``stage_records`` versions at a time, each batch in a read transaction of its
    own that ends before they are yielded: a transaction held for the whole walk would
    keep LMDB from reusing the pages the walk's own writes free (the index grew by a
    third during a prune of 10^6 versions), and memory stays bounded however many
    versions one key has (a database page the shim recorded 10^6 times). The walk's
    writes never reach what is still to be read: a version is deleted, or moved to its
    target, which lies before its next version, read already. Versions that captures
    add meanwhile are after the plan's horizon, which :func:`decide` leaves alone."""
    prefix = vol_key(vol)
    per = repo.options.stage_records
    start, held = prefix, None  # held: the last version read, waiting for its next
    while start is not None:
        batch = []
        with repo.read_txn() as txn:
            cur = txn.cursor(db=repo.dbs[db])
            start = None
            if cur.set_range(held[4] + b"\0" if held else prefix):
                for key, val in cur:
                    if not key.startswith(prefix):
                        break
                    p, t = bytes(key[:-8]), U64.unpack(key[-8:])[0]
                    if held is not None:
                        same = held[0] == p
                        batch.append((held[0], held[1], held[2], t if same else FOREVER,
                                      held[3]))
                        held = (p, t, bytes(val), not same, bytes(key))
                    else:
                        held = (p, t, bytes(val), True, bytes(key))
                    if len(batch) >= per:
                        start = held[4]
                        break
            repo.map_trimmer.touched(len(batch) + 1)  # the pages it mapped, unmapped
        yield from batch
    if held is not None:
        yield held[0], held[1], held[2], FOREVER, held[3]


def _apply(repo, ops, stop=None) -> None:
    if stop is not None and stop.is_set():
        raise PruneStopped("the prune stopped before its end (the capture is stopping); "
                           "the next prune finishes it")
    with repo.write_txn("thinning history") as txn:
        for db, old, new, val in ops:
            handle = repo.dbs[db]
            if new is not None:
                txn.put(new, val, db=handle)
            txn.delete(old, db=handle)


def _add_refs(refs: set, ref: bytes) -> None:
    for cid in ref_chunk_ids(ref):
        if cid != HOLE_ID:
            refs.add(int.from_bytes(cid[:8], "big"))


def _commit(repo, plan: VolumePlan, changed: dict[int, int], spill) -> None:
    """Write the changed commits' generations and the tombstone to a pack, sync it, then
    the one transaction that ends the volume's prune."""
    vid = plan.vol
    now = clock.now_ns()
    with repo.read_txn() as txn:
        vol = get_volume_by_id(repo, txn, vid)
        records = {t: rec for t, rec in commits_of(repo, txn, vid)}
        dirs_db = repo.dbs[DB_DIRS]
        packw = PackWriter(repo.pack_store, repo.pack_target)
        new_records: dict[int, dict] = {}
        items = iter(spill.items()) if spill is not None else iter(())
        pending = next(items, None)
        per = repo.options.stage_records
        for k in sorted(changed):
            nonce = os.urandom(8)
            part, batch, dirs_seen = 0, [], set()
            while pending is not None and _KEY.unpack_from(pending[0])[0] == k:
                skey, val = pending
                code = _KEY.unpack_from(skey)[1]
                key = skey[_KEY.size:]
                if code == HIST_ENTRIES:  # its directory's record too (a rebuild needs it)
                    dkey = key[:4 + 16]
                    if dkey not in dirs_seen:
                        dirs_seen.add(dkey)
                        path = txn.get(dkey, db=dirs_db)
                        if path is not None:
                            batch.append((HIST_DIRS, dkey, bytes(path)))
                batch.append((code, key, val))
                if len(batch) >= per:
                    history.append_batch(packw, vid, k, nonce, part, batch)
                    part, batch = part + 1, []
                pending = next(items, None)
            if batch:
                history.append_batch(packw, vid, k, nonce, part, batch)
                part += 1
            rec = dict(records.get(k, {"kind": "scan"}))
            rec["nonce"] = nonce.hex()
            rec["rewritten_ns"] = now
            if changed[k] is not None:
                rec["thinned_from"] = min(changed[k], int(rec.get("thinned_from", changed[k])))
            if k in plan.coarsened:
                rec.pop("timed", None)
                rec.pop("timed_from", None)
            elif k in plan.whole:
                rec["timed_from"] = plan.whole[k]
            new_records[k] = rec
            history.append_commit(packw, vid, k, nonce, rec, vol.as_dict(), part,
                                  rec.get("label"), None)
        history.append_prune(packw, vid, now, plan.dropped)
        packs = packw.sync()
    gone = set(plan.dropped)
    with repo.write_txn("ending a prune") as txn:
        for pack_id, size, nrec in packs:  # listed as packs of no commit (I7)
            txn.put(pack_id, PACK_INFO.pack(size, nrec, 0), db=repo.dbs[DB_PACKS])
        orphans = [(bytes(k), PACK_INFO.unpack(v)) for k, v in txn.cursor(db=repo.dbs[DB_PACKS])
                   if PACK_INFO.unpack(v)[2] in gone]  # packs of the dropped commits
        for pack_id, (size, nrec, _t) in orphans:
            txn.put(pack_id, PACK_INFO.pack(size, nrec, 0), db=repo.dbs[DB_PACKS])
        for t in plan.dropped:
            txn.delete(commit_key(vid, t), db=repo.dbs[DB_COMMITS])
        for k, rec in new_records.items():
            txn.put(commit_key(vid, k), json.dumps(rec, sort_keys=True).encode(),
                    db=repo.dbs[DB_COMMITS])
        txn.delete(prune_key(vid), db=repo.dbs[DB_META])
    packw.committed()


# --- garbage ----------------------------------------------------------------------------
def referenced(repo, skip: Iterable[int] = ()) -> set[int]:
    """The chunk ids (8-byte prefixes, as ints: two ids sharing one only keep garbage,
    never lose data) every block version of every volume but ``skip`` names."""
    refs: set[int] = set()
    skip = {vol_key(v) for v in skip}
    trim = repo.map_trimmer.touched
    with repo.read_txn() as txn:
        for key, val in txn.cursor(db=repo.dbs[DB_BLOCKVERS]):
            trim()
            if bytes(key[:4]) not in skip:
                _add_refs(refs, bytes(val))
    return refs


def live_commits(repo, txn=None) -> dict[tuple[int, int], str | None]:
    """(volume, instant) -> the nonce (hex) of the generation the index holds (None:
    a commit made before nonces were recorded: any generation is live); in ``txn``, or
    a read transaction of its own. A record that does not decode is left out (check's
    I23 reports it)."""
    if txn is None:
        with repo.read_txn() as own:
            return live_commits(repo, own)
    out = {}
    for key, val in txn.cursor(db=repo.dbs[DB_COMMITS]):
        try:
            out[split_commit_key(bytes(key))] = json.loads(bytes(val)).get("nonce")
        except (ValueError, AttributeError):
            continue
    return out


def collect(repo, refs: set[int], rep: PruneReport, everything: bool = False,
            dry_run: bool = False) -> None:
    """Delete garbage chunks and rewrite or delete the packs that hold them (see the
    module docstring); ``refs``: what :func:`referenced` returns for the index as it is
    (or will be, dry).

    Memory stays small whatever the number of garbage chunks: the first walk keeps only
    bytes per pack; the garbage chunks' records are then deleted in key order, a batch
    per transaction (so each transaction dirties few pages), after the packs to rewrite
    are put in ``meta`` (``GC_KEY``): a prune killed after those deletes, whose index no
    longer shows the garbage those packs hold, still rewrites them next time."""
    dead: dict[bytes, int] = {}  # pack -> bytes of its garbage chunks
    live_bytes: dict[bytes, int] = {}
    garbage = 0
    with repo.read_txn() as txn:
        sizes = {bytes(k): PACK_INFO.unpack(v)[0]
                 for k, v in txn.cursor(db=repo.dbs[DB_PACKS])}
        open_packs = set()
        cur = txn.cursor(db=repo.dbs[DB_META])
        if cur.set_range(OPEN_PACK_PREFIX):
            for key in cur.iternext(values=False):
                if not bytes(key).startswith(OPEN_PACK_PREFIX):
                    break
                open_packs.add(bytes(key[len(OPEN_PACK_PREFIX):]))
        pending = txn.get(GC_KEY, db=repo.dbs[DB_META])
        pending = _pack_ids(bytes(pending)) if pending is not None else []
        carried = {}  # pack -> garbage bytes earlier collections left in it
        if cur.set_range(GC_DEAD_PREFIX):
            for key, val in cur:
                if not bytes(key).startswith(GC_DEAD_PREFIX):
                    break
                carried[bytes(key[len(GC_DEAD_PREFIX):])] = U64.unpack(val)[0]
        trim = repo.map_trimmer.touched
        for cid, loc in txn.cursor(db=repo.dbs[DB_BLOCKS]):
            trim()
            pack_id, _off, slen, _raw, _codec = BLOCK_LOC.unpack(loc)
            n = RECORD_HEADER.size + slen
            if int.from_bytes(cid[:8], "big") in refs:
                live_bytes[pack_id] = live_bytes.get(pack_id, 0) + n
            else:
                garbage += 1
                dead[pack_id] = dead.get(pack_id, 0) + n
    rewrite = {p for p in pending if p in sizes}  # an interrupted collection's
    rep.bytes_freed += sum(n for p, n in dead.items() if p in sizes and p not in open_packs)
    for pack_id, n in carried.items():
        dead[pack_id] = dead.get(pack_id, 0) + n
    for pack_id, n in dead.items():
        if pack_id in open_packs or pack_id not in sizes:
            continue
        if everything or n >= REWRITE_RATIO * sizes[pack_id] or not live_bytes.get(pack_id):
            rewrite.add(pack_id)
    del live_bytes
    rep.chunks_deleted += garbage
    if dry_run:
        rep.packs_rewritten += len(rewrite)
        return
    if everything:  # dead history records must go too, wherever they are
        rewrite |= _packs_with_dead_history(repo, sizes, open_packs)
    rewrite = sorted(rewrite)
    # before the garbage records go: a crash in between counts some garbage twice
    # (a pack rewritten a little early), never not at all
    with repo.write_txn("planning a pack rewrite") as txn:
        meta = repo.dbs[DB_META]
        if rewrite:
            txn.put(GC_KEY, b"".join(rewrite), db=meta)
        gone = set(rewrite)
        for pack_id, n in dead.items():
            key = GC_DEAD_PREFIX + pack_id
            if pack_id in sizes and pack_id not in gone:
                txn.put(key, U64.pack(n), db=meta)
            elif pack_id in carried:
                txn.delete(key, db=meta)
    del dead, carried
    _delete_garbage(repo, refs)
    _rewrite(repo, rewrite, refs, rep)
    if rewrite or pending:
        with repo.write_txn("ending a pack rewrite") as txn:
            txn.delete(GC_KEY, db=repo.dbs[DB_META])


def _pack_ids(raw: bytes) -> list[bytes]:
    n = PACK_ID_LEN
    return [raw[i:i + n] for i in range(0, len(raw) - n + 1, n)]


def _delete_garbage(repo, refs: set[int]) -> None:
    """Delete every chunk record whose id's prefix is not in ``refs``, in key order,
    ``OPS_PER_TXN`` records visited per write transaction. Their bytes stay in the packs
    until a rewrite drops them."""
    start = b""
    while start is not None:
        with repo.write_txn("pruning chunks") as txn:
            cur = txn.cursor(db=repo.dbs[DB_BLOCKS])
            if not cur.set_range(start):
                return
            start, seen = None, 0
            repo.map_trimmer.touched(OPS_PER_TXN)
            while key := cur.key():  # empty once past the last record
                if seen >= OPS_PER_TXN:
                    start = bytes(key)
                    break
                seen += 1
                if int.from_bytes(key[:8], "big") in refs:
                    cur.next()
                else:
                    cur.delete()  # and on to the next record


def history_live(live: dict, rid: bytes) -> bool:
    """Whether history record ``rid`` belongs to a live generation of a commit that
    ``live`` ((volume, instant) -> nonce, from :func:`live_commits`) has."""
    kind, vid, t, _part, nonce = history.split_history_id(rid)
    if kind not in (HIST_BATCH, HIST_COMMIT):
        return True  # labels, dictionaries, settings, tombstones: kept
    if (vid, t) not in live:
        return False
    want = live[(vid, t)]
    return want is None or want == nonce.hex()


def _packs_with_dead_history(repo, sizes: dict, open_packs: set) -> set[bytes]:
    live = live_commits(repo)
    out = set()
    for pack_id in sizes:
        if pack_id in open_packs:
            continue
        for magic, _off, rid, *_ in walk_records(repo.pack_store, pack_id):
            if magic == HISTORY_MAGIC and not history_live(live, rid):
                out.add(pack_id)
                break
    return out


def _rewrite(repo, pack_ids: list[bytes], refs: set[int], rep: PruneReport) -> None:
    """Copy the live records of ``pack_ids`` to new packs and drop the old ones (their
    garbage chunks' records are gone already: a chunk record is live when the index
    locates it in this pack). Packs go a group at a time, each ending in one transaction
    that points the index at the copies and drops the old packs' records: a group's
    copies are at most ``REWRITE_GROUP`` chunks, so that transaction dirties few pages
    and ``moved`` stays small."""
    live = live_commits(repo)
    todo = list(pack_ids)
    while todo:
        packw = PackWriter(repo.pack_store, repo.pack_target)
        moved: dict[bytes, bytes] = {}  # chunk id -> its new BLOCK_LOC record
        group: list[bytes] = []
        with repo.read_txn() as txn:
            while todo and len(moved) < REWRITE_GROUP:
                pack_id = todo.pop(0)
                group.append(pack_id)
                for magic, off, rid, codec, raw, slen, ok, data in walk_records(
                        repo.pack_store, pack_id, payload=True):
                    if magic == RECORD_MAGIC:
                        if not ok or int.from_bytes(rid[:8], "big") not in refs:
                            continue
                        repo.map_trimmer.touched()
                        loc = txn.get(rid, db=repo.dbs[DB_BLOCKS])
                        if loc is None or BLOCK_LOC.unpack(loc)[:2] != (pack_id, off):
                            continue  # not indexed, or a second copy: the index uses another
                        where = packw.append(rid, codec, raw, bytes(data))
                        moved[rid] = BLOCK_LOC.pack(*where, slen, raw, codec)
                    elif ok and history_live(live, rid):
                        packw.append(rid, codec, raw, bytes(data), magic=HISTORY_MAGIC)
                    else:
                        rep.history_dropped += 1
        packs = packw.sync()
        with repo.write_txn("rewriting packs") as txn:
            blocks = repo.dbs[DB_BLOCKS]
            for pack_id, size, nrec in packs:
                txn.put(pack_id, PACK_INFO.pack(size, nrec, 0), db=repo.dbs[DB_PACKS])
            for cid in sorted(moved):
                txn.put(cid, moved[cid], db=blocks)
            for pack_id in group:
                txn.delete(pack_id, db=repo.dbs[DB_PACKS])
                txn.delete(GC_DEAD_PREFIX + pack_id, db=repo.dbs[DB_META])
        packw.committed()
        for pack_id in group:
            repo.pack_store.delete(pack_id)
        rep.packs_rewritten += len(group)
        rep.packs_deleted += len(group)


# --- the whole prune ---------------------------------------------------------------------
def prune(repo, keeps: dict[int, dict[int, bool]], dry_run: bool = False,
          everything: bool = False, run_gc=None, stop=None, rules=None) -> PruneReport:
    """Thin each volume of ``keeps`` (volume id -> the commits to keep, instant -> whole,
    as :func:`make_plan` takes) and collect the garbage, under the writer lock (taken
    here unless held). An interrupted prune is finished first. ``everything``: rewrite
    every pack holding garbage or dead history (a ``--max-age`` drop: the data must be
    gone from the packs, not only from the index). ``dry_run``: nothing is written; the
    report says what would go.

    Beside a writer session's captures (store/session.py): the thinning may run in any
    thread while the captures commit (it changes only records at or before the horizon
    of its plan, and no kept view, the newest included); the garbage collection must not
    run while a commit is being built, so ``run_gc(fn)`` runs it where none is (the
    session's owner, between two commits) and returns what ``fn()`` returns. ``stop``: a
    ``threading.Event`` checked between transactions; once set, the prune stops with
    :class:`PruneStopped`, its marker kept for the next prune to finish.

    ``rules``: per-path rules, volume id -> (the commits each class of paths keeps, a
    list of dicts as ``keeps`` holds; ``class_of(path)``: the index in that list of the
    class of a path, or None for paths no rule names). ``keeps`` then holds, for that
    volume, every commit some class keeps (see :func:`thin`)."""
    from . import policies

    rep = PruneReport(dry_run=dry_run)
    with repo.writer_lock():
        if not dry_run:
            for plan in unfinished(repo):
                thin(repo, plan, rep, stop=stop, resumed=True)
        plans, classes = [], {}
        with repo.read_txn() as txn:
            for vid, keep in sorted(keeps.items()):
                commits = policies.plan_commits(repo, txn, vid)
                plans.append(make_plan(vid, commits, keep))
                if rules and vid in rules:
                    class_keeps, class_of = rules[vid]
                    each = [plans[-1]] + [make_plan(vid, commits, k) for k in class_keeps]
                    classes[vid] = (each, lambda path, f=class_of: 0 if (c := f(path)) is None
                                    else c + 1)
        refs: set[int] | None = set() if dry_run else None
        for plan in plans:
            if plan.empty and plan.vol not in classes:
                continue
            if not dry_run:
                start(repo, plan)
            thin(repo, plan, rep, dry_run, refs=refs, stop=stop, classes=classes.get(plan.vol))

        def gc() -> None:
            nonlocal refs
            if refs is None:
                refs = referenced(repo)
            else:
                refs |= referenced(repo, skip=[p.vol for p in plans
                                           if not p.empty or p.vol in classes])
            collect(repo, refs, rep, everything, dry_run)

        if dry_run or run_gc is None:
            gc()
        else:
            run_gc(gc)
    return rep


class PruneStopped(AnytimeError):
    """A prune stopped on request (its capture is stopping); the next one finishes it."""


# --- policies ------------------------------------------------------------------------------
def apply_policies(repo, vols: list[int] | None = None, dry_run: bool = False,
                   now_ns: int | None = None, tz=None, run_gc=None, stop=None) -> PruneReport:
    """Prune every volume (or those of ``vols``) by its retention policy and holds
    (store/retention.py, store/policies.py): what the plan keeps is kept, the rest
    dropped; a volume without a policy keeps everything (its garbage is still
    collected). Under a capacity cap (``max_size``), while the repository is larger, the
    kept commits the plan lets a cap remove go too, finest and oldest first, a quarter
    of what is left at a time; the report says which (``volumes[NAME]["capped"]``).
    ``run_gc``, ``stop``: as for :func:`prune`."""
    from . import policies, retention
    from .pins import pinned as pinned_by_readers

    now = clock.now_ns() if now_ns is None else now_ns
    pinned = pinned_by_readers(repo)
    with repo.writer_lock():
        keeps, drops, caps, rules, everything = {}, {}, {}, {}, False
        with repo.read_txn() as txn:
            from .volumes import list_volumes

            chosen = [v for v in list_volumes(repo, txn) if vols is None or v.id in vols]
            for vol in chosen:
                commits = policies.plan_commits(repo, txn, vol.id)
                pol = policies.get_policy(repo, txn, vol.id)
                holds = policies.list_holds(repo, txn, vol.id) + [  # what readers show now
                    retention.Hold(id="mounted", from_ns=t, to_ns=t)
                    for t in sorted(pinned.get(vol.id, ()))]
                labels = dict(timeline.labels(repo, txn, vol.id))
                plan = retention.plan(commits, labels, holds, pol, now, tz)
                keeps[vol.id] = {t: k.whole for t, k in plan.keep.items()}
                if pol is not None and pol.rules:
                    class_keeps, class_of, regulated = _path_classes(
                        repo, vol.id, pol, commits, labels, holds, now, tz, keeps[vol.id])
                    rules[vol.id] = (class_keeps, class_of)
                    everything |= regulated
                drops[vol.id] = [t for t, _ in commits if t not in keeps[vol.id]]
                cut = plan.max_age_cutoff
                everything |= cut is not None and any(t < cut for t in plan.drop)
                if pol is not None and pol.max_size and plan.cap_order:
                    caps[vol.id] = (pol.max_size, list(plan.cap_order))
        names = {v.id: v.name for v in chosen}
        rep = prune(repo, keeps, dry_run=dry_run, everything=everything, run_gc=run_gc,
                    stop=stop, rules=rules)
        for vid, keep in keeps.items():
            rep.volumes[names[vid]] = {"kept": len(keep), "dropped": drops[vid], "capped": []}
        rep.gone = [(names.get(v, v), p, t) for v, p, t in rep.gone]
        while caps and not dry_run:
            used = repo.space_kept()
            over = [(vid, cap) for vid, cap in caps.items() if used > cap[0] and cap[1]]
            if not over:
                break
            for vid, (_size, order) in over:
                n = max(1, len(order) // 4)
                gone, order[:] = order[:n], order[n:]
                for t in gone:
                    keeps[vid].pop(t, None)
                    for k in rules.get(vid, ([], None))[0]:  # no class keeps it either
                        k.pop(t, None)
                rep.volumes[names[vid]]["capped"] += gone
                rep.volumes[names[vid]]["kept"] -= len(gone)
            more = prune(repo, {vid: keeps[vid] for vid, _ in over}, run_gc=run_gc,
                         stop=stop, rules=rules)
            for f in ("commits_dropped", "commits_coarsened", "versions_deleted",
                      "versions_moved", "chunks_deleted", "bytes_freed", "packs_rewritten",
                      "packs_deleted", "history_dropped"):
                setattr(rep, f, getattr(rep, f) + getattr(more, f))
        if not dry_run:
            from . import status

            status.publish_prune(repo, {"at_ns": now, "volumes": {
                name: {"dropped": len(v["dropped"]) + len(v["capped"]),
                       "capped": len(v["capped"])} for name, v in rep.volumes.items()}})
    return rep


def _path_classes(repo, vol: int, pol, commits, labels, holds, now: int, tz, keep: dict
                  ) -> tuple[list[dict], object, bool]:
    """Per-path rules of ``pol``: (the commits each class of paths keeps, class_of), as
    :func:`prune` takes them, and whether a class's ``max_age`` drops something; a class is the set of rules a path matches, one for each
    set some path of the volume has (found by a walk of its path names). ``keep``, the
    volume's, grows by every commit a class keeps."""
    from . import retention

    names = _PathNames(repo, vol)
    matchers = [r.matches for r in pol.rules]
    # a directory holding paths a rule keeps is kept as long as they are (else they
    # could not be reached at the instants only the rule keeps)
    above: dict[bytes, set[int]] = {}
    for prefix, *_rest, first in _versions(repo, DB_ENTRIES, vol):
        if not first:
            continue
        path = names.of(prefix)
        direct = {i for i, m in enumerate(matchers) if m(path)}
        while direct and path:
            path = path.rpartition(b"/")[0]
            above.setdefault(path, set()).update(direct)

    def subset_of(path: bytes) -> tuple:
        """The rules ``path`` matches (i), and those only paths under it match, whose
        keeps it gets but not their max_age (-1 - i)."""
        direct = {i for i, m in enumerate(matchers) if m(path)}
        return tuple(sorted(direct | {-1 - i for i in above.get(path, set()) - direct}))

    seen: dict[tuple, int] = {}
    for prefix, *_rest, first in _versions(repo, DB_ENTRIES, vol):
        if first:
            seen.setdefault(subset_of(names.of(prefix)), len(seen))
    class_keeps, regulated = [], False
    for subset in seen:
        eff = pol.merged_with([pol.rules[i] if i >= 0 else
                               replace(pol.rules[-1 - i], max_age=None)
                               for i in subset])
        got = retention.plan(commits, labels, holds, eff, now, tz)
        class_keeps.append({t: k.whole for t, k in got.keep.items()})
        for t, whole in class_keeps[-1].items():
            keep[t] = keep.get(t, False) or whole
        cut = got.max_age_cutoff  # data that must be gone: out of the packs too
        regulated |= cut is not None and any(t < cut for t in got.drop)
    index = {subset: i for subset, i in seen.items()}

    def class_of(path: bytes) -> int:
        return index.get(subset_of(path), 0)

    return class_keeps, class_of, regulated
