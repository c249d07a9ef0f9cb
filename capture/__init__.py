"""anytime.capture: sources of change turned into commits. Depends on anytime.store only.

Modes: ``scan`` walks a tree and records what differs from the stat cache (the previous
versions in the index), leaving out what its excludes name and the mounts it does not
cross (capture/excludes.py). ``watch`` (:func:`protecting`, capture/watch.py) follows
change events and commits what they name within about a second, continuously. Each call of :func:`snapshot` makes
exactly one commit, or none if it fails (packs it wrote are reclaimed later). An
interrupted one (KeyboardInterrupt) commits nothing either, but keeps the blocks it
stored, indexed, and raises :class:`Interrupted` saying how many: the next snapshot
finds them instead of storing them again.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

from anytime.store import clock
from anytime.store.errors import AnytimeError, PathNotFound, UsageError
from anytime.store.volumes import volume_for_source

from .excludes import Excluder, read_pattern_file
from .scan import Interrupted, Scanner, ScanReport

__all__ = ["snapshot", "protecting", "protect_shim", "Interrupted", "ScanReport", "read_pattern_file"]


def source_dir(path: str, what: str = "snapshot") -> str:
    """The absolute path of the directory tree ``path`` names, checked (lstat, as a scan
    does) before any volume is created: a clear error for anything else."""
    source = os.path.abspath(path)
    try:  # lstat, as the scan does: checked here, before a volume is created
        s = os.lstat(source)
    except FileNotFoundError:
        raise PathNotFound(f"{source} does not exist; {what} takes an existing directory "
                           f"tree") from None
    except OSError as e:
        raise AnytimeError(f"cannot read {source}: {e.strerror}") from None
    if stat.S_ISLNK(s.st_mode) and os.path.isdir(source):
        raise UsageError(f"{source} is a symbolic link; {what} the directory it points "
                         f"to ({os.path.realpath(source)})")
    if not stat.S_ISDIR(s.st_mode):
        raise UsageError(f"{source} is not a directory; {what} takes a directory tree "
                         f"(to protect one file, {what} the directory that holds it)")
    return source


def snapshot(repo, path: str, name: str | None = None, label: str | None = None,
             progress=None, workers: int | None = None, excludes: list[str] = (),
             one_file_system: bool = False) -> ScanReport:
    """Capture the tree at ``path`` as one commit of its volume (created on first use).

    ``excludes``: patterns of entries to leave out (syntax in capture/excludes.py);
    ``one_file_system``: do not cross into other filesystems mounted inside the tree.
    anytime's own mounts inside the tree are never captured."""
    excluder = Excluder(excludes) if excludes else None  # bad patterns: before any change
    source = source_dir(path)
    with repo.writer_lock():
        vol = volume_for_source(repo, source, name, clock.now_ns())
        scanner = Scanner(repo, vol, os.fsencode(source), progress=progress, workers=workers,
                          excluder=excluder, one_file_system=one_file_system)
        info = {"kind": "scan", "source": source, "started_ns": clock.now_ns()}
        return scanner.run(info, label=label)


#: Seconds between the prunes a running protect makes (its volumes' retention
#: policies, store/prune.py); the first one comes ``PRUNE_FIRST`` seconds after start.
PRUNE_EVERY = 3600.0
PRUNE_FIRST = 300.0


def schedule_prune(repo, session, vol_ids: list[int], every: float = PRUNE_EVERY,
                   first: float | None = None, report=None) -> None:
    """Make ``session`` prune ``vol_ids`` by their policies every ``every`` seconds
    (0: never), between two commits; ``report(message)`` hears of each prune that
    removed something, and of a failed one (which is tried again next time)."""
    if not every:
        return

    def run() -> None:  # in a thread of its own, beside the commits
        from anytime.store import policies, prune

        with repo.read_txn() as txn:
            if not any(policies.get_policy(repo, txn, v) for v in vol_ids):
                return  # nothing to thin: keep everything, and leave the packs alone
        try:
            with session.prune_lock:
                rep = prune.apply_policies(repo, vol_ids, run_gc=session.run_between,
                                           stop=session.stopping)
        except (AnytimeError, RuntimeError) as e:
            if report and not session.stopping.is_set():
                report(f"prune failed, tried again in {every:.0f} s: {e}")
            return
        if report and (rep.commits_dropped or rep.chunks_deleted):
            report(f"pruned: {rep.commits_dropped} commits dropped, "
                   f"{rep.bytes_freed / 1e6:.1f} MB freed")

    session.every(every, lambda: session.background(run),
                  min(PRUNE_FIRST, every) if first is None else first)


