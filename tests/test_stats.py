from __future__ import annotations

from runtime.messages import ActorCounted, CacheFigures, ChildRestarted, RegistryLoaded, RegistryRejected, WatcherStarted
from runtime.stats import StatsAccumulator


def test_accumulator_folds_a_known_sequence_exactly() -> None:
    acc = StatsAccumulator()
    for event in [
        ActorCounted("cache", 10),
        ActorCounted("cache", 5),
        ActorCounted("watcher", 2),
        ChildRestarted("cache", "InjectedFault('x')", 1),
        ChildRestarted("cache", "ValueError('y')", 2),
        CacheFigures({"hits": 3, "misses": 1}),
        RegistryLoaded("/r.json", 4),
        RegistryRejected("/r.json", "bad"),
        WatcherStarted("polling", "inotify unavailable"),
    ]:
        assert acc.apply(event)
    assert not acc.apply("not an event")
    snap = acc.snapshot()
    assert snap["actors"]["cache"] == {"messages": 15, "restarts": 2, "last_failure": "ValueError('y')"}
    assert snap["actors"]["watcher"]["messages"] == 2
    assert snap["restarts"] == 2
    assert snap["cache"] == {"hits": 3, "misses": 1}
    assert snap["registry"] == {"reloads": 1, "errors": 1, "last_error": "bad", "scripts": 4}
    assert snap["watcher"] == {"backend": "polling", "reason": "inotify unavailable"}


def test_runtime_snapshot_counts_messages_per_actor(runtime) -> None:  # type: ignore[no-untyped-def]
    before = runtime.stats_snapshot()["actors"]["cache"]["messages"]
    for _ in range(300):  # more than one report batch
        runtime.cache.get_script("true").get(timeout=5)
    after = runtime.stats_snapshot()["actors"]["cache"]["messages"]
    assert after - before == 300 + 1  # the lookups, plus the flush asked by the first snapshot
