"""The runtime's HTTP client (``HttpPool``): a urllib3 ``PoolManager`` with counted figures.

urllib3 has no hooks for the figures the runtime reports, so its host pool and
queue classes are subclassed per ``HttpPool`` (``_pool_classes``). Its ``Retry``
gets a cap on ``Retry-After`` (``_Retry``), and its loggers a filter that hides
request targets, which carry the jobs' arguments and tokens (installed on import).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from runtime.errors import ConfigError
from runtime.pools.validation import check_int, check_positive

__all__ = ["HttpPool", "RequestAbort", "RequestAborted"]

logger = logging.getLogger(__name__)


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


class RequestAborted(Exception):
    """The request was aborted (``RequestAbort.abort``) before it got its answer."""


class RequestAbort:
    """Ends a request in flight from another thread, even one still waiting for its
    answer's headers: its connection's socket is shut down (a blocked read returns at
    once), and a retry it would start gets no connection. Pass it to ``HttpPool.request``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aborted = False
        self._conn: Any = None

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """From any thread; idempotent."""
        with self._lock:  # shut under the lock: a connection given back meanwhile (detach) is not
            self._aborted = True
            if self._conn is not None:
                _shut(self._conn)  # no socket yet (connecting): the connection checks once it has one

    def attach(self, conn: Any) -> bool:
        """The request took ``conn`` from its pool; ``False``: it was aborted already."""
        with self._lock:
            self._conn = conn
            return not self._aborted

    def detach(self, conn: Any) -> None:
        """``conn`` went back to its pool (another request may take it): an abort leaves it be."""
        with self._lock:
            if self._conn is conn:
                self._conn = None


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # not connected yet, or closed meanwhile
            sock.shutdown(socket.SHUT_RDWR)


#: The ``RequestAbort`` of the request this thread is making (urllib3 is synchronous).
_in_flight = threading.local()


class _AbortableConnection:
    """A connection that, once connected, shuts itself if its request was aborted while it
    was connecting (its socket did not exist yet when the abort came)."""

    runtime_abort: RequestAbort | None = None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        abort = self.runtime_abort
        if abort is not None and abort.aborted:
            _shut(self)  # the request is not sent: its write fails, and no retry gets a connection


class _CountedPoolMixin:
    """Registers each host pool with its ``HttpPool``'s counts when it is made, and hands
    each connection it lends to the ``RequestAbort`` of the request, if any."""

    counts: _HttpCounts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with self.counts.lock:
            self.counts.host_pools.add(self)  # type: ignore[arg-type]

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        abort: RequestAbort | None = getattr(_in_flight, "abort", None)
        if abort is not None:
            if not abort.attach(conn):
                # urllib3 puts an empty slot back for a request that fails here: the slot is not lost.
                conn.close()
                raise RequestAborted("the request was aborted")
            conn.runtime_abort = abort  # detached when the connection goes back (_put_conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        # Back in the pool (a retry's wait, a redirect, a released response): another
        # request may take it now, so the abort of the one that had it must leave it be.
        abort: RequestAbort | None = getattr(conn, "runtime_abort", None)
        if abort is not None:
            conn.runtime_abort = None
            abort.detach(conn)
        super()._put_conn(conn)  # type: ignore[misc]


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
        "http": type("HTTPConnectionPool", (_CountedPoolMixin, HTTPConnectionPool), {
            **attributes, "ConnectionCls": type("HTTPConnection", (_AbortableConnection, HTTPConnection), {})}),
        "https": type("HTTPSConnectionPool", (_CountedPoolMixin, HTTPSConnectionPool), {
            **attributes, "ConnectionCls": type("HTTPSConnection", (_AbortableConnection, HTTPSConnection), {})}),
    }


class _Retry(urllib3.Retry):
    """urllib3's ``Retry`` with ``Retry-After`` capped (a server asking for an hour must not
    park a worker thread and its connection slot; urllib3 < 2.7 has no cap at all) and an
    optional ``deadline`` (``time.monotonic()``): no retry starts, and no wait runs, past
    it, so a request its job gave up on (timed out, cancelled) frees its slot soon."""

    RETRY_AFTER_CAP = 10.0

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def new(self, **kw: Any) -> _Retry:
        kw.setdefault("deadline", self.deadline)
        return super().new(**kw)

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or (self.deadline is not None and time.monotonic() >= self.deadline)

    def get_retry_after(self, response: urllib3.BaseHTTPResponse) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.RETRY_AFTER_CAP, self._left())

    def get_backoff_time(self) -> float:
        return min(super().get_backoff_time(), self._left())

    def _left(self) -> float:
        return float("inf") if self.deadline is None else max(0.0, self.deadline - time.monotonic())


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


# A logger's filter sees only what is logged to that very logger, not its children's
# records: each urllib3 module that logs a URL is listed.
for _name in ("urllib3.connection", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.response",
              "urllib3.util.retry"):
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
        pool_timeout: float = 30.0,
    ) -> None:
        owner = "http pool"
        # A response nobody releases keeps its connection: without a bound, a full host
        # pool would make every later request to that host wait forever.
        self._pool_timeout = check_positive(owner, "pool_timeout", pool_timeout)
        self.maxsize = check_int(owner, "maxsize", maxsize, 1)
        check_int(owner, "num_pools", num_pools, 1)
        check_int(owner, "retries", retries, 0)
        if isinstance(backoff_factor, bool) or not isinstance(backoff_factor, (int, float)) or backoff_factor < 0:
            raise ConfigError(f"{owner}: backoff_factor must be a number >= 0, not {backoff_factor!r}")
        self._timeout = urllib3.Timeout(
            connect=check_positive(owner, "connect_timeout", connect_timeout),
            read=check_positive(owner, "read_timeout", read_timeout),
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
        pool_timeout: float | None = None,
        deadline: float | None = None,
        abort: RequestAbort | None = None,
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
            pool_timeout: seconds to wait for a free connection when the host's pool
                is full (None: the pool's ``pool_timeout``); then ``EmptyPoolError``.
            deadline: ``time.monotonic()`` after which no retry starts and no retry
                wait runs (a job's end): the last response or error is returned.
            abort: ends the request from another thread (``RequestAbort.abort``); it
                then raises ``RequestAborted`` or urllib3's error for the shut socket.

        Raises:
            urllib3.exceptions.HTTPError: unchanged from urllib3 (e.g. ``MaxRetryError``,
                ``EmptyPoolError``).
        """
        merged = urllib3.HTTPHeaderDict(self._headers)
        merged.update(headers or {})
        retry = self._retries(retries)
        if isinstance(retry, urllib3.Retry):
            # Every header given here may be a credential (an API key header is
            # not one urllib3 knows): none of them follows a redirect to another host.
            retry = retry.new(remove_headers_on_redirect=set(retry.remove_headers_on_redirect)
                              | {name.lower() for name in merged})
            if deadline is not None and isinstance(retry, _Retry):
                retry = retry.new(deadline=deadline)
        outer, _in_flight.abort = getattr(_in_flight, "abort", None), abort
        try:
            response = self._manager.request(
                method,
                url,
                body=body,
                headers=merged,
                timeout=self._timeout if timeout is None else timeout,
                retries=retry,
                preload_content=preload_content,
                pool_timeout=self._pool_timeout if pool_timeout is None else pool_timeout,
            )
        except Exception:
            self._counts.record_request(error=True)
            raise
        finally:
            _in_flight.abort = outer
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
