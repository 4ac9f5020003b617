"""Run one attempt of a script: a child process (``command``) or a function (``python``).

Plain blocking code, no actors: job actors call it from worker threads. Whatever
the *script* does wrong (non-zero exit, missing program, exception, timeout)
comes back as an :class:`ExecutionResult`; only the caller's own mistakes
(wrong script kind, ``run()`` twice) raise. Argument values may be secrets, so
they are never logged.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import inspect
import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import IO, Any

from runtime.errors import InvalidArguments
from runtime.registry import Script

__all__ = ["DEFAULT_OUTPUT_CAP", "STATUSES", "CommandExecution", "ExecutionResult", "ProgressCallback",
           "run_python", "validate_arguments"]

log = logging.getLogger(__name__)

#: Bytes of output kept per stream; the rest is read and discarded.
DEFAULT_OUTPUT_CAP = 1 << 20
#: Every status an attempt can end with.
STATUSES = ("succeeded", "failed", "timeout", "cancelled")

ProgressCallback = Callable[[float, str], None]

_PROGRESS = b"::progress"
_CHUNK = 64 * 1024  # longest piece read at once, so a newline-less stream cannot eat memory
_GRACE = 0.5  # seconds between SIGTERM and SIGKILL
_DRAIN_TIMEOUT = 5.0  # seconds to wait for pipes still held open by a process that left the group


def validate_arguments(script: Script, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a job's arguments against the script's declared ones.

    Args:
        script: the script the job runs.
        arguments: argument name -> value, as given by the job (``None``: none).

    Returns:
        A new dict: the given values plus the defaults of missing optional ones,
        copied so later changes to the caller's objects cannot leak in.

    Raises:
        InvalidArguments: unknown name, missing required argument, wrong type, or
            a value JSON cannot represent; the message names script and argument.
    """
    def invalid(problem: str) -> InvalidArguments:
        return InvalidArguments(f"script {script.id!r}: {problem}")

    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, Mapping):
        raise invalid(f"arguments must be an object, got {type(arguments).__name__}")
    unknown = sorted(str(name) for name in arguments if name not in script.arguments)
    if unknown:
        raise invalid(f"unknown argument(s) {', '.join(unknown)} (declared: {', '.join(script.arguments) or 'none'})")
    result: dict[str, Any] = {}
    for name, spec in script.arguments.items():
        if name not in arguments:
            if spec.required:
                raise invalid(f"argument {name!r} is required")
            if spec.default is not None:
                result[name] = copy.deepcopy(spec.default)
            continue
        value = arguments[name]
        if not spec.accepts(value):  # name the type only: the value may be a secret
            raise invalid(f"argument {name!r} must be of type {spec.type}, got {type(value).__name__}")
        try:
            # The round trip copies the value and makes it exactly what the script will see.
            result[name] = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise invalid(f"argument {name!r} is not JSON-serialisable: {e}") from None
    return result


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The outcome of one attempt.

    Attributes:
        status: one of ``STATUSES``.
        exit_code: the child's exit code (negative: killed by that signal);
            ``None`` when no process ran.
        stdout: captured standard output without progress lines (``python``: empty).
        stderr: captured standard error (``python``: empty).
        duration: seconds the attempt took.
        value: the JSON-ready return value of a ``python`` script.
        error: human-readable cause when the status is not ``succeeded``.
        stdout_truncated: stdout exceeded the output cap; the rest was discarded.
        stderr_truncated: likewise for stderr.
        extra: fields of other kinds of script (``http``: ``status_code``,
            ``headers``, ``body``, ``json``; ``sql``: ``rows``, ``rowcount``),
            merged into ``to_dict()`` at the top level.
    """

    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    value: Any = None
    error: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; use one of {', '.join(STATUSES)}")

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data.update(self.extra)
        return data


def _report(script_id: str, on_progress: ProgressCallback | None, fraction: Any, message: Any = "") -> None:
    """Deliver one progress event, clamped to 0..1; a raising callback is logged, never raised."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if on_progress is None or not math.isfinite(value):
        return
    try:
        on_progress(min(1.0, max(0.0, value)), str(message))
    except Exception:  # a broken observer must not fail the job it observes
        log.exception("script %r: the progress callback raised; continuing", script_id)


def _parse_progress(line: bytes) -> tuple[float, str] | None:
    """``(fraction, message)`` for a well-formed ``::progress <fraction> [message]`` line, else ``None``."""
    parts = line.decode("utf-8", "replace").strip().split(None, 2)
    if len(parts) < 2 or parts[0] != _PROGRESS.decode():
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    return (fraction, parts[2] if len(parts) == 3 else "") if math.isfinite(fraction) else None


