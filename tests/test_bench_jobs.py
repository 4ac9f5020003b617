"""The job benchmark's quick mode runs here so it never rots (no timing is asserted).

A peer (RQ, Dramatiq, Huey) that is not installed, or a Redis that is not reachable,
makes that peer's entry say ``skipped``; the test passes either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_jobs_bench_quick_mode_runs() -> None:
    # Database 14, not the bench's default 15: a full bench run at the same time keeps its data.
    env = {**os.environ, "BENCH_REDIS_URL": os.environ.get("TEST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_jobs.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {"overhead", "processes", "peers", "control_plane"} <= set(figures)

    overhead = figures["overhead"]
    assert {"runtime", "thread_pool", "throughput_ratio_runtime_over_pool", "sequential"} <= set(overhead)
    assert overhead["runtime"]["failed"] == 0
    assert overhead["runtime"]["jobs_per_s"] > 0
    assert "p50_us" in overhead["sequential"]["runtime_submit_to_done"]
    assert "p50_us" in overhead["sequential"]["runtime_submit_on_done_to_done"]

    processes = figures["processes"]
    assert {"runtime", "thread_pool_subprocess_run"} <= set(processes["wall_s"])
    assert processes["wall_ratio_runtime_over_subprocess_run"] > 0
    assert processes["wall_ratio_floor_over_subprocess_run"] > 0
    assert processes["cpu_us_per_job"]["runtime"]["process"] > 0

    peers = figures["peers"]
    assert peers["runtime"]["jobs_per_s"] > 0
    assert peers["floor_bare_actors"]["jobs_per_s"] > 0 and peers["ratio_runtime_over_floor"] > 0
    for name in ("rq", "dramatiq", "huey"):
        entry = peers[name]
        assert "skipped" in entry or entry["jobs_per_s"] > 0, (name, entry)

    control = figures["control_plane"]
    assert {"idle", "under_load", "p50_ratio_load_over_idle"} <= set(control)
    assert all(s["n"] > 0 for s in control["idle"].values())
