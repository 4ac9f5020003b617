from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runtime import RegistryError, Runtime, ScriptNotFound, init_cache
from runtime.registry_cache import HIT_BATCH
from runtime.lru import deep_size
from runtime.testing import write_registry


def _scripts(n: int) -> list[dict[str, object]]:
    return [{"id": f"s{i}", "command": ["true"], "description": "d" * 50} for i in range(n)]


def test_stats_exact_after_a_known_sequence_through_the_proxy(
    start_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    rt = start_runtime(write_registry(tmp_path / "r.json", _scripts(5)), cache_size=3)
    cache = rt.cache
    for script_id in ["s0", "s1", "s0", "s2", "s3", "s0", "s1"]:
        cache.get_script(script_id).get(timeout=5)
    with pytest.raises(ScriptNotFound, match="unknown script 'nope'"):
        cache.get_script("nope").get(timeout=5)
    # s0 miss, s1 miss, s0 hit, s2 miss, s3 miss (evicts s1), s0 hit, s1 miss (evicts s2), nope miss
    stats = cache.stats().get(timeout=5)
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["entries"]) == (2, 6, 2, 3)
    assert stats["hit_rate"] == pytest.approx(2 / 8)
    snapshot = rt.stats_snapshot()
    assert snapshot["cache"]["hits"] == 2 and snapshot["cache"]["misses"] == 6
    assert snapshot["actors"]["cache"]["messages"] >= 9


def test_lru_bounded_by_bytes_and_memory_usage_is_measured(
    start_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    registry = write_registry(tmp_path / "r.json", _scripts(10))
    rt = start_runtime(registry)
    one = rt.cache.get_script("s0").get(timeout=5)
    entry_bytes = deep_size(one) + deep_size("s0")
    assert rt.cache.stats().get(timeout=5)["memory_usage"] == entry_bytes
    rt.stop()
    rt = start_runtime(registry, cache_memory_mb=(3.5 * entry_bytes) / (1024 * 1024))
    for i in range(6):
        rt.cache.get_script(f"s{i}").get(timeout=5)
    stats = rt.cache.stats().get(timeout=5)
    assert stats["entries"] == 3 and stats["evictions"] == 3
    assert stats["memory_usage"] <= stats["max_bytes"]


def test_facade_as_the_specification_writes_it(registry_file: Path) -> None:
    cache = init_cache(str(registry_file), cache_size=100)
    try:
        script = cache.get_script("echo")
        assert script.id == "echo" and script.arguments["text"].required
        for _ in range(HIT_BATCH * 2 + 5):  # crosses the batch boundary twice
            assert cache.get_script("echo") is script
        with pytest.raises(ScriptNotFound):
            cache.get_script("missing")
        stats = cache.get_stats()
        assert stats["hits"] == HIT_BATCH * 2 + 5
        assert stats["misses"] == 2
        assert stats["evictions"] == 0
        assert stats["hit_rate"] == pytest.approx((HIT_BATCH * 2 + 5) / (HIT_BATCH * 2 + 7))
        assert stats["memory_usage"] > 0
        assert cache.get_stats()["hits"] == HIT_BATCH * 2 + 5  # reporting twice never counts twice
    finally:
        cache.close()


def test_facade_hits_from_many_threads_all_counted(registry_file: Path) -> None:
    import threading

    cache = init_cache(registry_file)
    try:
        cache.get_script("true")
        threads = [threading.Thread(target=lambda: [cache.get_script("true") for _ in range(1000)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cache.get_stats()["hits"] == 4000
    finally:
        cache.close()


def test_invalid_registry_at_start_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text('{"scripts": [{"id": "a"}]}')
    with pytest.raises(RegistryError, match="script 'a' \\(#1\\), field 'command'"):
        init_cache(path)
