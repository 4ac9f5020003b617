"""SqlExecution against the real PostgreSQL at 127.0.0.1:5432, database ``test`` (no mocks)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import PoolError
from runtime.executors import ExecutionResult, validate_arguments
from runtime.pools import ConnectionPools
from runtime.registry import Script, parse_registry
from runtime.sql_executor import SqlExecution
from runtime.testing import wait_until

psycopg2 = pytest.importorskip("psycopg2")

TARGET: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "database": "test", "user": "postgres"}
SECRET = "s3cr3t-value"


@pytest.fixture(scope="module")
def pools() -> Iterator[ConnectionPools]:
    pools = ConnectionPools(env={})
    try:
        pools.init_postgres_pool(**TARGET, minconn=1, maxconn=4, connect_timeout=2)
    except PoolError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {e}")
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {e}")
    yield pools
    pools.close()


@pytest.fixture
def table(pools: ConnectionPools, names_table: Callable[[str, list[str]], str]) -> str:
    return names_table("sqlexec", ["first"])


def _count(admin: Any, table: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def _script(query: str, **entry: Any) -> Script:
    entry = {"id": "q", "kind": "sql", "query": query, **entry}
    return parse_registry(Path("/srv/registry.json"), json.dumps({"scripts": [entry]}))["q"]


def _run(script: Script, pools: ConnectionPools, arguments: dict[str, Any] | None = None,
         **kwargs: Any) -> ExecutionResult:
    return SqlExecution(script, validate_arguments(script, arguments), pools, **kwargs).run()


def _in_thread(execution: SqlExecution) -> tuple[threading.Thread, list[ExecutionResult]]:
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    return runner, results


def test_parameters_are_bound_and_progress_is_reported(pools: ConnectionPools) -> None:
    events: list[tuple[float, str]] = []
    script = _script("SELECT %(a)s::int + 1 AS b, %(s)s AS s, %(o)s::jsonb -> 'k' AS k, 7 %% 3 AS m, %(none)s AS z",
                     arguments={"a": {"type": "integer"}, "s": {"type": "string"}, "o": {"type": "object"},
                                "none": {"type": "string"}})
    result = _run(script, pools, {"a": 41, "s": "it's", "o": {"k": [1]}}, on_progress=lambda f, m: events.append((f, m)))
    assert result.status == "succeeded", result.error
    data = result.to_dict()
    assert data["rows"] == [{"b": 42, "s": "it's", "k": [1], "m": 1, "z": None}]
    assert data["rowcount"] == 1 and data["rows_truncated"] is False and "retryable" not in data
    assert events == [(0.0, "waiting for a connection"), (0.05, "query sent"), (1.0, "1 rows")]


def test_an_injection_attempt_through_an_argument_is_inert(pools: ConnectionPools, admin: Any, table: str) -> None:
    attack = f"x'; DROP TABLE {table}; --"
    args = {"name": {"type": "string", "required": True}}
    insert = _script(f"INSERT INTO {table} (name) VALUES (%(name)s)", readonly=False, arguments=args)
    assert _run(insert, pools, {"name": attack}).status == "succeeded"
    select = _script(f"SELECT name FROM {table} WHERE name = %(name)s", arguments=args)
    result = _run(select, pools, {"name": attack})
    assert result.extra["rows"] == [{"name": attack}]
    assert _count(admin, table) == 2  # the table is still there, with the value stored literally


def test_a_write_in_a_read_only_entry_is_refused_and_not_retryable(pools: ConnectionPools, admin: Any,
                                                                    table: str) -> None:
    result = _run(_script(f"DELETE FROM {table}"), pools)
    assert result.status == "failed" and result.extra["retryable"] is False
    assert result.error == ("sql script 'q' (pool 'default'): ReadOnlySqlTransaction: "
                            "cannot execute DELETE in a read-only transaction")
    assert _count(admin, table) == 1


def test_a_writable_entry_commits_and_read_only_does_not_stick_to_the_connection(admin: Any, table: str) -> None:
    pools = ConnectionPools(env={})
    pools.init_postgres_pool(**TARGET, minconn=1, maxconn=1)  # one connection: both runs share it
    try:
        show = _run(_script("SHOW transaction_read_only"), pools)
        assert show.extra["rows"] == [{"transaction_read_only": "on"}]
        result = _run(_script(f"UPDATE {table} SET name = 'second'", readonly=False), pools)
        assert result.status == "succeeded" and result.extra["rowcount"] == 1 and result.extra["rows"] == []
        assert _run(_script("SHOW transaction_read_only"), pools).extra["rows"] == [{"transaction_read_only": "on"}]
    finally:
        pools.close()
    with admin.cursor() as cur:
        cur.execute(f"SELECT name FROM {table}")
        assert cur.fetchall() == [("second",)]


def test_rows_are_capped_at_max_rows(pools: ConnectionPools) -> None:
    result = _run(_script("SELECT g FROM generate_series(1, 10) AS g", max_rows=3), pools)
    assert result.extra["rows"] == [{"g": 1}, {"g": 2}, {"g": 3}]
    assert result.extra["rows_truncated"] is True and result.extra["rowcount"] == 10


def test_values_are_json_ready(pools: ConnectionPools) -> None:
    query = """SELECT 12.50::numeric AS n, '2024-01-02 03:04:05.5+00'::timestamptz AS ts, '2024-01-02'::date AS d,
                      '13:14:15'::time AS t, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
                      '\\x00ff10'::bytea AS b, 'NaN'::float8 AS nan, 1.5::float8 AS f, interval '90 seconds' AS i,
                      '{"a": [1, 2.5]}'::jsonb AS j, ARRAY[1, 2] AS arr, true AS yes"""
    result = _run(_script(query), pools)
    assert result.status == "succeeded", result.error
    (row,) = result.extra["rows"]
    # in the session's time zone, with its offset: the same instant whatever the server's TimeZone
    assert datetime.fromisoformat(row.pop("ts")) == datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)
    assert row == {"n": "12.50", "d": "2024-01-02", "t": "13:14:15",
                   "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "b": "AP8Q", "nan": "NaN", "f": 1.5, "i": 90.0,
                   "j": {"a": [1, 2.5]}, "arr": [1, 2], "yes": True}
    json.dumps(result.to_dict(), allow_nan=False)


def test_a_query_past_the_timeout_times_out(pools: ConnectionPools) -> None:
    result = _run(_script("SELECT pg_sleep(5)", timeout=0.3), pools)
    assert result.status == "timeout" and result.duration < 2
    assert result.error == "sql script 'q' (pool 'default'): timed out after 0.3s"


def test_cancel_of_a_long_query_returns_cancelled_quickly(pools: ConnectionPools) -> None:
    sent = threading.Event()
    execution = SqlExecution(_script("SELECT pg_sleep(30)"), {}, pools,
                             on_progress=lambda f, m: sent.set() if m == "query sent" else None)
    runner, results = _in_thread(execution)
    assert sent.wait(5)
    execution.cancel()
    runner.join(3)
    assert not runner.is_alive()
    assert results[0].status == "cancelled" and results[0].duration < 3
    assert _run(_script("SELECT 1 AS one"), pools).extra["rows"] == [{"one": 1}]


def test_cancel_before_run_touches_nothing(pools: ConnectionPools) -> None:
    execution = SqlExecution(_script("SELECT 1"), {}, pools)
    execution.cancel()
    assert execution.run().status == "cancelled"


def test_a_killed_connection_fails_retryable_and_the_pool_recovers(pools: ConnectionPools, admin: Any) -> None:
    marker = f"victim_{uuid.uuid4().hex[:12]}"
    runner, results = _in_thread(SqlExecution(_script(f"SELECT pg_sleep(30) AS {marker}"), {}, pools))

    def victim() -> Any:
        with admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                        (f"%{marker}%",))
            row = cur.fetchone()
        return row and row[0]

    pid = wait_until(victim)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    runner.join(5)
    assert not runner.is_alive()
    result = results[0]
    assert result.status == "failed" and "retryable" not in result.extra
    assert result.error is not None and result.error.startswith("sql script 'q' (pool 'default'): ")
    assert _run(_script("SELECT 2 AS two"), pools).extra["rows"] == [{"two": 2}]


def test_a_busy_pool_fails_after_its_own_wait_or_times_out_at_the_deadline(pools: ConnectionPools) -> None:
    tiny = pools.init_postgres_pool(**TARGET, name="tiny", minconn=0, maxconn=1, acquire_timeout=0.2)
    with tiny.connection():  # the pool's only connection, held
        busy = _run(_script("SELECT 1", pool="tiny", timeout=5), pools)
        assert busy.status == "failed" and "retryable" not in busy.extra
        assert busy.error == "sql script 'q' (pool 'tiny'): database pool 'tiny': its only connection stayed in use for 0.2 s"
        late = _run(_script("SELECT 1", pool="tiny", timeout=0.1), pools)
        assert late.status == "timeout"
        assert late.error == "sql script 'q' (pool 'tiny'): no connection free within 0.1s"
    assert _run(_script("SELECT 1 AS one", pool="tiny"), pools).extra["rows"] == [{"one": 1}]


def test_a_cancel_ends_a_wait_for_a_busy_pools_connection_at_once(pools: ConnectionPools) -> None:
    slow = pools.init_postgres_pool(**TARGET, name="slow", minconn=0, maxconn=1, acquire_timeout=30)
    with slow.connection():  # the pool's only connection, held
        execution = SqlExecution(_script("SELECT 1", pool="slow", timeout=60), {}, pools)
        runner, results = _in_thread(execution)
        wait_until(lambda: slow.figures()["waiting"] == 1, message="the run is not waiting in the pool's line")
        execution.cancel()
        runner.join(5)  # not the 30 s of the pool's wait
        assert not runner.is_alive()
        assert results[0].status == "cancelled"
        assert slow.figures()["waiting"] == 0 and slow.figures()["timeouts"] == 0
    assert _run(_script("SELECT 1 AS one", pool="slow"), pools).extra["rows"] == [{"one": 1}]


def test_a_missing_pool_is_a_clear_failure_worth_a_retry(pools: ConnectionPools) -> None:
    result = _run(_script("SELECT 1", pool="reports"), pools)
    assert result.status == "failed" and "retryable" not in result.extra  # the pool may exist by the retry
    assert result.error is not None
    assert result.error.startswith("sql script 'q' (pool 'reports'): no database pool named 'reports'")


def test_errors_keep_the_primary_line_without_values(pools: ConnectionPools) -> None:
    script = _script("SELECT %(a)s::int", arguments={"a": {"type": "string", "required": True}})
    result = _run(script, pools, {"a": SECRET})
    assert result.status == "failed" and result.extra["retryable"] is False
    assert result.error == ("sql script 'q' (pool 'default'): InvalidTextRepresentation: "
                            'invalid input syntax for type integer: "…"')
    missing = _run(_script("SELECT * FROM no_such_table_here"), pools)
    assert missing.error is not None and missing.error.endswith('UndefinedTable: relation "no_such_table_here" does not exist')
    assert missing.extra["retryable"] is False


def test_wrong_kind_and_second_run_are_the_callers_mistakes(pools: ConnectionPools) -> None:
    with pytest.raises(ValueError, match="needs an sql script"):
        SqlExecution(Script(id="c", command=("true",)), {}, pools)
    execution = SqlExecution(_script("SELECT 1"), {}, pools)
    assert execution.run().status == "succeeded"
    with pytest.raises(RuntimeError):
        execution.run()


def test_cancel_is_sent_as_pg_cancel_backend_from_a_thread_of_its_own(
    pools: ConnectionPools, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not connection.cancel(): psycopg2 holds the GIL while libpq waits for the server's
    # answer to it, so an unreachable server would freeze the process. The caller (the
    # scheduler's thread) only sets a flag.
    script = _script("SELECT pg_sleep(30)")
    execution = SqlExecution(script, validate_arguments(script, {}), pools)
    runner, results = _in_thread(execution)
    wait_until(lambda: execution._connection is not None, message="the query never started")
    requests: list[int] = []
    real = type(pools.postgres()).cancel_backend

    def counted(pool: Any, pid: int, timeout: float = 5.0) -> bool:
        requests.append(pid)
        return real(pool, pid, timeout)

    monkeypatch.setattr(type(pools.postgres()), "cancel_backend", counted)
    execution.cancel()
    runner.join(10)
    assert results[0].status == "cancelled"
    assert requests and all(pid == requests[0] for pid in requests)
