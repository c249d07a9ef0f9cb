"""Reading a local tree the way the store describes it: a path's extended attributes.
Used by capture (what to store), by diff against the live tree and by restore. (A
local file's block references: ``Repository.file_refs``.)"""

from __future__ import annotations

import os


def read_xattrs(path: bytes | int) -> dict[bytes, bytes]:
    """Extended attributes (POSIX ACLs included) of a path, not following symlinks, or of
    an open descriptor. Unreadable attributes are left out."""
    follow = isinstance(path, int)  # a descriptor takes no follow_symlinks=False
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            out[n.encode("utf-8", "surrogateescape")] = os.getxattr(path, n,
                                                                     follow_symlinks=follow)
        except OSError:
            continue
    return out
