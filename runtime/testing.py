"""The actor test harness, also a pytest plugin (``-p runtime.testing``, or
automatically once the package is installed).

- ``wait_until(predicate, timeout)``: wait for a condition with a deadline, never a
  fixed sleep.
- ``ManualClock``: time that moves only when the test says so.
- ``inject_fault(runtime, name)``: make an actor raise on its next message.
- fixtures: ``registry_file`` (a temporary registry), ``start_runtime`` (starts
  runtimes that are always stopped), ``runtime`` (one started on ``registry_file``),
  and ``no_leaked_actors`` (fails a test that leaves an actor running).
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pykka
import pytest

from runtime.clock import ManualClock
from runtime.runtime import Runtime

__all__ = [
    "ManualClock",
    "atomic_write",
    "inject_fault",
    "no_leaked_actors",
    "process_gone",
    "registry_file",
    "require_service",
    "runtime",
    "sample_scripts",
    "start_runtime",
    "wait_until",
    "write_registry",
]


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.002,
               message: str | None = None) -> Any:
    """Return the first truthy value of ``predicate()``, checking until ``timeout``.

    Raises:
        AssertionError: the deadline passed; the message says what was awaited.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: wait() is a pause that is not time.sleep
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s: {predicate!r}")
        pause.wait(interval)


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to terminate; ``True`` once it has.

    Waits on the process itself (a pidfd turns readable when it terminates) where the
    kernel has pidfds, else checks it with ``wait_until``; a zombie counts as gone.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):  # no pidfd here (not Linux, or a kernel before 5.3)
        try:
            return bool(wait_until(lambda: _terminated(pid), timeout))
        except AssertionError:
            return False
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _terminated(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (a zombie has terminated; only its reaping is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):  # no /proc (not Linux): alive, as far as we can tell
        return False


def require_service(what: str, problem: object) -> None:
    """A service a test needs (PostgreSQL, Redis) is unreachable: skip the test with the
    reason, except under CI (``CI=true``), where a missing service is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required under CI: {problem}")
    pytest.skip(f"{what} unreachable: {problem}")


def inject_fault(runtime: Runtime, name: str, reason: str = "injected fault", exit: bool = False) -> str:
    """Make actor ``name`` of ``runtime`` raise ``InjectedFault`` (``SystemExit`` with
    ``exit=True``) on its next message.

    Returns:
        the URN of the instance that will fail, to wait for its replacement.
    """
    urn = runtime.ref(name).actor_urn
    runtime.inject_fault(name, reason, exit)
    return str(urn)


def replaced(runtime: Runtime, name: str, old_urn: str) -> bool:
    """Whether actor ``name`` runs as a new instance (after a restart)."""
    ref = runtime.directory.get(name)
    return ref is not None and ref.actor_urn != old_urn and ref.is_alive()


def sample_scripts() -> list[dict[str, Any]]:
    """A few registry entries for tests."""
    python = sys.executable
    return [
        {"id": "echo", "description": "print the arguments", "command": [python, "-c", "import sys; print(sys.stdin.read())"],
         "arguments": {"text": {"type": "string", "required": True}}, "timeout": 10, "max_retries": 1},
        {"id": "true", "description": "do nothing", "command": ["true"], "timeout": 5},
        {"id": "count", "description": "count to n", "command": [python, "-c", "print(1)"],
         "arguments": {"n": {"type": "integer", "default": 3}}, "timeout": 5},
    ]


def write_registry(path: Path, scripts: Sequence[dict[str, Any]]) -> Path:
    """Write ``{"scripts": scripts}`` to ``path`` in place."""
    path.write_text(json.dumps({"scripts": list(scripts)}, indent=2))
    return path


def atomic_write(path: Path, text: str) -> None:
    """Save the way editors do: write a temporary file, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _alive_actors() -> list[str]:
    return [str(ref) for ref in pykka.ActorRegistry.get_all()]


@pytest.fixture
def no_leaked_actors() -> Iterator[None]:
    """Fail the test if it leaves a pykka actor running (and stop it)."""
    yield
    leaked = _alive_actors()
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    assert not leaked, f"actors left running: {leaked}"


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    """A valid registry with ``sample_scripts()`` in a temporary folder."""
    return write_registry(tmp_path / "registry.json", sample_scripts())


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[Callable[..., Runtime]]:
    """Start runtimes (``start_runtime(registry, **settings)``); all are stopped after the test."""
    started: list[Runtime] = []

    def start(registry: Path | str, **settings: Any) -> Runtime:
        settings.setdefault("job_storage_path", tmp_path / "jobs")
        rt = Runtime.start(registry, **settings)
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        rt.stop()


@pytest.fixture
def runtime(start_runtime: Callable[..., Runtime], registry_file: Path) -> Runtime:
    """A runtime on ``registry_file`` with default settings."""
    return start_runtime(registry_file)
