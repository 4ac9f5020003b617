"""The child side of ``"isolation": "process"``: runs ``python`` scripts in a process of its own.

Started by :class:`runtime.python_process.PythonProcess`, which first gives the child its
own ``sys.path`` so that it imports what the parent would (``python -m runtime.python_host``
works too, with the default path). Reused for job after job, so the interpreter's start-up
is paid once; a CPU-bound job holds this process's GIL, not the runtime's.

Protocol: JSON lines, one request at a time (never pickle: serialisation is JSON).

- out, once at start: ``{"ready": true}`` (start-up is over; it is not a job's time).
- in, on stdin: ``{"script": "<id>", "callable": "pkg.mod:fn", "arguments": {...}}``
- out, on stdout, per request: any number of ``{"progress": [fraction, message]}``, then
  exactly one ``{"status": "succeeded", "value": ...}`` or ``{"status": "failed", "error": "..."}``
  (with ``"retryable": false`` when the callable cannot be loaded: a retry would not load it either).
  An exception (any, even ``SystemExit``: nothing a job does may end the host) is a failed
  result with its type and message; its traceback goes to stderr.

The callable is loaded and called by the same rules as ``run_python`` (its loader is
reused), so a script behaves the same in either isolation. End of stdin ends the host.

User code must not be able to corrupt the protocol, so the protocol moves to private
descriptors (dups, not inherited by the job's own children) before any job runs: fd 0
becomes ``/dev/null`` and fd 1 a copy of fd 2, so ``print``, ``os.write(1, ...)`` and
child processes of the job all land on stderr, which the host inherits from the runtime.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from runtime.executors import MAX_NESTING, load_callable, report_progress, too_deep

__all__ = ["READY", "main"]

#: The host's first line: start-up is over, requests are answered from now on.
READY = b'{"ready": true}\n'

log = logging.getLogger("runtime.python_host")
_HOST: int | None = None  # the host's pid, once it serves: a child a job forks is not the host

class _Channel:
    """The protocol's output. Writes are serialised (a job may report progress from several
    threads) and a finished job's late progress is dropped: it would be read as the next job's.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._job = 0  # number of the latest job (only ever goes up: no two jobs share one)
        self._open = False  # whether that job's progress is still accepted

    def begin(self) -> Callable[[float, str], None]:
        """Open the next job; returns the ``(fraction, message)`` sink for its progress."""
        with self._lock:
            self._job += 1
            self._open = True
            job = self._job
        return lambda fraction, message: self._send(_encode({"progress": [fraction, message]}), job)

    def finish(self, line: bytes) -> None:
        """Send the job's final line; from here on its progress is dropped."""
        self._send(line, self._job, closing=True)

    def _send(self, line: bytes, job: int, closing: bool = False) -> None:
        if _forked():
            return  # from a child the job forked: only the host speaks the protocol
        with self._lock:
            if job != self._job or not self._open:
                return  # an earlier job's, or this one's after its result: read as another's
            if closing:
                self._open = False
            self._stream.write(line)
            self._stream.flush()


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, allow_nan=False).encode() + b"\n"


def _failed(error: str, retryable: bool = True) -> bytes:
    return _encode({"status": "failed", "error": error, **({} if retryable else {"retryable": False})})


def _succeeded(value: Any) -> bytes:
    """The final line for a returned value: run_python's rule, the value must be plain JSON."""
    if too_deep(value):
        return _failed(f"the return value is nested more than {MAX_NESTING} levels deep")
    try:
        return _encode({"status": "succeeded", "value": value})
    except Exception as e:  # noqa: BLE001 - whatever the value's own methods raise is the job's fault
        return _failed(f"the return value is not JSON-serialisable: {e}")


