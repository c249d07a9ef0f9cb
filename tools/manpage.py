"""The man page ``anytime(1)``, written from the argument parser itself, so it says what
``--help`` says: every command with its description, arguments and options, the
instant syntax and the exit codes.

Regenerate the committed page after changing a command's arguments::

    .venv/bin/python -m anytime.tools.manpage > docs/anytime.1

(tests/test_cli_help.py fails while the committed page differs from this output).
"""

from __future__ import annotations

import argparse
import sys

from anytime.store.errors import EXIT_CODES

from .cli import INSTANTS, build_commands


def _esc(text: str) -> str:
    """Text safe in a roff line: backslashes and minus signs escaped, no leading dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _label(action: argparse.Action) -> str:
    """An option or argument as the page names it (bold option, italic value)."""
    if not action.option_strings:
        return f"\\fI{_esc(action.metavar or action.dest)}\\fR"
    value = "" if action.nargs == 0 else f" \\fI{_esc(action.metavar or action.dest.upper())}\\fR"
    return ", ".join(f"\\fB{_esc(o)}\\fR{value}" for o in action.option_strings)


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:  # argparse has no public list of a parser's arguments
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or \
                "--repo" in action.option_strings:
            continue
        out += [".TP", _label(action), _esc(action.help or "")]
    return out


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split()).removeprefix("usage: ")


def render(version: str = "") -> str:
    """The whole page, as roff (man(7) macros)."""
    top, commands = build_commands()
    lines = [
        f'.TH ANYTIME 1 "" "anytime {_esc(version)}" "User Commands"',
        ".SH NAME",
        "anytime \\- " + _esc(top.description.rstrip(".").lower()),
        ".SH SYNOPSIS",
        "\\fBanytime\\fR [\\fB\\-r\\fR \\fIDIR\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]",
        ".br",
        "\\fBanytime \\-\\-version\\fR",
        ".SH DESCRIPTION",
        _esc(top.description),
        "Each command is described below; \\fBanytime \\fICOMMAND\\fB \\-\\-help\\fR says "
        "the same.",
        ".SH OPTIONS",
    ]
    lines += _arguments(top)
    repo = next(a for a in top._actions if "--repo" in a.option_strings)
    lines += [".TP", _label(repo), _esc(repo.help)]
    lines.append(".SH COMMANDS")
    for name, parser in commands.items():
        lines += [f".SS {name}", f"\\fB{_esc(_usage(parser))}\\fR", ".PP",
                  _esc(parser.description or "")]
        lines += _arguments(parser)
    lines += [".SH INSTANTS AND PATHS", ".nf"] + [_esc(ln) for ln in INSTANTS.splitlines()]
    lines += [".fi", ".SH EXIT STATUS"]
    for code, meaning in EXIT_CODES:
        lines += [".TP", f"\\fB{code}\\fR", _esc(meaning)]
    lines += [
        ".SH ENVIRONMENT",
        ".TP", "\\fBANYTIME_REPO\\fR",
        "the repository used when \\fB\\-r\\fR/\\fB\\-\\-repo\\fR is not given",
        ".SH FILES",
        ".TP", "\\fI~/.local/share/anytime/repo\\fR",
        "the default repository (\\fI$XDG_DATA_HOME/anytime/repo\\fR when "
        "\\fBXDG_DATA_HOME\\fR is set)",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    from importlib.metadata import version

    sys.stdout.write(render(version("anytime")))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
