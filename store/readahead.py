"""Read-ahead: chunks a sequential reader will want soon, decompressed beforehand.

A 1 MiB read of a file names about two content-defined chunks, one of which the read
before it often decompressed already; a mount serves the kernel's read requests one or
two at a time, so between them a core is often idle. A view that sees a file read in
sequence (vfs/view.py) hands the block references of the next blocks to
:meth:`ReadAhead.want`; one worker thread per repository reads and decompresses their
chunks into the repository's :class:`~anytime.store.repo.BlockCache`, where the reads
then find them. A read of a chunk the worker is loading waits for that load instead of
decompressing it twice (``BlockCache.get_or_load``); the worker never waits for a
chunk a read is loading, it moves on to the next one, so the two decompress different
chunks at once (waiting, it made reads no faster than without it).

Only references are handed over, looked up by the view at its own instant, so the
worker reads nothing the view does not show. It holds the repository by a weak
reference, ends when it has had nothing to do for ``IDLE`` seconds (the next want starts
another), and is stopped by :meth:`ReadAhead.close` (``Repository.close``). Its failures
are dropped: a damaged chunk is reported by the read that needs it.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque

#: Seconds the worker waits for more work before it ends.
IDLE = 1.0
#: Block references queued at most; the oldest are dropped first (a reader that moved on
#: no longer wants them).
QUEUE_MAX = 16


class ReadAhead:
    """One worker thread that loads the chunks of queued block references."""

    def __init__(self, repo):
        self._repo = weakref.ref(repo)
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[bytes] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = False  # a batch is being loaded
        #: block references loaded (tests and diagnostics)
        self.loaded = 0

    def want(self, refs) -> None:
        """Queue block references (``HOLE_ID`` and repeats are the caller's to leave
        out); starts the worker if none runs."""
        with self._cond:
            if self._closed:
                return
            for ref in refs:
                if ref not in self._queue:
                    self._queue.append(ref)
            while len(self._queue) > QUEUE_MAX:
                self._queue.popleft()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="anytime-readahead",
                                                daemon=True)
                self._thread.start()
            else:
                self._cond.notify_all()

    def running(self) -> bool:
        with self._cond:
            return self._thread is not None

    def wait_done(self, timeout: float) -> bool:
        """Wait until everything queued is loaded (for tests); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (it finishes the chunk it is loading) and queue nothing more."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _next(self) -> list[bytes]:
        """The references queued, or none when closed or idle for IDLE seconds (the
        worker then ends: ``_thread`` is cleared under the lock, so a want starts a new
        one)."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()  # wait_done
            if not self._queue and not self._closed:
                self._cond.wait(IDLE)
            if self._closed or not self._queue:
                self._thread = None
                return []
            batch = list(self._queue)
            self._queue.clear()
            self._busy = True
            return batch

    def _run(self) -> None:
        while batch := self._next():
            repo = self._repo()
            if repo is None:
                with self._cond:
                    self._thread, self._busy = None, False
                    self._cond.notify_all()
                return
            try:
                with repo.read_txn() as txn:
                    for ref in batch:  # the store may fetch them all while we decompress
                        repo.will_read_ref(txn, ref)
                    for ref in batch:
                        if self._closed:
                            break
                        repo.load_ref(txn, ref)
                        self.loaded += 1
            except Exception:  # the read that needs the chunk reports it
                pass
            del repo