def _run(request: Any, sink: Callable[[float, str], None]) -> bytes:
    """One job: load the callable, call it, and return its final protocol line."""
    if not isinstance(request, dict):
        return _failed(f"python host: a request must be a JSON object, got {type(request).__name__}")
    script_id = str(request.get("script", "?"))
    spec, arguments = request.get("callable"), request.get("arguments", {})
    if not isinstance(arguments, dict):
        return _failed(f"script {script_id!r}: arguments must be an object, got {type(arguments).__name__}")
    try:
        function, wants_progress = load_callable(spec)
    except ValueError as e:  # a retry would load the same registry entry
        return _failed(f"script {script_id!r}: {e}", retryable=False)
    kwargs = dict(arguments)
    if wants_progress and "progress" not in kwargs:
        # report_progress clamps, drops non-numbers and contains a failing write, as in-thread.
        kwargs["progress"] = lambda fraction, message="": report_progress(script_id, sink, fraction, message)
    try:
        value = function(**kwargs)
    except BaseException as e:  # noqa: BLE001 - this process exists to run the job: nothing may end it
        if _forked():
            _end_forked_child(e)
        log.warning("script %r raised", script_id, exc_info=True)
        return _failed(f"{type(e).__name__}: {e}")
    return _succeeded(value)


def _end_forked_child(error: BaseException) -> None:
    """A child the job forked ends the way a plain Python process would: ``sys.exit(n)``
    gives ``n``, another exception its traceback and 1 (its parent may wait for it)."""
    code = 1
    if isinstance(error, SystemExit):
        if error.code is None or isinstance(error.code, int):
            code = error.code or 0
        else:
            print(error.code, file=sys.stderr)
    else:
        traceback.print_exception(error)
    _flush_stdio()
    os._exit(code)


def _forked() -> bool:
    """Whether this process is a child a job forked, not the host."""
    return _HOST is not None and os.getpid() != _HOST


def _flush_stdio() -> None:
    """The job's prints reach the log (they may be buffered)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _serve(requests: Iterable[bytes], output: IO[bytes]) -> None:
    """Say the host is ready, then answer requests until they end."""
    output.write(READY)
    output.flush()
    channel = _Channel(output)
    for line in requests:
        sink = channel.begin()
        try:
            request = json.loads(line)
        except ValueError as e:
            outcome = _failed(f"python host: a request is not JSON: {e}")
        else:
            outcome = _run(request, sink)
        _flush_stdio()  # before the next job
        if _forked():  # a child the job forked came back here
            os._exit(0)
        channel.finish(outcome)


def _take_over_stdio() -> tuple[IO[bytes], IO[bytes]]:
    """Move the protocol off fds 0 and 1, out of user code's reach.

    Returns:
        The request stream and the protocol output, on private non-inheritable fds.
    """
    requests = os.fdopen(os.dup(0), "rb")
    output = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # sys.stdout still wraps fd 1, which is now the log...
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # ...so a long job's prints show as they happen
    return requests, output


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this host when the thread that started it ends, so a runtime
    killed with SIGKILL mid-job leaves no host running a job nobody will collect."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _not_the_host(requests: IO[bytes], output: IO[bytes]) -> None:
    """In a child a job forked: it shares the host's protocol pipes, but must neither read
    requests nor answer them. It runs the job's code on; if that returns into the host's
    loop, the child ends there (``_serve``)."""
    for stream in (requests, output):
        with contextlib.suppress(OSError):
            os.close(stream.fileno())


def main() -> int:
    """Run the host on this process's stdio; returns the exit code."""
    global _HOST
    _die_with_parent()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format=f"python host {os.getpid()}: %(levelname)s %(name)s: %(message)s")
    requests, output = _take_over_stdio()
    _HOST = os.getpid()
    os.register_at_fork(after_in_child=lambda: _not_the_host(requests, output))
    try:
        _serve(requests, output)
    except BrokenPipeError:
        # The runtime is gone mid-job: nobody is left to tell, and a normal exit would
        # only repeat the error while flushing the dead pipe.
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
