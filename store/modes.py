"""Who may read a repository: its owner only.

A repository holds every protected file unencrypted (encryption comes later), so its
directories are created ``DIR_MODE`` (0700) and its files ``FILE_MODE`` (0600)
whatever the process umask, as restic and borg do. The mode is given to each
``mkdir``/``open`` that creates something (never by changing the umask, which is
process-wide: STYLE.md item 21). A umask only removes bits, so a created file or
directory can come out narrower than asked, never wider; the few directories made by
``init`` are set exactly, so an odd umask cannot lock the owner out either.
"""

from __future__ import annotations

import os
import pwd
import stat

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dir(path: str) -> None:
    """Create directory ``path`` and its missing parents with ``DIR_MODE`` (for
    directories inside a repository); an existing directory is left as it is."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        make_dir(os.path.dirname(path))
        make_dir(path)


def private_dir(path: str) -> None:
    """Create ``path`` (and missing parents, with the umask's modes: they are the user's
    directories, not the repository's) and set it to exactly ``DIR_MODE``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    make_dir(path)
    os.chmod(path, DIR_MODE)


def owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def exposure(root: str) -> str | None:
    """A warning if users other than the owner can read or enter the repository at
    ``root``, with how to fix it; None if they cannot. Only the root's mode matters:
    nobody else gets past a directory they cannot enter."""
    st = os.stat(root)
    if not st.st_mode & 0o077:
        return None
    return (f"the repository {root} can be read by users other than its owner "
            f"{owner_name(st.st_uid)} (mode {stat.filemode(st.st_mode)}), and it holds "
            f"every protected file unencrypted; restrict it with 'chmod -R go-rwx {root}'")
