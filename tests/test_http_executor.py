"""HttpExecution against a real HTTP server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3

from runtime.executors import ExecutionResult, validate_arguments
from runtime.http_executor import HttpExecution
from runtime.pools import ConnectionPools, HttpPool
from runtime.pools.http import RequestAbort, RequestAborted
from runtime.registry import Script, parse_registry
from runtime.testing import wait_until

SECRET = "s3cr3t-t0ken"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    base: str
    seen: list[Seen] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    flaky: set[str] = field(default_factory=set)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: Server

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Set-Cookie", "session=nope")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.state.seen.append(Seen(self.command, self.path, dict(self.headers), body))
        path = urlsplit(self.path).path
        query = parse_qs(urlsplit(self.path).query)
        if path == "/json":
            self._send(200, json.dumps({"ok": True, "n": 3}).encode())
        elif path.startswith("/flaky/"):
            if path not in self.state.flaky:
                self.state.flaky.add(path)
                self._send(503, b"busy", "text/plain")
            else:
                self._send(200, b"{}")
        elif path == "/slow":
            self.state.arrived.set()
            self.state.release.wait(10)
            self._send(200, b"{}")
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"first part ")
            self.wfile.flush()
            self.state.arrived.set()
            self.state.release.wait(10)
        elif path == "/big":
            self._send(200, b'{"x": "' + b"a" * int(query["n"][0]) + b'"}')
        elif path == "/status":
            self._send(int(query["code"][0]), b"no", "text/plain")
        elif path == "/retry-later":  # the client waits a second, its connection back in the pool
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(200, b"{}")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (a capped body, a cancel) is what these tests do


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = _Quiet(("127.0.0.1", 0), _Handler)
    state = Server(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = type("Handler", (_Handler,), {"state": state})
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    state.release.set()  # slow handlers answer now, nothing waits for their 10 s
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def pool() -> Iterator[HttpPool]:
    pools = ConnectionPools()
    yield pools.init_http_pool(backoff_factor=0.01)  # fast retries: the refused connection is retried 3 times
    pools.close()


def _script(**entry: Any) -> Script:
    entry = {"id": "api", "kind": "http", **entry}
    return parse_registry(Path("/srv/registry.json"), json.dumps({"scripts": [entry]}))["api"]


def _run(script: Script, pool: HttpPool, arguments: dict[str, Any] | None = None, **kwargs: Any) -> ExecutionResult:
    return HttpExecution(script, validate_arguments(script, arguments), pool, **kwargs).run()


def test_json_answer_succeeds_with_selected_headers_and_progress(server: Server, pool: HttpPool) -> None:
    events: list[tuple[float, str]] = []
    result = _run(_script(url=server.base + "/json"), pool, on_progress=lambda f, m: events.append((f, m)))
    assert result.status == "succeeded" and result.error is None
    data = result.to_dict()
    assert data["status_code"] == 200 and data["json"] == {"ok": True, "n": 3}
    assert json.loads(data["body"]) == {"ok": True, "n": 3} and data["body_truncated"] is False
    assert data["headers"]["content-type"] == "application/json" and "set-cookie" not in data["headers"]
    assert "retryable" not in data
    assert events == [(0.0, "request sent"), (1.0, "response 200")]
    json.dumps(data, allow_nan=False)


def test_placeholders_are_percent_encoded_and_other_arguments_go_to_the_query(server: Server, pool: HttpPool) -> None:
    script = _script(url=server.base + "/items/{id}?fixed=1", arguments={
        "id": {"type": "string", "required": True}, "q": {"type": "string"}, "flag": {"type": "boolean"},
        "tags": {"type": "array"}})
    result = _run(script, pool, {"id": "a b/c", "q": "x&y=z", "flag": True, "tags": ["p", "q"]})
    assert result.status == "succeeded"
    (seen,) = server.seen
    assert seen.method == "GET" and seen.body == b""
    assert seen.path == "/items/a%20b%2Fc?fixed=1&q=x%26y%3Dz&flag=true&tags=p&tags=q"


def test_post_sends_the_other_arguments_as_a_json_body(server: Server, pool: HttpPool) -> None:
    script = _script(method="post", url=server.base + "/things/{id}", arguments={
        "id": {"type": "integer", "required": True}, "name": {"type": "string"}, "meta": {"type": "object"}})
    result = _run(script, pool, {"id": 7, "name": "Ada", "meta": {"k": [1, 2]}})
    assert result.status == "succeeded"
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("POST", "/things/7")
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {"name": "Ada", "meta": {"k": [1, 2]}}


def test_a_503_then_200_succeeds_through_the_pool_retry(server: Server, pool: HttpPool) -> None:
    result = _run(_script(url=server.base + "/flaky/one"), pool)
    assert result.status == "succeeded" and result.extra["status_code"] == 200
    assert [s.path for s in server.seen] == ["/flaky/one", "/flaky/one"]


def test_an_answer_slower_than_the_timeout_times_out_naming_the_host_only(server: Server, pool: HttpPool) -> None:
    script = _script(url=server.base + "/slow?token={token}", timeout=0.3,
                     arguments={"token": {"type": "string", "required": True}})
    result = _run(script, pool, {"token": SECRET})
    assert result.status == "timeout"
    assert result.duration < 2
    host = server.base.removeprefix("http://")
    assert result.error == f"http script 'api': GET to {host} timed out after 0.3s"
    assert SECRET not in json.dumps(result.to_dict())


def test_a_body_slower_than_the_timeout_times_out(server: Server, pool: HttpPool) -> None:
    result = _run(_script(url=server.base + "/slow-body", timeout=0.3), pool)
    assert result.status == "timeout" and result.duration < 2


def test_a_large_body_is_capped_and_reported(server: Server, pool: HttpPool) -> None:
    result = _run(_script(url=server.base + "/big?n=5000", body_cap=1000), pool)
    assert result.status == "succeeded"
    assert len(result.extra["body"]) == 1000 and result.extra["body_truncated"] is True
    assert result.extra["json"] is None  # an incomplete JSON text is not parsed
    assert pool.figures()["in_use"] == 0  # the dropped connection's slot went back
    assert _run(_script(url=server.base + "/json"), pool).status == "succeeded"


def test_404_fails_with_the_template_and_is_not_retryable(server: Server, pool: HttpPool) -> None:
    script = _script(url=server.base + "/status?code=404&key={key}", arguments={"key": {"type": "string", "required": True}})
    result = _run(script, pool, {"key": SECRET})
    assert result.status == "failed"
    assert result.error == f"http script 'api': GET {server.base}/status?code=404&key={{key}} answered 404"
    assert result.extra["retryable"] is False and result.extra["status_code"] == 404
    assert SECRET not in json.dumps(result.to_dict())


def test_a_408_and_an_unlisted_2xx_are_retryable_failures(server: Server, pool: HttpPool) -> None:
    assert "retryable" not in _run(_script(url=server.base + "/status?code=408"), pool).extra
    result = _run(_script(url=server.base + "/status?code=202", success_statuses=[200]), pool)
    assert result.status == "failed" and "retryable" not in result.extra


def test_cancel_of_a_slow_request_returns_cancelled_quickly(server: Server, pool: HttpPool) -> None:
    execution = HttpExecution(_script(url=server.base + "/slow", timeout=30), {}, pool)
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    assert server.arrived.wait(5)
    execution.cancel()
    runner.join(2)
    assert not runner.is_alive()
    assert results[0].status == "cancelled" and results[0].duration < 2


def test_cancel_while_the_body_is_read_returns_cancelled_quickly(server: Server, pool: HttpPool) -> None:
    execution = HttpExecution(_script(url=server.base + "/slow-body", timeout=30), {}, pool)
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    assert server.arrived.wait(5)
    wait_until(lambda: execution._response is not None)  # the helper is in the body read
    execution.cancel()
    runner.join(2)
    assert not runner.is_alive() and results[0].status == "cancelled"
    wait_until(lambda: pool.figures()["in_use"] == 0)  # the helper gave the connection's slot back


def test_a_cancel_just_after_the_body_was_read_is_harmless(server: Server, pool: HttpPool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Read to its end, the response has given its connection back (urllib3 then refuses
    # to shut it down); a cancel in that moment must neither raise nor touch the pool's connection.
    read = HttpExecution._read
    execution = HttpExecution(_script(url=server.base + "/json"), {}, pool)
    body_read, cancelled = threading.Event(), threading.Event()

    def read_then_wait(self: HttpExecution, response: Any) -> Any:
        body = read(self, response)
        body_read.set()
        cancelled.wait(5)
        return body

    monkeypatch.setattr(HttpExecution, "_read", read_then_wait)
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    assert body_read.wait(5)
    try:
        execution.cancel()  # from the scheduler's thread, in the runtime: it must not raise
    finally:
        cancelled.set()
        runner.join(5)
    assert results[0].status == "cancelled"
    assert pool.figures()["in_use"] == 0
    monkeypatch.undo()
    assert _run(_script(url=server.base + "/json"), pool).status == "succeeded"  # the pool is fine


def test_cancel_before_run_does_not_send(server: Server, pool: HttpPool) -> None:
    execution = HttpExecution(_script(url=server.base + "/json"), {}, pool)
    execution.cancel()
    assert execution.run().status == "cancelled" and server.seen == []


def test_env_header_is_filled_and_never_in_the_result_or_logs(server: Server, pool: HttpPool,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = _script(url=server.base + "/json", headers={"Authorization": "Bearer ${API_TOKEN}", "X-User": "{user}"},
                     arguments={"user": {"type": "string", "required": True}})
    result = _run(script, pool, {"user": "ada"}, env={"API_TOKEN": SECRET})
    assert result.status == "succeeded"
    (seen,) = server.seen
    assert seen.headers["Authorization"] == f"Bearer {SECRET}" and seen.headers["X-User"] == "ada"
    assert seen.path == "/json"  # an argument used in a header stays out of the query
    assert SECRET not in json.dumps(result.to_dict()) and SECRET not in caplog.text


def test_a_missing_env_variable_fails_without_a_request_and_is_not_retryable(server: Server, pool: HttpPool) -> None:
    script = _script(url=server.base + "/json", headers={"Authorization": "Bearer ${API_TOKEN}"})
    result = _run(script, pool, env={})
    assert result.status == "failed" and result.extra["retryable"] is False
    assert result.error == "http script 'api': header 'Authorization': environment variable API_TOKEN is not set"
    assert server.seen == []


def test_connection_refused_fails_naming_the_host(pool: HttpPool) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = _script(url=f"http://127.0.0.1:{port}/x?token={{t}}", arguments={"t": {"type": "string", "required": True}})
    result = _run(script, pool, {"t": SECRET})
    assert result.status == "failed" and "retryable" not in result.extra
    assert result.error is not None and result.error.startswith(f"http script 'api': GET to 127.0.0.1:{port} failed: ")
    assert "Connection refused" in result.error and SECRET not in result.error


def test_wrong_kind_and_second_run_are_the_callers_mistakes(server: Server, pool: HttpPool) -> None:
    with pytest.raises(ValueError, match="needs an http script"):
        HttpExecution(Script(id="c", command=("true",)), {}, pool)
    execution = HttpExecution(_script(url=server.base + "/json", method="HEAD"), {}, pool)
    result = execution.run()
    assert result.status == "succeeded" and result.extra["body"] == ""
    with pytest.raises(RuntimeError):
        execution.run()


def test_a_cancel_before_the_headers_frees_the_connection_at_once(server: Server, pool: HttpPool) -> None:
    # Without it, the helper thread held the connection (a slot of the shared pool) until the
    # server answered or the script's timeout passed.
    execution = HttpExecution(_script(url=server.base + "/slow", timeout=30), {}, pool)
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    assert server.arrived.wait(5)  # the server holds the answer back (10 s)
    execution.cancel()
    runner.join(2)
    assert not runner.is_alive() and results[0].status == "cancelled"
    wait_until(lambda: pool.figures()["in_use"] == 0, message="the cancelled request still holds its connection")
    assert _run(_script(url=server.base + "/json"), pool).status == "succeeded"  # the pool serves on


def test_a_request_abort_stops_a_request_at_any_point(server: Server, pool: HttpPool) -> None:
    abort = RequestAbort()
    abort.abort()  # before the request took a connection: it takes none
    with pytest.raises(RequestAborted):
        pool.request("GET", server.base + "/json", abort=abort)
    assert pool.figures()["in_use"] == 0


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - what it raised is what the test checks
            out.append(e)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def test_an_abort_leaves_alone_a_connection_its_request_gave_back(server: Server) -> None:
    # A waits to retry a 503 (its connection back in the pool); B takes that connection; A is
    # cancelled: B's request must go on.
    pools = ConnectionPools()
    pool = pools.init_http_pool(maxsize=1, retries=1, backoff_factor=0)
    try:
        abort = RequestAbort()
        a, a_out = _in_thread(lambda: pool.request("GET", server.base + "/retry-later", abort=abort,
                                                   preload_content=True))
        b, b_out = _in_thread(lambda: pool.request("POST", server.base + "/slow", body=b"x", preload_content=True))
        assert server.arrived.wait(5)  # B's request is on the wire, on the connection A gave back
        abort.abort()
        server.release.set()
        b.join(10)
        a.join(10)
        assert not isinstance(b_out[0], BaseException), f"B failed because A was cancelled: {b_out[0]!r}"
        assert b_out[0].status == 200
    finally:
        pools.close()


def test_an_abort_while_the_connection_opens_keeps_the_request_from_being_sent(
    server: Server, pool: HttpPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    connecting, proceed = threading.Event(), threading.Event()
    original = urllib3.connection.HTTPConnection._new_conn

    def slow_new_conn(self: Any) -> Any:  # a slow DNS lookup or TCP connect, on cue
        connecting.set()
        proceed.wait(5)
        return original(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_new_conn", slow_new_conn)
    abort = RequestAbort()
    thread, out = _in_thread(lambda: pool.request("POST", server.base + "/json", body=b"x", abort=abort))
    assert connecting.wait(5)
    abort.abort()  # before anything was sent
    proceed.set()
    thread.join(10)
    assert isinstance(out[0], BaseException) and server.seen == []
