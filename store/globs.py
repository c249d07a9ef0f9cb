"""Shell-style path patterns as regular expressions, as restic's and borg's excludes
read them: the one matcher behind exclude patterns (capture/excludes.py) and the
per-path rules of retention policies (store/retention.py).

  ``*``, ``?``, ``[abc]``, ``[!abc]``   glob within one path component (never across ``/``)
  ``**``                             any number of whole components, none included
  ``\\``                              makes the next character literal

A pattern with a ``/`` is matched against a whole path that starts with ``/``: from the
root if the pattern starts with one, else from any component boundary. Bytes in, bytes
out: paths are bytes everywhere in the store.
"""

from __future__ import annotations

import re


def component_regex(glob: bytes) -> bytes:
    """The regex of one path component's glob (bytes): ``*``/``?`` stay inside it."""
    out, i, n = [], 0, len(glob)
    while i < n:
        c = glob[i:i + 1]
        i += 1
        if c == b"*":
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(b"[^/]")
        elif c == b"\\" and i < n:
            out.append(re.escape(glob[i:i + 1]))
            i += 1
        elif c == b"[":
            j = i + (glob[i:i + 1] in (b"!", b"^"))
            j += glob[j:j + 1] == b"]"  # a ']' first is part of the set
            j = glob.find(b"]", j)
            if j < 0:
                out.append(b"\\[")
                continue
            body = glob[i:j].replace(b"\\", b"\\\\")
            if body[:1] in (b"!", b"^"):
                body = b"^" + body[1:]
            out.append(b"(?!/)[" + body + b"]")
            i = j + 1
        else:
            out.append(re.escape(c))
    return b"".join(out)


def path_regex(pattern: bytes) -> bytes:
    """The regex (to fullmatch an absolute path) of a pattern with a ``/``: from the root
    if it starts with one, else from any component boundary."""
    parts = [b"/" if pattern.startswith(b"/") else b".*/"]
    comps = [c for c in pattern.split(b"/") if c]
    for k, comp in enumerate(comps):
        last = k == len(comps) - 1
        if comp == b"**":
            parts.append(b".*" if last else b"(?:[^/]*/)*")
        else:
            parts.append(component_regex(comp) + (b"" if last else b"/"))
    return b"".join(parts)


def matcher(patterns: list[bytes]):
    """One function ``match(name, path) -> bool`` for ``patterns``: a pattern without
    ``/`` matches an entry's name anywhere, the others its whole ``path`` (which starts
    with ``/``). Name patterns become one regex, path patterns another, tried only if
    there are any."""
    names = [component_regex(p) for p in patterns if b"/" not in p]
    paths = [path_regex(p) for p in patterns if b"/" in p]
    by_name = re.compile(b"|".join(names)).fullmatch if names else None
    by_path = re.compile(b"|".join(paths)).fullmatch if paths else None

    def match(name: bytes, path: bytes) -> bool:
        return bool(by_name and by_name(name) or by_path and by_path(path))

    return match
