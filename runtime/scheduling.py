"""The scheduler's plain logic: the priority queue, job states, attempts and retries.

No threads and no actors: the SchedulerActor calls it and acts on what it returns
(start a job on a worker, arm a retry timer). Time is passed in.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.execution_stats import ExecutionStats
from runtime.messages import AttemptHandle
from runtime.store import JobRecord, JobState, JobStore

__all__ = ["Dispatch", "Outcome", "RetryPolicy", "Running", "SchedulerCore", "SchedulerMemory"]


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


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Start attempt ``attempt`` of ``record`` on ``worker``; ``ahead``: once its attempt in
    flight ends (the job is sent ahead and stays ``queued`` until then)."""

    worker: str
    record: JobRecord
    attempt: int
    handle: AttemptHandle
    ahead: bool = False


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
    """An attempt in flight (or sent ahead): where it runs and how to control it."""

    worker: str
    attempt: int
    handle: AttemptHandle = field(default_factory=AttemptHandle)


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
    retired: set[str] = field(default_factory=set)

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
    #: Jobs sent ahead to a busy worker, which starts them as its attempt ends (see
    #: ``dispatch``); they stay queued until then. Job id -> worker and attempt.
    ahead: dict[str, Running] = field(default_factory=dict)
    #: Which queued jobs may be sent ahead (``None``: none). The actor excludes jobs run
    #: inside the process: their start must be committed before they run.
    sends_ahead: Callable[[JobRecord], bool] | None = None
    #: Jobs sent ahead that have started since ``take_promoted`` was last called.
    _promoted: list[tuple[str, int]] = field(default_factory=list)

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

        Returns:
            ``queued``/``retrying`` (it will run), or ``failed`` when the interrupted
            attempt was its last allowed one.
        """
        self.jobs[record.id] = record
        limit = record.max_retries if record.max_retries is not None else self.default_max_retries
        if record.state is JobState.RETRYING and len(record.attempts) - 1 >= limit:
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
        return max(0.0, self.jobs[job_id].not_before - self.wall())

    def reject(self) -> None:
        """Undo the accepting of the jobs not inserted yet (their commit failed): they
        leave the queue, and any of them already dispatched frees its worker."""
        for job_id in list(self.added):
            del self.added[job_id]
            self.jobs.pop(job_id, None)
            self.dirty.pop(job_id, None)
            ahead = self.ahead.pop(job_id, None)
            if ahead is not None:
                ahead.handle.revoke()  # not sent yet: the commit comes before the sending
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

    def worker_ready(self, worker: str) -> None:
        """A (new) worker instance is idle: a job sent ahead to the old one comes back."""
        self._busy_after_cancel.discard(worker)
        self._take_back_from(worker)
        self._release(worker)

    def _release(self, worker: str) -> None:
        """``worker``'s attempt is over: it starts the job sent ahead to it, or is idle."""
        self._busy_after_cancel.discard(worker)
        if any(r.worker == worker for r in self.running.values()):
            return  # it runs another attempt: a job sent ahead that it started before this report came
        for job_id, run in self.ahead.items():
            if run.worker == worker:
                del self.ahead[job_id]
                self._promote(job_id, run)
                return
        if worker not in self.retired and worker not in self.idle:
            self.idle.append(worker)

    def retire(self, worker: str) -> bool:
        """Give ``worker`` no more jobs (the pool shrinks); ``True`` once it runs none."""
        self.retired.add(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        self._take_back_from(worker)
        return not self.busy(worker)

    def busy(self, worker: str) -> bool:
        """Whether ``worker`` still runs an attempt (or a cancelled one not yet reported)."""
        return worker in self._busy_after_cancel or any(r.worker == worker for r in self.running.values())

    def enlist(self, worker: str) -> None:
        """``worker`` (a name the pool grows into again) may get jobs once it is ready."""
        self.retired.discard(worker)

    def worker_lost(self, worker: str) -> list[str]:
        """A worker died (or hangs); returns the jobs it was running (a job sent ahead to it
        goes back to the queue, unless it had started it)."""
        self._busy_after_cancel.discard(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        self._take_back_from(worker)
        return [job_id for job_id, run in self.running.items() if run.worker == worker]

    def dispatch(self) -> list[Dispatch]:
        """Pair idle workers with the best queued jobs (marking those jobs running), then,
        where ``sends_ahead`` allows, send each busy worker the next best job ahead: it
        starts it the moment its attempt ends, with no round trip through the scheduler
        in between. Jobs sent ahead are taken back when a better one is queued (strict
        priority and FIFO hold) or a worker is idle (none waits behind a long attempt)."""
        if self.ahead:
            head = self._peek()
            if self.idle or (head is not None and any(
                    (self.jobs[j].priority, self.jobs[j].seq) > (head.priority, head.seq) for j in self.ahead)):
                self.take_back_all()
        starts = []
        now = self.wall()
        while self.idle and (record := self._peek()) is not None:
            heapq.heappop(self._queue)
            run = self._start(record, Running(self.idle.pop(0), len(record.attempts) + 1), now)
            starts.append(Dispatch(run.worker, record, run.attempt, run.handle))
        if self.sends_ahead is not None:
            holding = {run.worker for run in self.ahead.values()}
            # dict.fromkeys: one job ahead per worker, even one running two attempts for a
            # moment (it started the job sent ahead before its report of the last came in).
            for worker in dict.fromkeys(r.worker for r in self.running.values() if r.worker not in holding):
                record = self._peek()
                if record is None or not self.sends_ahead(record):
                    break
                if worker in self.retired:
                    continue
                heapq.heappop(self._queue)
                run = self.ahead[record.id] = Running(worker, len(record.attempts) + 1)
                starts.append(Dispatch(worker, record, run.attempt, run.handle, ahead=True))
        return starts

    def take_back_all(self) -> None:
        """Take back every job sent ahead (a drain, a stop, a hand-over): back to the
        queue, or running where its worker has already started it."""
        for job_id in list(self.ahead):
            self._take_back(job_id)

    def take_promoted(self) -> list[tuple[str, int]]:
        """The jobs sent ahead that have started since the last call (job id, attempt),
        still running: the caller arms their deadlines."""
        promoted, self._promoted = self._promoted, []
        return [(job_id, attempt) for job_id, attempt in promoted
                if (run := self.running.get(job_id)) is not None and run.attempt == attempt]

    def _peek(self) -> JobRecord | None:
        """The best queued job, dropping the queue's stale entries (jobs cancelled while queued)."""
        while self._queue:
            job_id = self._queue[0][2]
            record = self.jobs.get(job_id)
            if record is None or record.state.finished or job_id in self.running or job_id in self.ahead:
                heapq.heappop(self._queue)
                continue
            return record
        return None

    def _start(self, record: JobRecord, run: Running, now: float) -> Running:
        record.attempts.append(
            {"number": run.attempt, "started_at": now, "finished_at": None, "error": None, "status": "running"}
        )
        record.state = JobState.RUNNING
        record.progress = None
        record.updated_at = now
        self.dirty[record.id] = record
        self.running[record.id] = run
        return run

    def _promote(self, job_id: str, run: Running) -> None:
        """A job sent ahead has started on its worker (or is about to): it runs now."""
        self._start(self.jobs[job_id], run, self.wall())
        self._promoted.append((job_id, run.attempt))

    def _take_back(self, job_id: str) -> None:
        run = self.ahead.pop(job_id)
        if run.handle.revoke():
            record = self.jobs[job_id]
            heapq.heappush(self._queue, (record.priority, record.seq, job_id))
        else:  # the worker claimed it first: it runs
            self._promote(job_id, run)

    def _take_back_from(self, worker: str) -> None:
        for job_id in [j for j, run in self.ahead.items() if run.worker == worker]:
            self._take_back(job_id)

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
        early = self.ahead.get(job_id)
        if early is not None and early.attempt == attempt:  # its start was not seen yet
            self._promote(job_id, self.ahead.pop(job_id))
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
        if job_id in self.ahead:
            self._take_back(job_id)  # not started: it is simply queued; started: it runs
        run = self.running.pop(job_id, None)
        if run is not None:
            self._busy_after_cancel.add(run.worker)  # until its JobFinished arrives
            record.attempts[-1].update(finished_at=self.wall(), status="cancelled", error="cancelled")
        self._waiting_retry.discard(job_id)
        self._close(record, JobState.CANCELLED, None, "cancelled")
        return True, run.handle.cancel if run else None

    def _attempt_failed(self, record: JobRecord, result: dict[str, Any] | None, error: str,
                        final: bool = False) -> Outcome:
        now = self.wall()
        record.attempts[-1].update(finished_at=now, status="failed", error=error)
        if result is not None:
            record.result = result
        limit = record.max_retries if record.max_retries is not None else self.default_max_retries
        retries_used = len(record.attempts) - 1
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
