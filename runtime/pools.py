"""The connection pools the runtime owns for ``http`` and ``sql`` scripts.

``ConnectionPools`` is what the specification calls ``tes.connection_pool``: one
urllib3 ``PoolManager`` (``HttpPool``) and any number of named PostgreSQL pools
(``PostgresPool``) that jobs borrow connections from.

These objects are shared by the worker threads, so unlike the rest of the
runtime (where every piece of state has one owning actor) they lock: a
connection is a resource that is handed from thread to thread, and a pool that
answered through an actor would add a message round trip to every query.

Secrets never leave this module: descriptions are built from the parsed
settings without the password, DSNs shown anywhere go through ``redact_dsn``,
and connection errors are re-raised ``from None`` with the password scrubbed.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from runtime.errors import ConfigError, PoolError, PoolTimeout

if TYPE_CHECKING:
    import psycopg2.extensions

__all__ = ["ConnectionPools", "HttpPool", "PostgresPool", "redact_dsn"]

logger = logging.getLogger(__name__)

_REDACTED = "***"

# ---------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------

#: Parameter names whose values are secrets (``password``, ``sslpassword``,
#: ``token``, ``api_key``, ...). Over-matching (``sslkey`` is a file path) is harmless.
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)

#: A libpq ``key=value`` pair; values may be single-quoted with backslash escapes.
_KEYWORD_PAIR = re.compile(r"(?P<key>[\w.-]+)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*(?:'|\Z)|\S*)", re.DOTALL)

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def redact_dsn(dsn: str) -> str:
    """A DSN fit to show: passwords and other secret parameters become ``***``.

    Handles both libpq forms: URLs (the password in the user info and secret-named
    query parameters) and ``key=value`` strings (secret-named keys).

    Args:
        dsn: a connection string, possibly holding a password.

    Returns:
        The same string with every secret value replaced by ``***``.
    """
    if _URL_SCHEME.match(dsn):
        return _redact_url(dsn)
    return _redact_keywords(dsn)


def _redact_keywords(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if _SECRET_NAME.search(match["key"]):
            return f"{match['key']}{match['eq']}{_REDACTED}"
        return match[0]

    return _KEYWORD_PAIR.sub(replace, text)


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    # The user info ends at the last '@' before the query: taking the last one
    # (not the first, as libpq does) also hides a password with a raw '@' in it.
    ends = [i for i in (rest.find("?"), rest.find("#")) if i >= 0]
    at = rest.rfind("@", 0, min(ends, default=len(rest)))
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{_REDACTED}{rest[at:]}"
    head, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        query = "&".join(_redact_query_param(param) for param in query.split("&")) + hash_ + fragment
    return f"{scheme}://{head}{question}{query}"


def _redact_query_param(param: str) -> str:
    key, equals, _ = param.partition("=")
    return f"{key}={_REDACTED}" if equals and _SECRET_NAME.search(key) else param


def _scrub(text: str, params: Mapping[str, Any]) -> str:
    """An error text fit to show: one line, the values of secret parameters hidden."""
    text = " ".join(text.split())
    for key, value in params.items():
        if value and isinstance(value, str) and _SECRET_NAME.search(key):
            text = text.replace(value, _REDACTED)
    return _redact_keywords(text)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_int(owner: str, setting: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: {setting} must be an integer >= {minimum}, not {value!r}")
    return value


def _check_positive(owner: str, setting: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{owner}: {setting} must be a positive number of seconds, not {value!r}")
    return float(value)


def _psycopg2() -> ModuleType:
    """psycopg2, imported on first use: it is the optional ``postgres`` extra."""
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - the test extras install it
        raise PoolError(
            "database pools need psycopg2: pip install 'actor-runtime[postgres]' (psycopg2-binary)"
        ) from None
    return psycopg2


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

#: Connection keywords filled from the standard libpq environment variables.
_PG_ENVIRONMENT = (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"),
                   ("user", "PGUSER"), ("password", "PGPASSWORD"))

_TRANSACTION_IDLE = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE, without importing psycopg2


@dataclass(slots=True)
class _Idle:
    """A connection in the free list and when it was put there."""

    conn: Any
    since: float


@dataclass(slots=True, eq=False)
class _Ticket:
    """A blocked checkout's place in line, filled in by whoever frees a connection.

    Its condition shares the pool's lock, so a returned connection wakes exactly
    the longest waiter and is handed to it directly.
    """

    wakeup: threading.Condition
    granted: bool = False
    entry: _Idle | None = None  # None when granted: a freed slot to open a connection in


@dataclass(slots=True)
class _PgCounts:
    """The pool's cumulative figures; changed only under the pool's lock."""

    opened: int = 0
    replaced: int = 0
    waits: int = 0
    wait_time_total: float = 0.0
    wait_time_max: float = 0.0
    timeouts: int = 0
    errors: int = 0
    checkouts: int = 0


def _connect_params(
    owner: str,
    dsn: str | None,
    explicit: Mapping[str, Any],
    env: Mapping[str, str],
    connect_timeout: float,
    connect_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The keywords for ``psycopg2.connect``: explicit values beat the DSN, which
    beats the PG* environment of ``env``.

    The environment is resolved here rather than left to libpq because libpq reads
    the process environment, not the ``env`` the caller gave.
    """
    params: dict[str, Any] = {}
    if dsn:
        psycopg2 = _psycopg2()
        try:
            params.update(psycopg2.extensions.parse_dsn(dsn))
        except psycopg2.Error:
            # libpq's message quotes the faulty fragment, which may be the password.
            raise ConfigError(f"{owner}: invalid dsn {redact_dsn(dsn)!r}") from None
    if "database" in params:
        params.setdefault("dbname", params.pop("database"))
    params.update((key, value) for key, value in explicit.items() if value is not None)
    for key, variable in _PG_ENVIRONMENT:
        if key not in params and env.get(variable):
            params[key] = env[variable]
    # libpq takes whole seconds (and treats anything below 2 as 2).
    params["connect_timeout"] = math.ceil(connect_timeout)
    params.update(connect_kwargs)
    return params


