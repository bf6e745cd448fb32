"""runtime.lru.LRU: the bound holds, the least recently used entry goes first, and a use
(get, setdefault, setting) protects an entry while `in` does not."""
import threading

import pytest

from graphflux.runtime.lru import LRU


def test_holds_at_most_maxsize_and_evicts_oldest():
    cache = LRU(3)
    for i in range(5):
        cache[i] = str(i)
    assert len(cache) == 3
    assert [k in cache for k in range(5)] == [False, False, True, True, True]
    assert cache.get(4) == "4"
    assert cache.get(0) is None
    assert cache.get(0, "missing") == "missing"


def test_get_and_set_count_as_use_but_contains_does_not():
    cache = LRU(2)
    cache["a"] = 1
    cache["b"] = 2
    assert cache.get("a") == 1          # "a" is now the most recent
    cache["c"] = 3
    assert "a" in cache and "b" not in cache
    cache["a"] = 10                     # overwriting is a use, not a new entry
    assert len(cache) == 2
    assert "c" in cache                 # `in` leaves "c" the least recent ...
    cache["d"] = 4
    assert "c" not in cache and cache.get("a") == 10 and cache.get("d") == 4


def test_setdefault_keeps_the_first_value_and_counts_as_use():
    cache = LRU(2)
    assert cache.setdefault("k", 1) == 1
    assert cache.setdefault("k", 2) == 1
    cache["x"] = 0
    cache.setdefault("k", 3)            # a use: "x" becomes the least recent
    cache["y"] = 0
    assert "k" in cache and "x" not in cache


def test_clear_and_falsy_values():
    cache = LRU(4)
    cache[1] = None
    cache[2] = 0
    assert 1 in cache and cache.get(2, "missing") == 0
    cache.clear()
    assert len(cache) == 0 and 1 not in cache


def test_rejects_a_useless_size():
    with pytest.raises(ValueError):
        LRU(0)


def test_threads_filling_one_key_share_one_value():
    cache = LRU(8)
    start = threading.Barrier(8)
    got = []

    def fill(i):
        start.wait()
        got.append(cache.setdefault("key", object()))
        start.wait()                    # all have their value before "key" can be evicted
        for k in range(200):
            cache[(i, k)] = k
            cache.get((i, k - 1))
    threads = [threading.Thread(target=fill, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(v) for v in got}) == 1
    assert len(cache) == 8
