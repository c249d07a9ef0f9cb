"""A writer that lives across commits: continuous capture's side of the store.

Terms:
  session      a :class:`WriterSession`: the writer lock, taken once, and one pack
               writer shared by every commit made through it, of any volume.
  open pack    the pack a session appends to across commits. Each commit *flushes* it
               (``PackStore.flush``: its bytes so far durable) instead of sealing it,
               and lists its prefix in ``packs`` with the size it has then, beside a
               marker ``open_pack_key(id)`` in ``meta``. The pack is sealed once it
               passes the repository's pack target (as any pack), once it is older
               than ``max_age`` seconds at a commit, and when the session ends; the
               commit that lists it sealed removes the marker.
  recovery     a writer that dies leaves its open pack marked, with bytes past its
               listed size that belong to no commit. The next writer cuts each marked
               pack back to its listed size (``PackStore.truncate``) and removes the
               marker before anything else (``Repository.writer_lock``), so the pack
               is then as if sealed at its last commit.

Per commit the session costs one ``fdatasync`` of the open pack, the directory
``fsync`` of each pack it sealed, and one LMDB transaction (two fsyncs): packs no longer
multiply with commits. A store that cannot flush (``can_flush`` False) gets a sealed pack
per commit instead, as a snapshot does.

While a session is open it also serves other processes' label changes (``anytime
mark`` and ``unmark``), which need the lock it holds: store/control.py.

Work between commits: some writes must not run while a commit is being built (a prune's
garbage collection deletes chunks a builder may be deduplicating against). They are
*tasks*: :meth:`WriterSession.submit` queues one (the control server does, for another
process's ``anytime prune``), :meth:`WriterSession.every` makes one periodic (protect's
prune), and the thread that owns the session runs them at a point where no builder is in
use, by calling :meth:`WriterSession.run_due` (the watcher after each pass of its loop,
the shim's recorder between group commits). Captures pause meanwhile; what changes is
queued and committed right after. Longer work that may run beside commits (a prune's
thinning) runs in a thread of its own (:meth:`WriterSession.background`) and hands the
part that may not to the owner (:meth:`WriterSession.run_between`).

Thread-safety: as :class:`~anytime.store.writer.CommitBuilder`: one builder at a time,
from the thread that owns the session. The control server's thread writes labels
meanwhile, each in a pack and a transaction of its own.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from contextlib import ExitStack

from .control import ControlServer
from .format import FEATURE_OPEN_PACKS
from .packs import PackWriter
from .volumes import Volume

#: Seconds an open pack takes commits before the next commit seals it.
PACK_MAX_AGE = 300.0


class WriterSession:
    """Hold ``repo``'s writer lock and share one pack writer across commits; use as a
    context manager (the lock is taken on entry; on exit the open pack is sealed and
    listed so, and the lock released)."""

    def __init__(self, repo, max_age: float = PACK_MAX_AGE, wait: bool = False):
        self.repo = repo
        self.max_age = max_age
        self.wait = wait
        self.packw: PackWriter | None = None
        self._stack = ExitStack()
        self._opened = 0.0  # monotonic time the open pack took its first commit
        self.commits = 0  # made through this session
        #: held by the control server's label writes, recover() and the end of the
        #: session, so that none runs during another
        self.lock = threading.Lock()
        self._tasks: list[tuple[Future, object]] = []  # submitted, not yet run
        self._tasks_lock = threading.Lock()
        self._periodic: list[list] = []  # [interval s, next due (monotonic), fn]
        #: called (from any thread) when a task is submitted: wakes the owner's loop
        self.on_task = None
        self._closed = False
        self._owner: int | None = None  # the thread that entered the session
        #: set when the session ends: background work stops at its next safe point
        self.stopping = threading.Event()
        self._background: list[threading.Thread] = []
        #: held by a prune (one at a time, whoever asked for it)
        self.prune_lock = threading.Lock()

    def __enter__(self) -> WriterSession:
        self._owner = threading.get_ident()
        self._stack.enter_context(self.repo.writer_lock(wait=self.wait))
        if self.repo.pack_store.can_flush:
            self.repo.require_feature(FEATURE_OPEN_PACKS)
        self.packw = PackWriter(self.repo.pack_store, self.repo.pack_target)
        # other processes' label changes, written under the lock this session holds
        self.control = ControlServer(self.repo, self.lock, session=self)
        if self.control.start():
            self._stack.callback(self.control.close)
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self._background:  # they stop at their next transaction
            while t.is_alive():
                self._run_tasks()  # one may wait for a task meanwhile
                t.join(0.05)
        with self._tasks_lock:
            self._closed = True
            left, self._tasks = self._tasks, []
        for fut, _fn in left:
            fut.set_exception(RuntimeError("the capture stopped before it could run it"))
        try:
            with self.lock:
                if self.packw is not None and self.packw.open_pack and exc[0] is None:
                    self.seal()
        finally:
            self._stack.close()

    def submit(self, fn) -> Future:
        """Queue ``fn()`` to run between commits in the owner's thread; its Future gives
        what it returns (or raises)."""
        fut: Future = Future()
        with self._tasks_lock:
            if self._closed:
                fut.set_exception(RuntimeError("the capture is stopping"))
                return fut
            self._tasks.append((fut, fn))
        if self.on_task is not None:
            self.on_task()
        return fut

    def every(self, seconds: float, fn, first: float | None = None) -> None:
        """Run ``fn()`` every ``seconds`` between commits (the first time after ``first``
        seconds, by default ``seconds``); what it raises is its own to report."""
        start = seconds if first is None else first
        self._periodic.append([seconds, time.monotonic() + start, fn])

    def next_due(self) -> float | None:
        """Seconds until a periodic task is due (0: now); None without any."""
        if self._tasks:
            return 0.0
        if not self._periodic:
            return None
        return max(0.0, min(p[1] for p in self._periodic) - time.monotonic())

    def run_between(self, fn):
        """Run ``fn()`` where no commit is being built and return what it returns: at
        once in the owner's thread, else as a task the owner runs between two commits
        (this thread waits for it)."""
        if threading.get_ident() == self._owner:
            return fn()
        return self.submit(fn).result()

    def background(self, fn) -> bool:
        """Run ``fn()`` in a thread of its own unless one started here still runs (False
        then); the session's end waits for it (it should watch :attr:`stopping`)."""
        self._background = [t for t in self._background if t.is_alive()]
        if self._background:
            return False
        t = threading.Thread(target=fn, name="anytime-session-background", daemon=True)
        self._background.append(t)
        t.start()
        return True

    def run_due(self) -> None:
        """Run the submitted tasks and the periodic ones that are due. The owner calls it
        with no builder in use."""
        self._run_tasks()
        now = time.monotonic()
        for p in self._periodic:
            if now >= p[1]:
                p[1] = now + p[0]
                p[2]()

    def _run_tasks(self) -> None:
        with self._tasks_lock:
            tasks, self._tasks = self._tasks, []
        for fut, fn in tasks:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - the submitter's to report
                    fut.set_exception(e)

    def builder(self, vol: Volume):
        """A :class:`~anytime.store.writer.CommitBuilder` for one commit of ``vol``
        through this session's pack writer."""
        from .writer import CommitBuilder

        return CommitBuilder(self.repo, vol, session=self)

    def keep_open(self) -> bool:
        """Whether the commit being made leaves its pack open (False: it seals it,
        because the pack is old enough)."""
        if not self.packw.open_pack:
            return True
        return time.monotonic() - self._opened < self.max_age

    def committed(self) -> None:
        """Called by a builder after its commit point."""
        packw = self.packw
        if packw.open_pack and not self._opened:
            self._opened = time.monotonic()
        elif not packw.open_pack:
            self._opened = 0.0
        packw.committed()
        self.commits += 1

    def recover(self) -> None:
        """Go on after a commit failed in the pack writer (a full disk): the failed
        writer is dropped for a new one, and what the next writer would clean is cleaned
        now, under the lock this session holds: its open pack cut back to what the
        index lists, packs no commit lists deleted. Call it with no builder in use."""
        with self.lock:  # no label change of the control server meanwhile
            old = self.packw
            self.packw = PackWriter(self.repo.pack_store, self.repo.pack_target)
            self._opened = 0.0
            old.release()  # its descriptor; what it wrote is judged by the index below
            self.repo.cut_open_packs()
            self.repo.roll_back_unfinished()  # a failed staged commit's records
            self.repo.reclaim_leftover_packs()

    def seal(self) -> None:
        """Seal the open pack and list it so (its marker removed), outside any commit.
        Bytes appended after the last commit (a commit given up) stay in it as bytes no
        index record names (history batches without their commit record, which a
        rebuild leaves out)."""
        from .writer import seal_open_pack

        seal_open_pack(self.repo, self.packw)
        self._opened = 0.0
