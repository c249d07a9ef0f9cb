"""Point-in-time lookups: the newest version at or before an instant, in one seek.

Every versioned key ends with a big-endian instant, so the versions of one thing are
adjacent and sorted by time. "The newest version at or before T" is: position the
cursor at the first key >= prefix|T+1, step back once, and check the prefix. That is
O(log n) in the history length, never a replay.

All functions take an open LMDB transaction; they never write. They answer for the
instant they are given: readers never ask past the volume's horizon (a commit being
written keeps its records there until it lands; see store/writer.py and vfs/view.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from . import history
from .errors import Held
from .format import (
    DB_BLOCKVERS,
    DB_COMMITS,
    DB_DIRS,
    DB_ENTRIES,
    DB_INODES,
    DB_LABELS,
    DB_PACKS,
    HOLE_ID,
    INODE_VALUE,
    MAX_INSTANT,
    PACK_INFO,
    U64,
    Entry,
    blockver_prefix,
    commit_key,
    dir_key,
    entry_prefix,
    inode_key,
    join_path,
    label_key,
    split_blockver_key,
    split_commit_key,
    split_entry_key,
    split_label_key,
    split_path,
    vol_key,
)


def _seek_at_or_before(cur, prefix: bytes, instant: int) -> bytes | None:
    """Position ``cur`` on the newest key ``prefix|t`` with t <= instant; returns its value."""
    probe = prefix + U64.pack(instant + 1) if instant < MAX_INSTANT else prefix + b"\xff" * 9
    if cur.set_range(probe):
        if not cur.prev():
            return None
    elif not cur.last():
        return None
    key = cur.key()
    if len(key) == len(prefix) + 8 and key.startswith(prefix):
        return cur.value()
    return None


def _path_prefix(repo, vol: int, path: bytes) -> bytes:
    """Key prefix of every version of ``path`` in ``entries``."""
    parent, name = split_path(path)
    return entry_prefix(vol, repo.dir_hash(parent), name)


def entry_at(repo, txn, vol: int, path: bytes, instant: int) -> Entry | None:
    """The entry at ``path`` in the view at ``instant``; None if absent then."""
    cur = txn.cursor(db=repo.dbs[DB_ENTRIES])
    val = _seek_at_or_before(cur, _path_prefix(repo, vol, path), instant)
    if val is None:
        return None
    e = Entry.decode(val)
    return None if e.deleted else e


def list_dir_at(repo, txn, vol: int, path: bytes, instant: int,
                include_deleted: bool = False) -> list[tuple[bytes, Entry]]:
    """Entries of directory ``path`` at ``instant``, sorted by name.

    Walks the directory's keys in order; a name with more than ``_WALK_VERSIONS``
    versions is finished with two seeks instead (so a listing costs at most about
    ``_WALK_VERSIONS`` steps per name ever seen, whatever the history length).
    """
    cur = txn.cursor(db=repo.dbs[DB_ENTRIES])
    prefix = dir_key(vol, repo.dir_hash(path))
    plen = len(prefix)
    out = []
    if not cur.set_range(prefix):
        return out
    key = cur.key()
    while key.startswith(prefix):
        name = key[plen:-9]
        npre = key[:-8]
        best = None
        steps = 0
        while True:
            if U64.unpack(key[-8:])[0] <= instant:
                best = cur.value()
            steps += 1
            if not cur.next():
                key = b""
                break
            key = cur.key()
            if not key.startswith(npre) or len(key) != len(npre) + 8:
                break
            if steps >= _WALK_VERSIONS:  # a long history: seek to the answer and past it
                best = _seek_at_or_before(cur, npre, instant)
                key = cur.key() if cur.set_range(prefix + name + b"\x01") else b""
                break
        if name and best is not None:  # the root's own entry has the empty name
            e = Entry.decode(best)
            if include_deleted or not e.deleted:
                out.append((name, e))
    return out


_WALK_VERSIONS = 8


def entry_versions(repo, txn, vol: int, path: bytes, until: int = MAX_INSTANT
                   ) -> Iterator[tuple[int, Entry]]:
    """Every recorded version of ``path`` at or before ``until`` (deletions included),
    oldest first. Readers pass the volume's horizon (see :func:`last_alive`)."""
    prefix = _path_prefix(repo, vol, path)
    cur = txn.cursor(db=repo.dbs[DB_ENTRIES])
    if not cur.set_range(prefix):
        return
    for key, val in cur:
        if not key.startswith(prefix) or len(key) != len(prefix) + 8:
            break
        t = U64.unpack(key[-8:])[0]
        if t > until:
            break
        yield t, Entry.decode(val)


