"""Per-script execution figures: attempts, failures, and duration percentiles."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

__all__ = ["ExecutionStats"]

#: Durations kept per script for the percentiles (the most recent ones).
WINDOW = 10_000


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class ExecutionStats:
    """Attempts and failures by script; averages hide tails, so percentiles too."""

    def __init__(self) -> None:
        self.total: defaultdict[str, int] = defaultdict(int)
        self.failures: defaultdict[str, int] = defaultdict(int)
        self.time: defaultdict[str, float] = defaultdict(float)
        self.durations: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))

    def add(self, script_id: str, duration: float, succeeded: bool) -> None:
        self.total[script_id] += 1
        self.time[script_id] += duration
        self.durations[script_id].append(duration)
        if not succeeded:
            self.failures[script_id] += 1

    def figures(self, script_id: str | None = None) -> dict[str, Any]:
        """Figures of one script, or of every script by id when ``script_id`` is ``None``."""
        if script_id is None:
            return {sid: self.figures(sid) for sid in sorted(self.total)}
        total = self.total.get(script_id, 0)
        ordered = sorted(self.durations.get(script_id, ()))
        return {
            "total_executions": total,
            "failures": self.failures.get(script_id, 0),
            "avg_execution_time": self.time.get(script_id, 0.0) / total if total else 0.0,
            "p50_execution_time": _percentile(ordered, 50),
            "p95_execution_time": _percentile(ordered, 95),
            "p99_execution_time": _percentile(ordered, 99),
        }
