"""User callbacks run here, on a few threads of their own, never on an actor's thread:
a slow or raising callback delays only the later callbacks of its own job and breaks
nothing else."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["CallbackRunner"]

logger = logging.getLogger(__name__)

_STOP = object()

#: Threads kept for callbacks.
DEFAULT_THREADS = 4
#: Most threads at once: when no thread has taken a queued job's calls for ``STALL``
#: seconds (every one is blocked in a callback), one more is started, up to this many.
MAX_THREADS = 64
#: Seconds queued calls may wait with no thread taking any before another thread starts:
#: long against a callback that only records something, short against a blocked one.
STALL = 0.05
#: Seconds a thread beyond the kept ones may wait for work before it ends.
IDLE_EXIT = 1.0


class CallbackRunner:
    """Runs posted calls on daemon threads; exceptions are logged and dropped.

    The calls of one job run one at a time, in the order they were posted (a
    progress callback never overtakes an earlier one, a completion waiter comes
    after the job's progress); calls of different jobs run side by side. When
    queued calls wait ``STALL`` seconds with no thread taking any (every thread is
    blocked in a callback), a watcher starts one more thread, up to ``most``; a
    thread started so ends once nothing is queued. So a blocked callback delays
    only its own job, and a ``wait_job`` does not wait for other jobs' callbacks
    (beyond ``STALL``). The lock guards only this runner's own queues and counts,
    handed between the posting threads and its own.
    """

    def __init__(self, name: str = "runtime-callbacks", threads: int = DEFAULT_THREADS,
                 most: int = MAX_THREADS) -> None:
        self._name = name
        self._base = threads
        self._most = max(most, threads)
        self._lock = threading.Lock()
        self._pending: dict[Hashable, deque[tuple[Callable[..., Any], tuple[Any, ...], str | None]]] = {}
        self._ready: queue.SimpleQueue[Any] = queue.SimpleQueue()  # keys with calls, once each
        self._threads: set[threading.Thread] = set()
        self._queued = 0  # jobs with calls that no thread has taken yet
        self._taken = 0  # jobs taken by a thread so far: the watcher sees progress by it
        self._work = threading.Condition(self._lock)  # something was queued, or the runner closes
        self._numbers = itertools.count()
        self._here = threading.local()  # on one of this runner's threads: the job of its call
        self._closed = False
        with self._lock:
            for _ in range(threads):
                self._start_thread()
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-watcher", daemon=True)
        self._watcher.start()

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
                self._queued += 1
                if self._queued == 1:
                    self._work.notify()
        if inline:
            self._call(fn, args, job_id)
        else:
            self._ready.put(key)

    def calling(self) -> tuple[bool, str | None]:
        """Whether the calling thread is running one of this runner's calls, and that call's job."""
        return getattr(self._here, "calling", False), getattr(self._here, "job_id", None)

    def thread_count(self) -> int:
        """Threads alive now (the ones kept, and any started while every one was busy)."""
        with self._lock:
            return len(self._threads)

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the threads, waiting ``timeout`` seconds for all."""
        with self._lock:
            self._closed = True
            self._work.notify()
            threads = list(self._threads)
        for _ in threads:
            self._ready.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in [*threads, self._watcher]:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _watch(self) -> None:
        """Start one more thread whenever queued calls wait ``STALL`` seconds with no thread
        taking any: every thread is blocked in a callback."""
        with self._lock:
            while not self._closed:
                if not self._queued:
                    self._work.wait()
                    continue
                taken, deadline = self._taken, time.monotonic() + STALL
                while not self._closed and self._queued and self._taken == taken:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if len(self._threads) < self._most:
                            self._start_thread()
                        break
                    self._work.wait(left)

    def _start_thread(self) -> None:
        """Start a thread (under the lock)."""
        thread = threading.Thread(target=self._run, name=f"{self._name}-{next(self._numbers)}", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _run(self) -> None:
        while True:
            try:
                key = self._ready.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if len(self._threads) > self._base:  # one more than needed, idle: it ends
                        self._threads.discard(threading.current_thread())
                        return
                continue
            if key is _STOP:
                break
            with self._lock:
                self._queued -= 1
                self._taken += 1
            while True:
                with self._lock:
                    calls = self._pending[key]
                    if not calls:
                        del self._pending[key]
                        break
                    fn, args, job_id = calls.popleft()
                self._call(fn, args, job_id)
            with self._lock:
                if len(self._threads) > self._base and not self._queued:
                    self._threads.discard(threading.current_thread())
                    return  # started for a busy moment, which is over
        with self._lock:
            self._threads.discard(threading.current_thread())

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], job_id: str | None) -> None:
        here = self._here
        outer = getattr(here, "calling", False), getattr(here, "job_id", None)  # an inline call may nest
        here.calling, here.job_id = True, job_id
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 - even SystemExit: it would end this thread and strand the job's calls
            logger.exception("callback %r for job %s raised; ignored", fn, job_id)
        finally:
            here.calling, here.job_id = outer
