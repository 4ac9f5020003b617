"""Job functions for bench/bench_jobs.py: a no-op, a start stamp and a CPU-bound spin.

They live in a module of their own so that the runtime (``"callable": "bench.noop:noop"``),
the thread-pool baselines and the peers' workers (RQ's worker processes import it by name)
all run exactly the same function.
"""

from __future__ import annotations

import threading
import time

#: job number -> time.perf_counter() when ``stamp`` started (same process only).
STARTS: dict[int, float] = {}

#: how many ``spin`` calls are running right now, and the event set when one starts.
_spin_lock = threading.Lock()
SPINNING = 0
SPIN_STARTED = threading.Event()


def noop(**kw: object) -> None:
    """Does nothing: what is left is the cost of the machinery around it."""
    return None


def stamp(i: int = 0) -> None:
    """Records when job ``i`` started, for submit-to-start latency."""
    STARTS[i] = time.perf_counter()


def spin(n: int = 5_000_000) -> int:
    """CPU-bound pure Python (holds the GIL): ``n`` rounds of integer arithmetic."""
    global SPINNING
    with _spin_lock:
        SPINNING += 1
    SPIN_STARTED.set()
    try:
        x = 0
        for k in range(n):
            x = (x + k * k) % 1_000_003
        return x
    finally:
        with _spin_lock:
            SPINNING -= 1


def spin_reporting(n: int, progress: object) -> int:
    """``spin`` that first reports progress: the cue that it runs, seen from another process."""
    progress(0.0, "spinning")  # type: ignore[operator]
    x = 0
    for k in range(n):
        x = (x + k * k) % 1_000_003
    return x
