#!/usr/bin/env python3
"""Registry cache benchmark: warm lookups against a bare pykka ask and a dict, cold
lookups by registry size, and invalidation latency for both kinds of save.

    python bench/bench_cache.py            # full run (about a minute)
    python bench/bench_cache.py --quick    # a few samples of each, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary, time_interleaved  # noqa: E402
from runtime import Runtime, init_cache  # noqa: E402


class Echo(pykka.ThreadingActor):
    use_daemon_thread = True

    def on_receive(self, message: Any) -> Any:
        return message

    def lookup(self, key: str) -> Any:
        return key


def _registry(folder: Path, n: int) -> Path:
    path = folder / f"registry-{n}.json"
    scripts = [
        {
            "id": f"script-{i}",
            "description": f"script number {i}, which does something useful with its inputs",
            "command": ["python3", f"scripts/s{i}.py", "--verbose"],
            "arguments": {
                "name": {"type": "string", "required": True, "description": "who"},
                "count": {"type": "integer", "default": 3},
            },
            "timeout": 30,
            "max_retries": 2,
        }
        for i in range(n)
    ]
    path.write_text(json.dumps({"scripts": scripts}, indent=2))
    return path


def warm(folder: Path, n: int) -> dict[str, Any]:
    registry = _registry(folder, 1000)
    echo = Echo.start()
    proxy = echo.proxy()
    data = {f"script-{i}": i for i in range(1000)}
    try:
        with init_cache(registry, watcher="polling", poll_interval=60) as cache:
            cache.get_script("script-7")
            actor = cache.runtime.cache
            return time_interleaved(
                {
                    "bare pykka ask": lambda: echo.ask("x", timeout=5),
                    "bare pykka proxy call": lambda: proxy.lookup("x").get(timeout=5),
                    "dict lookup": lambda: data.get("script-7"),
                    "warm get_script, actor proxy": lambda: actor.get_script("script-7").get(timeout=5),
                    "warm get_script, facade": lambda: cache.get_script("script-7"),
                },
                n,
            )
    finally:
        echo.stop()


def cold(folder: Path, sizes: list[int], n: int) -> dict[str, Any]:
    results = {}
    for size in sizes:
        registry = _registry(folder, size)
        with Runtime.start(registry, cache_size=1, watcher="polling", poll_interval=60) as rt:
            proxy = rt.cache
            ids = [f"script-{i % size}" for i in range(n + 5)]
            samples = []
            for script_id in ids:  # cache_size=1 and distinct ids: every lookup misses
                start = time.perf_counter()
                proxy.get_script(script_id).get(timeout=30)
                samples.append(time.perf_counter() - start)
            results[f"{size} scripts ({registry.stat().st_size / 1e6:.2f} MB)"] = summary(samples[5:])
    return results


def invalidation(folder: Path, rounds: int) -> dict[str, Any]:
    registry = _registry(folder, 1000)
    results = {}
    with init_cache(registry, watcher="inotify") as cache:
        cache.get_script("script-1")
        text = registry.read_text()
        for how in ("in-place", "atomic"):
            samples = []
            for r in range(rounds):
                marker = f"{how} {r}"
                new = text.replace("script number 1,", f"{marker},", 1)
                start = time.perf_counter()
                if how == "atomic":
                    tmp = registry.with_name(".registry.tmp")
                    tmp.write_text(new)
                    os.replace(tmp, registry)
                else:
                    registry.write_text(new)
                deadline = start + 10
                while not cache.get_script("script-1").description.startswith(marker):
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"{how} save not seen within 10 s")
                    time.sleep(0.0002)  # polls the facade; this is a benchmark, not a test
                samples.append(time.perf_counter() - start)
            results[how] = summary(samples)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples: proves the bench runs")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    n, cold_n, rounds = (200, 3, 3) if args.quick else (20000, 30, 100)
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {"warm": warm(folder, n), "cold": cold(folder, sizes, cold_n),
                   "invalidation": invalidation(folder, rounds)}
    w = results["warm"]
    cold_1000 = next(v for k, v in results["cold"].items() if k.startswith("1000 "))
    results["ratios"] = {
        "proxy warm p50 / bare ask p50": w["warm get_script, actor proxy"]["p50_us"] / w["bare pykka ask"]["p50_us"],
        "cold p50 (1,000) / facade warm p50": cold_1000["p50_us"] / w["warm get_script, facade"]["p50_us"],
        "cold p50 (1,000) / proxy warm p50": cold_1000["p50_us"] / w["warm get_script, actor proxy"]["p50_us"],
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for section in ("warm", "cold", "invalidation"):
        print(f"\n{section}:")
        for name, s in results[section].items():
            print(f"  {name:<34} p50 {s['p50_us']:10.2f} us   p99 {s['p99_us']:10.2f} us   (n={s['n']})")
    print("\nratios:")
    for name, value in results["ratios"].items():
        print(f"  {name:<40} {value:8.2f}x")


if __name__ == "__main__":
    main()
