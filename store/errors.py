"""Errors people meet, each with a plain message and a stable exit code.

Every failure a user can act on is one class here. The CLI prints ``str(err)`` and
exits with ``err.exit_code``; the codes are part of the interface and never change.

Exit codes: :data:`EXIT_CODES` below (``anytime --help`` and the man page print it).
"""

from __future__ import annotations

#: (code, meaning) of every exit code anytime returns.
EXIT_CODES = (
    (0, "success"),
    (1, "a comparison found differences (diff --exit-code), or a general error"),
    (2, "bad usage: an argument that cannot be parsed"),
    (3, "a snapshot or restore completed partially (some entries were skipped)"),
    (10, "no repository at the location, it is not this user's, or it is damaged / of "
         "another format"),
    (11, "another process holds the repository's writer lock"),
    (12, "the volume or path was never protected"),
    (13, "the path does not exist at the requested instant"),
    (14, "the instant is before history starts, or cannot be understood"),
    (15, "the destination cannot be written (full, read-only, exists)"),
    (16, "stored data is damaged (checksum mismatch, missing pack), or was never "
         "captured (a file unreadable when its version was recorded)"),
    (17, "a mount failed or the mountpoint is unusable"),
    (18, "the repository's disk is full (nothing of the run was committed)"),
    (19, "changes to a tree cannot be watched (no fanotify or inotify for it, or "
         "inotify's watch limit reached)"),
    (130, "interrupted (Ctrl-C)"),
)


class AnytimeError(Exception):
    """Base of every error meant for users."""

    exit_code = 1


class UsageError(AnytimeError):
    exit_code = 2


class Held(AnytimeError):
    """A change a hold forbids: removing or moving a label a hold in force names."""

    exit_code = 1


class PartialError(AnytimeError):
    """The operation finished but skipped some entries (listed in the message)."""

    exit_code = 3


class RepositoryNotFound(AnytimeError):
    exit_code = 10


class RepositoryFormatError(AnytimeError):
    exit_code = 10


class RepositoryExists(AnytimeError):
    exit_code = 10


class RepositoryAccessDenied(AnytimeError):
    """The repository exists but this user may not read or write it."""

    exit_code = 10


class RepositoryLocked(AnytimeError):
    exit_code = 11


class UnknownVolume(AnytimeError):
    exit_code = 12


class NotProtected(AnytimeError):
    exit_code = 12


class PathNotFound(AnytimeError):
    exit_code = 13


class InstantError(AnytimeError):
    exit_code = 14


class BeforeHistory(InstantError):
    exit_code = 14


class DestinationError(AnytimeError):
    exit_code = 15


class DamagedData(AnytimeError):
    exit_code = 16


class PackMissing(DamagedData):
    """A pack the index names is not in the repository's pack store."""


class ContentUnavailable(DamagedData):
    """A version whose content was never captured: the file could not be read then."""


class MountError(AnytimeError):
    exit_code = 17


class RepositoryIOError(AnytimeError):
    """Reading or writing the repository's packs failed (an I/O error of its disk, not a
    full one): the message names the pack and the store. Not an OSError, so that capture
    never takes it for a source file it could not read."""

    exit_code = 1


class RepositoryFull(AnytimeError):
    """The disk (or quota) holding the repository is full: the message names it. Not an
    OSError, so that capture never takes it for a source file it could not read."""

    exit_code = 18


class WatchUnavailable(AnytimeError):
    """The change-event source asked for cannot watch a tree (capture/events.py): no
    fanotify (not root, old kernel) or no inotify; the message says which and what to
    use instead."""

    exit_code = 19


class FilesystemNotMarkable(WatchUnavailable):
    """fanotify cannot mark the filesystem holding a tree (overlayfs, a filesystem
    without file handles or with several fsids, EXDEV/ENODEV/EOPNOTSUPP/EINVAL); the
    automatic source then watches that tree with inotify instead."""


class WatchLimitReached(WatchUnavailable):
    """inotify ran out of watches (``fs.inotify.max_user_watches``) while adding the
    directories of a tree: the message says how to raise the limit."""
