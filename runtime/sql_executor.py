"""Run one attempt of an ``sql`` script: one query, one transaction, on a pooled connection.

Plain blocking code, no actors. Arguments are bound by psycopg2, never formatted
into the query text by us. Argument values may be secrets: they never reach a
log record, and an error keeps only the server's primary message line (its
DETAIL and the echoed statement can hold values) with quoted literals masked.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from runtime.errors import PoolError, PoolTimeout
from runtime.executors import ExecutionResult, ProgressCallback, report_progress, require_kind
from runtime.registry import DEFAULT_MAX_ROWS, SQL_PLACEHOLDER, Script

if TYPE_CHECKING:
    from runtime.pools import ConnectionPools, PostgresPool

__all__ = ["SqlExecution", "json_value"]

log = logging.getLogger(__name__)

_RECANCEL = 0.05  # seconds between cancel requests: one sent before the query reached the server is lost
#: SQLSTATE classes a retry cannot fix: data exceptions, integrity violations,
#: syntax errors and access rules, unsupported features; and a write in a read-only transaction.
_DETERMINISTIC_CLASSES = ("22", "23", "42", "0A")
_DETERMINISTIC_CODES = frozenset({"25006"})
_DETERMINISTIC_ERRORS = (psycopg2.ProgrammingError, psycopg2.DataError, psycopg2.IntegrityError,
                         psycopg2.NotSupportedError)
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_QUOTED = re.compile(r'"[^"]*"')


def json_value(value: Any) -> Any:
    """A column value as JSON: exact numbers and binary as strings, times in ISO 8601.

    ``Decimal`` -> string (a float would round it); a non-finite float ->
    ``"NaN"``/``"Infinity"``/``"-Infinity"``; ``date``/``time``/``datetime`` ->
    ISO 8601 string; ``timedelta`` -> seconds (number); ``UUID`` -> string;
    ``bytea`` -> base64 string; arrays and json/jsonb -> lists and objects,
    converted item by item; anything else -> ``str(value)``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return str(value)


def _parameter(value: Any) -> Any:
    """An argument as psycopg2 binds it: an object as json (a dict has no SQL type of its own)."""
    return psycopg2.extras.Json(value) if isinstance(value, dict) else value


def _primary(error: psycopg2.Error) -> str:
    """The server's primary message line, with literals (and, for data errors, quoted values) masked."""
    diag = getattr(error, "diag", None)
    message = getattr(diag, "message_primary", None) or next(
        (line for line in str(error).splitlines() if line.strip()), "")
    message = message.removeprefix("ERROR:").strip() or "no message"
    message = _LITERAL.sub("'…'", message)
    if (error.pgcode or "").startswith("22"):  # e.g. invalid input syntax for type integer: "<the value>"
        message = _QUOTED.sub('"…"', message)
    return message


def _retryable(error: psycopg2.Error) -> bool:
    code = error.pgcode or ""
    if code in _DETERMINISTIC_CODES or code[:2] in _DETERMINISTIC_CLASSES:
        return False
    return not isinstance(error, _DETERMINISTIC_ERRORS)


class _Cancelled(Exception):
    """The run saw a cancel at one of its checkpoints."""


class _Expired(Exception):
    """The deadline passed before the query could be sent."""


