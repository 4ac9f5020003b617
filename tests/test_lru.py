from __future__ import annotations

from runtime.lru import LruCache, deep_size


def test_evicts_least_recently_used_by_count() -> None:
    lru = LruCache(max_entries=2, max_bytes=10**9)
    lru.put("a", "1")
    lru.put("b", "2")
    assert lru.get("a") == "1"  # a is now the most recent
    assert lru.put("c", "3") == ["b"]
    assert list(lru) == ["a", "c"] and lru.evictions == 1


def test_evicts_by_measured_bytes() -> None:
    big = "x" * 1000
    one = deep_size(big) + deep_size("a")
    lru = LruCache(max_entries=100, max_bytes=2 * one + 10)
    lru.put("a", big)
    lru.put("b", "y" * 1000)
    assert lru.bytes == 2 * one
    assert lru.put("c", "z" * 1000) == ["a"]
    assert lru.bytes <= lru.max_bytes and len(lru) == 2


def test_oversized_entry_is_not_kept_and_replacing_updates_bytes() -> None:
    lru = LruCache(max_entries=10, max_bytes=200)
    assert lru.put("huge", "x" * 1000) == [] and "huge" not in lru
    lru.put("k", "v")
    before = lru.bytes
    lru.put("k", "w")
    assert lru.bytes == before and len(lru) == 1
    lru.pop("k")
    assert lru.bytes == 0


def test_deep_size_counts_nested_objects_once() -> None:
    shared = "s" * 500
    assert deep_size([shared, shared]) < deep_size([shared, "t" * 500])
    assert deep_size({"k": [1, 2, 3]}) > deep_size({})
