"""Blocks known to be damaged: the repository's append-only ``damaged`` file.

A block is *damaged* when its stored copy does not read back: its pack is missing or
truncated, its record fails its checksum or does not decompress to its length, it is not
where the index says, or (``check --read-data``, restore) its plaintext does not hash to
its id. Whoever meets one, a reader (mount, ``cat``, ``diff``, restore) or ``check``,
appends a *damage record* here. Readers are not the writer: they never take the writer
lock or an LMDB write transaction for this, they only append.

The writer reads the file when it takes the writer lock (:func:`load`). When a capture
meets the content of a damaged block again, it stores the block anew instead of
deduplicating against the damaged copy, and the commit points the index at the new copy:
since a block is named by its content, every instant that used the block, past ones
included, reads right again.

A record names the location it was found damaged at (pack id and offset). It is *in
force* while the index still puts the block there, and *superseded* once the index points
elsewhere (the block was stored anew): ``check`` counts superseded records and the
damaged copies left in old packs as reclaimable, not as damage.

Record: one ``write()`` with ``O_APPEND`` (atomic against other appenders on a local
filesystem), ASCII: ``\\n`` + block id hex (64) + `` `` + pack id hex (32; zeros when the
block is not indexed) + `` `` + offset (decimal) + `` `` + reason (no newline) + ``\\n``.
Lines that do not parse are ignored: the leading newline keeps a record whole after a
torn one (a crash mid-append), and blank lines are skipped.
"""

from __future__ import annotations

import os
import re

from . import modes

NAME = "damaged"
NO_PACK = bytes(16)
_RECORD = re.compile(rb"^([0-9a-f]{64}) ([0-9a-f]{32}) ([0-9]{1,20}) ?(.*)$")

#: block id -> {(pack id, offset): reason}
Damage = dict[bytes, dict[tuple[bytes, int], str]]


def record(root: str, block_id: bytes, pack_id: bytes | None, offset: int, reason: str
           ) -> bool:
    """Append a damage record; False if it could not be written (a reader that may not
    write the repository, or a full disk: the damage is still reported to the caller, and
    ``check`` finds it again)."""
    reason = " ".join(reason.split())[:300]
    line = (f"\n{block_id.hex()} {(pack_id or NO_PACK).hex()} {offset} {reason}\n"
            ).encode("ascii", "replace")
    try:
        fd = os.open(os.path.join(root, NAME),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, modes.FILE_MODE)
    except OSError:
        return False
    try:
        return os.write(fd, line) == len(line)
    except OSError:
        return False
    finally:
        os.close(fd)


def load(root: str) -> Damage:
    """Every damage record in the file (none if there is no file)."""
    try:
        with open(os.path.join(root, NAME), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    out: Damage = {}
    for line in data.split(b"\n"):
        m = _RECORD.match(line)
        if m:
            where = (bytes.fromhex(m[2].decode()), int(m[3]))
            out.setdefault(bytes.fromhex(m[1].decode()), {})[where] = m[4].decode(
                "ascii", "replace")
    return out
