"""``http``, ``sql`` and process-isolated ``python`` scripts as jobs, through the whole runtime,
against a real HTTP server on 127.0.0.1 and the real PostgreSQL at 127.0.0.1:5432 (db ``test``)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime
from runtime.errors import PoolError
from runtime.jobs_api import ToolExecutionService
from runtime.pools import ConnectionPools
from runtime.testing import wait_until, write_registry

psycopg2 = pytest.importorskip("psycopg2")

PG = {"host": "127.0.0.1", "port": 5432, "database": "test", "user": "postgres"}
FAST_RETRY = {"retry_backoff_min": 0.01, "retry_backoff_max": 0.02, "watcher": "polling", "poll_interval": 10**6}


# --- an HTTP server with a few behaviours ----------------------------------------------------


class Behaviour:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.arrived = threading.Event()
        self.release = threading.Event()


def _server(behaviour: Behaviour) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?")[0]
            behaviour.calls[path] = behaviour.calls.get(path, 0) + 1
            status, body = 200, json.dumps({"path": self.path}).encode()
            if path.startswith("/flaky") and behaviour.calls[path] == 1:
                status, body = 503, b"busy"
            elif path == "/deep":  # JSON nested 600 deep: valid, and more than a job's result may hold
                body = b"[" * 600 + b"]" * 600
            elif path == "/deep100":  # as deep as a result may be
                body = b"[" * 100 + b"]" * 100
            elif path == "/slow":
                behaviour.arrived.set()
                behaviour.release.wait(10)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a request aborted by a timeout or a cancel

    return Quiet(("127.0.0.1", 0), Handler)


@pytest.fixture
def http() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    httpd = _server(behaviour)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    behaviour.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _http_registry(tmp_path: Path, base: str) -> Path:
    return write_registry(tmp_path / "registry.json", [
        {"id": "item", "kind": "http", "url": base + "/items/{id}", "timeout": 5,
         "arguments": {"id": {"type": "string", "required": True}}},
        {"id": "flaky", "kind": "http", "url": base + "/flaky/{n}", "timeout": 5,
         "arguments": {"n": {"type": "integer", "required": True}}},
        {"id": "slow", "kind": "http", "url": base + "/slow", "timeout": 0.3, "max_retries": 1},
        {"id": "slow_long", "kind": "http", "url": base + "/slow", "timeout": 30},
        {"id": "deep", "kind": "http", "url": base + "/deep", "timeout": 5, "max_retries": 0},
        {"id": "deep100", "kind": "http", "url": base + "/deep100", "timeout": 5, "max_retries": 0},
    ])


def test_an_answer_nested_too_deeply_is_kept_as_text_and_breaks_nothing(
    start_runtime: Callable[..., Runtime], tmp_path: Path, http: tuple[str, Behaviour]
) -> None:
    base, _ = http
    rt = start_runtime(_http_registry(tmp_path, base), **FAST_RETRY)
    scheduler = rt.ref("scheduler").actor_urn
    final = rt.run("deep", timeout=10)  # a waiter: its status is copied for it
    assert final["status"] == "succeeded" and final["result"]["json"] is None  # kept as text only
    assert final["result"]["body"] == "[" * 600 + "]" * 600
    assert rt.status(final["job_id"])["status"] == "succeeded"
    assert rt.ref("scheduler").actor_urn == scheduler and rt.stats_snapshot()["restarts"] == 0
    at_the_limit = rt.run("deep100", timeout=10)  # 100 levels: still a result, parsed
    assert at_the_limit["status"] == "succeeded" and at_the_limit["result"]["json"] is not None


def test_http_jobs_run_through_the_pool_with_progress_and_stats(
    start_runtime: Callable[..., Runtime], tmp_path: Path, http: tuple[str, Behaviour]
) -> None:
    base, behaviour = http
    rt = start_runtime(_http_registry(tmp_path, base), job_concurrency=2, **FAST_RETRY)
    events: list[tuple[float, str]] = []
    final = rt.run("item", {"id": "a b/c"}, timeout=10, callback=lambda _job, f, m: events.append((f, m)))
    assert final["status"] == "succeeded", final
    assert final["result"]["status_code"] == 200
    assert final["result"]["json"] == {"path": "/items/a%20b%2Fc"}
    wait_until(lambda: len(events) >= 2, message="start and end progress not delivered")
    assert events[0][0] == 0.0 and events[-1][0] == 1.0
    # A 503 is retried by the pool inside one attempt.
    flaky = rt.run("flaky", {"n": 1}, timeout=10)
    assert flaky["status"] == "succeeded" and len(flaky["attempts"]) == 1
    assert behaviour.calls["/flaky/1"] == 2
    pools = wait_until(lambda: rt.stats_snapshot()["pools"].get("http"), message="no pool figures in stats")
    assert pools["requests"] >= 2 and pools["retries"] >= 1
    figures = rt.execution_stats("item")
    assert figures["total_executions"] == 1 and figures["failures"] == 0


def test_an_http_timeout_is_retried_then_fails(
    start_runtime: Callable[..., Runtime], tmp_path: Path, http: tuple[str, Behaviour]
) -> None:
    base, _ = http
    rt = start_runtime(_http_registry(tmp_path, base), job_concurrency=1, **FAST_RETRY)
    final = rt.run("slow", timeout=10)
    assert final["status"] == "failed"
    assert [a["status"] for a in final["attempts"]] == ["failed", "failed"]
    assert final["result"]["status"] == "timeout"


def test_cancel_a_running_http_job(
    start_runtime: Callable[..., Runtime], tmp_path: Path, http: tuple[str, Behaviour]
) -> None:
    base, behaviour = http
    rt = start_runtime(_http_registry(tmp_path, base), job_concurrency=1, **FAST_RETRY)
    job = rt.submit("slow_long")
    assert behaviour.arrived.wait(5)
    wait_until(lambda: rt.status(job)["status"] == "running", message="not running")
    assert rt.cancel(job)
    assert rt.wait_job(job, timeout=5)["status"] == "cancelled"
    # The worker is free again as soon as the aborted call returns.
    assert rt.run("item", {"id": "next"}, timeout=5)["status"] == "succeeded"


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def table(names_table: Callable[[str, list[str]], str]) -> str:
    return names_table("jobs", ["alice", "bob"])


def _sql_registry(tmp_path: Path, table: str, marker: str) -> Path:
    name = {"name": {"type": "string", "required": True}}
    return write_registry(tmp_path / "registry.json", [
        {"id": "find", "kind": "sql", "query": f"SELECT id, name FROM {table} WHERE name = %(name)s ORDER BY id",
         "arguments": name},
        {"id": "add", "kind": "sql", "readonly": False, "arguments": name,
         "query": f"INSERT INTO {table} (name) VALUES (%(name)s)"},
        {"id": "sneaky_add", "kind": "sql", "arguments": name, "max_retries": 3,
         "query": f"INSERT INTO {table} (name) VALUES (%(name)s)"},
        {"id": "sleep", "kind": "sql", "timeout": 20, "max_retries": 2,
         "arguments": {"seconds": {"type": "number", "required": True}},
         "query": f"SELECT pg_sleep(%(seconds)s) /* {marker} */, 1 AS one"},
        {"id": "tiny", "kind": "sql", "pool": "tiny", "max_retries": 0, "timeout": 20,
         "arguments": {"seconds": {"type": "number", "required": True}},
         "query": f"SELECT pg_sleep(%(seconds)s) /* {marker} */, 1 AS one"},
        {"id": "elsewhere", "kind": "sql", "pool": "missing", "query": "SELECT 1"},
    ])


def _backend(admin: Any, marker: str) -> int | None:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                    (f"%{marker}%",))
        row = cur.fetchone()
    return None if row is None else int(row[0])


@pytest.fixture
def pg_runtime(start_runtime: Callable[..., Runtime], tmp_path: Path, table: str,
               admin: Any) -> tuple[Runtime, str, str]:
    marker = f"marker-{uuid.uuid4().hex}"
    rt = start_runtime(_sql_registry(tmp_path, table, marker), job_concurrency=2, **FAST_RETRY)
    rt.pools.init_postgres_pool(**PG, minconn=1, maxconn=2)
    rt.pools.init_postgres_pool(**PG, name="tiny", minconn=0, maxconn=1, acquire_timeout=0.3)
    return rt, table, marker


def test_sql_parameters_are_bound_and_an_injection_is_inert(pg_runtime: tuple[Runtime, str, str],
                                                            admin: Any) -> None:
    rt, table, _ = pg_runtime
    assert rt.run("find", {"name": "bob"}, timeout=10)["result"]["rows"] == [{"id": 2, "name": "bob"}]
    evil = f"x'; DROP TABLE {table}; --"
    assert rt.run("add", {"name": evil}, timeout=10)["status"] == "succeeded"
    found = rt.run("find", {"name": evil}, timeout=10)["result"]
    assert found["rows"] == [{"id": 3, "name": evil}] and found["rowcount"] == 1
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone()[0] == 3  # the table is still there, the text stored literally


def test_a_write_in_a_read_only_entry_fails_at_once(pg_runtime: tuple[Runtime, str, str], admin: Any) -> None:
    rt, table, _ = pg_runtime
    final = rt.run("sneaky_add", {"name": "mallory"}, timeout=10)
    assert final["status"] == "failed" and len(final["attempts"]) == 1  # not retried: it cannot succeed
    assert "read-only" in final["error"]
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE name = 'mallory'")
        assert cur.fetchone()[0] == 0


def test_an_exhausted_pool_makes_a_job_wait_then_fail_clearly(pg_runtime: tuple[Runtime, str, str],
                                                              admin: Any) -> None:
    rt, _, marker = pg_runtime
    holder = rt.submit("tiny", {"seconds": 2})
    wait_until(lambda: _backend(admin, marker) is not None, message="the first query never started")
    final = rt.run("tiny", {"seconds": 0}, timeout=10)
    assert final["status"] == "failed"
    assert "pool 'tiny'" in final["error"] and "in use" in final["error"], final["error"]
    assert rt.wait_job(holder, timeout=10)["status"] == "succeeded"
    figures = wait_until(lambda: rt.stats_snapshot()["pools"].get("postgres", {}).get("tiny"),
                         message="no pool figures")
    assert figures["timeouts"] >= 1 and figures["waits"] >= 1


def test_a_killed_connection_is_replaced_and_the_job_succeeds_on_retry(pg_runtime: tuple[Runtime, str, str],
                                                                       admin: Any) -> None:
    rt, _, marker = pg_runtime
    job = rt.submit("sleep", {"seconds": 0.5})
    pid = wait_until(lambda: _backend(admin, marker), message="the query never started")
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    final = rt.wait_job(job, timeout=15)
    assert final["status"] == "succeeded", final
    assert [a["status"] for a in final["attempts"]] == ["failed", "succeeded"]
    assert rt.pools.postgres().figures()["replaced"] >= 1


def test_an_sql_job_for_a_missing_pool_is_refused_at_submit(pg_runtime: tuple[Runtime, str, str]) -> None:
    rt, _, _ = pg_runtime
    before = rt.queue_stats()
    with pytest.raises(PoolError, match="missing"):
        rt.submit("elsewhere")
    after = rt.queue_stats()
    assert (after["queue_size"], after["running_jobs"]) == (before["queue_size"], before["running_jobs"])


def test_the_specification_pool_call_works_on_the_service(tmp_path: Path, table: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "postgres")  # the call names host and database only
    registry = _sql_registry(tmp_path, table, "spec")
    with ToolExecutionService(str(registry), job_storage_path=tmp_path / "jobs", watcher="polling") as tes:
        assert isinstance(tes.connection_pool, ConnectionPools)
        tes.connection_pool.init_postgres_pool(host="127.0.0.1", database="test", minconn=1, maxconn=20)
        result = tes.execute("find", {"name": "alice"}, timeout=10)
        assert result["status"] == "succeeded" and result["result"]["rows"] == [{"id": 1, "name": "alice"}]
        assert tes.get_execution_stats("find")["total_executions"] == 1


# --- python scripts isolated in a process ---------------------------------------------------


def test_process_isolated_python_jobs_run_cancel_and_time_out(start_runtime: Callable[..., Runtime],
                                                              tmp_path: Path) -> None:
    seconds = {"seconds": {"type": "number", "required": True}}
    registry = write_registry(tmp_path / "registry.json", [
        {"id": "add", "kind": "python", "callable": "tests.python_jobs:add", "isolation": "process",
         "arguments": {"a": {"type": "integer", "required": True}, "b": {"type": "integer", "required": True}}},
        {"id": "pid", "kind": "python", "callable": "tests.python_jobs:pid", "isolation": "process"},
        {"id": "sleep", "kind": "python", "callable": "tests.python_jobs:announces_then_sleeps",
         "isolation": "process", "timeout": 30, "arguments": seconds},
        {"id": "sleep_short", "kind": "python", "callable": "tests.python_jobs:announces_then_sleeps",
         "isolation": "process", "timeout": 0.3, "max_retries": 0, "arguments": seconds},
    ])
    rt = start_runtime(registry, job_concurrency=1, **FAST_RETRY)
    assert rt.run("add", {"a": 2, "b": 3}, timeout=20)["result"]["value"] == {"sum": 5}
    host = rt.run("pid", timeout=20)["result"]["value"]
    assert host != os.getpid()  # it ran in another process
    job = rt.submit("sleep", {"seconds": 20})
    wait_until(lambda: (rt.status(job)["progress"] or {}).get("message") == str(host), message="not running")
    assert rt.cancel(job)
    assert rt.wait_job(job, timeout=5)["status"] == "cancelled"
    timed_out = rt.run("sleep_short", {"seconds": 20}, timeout=10)
    assert timed_out["status"] == "failed" and timed_out["result"]["status"] == "timeout"
    fresh = rt.run("pid", timeout=20)["result"]["value"]
    assert fresh not in (host, os.getpid())  # the killed host was replaced


def test_database_url_gives_the_runtime_its_default_pool(start_runtime: Callable[..., Runtime], tmp_path: Path,
                                                         table: str) -> None:
    registry = _sql_registry(tmp_path, table, "env")
    rt = start_runtime(registry, database_url="postgresql://postgres@127.0.0.1:5432/test", **FAST_RETRY)
    assert rt.pools.names() == ["default"]
    assert rt.run("find", {"name": "bob"}, timeout=10)["result"]["rows"] == [{"id": 2, "name": "bob"}]
