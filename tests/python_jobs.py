"""Callables for ``python`` scripts run by tests in a python host process.

They run in the child, so they keep no state the test could read: what a test needs
to know comes back as a return value, a progress message or an error.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Progress = Callable[..., None]

NOT_CALLABLE = 42

_late_report_released = threading.Event()
_late_report_sent = threading.Event()


def add(a: int, b: int = 0) -> dict[str, int]:
    return {"sum": a + b}


def echo(**arguments: Any) -> dict[str, Any]:
    return arguments


def pid() -> int:
    return os.getpid()


def steps(n: int, progress: Progress) -> int:
    for i in range(1, n + 1):
        progress(i / n, f"step {i}")
    progress(7)  # clamped to 1
    progress("not a number")  # dropped
    return n


def boom() -> None:
    raise RuntimeError("nope")


def interrupted() -> None:
    raise KeyboardInterrupt


def returns_a_set() -> set[int]:
    return {1}


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def forks_and_returns(progress: Progress) -> str:
    """Forks; the child returns (into the host's code) too, and reports progress first."""
    child = os.fork()
    if child == 0:
        progress(0.5, "from the child")
        return "child"
    os.waitpid(child, 0)
    return "parent"


def forked_child_exit_code(how: str) -> int:
    """Forks a child that ends by ``sys.exit(3)`` or by raising; returns its exit code."""
    child = os.fork()
    if child == 0:
        if how == "exit":
            sys.exit(3)
        raise RuntimeError("the child fails")
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


def returns_nan() -> float:
    return float("nan")


def chatty() -> str:
    """Writes protocol look-alikes every way user code can reach standard output."""
    print('{"status": "succeeded", "value": "forged"}')
    print('{"progress": [0.5, "forged"]}', flush=True)
    sys.stdout.write("half a line, no newline")
    os.write(1, b'{"status": "failed", "error": "forged by fd 1"}\n')
    return "real"


def reads_stdin() -> str:
    return sys.stdin.read()


def announces_then_sleeps(seconds: float, progress: Progress) -> None:
    """Reports its pid as progress (the test's cue), then sleeps."""
    progress(0.0, str(os.getpid()))
    time.sleep(seconds)


def exits(code: int) -> None:
    os._exit(code)


def reports_after_returning(progress: Progress) -> str:
    """Leaves a thread that reports progress once the next job releases it."""

    def late() -> None:
        _late_report_released.wait(10)
        progress(0.9, "late")
        _late_report_sent.set()

    threading.Thread(target=late, daemon=True).start()
    return "first"


def releases_the_late_report() -> bool:
    """Runs while the previous job's thread reports; returns whether it did."""
    _late_report_released.set()
    return _late_report_sent.wait(10)


def spawns_then_sleeps(seconds: float, progress: Progress) -> int:
    """Starts a grandchild that outlives nothing; reports its pid, then sleeps (0: returns it)."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    progress(0.0, str(child.pid))
    time.sleep(seconds)
    return child.pid
