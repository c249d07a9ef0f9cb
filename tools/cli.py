"""The ``anytime`` command: argument parsing and dispatch to the command modules.

Every command finds the repository the same way (``--repo``, ``$ANYTIME_REPO``, the
per-user default). Errors are :class:`AnytimeError` subclasses: their message is
printed as ``anytime: error: ...`` and their ``exit_code`` returned.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from anytime.store.errors import AnytimeError, DestinationError

from . import cmd_diff, cmd_labels, cmd_mount, cmd_read, cmd_repo, cmd_restore

COMMANDS = [cmd_repo, cmd_read, cmd_diff, cmd_restore, cmd_labels, cmd_mount]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", default=argparse.SUPPRESS,
                        help="repository directory (default: $ANYTIME_REPO, else "
                             "~/.local/share/anytime/repo)")
    p = argparse.ArgumentParser(
        prog="anytime", parents=[common],
        description="Continuous data protection: any volume, at any instant, as a drive.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        mod.register(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
