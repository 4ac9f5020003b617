"""The floor of the runtime's design: bare pykka actors doing only what any actor
runtime of this shape must do per job, with none of the runtime's own work.

The job bench runs these beside the runtime, so that a missed aim can be told apart
from a cost of the design (one Python process, actors on threads sharing the GIL, a
durable store) in the same run:

- ``processes``: a dispatcher actor and two worker actors, each job a ``RunJob``-like
  tell, ``subprocess.run(["/bin/true"])`` and a report back; no store, no output
  capture, no timeout, no process group.
- ``pipeline``: each job a blocking ask from the submitting thread (answered after a
  commit that inserts the job), a tell to an idle worker that runs a no-op, its report,
  a second commit (the job's end) and a tell to a callback thread: the hand-offs and
  commits a durable job needs, without validation, records, timers or supervision.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka

__all__ = ["pipeline", "processes"]

_ROW = json.dumps({"script_id": "noop", "arguments": {}, "attempts": [], "state": "queued"})


class _Worker(pykka.ThreadingActor):
    def __init__(self, dispatcher: pykka.ActorRef[Any], work: Callable[[], Any]) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._work = work

    def on_receive(self, message: Any) -> None:
        self._work()
        self._dispatcher.tell(("done", message, self.actor_ref))


class _Dispatcher(pykka.ThreadingActor):
    """FIFO queue, idle workers, and (with a connection) a commit per accepted and ended job."""

    def __init__(self, db: sqlite3.Connection | None, on_done: Callable[[Any], None]) -> None:
        super().__init__()
        self._db = db
        self._on_done = on_done
        self._idle: list[pykka.ActorRef[Any]] = []
        self._queue: deque[str] = deque()

    def on_receive(self, message: Any) -> Any:
        kind = message[0]
        if kind == "workers":
            self._idle.extend(message[1])
        elif kind == "submit":
            job_id = uuid.uuid4().hex
            self._queue.extend([job_id])
            if self._db is not None:
                self._db.execute("INSERT INTO jobs (id, data) VALUES (?, ?)", (job_id, _ROW))
            self._dispatch()
            return job_id
        elif kind == "submit_many":
            self._queue.extend(uuid.uuid4().hex for _ in range(message[1]))
            self._dispatch()
        elif kind == "done":
            if self._db is not None:
                self._db.execute("UPDATE jobs SET data = ? WHERE id = ?", (_ROW, message[1]))
            self._on_done(message[1])
            self._idle.append(message[2])
            self._dispatch()
        return None

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            self._idle.pop().tell(self._queue.popleft())


def _start(workers: int, work: Callable[[], Any], db: sqlite3.Connection | None,
           on_done: Callable[[Any], None]) -> pykka.ActorRef[Any]:
    dispatcher = _Dispatcher.start(db, on_done)
    dispatcher.ask(("workers", [_Worker.start(dispatcher, work) for _ in range(workers)]))
    return dispatcher


def _stop(dispatcher: pykka.ActorRef[Any]) -> None:
    for ref in pykka.ActorRegistry.get_by_class(_Worker):
        ref.stop()
    dispatcher.stop()


class _Count:
    def __init__(self, n: int) -> None:
        self.left = n
        self.done = threading.Event()

    def __call__(self, _job: Any = None) -> None:
        self.left -= 1  # one thread calls it
        if self.left == 0:
            self.done.set()


def processes(n: int, workers: int = 2) -> float:
    """Wall seconds for ``n`` ``/bin/true`` jobs through bare actors."""
    count = _Count(n)
    dispatcher = _start(workers, lambda: subprocess.run(["/bin/true"], check=True), None, count)
    try:
        start = time.perf_counter()
        dispatcher.tell(("submit_many", n))
        if not count.done.wait(max(60.0, n / 10)):
            raise TimeoutError(f"floor: {count.left} of {n} /bin/true jobs unfinished")
        return time.perf_counter() - start
    finally:
        _stop(dispatcher)


def pipeline(n: int, folder: Path, workers: int = 2) -> float:
    """Jobs per second for ``n`` no-op jobs submitted one by one, each committed when
    accepted and when ended (SQLite, WAL, ``synchronous=NORMAL``, as the runtime's store),
    their ends reported on a callback thread."""
    db = sqlite3.connect(folder / "floor.sqlite3", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL").fetchone()
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
    count = _Count(n)
    ends: deque[Any] = deque()
    wake = threading.Condition()

    def callbacks() -> None:  # the runtime's callback thread: a hand-off per finished job
        while count.left:
            with wake:
                wake.wait_for(lambda: ends)
                ends.popleft()
            count()

    def on_done(job_id: Any) -> None:
        with wake:
            ends.append(job_id)
            wake.notify()

    thread = threading.Thread(target=callbacks, daemon=True)
    thread.start()
    dispatcher = _start(workers, lambda: None, db, on_done)
    try:
        start = time.perf_counter()
        for _ in range(n):
            dispatcher.ask(("submit",))
        if not count.done.wait(max(60.0, n / 100)):
            raise TimeoutError(f"floor: {count.left} of {n} no-op jobs unfinished")
        return n / (time.perf_counter() - start)
    finally:
        _stop(dispatcher)
        thread.join(5)
        db.close()
