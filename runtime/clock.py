"""Injected time: a clock with ``monotonic()`` and ``call_later()``.

Decision logic (backoff, intensity windows, polling) takes ``now`` from a clock,
and delayed work is scheduled through it, so tests drive time with
:class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "TimerHandle"]


class TimerHandle:
    """A scheduled call; ``cancel()`` makes sure it never runs."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock(Protocol):
    """What the runtime needs of time."""

    def monotonic(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...

    def close(self) -> None: ...


class _TimerQueue:
    """A heap of timer handles ordered by due time (plain data, no threads)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()

    def push(self, handle: TimerHandle) -> None:
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))

    def pop_due(self, now: float) -> list[TimerHandle]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            handle = heapq.heappop(self._heap)[2]
            if not handle.cancelled:
                due.append(handle)
        return due

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        self._heap.clear()


class SystemClock:
    """Real time; delayed calls run on one daemon timer thread per clock.

    Callbacks must be quick (they typically ``tell`` an actor); they run on the
    timer thread, never on an actor's thread.
    """

    def __init__(self) -> None:
        self._queue = _TimerQueue()
        # The condition guards the timer heap, which is shared by the callers of
        # call_later and the timer thread: it is the clock's own state, not an actor's.
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        with self._cond:
            if self._closed:
                handle.cancel()
                return handle
            earliest = self._queue.next_due()
            self._queue.push(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="runtime-timer", daemon=True)
                self._thread.start()
            if earliest is None or handle.when < earliest:
                self._cond.notify()  # the thread sleeps until the earliest timer: wake it only for an earlier one
        return handle

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                due = self._queue.pop_due(time.monotonic())
                if not due:
                    nxt = self._queue.next_due()
                    self._cond.wait(None if nxt is None else max(0.0, nxt - time.monotonic()))
                    continue
            for handle in due:
                if not handle.cancelled:
                    handle.callback()


class ManualClock:
    """A fake clock for tests: time moves only when ``advance()`` is called.

    ``advance()`` runs the callbacks that fall due, in the caller's thread.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._queue = _TimerQueue()
        # Actor threads schedule while the test thread advances: guard the heap.
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(self._now + max(0.0, delay), callback)
        with self._lock:
            self._queue.push(handle)
        return handle

    def pending(self) -> list[float]:
        """Delays (from now) of the calls still scheduled, soonest first."""
        with self._lock:
            return sorted(h.when - self._now for _, _, h in self._queue._heap if not h.cancelled)

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while True:
            with self._lock:
                nxt = self._queue.next_due()
                if nxt is None or nxt > target:
                    break
                self._now = max(self._now, nxt)
                due = self._queue.pop_due(self._now)
            for handle in due:
                handle.callback()
        self._now = target

    def close(self) -> None:
        self._queue.clear()