@contextmanager
def protecting(repo, paths: list[str], name: str | None = None, excludes: list[str] = (),
               one_file_system: bool = False, events: str = "auto", progress=None,
               on_commit=None, prune_every: float = PRUNE_EVERY, report=None, **watch_kw):
    """``with protecting(repo, paths) as watcher: watcher.run()``: continuous capture of
    the trees at ``paths`` (each a volume, created on first use; ``name`` names the
    volume of a single path) through one writer session, until ``watcher.stop()``.

    ``events``: the change-event source (capture/events.py: "auto", "fanotify",
    "inotify"); ``watch_kw``: :class:`~anytime.capture.watch.Watcher` settings
    (``debounce``, ``sweep``); ``prune_every``: seconds between prunes by the volumes'
    policies (0: never; :func:`schedule_prune`). Checks everything (paths, patterns, the event source,
    the writer lock) before any volume is created."""
    from anytime.store.session import WriterSession

    from .events import open_source
    from .watch import Tree, Watcher

    if name and len(paths) > 1:
        raise UsageError("--name names the volume of one tree; protect several trees "
                         "without it (each volume is named after its path)")
    excluder = Excluder(excludes) if excludes else None
    sources = list(dict.fromkeys(source_dir(p, "protect") for p in paths))
    with open_source(events) as source, WriterSession(repo) as session:
        trees = [Tree(volume_for_source(repo, s, name, clock.now_ns()), os.fsencode(s),
                      excluder, one_file_system) for s in sources]
        watcher = Watcher(repo, session, trees, source, progress=progress,
                          on_commit=on_commit, **watch_kw)
        schedule_prune(repo, session, [t.vol.id for t in trees], prune_every, report=report)
        try:
            yield watcher
        finally:
            watcher.close()


def protect_shim(repo, path: str, name: str | None = None, sync: bool = False, progress=None,
                 on_ready=None, warn=None, strict: bool = False,
                 prune_every: float = PRUNE_EVERY, report=None):
    """Every-write capture of the tree at ``path`` (capture/shim.py): its volume (created
    on first use) is scanned whole, then a passthrough filesystem is mounted over
    ``path`` and every operation through it recorded with its instant, until it is
    unmounted. ``warn(message)`` is told of files already open under ``path`` (their
    writes bypass the shim). Returns the recorder (its counts)."""
    from anytime.fusekit.mounting import SignalUnmount
    from anytime.store.session import WriterSession

    from . import shim as shim_  # (the module: this function is protect_shim)

    source = source_dir(path, "protect")
    shim_.clear_dead_mount(os.fsencode(source))
    # signals blocked before any thread starts (the session's own included): a signal
    # then unmounts the shim, which ends it cleanly
    with SignalUnmount(source) as stop, WriterSession(repo) as session:
        vol = volume_for_source(repo, source, name, clock.now_ns())
        scan = Scanner(repo, vol, os.fsencode(source), progress=progress, session=session)
        scan.skip_empty = vol.horizon != 0
        scan.run({"kind": "scan", "source": source, "started_ns": clock.now_ns(),
                  "by": "shim"})
        if progress:
            progress.clear()
        if warn:
            for pid, p in shim_.open_elsewhere(os.fsencode(source))[:20]:
                warn(f"{os.fsdecode(p)} is open in process {pid}: its writes through that "
                     f"descriptor bypass the shim (reopen it)")
        schedule_prune(repo, session, [vol.id], prune_every, report=report)
        if stop.signum is not None:  # stopped during the scan: nothing to mount
            return shim_.Recorder(repo, session, vol, os.fsencode(source))
        return shim_.serve(repo, session, vol, os.fsencode(source), sync=sync,
                           on_ready=on_ready, strict=strict)
