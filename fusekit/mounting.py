"""FUSE plumbing shared by the point-in-time mount (vfs/fuse.py) and the shim
(capture/shim.py): which libfuse mfusepy loads, ending a mount on a signal, detaching
one, and raising its readahead. Imports no other part of anytime.

Terms:
  detach       unmount lazily (``fusermount3 -u -z``): files still open keep working
               until closed, the mount point is free at once.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

log = logging.getLogger("anytime.mount")

#: Largest read request of a mount: with the readahead raised to match, sequential reads
#: arrive in 1 MiB requests (one block of the default size).
MAX_READ = 1 << 20


def load_mfusepy():
    """The mfusepy module, bound to libfuse 3 (libfuse 2 may be installed too; mfusepy
    reads FUSE_LIBRARY_NAME at import to pick the library)."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy

    return mfusepy


class SignalUnmount:
    """Ends a mount cleanly on SIGINT (Ctrl-C), SIGTERM or SIGHUP.

    libfuse's own handlers for these stop its loop with an error (mfusepy then raises
    ``RuntimeError: 8``). Instead, while the mount is served, the three are blocked in
    every thread (libfuse's threads inherit the mask of the thread that serves) and a
    watcher thread takes them with ``sigwait`` and detaches the mount (``fusermount3 -u
    -z``, as ``anytime umount --lazy``): the loop then ends as after any unmount. Files
    still open keep reading until closed, then the process exits; a second signal ends it
    at once (exit 128 + signal). Where signals cannot be masked (Windows), nothing is
    changed."""

    SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP}) \
        if hasattr(signal, "SIGHUP") else frozenset()
    _WAKE = getattr(signal, "SIGUSR1", None)  # ends the watcher when serving ends

    def __init__(self, mountpoint: str):
        self.mountpoint = mountpoint
        self.signum: int | None = None
        self._old = None
        self._done = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SignalUnmount:
        if (not hasattr(signal, "pthread_sigmask") or self._WAKE is None
                or threading.current_thread() is not threading.main_thread()):
            return self
        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS | {self._WAKE})
        self._thread = threading.Thread(target=self._watch, name="anytime-signals",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._done = True
        signal.pthread_kill(self._thread.ident, self._WAKE)
        self._thread.join(5)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old)

    def _watch(self) -> None:
        while True:
            sig = signal.sigwait(self.SIGNALS | {self._WAKE})
            if self._done:
                return
            if sig == self._WAKE:
                continue
            if self.signum is not None:
                log.warning("%s again: stopping now; files still open under %s lose it",
                            signal.Signals(sig).name, self.mountpoint)
                logging.shutdown()
                os._exit(128 + sig)
            self.signum = sig
            log.info("%s: unmounting %s", signal.Signals(sig).name, self.mountpoint)
            detach(self.mountpoint)


def detach(mountpoint: str) -> None:
    """Detach the mount at ``mountpoint`` now (lazily: open files keep working)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", "-z", mountpoint] if tool else ["umount", "-l", mountpoint]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        log.error("could not unmount %s: %s", mountpoint, e)
        return
    if r.returncode != 0:
        log.error("could not unmount %s: %s", mountpoint, (r.stderr or r.stdout).strip())


def mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the filesystem mounted at ``mountpoint`` (from mountinfo)."""
    target = os.fsencode(os.path.realpath(mountpoint))
    found = None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                parts = line.split()
                mnt = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), parts[4])
                if mnt == target:
                    found = parts[2].decode()  # the last (topmost) mount wins
    except OSError:
        return None
    return found


def raise_readahead(mountpoint: str, kb: int = MAX_READ // 1024) -> bool:
    """Raise the mount's readahead so sequential reads arrive in MAX_READ requests.

    Needs root (sysfs); without it reads stay at the kernel default (128 KiB)."""
    dev = mount_device(mountpoint)
    if dev is None:
        return False
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
        return True
    except OSError as e:
        log.info("could not raise readahead of %s (%s): %s", mountpoint, dev, e)
        return False
