"""Sorted key/value pairs gathered for one commit, spilled to disk past a limit.

A commit of a large tree records millions of path and block versions; holding them in
memory until the commit would make memory grow with the size of the tree. A
:class:`SortedSpill` keeps at most ``limit`` pairs in memory; past that it sorts them
and writes them as a run to a temporary file. :meth:`items` merges the runs and the
pairs still in memory in key order; among equal keys the one added last comes last
(so an LMDB put of them in that order keeps the last).

Run file format: repeated ``klen u32 | vlen u32 | key | value`` (little-endian). The
files live in the repository's ``tmp/`` and are removed by :meth:`close`; a killed
process leaves them for the next writer to delete.
"""

from __future__ import annotations

import errno
import heapq
import operator
import os
import struct
import tempfile
from collections.abc import Iterator

from . import modes, space

_LENS = struct.Struct("<II")
DEFAULT_LIMIT = 20_000
_READ_CHUNK = 1 << 18
_KEY = operator.itemgetter(0)


class SortedSpill:
    def __init__(self, tmpdir: str, limit: int = DEFAULT_LIMIT):
        self.tmpdir = tmpdir
        self.limit = limit
        self._mem: list[tuple[bytes, int, bytes]] = []  # (key, sequence, value)
        self._runs: list[str] = []
        self._seq = 0
        self._count = 0

    def add(self, key: bytes, value: bytes) -> None:
        self._mem.append((key, self._seq, value))
        self._seq += 1
        self._count += 1
        if len(self._mem) >= self.limit:
            self._spill()

    def __len__(self) -> int:
        return self._count

    def _spill(self) -> None:
        self._mem.sort(key=_KEY)  # stable: equal keys stay in the order added
        path = None
        try:
            modes.make_dir(self.tmpdir)
            # mkstemp creates the file 0600 (modes.FILE_MODE) whatever the umask
            fd, path = tempfile.mkstemp(prefix="spill-", dir=self.tmpdir)
            pack = _LENS.pack
            with os.fdopen(fd, "wb", buffering=0) as f:
                # one write of the whole run: a Python call per field costs more than sorting
                run = b"".join([b for key, _seq, value in self._mem
                                for b in (pack(len(key), len(value)), key, value)])
                if f.write(run) != len(run):  # unbuffered: a short write is a full disk
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            if path is not None:
                os.unlink(path)
            space.check(e, os.path.dirname(self.tmpdir), "writing a spill file in tmp/")
            raise
        self._runs.append(path)
        self._mem = []

    def _read_run(self, path: str, rank: int) -> Iterator[tuple[bytes, int, bytes]]:
        """The pairs of one run, read ``_READ_CHUNK`` bytes at a time and cut in memory."""
        unpack = _LENS.unpack_from
        hs = _LENS.size
        with open(path, "rb", buffering=0) as f:
            buf, pos, n = b"", 0, 0
            while True:
                chunk = f.read(_READ_CHUNK)
                if not chunk:
                    return
                buf = buf[pos:] + chunk
                pos, end = 0, len(buf)
                while pos + hs <= end:
                    klen, vlen = unpack(buf, pos)
                    stop = pos + hs + klen + vlen
                    if stop > end:
                        break
                    k = pos + hs
                    # runs are older than what follows them: order equal keys by run,
                    # then by position within the run
                    yield buf[k:k + klen], (rank << 40) | n, buf[k + klen:stop]
                    pos = stop
                    n += 1

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every pair, sorted by key (stable: equal keys in the order they were added)."""
        self._mem.sort(key=_KEY)  # stable: equal keys stay in the order added
        rank = len(self._runs)
        mem = ((k, (rank << 40) | s, v) for k, s, v in self._mem)
        streams = [self._read_run(p, i) for i, p in enumerate(self._runs)] + [mem]
        for key, _order, value in heapq.merge(*streams):
            yield key, value

    def close(self) -> None:
        for path in self._runs:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._runs = []
        self._mem = []
