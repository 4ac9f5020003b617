"""Run ``python`` scripts in a child process (``"isolation": "process"``) instead of a worker's thread.

In-thread (``run_python``), a CPU-bound job holds the runtime's GIL and every actor
hand-off waits for the interpreter's switch interval. Here the job runs in a
reused host process (``runtime.python_host``) that speaks JSON lines, never pickle:
the GIL it holds is its own, and unlike a thread it can be killed, so the
script's timeout and ``cancel`` are enforced.

Plain blocking code, no actors and no extra threads: one ``poll`` loop in the
calling thread writes the request and reads progress and the result against the
deadline. Argument values may be secrets, so they are never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from runtime.child_exit import EXIT_POLL, LONGEST_POLL, exited_within, open_pidfd
from runtime.executors import NOT_RETRYABLE, ExecutionResult, ProgressCallback, report_progress, require_kind
from runtime.python_host import READY
from runtime.registry import Script

__all__ = ["PythonExecution", "PythonProcess"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024  # bytes read from the host at once
_READ_CHUNKS = 16  # reads before the loop looks at the deadline and a cancel again
_CLOSE_GRACE = 1.0  # seconds close() lets the host end by itself before killing its group
_EXIT_GRACE = 1.0  # seconds to wait for the exit of a host that closed its output mid-job
_READY = READY.rstrip(b"\n")
_PATH_ENV = "RUNTIME_PYTHON_HOST_PATH"  # our sys.path as a JSON list, for the host's bootstrap
# Not ``-m runtime.python_host``: the host must import what we would, so our sys.path is
# set before ``runtime`` itself is looked up; and importing the ``runtime`` package may
# already import runtime.python_host, which ``-m`` would then run as a second copy.
_BOOTSTRAP = (f"import json, os, sys; sys.path[:] = json.loads(os.environ.pop({_PATH_ENV!r})); "
              "from runtime.python_host import main; sys.exit(main())")
START_TIMEOUT = 30.0  # seconds a new host may take to be ready (it imports the runtime package)


@dataclass(slots=True)
class _Attempt:
    """One attempt's cancel flag: a late cancel marks its own, finished attempt, never the next."""

    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: str
    value: Any = None
    error: str | None = None
    exit_code: int | None = None
    retryable: bool = True


class _Host:
    """One live host child: its pipes, a pidfd to see it exit (``None``: a ``waitid``
    poll sees it), and unfinished output."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.pid = proc.pid
        self.pidfd = open_pidfd(proc.pid)  # readable once it exits; does not reap it
        self.stdin = proc.stdin.fileno()
        self.stdout = proc.stdout.fileno()
        os.set_blocking(self.stdin, False)  # a host that stops reading must not hold off the deadline
        os.set_blocking(self.stdout, False)
        self._pieces: list[bytes] = []  # the start of a line no newline has finished yet
        self.ready = False  # it has said so: its start-up no longer counts against a job's timeout

    @classmethod
    def start(cls) -> _Host:
        """Start a host that imports what this process would (it gets our ``sys.path``).

        Raises:
            OSError: the interpreter cannot be started.
        """
        env = {**os.environ, _PATH_ENV: json.dumps([os.path.abspath(p) for p in sys.path if isinstance(p, str)])}
        # stderr is inherited: the host's log and the jobs' prints go where the runtime's go,
        # and nothing has to read it for the host to make progress.
        proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, bufsize=0, env=env, start_new_session=True)
        log.debug("python host %d started", proc.pid)
        return cls(proc)

    def exited(self, timeout: float = 0.0) -> bool:
        """Whether the host has exited, waiting up to ``timeout`` seconds."""
        return exited_within(self.pid, self.pidfd, timeout)

    def read_lines(self) -> list[bytes] | None:
        """The complete lines available now (maybe none), from at most ``_READ_CHUNKS``
        reads, so that a host writing without pause cannot hold off the caller's
        deadline; ``None`` at end of output."""
        lines: list[bytes] = []
        for _ in range(_READ_CHUNKS):
            try:
                chunk = os.read(self.stdout, _CHUNK)
            except BlockingIOError:
                return lines
            if not chunk:
                return lines or None
            end = chunk.rfind(b"\n")
            if end < 0:  # kept as a piece: joined once, when its newline comes (a long line costs linear time)
                self._pieces.append(chunk)
                continue
            self._pieces.append(chunk[:end])
            lines += b"".join(self._pieces).split(b"\n")
            self._pieces = [chunk[end + 1:]]
        return lines

    def kill(self) -> int:
        """SIGKILL the host's group, reap it, release its descriptors; returns its exit code."""
        # Not yet reaped, so its pid, the group's id, cannot have been reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        code = self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
        return code


