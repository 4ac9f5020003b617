"""Functions run by ``"kind": "python"`` scripts in the job tests.

Module-level state lets a test hold a worker busy and release it deterministically
(``gate(name)`` / ``release(name)``) and see what ran, in which order (``CALLS``).
``reset()`` clears everything between tests.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

#: Tokens of the calls that ran, in order.
CALLS: list[str] = []
#: How many times each ``flaky`` key was called.
ATTEMPTS: Counter[str] = Counter()
#: Set once a ``block`` call with that name has started.
_STARTED: dict[str, threading.Event] = {}
#: Set by ``release(name)``: lets the ``block`` calls with that name return.
_GATES: dict[str, threading.Event] = {}
_LOCK = threading.Lock()

#: In a process with this variable set, ``maybe_block`` blocks forever (the SIGKILL test's child).
BLOCK_ENV = "JOBS_HELPERS_BLOCK"


def _event(table: dict[str, threading.Event], name: str) -> threading.Event:
    with _LOCK:
        event = table.get(name)
        if event is None:
            event = table[name] = threading.Event()
        return event


def gate(name: str) -> threading.Event:
    """The event ``block(name=name)`` waits on."""
    return _event(_GATES, name)


def started(name: str) -> threading.Event:
    """Set once a ``block(name=name)`` call is running."""
    return _event(_STARTED, name)


def release(name: str) -> None:
    gate(name).set()


def reset() -> None:
    with _LOCK:
        for event in _GATES.values():
            event.set()  # nothing left blocked by an earlier test
        _GATES.clear()
        _STARTED.clear()
        CALLS.clear()
        ATTEMPTS.clear()


# --- the job functions -----------------------------------------------------------------


def record(token: str) -> str:
    """Append ``token`` to ``CALLS``."""
    CALLS.append(token)
    return token


def block(name: str, token: str = "", limit: float = 30.0) -> str:
    """Signal ``started(name)``, wait until ``release(name)`` (at most ``limit`` s), record ``token``."""
    started(name).set()
    if not gate(name).wait(limit):
        raise TimeoutError(f"block {name!r} was never released")
    CALLS.append(token or name)
    return name


def block_then_report(name: str, progress: Any) -> str:
    """``block``, then report progress once the gate opens."""
    block(name)
    progress(0.5, f"{name} released")
    return name


def hang_once(name: str) -> str:
    """The first call with ``name`` blocks until ``release(name)``; later ones return at once."""
    ATTEMPTS[name] += 1
    if ATTEMPTS[name] == 1:
        started(name).set()
        gate(name).wait(30.0)
        return "released"
    CALLS.append(name)
    return "quick"


def flaky(key: str, failures: int) -> dict[str, Any]:
    """Raise on the first ``failures`` calls with ``key``, then succeed."""
    ATTEMPTS[key] += 1
    n = ATTEMPTS[key]
    if n <= failures:
        raise RuntimeError(f"{key} failure {n}")
    CALLS.append(key)
    return {"key": key, "calls": n}


def record_extra(token: str, extra: str) -> str:
    """``record``, for a script version with one more argument."""
    CALLS.append(f"{token}:{extra}")
    return token


def report(token: str, progress: Any) -> str:
    """Report progress twice, then record ``token``."""
    progress(0.5, f"{token} half")
    progress(1.0, f"{token} done")
    CALLS.append(token)
    return token


def stored_running(store: str) -> list[str]:
    """The scripts of the jobs the store file says are running, read while this job runs."""
    from runtime.store import JobState, SqliteStore

    reader = SqliteStore(Path(store))
    try:
        return [r.script_id for r in reader.unfinished() if r.state is JobState.RUNNING]
    finally:
        reader.close()


def die() -> None:
    """Kill this whole process at once: a job that takes the runtime down with it."""
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_block(n: int) -> int:
    """Blocks forever where ``BLOCK_ENV`` is set (a process about to be killed: it prints
    ``started <n>`` first), else returns ``n``."""
    if os.environ.get(BLOCK_ENV):
        sys.stdout.write(f"started {n}\n")  # one write: lines from other threads stay whole
        sys.stdout.flush()
        threading.Event().wait()
    CALLS.append(str(n))
    return n


def append_after_release(name: str, items: list[str]) -> None:
    """``block``, then append to its own argument in place, and signal ``started(name + "-done")``."""
    started(name).set()
    gate(name).wait(30.0)
    items.append("appended after the release")
    started(name + "-done").set()
