from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pykka
import pytest

from runtime import ManualClock, Runtime, RuntimeStopped, SupervisorEscalated
from runtime.supervision import Backoff, RestartPolicy
from runtime.testing import inject_fault, replaced, wait_until


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    low = Backoff(0.1, 1.0, rng=lambda: 0.0)
    high = Backoff(0.1, 1.0, rng=lambda: 0.999999)
    assert [round(low.delay(k), 3) for k in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert [round(high.delay(k), 3) for k in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_policy_escalates_past_intensity_and_forgets_old_failures() -> None:
    policy = RestartPolicy(max_restarts=2, window=10.0, backoff=Backoff(1.0, 8.0, rng=lambda: 1.0), reset_after=30.0)
    assert policy.on_failure("a", 0.0) == 1.0
    assert policy.on_failure("a", 1.0) == 2.0
    assert policy.on_failure("a", 2.0) is None  # third failure within 10 s
    policy = RestartPolicy(max_restarts=2, window=10.0, backoff=Backoff(1.0, 8.0, rng=lambda: 1.0), reset_after=30.0)
    policy.on_failure("a", 0.0)
    policy.on_failure("a", 5.0)
    assert policy.on_failure("a", 16.0) == 4.0  # the failure at 0 left the window; backoff keeps growing
    assert policy.on_failure("b", 16.0) == 1.0  # children are independent
    assert policy.on_failure("a", 60.0) == 1.0  # quiet for 30 s: backoff starts over
    assert policy.restarts("a") == 4


def _start(start_runtime: Callable[..., Runtime], registry: Path, clock: ManualClock, **settings: object) -> Runtime:
    settings.setdefault("backoff_min", 1.0)
    settings.setdefault("backoff_max", 4.0)
    return start_runtime(registry, clock=clock, watcher="polling", poll_interval=10**6, **settings)


def test_failed_child_is_restarted_after_its_backoff(start_runtime: Callable[..., Runtime], registry_file: Path) -> None:
    clock = ManualClock()
    rt = _start(start_runtime, registry_file, clock)
    assert rt.cache.get_script("echo").get(timeout=5).id == "echo"
    old = inject_fault(rt, "cache")
    wait_until(lambda: rt.directory.get("cache") is None, message="cache not taken out of routing")
    pending = wait_until(lambda: [d for d in clock.pending() if d < 100])
    assert 0.5 <= pending[0] <= 1.0  # first restart: backoff_min with jitter in its upper half
    clock.advance(pending[0])
    wait_until(lambda: replaced(rt, "cache", old), message="cache not restarted")
    assert rt.cache.get_script("echo").get(timeout=5).id == "echo"
    snapshot = rt.stats_snapshot()
    assert snapshot["actors"]["cache"]["restarts"] == 1
    assert "InjectedFault" in snapshot["actors"]["cache"]["last_failure"]
    assert snapshot["restarts"] == 1
    assert snapshot["cache"]["misses"] == 2  # counters survive the restart


def test_base_exception_in_a_handler_restarts_one_actor_not_all(
    start_runtime: Callable[..., Runtime], registry_file: Path
) -> None:
    clock = ManualClock()
    rt = _start(start_runtime, registry_file, clock)
    stats, cache = rt.ref("stats").actor_urn, rt.ref("cache").actor_urn
    # Left alone, a SystemExit in one handler makes pykka stop every actor in the process.
    old = inject_fault(rt, "watcher", exit=True)
    wait_until(lambda: rt.directory.get("watcher") is None)
    assert rt.ref("stats").actor_urn == stats and rt.ref("cache").actor_urn == cache
    assert rt.ref("cache").is_alive()
    # The supervisor takes the child out of routing before it schedules the restart.
    wait_until(lambda: [d for d in clock.pending() if d < 100], message="watcher restart not scheduled")
    clock.advance(4.0)
    wait_until(lambda: replaced(rt, "watcher", old))
    assert "SystemExit" in rt.stats_snapshot()["actors"]["watcher"]["last_failure"]


def test_escalation_past_the_intensity_stops_everything(
    start_runtime: Callable[..., Runtime], registry_file: Path
) -> None:
    clock = ManualClock()
    rt = _start(start_runtime, registry_file, clock, max_restarts=2, restart_window=60)
    for _ in range(2):
        old = inject_fault(rt, "cache")
        wait_until(lambda: [d for d in clock.pending() if d < 100])
        clock.advance(4.0)
        wait_until(lambda old=old: replaced(rt, "cache", old))
    inject_fault(rt, "cache")  # the third failure within 60 s
    with pytest.raises(SupervisorEscalated, match="actor cache failed more than 2 times within 60 s"):
        rt.wait(timeout=10)
    wait_until(lambda: not pykka.ActorRegistry.get_all(), message="actors left running after escalation")
    with pytest.raises(RuntimeStopped, match="failed more than 2 times"):
        rt.cache.get_script("echo")
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith(("runtime-", "Thread-")) and t.is_alive()]
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "runtime-escalation"])
    assert "runtime-timer" not in leftovers


def test_actor_failing_in_setup_is_restarted(start_runtime: Callable[..., Runtime], registry_file: Path) -> None:
    clock = ManualClock()
    rt = _start(start_runtime, registry_file, clock)
    old = rt.ref("cache").actor_urn
    registry_file.write_text("{ broken")  # a fresh cache instance can still fall back on the last good registry
    inject_fault(rt, "cache")
    wait_until(lambda: [d for d in clock.pending() if d < 100])
    clock.advance(4.0)
    wait_until(lambda: replaced(rt, "cache", old))
    assert rt.cache.get_script("true").get(timeout=5).command == ("true",)
