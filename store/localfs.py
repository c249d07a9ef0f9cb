"""Reading a local tree the way the store describes it: a file's block ids and a path's
extended attributes. Used by capture (what to store), by diff against the live tree,
and by restore (is the file at the destination already the stored one?)."""

from __future__ import annotations

import os

from .format import block_id


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


def file_block_ids(path: bytes, block_size: int, key: bytes) -> list[bytes]:
    """The ids of a local file's blocks, as a snapshot would name them (holes included)."""
    ids = []
    with open(path, "rb") as f:
        while data := f.read(block_size):
            ids.append(block_id(key, data))
    return ids
