"""The specification's job API as written there, and the asyncio bridge."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pykka
import pytest

from runtime import (ConfigError, InvalidArguments, JobPriority, Runtime, RuntimeStopped, ScriptNotFound,
                     ToolExecutionService, init_cache, init_queue)
from runtime.store import MemoryStore
from runtime.testing import wait_until, write_registry


def _registry(tmp_path: Path) -> Path:
    return write_registry(tmp_path / "registry.json", [
        {"id": "echo", "command": [sys.executable, "-c",
                                   "import sys, json; a = json.load(sys.stdin); print('::progress 0.5 half'); print(a['text'])"],
         "arguments": {"text": {"type": "string", "required": True}}, "timeout": 10},
        {"id": "sleep", "command": [sys.executable, "-c", "import time; time.sleep(1)"], "timeout": 10},
        {"id": "fail", "command": ["false"], "timeout": 5, "max_retries": 0},
    ])


def test_init_queue_as_the_specification_writes_it(tmp_path: Path) -> None:
    registry = _registry(tmp_path)

    async def main() -> None:
        queue = await init_queue(concurrency_limit=5, registry_path=registry, job_storage_path=tmp_path / "jobs")
        try:
            seen: list[tuple[str, float, str]] = []
            job_id = queue.submit_job(script_id="echo", arguments={"text": "hello"}, priority=JobPriority.HIGH,
                                      callback=lambda *a: seen.append(a))
            final = await queue.wait_for_job(job_id)
            assert final["status"] == "succeeded"
            assert final["result"]["stdout"] == "hello\n"
            status = queue.get_job_status(job_id)
            assert {"status", "attempts", "progress", "result", "error"} <= set(status)
            assert status["progress"] == {"fraction": 0.5, "message": "half"}
            assert seen == [(job_id, 0.5, "half")]
            stats = queue.get_queue_stats()
            assert {"queue_size", "running_jobs", "completed_jobs", "failed_jobs"} <= set(stats)
            assert stats["completed_jobs"] == 1 and queue.runtime.settings.job_concurrency == 5
            with pytest.raises(ScriptNotFound):
                queue.submit_job(script_id="nope")
            with pytest.raises(InvalidArguments, match="text"):
                queue.submit_job(script_id="echo", arguments={"text": 3})
        finally:
            await queue.close()

    asyncio.run(main())


def test_awaiting_a_job_never_blocks_the_event_loop(tmp_path: Path) -> None:
    registry = _registry(tmp_path)

    async def main() -> int:
        queue = await init_queue(concurrency_limit=2, registry_path=registry, job_storage_path=tmp_path / "jobs")
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.01)  # the loop's own timer: this is what must keep running
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            job_id = queue.submit_job("sleep")
            final = await queue.wait_for_job(job_id)  # a one-second job
            assert final["status"] == "succeeded"
        finally:
            stop.set()
            await task
            await queue.close()
        return ticks

    ticks = asyncio.run(main())
    assert ticks >= 30  # about 100 in a second; a blocked loop would give 0 or 1


def test_tool_execution_service_as_the_specification_writes_it(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    with ToolExecutionService(str(registry), max_retries=3, enable_cache=True, enable_async=True, cache_size=200,
                              job_storage_path=tmp_path / "jobs") as tes:
        result = tes.execute("echo", {"text": "sync"})
        assert result["status"] == "succeeded" and result["result"]["stdout"] == "sync\n"

        async def main() -> dict[str, object]:
            await tes.init_async_queue(concurrency_limit=3)
            job_id = await tes.execute_async("echo", {"text": "async"}, priority=JobPriority.HIGH)
            final = await tes.wait_for_job(job_id)
            assert tes.get_job_status(job_id)["status"] == "succeeded"
            return final

        final = asyncio.run(main())
        assert final["result"]["stdout"] == "async\n"
        assert tes.runtime.settings.job_concurrency == 3
        failed = tes.execute("fail")
        assert failed["status"] == "failed" and len(failed["attempts"]) == 1
        stats = tes.get_execution_stats("echo")
        assert stats["total_executions"] == 2  # the pool was resized in place: both runs counted
        assert {"failures", "avg_execution_time", "p50_execution_time", "p95_execution_time",
                "p99_execution_time"} <= set(stats)
        assert json.dumps(stats)


def test_redis_is_refused_when_asked_for_and_named_when_only_the_environment_has_it(
    tmp_path: Path, start_runtime: Callable[..., Runtime], caplog: pytest.LogCaptureFixture
) -> None:
    registry = _registry(tmp_path)
    secret = "redis://:s3cret@127.0.0.1:6379/0"
    for start in (lambda: ToolExecutionService(str(registry), redis_url=secret),
                  lambda: init_cache(str(registry), redis_url=secret),
                  lambda: start_runtime(registry, redis_url=secret, store_factory=MemoryStore)):
        with pytest.raises(ConfigError, match="the Redis (backend|cache level) is not available yet"):
            start()
    rt = start_runtime(registry, env={"REDIS_URL": secret}, store_factory=MemoryStore)  # set for something else
    assert rt.run("echo", {"text": "local"}, timeout=10)["status"] == "succeeded"
    assert "REDIS_URL is set, but this version keeps its cache and job queue local" in caplog.text
    assert "s3cret" not in caplog.text


def test_enable_cache_false_keeps_nothing_so_every_lookup_reads_the_file(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    with ToolExecutionService(str(registry), enable_cache=False, job_storage_path=tmp_path / "jobs",
                              watcher="polling") as tes:
        for _ in range(3):
            assert tes.cache.get_script("echo").id == "echo"
        stats = tes.cache.get_stats()
        assert (stats["hits"], stats["misses"], stats["evictions"]) == (0, 3, 0)
        assert tes.execute("echo", {"text": "x"})["status"] == "succeeded"


def test_the_specifications_components_work_together_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # All three on one registry with the default job store folder: the cache's runtime
    # keeps no job store, so the job runtime can claim the folder.
    monkeypatch.delenv("JOB_STORAGE_PATH", raising=False)
    registry = _registry(tmp_path)
    cache = init_cache(str(registry), cache_size=100, watcher="polling")
    try:
        with ToolExecutionService(str(registry), watcher="polling") as tes:
            assert cache.get_script("echo").id == "echo"
            assert tes.execute("echo", {"text": "together"})["result"]["stdout"] == "together\n"
            for _ in range(4):
                tes.execute("echo", {"text": "again"})
            stats = tes.cache.get_stats()  # the executions' lookups are the cache's hits
            assert stats["hits"] >= 4 and stats["misses"] <= 1
            assert (tmp_path / ".jobs").is_dir()
    finally:
        cache.close()


def test_init_async_queue_keeps_the_configured_pool_unless_told_and_needs_enable_async(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    with ToolExecutionService(str(registry), job_storage_path=tmp_path / "jobs", job_concurrency=3,
                              watcher="polling") as tes:
        queue = asyncio.run(tes.init_async_queue())
        assert queue is tes.queue and tes.runtime.settings.job_concurrency == 3
    with ToolExecutionService(str(registry), enable_async=False, job_storage_path=tmp_path / "jobs2",
                              watcher="polling") as tes:
        with pytest.raises(ConfigError, match="enable_async=False"):
            asyncio.run(tes.init_async_queue(concurrency_limit=2))


def test_stop_releases_an_awaited_job(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "registry.json", [
        {"id": "sleep60", "command": [sys.executable, "-c", "import time; print('::progress 0.1 up', flush=True); "
                                      "time.sleep(60)"], "timeout": 120}])

    async def main() -> None:
        queue = await init_queue(concurrency_limit=1, registry_path=registry, job_storage_path=tmp_path / "jobs",
                                 watcher="polling", drain_timeout=0)
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        job_id = queue.submit_job("sleep60", callback=lambda *_: loop.call_soon_threadsafe(started.set))
        await started.wait()
        waiting = asyncio.ensure_future(queue.wait_for_job(job_id))
        memory = queue.runtime._scheduler_memory
        await loop.run_in_executor(None, lambda: wait_until(lambda: memory.waiters.get(job_id)))  # it waits
        await queue.close()  # no drain: the job stays in the store
        with pytest.raises(RuntimeStopped):
            await asyncio.wait_for(waiting, timeout=10)

    asyncio.run(main())


def test_a_cancelled_init_queue_leaves_no_runtime_running(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    entered, go = threading.Event(), threading.Event()

    def store() -> MemoryStore:  # the start is held here until the caller has given up
        entered.set()
        go.wait(10)
        return MemoryStore()

    async def main() -> None:
        task = asyncio.create_task(init_queue(1, registry, store_factory=store, watcher="polling"))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        task.cancel()
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_until(lambda: pykka.ActorRegistry.get_all() == [], message="the abandoned start left actors running")
