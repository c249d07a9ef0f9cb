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

from anytime.store.errors import (
    EXIT_CODES,
    AnytimeError,
    DestinationError,
)

#: Every command: the module whose ``register(commands, common)`` adds its parser, and
#: its one-line help, in the order ``anytime --help`` lists them (each module's commands
#: together, in the order its ``register`` adds them). A run builds the parsers of the
#: named command's module only; every other command is a placeholder with its name and
#: help alone, so ``anytime --help`` imports no command module. A command module imports
#: at its top only what ``register`` needs; its commands import the store, vfs and
#: capture when they run.
COMMANDS = {
    "init": ("cmd_repo", "create a repository"),
    "snapshot": ("cmd_repo", "capture a directory tree as one commit"),
    "check": ("cmd_repo", "verify packs and index (read-only)"),
    "volumes": ("cmd_repo", "list protected volumes"),
    "protect": ("cmd_protect", "capture changes to trees continuously, as they happen"),
    "status": ("cmd_protect", "what the capture of each volume is doing, and how far "
                              "behind it is"),
    "log": ("cmd_read", "commits of a volume, or the versions of a file"),
    "ls": ("cmd_read", "list a directory at an instant"),
    "cat": ("cmd_read", "print a file as it was at an instant"),
    "diff": ("cmd_diff", "changes of a tree or file between two instants (or the live tree)"),
    "restore": ("cmd_restore", "put a file or tree back as it was at an instant"),
    "mark": ("cmd_labels", "name an instant of a volume"),
    "unmark": ("cmd_labels", "remove a label"),
    "find": ("cmd_labels", "search names across the whole history (where did my file go?)"),
    "policy": ("cmd_policy", "show or set a volume's retention policy (what prune keeps)"),
    "hold": ("cmd_policy", "keep instants whatever the policy or the space; list holds"),
    "release": ("cmd_policy", "release a hold"),
    "prune": ("cmd_prune", "apply the retention policies: thin history, reclaim space"),
    "mount": ("cmd_mount", "mount a volume read-only: at an instant (--at), or the "
                           "time-travel view (latest/, any instant, labels/, versions/)"),
    "umount": ("cmd_mount", "unmount a drive made by 'mount'"),
}
MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))

#: What every INSTANT argument accepts (vfs/instants.py parses them).
INSTANTS = """\
instants (--at, --from, --to):
  2026-11-24T10:03:17.25+01:00   ISO 8601, with or without a zone (none: local time)
                                 and fractions of a second; also 2026-11-24 10:03
  now, 10 minutes ago, -2h       relative (write --at=-2h, so it is no option)
  yesterday 17:00, today 9:30    a time of day
  @1764582000                    seconds since the epoch
  before-upgrade                 a label made with 'anytime mark'
  live                           (diff only) the tree on disk as it is now

paths: the original absolute path of a protected file or directory, or VOLUME:PATH.
"""


def epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    return f"{INSTANTS}\nexit codes:\n{codes}\n\n'anytime COMMAND --help' describes a command."


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help layout (descriptions and epilogs kept as written), told the
    width: left to find it itself, it imports shutil (and zlib, bz2, lzma with it) as
    soon as one argument is added, which every command would pay for."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    """The terminal's width, found as shutil.get_terminal_size finds it."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked
    (importlib.metadata takes longer to import than the rest of a command)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("anytime")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        print(f"anytime {v}")
        parser.exit()


class _Commands:
    """The subcommands as ``register`` sees them: each gets its one-line ``help`` from
    :data:`COMMANDS`, and a command whose parser gives no ``description`` gets that
    help as one, so every ``--help`` says what the command does. ``parsers`` keeps them
    by name, in order (for the man page)."""

    def __init__(self, sub):
        self._sub = sub
        self.parsers: dict[str, argparse.ArgumentParser] = {}

    def add_parser(self, name: str, **kw):
        if name not in COMMANDS:
            raise KeyError(f"command {name!r} is missing from COMMANDS in tools/cli.py")
        text = kw["help"] = COMMANDS[name][1]
        kw.setdefault("description", text[0].upper() + text[1:] + ".")
        kw.setdefault("formatter_class", _Formatter)
        self.parsers[name] = self._sub.add_parser(name, **kw)
        return self.parsers[name]


def build_commands(modules: list[str] | None = None
                   ) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``anytime`` parser and its commands' parsers by name: those of the command
    modules ``modules`` (default: all). Every other command is a placeholder with its
    help alone (listed by ``anytime --help``, parsing nothing): one run imports only
    what it needs."""
    common = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    common.add_argument("-r", "--repo", default=argparse.SUPPRESS, metavar="DIR",
                        help="repository directory (default: $ANYTIME_REPO, else "
                             "~/.local/share/anytime/repo)")
    p = argparse.ArgumentParser(
        prog="anytime", parents=[common], epilog=epilog(), formatter_class=_Formatter,
        description="Continuous data protection: any volume, at any instant, as a drive.")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = _Commands(sub)
    todo = set(MODULES if modules is None else modules)
    for name, (module, text) in COMMANDS.items():
        if module in todo:
            todo.discard(module)
            __import__(f"anytime.tools.{module}", fromlist=["register"]).register(commands, common)
        elif name not in commands.parsers:
            sub.add_parser(name, help=text, add_help=False)
    return p, commands.parsers


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    return build_commands(modules)[0]


def _command_in(argv: list[str]) -> str | None:
    """The module of the command named in ``argv`` as it is usually written (None: no
    command seen)."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("-r", "--repo"):
            skip = True  # its value follows
        elif not a.startswith("-"):
            return COMMANDS[a][0] if a in COMMANDS else None
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed with the parsers of its command's module only. ``--help``,
    ``--version`` and usage errors exit here, as argparse does."""
    module = _command_in(argv)
    parser = build_parser([module] if module else [])
    args, extra = parser.parse_known_args(argv)
    wanted = COMMANDS[args.command][0]
    if wanted != module:  # named in a way _command_in missed (say after '--rep DIR')
        parser = build_parser([wanted])
    elif not extra:
        return args
    return parser.parse_args(argv)  # the whole command line, or its usage error


#: errno -> what a write that failed with it needs (these are destination failures, 15).
_CANNOT_WRITE = {
    errno.ENOSPC: "no space left on the disk holding {0}; free space and run the command "
                  "again",
    errno.EDQUOT: "the disk quota is exhausted on the disk holding {0}; free space and run "
                  "the command again",
    errno.EROFS: "{0} is on a read-only filesystem; remount it read-write or choose another "
                 "place",
    errno.EACCES: "permission denied: {0}; run as a user who may write there, or choose "
                  "another place",
    errno.EPERM: "permission denied (operation not permitted): {0}; run as a user who may "
                 "write there, or choose another place",
    errno.EEXIST: "{0} already exists; remove it or choose another name",
}


def os_error(e: OSError) -> AnytimeError:
    """The error to show for an OSError no command turned into its own: a destination
    failure (full, read-only, permission denied, exists) is a DestinationError."""
    name = os.fsdecode(e.filename) if e.filename is not None else "the destination"
    advice = _CANNOT_WRITE.get(e.errno)
    if advice:
        return DestinationError(advice.format(name))
    return AnytimeError(f"{e.strerror or e}"
                        f"{': ' + os.fsdecode(e.filename) if e.filename else ''}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
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
        err = os_error(e)
        print(f"anytime: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as e:
        from anytime.store.repo import user_error

        from .cmd_repo import locate

        err = user_error(e, locate(args.repo))
        if err is None:
            raise
        print(f"anytime: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
