"""The scheduler's plain logic: the priority queue, job states, attempts and retries.

No threads and no actors: the SchedulerActor calls it and acts on what it returns
(start a job on a worker, arm a retry timer). Time is passed in.
"""

from __future__ import annotations

import heapq
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InvalidArguments
from runtime.execution_stats import ExecutionStats
from runtime.messages import CancelSlot
from runtime.registry import MAX_TIMEOUT, Script
from runtime.store import STOPPED_ERROR, JobRecord, JobState, JobStore

__all__ = ["Dispatch", "JobCheck", "Outcome", "RetryPolicy", "Running", "SchedulerCore", "SchedulerMemory",
           "check_callbacks", "check_max_retries", "check_wait_timeout", "checked_jobs", "new_job", "priority_level"]

_PRIORITIES = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts of one job.

    Attempt ``k`` (the first retry is ``k = 1``) waits ``minimum * 2**(k-1)`` capped at
    ``maximum``, drawn from [d/2, d].
    """

    minimum: float = 1.0
    maximum: float = 60.0
    rng: Callable[[], float] = random.random

    def delay(self, retry: int) -> float:
        nominal = min(self.maximum, self.minimum * 2 ** min(max(retry - 1, 0), 62))
        return nominal / 2 + self.rng() * nominal / 2


def priority_level(value: Any) -> int:
    """0 (high), 1 (normal) or 2 (low) from a name, a number or a ``JobPriority``.

    Raises:
        InvalidArguments: anything else.
    """
    if isinstance(value, str) and value.lower() in _PRIORITIES:
        return _PRIORITIES[value.lower()]
    number = getattr(value, "value", value)
    if isinstance(number, int) and not isinstance(number, bool) and number in (0, 1, 2):
        return number
    raise InvalidArguments(f"priority must be high, normal or low, got {value!r}")


def check_wait_timeout(timeout: Any) -> float | None:
    """A wait's timeout: ``None`` (no limit) or seconds, finite, 0 or more, at most a year.

    Raises:
        InvalidArguments: anything else (a wait could not take it).
    """
    if timeout is None:
        return None
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
        if 0 <= seconds <= MAX_TIMEOUT:  # False for NaN too; threading's waits take no more
            return seconds
    raise InvalidArguments(f"timeout must be None or a number of seconds from 0 to {MAX_TIMEOUT} "
                           f"(a year), got {timeout!r}")


def check_callbacks(callback: Any, on_done: Any) -> None:
    """A submission's callbacks are callables (or ``None``): one that is not would fail
    on every progress report or at the end, long after the submit.

    Raises:
        InvalidArguments: one is not.
    """
    for name, value in (("callback", callback), ("on_done", on_done)):
        if value is not None and not callable(value):
            raise InvalidArguments(f"{name} must be callable, got {value!r}")


def check_max_retries(value: Any) -> int | None:
    """A submission's retry limit: ``None`` (the script's) or an integer >= 0.

    Raises:
        InvalidArguments: anything else.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidArguments(f"max_retries must be an integer >= 0, got {value!r}")
    return value


#: Looks a job's script up and validates its arguments: ``(script id, arguments) ->
#: (script, validated arguments)``; raises ``ScriptNotFound``, ``InvalidArguments``, ``PoolError``.
JobCheck = Callable[[str, Any], tuple[Script, dict[str, Any]]]


def checked_jobs(check: JobCheck, jobs: list[Any]) -> list[tuple[Script, dict[str, Any]]]:
    """Every ``(script id, arguments)`` pair of a batch, checked; an error names the job's position.

    Raises:
        ScriptNotFound, InvalidArguments, PoolError: the first job that does not check.
    """
    checked = []
    for position, job in enumerate(jobs, 1):
        if not isinstance(job, (tuple, list)) or len(job) != 2:
            shape = f"a {len(job)}-item {type(job).__name__}" if isinstance(job, (tuple, list)) else type(job).__name__
            raise InvalidArguments(f"job #{position}: expected a (script id, arguments) pair, got {shape}")
        try:
            checked.append(check(job[0], job[1]))
        except InvalidArguments as e:  # ScriptNotFound and PoolError name what is missing already
            raise InvalidArguments(f"job #{position}: {e}") from None
    return checked


