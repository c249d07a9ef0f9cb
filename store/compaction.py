"""Compacting the index: giving its free pages back to the disk.

LMDB never makes ``index/data.mdb`` smaller. Pages a write transaction frees (a prune
deletes most records of a thinned history) are reused by later writes but stay in the
file, so after a prune the index takes the space of the history it held before.
*Compacting* writes a copy of the index that holds only the pages in use (LMDB's
compacting copy, ``mdb_env_copyfd2`` with ``MDB_CP_COMPACT``) and puts it in place of
``data.mdb``.

Terms:
  used bytes   the pages some database of the index uses (branch, leaf and overflow
               pages, from each database's statistics, and the two meta pages).
  free bytes   the rest of the file up to LMDB's last page: pages LMDB will reuse.

Only a process that alone has the index open may replace its file: another would go on
reading (or, as a writer, writing) the old one. LMDB marks each process that has the
environment open with a shared fcntl lock on the first byte of ``lock.mdb``.
:func:`compact` takes that byte's lock exclusive without waiting, which succeeds only
when no other process holds it, and keeps it while it copies and renames: a process
that opens the index meanwhile waits in ``lmdb.open`` until this one closes its
environment, and then opens the compacted file. It runs under the writer lock, so no
write transaction runs during the copy (whose own read transaction is a consistent
view). A crash leaves the old file in place and a partial copy
(``data.mdb.compacting``, deleted by the next compaction), or the new file.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import NamedTuple

import lmdb

from . import modes, space

#: Compact when at least this share of the index's file is free ...
COMPACT_FREE = 0.25
#: ... and at least this many bytes: a small index is not worth a copy.
COMPACT_MIN_BYTES = 8 << 20
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
    psize = env.stat()["psize"]
    pages = lambda st: st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]  # noqa: E731
    used = 2 + pages(env.stat())  # the meta pages and the main database (names the others)
    with repo.read_txn() as txn:
        for db in repo.dbs.values():
            used += pages(txn.stat(db))
    return (env.info()["last_pgno"] + 1) * psize, used * psize


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
        fd = repo._lock_fd  # LMDB's own locks are this process's: see repo._allocate
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return Compaction(size, size, "another process has the repository open (a "
                                          "mount, a restore or protect); the next prune "
                                          "compacts the index when none has")
        try:
            after = _copy(repo, index)
        except BaseException:
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)  # as LMDB holds it
            raise
        # closing the environment drops this process's locks on lock.mdb: a process
        # waiting to open the index goes on, and opens the new file
        repo._close_env()
        repo._open_index()
        return Compaction(size, after, None)


def _copy(repo, index: str) -> int:
    """Write the compacted copy and rename it over ``data.mdb``; its size."""
    from .repo import _fsync_dir, index_error

    tmp = os.path.join(index, PARTIAL)
    try:
        os.unlink(tmp)  # a crashed compaction's
    except FileNotFoundError:
        pass
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                      modes.FILE_MODE)
        try:
            repo.env.copyfd(out, compact=True)
            os.fsync(out)
            after = os.fstat(out).st_size
        finally:
            os.close(out)
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
