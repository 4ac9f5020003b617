"""asyncio bridges. pykka's ``Future.__await__`` calls the blocking ``get()`` and
so freezes the event loop; these never block it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

from runtime.errors import RuntimeStopped
from runtime.runtime import Runtime

__all__ = ["await_future", "run_blocking", "wait_job"]

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call on the loop's default executor and await it."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def await_future(future: pykka.Future[T], timeout: float | None = None) -> T:
    """Await a pykka future without blocking the event loop."""
    return await run_blocking(future.get, timeout)


async def wait_job(runtime: Runtime, job_id: str) -> dict[str, Any]:
    """Await the end of a job: no thread is parked; the runtime's completion
    callback resolves an asyncio future through ``call_soon_threadsafe``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def finished(status: dict[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(_resolve, done, status)
        except RuntimeError:  # the loop was closed meanwhile: nobody is waiting any more
            pass

    def stopped() -> None:  # the runtime stopped first: the job will not finish in this process
        error = RuntimeStopped(f"the runtime stopped before job {job_id} finished (it stays in the store "
                               "and the next start runs it)")
        try:
            loop.call_soon_threadsafe(_resolve, done, error)
        except RuntimeError:
            pass

    finished.runs_inline = True  # type: ignore[attr-defined]  # it never blocks: no hop through the callback thread
    with runtime.waiting(stopped, job_id, finished):  # given up (a cancel, a timeout): ``finished`` is dropped
        await run_blocking(runtime.when_done, job_id, finished)
        return await done


def _resolve(future: asyncio.Future[dict[str, Any]], outcome: dict[str, Any] | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