def _retries_used(record: JobRecord) -> int:
    """Attempts after the first that count against the retry limit (``stopped`` ones do not)."""
    return sum(1 for attempt in record.attempts if attempt.get("status") != "stopped") - 1


def new_job(script: Script, arguments: dict[str, Any], priority: int, max_retries: int | None) -> JobRecord:
    """A new queued record for ``script``; the retry limit is the submission's, else the script's.

    ``priority`` and ``max_retries`` are checked already (:func:`priority_level`,
    :func:`check_max_retries`): a record is what the store keeps and the queue orders.
    """
    retries = script.max_retries if max_retries is None else max_retries
    return JobRecord.new(script.id, arguments, priority=priority, max_retries=retries)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Start attempt ``attempt`` of ``record`` on ``worker``."""

    worker: str
    record: JobRecord
    attempt: int
    cancel: CancelSlot


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a job after an attempt ended.

    Attributes:
        state: the job's new state.
        retry_in: seconds until the next attempt (``retrying`` only).
        record: the job's record (for a finished job: its final state).
    """

    state: JobState
    retry_in: float | None = None
    record: JobRecord | None = None


@dataclass
class Running:
    """An attempt in flight: where it runs and how to stop it (``cancel.cancel()``)."""

    worker: str
    attempt: int
    cancel: CancelSlot = field(default_factory=CancelSlot)
    started_at: float = 0.0  # wall-clock time the attempt was dispatched


