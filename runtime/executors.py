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
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

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
_LINE_TAIL = 1024  # bytes of an unfinished line kept, to know the last line of a stream
_EXIT_POLL = (0.0005, 0.05)  # without a pidfd: first and longest pause between exit checks, seconds
_LONGEST_WAIT = 3600.0  # seconds poll() sleeps at most (it cannot take a timeout of years)
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # the most a pipe takes in one write, atomically
_ONE = (1).to_bytes(8, sys.byteorder)  # a wake-up: an eventfd takes 8-byte counters, a pipe any bytes
#: Wait for the child's exit on a pidfd (Linux >= 5.3) rather than polling ``waitid``, and
#: wake the loop through an eventfd rather than a pipe. Tests switch them off to cover both ways.
_USE_PIDFD = hasattr(os, "pidfd_open")
_USE_EVENTFD = hasattr(os, "eventfd")


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
    """One stream's output, kept up to a cap; remembers the last non-blank line.

    Pieces are whatever a read returned: a line may span several of them.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.last_line = b""
        self._open_line = b""  # the end of the line no newline has finished yet

    def add(self, piece: bytes) -> None:
        end = piece.rfind(b"\n")
        if end < 0:
            self._open_line = (self._open_line + piece)[-_LINE_TAIL:]
        else:
            finished = (self._open_line + piece[:end]).rstrip()
            if finished:
                self.last_line = finished[finished.rfind(b"\n") + 1:].strip()[-200:]
            self._open_line = piece[end + 1:][-_LINE_TAIL:]
        room = max(self.cap - len(self.data), 0)
        if len(piece) > room:
            self.truncated = True
            piece = piece[:room]
        self.data += piece

    def want(self) -> int:
        return _CHUNK

    def close(self) -> None:
        """The stream ended: a last line without a newline counts too."""
        if self._open_line.strip():
            self.last_line = self._open_line.strip()[-200:]
        self._open_line = b""

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class _ProgressFilter:
    """Stdout as it is read: progress lines become events, everything else goes to the capture.

    Only a whole line of at most ``_CHUNK`` bytes (newline included) can be a
    progress line. The start of a line that may still become one is held back
    until its newline arrives; ``want()`` sizes the next read so that what is held
    plus what is read never exceeds one chunk, whatever the child writes.
    """

    def __init__(self, sink: _Capture, report: Callable[[float, str], None]) -> None:
        self._sink = sink
        self._report = report
        self._held = b""
        self._in_output_line = False  # the start of the current line went to the capture

    def want(self) -> int:
        return _CHUNK - len(self._held)

    def add(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        size, pos = len(data), 0
        if self._in_output_line:
            newline = data.find(b"\n")
            if newline < 0:
                self._sink.add(data)
                return
            pos = newline + 1
            self._in_output_line = False
        passed = 0  # data[:passed] is dealt with
        end = size  # data[end:] is held back
        while pos < size:
            newline = data.find(b"\n", pos)
            if newline < 0:
                if size - pos < _CHUNK and _PROGRESS.startswith(data[pos:pos + len(_PROGRESS)]):
                    self._held, end = data[pos:], pos
                else:
                    self._in_output_line = True
                break
            if newline + 1 - pos <= _CHUNK and data.startswith(_PROGRESS, pos):
                event = _parse_progress(data[pos:newline + 1])
                if event is not None:
                    if passed < pos:
                        self._sink.add(data[passed:pos])
                    self._report(*event)
                    passed = newline + 1
            pos = newline + 1
        if passed < end:
            self._sink.add(data[passed:end])

    def close(self) -> None:
        """The stream ended: a held line without a newline is whole now."""
        held, self._held = self._held, b""
        event = _parse_progress(held) if held.startswith(_PROGRESS) else None
        if event is not None:
            self._report(*event)
        elif held:
            self._sink.add(held)
        self._sink.close()


class _Descriptors:
    """The file descriptors of one attempt, each closed exactly once (a double close could hit
    a descriptor another thread has just been given)."""

    def __init__(self) -> None:
        self._open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        read_end, write_end = os.pipe()
        self._open.update((read_end, write_end))
        return read_end, write_end

    def add(self, fd: int) -> int:
        self._open.add(fd)
        return fd

    def close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self._open):
            self.close(fd)


class CommandExecution:
    """One attempt of a ``command`` script, run as a child process (POSIX only).

    The argv list runs directly (never through a shell) in the script's folder,
    in a process group of its own that everything the child starts joins, and
    with no descriptors but 0-2. The arguments go to stdin as one JSON object,
    then stdin is closed. On timeout or :meth:`cancel` the group gets SIGTERM
    and, after a short grace, SIGKILL; what is left in the group when the child
    exits normally is killed too, so an attempt leaves no orphans (a process that
    moved to another group or session is out of reach; the outputs it holds open
    are read for at most a few seconds more).

    :meth:`run` does all the work in the calling thread, in one loop: it feeds
    stdin, reads both outputs, and waits for the child's exit (a pidfd on Linux
    >= 5.3, else a ``waitid`` poll), the timeout and a cancel (a wake-up
    descriptor :meth:`cancel` writes to). So ``on_progress`` is called from the
    thread in :meth:`run`; it should return quickly, as nothing else in the
    attempt moves meanwhile.

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
        self._lock = threading.Lock()  # orders cancel() against run() opening and closing the wake-up
        self._cancelled = False
        self._wake: int | None = None  # write end of the wake-up while run() may be waiting

    def cancel(self) -> None:
        """From any thread: make :meth:`run` kill the group and return ``cancelled`` (or not start at all)."""
        with self._lock:
            self._cancelled = True
            if self._wake is not None:
                _poke(self._wake)

    def run(self) -> ExecutionResult:
        """Run the attempt to completion in the calling thread.

        Raises:
            RuntimeError: called a second time.
        """
        if self._started:
            raise RuntimeError("a CommandExecution runs only once")
        self._started = True
        started = self._clock()
        if self._cancelled:
            return self._result("cancelled", started, None, "cancelled before start")
        try:
            payload = json.dumps(self._arguments, allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            return self._result("failed", started, None, f"arguments are not JSON-serialisable: {e}")
        fds = _Descriptors()
        try:
            wake_read, wake_write = _wake_up(fds)
            with self._lock:
                if self._cancelled:
                    return self._result("cancelled", started, None, "cancelled before start")
                self._wake = wake_write
            return self._spawn_and_supervise(fds, wake_read, payload, started)
        finally:
            with self._lock:
                self._wake = None
            fds.close_all()

    def _spawn_and_supervise(self, fds: _Descriptors, wake: int, payload: bytes, started: float) -> ExecutionResult:
        program = self.script.command[0]
        log.debug("script %r: starting %s (timeout %gs)", self.script.id, program, self._timeout)
        stdin_read, stdin = fds.pipe()
        stdout, stdout_write = fds.pipe()
        stderr, stderr_write = fds.pipe()
        try:
            # A new process group, not a new session: where the kernel has scheduler autogroups,
            # setsid() creates one per child, which cost a third more time per short attempt.
            # close_fds (the default) keeps every descriptor but 0-2 from the child; Popen uses
            # vfork here, measured as cheap as os.posix_spawn, which cannot set the folder.
            proc = subprocess.Popen(self.script.command, cwd=self.script.folder, stdin=stdin_read,
                                    stdout=stdout_write, stderr=stderr_write, process_group=0)
        except OSError as e:
            return self._result("failed", started, None, f"cannot start {program!r}: {e.strerror or e}")
        for fd in (stdin_read, stdout_write, stderr_write):  # the child's ends: only it may hold them now
            fds.close(fd)
        try:
            outcome = self._supervise(proc, fds, stdin, stdout, stderr, wake, payload)
        except BaseException:
            # A bug, or an interrupt from a callback: do not leave the group running.
            self._signal(proc.pid, signal.SIGKILL, child_too=True)
            proc.wait()
            raise
        code = proc.wait()  # the child has exited: this only reaps it
        error = {"timeout": f"timed out after {self._timeout:g}s", "cancelled": "cancelled"}.get(outcome or "")
        status = outcome or "succeeded"
        if status == "succeeded" and code != 0:
            status = "failed"
            error = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            if self._stderr.last_line:
                error += ": " + self._stderr.last_line.decode("utf-8", "replace")
        return self._result(status, started, code, error)

    def _supervise(self, proc: subprocess.Popen[bytes], fds: _Descriptors, stdin: int, stdout: int, stderr: int,
                   wake: int, payload: bytes) -> str | None:
        """Feed stdin, read both outputs, and wait for the exit, the timeout or a cancel, all in one loop.

        Returns once the child has exited and both outputs are at their end (or have
        been held open past the drain timeout). The child is not reaped yet, so its
        pid, the group's id, cannot have been reused for any of the signals sent here.

        Returns:
            ``"timeout"`` or ``"cancelled"`` when the group had to be killed, else ``None``.
        """
        poller = select.poll()
        pidfd = _open_pidfd(proc.pid, fds)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)  # readable once the child has exited
        poller.register(wake, select.POLLIN)
        waking = True  # the wake-up is registered
        report = functools.partial(_report, self.script.id, self._on_progress)
        stdout_filter = _ProgressFilter(self._stdout, report)
        readers: dict[int, _Capture | _ProgressFilter] = {stdout: stdout_filter, stderr: self._stderr}
        for fd in readers:  # read only when poll says so: as the only reader, a read never blocks
            poller.register(fd, select.POLLIN)
        # A payload up to PIPE_BUF goes into the empty pipe at once, even a blocking one; a larger
        # one goes in pieces as the child reads, as a child that never reads must not hold off
        # the timeout.
        if len(payload) > _PIPE_BUF:
            os.set_blocking(stdin, False)
        unsent = _feed(stdin, memoryview(payload))
        if unsent:
            poller.register(stdin, select.POLLOUT)
        else:
            fds.close(stdin)

        outcome: str | None = None
        exited = False
        deadline: float | None = time.monotonic() + self._timeout  # next thing to do without an event
        killing = False  # SIGTERM sent; SIGKILL is due at the deadline
        exit_poll = _EXIT_POLL[0]
        while not (exited and not readers):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if exited:
                    log.warning("script %r: output held open by a process that left the group", self.script.id)
                    break
                if killing:
                    self._signal(proc.pid, signal.SIGKILL, child_too=True)
                    deadline = None  # nothing left to do but wait for the exit
                else:
                    outcome = outcome or "timeout"
                    self._signal(proc.pid, signal.SIGTERM)
                    killing, deadline = True, now + _GRACE
                continue
            wait = None if deadline is None else min(deadline - now, _LONGEST_WAIT)
            if pidfd is None and not exited:
                wait = exit_poll if wait is None else min(wait, exit_poll)
                exit_poll = min(exit_poll * 2, _EXIT_POLL[1])
            child_exited = cancelled = False
            for fd, _ in poller.poll(None if wait is None else wait * 1000):
                if fd in readers:
                    if not _read(fd, readers[fd]):
                        poller.unregister(fd)
                        readers.pop(fd).close()
                        fds.close(fd)
                        exit_poll = _EXIT_POLL[0]  # the end of output often comes with the exit
                elif fd == stdin:
                    unsent = _feed(stdin, unsent)
                    if not unsent:
                        poller.unregister(stdin)
                        fds.close(stdin)
                elif fd == pidfd:
                    child_exited = True
                elif fd == wake:
                    cancelled = True
            if pidfd is None and not exited:
                child_exited = _has_exited(proc.pid)
            if child_exited and not exited:
                # Also after a normal exit, whatever the child left running dies with it.
                exited = True
                self._signal(proc.pid, signal.SIGKILL)
                if pidfd is not None:
                    poller.unregister(pidfd)
                    fds.close(pidfd)
                if unsent:  # no one is left to read stdin
                    poller.unregister(stdin)
                    fds.close(stdin)
                    unsent = unsent[:0]
                if waking:  # a cancel has nothing left to stop (run() closes the wake-up itself)
                    poller.unregister(wake)
                    waking = False
                deadline = time.monotonic() + _DRAIN_TIMEOUT
            elif cancelled and not exited:
                poller.unregister(wake)
                waking = False
                if outcome is None:
                    outcome = "cancelled"
                    self._signal(proc.pid, signal.SIGTERM)
                    killing, deadline = True, time.monotonic() + _GRACE
        for fd in list(readers):  # held open past the drain timeout: what came is kept
            readers.pop(fd).close()
        return outcome

    def _result(self, status: str, started: float, code: int | None, error: str | None) -> ExecutionResult:
        duration = self._clock() - started
        log.info("script %r: %s in %.2fs", self.script.id, status, duration)
        out, err = self._stdout, self._stderr
        return ExecutionResult(status, code, out.text(), err.text(), duration, error=error,
                               stdout_truncated=out.truncated, stderr_truncated=err.truncated)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals, *, child_too: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already empty
            os.killpg(pid, sig)  # the child leads its own group: its pid is the group id
        if child_too:  # in case the child moved itself to another group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _wake_up(fds: _Descriptors) -> tuple[int, int]:
    """(read end, write end) of a wake-up for the loop: one eventfd where there is one, else a pipe."""
    if _USE_EVENTFD:
        fd = fds.add(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
        return fd, fd
    read_end, write_end = fds.pipe()
    os.set_blocking(write_end, False)
    return read_end, write_end


def _poke(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):  # a wake-up is already pending: one is enough
        os.write(fd, _ONE)


def _open_pidfd(pid: int, fds: _Descriptors) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits; ``None``: poll ``waitid`` instead."""
    if not _USE_PIDFD:
        return None
    try:
        return fds.add(os.pidfd_open(pid))
    except OSError:  # ENOSYS before Linux 5.3, or a sandbox forbids it
        return None


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, leaving it unreaped (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped by someone else: gone all the same
        return True


def _feed(fd: int, unsent: memoryview) -> memoryview:
    """Write to stdin what the pipe takes now; what is left (empty: done, or the child will not read)."""
    try:
        return unsent[os.write(fd, unsent):]
    except BlockingIOError:
        return unsent
    except OSError:  # EPIPE: the child exited or closed stdin without reading it all, its choice
        return unsent[:0]


def _read(fd: int, sink: _Capture | _ProgressFilter) -> bool:
    """Pass what the pipe holds to ``sink``; ``False`` at the end of the stream."""
    try:
        piece = os.read(fd, sink.want())
    except BlockingIOError:
        return True
    if piece:
        sink.add(piece)
    return bool(piece)


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
