"""Small helpers for what the commands print: counted nouns and aligned columns."""

from __future__ import annotations

#: Nouns whose plural is not the singular plus "s".
_IRREGULAR = {"entry": "entries", "directory": "directories", "dir": "dirs",
              "copy": "copies"}


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun that agrees with it: ``1 file``, ``2 files``, ``0 entries``."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {nouns or _IRREGULAR.get(noun) or noun + 's'}"


def columns(rows: list[list[str]], right: set[int] = frozenset(), sep: str = "  "
            ) -> list[str]:
    """``rows`` as lines whose columns line up, each as wide as its widest cell; the
    columns numbered in ``right`` are right-aligned (numbers). Trailing spaces dropped."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    out = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(r)]
        out.append(sep.join(cells).rstrip())
    return out
