"""Compacting the index: giving its free pages back to the disk.

LMDB never makes ``index/data.mdb`` smaller. Pages a write transaction frees (a prune
deletes most records of a thinned history) are reused by later writes but stay in the
file, so after a prune the index takes the space of the history it held before.
*Compacting* writes a copy of the index that holds only the records in use, in full
pages, and puts it in place of ``data.mdb``.

Terms:
  used bytes   the pages some database of the index uses (branch, leaf and overflow
               pages, from each database's statistics, and the two meta pages).
  free bytes   the rest of the file up to LMDB's last page: pages LMDB will reuse.

Only a process that alone has the index open may replace its file: another would go on
reading (or, as a writer, writing) the old one, and LMDB's lock file, whose state the
processes share, must be set up again from the new file, which LMDB does only for a
process that opens the environment alone. So every :class:`Repository` holds a shared
``flock`` on ``index/users`` while its index is open (taken before LMDB opens it), and
:func:`compact` turns its own into an exclusive one without waiting: that succeeds only
when no other process has the repository open, and while it is held, a process that
opens the repository waits, before LMDB opens anything, until the compaction is over.
It runs under the writer lock.

The copy is not LMDB's compacting copy (``mdb_env_copy2``), which keeps each page as
full as it was: pages emptied by a prune's deletes stay half empty. Each database's
records are put into a new environment in key order with ``MDB_APPEND``, which fills
every page: the index then takes no more than one written fresh (a fresh index, filled
in commit order, splits its pages half full). A crash leaves the old file in place and a
partial copy (``data.mdb.compacting``, deleted by the next compaction), or the new file.
"""

from __future__ import annotations

import os
from itertools import islice
from typing import NamedTuple

import lmdb

from . import modes, space

#: Compact when at least this share of the index's file is free ...
COMPACT_FREE = 0.25
#: ... and at least this many bytes: a small index is not worth a copy.
COMPACT_MIN_BYTES = 8 << 20
#: Records put per write transaction of the copy.
COPY_BATCH = 50_000
DATA = "data.mdb"
PARTIAL = "data.mdb.compacting"


class Compaction(NamedTuple):
    """What :func:`compact` did: the index's file size ``before`` and ``after`` (the
    same when it did nothing), and ``skipped``, why it did nothing (None: compacted)."""

    before: int
    after: int
    skipped: str | None

    def to_json(self) -> dict:
        return {"before_bytes": self.before, "after_bytes": self.after,
                "skipped": self.skipped}


def usage(repo) -> tuple[int, int]:
    """(file bytes up to LMDB's last page, used bytes) of ``repo``'s index."""
    env = repo.env
    main = env.stat()  # the main database: it names the others
    with repo.read_txn() as txn:
        stats = [main] + [txn.stat(db) for db in repo.dbs.values()]
    used = 2 + sum(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                   for st in stats)  # and the two meta pages
    return (env.info()["last_pgno"] + 1) * main["psize"], used * main["psize"]


def compact(repo, min_free: float | None = None) -> Compaction:
    """Compact ``repo``'s index when at least ``min_free`` of it (default
    ``COMPACT_FREE``, and then at least ``COMPACT_MIN_BYTES``) is free and this process
    alone has it open; takes the writer lock (or runs under it). The repository object
    goes on working on the compacted index."""
    with repo.writer_lock():
        index = os.path.join(repo.root, "index")
        size = os.path.getsize(os.path.join(index, DATA))
        top, used = usage(repo)
        free = top - used
        if free <= 0 or free < (COMPACT_FREE if min_free is None else min_free) * top \
                or (min_free is None and free < COMPACT_MIN_BYTES):
            return Compaction(size, size, "little of the index is free")
        if not repo.hold_index_alone():
            return Compaction(size, size, "another process has the repository open (a "
                                          "mount, a restore or protect); the next prune "
                                          "compacts the index when none has")
        try:
            after = _copy(repo, index)
            # LMDB sets its lock file up from the new file: this process opens it alone
            repo.reopen_index()
        finally:
            repo.share_index()
        return Compaction(size, after, None)


def _copy(repo, index: str) -> int:
    """Write the compacted copy and rename it over ``data.mdb``; its size."""
    from .repo import MAP_SIZE, _fsync_dir, index_error

    tmp = os.path.join(index, PARTIAL)
    for leftover in (tmp, tmp + "-lock"):
        try:
            os.unlink(leftover)  # a crashed compaction's
        except FileNotFoundError:
            pass
    try:
        out = lmdb.open(tmp, subdir=False, lock=False, map_size=MAP_SIZE,
                        max_dbs=len(repo.dbs) + 2, sync=False, metasync=False,
                        readahead=False, mode=modes.FILE_MODE)
        try:
            with repo.read_txn() as src:
                for name, db in repo.dbs.items():
                    dst = out.open_db(name)
                    records = src.cursor(db=db).iternext()
                    while batch := list(islice(records, COPY_BATCH)):
                        repo.map_trimmer.touched(len(batch))
                        with out.begin(write=True, db=dst) as txn:
                            txn.cursor().putmulti(batch, append=True)
            out.sync(True)
        finally:
            out.close()
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            after = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(index, DATA))
        _fsync_dir(index)
    except (OSError, lmdb.Error) as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            space.check(e, repo.root, "compacting the index")
            raise
        raise index_error(e, repo.root, "compacting the index") from None
    return after
