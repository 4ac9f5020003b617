"""The specification's usage lines, import lines included, run as written there.

They run in a child process started in a folder of their own, the way a user runs
them: what they import must come from the installed project, not from this checkout
being the current folder, and the process must end by itself (no ``close()`` in the
specification's code).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runtime.testing import write_registry

_SPEC_CODE = '''
import asyncio, json
results = {}

from registry_cache import init_cache

cache = init_cache("registry.json", cache_size=100)
script = cache.get_script("script-id")
stats = cache.get_stats()
results["script"] = script.id
results["cache_stats"] = sorted(stats)

from job_queue import init_queue, JobPriority

seen = []
def progress_callback(job_id, fraction, message):
    seen.append((fraction, message))

async def use_queue():
    queue = await init_queue(concurrency_limit=5)
    job_id = queue.submit_job(
        script_id="my-script",
        arguments={"arg": "value"},
        priority=JobPriority.HIGH,
        callback=progress_callback
    )
    status = queue.get_job_status(job_id)
    results["queued_status_keys"] = sorted(status)
    results["queue_final"] = (await queue.wait_for_job(job_id))["status"]
    results["queue_stats"] = sorted(queue.get_queue_stats())
    await queue.close()

asyncio.run(use_queue())
results["progress"] = seen

from tool_execution_service import ToolExecutionService

tes = ToolExecutionService(
    "registry.json",
    enable_cache=True,
    enable_async=True,
)

async def use_service():
    job_id = await tes.execute_async(
        "script-id",
        {"arg": "value"},
        priority=JobPriority.HIGH
    )
    results["async_final"] = (await tes.wait_for_job(job_id))["status"]

asyncio.run(use_service())
result = tes.execute("script-id", {"arg": "value"})
results["sync_final"] = result["status"]
results["sync_stdout"] = result["result"]["stdout"]
stats = tes.get_execution_stats("script-id")
results["execution_stats"] = sorted(stats)
print(json.dumps(results))
'''


def test_the_specifications_code_runs_with_its_own_import_lines(tmp_path: Path) -> None:
    echo = [sys.executable, "-c", "import sys, json; print('::progress 0.5 half'); print(json.load(sys.stdin)['arg'])"]
    write_registry(tmp_path / "registry.json", [
        {"id": "script-id", "command": echo, "arguments": {"arg": {"type": "string"}}, "timeout": 30},
        {"id": "my-script", "command": echo, "arguments": {"arg": {"type": "string"}}, "timeout": 30},
    ])
    env = {key: value for key, value in os.environ.items()
           if key not in ("REGISTRY_PATH", "JOB_STORAGE_PATH", "PYTHONPATH")}
    env["JOB_STORAGE_PATH"] = str(tmp_path / "jobs")
    child = subprocess.run([sys.executable, "-c", _SPEC_CODE], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    results = json.loads(child.stdout.splitlines()[-1])
    assert results["script"] == "script-id"
    assert {"hits", "misses", "evictions", "hit_rate", "memory_usage"} <= set(results["cache_stats"])
    assert {"status", "attempts", "progress", "result", "error"} <= set(results["queued_status_keys"])
    assert results["queue_final"] == "succeeded"
    assert results["progress"] == [[0.5, "half"]]
    assert {"queue_size", "running_jobs", "completed_jobs", "failed_jobs"} <= set(results["queue_stats"])
    assert results["async_final"] == results["sync_final"] == "succeeded"
    assert results["sync_stdout"] == "value\n"
    assert {"total_executions", "failures", "avg_execution_time"} <= set(results["execution_stats"])
