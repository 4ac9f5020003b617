"""The specification's job API: ``JobPriority``, ``init_queue`` and ``ToolExecutionService``.

Both run an embedded :class:`~runtime.runtime.Runtime`; jobs are durable in its
store, and nothing here blocks an event loop.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
from collections.abc import Callable
from typing import Any

from runtime.aio import run_blocking, wait_job
from runtime.api import RegistryCache
from runtime.errors import ConfigError
from runtime.pools import ConnectionPools
from runtime.runtime import Runtime

__all__ = ["JobPriority", "JobQueue", "ToolExecutionService", "init_queue"]


class JobPriority(enum.IntEnum):
    """Strict priorities: every HIGH job starts before any NORMAL one, and so on."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


class JobQueue:
    """The job queue of a running runtime (see :func:`init_queue`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def submit_job(
        self,
        script_id: str,
        arguments: dict[str, Any] | None = None,
        priority: JobPriority | int | str = JobPriority.NORMAL,
        callback: Callable[[str, float, str], Any] | None = None,
        max_retries: int | None = None,
    ) -> str:
        """Validate and queue a job; durable when this returns; its id.

        Raises:
            ScriptNotFound, InvalidArguments: nothing was queued.
        """
        return self.runtime.submit(script_id, arguments, priority, max_retries=max_retries, callback=callback)

    def get_job_status(self, job_id: str) -> dict[str, Any]:
        """``status``, ``attempts``, ``progress``, ``result``, ``error`` and timestamps."""
        return self.runtime.status(job_id)

    def cancel_job(self, job_id: str) -> bool:
        """Cancel a queued or running job; ``False`` when it had already finished."""
        return self.runtime.cancel(job_id)

    def get_queue_stats(self) -> dict[str, Any]:
        """``queue_size``, ``running_jobs``, ``completed_jobs``, ``failed_jobs`` and more."""
        return self.runtime.queue_stats()

    async def wait_for_job(self, job_id: str) -> dict[str, Any]:
        """Await the job's end without blocking the event loop; its final status."""
        return await wait_job(self.runtime, job_id)

    async def close(self) -> None:
        """Stop the runtime (running jobs drain first; queued ones stay in the store)."""
        await run_blocking(self.runtime.stop)


async def init_queue(concurrency_limit: int | None = None, registry_path: str | os.PathLike[str] | None = None,
                     **settings: Any) -> JobQueue:
    """Start a runtime with ``concurrency_limit`` workers and return its queue.

    The registry comes from ``registry_path``, else ``REGISTRY_PATH``, else
    ``./registry.json``; the store from ``JOB_STORAGE_PATH``.
    """
    handoff = _Handoff()
    try:
        runtime = await run_blocking(
            lambda: handoff.started(Runtime.start(registry_path, job_concurrency=concurrency_limit, **settings)))
    except asyncio.CancelledError:  # the start goes on in its thread: what it starts is stopped
        handoff.abandon()
        raise
    return JobQueue(runtime)


class _Handoff:
    """A runtime started for an ``init_queue`` that may be cancelled meanwhile: whichever
    comes second, the start or the cancel, stops it (off the event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._abandoned = False

    def started(self, runtime: Runtime) -> Runtime:
        with self._lock:
            self._runtime = runtime
            abandoned = self._abandoned
        if abandoned:
            runtime.stop()  # on the start's own thread
        return runtime

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            runtime = self._runtime
        if runtime is not None:
            threading.Thread(target=runtime.stop, name="runtime-abandoned-start", daemon=True).start()


class ToolExecutionService:
    """Runs registry scripts synchronously (``execute``) or as jobs (``execute_async``).

    Args:
        registry_path: the registry file.
        max_retries: retries of a failed job when its script does not say.
        enable_cache: ``False`` keeps nothing in the cache (``cache_size=0``): every
            lookup reads the registry file.
        enable_async: allow ``execute_async``.
        cache_size: entries the cache keeps.
        redis_url: not available yet (raises ``ConfigError``).
        **settings: any other runtime setting.
    """

    def __init__(self, registry_path: str | os.PathLike[str] = "registry.json", max_retries: int = 3,
                 enable_cache: bool = True, enable_async: bool = True, cache_size: int | None = None,
                 redis_url: str | None = None, **settings: Any) -> None:
        if redis_url:
            raise ConfigError("redis_url: the Redis backend is not available yet in this version")
        settings = dict(settings, max_retries=max_retries, cache_size=0 if not enable_cache else cache_size)
        self.enable_async = enable_async
        #: Database and HTTP pools of ``sql`` and ``http`` scripts:
        #: ``tes.connection_pool.init_postgres_pool(host=..., database=..., minconn=1, maxconn=20)``.
        self.connection_pool = ConnectionPools()
        self.runtime = Runtime.start(registry_path, pools=self.connection_pool, **settings)
        self.cache = RegistryCache(self.runtime)
        self.queue = JobQueue(self.runtime)

    async def init_async_queue(self, concurrency_limit: int | None = None) -> JobQueue:
        """The job queue, its worker pool sized to ``concurrency_limit`` (grown or shrunk in
        place: running jobs finish, queued ones stay queued, figures are kept); without
        one, the pool keeps its size (``JOB_CONCURRENCY``).

        Raises:
            ConfigError: this service was created with ``enable_async=False``.
        """
        if not self.enable_async:
            raise ConfigError("init_async_queue: this service was created with enable_async=False")
        if concurrency_limit is not None and concurrency_limit != self.runtime.settings.job_concurrency:
            await run_blocking(self.runtime.resize_workers, concurrency_limit)
        return self.queue

    def execute(self, script_id: str, arguments: dict[str, Any] | None = None,
                priority: JobPriority | int | str = JobPriority.NORMAL, timeout: float | None = None,
                callback: Callable[[str, float, str], Any] | None = None) -> dict[str, Any]:
        """Run a script to its end (with retries) and return its final status."""
        return self.runtime.run(script_id, arguments, timeout, priority=priority, callback=callback)

    async def execute_async(self, script_id: str, arguments: dict[str, Any] | None = None,
                            priority: JobPriority | int | str = JobPriority.NORMAL,
                            callback: Callable[[str, float, str], Any] | None = None) -> str:
        """Queue a script as a job; its id (await :meth:`wait_for_job` for the end)."""
        if not self.enable_async:
            raise ConfigError("execute_async: this service was created with enable_async=False")
        return await run_blocking(lambda: self.queue.submit_job(script_id, arguments, priority, callback))

    async def wait_for_job(self, job_id: str) -> dict[str, Any]:
        """Await the job's end without blocking the event loop."""
        return await self.queue.wait_for_job(job_id)

    def get_job_status(self, job_id: str) -> dict[str, Any]:
        return self.queue.get_job_status(job_id)

    def get_execution_stats(self, script_id: str | None = None) -> dict[str, Any]:
        """``total_executions``, ``failures``, ``avg_execution_time`` and p50/p95/p99 (seconds)."""
        return self.runtime.execution_stats(script_id)

    def close(self) -> None:
        self.runtime.stop()
        self.connection_pool.close()

    def __enter__(self) -> ToolExecutionService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
