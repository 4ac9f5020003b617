"""The connection pool benchmark's quick mode runs here so it never rots (no timing is asserted).

The HTTP part needs nothing external. The PostgreSQL part says ``skipped`` when the server
(``TEST_BENCH_PG_DSN``, by default the bench's own ``127.0.0.1:5432/test``) is not reachable,
which passes locally but fails in CI, where PostgreSQL must be running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
DSN = os.environ.get("TEST_BENCH_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")


def _check_comparison(figures: dict[str, Any], unit: str, modes: tuple[str, ...], threads: int) -> None:
    assert figures[unit] > 0
    assert figures["threads"] == threads
    assert figures["rounds"] >= 1
    for mode in modes:
        entry = figures[mode]
        assert entry[f"{unit}_per_s"] > 0, (mode, entry)
        latency = entry["latency"]
        assert latency["n"] == figures[unit] * figures["rounds"], (mode, latency)
        assert 0 < latency["p50_us"] <= latency["p99_us"], (mode, latency)
        assert len(figures[f"all_rounds_{unit}_per_s"][mode]) == figures["rounds"]
    for mode in modes[1:]:
        assert figures[f"ratio_pool_over_{mode}"] > 0


def test_pools_bench_quick_mode_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_pools.py"), "--quick", "--json", "--pg-dsn", DSN],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {"meta", "http", "postgres"} <= set(figures)

    http = figures["http"]
    for key, threads in (("sequential", 1), ("threads_4", 4)):
        section = http[key]
        _check_comparison(section, "calls", ("pool", "new_connection", "bare_pool_manager"), threads)
        calls = section["calls"]
        # What the server saw: every call arrived; a new connection per call for the
        # baseline, at most one per thread for the pools.
        for mode in ("pool", "new_connection", "bare_pool_manager"):
            assert section[mode]["requests"] == calls, (key, mode, section[mode])
        assert section["new_connection"]["tcp_connections"] == calls
        assert 1 <= section["pool"]["tcp_connections"] <= threads
        assert 1 <= section["bare_pool_manager"]["tcp_connections"] <= threads
        assert 1 <= section["pool"]["distinct_client_ports"] <= section["pool"]["tcp_connections"]

    postgres = figures["postgres"]
    if "skipped" in postgres:
        assert os.environ.get("CI", "").lower() != "true", f"PostgreSQL is required in CI: {postgres['skipped']}"
        return
    for key, threads in (("sequential", 1), ("threads_4", 4)):
        section = postgres[key]
        _check_comparison(section, "queries", ("pool", "new_connection"), threads)
        assert section["new_connection"]["connections_opened"] == section["queries"]
        assert 1 <= section["pool"]["connections_opened"] <= threads
        pool = section["pool"]["pool_figures"]
        assert pool["checkouts"] == section["queries"]
        assert pool["errors"] == pool["timeouts"] == 0

    overhead = postgres["pool_overhead"]
    for mode in ("pool", "bare_connection", "pool_checkout_return_only", "one_round_trip"):
        assert overhead[mode]["queries_per_s"] > 0, (mode, overhead[mode])
        assert overhead[mode]["latency"]["n"] == overhead["queries"] * overhead["rounds"]
    assert overhead["p50_ratio_pool_over_bare_connection"] > 0
    assert overhead["connection_sets"] >= 1
    assert overhead["pool_figures"]["opened"] == 1