class _Capture:
    """One stream's output, kept up to a cap; remembers the last non-blank line."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.last_line = b""

    def add(self, piece: bytes) -> None:
        if piece.strip():
            self.last_line = piece.strip()[-200:]
        room = max(self.cap - len(self.data), 0)
        if len(piece) > room:
            self.truncated = True
            piece = piece[:room]
        self.data += piece

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class CommandExecution:
    """One attempt of a ``command`` script, run as a child process (POSIX only).

    The argv list runs directly (never through a shell) in the script's folder
    and in a new session, so the child and everything it starts form one process
    group. The arguments go to stdin as one JSON object, then stdin is closed. On
    timeout or :meth:`cancel` the group gets SIGTERM and, after a short grace,
    SIGKILL; what is left in the group when the child exits normally is killed
    too, so an attempt leaves no orphans. ``on_progress`` is called from a reader
    thread, not from the thread in :meth:`run`.

    Args:
        script: a ``command`` script.
        arguments: validated arguments (see :func:`validate_arguments`).
        on_progress: called with ``(fraction, message)`` per progress line.
        timeout: seconds before the group is killed (default: ``script.timeout``).
        output_cap: bytes kept per stream.
        clock: monotonic seconds, for ``duration`` (timeouts use real time).

    Raises:
        ValueError: the script is not a ``command`` script.
    """

    def __init__(self, script: Script, arguments: Mapping[str, Any], *, on_progress: ProgressCallback | None = None,
                 timeout: float | None = None, output_cap: int = DEFAULT_OUTPUT_CAP,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if script.kind != "command" or not script.command:
            raise ValueError(f"script {script.id!r}: CommandExecution needs a command script, got kind {script.kind!r}")
        self.script = script
        self._arguments = dict(arguments)
        self._on_progress = on_progress
        self._timeout = script.timeout if timeout is None else timeout
        self._clock = clock
        self._stdout = _Capture(output_cap)
        self._stderr = _Capture(output_cap)
        self._started = False
        self._cancelled = threading.Event()
        self._exited = threading.Event()
        self._wake = threading.Event()  # set by cancel() or by the child's exit

    def cancel(self) -> None:
        """From any thread: make :meth:`run` kill the group and return ``cancelled`` (or not start at all)."""
        self._cancelled.set()
        self._wake.set()

    def run(self) -> ExecutionResult:
        """Run the attempt to completion in the calling thread.

        Raises:
            RuntimeError: called a second time.
        """
        if self._started:
            raise RuntimeError("a CommandExecution runs only once")
        self._started = True
        started = self._clock()
        if self._cancelled.is_set():
            return self._result("cancelled", started, None, "cancelled before start")
        try:
            payload = json.dumps(self._arguments, allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            return self._result("failed", started, None, f"arguments are not JSON-serialisable: {e}")
        program = self.script.command[0]
        log.debug("script %r: starting %s (timeout %gs)", self.script.id, program, self._timeout)
        try:
            proc = subprocess.Popen(self.script.command, cwd=self.script.folder, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            return self._result("failed", started, None, f"cannot start {program!r}: {e.strerror or e}")
        assert proc.stdout is not None and proc.stderr is not None
        readers = [threading.Thread(target=self._pump, args=(proc.stdout, self._stdout, True), daemon=True),
                   threading.Thread(target=self._pump, args=(proc.stderr, self._stderr, False), daemon=True)]
        # stdin is fed by its own thread: a child that never reads must not hold off the timeout.
        for thread in (*readers, threading.Thread(target=self._feed_and_wait, args=(proc, payload), daemon=True)):
            thread.start()
        self._wake.wait(self._timeout)
        status = "succeeded"
        if not self._exited.is_set():
            status = "cancelled" if self._cancelled.is_set() else "timeout"
            self._signal(proc, signal.SIGTERM)
            self._exited.wait(_GRACE)
        # Also after a normal exit, whatever the child left running dies with it. The child
        # is not reaped yet, so its pid, the group's id, cannot have been reused.
        self._signal(proc, signal.SIGKILL)
        self._exited.wait()
        code = proc.wait()
        for reader in readers:
            reader.join(_DRAIN_TIMEOUT)
            if reader.is_alive():
                log.warning("script %r: output held open by a process that left the group", self.script.id)
        error = {"timeout": f"timed out after {self._timeout:g}s", "cancelled": "cancelled"}.get(status)
        if status == "succeeded" and code != 0:
            status = "failed"
            error = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            if self._stderr.last_line:
                error += ": " + self._stderr.last_line.decode("utf-8", "replace")
        return self._result(status, started, code, error)

    def _result(self, status: str, started: float, code: int | None, error: str | None) -> ExecutionResult:
        duration = self._clock() - started
        log.info("script %r: %s in %.2fs", self.script.id, status, duration)
        out, err = self._stdout, self._stderr
        return ExecutionResult(status, code, out.text(), err.text(), duration, error=error,
                               stdout_truncated=out.truncated, stderr_truncated=err.truncated)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already empty
            os.killpg(proc.pid, sig)  # the child leads a new session: its pid is the group id

    def _feed_and_wait(self, proc: subprocess.Popen[bytes], payload: bytes) -> None:
        assert proc.stdin is not None
        # A child may exit or close stdin without reading it: its choice, not an error.
        with contextlib.suppress(OSError):
            proc.stdin.write(payload)
        with contextlib.suppress(OSError):  # closes even when the flush fails
            proc.stdin.close()
        # WNOWAIT: wait for the exit but leave reaping to run(), after it has swept the group.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        self._exited.set()
        self._wake.set()

    def _pump(self, stream: IO[bytes], sink: _Capture, progress: bool) -> None:
        at_line_start = True
        with stream:
            for piece in iter(lambda: stream.readline(_CHUNK), b""):
                # Only a complete line can be a progress line, never a piece of a long one.
                whole = at_line_start and (piece.endswith(b"\n") or len(piece) < _CHUNK)
                at_line_start = piece.endswith(b"\n")
                event = _parse_progress(piece) if progress and whole and piece.startswith(_PROGRESS) else None
                if event is None:
                    sink.add(piece)
                else:
                    _report(self.script.id, self._on_progress, *event)


@functools.lru_cache(maxsize=256)
def _load(spec: str) -> tuple[Callable[..., Any], bool]:
    """The function named ``package.module:function`` and whether it takes ``progress``.

    Raises:
        ValueError: the spec is malformed or does not name a callable.
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or ":" in attr_path:
        raise ValueError(f"option 'callable' must be 'package.module:function', got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
    except (Exception, SystemExit) as e:  # importing runs arbitrary module code
        raise ValueError(f"cannot load callable {spec!r}: {type(e).__name__}: {e}") from None
    if not callable(target):
        raise ValueError(f"callable {spec!r} is a {type(target).__name__}, not a function")
    try:
        wants_progress = "progress" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        wants_progress = False  # no signature to inspect (some builtins)
    return target, wants_progress


def run_python(script: Script, arguments: Mapping[str, Any], on_progress: ProgressCallback | None = None, *,
               clock: Callable[[], float] = time.monotonic) -> ExecutionResult:
    """Run one attempt of a ``python`` script in the calling thread.

    Calls ``script.options["callable"]`` (``package.module:function``, resolved
    once and cached) with the arguments as keyword arguments, plus
    ``progress(fraction, message="")`` when it has a parameter of that name.
    A thread cannot be killed, so ``script.timeout`` is NOT enforced and the call
    cannot be cancelled; what it prints is not captured (``sys.stdout`` is
    process-wide).

    Args:
        script: a ``python`` script.
        arguments: validated arguments (see :func:`validate_arguments`).
        on_progress: called with ``(fraction, message)`` per progress report.
        clock: monotonic seconds, for ``duration``.

    Returns:
        ``succeeded`` with the JSON-ready return value, or ``failed`` for a bad
        callable spec, an exception, or a return value JSON cannot represent.

    Raises:
        ValueError: the script is not a ``python`` script.
    """
    if script.kind != "python":
        raise ValueError(f"script {script.id!r}: run_python needs a python script, got kind {script.kind!r}")
    started = clock()

    def done(status: str, error: str | None = None, value: Any = None) -> ExecutionResult:
        duration = clock() - started
        log.info("script %r: %s in %.2fs", script.id, status, duration)
        return ExecutionResult(status, duration=duration, value=value, error=error)

    spec = script.options.get("callable")
    try:
        if not isinstance(spec, str):  # checked before the cache, which needs a hashable key
            raise ValueError(f"option 'callable' must be 'package.module:function', got {spec!r}")
        function, wants_progress = _load(spec)
    except ValueError as e:
        return done("failed", f"script {script.id!r}: {e}")
    kwargs = dict(arguments)
    if wants_progress and "progress" not in kwargs:
        kwargs["progress"] = lambda fraction, message="": _report(script.id, on_progress, fraction, message)
    try:
        value = function(**kwargs)
    except (Exception, SystemExit) as e:  # SystemExit too: it would silently end the worker thread
        log.debug("script %r raised", script.id, exc_info=True)
        return done("failed", f"{type(e).__name__}: {e}")
    try:
        value = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        return done("failed", f"the return value is not JSON-serialisable: {e}")
    return done("succeeded", value=value)
