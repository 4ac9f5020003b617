"""SchedulerCore and RetryPolicy as plain code: no actors, no threads, a MemoryStore."""

from __future__ import annotations

import random
from typing import Any

import pytest

from runtime.scheduling import RetryPolicy, SchedulerCore
from runtime.start_marks import StartMark, apply_marks
from runtime.store import INTERRUPTED_ERROR, JobRecord, JobState, MemoryStore, recover


class Wall:
    """Wall-clock time that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Flushed:
    """The core's store as its readers see it once the core has flushed its pending writes."""

    def __init__(self, store: MemoryStore) -> None:
        self.raw = store
        self.core: SchedulerCore | None = None

    def __getattr__(self, name: str) -> Any:
        if name in ("get", "counts", "unfinished") and self.core is not None:
            self.core.flush()
        return getattr(self.raw, name)


def make_core(max_retries: int = 3) -> tuple[SchedulerCore, Any, Wall]:
    store = Flushed(MemoryStore())
    wall = Wall()
    core = SchedulerCore(store.raw, wall, max_retries)
    store.core = core
    core.policies["s"] = RetryPolicy(1.0, 8.0, rng=lambda: 1.0)
    return core, store, wall


def submit(core: SchedulerCore, priority: int = 1, max_retries: int | None = None, tag: str = "") -> str:
    record = JobRecord.new("s", {"tag": tag}, priority=priority, max_retries=max_retries)
    core.submit(record)
    return record.id


def run_order(core: SchedulerCore, ids: list[str]) -> list[str]:
    """Run everything queued one at a time on one worker; the ids in start order."""
    order = []
    core.worker_ready("w0")
    while True:
        starts = core.dispatch()
        if not starts:
            break
        (start,) = starts
        order.append(start.record.id)
        assert core.finished(start.record.id, start.attempt, {"status": "succeeded"}) is not None
    return [ids.index(job_id) for job_id in order]


# --- RetryPolicy ------------------------------------------------------------------------