def last_alive(repo, txn, vol: int, path: bytes, until: int = MAX_INSTANT
               ) -> tuple[int, Entry] | None:
    """(instant, entry) of the newest version of ``path`` at or before ``until`` that is
    not a deletion. Readers pass the volume's horizon: records after it belong to a
    commit still being written (store/writer.py).

    Steps back from the newest version; costs one seek plus one step per deletion at
    the end of the history."""
    prefix = _path_prefix(repo, vol, path)
    cur = txn.cursor(db=repo.dbs[DB_ENTRIES])
    val = _seek_at_or_before(cur, prefix, until)
    while val is not None:
        e = Entry.decode(val)
        if not e.deleted:
            return U64.unpack(cur.key()[-8:])[0], e
        if not cur.prev():
            return None
        key = cur.key()
        val = cur.value() if len(key) == len(prefix) + 8 and key.startswith(prefix) else None
    return None


def names_ever(repo, txn, vol: int, path: bytes) -> Iterator[bytes]:
    """Every name that ever appeared in directory ``path``."""
    cur = txn.cursor(db=repo.dbs[DB_ENTRIES])
    prefix = dir_key(vol, repo.dir_hash(path))
    if not cur.set_range(prefix):
        return
    while True:
        key = cur.key()
        if not key.startswith(prefix):
            return
        name = key[len(prefix):-9]
        if name:
            yield name
        if not cur.set_range(prefix + name + b"\x01"):
            return


def block_at(repo, txn, vol: int, file_id: int, block_no: int, instant: int,
             cur=None) -> bytes:
    """The id of block ``block_no`` of file ``file_id`` at ``instant`` (HOLE_ID if none)."""
    cur = cur or txn.cursor(db=repo.dbs[DB_BLOCKVERS])
    val = _seek_at_or_before(cur, blockver_prefix(vol, file_id, block_no), instant)
    return HOLE_ID if val is None else bytes(val)


def blocks_at(repo, txn, vol: int, file_id: int, first: int, count: int,
              instant: int) -> list[bytes]:
    cur = txn.cursor(db=repo.dbs[DB_BLOCKVERS])
    return [block_at(repo, txn, vol, file_id, b, instant, cur) for b in range(first, first + count)]


def block_versions(repo, txn, vol: int, file_id: int) -> Iterator[tuple[int, int, bytes]]:
    """(block number, instant, block id) of every block version of a file."""
    prefix = vol_key(vol) + U64.pack(file_id)
    cur = txn.cursor(db=repo.dbs[DB_BLOCKVERS])
    if not cur.set_range(prefix):
        return
    for key, val in cur:
        if not key.startswith(prefix):
            return
        _vol, _fid, block_no, t = split_blockver_key(key)
        yield block_no, t, bytes(val)


# --- commits -------------------------------------------------------------------------
def commits(repo, txn, vol: int, since: int = 0, until: int = MAX_INSTANT
            ) -> Iterator[tuple[int, dict]]:
    """(instant, commit record) of a volume's commits in [since, until], oldest first."""
    cur = txn.cursor(db=repo.dbs[DB_COMMITS])
    prefix = vol_key(vol)
    if not cur.set_range(commit_key(vol, since)):
        return
    for key, val in cur:
        if not key.startswith(prefix):
            return
        t = split_commit_key(key)[1]
        if t > until:
            return
        yield t, json.loads(bytes(val))


def commit_at_or_before(repo, txn, vol: int, instant: int) -> tuple[int, dict] | None:
    cur = txn.cursor(db=repo.dbs[DB_COMMITS])
    val = _seek_at_or_before(cur, vol_key(vol), instant)
    if val is None:
        return None
    return split_commit_key(cur.key())[1], json.loads(bytes(val))


def last_commit_of_kind(repo, txn, vol: int, kind: str, within: int = 100_000
                        ) -> tuple[int, dict] | None:
    """(instant, record) of the volume's newest commit of ``kind`` ("scan", "watch")
    among its last ``within`` commits; None if there is none."""
    cur = txn.cursor(db=repo.dbs[DB_COMMITS])
    if _seek_at_or_before(cur, vol_key(vol), MAX_INSTANT) is None:
        return None
    prefix = vol_key(vol)
    for _ in range(within):
        key = cur.key()
        if not key.startswith(prefix):
            return None
        rec = json.loads(bytes(cur.value()))
        if rec.get("kind") == kind:
            return split_commit_key(key)[1], rec
        if not cur.prev():
            return None
    return None