class SqlExecution:
    """One attempt of an ``sql`` script.

    The query runs in one transaction, ``READ ONLY`` unless the script says
    ``readonly: false``; a writable one commits on success, everything else
    rolls back. The script's ``timeout`` bounds the wait for a connection (at
    most the pool's ``acquire_timeout``) plus the query (``statement_timeout``
    for the rest of the deadline).

    Args:
        script: an ``sql`` script (its options validated by the registry).
        arguments: validated arguments; those the query names are bound, a
            missing optional one as NULL.
        pools: where the script's pool (``options["pool"]``) is looked up.
        on_progress: called with ``(fraction, message)`` from the thread in :meth:`run`.
        clock: monotonic seconds, for ``duration`` (the deadline uses real time).

    Raises:
        ValueError: the script is not an ``sql`` script.
    """

    def __init__(self, script: Script, arguments: Mapping[str, Any], pools: ConnectionPools, *,
                 on_progress: ProgressCallback | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        require_kind(script, "sql", "SqlExecution")
        self.script = script
        self._pools = pools
        self._on_progress = on_progress
        self._clock = clock
        options = script.options
        self._query = str(options.get("query", ""))
        self._pool_name = str(options.get("pool", "default"))
        self._readonly = bool(options.get("readonly", True))
        self._max_rows = int(options.get("max_rows", DEFAULT_MAX_ROWS))
        names = {m.group(1) for m in SQL_PLACEHOLDER.finditer(self._query) if m.group(1)}
        self._parameters = {name: _parameter(arguments.get(name)) for name in names}
        self._what = f"sql script {script.id!r} (pool {self._pool_name!r})"
        self._started = False
        self._lock = threading.Lock()
        self._cancelled = False
        self._connection: Any = None  # the connection while the query runs on it
        self._pool: PostgresPool | None = None
        self._query_over = threading.Event()
        self._abandon = threading.Event()  # set by cancel(): a wait in the pool's line gives up

    def cancel(self) -> None:
        """From any thread: end :meth:`run` with ``cancelled``, interrupting a running query."""
        if self._cancelled:  # set once, never unset: no need for the lock, which a cancel request
            return  # being sent holds for up to its connect timeout
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            running = self._connection is not None
        self._abandon.set()
        pool = self._pool  # read after the set: a checkout starting later sees the set event itself
        if pool is not None and not running:  # maybe waiting in the pool's line: wake it to give up
            pool.abandon_wait(self._abandon)
        if running:  # the caller may be the scheduler's thread: the request goes from a thread of its own
            threading.Thread(target=self._keep_cancelling, daemon=True, name=f"sql-cancel-{self.script.id}").start()

    def run(self) -> ExecutionResult:
        """Run the query to completion, the deadline or a cancel, in the calling thread.

        Raises:
            RuntimeError: called a second time.
        """
        if self._started:
            raise RuntimeError("an SqlExecution runs only once")
        self._started = True
        started = self._clock()
        deadline = time.monotonic() + self.script.timeout
        try:
            return self._run(started, deadline)
        except _Cancelled:
            return self._done("cancelled", started, "cancelled")
        except _Expired:
            return self._done("timeout", started, f"{self._what}: timed out after {self.script.timeout:g}s")
        except PoolTimeout:
            return self._done("timeout", started, f"{self._what}: no connection free within {self.script.timeout:g}s")
        except PoolError as e:
            return self._done("failed", started, f"{self._what}: {e}")
        except psycopg2.Error as e:
            return self._database_error(e, started)
        finally:
            self._query_over.set()

    def _run(self, started: float, deadline: float) -> ExecutionResult:
        self._checkpoint()
        try:
            pool = self._pool = self._pools.postgres(self._pool_name)
        except PoolError as e:
            # Retryable: a job recovered at start-up can run before its owner has created
            # the pool (``submit`` refuses new jobs for a pool that does not exist).
            return self._done("failed", started, f"{self._what}: {e}")
        report_progress(self.script.id, self._on_progress, 0.0, "waiting for a connection")
        with contextlib.ExitStack() as stack:
            connection = self._acquire(stack, pool, deadline)
            rows, rowcount, truncated = self._transaction(connection, deadline)
        report_progress(self.script.id, self._on_progress, 1.0, f"{rowcount} rows")
        return self._done("succeeded", started, None, {"rows": rows, "rows_truncated": truncated, "rowcount": rowcount})

    def _checkpoint(self) -> None:
        with self._lock:
            if self._cancelled:
                raise _Cancelled

    def _acquire(self, stack: contextlib.ExitStack, pool: PostgresPool, deadline: float) -> Any:
        """A pooled connection, entered on ``stack`` so that it goes back however the run ends.

        Waits for the pool's ``acquire_timeout`` or the rest of the deadline, whichever
        is shorter, in one wait, which a cancel ends at once.

        Raises:
            PoolTimeout: none came free before the deadline (the attempt timed out).
            PoolError: the pool's own wait ran out first (busy, a failure worth a
                retry later), or it is closed or cannot connect.
            _Cancelled: cancelled while waiting.
        """
        remaining = max(0.0, deadline - time.monotonic())
        limit = pool.acquire_timeout
        try:
            connection = stack.enter_context(pool.connection(timeout=min(limit, remaining), abandon=self._abandon))
        except PoolTimeout as e:
            if remaining <= limit:
                raise
            raise PoolError(str(e)) from e
        except PoolError:
            self._checkpoint()  # an abandoned wait: cancelled
            raise
        self._checkpoint()
        return connection

    def _transaction(self, connection: Any, deadline: float) -> tuple[list[dict[str, Any]], int, bool]:
        """Run the query in its own transaction; commit only a writable one that succeeded."""
        if connection.autocommit:  # a per-transaction setting needs a transaction
            connection.autocommit = False
        if connection.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            connection.rollback()
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise _Expired
        with connection.cursor() as cursor:
            # First statement of the transaction; per transaction, so nothing sticks to the pooled connection.
            mode = "READ ONLY" if self._readonly else "READ WRITE"
            cursor.execute(f"SET TRANSACTION {mode}; SELECT set_config('statement_timeout', %s, true)",
                           (f"{remaining_ms}ms",))
            self._execute(connection, cursor)
            rows, truncated = self._fetch(cursor)
            rowcount = cursor.rowcount if cursor.rowcount >= 0 else len(rows)
        self._checkpoint()  # a cancel that came too late to interrupt the query still undoes it
        if self._readonly:
            connection.rollback()
        else:
            connection.commit()
        return rows, rowcount, truncated

    def _execute(self, connection: Any, cursor: Any) -> None:
        with self._lock:
            if self._cancelled:
                raise _Cancelled
            self._connection = connection
        report_progress(self.script.id, self._on_progress, 0.05, "query sent")
        try:
            cursor.execute(self._query, self._parameters)
        finally:
            with self._lock:
                self._connection = None  # from here on a cancel must not reach the connection
            self._query_over.set()

    def _fetch(self, cursor: Any) -> tuple[list[dict[str, Any]], bool]:
        if cursor.description is None:  # a statement without a result set
            return [], False
        columns = [column.name for column in cursor.description]
        fetched = cursor.fetchmany(self._max_rows + 1)
        rows = [{name: json_value(value) for name, value in zip(columns, row)} for row in fetched[: self._max_rows]]
        return rows, len(fetched) > self._max_rows

    def _keep_cancelling(self) -> None:
        """Send cancel requests until the query is over (one that reaches the server before
        the query does is lost). The lock is held while one is sent, so the connection
        cannot go back to the pool, and to another job's query, meanwhile."""
        while True:
            with self._lock:
                if self._connection is None or self._pool is None:
                    return
                self._pool.cancel_backend(self._connection.info.backend_pid)
            if self._query_over.wait(_RECANCEL):
                return

    def _database_error(self, error: psycopg2.Error, started: float) -> ExecutionResult:
        with self._lock:
            if self._cancelled:
                return self._done("cancelled", started, "cancelled")
        message = _primary(error)
        if isinstance(error, psycopg2.extensions.QueryCanceledError) and "statement timeout" in message:
            return self._done("timeout", started, f"{self._what}: timed out after {self.script.timeout:g}s")
        return self._done("failed", started, f"{self._what}: {type(error).__name__}: {message}",
                          retryable=_retryable(error))

    def _done(self, status: str, started: float, error: str | None, extra: Mapping[str, Any] | None = None, *,
              retryable: bool = True) -> ExecutionResult:
        duration = self._clock() - started
        fields: dict[str, Any] = {"rows": [], "rows_truncated": False, "rowcount": None}
        fields.update(extra or {})
        if not retryable:
            fields["retryable"] = False
        log.info("sql script %r: %s in %.2fs", self.script.id, status, duration)
        return ExecutionResult(status, duration=duration, error=error, extra=fields)
