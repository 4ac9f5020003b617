"""Helpers shared by the bench scripts: timing and percentiles."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def time_calls(fn: Callable[[], Any], n: int, warmup: int = 100) -> dict[str, float]:
    """Time ``n`` calls of ``fn`` one by one; p50 and p99 in microseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        fn()
        samples.append(clock() - start)
    return summary(samples)


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p99 and mean of samples given in seconds, in microseconds."""
    return {
        "p50_us": percentile(samples, 50) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
        "mean_us": statistics.fmean(samples) * 1e6,
        "n": len(samples),
    }


def time_interleaved(fns: dict[str, Callable[[], Any]], n: int, warmup: int = 100) -> dict[str, dict[str, float]]:
    """Time each function ``n`` times, taking turns, so that noise from the rest of the
    machine falls on all of them alike and their ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.perf_counter
    for _ in range(n):
        for name, fn in fns.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return {name: summary(values) for name, values in samples.items()}


def emit(results: dict[str, Any], as_json: bool, show: Callable[[dict[str, Any]], None]) -> None:
    """Print a bench's figures: as JSON (``--json``, what the tests read) or readable."""
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        show(results)
    sys.stdout.flush()
