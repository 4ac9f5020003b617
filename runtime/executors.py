"""What every kind of script's attempt shares, and the in-thread ``python`` attempt.

``validate_arguments`` checks a job's arguments, every executor returns an
:class:`ExecutionResult` and reports progress through :func:`report_progress`;
``python`` scripts are loaded by :func:`load_callable` and run in the calling
thread by :func:`run_python`. The other executors live in modules of their own:
``runtime.command_executor``, ``runtime.http_executor``, ``runtime.sql_executor``
and ``runtime.python_process``.

Plain blocking code, no actors: job actors call it from worker threads. Whatever
the *script* does wrong (an exception, a bad return value) comes back as an
:class:`ExecutionResult`; only the caller's own mistakes (wrong script kind)
raise. Argument values may be secrets, so they are never logged.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from runtime.errors import InvalidArguments
from runtime.registry import Script

__all__ = ["DEFAULT_OUTPUT_CAP", "NOT_RETRYABLE", "STATUSES", "ExecutionResult", "ProgressCallback", "load_callable",
           "report_progress", "require_kind", "run_python", "validate_arguments"]

#: The ``extra`` of a result no retry can change (the scheduler fails its job at once).
NOT_RETRYABLE: Mapping[str, Any] = MappingProxyType({"retryable": False})

log = logging.getLogger(__name__)

#: Bytes of output kept per stream; the rest is read and discarded.
DEFAULT_OUTPUT_CAP = 1 << 20
#: Every status an attempt can end with.
STATUSES = ("succeeded", "failed", "timeout", "cancelled")

ProgressCallback = Callable[[float, str], None]

_CALLABLE_FORM = "option 'callable' must be 'package.module:function', got {!r}"


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
        try:  # the copy is exactly what the script will see
            result[name] = as_json_value(value)
        except ValueError as e:
            raise invalid(f"argument {name!r} {e}") from None
    return result


#: How deep a job's arguments and results may nest: every copy and write of a job record
#: recurses through them, and must stay far from the interpreter's recursion limit.
MAX_NESTING = 100


def as_json_value(value: Any) -> Any:
    """``value`` as a job's argument or result holds it: a copy made of plain JSON values.

    Raises:
        ValueError: not JSON (NaN, a set, an object...), or nested more than
            ``MAX_NESTING`` levels deep; the message says which, never the value.
    """
    if too_deep(value):
        raise ValueError(f"is nested more than {MAX_NESTING} levels deep")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"is not JSON-serialisable: {e}") from None


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` levels deep; iterative,
    so that a value nested deeper than the recursion limit cannot make it raise."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


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


def report_progress(script_id: str, on_progress: ProgressCallback | None, fraction: Any, message: Any = "") -> None:
    """Deliver one progress event of any kind of script; a raising callback is logged, never raised.

    Args:
        script_id: the script, named in the log record of a raising callback.
        on_progress: the observer; ``None``: nobody listens.
        fraction: clamped to 0..1; a value that is no finite number drops the event.
        message: passed on as a string.
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        value = math.nan
    if on_progress is None or not math.isfinite(value):
        return
    try:
        on_progress(min(1.0, max(0.0, value)), str(message))
    except Exception:  # a broken observer must not fail the job it observes
        log.exception("script %r: the progress callback raised; continuing", script_id)


def load_callable(spec: object) -> tuple[Callable[..., Any], bool]:
    """The function named ``package.module:function`` and whether it takes ``progress``.

    The same rules for a ``python`` script in a thread (:func:`run_python`) and in a
    host process (``runtime.python_host``). A spec is resolved once and cached.

    Args:
        spec: the script's ``callable`` option, as the registry gave it.

    Raises:
        ValueError: the spec is not a string, is malformed or does not name a callable.
    """
    if not isinstance(spec, str):  # checked before the cache, which needs a hashable key
        raise ValueError(_CALLABLE_FORM.format(spec))
    return _load_cached(spec)


@functools.lru_cache(maxsize=256)
def _load_cached(spec: str) -> tuple[Callable[..., Any], bool]:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or ":" in attr_path:
        raise ValueError(_CALLABLE_FORM.format(spec))
    try:
        target: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
    except BaseException as e:  # noqa: BLE001 - importing runs arbitrary module code, whatever it raises
        raise ValueError(f"cannot load callable {spec!r}: {type(e).__name__}: {e}") from None
    if not callable(target):
        raise ValueError(f"callable {spec!r} is a {type(target).__name__}, not a function")
    try:
        wants_progress = "progress" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        wants_progress = False  # no signature to inspect (some builtins)
    return target, wants_progress


def require_kind(script: Script, kind: str, executor: str) -> None:
    """The caller's mistake of giving an executor a script of another kind.

    Raises:
        ValueError: ``script`` is not of ``kind``.
    """
    if script.kind != kind:
        article = "an" if kind in ("http", "sql") else "a"
        raise ValueError(f"script {script.id!r}: {executor} needs {article} {kind} script, got kind {script.kind!r}")


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
    require_kind(script, "python", "run_python")
    started = clock()

    def done(status: str, error: str | None = None, value: Any = None, retryable: bool = True) -> ExecutionResult:
        duration = clock() - started
        log.info("script %r: %s in %.2fs", script.id, status, duration)
        return ExecutionResult(status, duration=duration, value=value, error=error,
                               extra={} if retryable else NOT_RETRYABLE)

    try:
        function, wants_progress = load_callable(script.options.get("callable"))
    except ValueError as e:  # a retry would load the same registry entry: it fails the job now
        return done("failed", f"script {script.id!r}: {e}", retryable=False)
    kwargs = json.loads(json.dumps(dict(arguments)))  # the job's own (JSON values): a change must not reach its retry
    if wants_progress and "progress" not in kwargs:
        kwargs["progress"] = lambda fraction, message="": report_progress(script.id, on_progress, fraction, message)
    try:
        value = function(**kwargs)
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt...: they would end the worker thread
        log.debug("script %r raised", script.id, exc_info=True)
        return done("failed", f"{type(e).__name__}: {e}")
    try:
        return done("succeeded", value=as_json_value(value))
    except ValueError as e:
        return done("failed", f"the return value {e}")
