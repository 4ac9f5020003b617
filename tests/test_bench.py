"""The benchmarks' quick modes run here so they never rot (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_cache_bench_quick_mode_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_cache.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {"warm", "cold", "invalidation", "ratios"} <= set(figures)
    assert set(figures["invalidation"]) == {"in-place", "atomic"}
    assert all(s["p50_us"] > 0 for s in figures["warm"].values())
