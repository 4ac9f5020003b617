"""User callbacks run here, on one thread of their own, never on an actor's thread:
a slow or raising callback delays only other callbacks and breaks nothing."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CallbackRunner"]

logger = logging.getLogger(__name__)

_STOP = object()


class CallbackRunner:
    """Runs posted calls in order on a daemon thread; exceptions are logged and dropped."""

    def __init__(self, name: str = "runtime-callbacks") -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, fn: Callable[..., Any], *args: Any, job_id: str | None = None) -> None:
        """Queue ``fn(*args)``; safe from any thread, never blocks."""
        self._calls.put((fn, args, job_id))

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the thread."""
        self._calls.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            fn, args, job_id = item
            try:
                fn(*args)
            except Exception:
                logger.exception("callback %r for job %s raised; ignored", fn, job_id)