def first_commit(repo, txn, vol: int) -> int | None:
    for t, _ in commits(repo, txn, vol):
        return t
    return None


def thinned(repo, txn, vol: int, instant: int) -> int | None:
    """If a prune thinned the view at ``instant`` away (store/thinning.py), the instant of
    the kept commit that view shows now (0: none, history before the first kept commit
    was dropped); None when the view at ``instant`` is as it always was. One seek: the
    next kept commit's record says from when views before it are thinned."""
    if instant == MAX_INSTANT:
        return None
    nxt = next(commits(repo, txn, vol, since=instant), None)
    if nxt is None:
        return None
    t, rec = nxt
    start = rec.get("thinned_from")
    if start is None or instant < start or t == instant:
        return None
    if rec.get("timed") and instant > int(rec.get("timed_from", 0)):
        return None  # inside a timed commit's interior, which stays exact
    prev = 0
    cur = txn.cursor(db=repo.dbs[DB_COMMITS])
    if cur.set_range(commit_key(vol, instant)) and cur.prev():
        key = cur.key()
        if key.startswith(vol_key(vol)):
            prev = split_commit_key(key)[1]
    return prev


def commit_count(repo, txn, vol: int) -> int:
    return sum(1 for _ in commits(repo, txn, vol))


def has_inodes(repo, txn, vol: int) -> bool:
    """True if the index holds any inode record of the volume (a first snapshot has none,
    so it need not look up each new file's inode)."""
    cur = txn.cursor(db=repo.dbs[DB_INODES])
    prefix = vol_key(vol)
    return cur.set_range(prefix) and cur.key().startswith(prefix)


def dir_path(repo, txn, vol: int, dir_hash: bytes) -> bytes | None:
    """The path of the directory of volume ``vol`` whose hash is ``dir_hash`` (its
    ``dirs`` record); None if the index has none (damaged: ``check`` reports it)."""
    v = txn.get(dir_key(vol, dir_hash), db=repo.dbs[DB_DIRS])
    return None if v is None else bytes(v)


def entry_paths(repo, txn, vol: int) -> Iterator[tuple[bytes | None, bytes, bytes, int, bytes]]:
    """(path, directory hash, name, instant, encoded entry) of every ``entries`` record
    of volume ``vol``, in key order (all versions of a path adjacent, oldest first).
    The path is None for the volume root's own records and where the directory has no
    ``dirs`` record; each directory's record is read once per run of its entries."""
    prefix = vol_key(vol)
    cur = txn.cursor(db=repo.dbs[DB_ENTRIES])
    if not cur.set_range(prefix):
        return
    known, parent = None, None
    for key, val in cur:
        if not key.startswith(prefix):
            break
        _vid, dh, name, t = split_entry_key(key)
        if dh != known:
            known, parent = dh, dir_path(repo, txn, vol, dh)
        path = join_path(parent, name) if name and parent is not None else None
        yield path, dh, name, t, val


def path_histories(repo, txn, vol: int, match, until: int = MAX_INSTANT
                   ) -> Iterator[tuple[bytes, list[tuple[int, Entry]]]]:
    """(path, versions at or before ``until``, oldest first) of every path of the volume
    for which ``match(path, name)`` holds, in key order: one pass over the volume's
    entries, each path named and matched once, only matching versions decoded."""
    group, current, versions = None, None, []
    for path, dh, name, t, val in entry_paths(repo, txn, vol):
        if (dh, name) != group:  # a new path (all versions of a path are adjacent)
            if versions:
                yield current, versions
            group, current = (dh, name), path
            versions = [] if path is not None and match(path, name) else None
        if versions is not None and t <= until:
            versions.append((t, Entry.decode(val)))
    if versions:
        yield current, versions


