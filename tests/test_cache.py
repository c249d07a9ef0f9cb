"""The store's small cache of decompressed blocks."""

from __future__ import annotations

import threading
import time

import pytest

from anytime.store.repo import BlockCache


def test_lru_bound_in_bytes():
    c = BlockCache(max_bytes=100)
    for i in range(10):
        c.put(bytes([i]), b"x" * 20)
    assert c.get(bytes([0])) is None, "the oldest blocks are evicted"
    assert c.get(bytes([9])) == b"x" * 20
    c.put(b"big", b"y" * 60)  # larger than a quarter of the cache: not kept
    assert c.get(b"big") is None


def test_concurrent_loads_of_one_block_load_once():
    c = BlockCache()
    calls = []
    gate = threading.Event()

    def load():
        calls.append(1)
        gate.wait(2)
        return b"data"

    results = []
    threads = [threading.Thread(target=lambda: results.append(c.get_or_load(b"k", load)))
               for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == [b"data"] * 4
    assert len(calls) == 1


def test_failed_load_is_retried_by_a_waiter():
    c = BlockCache()
    attempts = []

    def load():
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(0.1)
            raise OSError("transient")
        return b"ok"

    out = []
    t = threading.Thread(target=lambda: out.append(c.get_or_load(b"k", load)))
    with pytest.raises(OSError):
        threading.Timer(0.02, t.start).start()
        c.get_or_load(b"k", load)
    t.join(5)
    assert out == [b"ok"] and len(attempts) == 2


def test_a_load_in_flight_is_left_to_its_loader_without_wait():
    c = BlockCache()
    gate = threading.Event()
    started = threading.Event()

    def slow():
        started.set()
        gate.wait(5)
        return b"slow"

    t = threading.Thread(target=lambda: c.get_or_load(b"k", slow))
    t.start()
    assert started.wait(5)
    t0 = time.monotonic()
    assert c.get_or_load(b"k", lambda: b"again", wait=False) is None
    assert time.monotonic() - t0 < 1, "returned at once, not after the load"
    gate.set()
    t.join(5)
    assert c.get_or_load(b"k", lambda: b"again", wait=False) == b"slow"
    assert c.get_or_load(b"new", lambda: b"loaded", wait=False) == b"loaded"
