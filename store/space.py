"""A full repository disk, recognised wherever the store writes and told as such.

Every write into the repository (pack appends and fsyncs, spill files, the config,
LMDB transactions) that fails for lack of space or quota raises
:class:`~anytime.store.errors.RepositoryFull`, which names the filesystem holding the
repository. It is not an ``OSError``, so capture never takes it for a source file it
could not read: the commit under way is abandoned whole (nothing past the last commit
point becomes visible), its packs are deleted by the abort or by the next writer.

LMDB reports a write that ran out of space part way as EIO ("Input/output error"), not
ENOSPC (its page flush treats a short write so): an LMDB failure counts as a full disk
when the repository's filesystem then has less than ``FULL_MARGIN`` left.
"""

from __future__ import annotations

import errno
import os

from .errors import RepositoryFull

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Free bytes under which an LMDB write failure is taken for a full disk.
FULL_MARGIN = 8 << 20
_FULL_WORDS = ("no space left", "quota exceeded")


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path``."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(path: str) -> int | None:
    """Bytes this process may still write on the filesystem holding ``path`` (root may
    use the blocks reserved for it); 0 when no inode is left; None if unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_favail == 0 and st.f_files:
        return 0
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def is_full(err: BaseException, root: str) -> bool:
    """True if ``err`` (an OSError or an lmdb.Error) means the repository's disk is full."""
    if isinstance(err, OSError):
        return err.errno in FULL_ERRNOS
    text = str(err).lower()
    if any(w in text for w in _FULL_WORDS):
        return True
    free = free_bytes(root) if "input/output error" in text else None
    return free is not None and free < FULL_MARGIN


def full_error(root: str, what: str) -> RepositoryFull:
    mnt = mount_point(root)
    free = free_bytes(root)
    left = f"{free / 1e6:.1f} MB free" if free is not None else "no space"
    return RepositoryFull(
        f"the repository's disk is full: {mnt} (the filesystem holding {root}) has {left}, "
        f"and {what} failed. Nothing of this run was committed; free space on {mnt} (or "
        f"move the repository to a larger disk) and run the command again")


def check(err: BaseException, root: str, what: str) -> None:
    """Raise :class:`RepositoryFull` instead of ``err`` if it means a full disk; return
    otherwise (the caller re-raises ``err``)."""
    if is_full(err, root):
        raise full_error(root, what) from None