def _describe(params: Mapping[str, Any]) -> str:
    """The target as a libpq URL without the password: ``postgresql://user@host:port/db``.

    A missing host stays empty (libpq's default Unix socket), a missing port shows
    libpq's default 5432, a missing database the user's name, as libpq would.
    """
    host = str(params.get("host") or params.get("hostaddr") or "")
    if host.startswith("/"):
        host = quote(host, safe="")
    elif ":" in host and "," not in host:
        host = f"[{host}]"
    user = params.get("user")
    userinfo = f"{quote(str(user), safe='')}@" if user else ""
    database = params.get("dbname") or user or ""
    return f"postgresql://{userinfo}{host}:{params.get('port') or 5432}/{quote(str(database), safe='')}"


class PostgresPool:
    """A bounded pool of psycopg2 connections to one database, shared by worker threads.

    Thread-safe, and the one place the project locks: connections are handed
    between threads, so the free list sits behind a lock. A checkout that finds
    every connection in use sleeps on a ``threading.Condition`` (no spinning) in a
    first-come first-served line: a returned connection (or a freed slot) goes
    straight to the longest waiter. Without the line, threads that give back and
    immediately borrow again kept taking the connection from a woken waiter (one
    waited 0.19 s of a 0.24 s run of 800 checkouts by 8 threads over 3
    connections) and could time out while others were served. Network work
    (connecting, health checks, resets) happens outside the lock.

    Connections are opened lazily up to ``maxconn`` (``minconn`` at once). A
    connection is handed out only when healthy and goes back clean: its
    transaction rolled back and its session reset (``DISCARD ALL``).

    Attributes:
        name: the pool's name (``"default"`` unless given).
        description: the target without its password, e.g.
            ``postgresql://postgres@127.0.0.1:5432/test``.
        ping_idle_after: a connection idle longer than this (seconds) is pinged with
            ``SELECT 1`` before it is handed out.
    """

    # Health checks, measured on this machine (PostgreSQL 15 over local TCP):
    # conn.closed + transaction status 0.3 µs, a zero-timeout poll() of the socket
    # 0.9 µs, a SELECT 1 round trip 49 µs at p50 and 0.7 ms at p99, a new
    # connection 3.7 ms. A terminated backend (pg_terminate_backend, a server
    # restart) makes the socket readable within 0.2 ms: the server sends its FATAL
    # and closes. So every checkout does the three cheap checks and pings only when
    # the socket is readable (is it an error or a stray notice?) or the connection
    # has idled long enough for a firewall or NAT to have dropped it silently.
    ping_idle_after: float = 5.0

    def __init__(
        self,
        name: str = "default",
        *,
        dsn: str | None = None,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        user: str | None = None,
        password: str | None = None,
        minconn: int = 1,
        maxconn: int = 20,
        acquire_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        **connect_kwargs: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a database pool's name must be a non-empty string, not {name!r}")
        self.name = name
        owner = f"database pool {name!r}"
        self._minconn = _check_int(owner, "minconn", minconn, 0)
        self._maxconn = _check_int(owner, "maxconn", maxconn, 1)
        if minconn > maxconn:
            raise ConfigError(f"{owner}: minconn ({minconn}) must not exceed maxconn ({maxconn})")
        self._acquire_timeout = _check_positive(owner, "acquire_timeout", acquire_timeout)
        _check_positive(owner, "connect_timeout", connect_timeout)
        if port is not None:
            _check_int(owner, "port", port, 1)
        explicit = {"host": host, "port": port, "dbname": database, "user": user, "password": password}
        self._params = _connect_params(
            owner, dsn, explicit, os.environ if env is None else env, connect_timeout, connect_kwargs
        )
        self.description = _describe(self._params)
        self._lock = threading.Lock()
        self._line: deque[_Ticket] = deque()  # blocked checkouts, longest waiting first
        self._idle: deque[_Idle] = deque()
        self._in_use: set[Any] = set()
        self._size = 0  # connections open or being opened: in use + idle + reserved
        self._closed = False
        self._counts = _PgCounts()
        logger.info("database pool %r: %s (minconn %d, maxconn %d)", name, self.description, minconn, maxconn)
        self._open_minimum()

    def __repr__(self) -> str:
        return f"<PostgresPool {self.name!r} {self.description}>"

    @property
    def acquire_timeout(self) -> float:
        """Seconds ``connection()`` waits by default; a caller with a deadline of its
        own can wait ``min(pool.acquire_timeout, remaining)``."""
        return self._acquire_timeout

    # -- the public interface --------------------------------------------------

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg2.extensions.connection]:
        """Borrow a healthy connection for the ``with`` block.

        On leaving the block (normally or by an exception) the connection's open
        transaction is rolled back and its session reset before it goes back; a
        broken one is discarded and replaced on demand. Committing is the caller's
        business (``conn.commit()`` or ``with conn:``).

        Args:
            timeout: seconds to wait when all ``maxconn`` connections are in use;
                None for the pool's ``acquire_timeout``.

        Raises:
            PoolTimeout: every connection stayed in use for ``timeout`` seconds.
            PoolError: the pool is closed, or a new connection cannot be opened.
        """
        wait = self._acquire_timeout if timeout is None else timeout
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
            raise ConfigError(f"database pool {self.name!r}: timeout must be >= 0 seconds, not {timeout!r}")
        conn = self._checkout(float(wait))
        try:
            yield conn
        finally:
            self._checkin(conn)

    def figures(self) -> dict[str, Any]:
        """The pool's state and cumulative counts, JSON-ready.

        ``waiting`` is the number of threads blocked in a checkout now; ``opened``
        counts every connection ever opened; ``replaced`` the broken or closed ones
        discarded; ``waits`` the checkouts that found every connection in use
        (timed-out ones included); ``errors`` connect failures plus replaced.
        """
        with self._lock:
            counts = self._counts
            return {
                "kind": "postgres",
                "target": self.description,
                "maxconn": self._maxconn,
                "minconn": self._minconn,
                "in_use": len(self._in_use),
                "idle": len(self._idle),
                "waiting": len(self._line),
                "opened": counts.opened,
                "replaced": counts.replaced,
                "waits": counts.waits,
                "wait_time_total": round(counts.wait_time_total, 6),
                "wait_time_max": round(counts.wait_time_max, 6),
                "timeouts": counts.timeouts,
                "errors": counts.errors,
                "checkouts": counts.checkouts,
                "closed": self._closed,
            }

    def close(self) -> None:
        """Close the idle connections now and the borrowed ones as they come back;
        later checkouts (and anyone waiting) get ``PoolError``. Idempotent."""
        with self._lock:
            self._closed = True
            idle = [entry.conn for entry in self._idle]
            self._idle.clear()
            self._size -= len(idle)
            for ticket in self._line:
                ticket.wakeup.notify()
        for conn in idle:
            _close_quietly(conn)

    # -- checkout ----------------------------------------------------------------

    def _open_minimum(self) -> None:
        """Open ``minconn`` connections now, so a wrong setting fails at start-up."""
        try:
            for _ in range(self._minconn):
                with self._lock:
                    self._size += 1
                conn = self._connect()
                with self._lock:
                    self._idle.append(_Idle(conn, time.monotonic()))
        except BaseException:
            self.close()
            raise

    def _checkout(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        waited: list[float] = []
        try:
            entry = self._take(deadline, timeout, waited)
        finally:
            if waited:
                with self._lock:
                    self._counts.waits += 1
                    self._counts.wait_time_total += waited[0]
                    self._counts.wait_time_max = max(self._counts.wait_time_max, waited[0])
        if entry is not None and not self._checked(entry):
            entry = None  # the broken one's slot is still ours: open a new connection in it
        conn = self._connect() if entry is None else entry.conn
        with self._lock:
            if self._closed:  # closed while we connected or checked
                self._size -= 1
                _close_quietly(conn)
                raise PoolError(f"database pool {self.name!r} is closed")
            self._in_use.add(conn)
            self._counts.checkouts += 1
        return conn

    def _take(self, deadline: float, timeout: float, waited: list[float]) -> _Idle | None:
        """An idle connection, or None after reserving a slot for a new one.

        Waits in line when every connection is in use (or others already wait),
        and appends the seconds it waited to ``waited`` (also when it times out).
        """
        with self._lock:
            if self._closed:
                raise PoolError(f"database pool {self.name!r} is closed")
            if not self._line:
                if self._idle:
                    return self._idle.pop()  # LIFO: the warmest connection
                if self._size < self._maxconn:
                    self._size += 1
                    return None
            ticket = _Ticket(threading.Condition(self._lock))
            self._line.append(ticket)
            started = time.monotonic()
            try:
                # Look at the ticket before the clock or the closed flag: a waiter
                # handed a connection just as its time ran out still takes it.
                while not ticket.granted:
                    if self._closed:
                        raise PoolError(f"database pool {self.name!r} is closed")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._counts.timeouts += 1
                        raise PoolTimeout(self._timeout_message(timeout))
                    ticket.wakeup.wait(remaining)
                return ticket.entry
            finally:
                if not ticket.granted:
                    self._line.remove(ticket)
                waited.append(time.monotonic() - started)

    def _hand_over(self, entry: _Idle | None) -> bool:
        """Give a returned connection (or, with None, a freed slot) to the longest
        waiter; False if nobody waits. Call with the lock held."""
        if not self._line:
            return False
        ticket = self._line.popleft()
        ticket.granted, ticket.entry = True, entry
        ticket.wakeup.notify()
        return True

    def _timeout_message(self, timeout: float) -> str:
        held = "its only connection" if self._maxconn == 1 else f"all {self._maxconn} connections"
        return f"database pool {self.name!r}: {held} stayed in use for {timeout:.1f} s"

    def _connect(self) -> Any:
        """A new connection for a slot already reserved; the slot is freed on failure."""
        psycopg2 = _psycopg2()
        try:
            conn = psycopg2.connect(**self._params)
        except psycopg2.Error as error:
            reason = _scrub(str(error), self._params)
            self._release_slot(error=True)
            raise PoolError(f"database pool {self.name!r}: cannot connect to {self.description}: {reason}") from None
        except BaseException:
            self._release_slot(error=True)
            raise
        with self._lock:
            self._counts.opened += 1
        return conn

    def _checked(self, entry: _Idle) -> bool:
        """Whether an idle connection passed its health check; if not, it is closed
        and counted, but its slot stays reserved for the caller's new connection."""
        try:
            usable = self._usable(entry)
        except BaseException:
            self._discard(entry.conn, broken=True)
            raise
        if not usable:
            _close_quietly(entry.conn)
            logger.warning("database pool %r: replacing a broken connection to %s", self.name, self.description)
            with self._lock:
                self._counts.errors += 1
                self._counts.replaced += 1
        return usable

    def _usable(self, entry: _Idle) -> bool:
        """Whether an idle connection can be handed out (see the measurements above)."""
        conn = entry.conn
        if conn.closed or conn.info.transaction_status != _TRANSACTION_IDLE:
            return False
        if _readable(conn) or time.monotonic() - entry.since > self.ping_idle_after:
            return _ping(conn)
        return True

    # -- checkin -------------------------------------------------------------------

    def _checkin(self, conn: Any) -> None:
        try:
            clean = _reset(conn)
        except BaseException:
            with self._lock:
                self._in_use.discard(conn)
            self._discard(conn, broken=True)
            raise
        with self._lock:
            self._in_use.discard(conn)
            if clean and not self._closed:
                entry = _Idle(conn, time.monotonic())
                if not self._hand_over(entry):
                    self._idle.append(entry)
                return
        self._discard(conn, broken=not clean)

    def _discard(self, conn: Any, *, broken: bool) -> None:
        """Close a connection and free its slot (a new one is opened on demand)."""
        _close_quietly(conn)
        if broken:
            logger.warning("database pool %r: discarded a broken connection to %s", self.name, self.description)
        self._release_slot(error=broken, replaced=broken)

    def _release_slot(self, *, error: bool = False, replaced: bool = False) -> None:
        """Free a connection's slot: the longest waiter may open a new one in it."""
        with self._lock:
            self._counts.errors += error
            self._counts.replaced += replaced
            if self._closed or not self._hand_over(None):
                self._size -= 1


def _readable(conn: Any) -> bool:
    """Whether the server sent something to an idle connection (poll, not select:
    select fails on descriptors above 1023)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _ping(conn: Any) -> bool:
    """A ``SELECT 1`` round trip, outside any transaction."""
    psycopg2 = _psycopg2()
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        conn.autocommit = False
    except psycopg2.Error:
        return False
    return True


def _reset(conn: Any) -> bool:
    """Make a returned connection as good as new; False if it is broken.

    ``DISCARD ALL`` rather than ``conn.reset()`` (``ABORT; RESET ALL``): at the
    same cost (36 µs, one round trip) it also drops what one job could leave for
    the next: temporary tables, prepared statements, ``LISTEN``s, advisory locks.
    ``set_session`` then undoes what the job set on the Python side (autocommit,
    isolation level, read-only), which psycopg2 sends with each ``BEGIN``.
    """
    if conn.closed:
        return False
    psycopg2 = _psycopg2()
    try:
        if conn.info.transaction_status != _TRANSACTION_IDLE:
            conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("DISCARD ALL")
        conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT", deferrable="DEFAULT", autocommit=False)
    except psycopg2.Error:
        return False
    return not conn.closed and conn.info.transaction_status == _TRANSACTION_IDLE


def _close_quietly(conn: Any) -> None:
    """Close a connection that is being thrown away; it may already be dead."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone either way
        logger.debug("closing a discarded connection failed", exc_info=True)


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class _HttpCounts:
    """The HTTP pool's figures, updated from every worker thread, hence its lock.

    Also keeps the host pools (weakly), so figures can count their idle and
    borrowed connections without reaching into urllib3's private containers.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.waiting = 0
        self.waits = 0
        self.wait_time_total = 0.0
        self.wait_time_max = 0.0
        self.host_pools: weakref.WeakSet[HTTPConnectionPool] = weakref.WeakSet()

    def begin_wait(self) -> None:
        with self.lock:
            self.waiting += 1

    def end_wait(self, seconds: float) -> None:
        with self.lock:
            self.waiting -= 1
            self.waits += 1
            self.wait_time_total += seconds
            self.wait_time_max = max(self.wait_time_max, seconds)

    def record_request(self, *, retries: int = 0, error: bool = False) -> None:
        with self.lock:
            self.requests += 1
            self.retries += retries
            self.errors += error


class _WaitTimingQueue(queue.LifoQueue[Any]):
    """A host pool's connection queue that times the waits for a free slot.

    urllib3 has no hook for "blocked on a full pool"; its pools take their queue
    class from ``QueueCls``, so timing the blocking ``get`` is the least intrusive
    place. A subclass per ``HttpPool`` binds ``counts``.
    """

    counts: _HttpCounts

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        try:
            return super().get(block=False)
        except queue.Empty:
            if not block:
                raise
        self.counts.begin_wait()
        started = time.monotonic()
        try:
            return super().get(block=True, timeout=timeout)
        finally:
            self.counts.end_wait(time.monotonic() - started)


class _CountedPoolMixin:
    """Registers each host pool with its ``HttpPool``'s counts when it is made."""

    counts: _HttpCounts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with self.counts.lock:
            self.counts.host_pools.add(self)  # type: ignore[arg-type]


def _pool_classes(counts: _HttpCounts) -> dict[str, type[HTTPConnectionPool]]:
    """Host pool classes for ``PoolManager.pool_classes_by_scheme``, bound to ``counts``.

    A class per ``HttpPool`` because urllib3 makes pools from a class and keyword
    arguments it filters (``PoolKey``): there is no way to pass ``counts`` in.
    """
    queue_cls = type("_CountedQueue", (_WaitTimingQueue,), {"counts": counts})
    attributes = {"QueueCls": queue_cls, "counts": counts}
    # urllib3's messages name the pool's class ("HTTPConnectionPool(host=..., port=...):
    # Max retries exceeded"): the subclasses keep their bases' names so errors read as usual.
    return {
        "http": type("HTTPConnectionPool", (_CountedPoolMixin, HTTPConnectionPool), attributes),
        "https": type("HTTPSConnectionPool", (_CountedPoolMixin, HTTPSConnectionPool), attributes),
    }


class _Retry(urllib3.Retry):
    """urllib3's ``Retry`` with ``Retry-After`` capped: a server asking for an hour must not
    park a worker thread and its connection slot (urllib3 < 2.7 has no cap at all)."""

    RETRY_AFTER_CAP = 10.0

    def get_retry_after(self, response: urllib3.BaseHTTPResponse) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.RETRY_AFTER_CAP)


