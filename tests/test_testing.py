"""The harness is part of the product: its pieces are tested too."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading

import pytest

from runtime import ManualClock
from runtime.testing import process_gone, wait_until


def test_wait_until_returns_the_value_and_fails_with_the_message() -> None:
    box: list[int] = []
    threading.Timer(0.01, lambda: box.append(7)).start()
    assert wait_until(lambda: box and box[0], timeout=5) == 7
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: False, timeout=0.05, message="never true")


def test_manual_clock_runs_due_callbacks_in_order_and_skips_cancelled() -> None:
    clock = ManualClock(start=0.0)
    fired: list[str] = []
    clock.call_later(2.0, lambda: fired.append("b"))
    clock.call_later(1.0, lambda: fired.append("a"))
    clock.call_later(1.5, lambda: fired.append("x")).cancel()
    clock.call_later(5.0, lambda: fired.append("late"))
    assert clock.pending() == [1.0, 2.0, 5.0]
    clock.advance(2.0)
    assert fired == ["a", "b"] and clock.monotonic() == 2.0
    clock.advance(3.0)
    assert fired == ["a", "b", "late"]


def test_manual_clock_callback_scheduling_more_work_runs_it_when_due() -> None:
    clock = ManualClock(start=0.0)
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock.monotonic())
        clock.call_later(1.0, tick)

    clock.call_later(1.0, tick)
    clock.advance(3.5)
    assert ticks == [1.0, 2.0, 3.0]


def test_system_clock_call_later_runs_and_close_stops_it() -> None:
    from runtime import SystemClock

    clock = SystemClock()
    done = threading.Event()
    clock.call_later(0.01, done.set)
    assert done.wait(5)
    cancelled = threading.Event()
    clock.call_later(0.01, cancelled.set).cancel()
    clock.close()
    assert not cancelled.is_set()


@pytest.mark.parametrize("pidfd", [True, False])
def test_process_gone_waits_for_the_end_with_or_without_pidfds(monkeypatch: pytest.MonkeyPatch, pidfd: bool) -> None:
    if not pidfd:
        def enosys(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

        monkeypatch.setattr(os, "pidfd_open", enosys, raising=False)
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert not process_gone(child.pid, timeout=0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert process_gone(child.pid)  # a zombie, not reaped yet: gone all the same
    finally:
        child.kill()
        child.wait()
    assert process_gone(child.pid)  # reaped: no such process
