"""What a running capture says about itself: status files in the repository.

Terms:
  status file  ``run/<volume name>.json`` in the repository (private, as every file
               there), written whole (a temporary file renamed over it) by the process
               protecting that volume whenever its state changes: when it starts, when
               a first change waits after a quiet spell, at each commit, when it stops.
               Never on a timer: an idle capture writes nothing and wakes for nothing.
               ``anytime status`` reads it, with the index for what is committed.
  running      the status file's ``pid`` is alive and holds the repository's writer
               lock (a status file left by a killed process says it was running; the
               lock, released by the kernel when a process dies, says it is not).

A status file is not part of the format (docs/format.md): nothing reads it to find
data, and a lost one only blinds ``status`` until the next write.
"""

from __future__ import annotations

import json
import os

from . import modes

RUN_DIR = "run"
#: what the last prune did (not a volume's status file: it has no ``volume`` key)
PRUNE_FILE = "prune.json"


def _dir(repo) -> str:
    return os.path.join(repo.root, RUN_DIR)


def publish(repo, volume: str, state: dict) -> None:
    """Write the status file of ``volume`` (best effort: a full disk or a read-only
    repository leaves the old one, as a status is only a view of the capture)."""
    _write(repo, volume.encode().hex() + ".json",  # any volume name, as a file name
           dict(state, volume=volume))


def publish_prune(repo, result: dict) -> None:
    """Write ``run/prune.json``: what the last prune did per volume (``status`` says when
    a capacity cap thinned beyond the policy). Best effort, as :func:`publish`."""
    _write(repo, PRUNE_FILE, result)


def last_prune(repo) -> dict:
    try:
        with open(os.path.join(_dir(repo), PRUNE_FILE)) as f:
            got = json.load(f)
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def _write(repo, name: str, obj: dict) -> None:
    d = _dir(repo)
    tmp = os.path.join(d, f".{name}.{os.getpid()}.tmp")
    try:
        modes.make_dir(d)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     modes.FILE_MODE)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.rename(tmp, os.path.join(d, name))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def published(repo) -> dict[str, dict]:
    """Every status file's state, by volume name, with ``running`` set as above."""
    out: dict[str, dict] = {}
    try:
        names = os.listdir(_dir(repo))
    except FileNotFoundError:
        return out
    locked = writer_locked(repo.root)
    for n in names:
        if not n.endswith(".json") or n.startswith("."):
            continue
        try:
            with open(os.path.join(_dir(repo), n)) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict) or "volume" not in state:
            continue
        state["running"] = bool(state.get("running")) and locked and _alive(state.get("pid"))
        out[state["volume"]] = state
    return out


def writer_locked(root: str) -> bool:
    """True if some process holds the writer lock of the repository at ``root``: its
    ``flock`` is listed in ``/proc/locks``. Read, never tried: taking the lock even
    shared for a moment would make a writer starting then fail."""
    try:
        s = os.stat(os.path.join(root, "lock"))
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    want = f"{os.major(s.st_dev):02x}:{os.minor(s.st_dev):02x}:{s.st_ino}"
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and want in fields and "->" not in fields:
            return True
    return False


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