class PythonProcess:
    """A reusable child process that runs ``python`` scripts for one owner thread.

    The host starts at the first :meth:`run` and serves run after run. A run
    that times out or is cancelled kills the host's process group (SIGKILL); so
    does the host dying mid-job; the next run starts a new host. Processes a job
    starts and leaves running live until then, or until :meth:`close`.

    Not thread-safe, except the cancels (:meth:`cancel`, :meth:`PythonExecution.cancel`):
    running and :meth:`close` belong to the owner thread, which is also where
    ``on_progress`` is called. The host's import path is this process's
    ``sys.path`` as it was when the host started.

    Args:
        clock: monotonic seconds, for ``duration`` (timeouts use real time).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._host: _Host | None = None
        self._attempt: _Attempt | None = None
        self._closed = False
        # cancel() wakes the run's poll through this pipe; the run does the killing,
        # so only the owner thread ever signals or reaps the host.
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)  # a full pipe means a wake-up is already pending
        self._wake_w = open(wake_w, "wb", buffering=0)  # noqa: SIM115 - closed by close()

    @property
    def pid(self) -> int | None:
        """The current host's pid; ``None`` before the first run or after a kill."""
        return None if self._host is None else self._host.pid

    def execution(self, script: Script, arguments: Mapping[str, Any], *,
                  on_progress: ProgressCallback | None = None) -> PythonExecution:
        """One attempt to run here, with its own cancel handle (see :class:`PythonExecution`).

        Raises:
            ValueError: the script is not a ``python`` script.
        """
        return PythonExecution(self, script, arguments, on_progress=on_progress)

    def run(self, script: Script, arguments: Mapping[str, Any],
            on_progress: ProgressCallback | None = None) -> ExecutionResult:
        """Run one attempt of a ``python`` script in the host, in the calling thread.

        Args:
            script: a ``python`` script; ``script.timeout`` is enforced.
            arguments: validated arguments (see ``validate_arguments``).
            on_progress: called with ``(fraction, message)`` per progress report.

        Returns:
            The same shape as ``run_python``: ``succeeded`` with the value, or
            ``failed`` (bad callable, exception, non-JSON value, host died),
            ``timeout`` or ``cancelled``; ``exit_code`` is set when the host ended.

        Raises:
            ValueError: the script is not a ``python`` script.
            RuntimeError: called after :meth:`close`.
        """
        return self.execution(script, arguments, on_progress=on_progress).run()

    def cancel(self) -> None:
        """From any thread: kill the run in progress, which returns ``cancelled``.

        Only the run in progress is affected: when no run is, this does nothing,
        so a late call can never cancel a later job. To cancel an attempt that
        may not have started yet, use its :meth:`PythonExecution.cancel`.
        """
        attempt = self._attempt
        if attempt is not None:
            self._cancel(attempt)

    def close(self) -> None:
        """End the host (end of input, then SIGKILL to its group after a grace) and free everything.

        Idempotent; the object cannot run again.
        """
        if self._closed:
            return
        self._closed = True
        host, self._host = self._host, None
        if host is not None:
            assert host.proc.stdin is not None
            with contextlib.suppress(OSError):
                host.proc.stdin.close()  # the host's signal to finish
            host.exited(_CLOSE_GRACE)
            code = host.kill()  # also sweeps what its jobs left running in its group
            log.debug("python host %d closed (exit code %d)", host.pid, code)
        self._wake_w.close()
        os.close(self._wake_r)

    def __enter__(self) -> PythonProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _cancel(self, attempt: _Attempt) -> None:
        attempt.cancelled = True
        with contextlib.suppress(ValueError, OSError):  # ValueError: closed meanwhile
            self._wake_w.write(b"\0")  # a wake-up meant for another attempt is harmless

    def _run(self, script: Script, arguments: Mapping[str, Any], attempt: _Attempt,
             on_progress: ProgressCallback | None) -> ExecutionResult:
        if self._closed:
            raise RuntimeError("PythonProcess is closed")
        started = self._clock()
        self._attempt = attempt
        try:
            if attempt.cancelled:
                outcome = _Outcome("cancelled", error="cancelled before start")
            else:
                outcome = self._attempt_run(script, arguments, attempt, on_progress)
        finally:
            self._attempt = None
        duration = self._clock() - started
        log.info("script %r: %s in %.2fs", script.id, outcome.status, duration)
        return ExecutionResult(outcome.status, outcome.exit_code, duration=duration, value=outcome.value,
                               error=outcome.error, extra={} if outcome.retryable else NOT_RETRYABLE)

    def _attempt_run(self, script: Script, arguments: Mapping[str, Any], attempt: _Attempt,
                     on_progress: ProgressCallback | None) -> _Outcome:
        try:
            request = {"script": script.id, "callable": script.options.get("callable"), "arguments": dict(arguments)}
            payload = json.dumps(request, allow_nan=False).encode() + b"\n"
        except (TypeError, ValueError) as e:
            return _Outcome("failed", error=f"script {script.id!r}: arguments are not JSON-serialisable: {e}")
        try:
            host = self._live_host()
        except OSError as e:
            return _Outcome("failed", error=f"script {script.id!r}: cannot start the python host: {e}")
        return self._exchange(host, payload, script, attempt, on_progress)

    def _live_host(self) -> _Host:
        """The current host, or a new one if there is none or it died while idle."""
        host = self._host
        if host is not None and host.exited():
            code = host.kill()
            log.warning("python host %d exited between jobs (code %d); starting another", host.pid, code)
            host = None
        if host is None:
            host = self._host = _Host.start()
        return host

    def _exchange(self, host: _Host, payload: bytes, script: Script, attempt: _Attempt,
                  on_progress: ProgressCallback | None) -> _Outcome:
        """Send the request and read the host's lines until the result, its death, the deadline or a cancel."""
        deadline = time.monotonic() + (script.timeout if host.ready else START_TIMEOUT)
        unsent = memoryview(payload)
        poller = select.poll()
        for fd in (host.stdout, host.pidfd, self._wake_r):
            if fd is not None:
                poller.register(fd, select.POLLIN)
        exit_poll = EXIT_POLL[0]  # without a pidfd: the pause before the next look at the host
        unsent = self._write(host, unsent)  # usually all of it: the host is waiting for it
        if unsent:
            poller.register(host.stdin, select.POLLOUT)
        while True:
            if attempt.cancelled:
                return self._discard(host, "cancelled", "cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not host.ready:
                error = f"script {script.id!r}: the python host was not ready within {START_TIMEOUT:g}s"
                return self._discard(host, "failed", error)
            if remaining <= 0:
                return self._discard(host, "timeout", f"timed out after {script.timeout:g}s")
            if host.pidfd is None:  # a host that dies while a process it started holds its output
                remaining = min(remaining, exit_poll)
                exit_poll = min(exit_poll * 2, EXIT_POLL[1])
            ready = dict(poller.poll(math.ceil(min(remaining, LONGEST_POLL) * 1000)))
            if host.stdout in ready or host.pidfd in ready or (host.pidfd is None and host.exited()):
                was_ready = host.ready
                outcome = self._read(host, script, on_progress)
                if outcome is not None:
                    return outcome
                if host.ready and not was_ready:  # the job's own time starts now
                    deadline = time.monotonic() + script.timeout
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if unsent and host.stdin in ready:
                unsent = self._write(host, unsent)
                if not unsent:
                    poller.unregister(host.stdin)

    @staticmethod
    def _write(host: _Host, unsent: memoryview) -> memoryview:
        try:
            return unsent[os.write(host.stdin, unsent):]
        except BlockingIOError:
            return unsent
        except BrokenPipeError:
            return unsent[len(unsent):]  # the host is going: its pidfd or output says how

    def _read(self, host: _Host, script: Script, on_progress: ProgressCallback | None) -> _Outcome | None:
        """Handle what the host wrote; an outcome once the attempt is over, else ``None``."""
        lines = host.read_lines()
        for line in lines or ():
            if not host.ready and line == _READY:
                host.ready = True
                continue
            try:
                outcome = _parse(line, script, on_progress)
            except _Malformed as e:  # whatever wrote it, the host's output can no longer be trusted
                return self._discard(host, "failed", str(e))
            if outcome is not None:
                if host.exited():  # it answered, then died: the answer stands, the host does not
                    self._discard(host, outcome.status, outcome.error)
                return outcome
        if lines is not None and not host.exited():
            return None
        # Closing its output and exiting are separate steps of an exit: allow a moment between them.
        exited = host.exited(_EXIT_GRACE)
        code = self._discard(host, "failed", None).exit_code
        error = f"python host {f'exited with code {code}' if exited else 'closed its output'} " \
                f"while running script {script.id!r}"
        if not host.ready:
            error += " (it failed to start: see its stderr)"
        log.warning("%s (pid %d)", error, host.pid)
        return _Outcome("failed", error=error, exit_code=code)

    def _discard(self, host: _Host, status: str, error: str | None) -> _Outcome:
        """Kill ``host`` and forget it: the next run starts another."""
        code = host.kill()
        if self._host is host:
            self._host = None
        log.debug("python host %d killed (%s, exit code %d)", host.pid, status, code)
        return _Outcome(status, error=error, exit_code=code)


class PythonExecution:
    """One attempt of a ``python`` script on a :class:`PythonProcess`, shaped like ``CommandExecution``.

    Its :meth:`cancel` can be handed out before :meth:`run` starts: a cancel that
    comes first makes :meth:`run` return ``cancelled`` without running anything,
    one that comes after the attempt ended does nothing (the process may be
    running a later attempt by then).

    Args:
        process: the process to run on; :meth:`run` must be called by its owner thread.
        script: a ``python`` script.
        arguments: validated arguments.
        on_progress: called with ``(fraction, message)`` per progress report.

    Raises:
        ValueError: the script is not a ``python`` script.
    """

    def __init__(self, process: PythonProcess, script: Script, arguments: Mapping[str, Any], *,
                 on_progress: ProgressCallback | None = None) -> None:
        require_kind(script, "python", "PythonProcess")
        self.script = script
        self._process = process
        self._arguments = arguments
        self._on_progress = on_progress
        self._attempt = _Attempt()
        self._started = False

    def run(self) -> ExecutionResult:
        """Run the attempt to completion in the calling thread (see :meth:`PythonProcess.run`).

        Raises:
            RuntimeError: called a second time, or the process is closed.
        """
        if self._started:
            raise RuntimeError("a PythonExecution runs only once")
        self._started = True
        return self._process._run(self.script, self._arguments, self._attempt, self._on_progress)

    def cancel(self) -> None:
        """From any thread: end this attempt as ``cancelled`` (or never start it)."""
        self._process._cancel(self._attempt)


class _Malformed(ValueError):
    """The host wrote a line that is not part of the protocol."""


def _parse(line: bytes, script: Script, on_progress: ProgressCallback | None) -> _Outcome | None:
    """One protocol line: progress is delivered (``None``), a final line is the outcome.

    Raises:
        _Malformed: anything else.
    """
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than any host sends
        message = None
    if isinstance(message, dict):
        progress = message.get("progress")
        if isinstance(progress, list) and len(progress) == 2:
            report_progress(script.id, on_progress, *progress)
            return None
        if message.get("status") == "succeeded" and "value" in message:
            return _Outcome("succeeded", value=message["value"])
        if message.get("status") == "failed" and isinstance(message.get("error"), str):
            return _Outcome("failed", error=message["error"], retryable=message.get("retryable") is not False)
    raise _Malformed(f"script {script.id!r}: python host sent a malformed line: {line[:200]!r}")
