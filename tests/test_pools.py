"""The runtime's connection pools against real services: PostgreSQL on 127.0.0.1:5432
and an ``http.server`` started per test. Threads meet on events (or on the pools'
own ``waiting`` figure through ``wait_until``), never on sleeps."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import json
import urllib.parse
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import urllib3

from runtime.errors import ConfigError, PoolError, PoolTimeout
from runtime.pools import ConnectionPools, HttpPool, PostgresPool, redact_dsn
from runtime.testing import wait_until

PG = {"host": "127.0.0.1", "port": 5432, "database": "test", "user": "postgres"}
SECRET = "s3cr3t-Pa55word"


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------


@functools.cache
def _postgres_unreachable() -> str | None:
    try:
        psycopg2.connect(host=PG["host"], port=PG["port"], dbname=PG["database"], user=PG["user"],
                         connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        return " ".join(str(error).split())
    return None


def require_postgres() -> None:
    """Skip when PostgreSQL is not running here, but fail in CI, where it must be."""
    problem = _postgres_unreachable()
    if problem is None:
        return
    reason = f"PostgreSQL at {PG['host']}:{PG['port']} is unreachable: {problem}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def make_pool() -> Iterator[Callable[..., PostgresPool]]:
    """Pools on the test database; every one is closed after the test."""
    require_postgres()
    pools: list[PostgresPool] = []

    def make(**options: Any) -> PostgresPool:
        pool = PostgresPool(**{**PG, "minconn": 1, "maxconn": 2, **options})
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def admin() -> Iterator[psycopg2.extensions.connection]:
    """A connection of its own, outside any pool, in autocommit."""
    require_postgres()
    conn = psycopg2.connect(host=PG["host"], port=PG["port"], dbname=PG["database"], user=PG["user"])
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def table(admin: psycopg2.extensions.connection) -> Iterator[str]:
    name = f"pools_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {name} (value integer)")
    yield name
    with admin.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


def _scalar(conn: psycopg2.extensions.connection, sql: str, *params: Any) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def _terminate(admin: psycopg2.extensions.connection, pid: int) -> None:
    assert _scalar(admin, "SELECT pg_terminate_backend(%s)", pid) is True
    wait_until(lambda: _scalar(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid) == 0,
               timeout=5)


def test_a_connection_is_lent_and_comes_back(make_pool: Callable[..., PostgresPool]) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        assert _scalar(conn, "SELECT 1") == 1
        pid = conn.info.backend_pid
        assert pool.figures()["in_use"] == 1
    figures = pool.figures()
    assert (figures["in_use"], figures["idle"], figures["checkouts"], figures["opened"]) == (0, 1, 1, 1)
    with pool.connection() as again:
        assert again.info.backend_pid == pid  # the same connection, not a new one


def test_an_open_transaction_is_rolled_back_before_reuse(
    make_pool: Callable[..., PostgresPool], table: str, admin: psycopg2.extensions.connection
) -> None:
    pool = make_pool(maxconn=1)
    with pool.connection() as conn:
        with conn.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (1)")
        assert _scalar(conn, f"SELECT count(*) FROM {table}") == 1
    with pool.connection() as conn:
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert _scalar(conn, f"SELECT count(*) FROM {table}") == 0
    assert _scalar(admin, f"SELECT count(*) FROM {table}") == 0


def test_an_exception_in_the_block_still_returns_the_connection(
    make_pool: Callable[..., PostgresPool], table: str
) -> None:
    pool = make_pool(maxconn=1)
    with pytest.raises(psycopg2.errors.DivisionByZero):
        with pool.connection() as conn:
            with conn.cursor() as cursor:
                cursor.execute(f"INSERT INTO {table} VALUES (1)")
                cursor.execute("SELECT 1 / 0")
    with pool.connection(timeout=1) as conn:  # the one connection came back, usable
        assert _scalar(conn, f"SELECT count(*) FROM {table}") == 0
    assert pool.figures()["replaced"] == 0


def test_session_state_a_job_changed_is_reset(make_pool: Callable[..., PostgresPool]) -> None:
    pool = make_pool(maxconn=1)
    with pool.connection() as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET application_name = 'left-by-a-job'")
            cursor.execute("CREATE TEMP TABLE left_by_a_job (x int)")
    with pool.connection() as conn:
        assert conn.autocommit is False
        assert _scalar(conn, "SHOW application_name") != "left-by-a-job"
        assert _scalar(conn, "SELECT to_regclass('pg_temp.left_by_a_job')") is None


def test_exhaustion_times_out_with_a_clear_message(make_pool: Callable[..., PostgresPool]) -> None:
    pool = make_pool(maxconn=1)
    with pool.connection():
        with pytest.raises(PoolTimeout) as raised:
            with pool.connection(timeout=0.2):
                pass  # pragma: no cover
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, PoolError)
    assert str(raised.value) == "database pool 'default': its only connection stayed in use for 0.2 s"
    figures = pool.figures()
    assert (figures["timeouts"], figures["waits"], figures["checkouts"]) == (1, 1, 1)
    assert figures["wait_time_max"] >= 0.2


def test_a_waiter_gets_the_connection_another_thread_returns(make_pool: Callable[..., PostgresPool]) -> None:
    pool = make_pool(maxconn=1)
    got: list[int] = []
    done = threading.Event()

    def borrow() -> None:
        with pool.connection(timeout=10) as conn:
            got.append(conn.info.backend_pid)
        done.set()

    with pool.connection() as conn:
        holder_pid = conn.info.backend_pid
        waiter = threading.Thread(target=borrow)
        waiter.start()
        wait_until(lambda: pool.figures()["waiting"] == 1, timeout=5)
        assert not done.is_set()
    assert done.wait(5)
    waiter.join(5)
    assert got == [holder_pid]
    figures = pool.figures()
    assert figures["waits"] == 1 and figures["timeouts"] == 0 and figures["waiting"] == 0
    assert figures["wait_time_total"] > 0


def test_a_returned_connection_goes_to_the_waiter_not_to_a_late_comer(
    make_pool: Callable[..., PostgresPool],
) -> None:
    pool = make_pool(maxconn=1)
    got = threading.Event()
    release = threading.Event()

    def borrow() -> None:
        with pool.connection(timeout=10):
            got.set()
            release.wait(5)

    waiter = threading.Thread(target=borrow)
    try:
        with pool.connection():
            waiter.start()
            wait_until(lambda: pool.figures()["waiting"] == 1, timeout=5)
        # Returned a moment ago, but it is the waiter's: the late comer queues behind.
        with pytest.raises(PoolTimeout):
            with pool.connection(timeout=0):
                pass  # pragma: no cover
        assert got.wait(5)
    finally:
        release.set()
        waiter.join(5)


def test_closing_the_pool_wakes_its_waiters(make_pool: Callable[..., PostgresPool]) -> None:
    pool = make_pool(maxconn=1)
    errors: list[BaseException] = []

    def borrow() -> None:
        try:
            with pool.connection(timeout=10):
                pass  # pragma: no cover
        except PoolError as error:
            errors.append(error)

    waiter = threading.Thread(target=borrow)
    with pool.connection():
        waiter.start()
        wait_until(lambda: pool.figures()["waiting"] == 1, timeout=5)
        pool.close()
        waiter.join(5)
    assert [str(error) for error in errors] == ["database pool 'default' is closed"]


def test_a_terminated_backend_is_replaced_on_the_next_checkout(
    make_pool: Callable[..., PostgresPool], admin: psycopg2.extensions.connection
) -> None:
    pool = make_pool(maxconn=1)
    with pool.connection() as conn:
        pid = conn.info.backend_pid
    _terminate(admin, pid)
    with pool.connection(timeout=5) as conn:
        assert conn.info.backend_pid != pid
        assert _scalar(conn, "SELECT 1") == 1
    figures = pool.figures()
    assert figures["replaced"] >= 1 and figures["errors"] >= 1 and figures["opened"] == 2


def test_a_connection_that_breaks_during_a_job_is_discarded(
    make_pool: Callable[..., PostgresPool], admin: psycopg2.extensions.connection
) -> None:
    pool = make_pool(maxconn=1)
    with pytest.raises(psycopg2.OperationalError):
        with pool.connection() as conn:
            pid = conn.info.backend_pid
            _terminate(admin, pid)
            _scalar(conn, "SELECT 1")
    assert pool.figures()["replaced"] == 1 and pool.figures()["idle"] == 0
    with pool.connection(timeout=5) as conn:
        assert conn.info.backend_pid != pid and _scalar(conn, "SELECT 1") == 1


def test_a_closed_pool_refuses_checkouts_and_closes_returned_connections(
    make_pool: Callable[..., PostgresPool],
) -> None:
    pool = make_pool(maxconn=2, minconn=2)
    with pool.connection() as held:
        pool.close()
        assert pool.figures()["idle"] == 0
        with pytest.raises(PoolError, match="database pool 'default' is closed"):
            with pool.connection():
                pass  # pragma: no cover
    assert held.closed != 0
    assert pool.figures()["in_use"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"minconn": -1}, "minconn must be an integer >= 0"),
        ({"maxconn": 0, "minconn": 0}, "maxconn must be an integer >= 1"),
        ({"minconn": 3, "maxconn": 2}, r"minconn \(3\) must not exceed maxconn \(2\)"),
        ({"acquire_timeout": 0}, "acquire_timeout must be a positive number"),
        ({"connect_timeout": -1.0}, "connect_timeout must be a positive number"),
        ({"port": 0}, "port must be an integer >= 1"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"dsn": f"host=x password={SECRET} junk"}, r"invalid dsn 'host=x password=\*\*\* junk'"),
    ],
)
def test_bad_settings_raise_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        PostgresPool(**{"host": "127.0.0.1", "port": 1, **options})
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://app:secret@h:5432/db", "postgresql://app:***@h:5432/db"),
        ("postgres://:secret@h/db", "postgres://:***@h/db"),
        ("postgresql://app@h/db", "postgresql://app@h/db"),
        ("postgresql://app:p@ss@h/db", "postgresql://app:***@h/db"),
        (
            "postgresql://h/db?sslmode=require&password=secret&api_key=k",
            "postgresql://h/db?sslmode=require&password=***&api_key=***",
        ),
        ("host=h password=secret user=u", "host=h password=*** user=u"),
        ("host=h password = 'se cr\\'et' user=u", "host=h password = *** user=u"),
        ("host=h sslpassword=secret", "host=h sslpassword=***"),
        ("https://u:token@example.com/x?token=t&q=1", "https://u:***@example.com/x?token=***&q=1"),
    ],
)
def test_redact_dsn(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted


@pytest.mark.parametrize(
    "target",
    [
        {"dsn": f"postgresql://app:{SECRET}@127.0.0.1:1/db"},
        {"dsn": f"host=127.0.0.1 port=1 dbname=db user=app password={SECRET}"},
        {"host": "127.0.0.1", "port": 1, "user": "app", "password": SECRET},
    ],
)
def test_a_failed_connect_names_the_pool_and_never_the_password(
    target: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PoolError) as raised:
        PostgresPool("reports", **target, connect_timeout=2)
    error = raised.value
    assert str(error).startswith("database pool 'reports': cannot connect to postgresql://app@127.0.0.1:1/")
    assert "Connection refused" in str(error)
    assert error.__suppress_context__ and error.__cause__ is None
    shown = [str(error), repr(error), str(error.__context__), caplog.text]
    assert not [text for text in shown if SECRET in text]
    assert "postgresql://app@127.0.0.1:1/" in caplog.text  # the creation was logged, redacted


def test_a_password_never_shows_in_description_figures_or_logs(
    make_pool: Callable[..., PostgresPool], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = make_pool(password=SECRET)  # trust authentication ignores it
    with pool.connection() as conn:
        assert _scalar(conn, "SELECT 1") == 1
    assert pool.description == "postgresql://postgres@127.0.0.1:5432/test"
    assert SECRET not in repr(pool) + str(pool.figures()) + caplog.text
    assert "postgresql://postgres@127.0.0.1:5432/test" in caplog.text


def test_missing_settings_come_from_the_pg_environment(make_pool: Callable[..., PostgresPool]) -> None:
    env = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGDATABASE": "test", "PGUSER": "postgres"}
    pool = make_pool(host=None, port=None, database=None, user=None, env=env)
    assert pool.description == "postgresql://postgres@127.0.0.1:5432/test"
    with pool.connection() as conn:
        assert _scalar(conn, "SELECT current_database()") == "test"
    # explicit values beat the environment
    explicit = PostgresPool(minconn=0, host="db.example", env=env)
    assert explicit.description == "postgresql://postgres@db.example:5432/test"


def test_figures_fields(make_pool: Callable[..., PostgresPool]) -> None:
    pool = make_pool(minconn=1, maxconn=3)
    with pool.connection():
        figures = pool.figures()
    assert set(figures) == {
        "kind", "target", "maxconn", "minconn", "in_use", "idle", "waiting", "opened", "replaced",
        "waits", "wait_time_total", "wait_time_max", "timeouts", "errors", "checkouts", "closed",
    }
    assert figures["kind"] == "postgres" and figures["target"] == pool.description
    assert pool.acquire_timeout == 30.0
    assert (figures["minconn"], figures["maxconn"], figures["in_use"], figures["idle"]) == (1, 3, 1, 0)


def test_connection_pools_names_replaces_and_refuses_unknown_names() -> None:
    require_postgres()
    pools = ConnectionPools(env={"PGUSER": "postgres"})
    try:
        first = pools.init_postgres_pool(host="127.0.0.1", database="test", minconn=1, maxconn=2)
        assert pools.postgres() is first and pools.names() == ["default"]
        with first.connection() as held:
            second = pools.init_postgres_pool(host="127.0.0.1", database="test", minconn=0, maxconn=1)
            assert pools.postgres() is second
            assert held.closed == 0  # a job in flight is not disturbed
        assert held.closed != 0  # ... but its connection is closed when it comes back
        with pytest.raises(PoolError, match=r"no database pool named 'x'; create it with "
                                            r"connection_pool.init_postgres_pool\(name='x', ...\)"):
            pools.postgres("x")
        figures = pools.figures()
        assert figures["http"] is None and list(figures["postgres"]) == ["default"]
    finally:
        pools.close()
    assert pools.names() == []


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    ports: list[int]
    failures_left: int
    entered: threading.Event
    release: threading.Event


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.ports.append(self.client_address[1])
        if self.path == "/flaky" and self.server.failures_left > 0:
            self.server.failures_left -= 1
            self._reply(503, b"busy")
        elif self.path == "/slow":
            self.server.entered.set()
            self._reply(200 if self.server.release.wait(5) else 500, b"slow")
        elif self.path == "/retry-after" and self.server.failures_left > 0:
            self.server.failures_left -= 1
            self._reply(503, b"later", {"Retry-After": "3600"})
        elif self.path.startswith("/redirect?to="):
            self._reply(302, b"", {"Location": urllib.parse.unquote(self.path.split("=", 1)[1])})
        elif self.path.startswith("/bad-header"):  # a header line without a colon: urllib3 warns
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nno colon here\r\n\r\nok")
        elif self.path == "/headers":
            self._reply(200, json.dumps({k.lower(): v for k, v in self.headers.items()}).encode())
        else:
            self._reply(200, b"ok")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.ports, server.failures_left = [], 0
    server.entered, server.release = threading.Event(), threading.Event()
    # A short poll interval: shutdown() waits for serve_forever's next look at its flag.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def make_http() -> Iterator[Callable[..., HttpPool]]:
    pools: list[HttpPool] = []

    def make(**options: Any) -> HttpPool:
        pools.append(HttpPool(**options))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_a_get_through_the_pool(server: _Server, make_http: Callable[..., HttpPool]) -> None:
    pool = make_http()
    response = pool.request("GET", _url(server, "/ok"), preload_content=True)
    assert (response.status, response.data) == (200, b"ok")
    figures = pool.figures()
    assert (figures["requests"], figures["hosts"], figures["idle"], figures["in_use"]) == (1, 1, 1, 0)
    assert figures["kind"] == "http" and figures["errors"] == figures["retries"] == 0


def test_a_503_is_retried_and_the_200_returned(server: _Server, make_http: Callable[..., HttpPool]) -> None:
    pool = make_http(backoff_factor=0.01)
    server.failures_left = 1
    response = pool.request("GET", _url(server, "/flaky"), preload_content=True)
    assert response.status == 200
    assert len(server.ports) == 2 and pool.figures()["retries"] == 1


def test_the_last_503_is_returned_not_raised(server: _Server, make_http: Callable[..., HttpPool]) -> None:
    pool = make_http(backoff_factor=0.01, retries=2)
    server.failures_left = 10
    response = pool.request("GET", _url(server, "/flaky"), preload_content=True)
    assert response.status == 503
    assert len(server.ports) == 3 and pool.figures()["retries"] == 2


def test_sequential_requests_reuse_one_connection(server: _Server, make_http: Callable[..., HttpPool]) -> None:
    pool = make_http()
    for _ in range(3):
        response = pool.request("GET", _url(server, "/ok"))
        assert response.read() == b"ok"
        response.release_conn()
    assert len(server.ports) == 3 and len(set(server.ports)) == 1


def test_a_full_host_pool_makes_the_next_request_wait(server: _Server, make_http: Callable[..., HttpPool]) -> None:
    pool = make_http(maxsize=1, block=True)
    statuses: list[int] = []

    def get(path: str) -> None:
        statuses.append(pool.request("GET", _url(server, path), preload_content=True).status)

    slow = threading.Thread(target=get, args=("/slow",))
    slow.start()
    assert server.entered.wait(5)  # the only connection is busy
    fast = threading.Thread(target=get, args=("/ok",))
    fast.start()
    wait_until(lambda: pool.figures()["waiting"] == 1, timeout=5)
    assert pool.figures()["in_use"] == 1
    server.release.set()
    slow.join(5)
    fast.join(5)
    assert statuses == [200, 200]
    assert len(set(server.ports)) == 1  # one connection served both
    figures = pool.figures()
    assert figures["waits"] >= 1 and figures["wait_time_max"] > 0 and figures["waiting"] == 0


def test_a_refused_connection_is_raised_and_counted() -> None:
    pool = HttpPool(retries=0, connect_timeout=2)
    try:
        with pytest.raises(urllib3.exceptions.MaxRetryError, match=r"^HTTPConnectionPool\(host='127.0.0.1', port=1\)"):
            pool.request("GET", "http://127.0.0.1:1/")
        with pytest.raises(urllib3.exceptions.NewConnectionError):
            pool.request("GET", "http://127.0.0.1:1/", retries=False)
        figures = pool.figures()
        assert (figures["requests"], figures["errors"]) == (2, 2)
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"maxsize": 0}, "maxsize must be an integer >= 1"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"read_timeout": 0}, "read_timeout must be a positive number"),
        ({"backoff_factor": -0.1}, "backoff_factor must be a number >= 0"),
    ],
)
def test_bad_http_settings_raise_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HttpPool(**options)


def test_connection_pools_make_the_http_pool_on_first_use_and_replace_it(server: _Server) -> None:
    pools = ConnectionPools()
    try:
        assert pools.figures()["http"] is None
        first = pools.http
        assert pools.http is first
        assert first.request("GET", _url(server, "/ok"), preload_content=True).status == 200
        second = pools.init_http_pool(maxsize=2)
        assert pools.http is second and second.maxsize == 2
        assert first.figures()["idle"] == 0  # the replaced pool was closed
        assert pools.figures()["http"]["requests"] == 0
    finally:
        pools.close()


def test_a_long_retry_after_is_capped(server: _Server, make_http: Callable[..., HttpPool],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.pools import http as http_module

    monkeypatch.setattr(http_module._Retry, "RETRY_AFTER_CAP", 0.01)  # the real cap (10 s) is too long to wait for
    pool = make_http(backoff_factor=0.01)
    server.failures_left = 1
    response = pool.request("GET", _url(server, "/retry-after"), preload_content=True)
    assert response.status == 200 and pool.figures()["retries"] == 1  # it waited 0.01 s, not an hour
    assert http_module._Retry().get_retry_after(response) is None


def test_headers_given_to_a_request_do_not_follow_a_redirect_to_another_host(
    server: _Server, make_http: Callable[..., HttpPool]
) -> None:
    pool = make_http()
    port = server.server_address[1]
    same = urllib.parse.quote(f"http://127.0.0.1:{port}/headers", safe="")
    other = urllib.parse.quote(f"http://localhost:{port}/headers", safe="")  # same server, another host name
    key = {"X-Api-Key": "k3y"}
    kept = pool.request("GET", _url(server, f"/redirect?to={same}"), headers=key, preload_content=True)
    assert json.loads(kept.data)["x-api-key"] == "k3y"
    dropped = pool.request("GET", _url(server, f"/redirect?to={other}"), headers=key, preload_content=True)
    assert dropped.status == 200 and "x-api-key" not in json.loads(dropped.data)


def test_urllib3_logs_never_show_request_paths_or_queries(
    server: _Server, make_http: Callable[..., HttpPool], caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_http(backoff_factor=0.01)
    server.failures_left = 1
    with caplog.at_level(logging.DEBUG, logger="urllib3"):
        response = pool.request("GET", _url(server, "/flaky?token=s3cr3t"), preload_content=True)
    assert response.status in (200, 503)
    assert caplog.records, "urllib3 logged nothing: the test would prove nothing"
    assert "s3cr3t" not in caplog.text and "/flaky" not in caplog.text
    assert "127.0.0.1" in caplog.text  # the host stays, for debugging


def test_urllib3_warning_about_a_malformed_response_does_not_show_the_request_target(
    server: _Server, make_http: Callable[..., HttpPool], caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_http()
    with caplog.at_level(logging.WARNING, logger="urllib3"):
        response = pool.request("GET", _url(server, "/bad-header?token=s3cr3t"), preload_content=True)
    assert response.status == 200
    assert "Failed to parse headers" in caplog.text  # urllib3.connection's own warning
    assert "s3cr3t" not in caplog.text and "/bad-header" not in caplog.text


def test_a_full_host_pool_waits_at_most_the_pool_timeout(server: _Server, make_http: Callable[..., HttpPool]) -> None:
    pool = make_http(maxsize=1, pool_timeout=30)
    held = pool.request("GET", _url(server, "/ok"))  # not released: it keeps the one connection
    with pytest.raises(urllib3.exceptions.EmptyPoolError):
        pool.request("GET", _url(server, "/ok"), pool_timeout=0.2)
    assert pool.figures()["waits"] >= 1
    held.release_conn()
    assert pool.request("GET", _url(server, "/ok"), preload_content=True, pool_timeout=5).status == 200


def test_no_retry_starts_after_the_deadline(server: _Server, make_http: Callable[..., HttpPool]) -> None:
    pool = make_http(backoff_factor=0.01, retries=5)
    server.failures_left = 10  # /retry-after answers 503 with Retry-After: 3600 (capped at 10 s)
    response = pool.request("GET", _url(server, "/retry-after"), preload_content=True,
                            deadline=time.monotonic() + 0.2)
    assert response.status == 503
    assert len(server.ports) == 2  # the first try, one retry after a wait cut to the deadline; no more
