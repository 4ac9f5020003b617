"""Run one attempt of a ``command`` script as a child process (``CommandExecution``).

Plain blocking code, no actors: job actors call it from worker threads. Whatever
the *script* does wrong (non-zero exit, missing program, timeout) comes back as an
:class:`~runtime.executors.ExecutionResult`; only the caller's own mistakes (wrong
script kind, ``run()`` twice) raise. Argument values may be secrets, so they are
never logged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime.child_exit import EXIT_POLL, LONGEST_POLL, has_exited, open_pidfd
from runtime.command_output import OutputCapture, ProgressFilter
from runtime.executors import DEFAULT_OUTPUT_CAP, NOT_RETRYABLE, ExecutionResult, ProgressCallback, report_progress
from runtime.registry import Script

__all__ = ["CommandExecution"]

log = logging.getLogger(__name__)

_GRACE = 0.5  # seconds between SIGTERM and SIGKILL
_DRAIN_TIMEOUT = 5.0  # seconds to wait for pipes still held open by a process that left the group
#: Why a program cannot start, for good: not there, not executable, not a program.
_CANNOT_RUN = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # the most a pipe takes in one write, atomically
_ONE = (1).to_bytes(8, sys.byteorder)  # a wake-up: an eventfd takes 8-byte counters, a pipe any bytes
#: Wake the loop through an eventfd rather than a pipe (the child's exit: ``runtime/child_exit.py``).
#: Tests switch it off to cover both ways.
_USE_EVENTFD = hasattr(os, "eventfd")


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
        on_start: called with the child's pid once it has started (the worker marks it).

    Raises:
        ValueError: the script is not a ``command`` script.
    """

    def __init__(self, script: Script, arguments: Mapping[str, Any], *, on_progress: ProgressCallback | None = None,
                 timeout: float | None = None, output_cap: int = DEFAULT_OUTPUT_CAP,
                 clock: Callable[[], float] = time.monotonic,
                 on_start: Callable[[int], None] | None = None) -> None:
        if script.kind != "command" or not script.command:
            raise ValueError(f"script {script.id!r}: CommandExecution needs a command script, got kind {script.kind!r}")
        self.script = script
        self._arguments = dict(arguments)
        self._on_progress = on_progress
        self._on_start = on_start
        self._timeout = script.timeout if timeout is None else timeout
        self._clock = clock
        self._stdout = OutputCapture(output_cap)
        self._stderr = OutputCapture(output_cap)
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
            # A missing or non-executable program stays so: a retry would fail the same way.
            # (EAGAIN, ENOMEM and the like are this machine's moment, and are retried.)
            final = e.errno in _CANNOT_RUN
            return self._result("failed", started, None, f"cannot start {program!r}: {e.strerror or e}",
                                retryable=not final)
        except ValueError as e:  # an argv no program can be given (a NUL byte): the same at every try
            return self._result("failed", started, None, f"cannot start {program!r}: {e}", retryable=False)
        for fd in (stdin_read, stdout_write, stderr_write):  # the child's ends: only it may hold them now
            fds.close(fd)
        try:
            if self._on_start is not None:
                self._on_start(proc.pid)
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
        pidfd = open_pidfd(proc.pid)
        if pidfd is not None:
            fds.add(pidfd)
            poller.register(pidfd, select.POLLIN)  # readable once the child has exited
        poller.register(wake, select.POLLIN)
        waking = True  # the wake-up is registered
        report = functools.partial(report_progress, self.script.id, self._on_progress)
        stdout_filter = ProgressFilter(self._stdout, report)
        readers: dict[int, OutputCapture | ProgressFilter] = {stdout: stdout_filter, stderr: self._stderr}
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
        exit_poll = EXIT_POLL[0]
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
            wait = None if deadline is None else min(deadline - now, LONGEST_POLL)
            if pidfd is None and not exited:
                wait = exit_poll if wait is None else min(wait, exit_poll)
                exit_poll = min(exit_poll * 2, EXIT_POLL[1])
            child_exited = cancelled = False
            for fd, _ in poller.poll(None if wait is None else wait * 1000):
                if fd in readers:
                    if not _read(fd, readers[fd]):
                        poller.unregister(fd)
                        readers.pop(fd).close()
                        fds.close(fd)
                        exit_poll = EXIT_POLL[0]  # the end of output often comes with the exit
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
                child_exited = has_exited(proc.pid)
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

    def _result(self, status: str, started: float, code: int | None, error: str | None,
                retryable: bool = True) -> ExecutionResult:
        duration = self._clock() - started
        log.info("script %r: %s in %.2fs", self.script.id, status, duration)
        out, err = self._stdout, self._stderr
        return ExecutionResult(status, code, out.text(), err.text(), duration, error=error,
                               stdout_truncated=out.truncated, stderr_truncated=err.truncated,
                               extra={} if retryable else NOT_RETRYABLE)

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


def _feed(fd: int, unsent: memoryview) -> memoryview:
    """Write to stdin what the pipe takes now; what is left (empty: done, or the child will not read)."""
    try:
        return unsent[os.write(fd, unsent):]
    except BlockingIOError:
        return unsent
    except OSError:  # EPIPE: the child exited or closed stdin without reading it all, its choice
        return unsent[:0]


def _read(fd: int, sink: OutputCapture | ProgressFilter) -> bool:
    """Pass what the pipe holds to ``sink``; ``False`` at the end of the stream."""
    try:
        piece = os.read(fd, sink.want())
    except BlockingIOError:
        return True
    if piece:
        sink.add(piece)
    return bool(piece)