def test_retry_policy_doubles_from_the_minimum_up_to_the_cap() -> None:
    policy = RetryPolicy(1.0, 10.0, rng=lambda: 1.0)
    assert [policy.delay(k) for k in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(10_000) == 10.0  # a huge retry count neither overflows nor exceeds the cap


def test_retry_policy_jitter_stays_in_the_upper_half() -> None:
    low = RetryPolicy(0.5, 4.0, rng=lambda: 0.0)
    assert [low.delay(k) for k in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    rng = random.Random(1234)
    policy = RetryPolicy(0.5, 4.0, rng=rng.random)
    for k in range(1, 8):
        nominal = min(4.0, 0.5 * 2 ** (k - 1))
        for _ in range(200):
            assert nominal / 2 <= policy.delay(k) <= nominal


def test_retry_policy_with_equal_bounds_is_constant() -> None:
    policy = RetryPolicy(0.5, 0.5, rng=lambda: 1.0)
    assert {policy.delay(k) for k in range(1, 10)} == {0.5}


# --- order ------------------------------------------------------------------------------


def test_higher_priority_runs_first() -> None:
    core, _, _ = make_core()
    ids = [submit(core, priority=p) for p in (2, 1, 0, 2, 0, 1)]
    assert run_order(core, ids) == [2, 4, 1, 5, 0, 3]


def test_fifo_within_one_priority() -> None:
    core, _, _ = make_core()
    ids = [submit(core, priority=1, tag=str(i)) for i in range(20)]
    assert run_order(core, ids) == list(range(20))


def test_dispatch_pairs_each_idle_worker_with_one_job_and_records_the_attempt() -> None:
    core, store, wall = make_core()
    ids = [submit(core) for _ in range(3)]
    core.worker_ready("w0")
    core.worker_ready("w1")
    core.worker_ready("w1")  # a repeated ready report does not make two idle slots
    starts = core.dispatch()
    assert [(s.worker, s.record.id, s.attempt) for s in starts] == [("w0", ids[0], 1), ("w1", ids[1], 1)]
    assert core.dispatch() == []  # no idle worker left
    assert core.queued == 1 and len(core.running) == 2
    stored = store.get(ids[0])
    assert stored is not None and stored.state is JobState.RUNNING
    assert stored.attempts == [{"number": 1, "started_at": wall.now, "finished_at": None, "error": None,
                                "status": "running"}]
    core.worker_ready("w0")  # a busy worker saying "ready" (a late report) is not idle
    assert core.idle == []


# --- retries ----------------------------------------------------------------------------


def test_failed_attempts_retry_after_the_backoff_until_the_limit() -> None:
    core, store, wall = make_core()
    job = submit(core, max_retries=2)
    core.worker_ready("w0")
    delays = []
    for attempt in (1, 2, 3):
        (start,) = core.dispatch()
        assert start.attempt == attempt
        wall.now += 1
        outcome = core.finished(job, attempt, {"status": "failed", "error": f"boom {attempt}"})
        assert outcome is not None
        if attempt < 3:
            assert outcome.state is JobState.RETRYING
            delays.append(outcome.retry_in)
            assert core.dispatch() == []  # waiting for the backoff, not queued
            assert core.queued == 0
            stored = store.get(job)
            assert stored is not None and stored.state is JobState.RETRYING
            assert stored.not_before == wall.now + outcome.retry_in
            assert core.retry_due(job)
            assert not core.retry_due(job)  # a second timer for the same retry does nothing
        else:
            assert outcome.state is JobState.FAILED and outcome.retry_in is None
    assert delays == [1.0, 2.0]
    stored = store.get(job)
    assert stored is not None and stored.state is JobState.FAILED
    assert stored.error == "boom 3"
    assert [(a["number"], a["status"], a["error"]) for a in stored.attempts] == [
        (1, "failed", "boom 1"), (2, "failed", "boom 2"), (3, "failed", "boom 3")]
    assert core.failed == 1 and core.completed == 0 and job not in core.jobs


def test_a_result_marked_not_retryable_fails_the_job_at_once() -> None:
    core, store, _ = make_core()
    core.worker_ready("w0")
    job = submit(core, max_retries=5)
    core.dispatch()
    outcome = core.finished(job, 1, {"status": "failed", "error": "syntax error", "retryable": False})
    assert outcome is not None and outcome.state is JobState.FAILED
    stored = store.get(job)
    assert stored is not None and stored.error == "syntax error" and len(stored.attempts) == 1


def test_default_retry_limit_applies_when_the_job_says_nothing() -> None:
    core, store, _ = make_core(max_retries=1)
    job = submit(core)
    core.worker_ready("w0")
    (start,) = core.dispatch()
    assert core.finished(job, 1, {"status": "timeout"}).state is JobState.RETRYING
    core.retry_due(job)
    (start,) = core.dispatch()
    assert core.finished(job, 2, {"status": "timeout"}).state is JobState.FAILED
    stored = store.get(job)
    assert stored is not None and stored.error == "timeout"  # the status stands in for a missing error


def test_zero_retries_fails_on_the_first_failure() -> None:
    core, _, _ = make_core()
    job = submit(core, max_retries=0)
    core.worker_ready("w0")
    core.dispatch()
    assert core.finished(job, 1, {"status": "failed", "error": "x"}).state is JobState.FAILED


def test_success_after_a_failure_keeps_both_attempts() -> None:
    core, store, _ = make_core()
    job = submit(core)
    core.worker_ready("w0")
    core.dispatch()
    core.finished(job, 1, {"status": "failed", "error": "first"})
    core.retry_due(job)
    core.dispatch()
    outcome = core.finished(job, 2, {"status": "succeeded", "value": 42})
    assert outcome is not None and outcome.state is JobState.SUCCEEDED
    stored = store.get(job)
    assert stored is not None and stored.state is JobState.SUCCEEDED
    assert [a["status"] for a in stored.attempts] == ["failed", "succeeded"]
    assert stored.result == {"status": "succeeded", "value": 42} and stored.error is None
    assert core.completed == 1


# --- cancel -----------------------------------------------------------------------------


def test_cancel_a_queued_job_skips_it() -> None:
    core, store, _ = make_core()
    a, b = submit(core), submit(core)
    assert core.cancel(a) == (True, None)
    assert core.cancel(a) == (False, None)  # already finished
    assert core.cancel("nope") == (False, None)
    core.worker_ready("w0")
    (start,) = core.dispatch()
    assert start.record.id == b
    stored = store.get(a)
    assert stored is not None and stored.state is JobState.CANCELLED and stored.attempts == []
    assert core.cancelled == 1


def test_cancel_a_running_job_returns_its_handle_and_frees_the_worker_on_its_report() -> None:
    core, store, _ = make_core()
    a, b = submit(core), submit(core)
    core.worker_ready("w0")
    core.dispatch()
    calls: list[str] = []
    core.running[a].cancel.attach(lambda: calls.append("cancel"))  # as the worker does
    cancelled, handle = core.cancel(a)
    assert cancelled and handle is not None
    handle()
    assert calls == ["cancel"]
    # The worker stays busy until its own report says the attempt is over (a python
    # attempt cannot be stopped); that late report changes nothing else.
    assert core.idle == []
    assert core.dispatch() == []
    assert not core.progress(a, 1, 0.5, "late")
    assert core.finished(a, 1, {"status": "cancelled"}, "w0") is None
    assert core.idle == ["w0"]
    (start,) = core.dispatch()
    assert start.record.id == b
    stored = store.get(a)
    assert stored is not None and stored.state is JobState.CANCELLED
    assert stored.attempts[-1]["status"] == "cancelled"


def test_cancel_a_job_waiting_for_its_retry() -> None:
    core, store, _ = make_core()
    job = submit(core)
    core.worker_ready("w0")
    core.dispatch()
    core.finished(job, 1, {"status": "failed", "error": "x"})
    assert core.cancel(job) == (True, None)
    assert not core.retry_due(job)  # the timer firing late does not queue it again
    assert core.dispatch() == []
    stored = store.get(job)
    assert stored is not None and stored.state is JobState.CANCELLED


# --- stale reports ----------------------------------------------------------------------


def test_reports_of_an_abandoned_attempt_are_ignored() -> None:
    core, store, _ = make_core()
    job = submit(core)
    core.worker_ready("w0")
    core.worker_ready("w1")
    (start,) = core.dispatch()
    assert start.worker == "w0"
    assert core.worker_lost("w0") == job
    outcome = core.abandon(job, "worker w0 hung")
    assert outcome is not None and outcome.state is JobState.RETRYING
    assert core.abandon(job, "again") is None  # nothing running any more
    core.retry_due(job)
    (start,) = core.dispatch()
    assert (start.worker, start.attempt) == ("w1", 2)
    # The hung attempt comes back late: its progress and its end are stale.
    assert not core.progress(job, 1, 0.9, "stale")
    assert core.finished(job, 1, {"status": "succeeded"}) is None
    assert core.running[job].attempt == 2
    assert core.progress(job, 2, 0.5, "fresh")
    assert core.jobs[job].progress == {"fraction": 0.5, "message": "fresh"}
    assert core.finished(job, 2, {"status": "succeeded"}).state is JobState.SUCCEEDED
    stored = store.get(job)
    assert stored is not None
    assert [(a["status"], a["error"]) for a in stored.attempts] == [("failed", "worker w0 hung"), ("succeeded", None)]


def test_report_for_an_unknown_job_is_ignored() -> None:
    core, _, _ = make_core()
    assert core.finished("nope", 1, {"status": "succeeded"}) is None
    assert not core.progress("nope", 1, 0.1, "")
    assert core.worker_lost("w9") is None


# --- restore after a crash --------------------------------------------------------------


def _crashed_store(max_retries: int | None, earlier_failures: int = 0) -> tuple[MemoryStore, str]:
    """A store as a killed runtime leaves it: one job running its last attempt."""
    store = MemoryStore()
    record = JobRecord.new("s", {}, max_retries=max_retries)
    for n in range(1, earlier_failures + 1):
        record.attempts.append({"number": n, "started_at": 1.0, "finished_at": 2.0, "error": f"e{n}",
                                "status": "failed"})
    record.attempts.append({"number": earlier_failures + 1, "started_at": 3.0, "finished_at": None,
                            "error": None, "status": "running"})
    record.state = JobState.RUNNING
    store.add(record)
    return store, record.id


def test_restore_runs_an_interrupted_job_again_even_with_no_retries_left() -> None:
    store, job = _crashed_store(max_retries=0)
    (pending,) = recover(store)
    assert pending.state is JobState.RETRYING
    core = SchedulerCore(store, Wall(), 3)
    assert core.restore(pending) is JobState.RETRYING  # the process ended, not the job
    core.worker_ready("w0")
    (start,) = core.dispatch()
    assert start.record.id == job and start.attempt == 2


def test_restore_fails_a_job_interrupted_twice_past_its_limit() -> None:
    store, job = _crashed_store(max_retries=0)
    (pending,) = recover(store)
    pending.attempts.append({"number": 2, "started_at": 4.0, "finished_at": None, "error": None, "status": "running"})
    pending.state = JobState.RUNNING
    store.update_many([pending])
    (pending,) = recover(store)  # killed again while it ran its extra attempt
    core = SchedulerCore(store, Wall(), 3)
    assert core.restore(pending) is JobState.FAILED
    core.flush()
    stored = store.get(job)
    assert stored is not None and stored.state is JobState.FAILED
    assert [a["status"] for a in stored.attempts] == ["interrupted", "interrupted"]
    assert stored.error == INTERRUPTED_ERROR
    assert core.failed == 1 and job not in core.jobs
    core.worker_ready("w0")
    assert core.dispatch() == []


def test_restore_keeps_a_retrying_job_waiting_out_its_backoff() -> None:
    wall = Wall()
    store = MemoryStore()
    waiting, due = JobRecord.new("s", {}), JobRecord.new("s", {})
    for record, not_before in ((waiting, wall.now + 30), (due, wall.now - 1)):
        record.state = JobState.RETRYING
        record.attempts.append({"number": 1, "started_at": 1.0, "finished_at": 2.0, "error": "x", "status": "failed"})
        record.not_before = not_before
    store.add_many([waiting, due])
    core = SchedulerCore(store, wall, 3)
    for record in recover(store):
        assert core.restore(record) is JobState.RETRYING
    assert core.retry_in(waiting.id) == 30 and core.retry_in(due.id) is None
    wall.now -= 3600  # the wall clock was set back an hour: the wait stays within the policy's cap
    assert core.retry_in(waiting.id) == 60
    core.policies["s"] = RetryPolicy(1.0, 20.0)
    assert core.retry_in(waiting.id) == 20
    core.worker_ready("w0")
    core.worker_ready("w1")
    assert [d.record.id for d in core.dispatch()] == [due.id]  # the other one waits for its timer
    assert core.retry_due(waiting.id)
    assert [d.record.id for d in core.dispatch()] == [waiting.id]


def test_restore_counts_earlier_failures_against_the_limit() -> None:
    store, job = _crashed_store(max_retries=2, earlier_failures=2)  # interrupted in its last attempt
    (pending,) = recover(store)
    core = SchedulerCore(store, Wall(), 3)
    assert core.restore(pending) is JobState.RETRYING  # runs once more: the process ended, not the job
    core.worker_ready("w0")
    (start,) = core.dispatch()
    assert (start.record.id, start.attempt) == (job, 4)
    outcome = core.finished(job, 4, {"status": "failed", "error": "e4"})
    assert outcome is not None and outcome.state is JobState.FAILED  # a failure of its own: no more
    store, job = _crashed_store(max_retries=None, earlier_failures=2)  # default limit 3: one retry left
    (pending,) = recover(store)
    core = SchedulerCore(store, Wall(), 3)
    assert core.restore(pending) is JobState.RETRYING
    core.worker_ready("w0")
    (start,) = core.dispatch()
    assert (start.record.id, start.attempt) == (job, 4)


def test_restore_keeps_the_run_order_of_queued_jobs() -> None:
    store = MemoryStore()
    records = [JobRecord.new("s", {}, priority=p) for p in (1, 2, 0, 1)]
    store.add_many(records)
    core = SchedulerCore(store, Wall(), 3)
    for record in recover(store):
        assert core.restore(record) is JobState.QUEUED
    assert core.queued == 4
    assert run_order(core, [r.id for r in records]) == [2, 0, 3, 1]


@pytest.mark.parametrize("priority", [0, 1, 2])
def test_store_mirrors_every_change(priority: int) -> None:
    core, store, _ = make_core()
    job = submit(core, priority=priority)
    stored = store.get(job)
    assert stored is not None and stored.state is JobState.QUEUED and stored.priority == priority
    assert store.counts()["queued"] == 1
    core.worker_ready("w0")
    core.dispatch()
    assert store.counts()["running"] == 1
    core.finished(job, 1, {"status": "succeeded"})
    assert store.counts()["succeeded"] == 1 and store.unfinished() == []


def test_changes_wait_for_one_group_commit_but_a_submit_is_durable_at_once() -> None:
    core, store, _ = make_core()
    raw = store.raw
    first = submit(core)
    assert raw.counts()["queued"] == 1  # durable before submit returns
    core.worker_ready("w0")
    core.dispatch()
    core.finished(first, 1, {"status": "succeeded"})
    assert raw.counts()["queued"] == 1 and set(core.dirty) == {first}  # pending, written once
    second = submit(core)  # the submit's transaction carries the pending change too
    counts = raw.counts()
    assert counts["succeeded"] == 1 and counts["queued"] == 1 and not core.dirty
    core.dispatch()
    assert raw.counts()["running"] == 0
    core.flush()
    assert raw.counts()["running"] == 1 and not core.dirty
    assert raw.get(second) is not None


def test_a_cancel_before_the_worker_attaches_its_stop_stops_the_attempt_at_the_attach() -> None:
    core, _, _ = make_core()
    core.worker_ready("w1")
    job = submit(core)
    (start,) = core.dispatch()
    cancelled, stop = core.cancel(job)
    assert cancelled and stop is not None
    stop()  # the worker has not attached anything yet: remembered
    stopped: list[bool] = []
    start.cancel.attach(lambda: stopped.append(True))  # the worker, as it starts the attempt
    assert stopped == [True]
    start.cancel.cancel()  # a second cancel stops it again (executions take that)
    assert stopped == [True, True]


def test_a_job_dispatched_before_its_first_commit_is_written_once_already_running() -> None:
    core, store, _ = make_core()
    writes: list[tuple[int, int]] = []
    real = store.raw.write

    def counted(added: Any = (), updated: Any = ()) -> None:
        added, updated = list(added), list(updated)
        writes.append((len(added), len(updated)))
        real(added, updated)

    store.raw.write = counted  # type: ignore[method-assign]
    core.worker_ready("w0")
    record = JobRecord.new("s", {})
    core.accept(record)
    assert record.seq > 0  # numbered before it is written, to take its place in the queue
    (start,) = core.dispatch()
    core.flush()
    assert writes == [(1, 0)]  # one insert, no update
    stored = store.raw.get(record.id)
    assert stored is not None and stored.state is JobState.RUNNING and len(stored.attempts) == 1


def test_reject_undoes_jobs_whose_commit_failed() -> None:
    core, store, _ = make_core()
    core.worker_ready("w0")
    record = JobRecord.new("s", {})
    journalled = JobRecord.new("s", {})  # accepted from the submit journal, in no failed submit
    core.accept(record)
    core.dispatch()
    core.accept(journalled)
    core.reject([record.id])
    assert record.id not in core.jobs and not core.running and core.idle == ["w0"]
    assert [d.record.id for d in core.dispatch()] == [journalled.id]  # the other job stays
    core.flush()
    assert store.raw.get(record.id) is None and store.raw.get(journalled.id) is not None


def test_restore_counts_an_interruption_only_when_it_ended_the_last_attempt() -> None:
    # Attempt 1 failed on its own and attempt 2 (its last allowed) started; neither was
    # committed, then the process died: the marks fill attempt 1 in as interrupted too.
    store = MemoryStore()
    record = JobRecord.new("s", {}, max_retries=1)
    store.add(record)
    apply_marks(store, [StartMark(record.id, 1, 10.0), StartMark(record.id, 2, 12.0)])
    (pending,) = recover(store)
    assert SchedulerCore(store, Wall(), 3).restore(pending) is JobState.RETRYING  # its one extra run
    # Interrupted early, then a failure of its own, then interrupted in its last attempt.
    store = MemoryStore()
    record = JobRecord.new("s", {}, max_retries=2)
    record.attempts = [
        {"number": 1, "started_at": 1.0, "finished_at": 2.0, "error": INTERRUPTED_ERROR, "status": "interrupted"},
        {"number": 2, "started_at": 3.0, "finished_at": 4.0, "error": "e2", "status": "failed"},
        {"number": 3, "started_at": 5.0, "finished_at": None, "error": None, "status": "running"},
    ]
    record.state = JobState.RUNNING
    store.add(record)
    (pending,) = recover(store)
    assert SchedulerCore(store, Wall(), 3).restore(pending) is JobState.RETRYING


def test_an_attempt_stopped_by_a_graceful_stop_does_not_count_against_the_retries() -> None:
    store = MemoryStore()
    core = SchedulerCore(store, Wall(), 3)
    record = JobRecord.new("s", {}, max_retries=0)
    core.submit(record)
    core.worker_ready("w0")
    (start,) = core.dispatch()
    assert core.stop_running() == [record.id]
    core.flush()
    stored = store.get(record.id)
    assert stored is not None and stored.state is JobState.QUEUED
    assert [(a["number"], a["status"]) for a in stored.attempts] == [(1, "stopped")]
    # The next start runs it again; a failure of its own is then its one allowed attempt.
    (pending,) = recover(store)
    core = SchedulerCore(store, Wall(), 3)
    assert core.restore(pending) is JobState.QUEUED
    core.worker_ready("w0")
    (start,) = core.dispatch()
    assert start.attempt == 2
    outcome = core.finished(record.id, 2, {"status": "failed", "error": "boom"})
    assert outcome is not None and outcome.state is JobState.FAILED
