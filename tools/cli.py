"""The ``anytime`` command: argument parsing and dispatch to the command modules.

Every command finds the repository the same way (``--repo``, ``$ANYTIME_REPO``, the
per-user default). Errors are :class:`AnytimeError` subclasses: their message is
printed as ``anytime: error: ...`` and their ``exit_code`` returned.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from anytime.store.errors import AnytimeError, DestinationError, RepositoryFormatError

#: Command modules, each with ``register(sub, common)``; ``COMMAND_MODULES`` maps a
#: command name to its module so that one run imports only what it needs.
MODULES = ["cmd_repo", "cmd_read", "cmd_diff", "cmd_restore", "cmd_labels", "cmd_mount"]
COMMAND_MODULES = {
    "init": "cmd_repo", "snapshot": "cmd_repo", "volumes": "cmd_repo", "check": "cmd_repo",
    "log": "cmd_read", "ls": "cmd_read", "cat": "cmd_read",
    "diff": "cmd_diff", "restore": "cmd_restore",
    "mark": "cmd_labels", "unmark": "cmd_labels", "find": "cmd_labels",
    "mount": "cmd_mount", "umount": "cmd_mount",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", default=argparse.SUPPRESS,
                        help="repository directory (default: $ANYTIME_REPO, else "
                             "~/.local/share/anytime/repo)")
    p = argparse.ArgumentParser(
        prog="anytime", parents=[common],
        description="Continuous data protection: any volume, at any instant, as a drive.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only else MODULES:
        importlib.import_module(f"anytime.tools.{name}").register(sub, common)
    return p


def _command_in(argv: list[str]) -> str | None:
    """The module of the command named in ``argv`` (None: parse with every command)."""
    for i, a in enumerate(argv):
        if a == "--repo":
            continue
        if i > 0 and argv[i - 1] == "--repo" or a.startswith("-"):
            continue
        return COMMAND_MODULES.get(a)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "repo"):
        args.repo = None
    try:
        return args.func(args) or 0
    except AnytimeError as e:
        print(f"anytime: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("anytime: interrupted; nothing further was committed", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            err = DestinationError(f"no space left on the disk ({e.filename or 'repository'});"
                                   f" free space and run the command again")
        elif e.errno == errno.EROFS:
            err = DestinationError(f"{e.filename or 'the destination'} is on a read-only "
                                   f"filesystem")
        else:
            err = AnytimeError(f"{e.strerror or e}"
                               f"{': ' + os.fsdecode(e.filename) if e.filename else ''}")
        print(f"anytime: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as e:
        import lmdb

        if not isinstance(e, lmdb.Error):
            raise
        full = "space" in str(e).lower()
        err = (DestinationError("no space left on the repository's disk; free space and run "
                                "the command again (nothing was committed)") if full else
               RepositoryFormatError(f"the repository index could not be used: {e}; "
                                     f"run 'anytime check'"))
        print(f"anytime: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