class _HideRequestTargets(logging.Filter):
    """urllib3 logs request paths and query strings (retries at WARNING): they carry the
    jobs' arguments and tokens, so every URL-like argument of its records is cut to its
    scheme and host."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_hide_target(arg) for arg in record.args)
        return True


def _hide_target(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.startswith("/"):
        return "/<hidden>"
    if "://" in value:
        scheme, _, rest = value.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}/<hidden>"
    return value


for _name in ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_HideRequestTargets())


def _retries_taken(response: urllib3.BaseHTTPResponse) -> int:
    """Retries behind a response; redirects followed are not counted."""
    retry = response.retries
    if retry is None:
        return 0
    return sum(1 for entry in retry.history if not entry.redirect_location)


class HttpPool:
    """The runtime's HTTP client: a urllib3 ``PoolManager`` with counted figures.

    Each host gets a pool of ``maxsize`` keep-alive connections; with ``block``
    a request waits for a free one instead of opening a throw-away connection.
    Connection errors, read errors (idempotent methods only, urllib3's rule) and
    the ``status_forcelist`` statuses are retried with exponential backoff and
    ``Retry-After``; after the last retry the final response is returned, not
    raised. Thread-safe (urllib3's pools lock; the figures have their own lock).
    """

    name = "http"

    def __init__(
        self,
        *,
        maxsize: int = 10,
        block: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 3,
        backoff_factor: float = 0.2,
        status_forcelist: Iterable[int] = (429, 502, 503, 504),
        headers: Mapping[str, str] | None = None,
        num_pools: int = 10,
    ) -> None:
        owner = "http pool"
        self.maxsize = _check_int(owner, "maxsize", maxsize, 1)
        _check_int(owner, "num_pools", num_pools, 1)
        _check_int(owner, "retries", retries, 0)
        if isinstance(backoff_factor, bool) or not isinstance(backoff_factor, (int, float)) or backoff_factor < 0:
            raise ConfigError(f"{owner}: backoff_factor must be a number >= 0, not {backoff_factor!r}")
        self._timeout = urllib3.Timeout(
            connect=_check_positive(owner, "connect_timeout", connect_timeout),
            read=_check_positive(owner, "read_timeout", read_timeout),
        )
        self._retry = _Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff_factor,
            status_forcelist=frozenset(status_forcelist),
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        self._headers = urllib3.HTTPHeaderDict(headers or {})
        self._counts = _HttpCounts()
        self._manager = urllib3.PoolManager(
            num_pools=num_pools, maxsize=maxsize, block=block, timeout=self._timeout, retries=self._retry
        )
        self._manager.pool_classes_by_scheme = _pool_classes(self._counts)
        logger.info("http pool: %d connections per host, %d hosts, %d retries", maxsize, num_pools, retries)

    def __repr__(self) -> str:
        return f"<HttpPool maxsize={self.maxsize}>"

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | urllib3.Timeout | None = None,
        retries: urllib3.Retry | int | bool | None = None,
        preload_content: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send a request through the pool.

        The caller releases the response: ``response.release_conn()`` after reading
        (reading the body to its end releases it too). ``response.close()`` before
        the end closes the connection without giving its slot back.

        Args:
            method: the HTTP method.
            url: the full URL.
            headers: added to (and overriding) the pool's default headers.
            body: the request body.
            timeout: seconds for connect and read each, or a ``urllib3.Timeout``;
                None for the pool's.
            retries: a ``urllib3.Retry``; an int keeps the pool's policy with that
                many retries; False disables retries and redirects; None for the pool's.
            preload_content: read the whole body before returning.

        Raises:
            urllib3.exceptions.HTTPError: unchanged from urllib3 (e.g. ``MaxRetryError``).
        """
        merged = urllib3.HTTPHeaderDict(self._headers)
        merged.update(headers or {})
        retry = self._retries(retries)
        if isinstance(retry, urllib3.Retry):
            # Every header given here may be a credential (an API key header is
            # not one urllib3 knows): none of them follows a redirect to another host.
            retry = retry.new(remove_headers_on_redirect=set(retry.remove_headers_on_redirect)
                              | {name.lower() for name in merged})
        try:
            response = self._manager.request(
                method,
                url,
                body=body,
                headers=merged,
                timeout=self._timeout if timeout is None else timeout,
                retries=retry,
                preload_content=preload_content,
            )
        except Exception:
            self._counts.record_request(error=True)
            raise
        self._counts.record_request(retries=_retries_taken(response))
        return response

    def _retries(self, retries: urllib3.Retry | int | bool | None) -> urllib3.Retry | bool:
        if retries is None:
            return self._retry
        if isinstance(retries, bool) or isinstance(retries, urllib3.Retry):
            return retries
        return self._retry.new(total=retries, connect=retries, read=retries, status=retries)

    def figures(self) -> dict[str, Any]:
        """The pool's state and cumulative counts, JSON-ready.

        ``in_use`` counts the connections borrowed by requests in flight or by
        responses not yet released; ``waiting`` the requests blocked on a full host
        pool now; ``waits`` the requests that found their host's pool full. No URLs: they may carry credentials.
        """
        counts = self._counts
        with counts.lock:
            host_pools = [pool for pool in counts.host_pools if pool.pool is not None]
            figures: dict[str, Any] = {
                "kind": "http",
                "hosts": len(host_pools),
                "maxsize": self.maxsize,
                "requests": counts.requests,
                "in_use": 0,
                "idle": 0,
                "waiting": counts.waiting,
                "waits": counts.waits,
                "wait_time_total": round(counts.wait_time_total, 6),
                "wait_time_max": round(counts.wait_time_max, 6),
                "errors": counts.errors,
                "retries": counts.retries,
            }
        for pool in host_pools:
            slots = pool.pool
            if slots is None:  # closed meanwhile
                continue
            with slots.mutex:
                idle = sum(1 for conn in slots.queue if conn is not None)
                figures["in_use"] += slots.maxsize - len(slots.queue)
            figures["idle"] += idle
        return figures

    def close(self) -> None:
        """Close the idle connections; borrowed ones close when released."""
        self._manager.clear()


# ---------------------------------------------------------------------------
# The runtime's pools
# ---------------------------------------------------------------------------


class ConnectionPools:
    """What ``tes.connection_pool`` is: the runtime's pools.

    One HTTP pool, created with defaults on first use, and named database pools
    created by ``init_postgres_pool``. Thread-safe: pools are created and replaced
    under a lock, looked up from any worker thread.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._postgres: dict[str, PostgresPool] = {}
        self._http: HttpPool | None = None

    def init_postgres_pool(
        self,
        host: str | None = None,
        database: str | None = None,
        minconn: int = 1,
        maxconn: int = 20,
        *,
        name: str = "default",
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        dsn: str | None = None,
        acquire_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        **connect_kwargs: Any,
    ) -> PostgresPool:
        """Create (or replace) the database pool ``name``; see ``PostgresPool``.

        A replaced pool is closed: its idle connections now, its borrowed ones as
        they come back, so jobs in flight finish undisturbed.

        Raises:
            ConfigError: a setting is invalid.
            PoolError: the first ``minconn`` connections cannot be opened.
        """
        pool = PostgresPool(
            name,
            dsn=dsn,
            host=host,
            port=port,
            database=database,
            user=user,
            password=password,
            minconn=minconn,
            maxconn=maxconn,
            acquire_timeout=acquire_timeout,
            connect_timeout=connect_timeout,
            env=self._env,
            **connect_kwargs,
        )
        with self._lock:
            old = self._postgres.get(name)
            self._postgres[name] = pool
        if old is not None:
            logger.info("database pool %r replaced: %s -> %s", name, old.description, pool.description)
            old.close()
        return pool

    def init_http_pool(self, **options: Any) -> HttpPool:
        """Create (or replace) the HTTP pool; ``options`` are ``HttpPool``'s."""
        pool = HttpPool(**options)
        with self._lock:
            old, self._http = self._http, pool
        if old is not None:
            old.close()
        return pool

    @property
    def http(self) -> HttpPool:
        """The HTTP pool, created with the defaults on first use."""
        with self._lock:
            if self._http is None:
                self._http = HttpPool()
            return self._http

    def postgres(self, name: str = "default") -> PostgresPool:
        """The database pool ``name``.

        Raises:
            PoolError: no pool of that name was created.
        """
        with self._lock:
            pool = self._postgres.get(name)
        if pool is None:
            raise PoolError(
                f"no database pool named {name!r}; create it with "
                f"connection_pool.init_postgres_pool(name={name!r}, ...)"
            )
        return pool

    def names(self) -> list[str]:
        """The database pools' names, sorted."""
        with self._lock:
            return sorted(self._postgres)

    def figures(self) -> dict[str, Any]:
        """Every pool's figures: ``{"http": ... or None, "postgres": {name: ...}}``."""
        with self._lock:
            http, postgres = self._http, dict(self._postgres)
        return {
            "http": None if http is None else http.figures(),
            "postgres": {name: pool.figures() for name, pool in sorted(postgres.items())},
        }

    def close(self) -> None:
        """Close every pool and forget them; pools can be created again afterwards."""
        with self._lock:
            http, postgres = self._http, list(self._postgres.values())
            self._http = None
            self._postgres.clear()
        for pool in postgres:
            pool.close()
        if http is not None:
            http.close()