@dataclass
class SchedulerMemory:
    """What outlives one SchedulerActor instance.

    The supervisor's factory hands the same object to a restarted scheduler (as
    with the cache's ``CacheMemory``), so a crash of the scheduler loses no
    completion waiter, progress callback or execution figure, and attempts still
    running on live workers are adopted instead of being started a second time.
    Only one scheduler instance uses it at a time: the old one is dead before the
    new one starts, so nothing here locks.

    Attributes:
        store: the job store, opened by the first instance and kept open across
            restarts (a ``MemoryStore`` would otherwise forget every job).
        running: attempts in flight when the last instance failed.
        worker_refs: worker name -> the instance that last said it was ready.
    """

    store: JobStore | None = None
    progress_callbacks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    waiters: defaultdict[str, list[Callable[[dict[str, Any]], Any]]] = field(
        default_factory=lambda: defaultdict(list))
    running: dict[str, Running] = field(default_factory=dict)
    worker_refs: dict[str, Any] = field(default_factory=dict)
    exec_stats: ExecutionStats = field(default_factory=ExecutionStats)
    counts: tuple[int, int, int] = (0, 0, 0)  # completed, failed, cancelled
    counts_loaded: bool = False  # the counts start from the store's (its earlier runs' jobs)
    retired: set[str] = field(default_factory=set)
    #: The start marks were recorded in the store (once per process, retried until it works).
    marks_applied: bool = False
    #: The scripts of the jobs submitted or recovered, by id (their latest version).
    scripts: dict[str, Script] = field(default_factory=dict)
    #: Unfinished job -> the version of its script its arguments were checked against:
    #: a job that starts with another version is checked again.
    checked_with: dict[str, Script] = field(default_factory=dict)
    #: Cancelled attempts whose worker is busy until they return (a python function on
    #: its thread cannot be stopped): job id -> (worker, its instance's urn, attempt,
    #: the attempt's deadline on the clock's monotonic time). Watched until then.
    cancelled_busy: dict[str, tuple[str, str, int, float]] = field(default_factory=dict)
    #: Worker instances (urns) that failed or were replaced: a late ``WorkerReady`` of
    #: theirs must not take their name back from the instance that replaced them.
    gone_workers: set[str] = field(default_factory=set)
    #: The runtime stops: no job starts any more (``drain``), and the attempts still running
    #: are being stopped (``interrupt``). Here so that a restarted instance goes on with it.
    draining: bool = False
    interrupting: bool = False
    #: Instances between the start of their ``setup`` and the end of their ``teardown``:
    #: the runtime closes the store only once none is (an escalation stops the actors
    #: without waiting for them, and SQLite must not be closed under a running commit).
    _instances: int = 0
    _instances_changed: threading.Condition = field(default_factory=threading.Condition)

    def instance_started(self) -> None:
        with self._instances_changed:
            self._instances += 1

    def instance_ended(self) -> None:
        with self._instances_changed:
            self._instances -= 1
            self._instances_changed.notify_all()

    def wait_unused(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no instance uses the memory; whether none does."""
        with self._instances_changed:
            return self._instances_changed.wait_for(lambda: self._instances <= 0, timeout)

    def close(self) -> None:
        """Close the store (idempotent); the runtime calls it once its actors are gone."""
        store, self.store = self.store, None
        if store is not None:
            store.close()


@dataclass
class SchedulerCore:
    """Jobs in flight and the queue of those waiting, mirrored in the store.

    Args:
        store: where every change is written before it is acted on.
        wall: wall-clock time (``time.time``) for the records' timestamps.
        default_max_retries: for jobs whose script and submission say nothing.
    """

    store: JobStore
    wall: Callable[[], float]
    default_max_retries: int = 3
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    idle: list[str] = field(default_factory=list)
    policies: dict[str, RetryPolicy] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Changed records not yet written: ``flush()`` (or the next ``submit``) writes
    #: them in one transaction, so a burst costs one commit, not one per change.
    dirty: dict[str, JobRecord] = field(default_factory=dict)
    added: dict[str, JobRecord] = field(default_factory=dict)  # accepted, not inserted yet
    _queue: list[tuple[int, int, str]] = field(default_factory=list)
    _waiting_retry: set[str] = field(default_factory=set)
    _busy_after_cancel: set[str] = field(default_factory=set)
    retired: set[str] = field(default_factory=set)

    # --- intake ----------------------------------------------------------------------

    def submit(self, *records: JobRecord) -> None:
        """Accept jobs: durable in the store (with every pending change, one commit)
        before this returns."""
        self.accept(*records)
        self.flush()

    def accept(self, *records: JobRecord) -> None:
        """Accept jobs into the queue; the next ``flush`` inserts them. A caller that
        dispatches first writes a job that starts at once in its ``running`` state,
        one commit instead of two."""
        for record in records:
            self.store.assign_seq(record)
            self.added[record.id] = record
            self.jobs[record.id] = record
            heapq.heappush(self._queue, (record.priority, record.seq, record.id))

    def restore(self, record: JobRecord) -> JobState:
        """Take back an unfinished job found in the store at start-up.

        A job whose last allowed attempt was interrupted runs once more: the process's
        end is not the job's failure. One extra attempt at most, so a job that takes the
        process down cannot loop.

        Returns:
            ``queued``/``retrying`` (it will run), or ``failed``.
        """
        self.jobs[record.id] = record
        # Only a record written by an older version (whose scheduler proxy took anything) or
        # by hand can fail these checks: failing it keeps the queue, and every start, working.
        if type(record.priority) is not int or not 0 <= record.priority <= 2:  # noqa: E721 - not a bool either
            return self._close(record, JobState.FAILED, None, f"invalid priority {record.priority!r} in the store").state
        try:
            check_max_retries(record.max_retries)
        except InvalidArguments:
            error = f"invalid max_retries {record.max_retries!r} in the store"
            return self._close(record, JobState.FAILED, None, error).state
        limit = record.max_retries if record.max_retries is not None else self.default_max_retries
        retries_used = _retries_used(record)
        extra = bool(record.attempts) and record.attempts[-1].get("status") == "interrupted"
        if record.state is JobState.RETRYING and retries_used >= limit + extra:
            return self._close(record, JobState.FAILED, None, record.attempts[-1].get("error") or "interrupted").state
        if record.state is JobState.RETRYING and record.not_before > self.wall():
            self._waiting_retry.add(record.id)  # its backoff goes on across the restart: see retry_in
        else:
            heapq.heappush(self._queue, (record.priority, record.seq, record.id))
        return record.state

    def adopt(self, record: JobRecord, run: Running) -> None:
        """Take over an attempt that a live worker is still running (after a scheduler restart)."""
        self.jobs[record.id] = record
        self.running[record.id] = run
        if run.worker in self.idle:
            self.idle.remove(run.worker)

    def retry_in(self, job_id: str) -> float | None:
        """Seconds until a job waiting out its backoff may run; ``None`` when it is not waiting."""
        if job_id not in self._waiting_retry:
            return None
        record = self.jobs[job_id]
        # Capped by the policy: a wall clock set back since the failure must not stretch it.
        longest = self.policies.get(record.script_id, RetryPolicy()).maximum
        return min(max(0.0, record.not_before - self.wall()), longest)

    def reject(self, job_ids: list[str]) -> None:
        """Undo the accepting of jobs not inserted yet (their submit's commit failed): they
        leave the queue, and any of them already dispatched frees its worker. Other
        pending jobs (from the submit journal) stay pending for the next commit."""
        for job_id in job_ids:
            if self.added.pop(job_id, None) is None:
                continue
            self.jobs.pop(job_id, None)
            self.dirty.pop(job_id, None)
            run = self.running.pop(job_id, None)
            if run is not None:
                self._release(run.worker)

    def flush(self) -> None:
        """Write every pending change (accepted jobs too) in one transaction."""
        if self.dirty or self.added:
            added = list(self.added.values())
            self.store.write(added, [r for job_id, r in self.dirty.items() if job_id not in self.added])
            self.added.clear()
            self.dirty.clear()

    @property
    def queued(self) -> int:
        return len(self.jobs) - len(self.running) - len(self._waiting_retry)

    # --- dispatch --------------------------------------------------------------------

    def still_busy(self, worker: str) -> None:
        """``worker`` still runs a cancelled attempt (known to an earlier instance): it is
        not idle until it reports."""
        self._busy_after_cancel.add(worker)

    def worker_ready(self, worker: str) -> None:
        """A (new) worker instance is idle."""
        self._busy_after_cancel.discard(worker)
        self._release(worker)

    def _release(self, worker: str) -> None:
        self._busy_after_cancel.discard(worker)
        if worker in self.retired:
            return
        if worker not in self.idle and all(r.worker != worker for r in self.running.values()):
            self.idle.append(worker)

    def retire(self, worker: str) -> bool:
        """Give ``worker`` no more jobs (the pool shrinks); ``True`` once it runs none."""
        self.retired.add(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        return not self.busy(worker)

    def busy(self, worker: str) -> bool:
        """Whether ``worker`` still runs an attempt (or a cancelled one not yet reported)."""
        return worker in self._busy_after_cancel or any(r.worker == worker for r in self.running.values())

    def enlist(self, worker: str) -> None:
        """``worker`` (a name the pool grows into again) may get jobs once it is ready."""
        self.retired.discard(worker)

    def worker_lost(self, worker: str) -> str | None:
        """A worker died; returns the job it was running, if any."""
        self._busy_after_cancel.discard(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        for job_id, run in self.running.items():
            if run.worker == worker:
                return job_id
        return None

    def dispatch(self) -> list[Dispatch]:
        """Pair idle workers with the best queued jobs; marks those jobs running."""
        starts = []
        now = self.wall()
        while self.idle and self._queue:
            _, _, job_id = heapq.heappop(self._queue)
            record = self.jobs.get(job_id)
            if record is None or record.state.finished or job_id in self.running:
                continue  # cancelled while queued
            worker = self.idle.pop(0)
            attempt = len(record.attempts) + 1
            record.attempts.append(
                {"number": attempt, "started_at": now, "finished_at": None, "error": None, "status": "running"}
            )
            record.state = JobState.RUNNING
            record.progress = None
            record.updated_at = now
            self.dirty[record.id] = record
            run = self.running[job_id] = Running(worker, attempt, started_at=now)
            starts.append(Dispatch(worker, record, attempt, run.cancel))
        return starts

    def progress(self, job_id: str, attempt: int, fraction: float, message: str) -> bool:
        """Record progress; ``False`` for a stale attempt (ignored)."""
        run = self.running.get(job_id)
        if run is None or run.attempt != attempt:
            return False
        self.jobs[job_id].progress = {"fraction": fraction, "message": message}
        return True

    # --- endings ---------------------------------------------------------------------

    def finished(self, job_id: str, attempt: int, result: dict[str, Any], worker: str | None = None) -> Outcome | None:
        """An attempt ended with ``result`` (an ``ExecutionResult.to_dict()``) on ``worker``.

        The worker is idle again whatever the report says: only its own report
        frees it (a cancelled python job keeps its worker busy until it returns).

        Returns:
            the job's outcome, or ``None`` when the report is stale (an attempt
            already given up on, or a cancelled job).
        """
        run = self.running.get(job_id)
        if run is None or run.attempt != attempt:
            if worker is not None:
                self._release(worker)
            return None
        del self.running[job_id]
        self._release(run.worker)
        record = self.jobs[job_id]
        if result.get("status") == "succeeded":
            return self._close(record, JobState.SUCCEEDED, result, None)
        error = result.get("error") or result.get("status", "failed")
        # An outcome a retry cannot change (an SQL syntax error, an HTTP 404) ends the job now.
        return self._attempt_failed(record, result, error, final=result.get("retryable") is False)

    def stop_running(self) -> list[str]:
        """A graceful stop is over: the attempts still running end as ``stopped`` and their
        jobs are queued again, for the next start. A stopped attempt is the runtime's doing,
        not the job's: it does not count against the job's retries.

        Returns:
            the ids of those jobs.
        """
        now = self.wall()
        stopped = list(self.running)
        for job_id in stopped:
            del self.running[job_id]
            record = self.jobs[job_id]
            record.attempts[-1].update(finished_at=now, status="stopped", error=STOPPED_ERROR)
            record.state = JobState.QUEUED
            record.progress = None
            record.updated_at = now
            self.dirty[job_id] = record
        return stopped

    def abandon(self, job_id: str, error: str) -> Outcome | None:
        """The attempt running ``job_id`` is lost (its worker crashed or hung)."""
        run = self.running.pop(job_id, None)
        if run is None:
            return None
        record = self.jobs[job_id]
        return self._attempt_failed(record, None, error)

    def retry_due(self, job_id: str) -> bool:
        """The backoff of ``job_id`` is over: queue it again."""
        if job_id not in self._waiting_retry:
            return False
        self._waiting_retry.discard(job_id)
        record = self.jobs[job_id]
        heapq.heappush(self._queue, (record.priority, record.seq, record.id))
        return True

    def cancel(self, job_id: str) -> tuple[bool, Callable[[], None] | None]:
        """Cancel a queued, retrying or running job.

        Returns:
            whether the job was cancelled (``False``: unknown or already finished),
            and what stops the running attempt, if any.
        """
        record = self.jobs.get(job_id)
        if record is None or record.state.finished:
            return False, None
        run = self.running.pop(job_id, None)
        if run is not None:
            self._busy_after_cancel.add(run.worker)  # until its JobFinished arrives
            record.attempts[-1].update(finished_at=self.wall(), status="cancelled", error="cancelled")
        self._waiting_retry.discard(job_id)
        self._close(record, JobState.CANCELLED, None, "cancelled")
        return True, run.cancel.cancel if run else None

    def _attempt_failed(self, record: JobRecord, result: dict[str, Any] | None, error: str,
                        final: bool = False) -> Outcome:
        now = self.wall()
        record.attempts[-1].update(finished_at=now, status="failed", error=error)
        if result is not None:
            record.result = result
        limit = record.max_retries if record.max_retries is not None else self.default_max_retries
        retries_used = _retries_used(record)
        if final or retries_used >= limit:
            return self._close(record, JobState.FAILED, result, error)
        policy = self.policies.get(record.script_id, RetryPolicy())
        delay = policy.delay(retries_used + 1)
        record.state = JobState.RETRYING
        record.error = error
        record.not_before = now + delay
        record.updated_at = now
        self.dirty[record.id] = record
        self._waiting_retry.add(record.id)
        return Outcome(JobState.RETRYING, delay)

    def _close(self, record: JobRecord, state: JobState, result: dict[str, Any] | None, error: str | None) -> Outcome:
        now = self.wall()
        if state is JobState.SUCCEEDED:
            record.attempts[-1].update(finished_at=now, status="succeeded", error=None)
            self.completed += 1
        elif state is JobState.FAILED:
            self.failed += 1
        else:
            self.cancelled += 1
        record.state = state
        if result is not None:
            record.result = result
        record.error = error
        record.updated_at = now
        self.dirty[record.id] = record
        del self.jobs[record.id]
        return Outcome(state, record=record)
