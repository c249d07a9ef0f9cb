"""A pack store that fails on command, for tests: :class:`FaultyPackStore` wraps any
other store (store/packstore.py) and passes every call through until told otherwise.

Faults (each raises what the contract says the real failure raises, built by the
wrapped store, so the errors are those users would see):
  - :meth:`~FaultyPackStore.fail`: the next ``create``, ``append``, ``seal``, ``sync`` or
    ``flush``
    (after ``after`` that succeed) fails with an I/O error; a failing ``append`` first
    writes half its bytes, as a real failed write can (a torn tail);
  - :meth:`~FaultyPackStore.fill_disk`: appends fail as on a full disk once ``room``
    more bytes are written (the part that fits is written), until
    :meth:`~FaultyPackStore.make_room`;
  - :meth:`~FaultyPackStore.fail_reads`: ``read`` and ``size`` fail with an I/O error;
  - :meth:`~FaultyPackStore.truncate` and :meth:`~FaultyPackStore.flip`: cut a sealed
    pack short, or flip bits of one of its bytes, now (rewritten through the wrapped
    store, so the damage is really there: the local store's file changes);
  - :meth:`~FaultyPackStore.when_sealed`: call a function with each pack id sealed
    (to damage a pack of a snapshot while it runs).
Thread-safe as the wrapped store is.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator

from .packstore import PackStore

WRITE_OPS = ("create", "append", "seal", "sync", "flush")


def _eio() -> OSError:
    return OSError(errno.EIO, os.strerror(errno.EIO))


class _Handle:
    __slots__ = ("pack_id", "inner")

    def __init__(self, pack_id: bytes, inner):
        self.pack_id, self.inner = pack_id, inner


class FaultyPackStore(PackStore):
    def __init__(self, inner: PackStore):
        self.inner = inner
        self.root, self.where = inner.root, inner.where
        self.can_flush = inner.can_flush
        self._lock = threading.Lock()
        self._fail: dict[str, list[int]] = {}  # op -> [calls to let through, to fail]
        self._room: int | None = None  # bytes appends may still write (None: no limit)
        self._sealed_hooks: list[Callable[[bytes], None]] = []
        #: calls seen, by operation (tests check where a fault hit)
        self.calls = dict.fromkeys((*WRITE_OPS, "read"), 0)

    # --- commands --------------------------------------------------------------------
    def fail(self, op: str, after: int = 0, count: int = 1) -> None:
        """Let ``after`` more calls of ``op`` (one of ``WRITE_OPS``) succeed, then fail
        ``count`` of them with EIO."""
        if op not in WRITE_OPS:
            raise ValueError(f"{op} is not one of {WRITE_OPS}")
        with self._lock:
            self._fail[op] = [after, count]

    def fail_reads(self, after: int = 0, count: int = 1) -> None:
        with self._lock:
            self._fail["read"] = [after, count]

    def fill_disk(self, room: int = 0) -> None:
        """Appends fail as on a full disk once ``room`` more bytes are written."""
        with self._lock:
            self._room = room

    def make_room(self) -> None:
        with self._lock:
            self._room = None
            self._fail.clear()

    def when_sealed(self, action: Callable[[bytes], None]) -> None:
        self._sealed_hooks.append(action)

    def truncate(self, pack_id: bytes, size: int) -> None:
        """Cut pack ``pack_id`` to ``size`` bytes: the contract's ``truncate``, and a
        fault when called by a test on a sealed pack."""
        self.inner.truncate(pack_id, size)

    def flip(self, pack_id: bytes, offset: int, mask: int = 0x01) -> None:
        """XOR the byte at ``offset`` of sealed pack ``pack_id`` with ``mask``."""
        def flipped(data: bytearray) -> bytearray:
            data[offset] ^= mask
            return data
        self._rewrite(pack_id, flipped)

    def _rewrite(self, pack_id: bytes, change) -> None:
        inner = self.inner
        data = change(bytearray(inner.read(pack_id, 0, inner.size(pack_id))))
        inner.delete(pack_id)
        h = inner.create(pack_id)
        inner.append(h, bytes(data))
        inner.seal(h)
        inner.sync([pack_id])

    # --- faults ----------------------------------------------------------------------
    def _due(self, op: str) -> bool:
        """Count a call of ``op``; True if it must fail."""
        with self._lock:
            self.calls[op] += 1
            plan = self._fail.get(op)
            if plan is None:
                return False
            if plan[0] > 0:
                plan[0] -= 1
                return False
            plan[1] -= 1
            if plan[1] <= 0:
                del self._fail[op]
            return True

    def _fits(self, n: int) -> int | None:
        """How many of ``n`` bytes an append may write before the disk is full (None:
        all, and it succeeds)."""
        with self._lock:
            if self._room is None or n <= self._room:
                if self._room is not None:
                    self._room -= n
                return None
            fits, self._room = self._room, 0
            return fits

    # --- the interface -----------------------------------------------------------------
    def init(self) -> None:
        self.inner.init()

    def create(self, pack_id: bytes) -> _Handle:
        if self._due("create"):
            raise self.inner.write_error(_eio(), "writing a pack", pack_id)
        return _Handle(pack_id, self.inner.create(pack_id))

    def append(self, handle: _Handle, data) -> None:
        data = memoryview(data)
        if self._due("append"):
            self.inner.append(handle.inner, data[:len(data) // 2])
            raise self.inner.write_error(_eio(), "writing a pack", handle.pack_id)
        fits = self._fits(len(data))
        if fits is not None:
            self.inner.append(handle.inner, data[:fits])
            raise self.inner.full_error("writing a pack")
        self.inner.append(handle.inner, data)

    def seal(self, handle: _Handle) -> None:
        if self._due("seal"):
            raise self.inner.write_error(_eio(), "writing a pack", handle.pack_id)
        self.inner.seal(handle.inner)
        for action in list(self._sealed_hooks):
            action(handle.pack_id)

    def sync(self, pack_ids: Iterable[bytes]) -> None:
        pack_ids = list(pack_ids)
        if self._due("sync"):
            raise self.inner.write_error(_eio(), "making packs durable")
        self.inner.sync(pack_ids)

    def flush(self, handle: _Handle) -> None:
        if self._due("flush"):
            raise self.inner.write_error(_eio(), "writing a pack", handle.pack_id)
        self.inner.flush(handle.inner)

    def discard(self, handle: _Handle) -> None:
        self.inner.discard(handle.inner)

    def read(self, pack_id: bytes, offset: int, length: int) -> bytes:
        if self._due("read"):
            raise self.inner.read_error(_eio(), pack_id)
        return self.inner.read(pack_id, offset, length)

    def will_read(self, pack_id: bytes, offset: int, length: int) -> None:
        self.inner.will_read(pack_id, offset, length)

    def size(self, pack_id: bytes) -> int:
        with self._lock:
            failing = "read" in self._fail and self._fail["read"][0] == 0
        if failing:
            raise self.inner.read_error(_eio(), pack_id)
        return self.inner.size(pack_id)

    def list(self) -> Iterator[bytes]:
        return self.inner.list()

    def delete(self, pack_id: bytes) -> None:
        self.inner.delete(pack_id)

    def close(self) -> None:
        self.inner.close()
