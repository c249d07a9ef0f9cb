"""Continuous capture: watch live trees and commit their changes within about a second.

Terms:
  tree         one protected directory tree and its volume (:class:`Tree`); one
               :class:`Watcher` captures several, through one event source and one
               writer session (store/session.py: the writer lock taken once, one open
               pack shared by every commit).
  change       what an event source (capture/events.py: fanotify for the whole
               filesystem as root, else inotify) reports: a path and what may have
               changed there. A change makes its path *dirty*; an entry appearing or
               vanishing also makes its parent directory dirty (its mtime moved); a
               directory that appears, or a lost-events overflow, makes a *tree path*
               (walked whole). See capture/pathscan.py.
  batch        the dirty paths of one tree taken together into one commit: the first
               change of a batch waits ``debounce`` seconds for the others, so a burst
               (``tar x``, a branch switch) becomes a few commits, not one per event,
               and a file written continuously is captured every ``debounce`` plus the
               time a commit takes while it changes, never once per write. Each
               captured version is one state of the file: the scan's before/after stat
               comparison and retries (capture/reader.py) hold here too.
  sweep        every ``sweep`` seconds (0: never), a scan of each whole tree against
               the stat cache: writes no event reports (a shared writable mmap) show
               there as a changed mtime or size.

Order of start: the event source watches each tree first, then each tree is scanned
whole (the first snapshot of a new volume; after a restart, a scan that reads only
files changed since, by the stat cache). A change during that scan is reconciled
again after it, so nothing falls between the two.

The instant of a commit is when its reads began (at most ``debounce`` after the first
change it holds was observed): every version it records was on disk at that instant
or after it. A batch whose paths turn out unchanged commits nothing.

Stopping: :meth:`Watcher.stop` (safe from a signal handler) ends the loop; what is
dirty then is committed before :meth:`Watcher.run` returns. A process killed instead
loses at most the changes not yet committed; its next start finds them by its scan.

Idle cost: the loop sleeps in ``select`` on the event source; without changes it wakes
only for the sweep.
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from dataclasses import dataclass, field

from anytime.store import clock, status
from anytime.store.errors import WatchUnavailable

from .events import CONTENT, ENTRY, META, OVERFLOW, TREE, EventSource
from .excludes import ANYTIME_FSTYPE, Excluder, mounts_under
from .pathscan import PathScan
from .scan import Scanner

#: Seconds a batch waits after its first change before it is committed.
DEBOUNCE = 0.2
#: Seconds between sweeps of each whole tree (0: no sweep).
SWEEP = 600.0
#: Commits kept to tell the rate of change (``status``: changes per second).
RATE_WINDOW_S = 10.0

#: The mode names ``status`` shows.
MODE = "watch"


@dataclass
class Tree:
    """One protected tree: ``vol`` (its volume record, kept current by the commits made
    through it) captured from ``source`` (absolute, bytes)."""

    vol: object
    source: bytes
    excluder: Excluder | None = None
    one_file_system: bool = False
    #: dirty paths (relative) -> walk as a tree path
    dirty: dict[bytes, bool] = field(default_factory=dict)
    dirty_since: float = 0.0  # monotonic time of the batch's first change
    dirty_since_ns: int = 0  # the same, wall clock (for status)
    commits: int = 0
    changes: int = 0  # path versions recorded by this process
    moves: int = 0  # files recorded as moved, without a read
    last_commit_ns: int = 0
    last_error: str = ""
    recent: deque = field(default_factory=deque)  # (wall ns, changes) of recent commits

    def add(self, rel: bytes, tree: bool, since: tuple[float, int] | None = None) -> None:
        """Make ``rel`` dirty; ``since``: (monotonic, wall ns) the change may date from,
        when earlier than now (it waited in the queue during a commit)."""
        if not self.dirty:
            self.dirty_since, self.dirty_since_ns = since or (clock.monotonic(),
                                                             clock.now_ns())
        if tree:
            self.dirty[rel] = True
        else:
            self.dirty.setdefault(rel, False)


class Watcher:
    """Captures ``trees`` continuously from ``events`` through writer session
    ``session`` of ``repo``; :meth:`run` until :meth:`stop`.

    ``on_commit(tree, report)``: called after each commit (and after each whole-tree
    scan) with its :class:`~anytime.capture.scan.ScanReport`."""

    def __init__(self, repo, session, trees: list[Tree], events: EventSource,
                 debounce: float = DEBOUNCE, sweep: float = SWEEP, on_commit=None,
                 progress=None, on_ready=None):
        self.repo = repo
        self.session = session
        self.trees = sorted(trees, key=lambda t: len(t.source), reverse=True)
        self.events = events
        self.debounce = debounce
        self.sweep = sweep
        self.on_commit = on_commit
        self.on_ready = on_ready  # called once the first scans are done
        self.progress = progress
        self.repo_root = os.fsencode(os.path.realpath(repo.root))
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._scanning = False  # in a whole-tree scan (start, sweep)
        self.started_ns = clock.now_ns()
        self.events_seen = 0
        self.overflows = 0

    # --- control -------------------------------------------------------------------------
    def stop(self) -> None:
        """End :meth:`run` after committing what is dirty; safe from a signal handler.
        During a whole-tree scan (the first snapshot of a big tree may take long) a stop
        from the signal handler interrupts the scan as Ctrl-C does a snapshot: nothing
        of it is committed, the chunks stored so far are kept, and :meth:`run` raises
        :class:`~anytime.capture.scan.Interrupted`."""
        self._stopping = True
        if self._scanning and threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        for t in self.trees:
            self.events.add_tree(t.source)
            self._watch_mounts(t)
        for t in self.trees:
            self._publish(t)
        for t in self.trees:
            if self._stopping:
                break
            self._scan_whole(t)
        if self.on_ready and not self._stopping:
            self.on_ready()
        next_sweep = clock.monotonic() + self.sweep if self.sweep else None
        fds = [self.events.fileno(), self._wake_r]
        self.session.on_task = self._wake  # a prune asked for by another process
        try:
            while not self._stopping:
                now = clock.monotonic()
                timeout = self.session.next_due()
                due = [t.dirty_since + self.debounce for t in self.trees if t.dirty]
                if due:
                    left = max(0.0, min(due) - now)
                    timeout = left if timeout is None else min(timeout, left)
                if next_sweep is not None:
                    left = max(0.0, next_sweep - now)
                    timeout = left if timeout is None else min(timeout, left)
                ready, _, _ = select.select(fds, [], [], timeout)
                if self._wake_r in ready:
                    self._drain_wake()
                if self.events.fileno() in ready:
                    self._take(self.events.read())
                now = clock.monotonic()
                for t in self.trees:
                    if t.dirty and now >= t.dirty_since + self.debounce:
                        self._commit(t)
                if next_sweep is not None and clock.monotonic() >= next_sweep:
                    for t in self.trees:
                        self._scan_whole(t)
                    next_sweep = clock.monotonic() + self.sweep
                self.session.run_due()  # no commit is being built here
            # stopping: what is queued now is committed
            self._take(self.events.read())
            for t in self.trees:
                if t.dirty:
                    self._commit(t)
        finally:
            for t in self.trees:
                self._publish(t, running=False)

    def _watch_mounts(self, tree: Tree) -> None:
        """fanotify marks the tree's own filesystem only: mark each one mounted inside
        it too (unless ``-x``; never anytime's own). inotify's walk covers them."""
        kind_of = getattr(self.events, "kind_of", lambda _root: self.events.kind)
        if tree.one_file_system or kind_of(tree.source) != "fanotify":
            return
        for point, fstype in mounts_under(tree.source):
            if fstype == ANYTIME_FSTYPE:
                continue
            try:
                self.events.add_tree(point)
            except WatchUnavailable as e:  # found by the sweep only
                if self.progress:
                    self.progress.warn(f"changes under {os.fsdecode(point)} are not watched "
                                       f"({e}); the sweep finds them")

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    # --- changes -------------------------------------------------------------------------
    def _take(self, changes, since: tuple[float, int] | None = None) -> None:
        """Make the paths ``changes`` name dirty in their trees (``since``: see
        :meth:`Tree.add`)."""
        repo_root = self.repo_root
        repo_inside = repo_root + b"/"
        for c in changes:
            self.events_seen += 1
            path, flags = c.path, c.flags
            if path == repo_root or path.startswith(repo_inside):
                continue  # the repository's own writes
            tree = self._tree_of(path)
            if tree is None:
                continue
            was_clean = not tree.dirty
            rel = path[len(tree.source) + 1:] if path != tree.source else b""
            if flags & OVERFLOW:
                self.overflows += 1
                tree.add(rel, True, since)
            elif flags & ENTRY:
                tree.add(rel, bool(flags & TREE), since)
                if rel:  # its directory's mtime moved
                    i = rel.rfind(b"/")
                    tree.add(rel[:i] if i > 0 else b"", False, since)
            elif flags & (CONTENT | META | TREE):
                tree.add(rel, bool(flags & TREE), since)
            if was_clean and tree.dirty:
                self._publish(tree)

    def _tree_of(self, path: bytes) -> Tree | None:
        for t in self.trees:  # longest source first: a tree inside another wins
            if path == t.source or path.startswith(t.source + b"/"):
                return t
        return None

    # --- commits -------------------------------------------------------------------------
    def _commit(self, tree: Tree) -> None:
        paths, tree.dirty = tree.dirty, {}
        started = clock.now_ns()
        began = (clock.monotonic(), started)
        scan = PathScan(self.repo, tree.vol, tree.source, paths, excluder=tree.excluder,
                        one_file_system=tree.one_file_system, session=self.session)
        scan.skip_empty = True
        scan.instant = max(started, tree.vol.horizon + 1)
        info = {"kind": "watch", "source": os.fsdecode(tree.source), "started_ns": started,
                "first_change_ns": tree.dirty_since_ns, "paths": len(paths)}
        report = scan.run(info)
        self._committed(tree, report, scan.moves)
        # what came during the commit has waited already: its batch need not wait the
        # whole debounce again
        self._take(self.events.read(), since=began)

    def _scan_whole(self, tree: Tree) -> None:
        """Scan ``tree`` whole against the stat cache (start, sweep), as one commit."""
        tree.dirty.pop(b"", None)
        scan = Scanner(self.repo, tree.vol, tree.source, progress=self.progress,
                       excluder=tree.excluder, one_file_system=tree.one_file_system,
                       session=self.session)
        scan.skip_empty = tree.vol.horizon != 0  # a new volume gets its first commit
        info = {"kind": "scan", "source": os.fsdecode(tree.source),
                "started_ns": clock.now_ns(), "by": MODE}
        self._scanning = True
        try:
            if self._stopping:
                raise KeyboardInterrupt  # stopped just before
            report = scan.run(info)
        finally:
            self._scanning = False
        if self.progress:
            self.progress.clear()
        self._committed(tree, report, 0)

    def _committed(self, tree: Tree, report, moves: int) -> None:
        if report.committed:
            tree.commits += 1
            n = report.changed + report.deleted
            tree.changes += n
            tree.moves += moves
            tree.last_commit_ns = report.instant
            tree.recent.append((clock.now_ns(), n))
            horizon = clock.now_ns() - int(RATE_WINDOW_S * 1e9)
            while tree.recent and tree.recent[0][0] < horizon:
                tree.recent.popleft()
        self._publish(tree)
        if self.on_commit and report.committed:
            self.on_commit(tree, report)

    # --- status --------------------------------------------------------------------------
    def _publish(self, tree: Tree, running: bool = True) -> None:
        status.publish(self.repo, tree.vol.name, {
            "mode": MODE, "events": self.events.kind, "pid": os.getpid(),
            "running": running, "source": os.fsdecode(tree.source),
            "started_ns": self.started_ns, "updated_ns": clock.now_ns(),
            "commits": tree.commits, "changes": tree.changes, "moves": tree.moves,
            "last_commit_ns": tree.last_commit_ns,
            "pending_since_ns": tree.dirty_since_ns if tree.dirty else None,
            "queued": len(tree.dirty), "overflows": self.overflows,
            "recent": list(tree.recent), "rate_window_s": RATE_WINDOW_S,
        })
