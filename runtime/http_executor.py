"""Run one attempt of an ``http`` script: one request through the shared HTTP pool.

Plain blocking code, no actors. The request runs in a helper thread so that
:meth:`HttpExecution.cancel` and the script's timeout end :meth:`HttpExecution.run`
at once, even while the server has not answered yet. Argument values and
environment values may be secrets: they never reach a log record or an error
message, which name the script, the method and the URL *template* (or only the
host, for transport errors, whose messages urllib3 fills with the real URL).
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from runtime.executors import MAX_NESTING, ExecutionResult, ProgressCallback, report_progress, require_kind, too_deep
from runtime.pools.http import RequestAbort
from runtime.registry import ARGUMENT_PLACEHOLDER, DEFAULT_BODY_CAP, HEADER_PLACEHOLDER, Script

if TYPE_CHECKING:
    from runtime.pools import HttpPool

__all__ = ["BODY_METHODS", "KEPT_HEADERS", "HttpExecution"]

log = logging.getLogger(__name__)

#: Methods whose non-placeholder arguments travel as a JSON body; the others put
#: them in the query string (DELETE too: many servers and proxies drop its body).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Response headers copied into the result; never cookies or credentials.
KEPT_HEADERS = ("content-type", "content-length", "content-encoding", "location", "retry-after", "etag",
                "last-modified", "cache-control", "date")
#: 4xx answers that a later attempt may not get again.
_RETRYABLE_4XX = frozenset({408, 425, 429})
_CHUNK = 64 * 1024
_CHARSET = re.compile(r"charset\s*=\s*\"?([\w.:-]+)", re.IGNORECASE)


class _Refused(Exception):
    """The request cannot be built; a retry would not help (the message holds no value)."""


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool


def _text(value: Any) -> str:
    """A value as it reads in a URL or header: JSON spelling for booleans and containers."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, dict, list)) or value is None:
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _query_pairs(arguments: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query-string pairs; an array gives one pair per item (``?tag=a&tag=b``)."""
    pairs: list[tuple[str, str]] = []
    for name, value in arguments.items():
        items = value if isinstance(value, list) else [value]
        pairs.extend((name, _text(item)) for item in items)
    return pairs


def _cause(exc: BaseException) -> str:
    """A transport error without its message (urllib3 puts the full URL in it): type and errno text."""
    reason = getattr(exc, "reason", None)  # MaxRetryError wraps the error of the last try
    exc = reason if isinstance(reason, BaseException) else exc
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return f"{type(exc).__name__}: {current.strerror}"
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else (current.__cause__ or current.__context__)
    return type(exc).__name__


def _is_timeout(exc: BaseException) -> bool:
    """urllib3 makes NewConnectionError a ConnectTimeoutError for history's sake: it is not a timeout."""
    reason = getattr(exc, "reason", None)
    target = reason if isinstance(reason, BaseException) else exc
    return isinstance(target, (Urllib3Timeout, TimeoutError)) and not isinstance(target, NewConnectionError)


def _charset(content_type: str) -> str:
    match = _CHARSET.search(content_type)
    if match:
        try:
            return codecs.lookup(match.group(1)).name
        except LookupError:
            pass
    return "utf-8"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class HttpExecution:
    """One attempt of an ``http`` script.

    The URL template's ``{name}`` placeholders are filled with the percent-encoded
    arguments; header values get ``{name}`` arguments and ``${NAME}`` variables of
    ``env``. The other arguments go as a JSON object body for POST, PUT and PATCH
    (when the script declares any), and to the query string otherwise. The
    script's ``timeout`` bounds the whole call, body included.

    Args:
        script: an ``http`` script (its options validated by the registry).
        arguments: validated arguments (see :func:`runtime.executors.validate_arguments`).
        pool: the shared HTTP pool (connection reuse and retries live there).
        on_progress: called with ``(fraction, message)`` from the thread in :meth:`run`.
        env: where ``${NAME}`` header references are looked up (default ``os.environ``).
        clock: monotonic seconds, for ``duration`` (the deadline uses real time).

    Raises:
        ValueError: the script is not an ``http`` script.
    """

    def __init__(self, script: Script, arguments: Mapping[str, Any], pool: HttpPool, *,
                 on_progress: ProgressCallback | None = None, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        require_kind(script, "http", "HttpExecution")
        self.script = script
        self._arguments = dict(arguments)
        self._pool = pool
        self._on_progress = on_progress
        self._env = env
        self._clock = clock
        options = script.options
        self._method = str(options.get("method", "GET")).upper()
        self._template = str(options.get("url", ""))
        parts = urlsplit(self._template)
        self._host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        self._success = frozenset(options.get("success_statuses", range(200, 300)))
        self._body_cap = int(options.get("body_cap", DEFAULT_BODY_CAP))
        self._started = False
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set by the helper's outcome, by cancel() or by the deadline
        self._aborted: str | None = None  # "cancelled" or "timeout", once decided
        self._response: urllib3.BaseHTTPResponse | None = None
        self._outcome: _Response | BaseException | None = None
        # Ends the helper's request while it still waits for the headers: its connection
        # (a slot of the shared pool) is not held until the timeout.
        self._request_abort = RequestAbort()

    def cancel(self) -> None:
        """From any thread: end :meth:`run` with ``cancelled`` (or keep it from starting)."""
        self._abort("cancelled")

    def run(self) -> ExecutionResult:
        """Make the request and wait for its answer, the deadline or a cancel.

        Raises:
            RuntimeError: called a second time.
        """
        if self._started:
            raise RuntimeError("an HttpExecution runs only once")
        self._started = True
        started = self._clock()
        if self._aborted:
            return self._done("cancelled", started, "cancelled before start")
        try:
            request = self._build()
        except _Refused as e:
            return self._done("failed", started, f"{self._what()}: {e}", retryable=False)
        report_progress(self.script.id, self._on_progress, 0.0, "request sent")
        helper = threading.Thread(target=self._call, args=(request,), daemon=True,
                                  name=f"http-{self.script.id}")
        helper.start()
        self._wake.wait(self.script.timeout)
        self._abort("timeout")  # no-op when the outcome or a cancel came first
        with self._lock:
            outcome, aborted = self._outcome, self._aborted
        if outcome is None:
            error = "cancelled" if aborted == "cancelled" else \
                f"http script {self.script.id!r}: {self._method} to {self._host} timed out after {self.script.timeout:g}s"
            return self._done(aborted or "timeout", started, error)
        if isinstance(outcome, BaseException):
            return self._transport_failure(outcome, started)
        return self._answered(outcome, started)

    # -- the helper thread ---------------------------------------------------------------

    def _call(self, request: _Request) -> None:
        """Send the request and read the capped body; hand the outcome to :meth:`run`."""
        timeout = urllib3.Timeout(total=self.script.timeout)
        try:
            response = self._pool.request(request.method, request.url, headers=request.headers, body=request.body,
                                          timeout=timeout, preload_content=False, pool_timeout=self.script.timeout,
                                          deadline=time.monotonic() + self.script.timeout,
                                          abort=self._request_abort)
        except Exception as e:  # transport errors; anything else is reported the same way, never raised here
            log.debug("http script %r: %s to %s raised %s", self.script.id, request.method, self._host,
                      type(e).__name__)
            self._finish(e)
            return
        with self._lock:
            if self._aborted is None:
                self._response = response
        if self._response is None:  # cancelled or timed out while waiting for the headers
            self._discard(response)
            return
        try:
            body, truncated = self._read(response)
        except Exception as e:
            self._discard(response)
            self._finish(e)
            return
        with self._lock:
            self._response = None  # from here on, _abort() has nothing to shut down
            aborted = self._aborted is not None
        if truncated or aborted:
            self._discard(response)  # the rest is not worth downloading, or the socket was shut
        else:
            response.release_conn()
        headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
        self._finish(_Response(response.status, headers, body, truncated))

    def _read(self, response: urllib3.BaseHTTPResponse) -> tuple[bytes, bool]:
        """Up to ``body_cap`` bytes of the (decoded) body, and whether there was more."""
        data = bytearray()
        if self._method == "HEAD":
            return bytes(data), False
        while len(data) <= self._body_cap:
            piece = response.read(min(_CHUNK, self._body_cap + 1 - len(data)))
            if not piece:
                break
            data += piece
        truncated = len(data) > self._body_cap
        return bytes(data[: self._body_cap]), truncated

    def _finish(self, outcome: _Response | BaseException) -> None:
        with self._lock:
            if self._aborted is None:
                self._outcome = outcome
        self._wake.set()

    def _abort(self, reason: str) -> None:
        """Decide ``reason`` unless an outcome is in; unblock a body read in progress."""
        with self._lock:
            if self._outcome is not None or self._aborted is not None:
                return
            self._aborted = reason
            response = self._response
        self._wake.set()
        if response is not None:
            try:
                response.shutdown()  # a read blocked in the helper returns at once
            except (RuntimeError, ValueError, OSError):  # the body was read to its end and the connection
                pass  # given back: no read is left to stop, and the pool's connection is not ours
        else:
            self._request_abort.abort()  # so does a wait for the headers

    @staticmethod
    def _discard(response: urllib3.BaseHTTPResponse) -> None:
        """Close the connection (its state is unknown) and give its slot back to the pool."""
        response.close()
        response.release_conn()

    # -- building the request ------------------------------------------------------------

    def _build(self) -> _Request:
        """The filled-in request.

        Raises:
            _Refused: a placeholder without a value, a missing ``${NAME}``, a line break in a header.
        """
        if not self._template:
            raise _Refused("option 'url' is missing")
        in_url = {m.group(1) for m in ARGUMENT_PLACEHOLDER.finditer(self._template)}
        headers, in_headers = self._headers()
        url = ARGUMENT_PLACEHOLDER.sub(lambda m: quote(self._value(m.group(1), "the url"), safe=""), self._template)
        rest = {k: v for k, v in self._arguments.items() if k not in in_url | in_headers}
        body: bytes | None = None
        if self._method in BODY_METHODS:
            if set(self.script.arguments) - in_url - in_headers:
                body = json.dumps(rest, separators=(",", ":")).encode()
                if not any(name.lower() == "content-type" for name in headers):
                    headers["Content-Type"] = "application/json"
        elif rest:
            parts = urlsplit(url)
            extra = urlencode(_query_pairs(rest), quote_via=quote)
            url = parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra).geturl()
        return _Request(self._method, url, headers, body)

    def _headers(self) -> tuple[dict[str, str], set[str]]:
        """Header values filled in, and the arguments they used (kept out of the query and body)."""
        env = os.environ if self._env is None else self._env
        used: set[str] = set()
        headers: dict[str, str] = {}
        templates: Mapping[str, str] = self.script.options.get("headers", {})
        for header, template in templates.items():
            pieces: list[str] = []
            position = 0
            for match in HEADER_PLACEHOLDER.finditer(template):
                variable, argument = match.group(1), match.group(2)
                pieces.append(template[position:match.start()])
                position = match.end()
                if argument is not None:
                    used.add(argument)
                    pieces.append(self._value(argument, f"header {header!r}"))
                elif variable in env:
                    pieces.append(env[variable])
                else:
                    raise _Refused(f"header {header!r}: environment variable {variable} is not set")
            value = "".join(pieces) + template[position:]
            if "\r" in value or "\n" in value:
                raise _Refused(f"header {header!r}: its filled-in value holds a line break")
            headers[header] = value
        return headers, used

    def _value(self, name: str, where: str) -> str:
        if name not in self._arguments:
            raise _Refused(f"placeholder {{{name}}} in {where} has no value")
        return _text(self._arguments[name])

    # -- results -------------------------------------------------------------------------

    def _what(self) -> str:
        return f"http script {self.script.id!r}"

    def _answered(self, response: _Response, started: float) -> ExecutionResult:
        content_type = response.headers.get("content-type", "")
        text = response.body.decode(_charset(content_type), "replace")
        parsed: Any = None
        if _is_json(content_type) and not response.truncated and text.strip():
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):
                log.debug("http script %r: the body is not valid JSON", self.script.id)
            if too_deep(parsed):  # a job's result may not nest so deep: the body stays, as text
                log.debug("http script %r: the JSON body nests more than %d levels", self.script.id, MAX_NESTING)
                parsed = None
        extra: dict[str, Any] = {"status_code": response.status, "headers": response.headers, "body": text,
                                 "body_truncated": response.truncated, "json": _json_ready(parsed)}
        report_progress(self.script.id, self._on_progress, 1.0, f"response {response.status}")
        if response.status in self._success:
            return self._done("succeeded", started, None, extra)
        error = f"{self._what()}: {self._method} {self._template} answered {response.status}"
        retryable = not (400 <= response.status < 500) or response.status in _RETRYABLE_4XX
        return self._done("failed", started, error, extra, retryable=retryable)

    def _transport_failure(self, exc: BaseException, started: float) -> ExecutionResult:
        if _is_timeout(exc):
            error = f"{self._what()}: {self._method} to {self._host} timed out after {self.script.timeout:g}s"
            return self._done("timeout", started, error)
        if isinstance(exc, (HTTPError, OSError)):
            return self._done("failed", started, f"{self._what()}: {self._method} to {self._host} failed: {_cause(exc)}")
        log.error("http script %r: unexpected %s from the HTTP pool", self.script.id, type(exc).__name__)
        return self._done("failed", started, f"{self._what()}: {self._method} to {self._host} failed: "
                                             f"unexpected {type(exc).__name__}")

    def _done(self, status: str, started: float, error: str | None, extra: Mapping[str, Any] | None = None, *,
              retryable: bool = True) -> ExecutionResult:
        duration = self._clock() - started
        fields: dict[str, Any] = {"status_code": None, "headers": {}, "body": "", "body_truncated": False,
                                  "json": None}
        fields.update(extra or {})
        if not retryable:
            fields["retryable"] = False
        log.info("http script %r: %s %s: %s (%s) in %.2fs", self.script.id, self._method, self._host, status,
                 fields["status_code"], duration)
        return ExecutionResult(status, duration=duration, error=error, extra=fields)


def _json_ready(value: Any) -> Any:
    """JSON's NaN and Infinity extensions (accepted by ``json.loads``) become ``None``: results are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    return value
