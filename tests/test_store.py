"""The job store: the same behaviour from MemoryStore and SqliteStore, plus what
only the file can do (reopen, survive kill -9, reject a corrupt file)."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.errors import ActorRuntimeError, StoreError
from runtime.store import (
    INTERRUPTED_ERROR,
    JobRecord,
    JobState,
    JobStore,
    MemoryStore,
    SqliteStore,
    recover,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    made: JobStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "jobs")
    yield made
    made.close()


def job(script: str = "s", priority: int = 1, **arguments: object) -> JobRecord:
    return JobRecord.new(script, arguments, priority=priority)


def test_job_state_finished() -> None:
    assert {s for s in JobState if s.finished} == {
        JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
    }
    assert JobState("retrying") is JobState.RETRYING


def test_new_record_defaults() -> None:
    record = job()
    assert len(record.id) == 32 and int(record.id, 16) >= 0
    assert record.state is JobState.QUEUED and record.seq == 0 and record.attempts == []
    assert record.updated_at == record.created_at > 0
    assert JobRecord.from_dict(record.to_dict()) == record
    assert record.to_dict()["state"] == "queued"
    assert tuple(record.to_dict()) == JobRecord.__slots__  # every field, none forgotten


def test_add_get_round_trip_keeps_json_types(store: JobStore) -> None:
    arguments = {
        "int": 7, "big": 2**70, "float": 0.1, "neg": -1.5e-300, "true": True, "none": None,
        "text": "héllo ✓ \x00", "list": [1, "2", [3.0, False]], "nested": {"a": {"b": []}},
    }
    record = JobRecord.new("script-1", arguments, priority=0, max_retries=3)
    record.progress = {"fraction": 0.25, "message": "a quarter"}
    store.add(record)
    got = store.get(record.id)
    assert got == record and got is not record
    assert type(got.arguments["int"]) is int and type(got.arguments["float"]) is float
    assert type(got.arguments["true"]) is bool and got.state is JobState.QUEUED
    assert store.get("no-such-job") is None


def test_add_assigns_seq_in_submission_order(store: JobStore) -> None:
    records = [job() for _ in range(3)]
    for record in records:
        store.add(record)
    assert [r.seq for r in records] == [1, 2, 3]
    explicit = job()
    explicit.seq = 10
    store.add(explicit)
    store.add(later := job())
    assert later.seq == 11


def test_store_keeps_a_copy_not_the_object(store: JobStore) -> None:
    record = job(x=1)
    store.add(record)
    record.arguments["x"] = 2
    record.state = JobState.FAILED
    got = store.get(record.id)
    assert got is not None and got.arguments == {"x": 1} and got.state is JobState.QUEUED


def test_update_writes_whole_record(store: JobStore) -> None:
    record = job()
    store.add(record)
    record.state = JobState.SUCCEEDED
    record.attempts.append({"number": 1, "started_at": 1.0, "finished_at": 2.0,
                            "error": None, "status": "succeeded"})
    record.result = {"answer": 42}
    record.updated_at = 3.0
    store.update(record)
    assert store.get(record.id) == record


def test_bad_writes_raise_store_error(store: JobStore) -> None:
    record = job()
    store.add(record)
    with pytest.raises(StoreError, match="already exists|UNIQUE"):
        store.add(record)
    with pytest.raises(StoreError, match="unknown job"):
        store.update(job())
    with pytest.raises(StoreError, match="not JSON"):
        store.add(job(when=object()))
    with pytest.raises(StoreError, match="not JSON"):
        store.add(job(x=float("nan")))
    assert issubclass(StoreError, ActorRuntimeError)


def test_batches_are_all_or_nothing(store: JobStore) -> None:
    first, second = job(), job()
    store.add_many([first, second])
    assert store.counts()["queued"] == 2
    with pytest.raises(StoreError):
        store.add_many([job(), first])  # second one clashes: the first must not stay
    assert sum(store.counts().values()) == 2
    first.state = second.state = JobState.CANCELLED
    with pytest.raises(StoreError, match="unknown job"):
        store.update_many([first, job()])
    assert store.get(first.id).state is JobState.QUEUED  # type: ignore[union-attr]
    store.update_many([first, second])
    assert store.counts()["cancelled"] == 2


def test_unfinished_orders_by_priority_then_seq(store: JobStore) -> None:
    low, normal_a, high, normal_b, done = job("low", 2), job("na"), job("hi", 0), job("nb"), job()
    done.state = JobState.SUCCEEDED
    retrying, running = job("retry", 2), job("run", 0)
    retrying.state, running.state = JobState.RETRYING, JobState.RUNNING
    for record in (low, normal_a, high, done, retrying, normal_b, running):
        store.add(record)
    order = [r.script_id for r in store.unfinished()]
    assert order == ["hi", "run", "na", "nb", "low", "retry"]


def test_counts_by_state(store: JobStore) -> None:
    assert store.counts() == {s.value: 0 for s in JobState}
    states = [JobState.QUEUED] * 3 + [JobState.FAILED, JobState.RUNNING]
    records = [job() for _ in states]
    for record, state in zip(records, states):
        record.state = state
    store.add_many(records)
    assert store.counts() == {**{s.value: 0 for s in JobState}, "queued": 3, "failed": 1,
                              "running": 1}


def test_recover_marks_running_as_retrying(store: JobStore) -> None:
    open_attempt, no_attempt, queued, finished = job("open"), job("bare"), job("q", 0), job()
    open_attempt.state = no_attempt.state = JobState.RUNNING
    open_attempt.attempts = [
        {"number": 1, "started_at": 1.0, "finished_at": 2.0, "error": "boom", "status": "failed"},
        {"number": 2, "started_at": 3.0, "finished_at": None, "error": None, "status": "running"},
    ]
    open_attempt.progress = {"fraction": 0.5, "message": "half"}
    finished.state = JobState.SUCCEEDED
    store.add_many([open_attempt, no_attempt, queued, finished])

    pending = recover(store)

    assert [r.script_id for r in pending] == ["q", "open", "bare"]
    again = store.get(open_attempt.id)
    assert again is not None and again.state is JobState.RETRYING and again.progress is None
    assert len(again.attempts) == 2 and again.attempts[0]["status"] == "failed"
    last = again.attempts[1]
    assert last["status"] == "interrupted" and last["error"] == INTERRUPTED_ERROR
    assert last["finished_at"] is not None and last["started_at"] == 3.0
    bare = store.get(no_attempt.id)
    assert bare is not None and bare.state is JobState.RETRYING
    assert [a["number"] for a in bare.attempts] == [1]
    assert bare.attempts[0]["status"] == "interrupted"
    assert store.get(queued.id) == queued and store.get(finished.id) == finished
    assert pending[1] == again
    assert recover(store) == pending  # idempotent: nothing is running any more


def test_closed_store_refuses(store: JobStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("x")


# ---- SqliteStore only ------------------------------------------------------------


def test_persists_across_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    first = SqliteStore(folder)
    records = [job(n=i) for i in range(5)]
    first.add_many(records)
    records[0].state = JobState.RUNNING
    first.update(records[0])
    first.close()
    assert (folder / "jobs.sqlite3").is_file()

    second = SqliteStore(folder)
    try:
        assert [second.get(r.id) for r in records] == records
        second.add(later := job())
        assert later.seq == 6  # seq continues after the highest stored one
    finally:
        second.close()


def test_a_full_disk_is_named_and_the_store_works_once_there_is_room(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    try:
        conn = store._conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk is all but full
        big = [job(text="x" * 4000) for _ in range(20)]
        with pytest.raises(StoreError, match="database or disk is full"):  # not a failed ROLLBACK's message
            store.add_many(big)
        assert not conn.in_transaction
        conn.execute("PRAGMA max_page_count = 1073741823")
        store.add_many(big)
        assert [store.get(r.id) for r in big] == big
    finally:
        store.close()
    reopened = SqliteStore(tmp_path)  # committed, not left in an open transaction
    try:
        assert reopened.get(big[-1].id) == big[-1]
    finally:
        reopened.close()


def test_survives_kill_9(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from runtime.store import JobRecord, SqliteStore
        store = SqliteStore(Path({str(tmp_path)!r}))
        for i in range(300):
            store.add(JobRecord.new("crash", {{"i": i}}))
        print("done", flush=True)
        sys.stdin.readline()
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "child did not finish adding in 60 s"
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line == "done\n", child.stderr.read()  # type: ignore[union-attr]
        assert child.poll() is None  # still alive, connection open, nothing checkpointed
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    # The commits still sit in the WAL (never checkpointed): reopening must replay it.
    assert (tmp_path / "jobs.sqlite3-wal").stat().st_size > 0

    reopened = SqliteStore(tmp_path)
    try:
        pending = reopened.unfinished()
        assert [r.arguments["i"] for r in pending] == list(range(300))
        assert reopened.counts()["queued"] == 300
    finally:
        reopened.close()


@pytest.mark.parametrize(
    "content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 200]
)
def test_corrupt_file_raises_store_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "jobs.sqlite3").write_bytes(content)
    with pytest.raises(StoreError, match="jobs.sqlite3") as caught:
        SqliteStore(tmp_path)
    assert "corrupt" in str(caught.value)


def test_foreign_database_raises_store_error(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    conn.execute("CREATE TABLE jobs (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a job store"):
        SqliteStore(tmp_path)


def test_unopenable_folder_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open job store"):
        SqliteStore(blocker / "jobs")
    (tmp_path / "dir" / "jobs.sqlite3").mkdir(parents=True)
    with pytest.raises(StoreError, match="cannot open job store"):
        SqliteStore(tmp_path / "dir")



@pytest.mark.parametrize("count", [1, 3, 300])
def test_write_adds_and_overwrites_in_one_call(tmp_path: Path, count: int) -> None:
    for store in (SqliteStore(tmp_path / f"s{count}"), MemoryStore()):
        known = [JobRecord.new("s", {"n": n}) for n in range(count)]
        store.add_many(known)
        for record in known:
            record.state = JobState.SUCCEEDED
        fresh = [JobRecord.new("s", {"n": -n}) for n in range(count)]
        store.write(fresh, known)
        counts = store.counts()
        assert (counts["succeeded"], counts["queued"]) == (count, count), store
        assert all(r.seq for r in fresh) and len({r.seq for r in known + fresh}) == 2 * count
        stored = store.get(fresh[-1].id)
        assert stored is not None and stored.arguments == {"n": -(count - 1)}
        store.close()