# --- labels --------------------------------------------------------------------------
def set_label(repo, vol: int, name: str, instant: int, force: bool = False) -> int | None:
    """Name ``instant`` of volume ``vol``; returns the instant the label named before (it
    is moved only with ``force``; without, nothing changes; a label a hold names is
    never moved). Written as the writer's own writes are: under the writer lock (taken
    here unless held; another writer running raises :class:`RepositoryLocked`), first
    to a pack as a history record (so a rebuilt index has it), then in one LMDB write
    transaction."""
    def write():
        with repo.read_txn() as txn:
            old = label_instant(repo, txn, vol, name)
            if old is not None and force and old != instant:
                _refuse_if_held(repo, txn, vol, name, "moved")
        if old is None or force:
            packs = log_change(repo, lambda packw, at: history.append_label(
                packw, vol, at, name, instant))
            with repo.write_txn("writing a label") as txn:
                list_packs(repo, txn, packs)
                txn.put(label_key(vol, name.encode()), U64.pack(instant),
                        db=repo.dbs[DB_LABELS])
        return old

    from . import control

    return control.as_writer(repo, {"op": "set_label", "vol": vol, "name": name,
                                    "instant": instant, "force": force}, "old", write)


def remove_label(repo, vol: int, name: str) -> bool:
    """Remove a label; False if the volume had none of that name. Refused (:class:`Held`)
    for a label a hold in force names. Under the writer lock, and first to a pack, as
    :func:`set_label`."""
    def write():
        with repo.read_txn() as txn:
            if label_instant(repo, txn, vol, name) is None:
                return False
            _refuse_if_held(repo, txn, vol, name, "removed")
        packs = log_change(repo, lambda packw, at: history.append_label(
            packw, vol, at, name, None))
        with repo.write_txn("writing a label") as txn:
            list_packs(repo, txn, packs)
            return txn.delete(label_key(vol, name.encode()), db=repo.dbs[DB_LABELS])

    from . import control

    return control.as_writer(repo, {"op": "remove_label", "vol": vol, "name": name},
                             "removed", write)


def _refuse_if_held(repo, txn, vol: int, name: str, what: str) -> None:
    from . import clock, policies

    hold = policies.hold_of_label(repo, txn, vol, name, clock.now_ns())
    if hold is not None:
        raise Held(f"label '{name}' is held (hold {hold.id}), so it cannot be {what}; "
                   f"'anytime release PATH {hold.id}' first")


def log_change(repo, write) -> list:
    """Write one change made outside a commit (a label, a setting) to a new pack,
    durable: ``write(packw, at)`` appends its history record, ``at`` being now. Returns
    the pack (as :meth:`PackWriter.sync` does) for :func:`list_packs`."""
    from . import clock
    from .packs import PackWriter

    packw = PackWriter(repo.pack_store, repo.pack_target)
    write(packw, clock.now_ns())
    return packw.sync()


def list_packs(repo, txn, packs) -> None:
    """List ``packs`` in the index (a pack not listed is a leftover the next writer
    deletes), with the time they were written as their instant."""
    from . import clock

    for pack_id, size, nrec in packs:
        txn.put(pack_id, PACK_INFO.pack(size, nrec, clock.now_ns()), db=repo.dbs[DB_PACKS])


def label_instant(repo, txn, vol: int, name: str) -> int | None:
    v = txn.get(label_key(vol, name.encode()), db=repo.dbs[DB_LABELS])
    return None if v is None else U64.unpack(v)[0]


def labels(repo, txn, vol: int) -> list[tuple[str, int]]:
    cur = txn.cursor(db=repo.dbs[DB_LABELS])
    prefix = vol_key(vol)
    out = []
    if cur.set_range(prefix):
        for key, val in cur:
            if not key.startswith(prefix):
                break
            out.append((split_label_key(key)[1].decode(errors="surrogateescape"),
                        U64.unpack(val)[0]))
    return out


def known_file_id(repo, txn, vol: int, st) -> int | None:
    """The file id of the source file ``st`` (an ``os.stat_result``) if the volume's inode
    map says its inode holds the file last recorded there, else None.

    This is the one identity rule for files met on disk (the scan's stat cache, the
    live side of ``diff``): a known inode is the same file only while it still has the
    size and mtime recorded for it. A different size or mtime means the inode number was
    reused by an unrelated file (or the file changed since, which the scan reads anew
    either way), so the file is new, not the old one renamed.
    """
    v = txn.get(inode_key(vol, st.st_dev, st.st_ino), db=repo.dbs[DB_INODES])
    if v is None:
        return None
    file_id, mtime_ns, size = INODE_VALUE.unpack(v)
    return file_id if (mtime_ns, size) == (st.st_mtime_ns, st.st_size) else None
