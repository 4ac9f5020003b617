"""User callbacks run here, on a few threads of their own, never on an actor's thread:
a slow or raising callback delays only the later callbacks of its own job and breaks
nothing else."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["CallbackRunner"]

logger = logging.getLogger(__name__)

_STOP = object()

#: Threads that run callbacks: how many jobs may have a blocked callback before the
#: callbacks of other jobs wait too.
DEFAULT_THREADS = 4


class CallbackRunner:
    """Runs posted calls on daemon threads; exceptions are logged and dropped.

    The calls of one job run one at a time, in the order they were posted (a
    progress callback never overtakes an earlier one, a completion waiter comes
    after the job's progress); calls of different jobs run side by side. The
    lock guards only this runner's own queues, handed between the posting
    threads and its own.
    """

    def __init__(self, name: str = "runtime-callbacks", threads: int = DEFAULT_THREADS) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, deque[tuple[Callable[..., Any], tuple[Any, ...], str | None]]] = {}
        self._ready: queue.SimpleQueue[Any] = queue.SimpleQueue()  # keys with calls, once each
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def post(self, fn: Callable[..., Any], *args: Any, job_id: str | None = None, inline: bool = False) -> None:
        """Queue ``fn(*args)`` behind the calls already posted for ``job_id`` (a call
        without a job is ordered with nothing); safe from any thread, never blocks.

        ``inline``: ``fn`` never blocks (it sets an event), so when no call of the job is
        queued or running it is called at once on the caller's thread: no hop.
        """
        key: Hashable = job_id if job_id is not None else object()
        with self._lock:
            calls = self._pending.get(key)
            if calls is not None:  # a thread owns this job's calls: it will get to this one
                calls.append((fn, args, job_id))
                return
            if not inline:
                self._pending[key] = deque([(fn, args, job_id)])
        if inline:
            self._call(fn, args, job_id)
        else:
            self._ready.put(key)

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the threads."""
        for _ in self._threads:
            self._ready.put(_STOP)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _run(self) -> None:
        while True:
            key = self._ready.get()
            if key is _STOP:
                return
            while True:
                with self._lock:
                    calls = self._pending[key]
                    if not calls:
                        del self._pending[key]
                        break
                    fn, args, job_id = calls.popleft()
                self._call(fn, args, job_id)

    @staticmethod
    def _call(fn: Callable[..., Any], args: tuple[Any, ...], job_id: str | None) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("callback %r for job %s raised; ignored", fn, job_id)
