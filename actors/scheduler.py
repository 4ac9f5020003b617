"""SchedulerActor: accepts jobs, keeps them in the store, hands them to idle workers,
retries failed attempts after a backoff, and answers questions about them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from runtime.callbacks import CallbackRunner
from runtime.clock import SystemClock, TimerHandle
from runtime.errors import ActorRuntimeError, InvalidArguments
from runtime.executors import NOT_RETRYABLE, validate_arguments
from runtime.messages import (
    AcceptJobs,
    ChildDown,
    DeadlinePassed,
    FlushDue,
    ForgetWaiter,
    JobFigures,
    JobFinished,
    JobProgress,
    ReplaceChild,
    ReportReady,
    RetryDue,
    RunJob,
    Submitted,
    WorkerReady,
)
from runtime.python_process import START_TIMEOUT
from runtime.registry import Script, load_registry
from runtime.scheduling import (JobCheck, Outcome, RetryPolicy, SchedulerCore, SchedulerMemory, check_callbacks,
                                check_max_retries, checked_jobs, new_job, priority_level)
from runtime.start_marks import StartMark, apply_marks, read_marks, stop_left_running
from runtime.store import JobRecord, JobState, JobStore, SqliteStore, recover
from runtime.submit_journal import SubmitJournal

from actors.base import ActorContext, SupervisedActor, tell_ref

__all__ = ["SchedulerActor", "job_status"]

logger = logging.getLogger(__name__)

#: Seconds an attempt may outlive its script's timeout before its worker counts as hung.
HANG_GRACE = 5.0
#: Most changed records held back for one group commit while messages keep coming.
FLUSH_BATCH = 256
#: Seconds before pending changes are committed again after a commit failed.
FLUSH_RETRY = 0.5
#: While attempts are running (more reports are on their way), commits are at least this
#: many seconds apart: a burst of short jobs shares commits instead of paying one per end.
COMMIT_WINDOW = 0.002
#: Seconds within which new journalled jobs and their starts are committed when nothing
#: else needs a commit (they are on disk already; this bounds how long they are only there).
JOURNALLED_COMMIT_DELAY = 0.05


def job_status(record: JobRecord) -> dict[str, Any]:
    """The status dict users see: state, attempts, progress, result, error, timestamps."""
    data = _copy_json(record.to_dict())  # a snapshot: the record lives on in the scheduler
    data["status"] = data["state"]
    data["job_id"] = data.pop("id")
    return data


_NESTED = frozenset({dict, list, tuple})


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data, several times cheaper than ``copy.deepcopy``.

    Scalars are tested in line rather than passed to a call: most values are scalars.
    """
    kind = type(value)
    if kind is dict:
        return {key: _copy_json(item) if type(item) in _NESTED else item for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_copy_json(item) if type(item) in _NESTED else item for item in value]
    return value


class SchedulerActor(SupervisedActor):
    """Owns the job queue and the store connection.

    Writes are group-committed: the changes made while handling a run of messages
    go to the store in one transaction once the inbox is empty (or ``FLUSH_BATCH``
    records are pending), and a submit commits them together with its new job.
    While attempts are running, such commits are ``COMMIT_WINDOW`` apart at least.
    Completion waiters run only after their job's final state is committed.

    Args:
        context: the actor's context.
        callbacks: where progress callbacks and completion waiters run.
        store_factory: opens the job store (default: SQLite under ``job_storage_path``).
        rng: jitter source for retry backoff (tests pass a fixed one).
        memory: what a restarted instance takes over from the failed one.
        marks: the workers' start marks folder (``runtime/start_marks.py``); ``None``
            (a custom store): the attempt of a job run on a worker thread is committed
            before the job starts instead.
        journal: the submit journal (``runtime/submit_journal.py``) this instance takes
            ``Submitted`` jobs from; ``None`` with a custom store.
        check: looks a job submitted through the proxy up and validates it (the runtime's).
        current: the registry's version of a script now (``None``: it was removed), looked
            up as a job starts, so that a job runs its script as the registry has it then
            and a removed script never runs; without it, the version known at submit.
    """

    def __init__(
        self,
        context: ActorContext,
        callbacks: CallbackRunner,
        store_factory: Callable[[], JobStore] | None = None,
        rng: Callable[[], float] | None = None,
        memory: SchedulerMemory | None = None,
        marks: Path | None = None,
        journal: SubmitJournal | None = None,
        *,
        check: JobCheck,
        current: Callable[[str], Script | None] | None = None,
    ) -> None:
        super().__init__(context)
        self._check = check
        self._current = current
        self._marks = marks
        self._journal = journal
        self._deliver: Callable[[JobRecord, Script], None] | None = None  # what the journal tells
        self._journalled = 0  # jobs delivered through the journal, accepted and not committed yet
        self._callbacks = callbacks
        self._store_factory = store_factory
        self._rng = rng
        self.memory = memory or SchedulerMemory()
        self.core: SchedulerCore | None = None
        self._scripts = self.memory.scripts
        self._progress_callbacks = self.memory.progress_callbacks
        self._waiters = self.memory.waiters
        self._worker_refs = self.memory.worker_refs
        self.exec_stats = self.memory.exec_stats
        self._timers: dict[str, TimerHandle] = {}  # retry backoffs, by job id
        # Deadlines of the running attempts (clock time, attempt), by job id, and one
        # timer for the earliest: a timer per attempt would cost the timer thread a
        # wake-up per job, while a deadline is almost never reached.
        self._deadlines: dict[str, tuple[float, int]] = {}
        self._cancelled_busy = self.memory.cancelled_busy
        self._checked_with = self.memory.checked_with
        self._deadline_timer: TimerHandle | None = None
        self._deadline_due = 0.0
        self._failed = False
        self._flush_retry_armed = False
        # The commit window runs on real time even under a test's fake clock: it only
        # batches commits, and a fake clock would hold them back until the test moved it.
        self._commit_clock = SystemClock()
        self._commit_due: float | None = None  # when the armed commit timer fires (monotonic)
        self._last_commit = 0.0
        # Completion waiters whose job's final state is not committed yet.
        self._unflushed: list[tuple[str, Callable[[dict[str, Any]], Any], dict[str, Any]]] = []

    # --- lifecycle --------------------------------------------------------------------

    def setup(self) -> None:
        self.memory.instance_started()  # ended at the end of teardown, which runs whatever happens
        try:
            self._take_over()
        except BaseException:
            # A failed start hands nothing over: what the last instance left (attempts in
            # flight, callbacks, the open store) stays in the memory for the next one.
            self._failed = True
            self._release()
            self.core = None
            for job_id, fn, _status in self._unflushed:  # waiters it took for jobs that had ended
                self._waiters[job_id].append(fn)
            self._unflushed = []
            raise

    def _take_over(self) -> None:
        settings = self.context.settings
        memory = self.memory
        if memory.store is None:
            memory.store = (self._store_factory() if self._store_factory
                            else SqliteStore(Path(settings.job_storage_path or ".jobs")))
        if self._journal is not None:  # jobs submitted that no instance committed: into the store first
            me = self.actor_ref
            self._deliver = lambda record, script: me.tell(Submitted(record, script))
            replayed = self._journal.take_over(self._deliver, self._insert_journalled)
            for job_id, callbacks in replayed.items():  # their Submitted died with an instance
                self._keep_callbacks(job_id, *callbacks)
        if self._marks is not None and not memory.marks_applied:  # attempts the last process did not store
            marks = read_marks(self._marks)
            stop_left_running(marks)  # a child of the last process still running: before its job runs again
            apply_marks(memory.store, marks)
            memory.marks_applied = True
        core = self.core = SchedulerCore(memory.store, time.time, settings.max_retries)
        if not memory.counts_loaded:  # the jobs of earlier runs on this store count too
            stored = memory.store.counts()
            memory.counts = (stored[JobState.SUCCEEDED.value], stored[JobState.FAILED.value],
                             stored[JobState.CANCELLED.value])
            memory.counts_loaded = True
        core.completed, core.failed, core.cancelled = memory.counts
        core.retired = set(memory.retired)
        # Attempts of the failed instance whose worker is still the same live actor
        # carry on: that worker's report comes here. The others were lost with it.
        live = {job_id: run for job_id, run in memory.running.items() if self._worker_alive(run.worker)}
        if live:  # the last commit may not have carried their starts (a journalled job's is deferred)
            apply_marks(memory.store, [StartMark(job_id, run.attempt, run.started_at) for job_id, run in live.items()])
        pending = recover(memory.store, {job_id: run.attempt for job_id, run in live.items()})
        for record in pending:
            if record.state is JobState.RUNNING:
                core.adopt(record, live[record.id])
            else:
                core.restore(record)
        if pending:
            logger.info("scheduler recovered %d unfinished jobs from the store (%d still running)",
                        len(pending), len(core.running))
        self._load_scripts([r.script_id for r in pending])
        for job_id, record in core.jobs.items():
            if job_id in core.running:
                # An adopted attempt keeps the deadline it started with, not a fresh one.
                started = record.attempts[-1].get("started_at") or time.time()
                left = self._timeout_of(record.script_id) - max(0.0, time.time() - started)
                self._arm_deadline(job_id, core.running[job_id].attempt, left)
            elif (delay := core.retry_in(job_id)) is not None:
                self._arm_retry(job_id, delay)
        for job_id in [j for j in self._waiters if j not in core.jobs]:
            self._ended(job_id, None)  # finished while no scheduler was listening
        self._flush()  # and their waiters run now, not with the next message (workers may all be busy)
        memory.running = {}  # taken over (a failure before this leaves them to the next instance)
        for job_id, (worker, _urn, attempt, due) in self._cancelled_busy.items():  # still watched
            core.still_busy(worker)
            self._deadlines[job_id] = (due, attempt)
        if self._deadlines:
            self._arm_deadline_timer(min(due for due, _ in self._deadlines.values()))
        for name in self.context.directory.names():
            if name.startswith("worker-"):
                self.context.directory.tell(name, ReportReady(self.actor_ref))

    def on_failure(self, exception_type: type[BaseException] | None, exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        # Hand over before the failure is reported: the supervisor may start the next
        # instance at once, and it must find everything (and the store free).
        self._failed = True
        self._hand_over()
        super().on_failure(exception_type, exception_value, traceback)

    def _release(self) -> None:
        """Take no more submits; stop the timers."""
        if self._journal is not None and self._deliver is not None:  # first: nothing more is told to it
            self._journal.stop_delivery(self._deliver)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._stop_deadline_timer()
        self._commit_clock.close()

    def _hand_over(self) -> None:
        self._release()
        core = self.core
        if core is None:
            return
        try:
            self._flush()
        except ActorRuntimeError:
            logger.exception("scheduler: the last changes could not be written; the next start redoes them")
            for job_id, fn, _status in self._unflushed:
                self._waiters[job_id].append(fn)
            self._unflushed = []
        memory = self.memory
        memory.counts = (core.completed, core.failed, core.cancelled)
        memory.retired = set(core.retired)
        if self._failed:
            # A restarted instance adopts the attempts still running on live workers.
            memory.running = dict(core.running)

    def teardown(self) -> None:
        try:
            self._teardown()
        finally:
            self.memory.instance_ended()

    def _teardown(self) -> None:
        if self._failed:
            return  # handed over in on_failure
        core = self.core
        runs = list(core.running.values()) if core is not None else []
        if core is not None and self.memory.draining:
            # A graceful stop (the runtime drained first): attempts still running end as
            # "stopped" and their jobs are queued for the next start, in the hand-over's
            # commit (a python job on a worker thread may run on: a thread cannot be stopped).
            # Any other stop (an escalation) leaves them running in the store: the next start
            # counts them as interrupted, as after a kill.
            core.stop_running()
        self._hand_over()
        if core is None:
            return
        for run in runs:
            run.cancel.cancel()
        self.memory.close()

    # --- questions (ask / proxy) ------------------------------------------------------

    def submit(self, script_id: str, arguments: dict[str, Any] | None = None, priority: Any = "normal",
               max_retries: int | None = None, callback: Callable[..., Any] | None = None,
               on_done: Callable[[dict[str, Any]], Any] | None = None) -> str:
        """Validate and accept a job, as ``Runtime.submit`` does; it is in the store on return.

        ``on_done(status)`` is called off the actors once the job has finished, as
        ``when_done`` would, without a second ask.

        Raises:
            ScriptNotFound, InvalidArguments, PoolError: nothing was queued.
            StoreError: the commit failed (nothing was queued).
        """
        level, limit = priority_level(priority), check_max_retries(max_retries)
        check_callbacks(callback, on_done)
        (job_id,) = self._accept(checked_jobs(self._check, [(script_id, arguments)]), level, limit, callback, on_done)
        return job_id

    def submit_many(self, jobs: list[tuple[str, dict[str, Any] | None]], priority: Any = "normal",
                    on_done: Callable[[dict[str, Any]], Any] | None = None) -> list[str]:
        """Validate and accept ``(script id, arguments)`` pairs in one commit (all or none);
        their ids, in order."""
        level = priority_level(priority)
        check_callbacks(None, on_done)
        return self._accept(checked_jobs(self._check, list(jobs)), level, None, None, on_done)

    def _accept(self, jobs: list[tuple[Script, dict[str, Any]]], priority: int, max_retries: int | None,
                callback: Callable[..., Any] | None, on_done: Callable[[dict[str, Any]], Any] | None) -> list[str]:
        """Queue the jobs, start what can start, and commit both before answering."""
        records = []
        for script, arguments in jobs:
            self._remember(script)
            records.append(record := new_job(script, arguments, priority, max_retries))
            self._checked_with[record.id] = script
        self._core().accept(*records)
        ids = [record.id for record in records]
        for job_id in ids:
            self._keep_callbacks(job_id, callback, on_done)
        try:
            self._dispatch(commit=ids)
        except ActorRuntimeError:  # not accepted: nothing of theirs is kept
            for job_id in ids:
                self._waiters.pop(job_id, None)
                self._progress_callbacks.pop(job_id, None)
            raise
        return ids

    def _accept_submitted(self, record: JobRecord, script: Script) -> None:
        """Queue a job from the submit journal; the next group commit inserts it."""
        assert self._journal is not None  # only a journal delivers these
        self._remember(script)
        self._checked_with[record.id] = script
        self._core().accept(record)
        self._journalled += 1
        self._keep_callbacks(record.id, *self._journal.accepted(record.id))
        self._dispatch()

    def _keep_callbacks(self, job_id: str, progress: Callable[..., Any] | None,
                        on_done: Callable[[dict[str, Any]], Any] | None) -> None:
        """Remember a job's progress callback and completion waiter (in the memory a
        restarted instance takes over)."""
        if progress is not None:
            self._progress_callbacks[job_id] = progress
        if on_done is not None:
            self._waiters[job_id].append(on_done)

    def _insert_journalled(self, records: list[JobRecord]) -> None:
        """Store the journalled jobs the store does not have yet (queued)."""
        store = self.memory.store
        assert store is not None
        known = store.known_ids(r.id for r in records)
        new = [r for r in records if r.id not in known]
        if new:
            store.add_many(new)
            logger.info("scheduler recovered %d submitted jobs from the submit journal", len(new))

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's status dict, or ``None`` for an unknown id."""
        if not isinstance(job_id, str):
            return None  # no job has it (and it may not even be hashable)
        core = self._core()
        record = core.jobs.get(job_id)
        if record is None:
            self._flush_quietly()  # a finished job is read back from the store...
            # ...unless its last change is not written yet (the commit failed): memory is newer.
            record = core.dirty.get(job_id) or core.store.get(job_id)
        return None if record is None else job_status(record)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued, retrying or running job; ``False`` if unknown or finished."""
        if not isinstance(job_id, str):
            return False
        core = self._core()
        record = core.jobs.get(job_id)
        run = core.running.get(job_id)
        deadline = self._deadlines.get(job_id)
        cancelled, handle = core.cancel(job_id)
        if cancelled:
            if handle is not None:
                handle()
            self._cancel_timer(job_id)
            if run is not None and deadline is not None and core.busy(run.worker):
                # Until it reports, its worker is still watched: one that never returns is
                # replaced at the attempt's deadline, as a hung one would be.
                ref = self._worker_refs.get(run.worker)
                self._cancelled_busy[job_id] = (run.worker, ref.actor_urn if ref else "", run.attempt, deadline[0])
                self._deadlines[job_id] = deadline  # the timer armed for it still runs
            self._ended(job_id, record)
            self._dispatch()
            # Committed before the answer, not in the commit window: a job cancelled and
            # then recovered from the journal or the store would run after all. (A store
            # that fails here is logged and tried again in FLUSH_RETRY seconds.)
            self._flush_quietly()
        return cancelled

    def when_done(self, job_id: str, fn: Callable[[dict[str, Any]], Any]) -> bool:
        """Call ``fn(status)`` (on the callback thread) once the job has finished.

        Returns:
            ``False`` for an unknown job id.
        """
        status = self.status(job_id)
        if status is None:
            return False
        if JobState(status["state"]).finished:
            if job_id in self._core().dirty:  # its end is not committed yet: wait for that
                self._unflushed.append((job_id, fn, status))
            else:
                self._notify(fn, status, job_id)
        else:
            self._waiters[job_id].append(fn)
        return True

    def queue_stats(self) -> dict[str, Any]:
        """``queue_size``, ``running_jobs``, ``completed_jobs``, ``failed_jobs`` and more."""
        core = self._core()
        return {
            "queue_size": core.queued,
            "running_jobs": len(core.running),
            "retrying_jobs": len(core.jobs) - len(core.running) - core.queued,
            "completed_jobs": core.completed,
            "failed_jobs": core.failed,
            "cancelled_jobs": core.cancelled,
            "idle_workers": len(core.idle),
            "draining": self.memory.draining,
        }

    def execution_stats(self, script_id: str | None = None) -> dict[str, Any]:
        """Per-script attempts, failures and durations (p50/p95/p99)."""
        return self.exec_stats.figures(script_id)

    def drain(self) -> int:
        """Stop starting jobs (graceful stop); returns how many are still running."""
        self.memory.draining = True
        return len(self._core().running)

    def retire_worker(self, name: str) -> bool:
        """Stop giving jobs to worker ``name`` (the pool shrinks); ``True`` once it is idle."""
        return self._core().retire(name)

    def worker_busy(self, name: str) -> bool:
        """Whether worker ``name`` still runs an attempt."""
        return self._core().busy(name)

    def enlist_worker(self, name: str) -> None:
        """Worker ``name`` (about to start, as the pool grows) may get jobs once ready."""
        self._core().enlist(name)

    def running_count(self) -> int:
        return len(self._core().running)

    def interrupt(self) -> None:
        """Stop the running attempts (the runtime stops, the drain is over): the reports of
        those stopped are ignored, and at the teardown their attempts end as ``stopped`` and
        their jobs are queued for the next start. Reports of attempts that ended all the
        same still count."""
        self.memory.interrupting = True
        for run in self._core().running.values():
            run.cancel.cancel()  # a python job on a worker thread cannot be stopped: it runs on

    def flush_stats(self) -> None:
        super().flush_stats()
        if self.core is not None:
            self.context.directory.tell("stats", JobFigures(self.queue_stats()))

    # --- events (tell) ----------------------------------------------------------------

    def _handle_receive(self, message: Any) -> Any:
        try:
            return super()._handle_receive(message)
        finally:
            core = self.core
            if core is not None and (core.dirty or core.added or self._unflushed) and (
                    len(core.dirty) + len(core.added) >= FLUSH_BATCH or self.actor_inbox.empty()):
                self._commit_soon(core)

    def _commit_soon(self, core: SchedulerCore) -> None:
        """Commit now, or at the end of the commit window while attempts are running; or
        within ``JOURNALLED_COMMIT_DELAY`` when all that is pending is new jobs from the
        submit journal and their starts: those are on disk already (the journal, the
        workers' start marks), and the commit of the next other change usually carries
        them. (An end, a cancel or a retry of such a job is not on disk: it is committed
        as any other change.)"""
        now = time.monotonic()
        changes = len(core.dirty) + len(core.added)
        if core.added and not self._unflushed and changes < FLUSH_BATCH and all(
                job_id in core.added and record.state is JobState.RUNNING for job_id, record in core.dirty.items()):
            self._commit_by(now + JOURNALLED_COMMIT_DELAY)
            return
        wait = self._last_commit + COMMIT_WINDOW - now
        if not changes or not core.running or wait <= 0 or changes >= FLUSH_BATCH:
            self._flush_quietly()
        else:
            self._commit_by(now + wait)

    def _commit_by(self, due: float) -> None:
        """Make sure a commit comes by ``due``: a timer already armed for sooner will do."""
        if self._commit_due is not None and self._commit_due <= due:
            return
        self._commit_due = due
        me = self.actor_ref
        self._commit_clock.call_later(due - time.monotonic(), lambda: _tell(me, FlushDue()))

    def _flush_quietly(self) -> None:
        """Flush; a store that fails is logged and the changes stay pending for the next
        commit, instead of turning the answer to whatever was asked into an error (a
        submit that failed this way would still have been accepted)."""
        try:
            self._flush()
        except ActorRuntimeError as e:
            logger.error("scheduler: %d job changes not written yet, trying again in %g s: %s",
                         len(self._core().dirty), FLUSH_RETRY, e)
            if not self._flush_retry_armed:
                self._flush_retry_armed = True
                me = self.actor_ref
                self.context.clock.call_later(FLUSH_RETRY, lambda: _tell(me, FlushDue()))

    def on_receive(self, message: Any) -> Any:
        core = self._core()
        if isinstance(message, AcceptJobs):  # an ask: the answer is the ids
            return self._accept(list(message.jobs), message.priority, message.max_retries, message.callback,
                                message.on_done)
        if isinstance(message, Submitted):
            self._accept_submitted(message.record, message.script)
        elif isinstance(message, JobFinished):
            run = core.running.get(message.job_id)
            if self.memory.interrupting and run is not None and message.result.get("status") == "cancelled":
                return None  # stopped by interrupt(): the teardown queues it for the next start
            if run is not None and run.attempt == message.attempt:
                self._deadlines.pop(message.job_id, None)
            elif self._cancelled_busy.get(message.job_id, ("", "", 0, 0.0))[2] == message.attempt:
                del self._cancelled_busy[message.job_id]  # the cancelled attempt returned after all
                self._deadlines.pop(message.job_id, None)
            result = message.result
            record = core.jobs.get(message.job_id)
            if record is not None and run is not None and run.attempt == message.attempt:
                # Only the report of the attempt in flight counts: not one about a job
                # already closed (cancelled), nor one sent again after a scheduler restart.
                self.exec_stats.add(record.script_id, result.get("duration", 0.0), result.get("status") == "succeeded")
            # Only the current instance of a worker frees it: a replaced (hung) one reports late.
            ref = self._worker_refs.get(message.worker)
            current = ref is not None and ref.actor_urn == message.urn
            self._outcome(message.job_id, core.finished(message.job_id, message.attempt, result,
                                                        message.worker if current else None))
            self._dispatch()
        elif isinstance(message, JobProgress):
            if core.progress(message.job_id, message.attempt, message.fraction, message.message):
                callback = self._progress_callbacks.get(message.job_id)
                if callback is not None:
                    self._callbacks.post(callback, message.job_id, message.fraction, message.message,
                                         job_id=message.job_id)
        elif isinstance(message, WorkerReady):
            if message.urn in self.memory.gone_workers:
                return None  # an instance given up on, answering a ReportReady on its way out
            # The ref comes with the message: a new instance may say it is ready
            # before the supervisor has put it in the directory.
            self._worker_refs[message.worker] = message.ref
            core.worker_ready(message.worker)
            self._dispatch()
        elif isinstance(message, RetryDue):
            self._timers.pop(message.job_id, None)
            if core.retry_due(message.job_id):
                self._dispatch()
        elif isinstance(message, ForgetWaiter):
            # A tell: whatever it carries must not raise here (that would be a crash).
            waiters = self._waiters.get(message.job_id) if isinstance(message.job_id, str) else None
            if waiters and message.fn in waiters:
                waiters.remove(message.fn)
                if not waiters:
                    del self._waiters[message.job_id]
        elif isinstance(message, DeadlinePassed):
            self._deadlines_due()
        elif isinstance(message, FlushDue):
            self._flush_retry_armed = False
            if self._commit_due is not None and self._commit_due <= time.monotonic():
                self._commit_due = None  # that timer has fired (a later one may still come)
            self._flush_quietly()
        elif isinstance(message, ChildDown):
            self._worker_refs.pop(message.name, None)
            if message.urn:
                self.memory.gone_workers.add(message.urn)
            job_id = core.worker_lost(message.name)
            if job_id is not None:
                self._cancel_timer(job_id)
                self._abandon(job_id, f"worker {message.name} failed: {message.error}")
                self._dispatch()
        else:
            return super().on_receive(message)
        return None

    # --- internals --------------------------------------------------------------------

    def _flush(self) -> None:
        """Commit the pending changes, then run the waiters of the jobs they finished."""
        if self.core is not None:
            self.core.flush()
            self._last_commit = time.monotonic()
            if self._journalled and self._journal is not None:  # in the store now: the journal may let go
                self._journal.committed(self._journalled)
                self._journalled = 0
        self._post_unflushed()

    def _post_unflushed(self) -> None:
        waiting, self._unflushed = self._unflushed, []
        for job_id, fn, status in waiting:
            self._notify(fn, status, job_id)

    def _notify(self, fn: Callable[[dict[str, Any]], Any], status: dict[str, Any], job_id: str) -> None:
        # The runtime's own waiters run here (no hop, no queue behind user code) unless
        # the job still has progress callbacks queued: they come after those.
        self._callbacks.post(fn, status, job_id=job_id, inline=getattr(fn, "runs_inline", False) is True)

    def _worker_alive(self, worker: str) -> bool:
        ref = self._worker_refs.get(worker)
        current = self.context.directory.get(worker)
        return ref is not None and ref.is_alive() and (current is None or current.actor_urn == ref.actor_urn)

    def _timeout_of(self, script_id: str) -> float:
        """How long an attempt may take before its worker counts as hung (less ``HANG_GRACE``)."""
        script = self._scripts.get(script_id)
        if script is None:
            return 60.0  # the registry's default timeout
        if script.kind == "python" and script.options.get("isolation", "thread") == "process":
            return script.timeout + START_TIMEOUT  # a new host's start does not count against the timeout
        return script.timeout

    def _core(self) -> SchedulerCore:
        if self.core is None:
            raise ActorRuntimeError("the scheduler is not started")
        return self.core

    def _remember(self, script: Script) -> None:
        """Keep ``script`` as the latest version of its id, with its retry policy: its own
        ``retry_backoff`` (checked by the registry), else the runtime's settings."""
        core = self._core()
        if self._scripts.get(script.id) is script and script.id in core.policies:
            return  # this version is known already (the usual case: every submit comes here)
        self._scripts[script.id] = script
        backoff = script.options.get("retry_backoff") or {}
        settings = self.context.settings
        minimum = float(backoff.get("min", settings.retry_backoff_min))
        core.policies[script.id] = RetryPolicy(
            minimum,
            float(backoff.get("max", max(settings.retry_backoff_max, minimum))),  # an own min above it: its own
            **({"rng": self._rng} if self._rng else {}),
        )

    def _load_scripts(self, script_ids: list[str]) -> None:
        """Scripts of recovered jobs come from the registry file (no ask to the cache); while
        the file is invalid (an edit in progress), from what this process knew of them."""
        if not script_ids:
            return
        registry: Mapping[str, Script] | None = None
        try:
            registry = load_registry(self.context.settings.registry_path)
        except ActorRuntimeError as e:
            logger.warning("cannot read the registry for recovered jobs, using the scripts known before: %s", e)
        for script_id in set(script_ids):
            script = self._scripts.get(script_id) if registry is None else registry.get(script_id)
            if script is not None:
                self._remember(script)

    def _dispatch(self, commit: list[str] | None = None) -> None:
        """Start what the idle workers can take.

        Args:
            commit: the jobs of a submit: commit first whatever happens (they must be
                stored before it answers). Dispatching before that commit writes a job
                that starts at once in its ``running`` state: one commit, not two.

        Raises:
            StoreError: the commit of a submit failed (the submit fails; nothing started).
        """
        core = self._core()
        starts = [] if self.memory.draining else core.dispatch()
        if commit is not None:
            try:
                self._flush()
            except ActorRuntimeError:
                core.reject(commit)  # not stored: not accepted, and none of it starts
                raise
        while starts:
            if self._marks is None and any(self._in_process(s.record.script_id) for s in starts):
                # A job run inside this process can kill it: its attempt must be on disk before
                # it starts, or a job that crashes the runtime would never use up its retries.
                # (With start marks, the worker marks the start itself: runtime/start_marks.py.)
                self._flush_quietly()
            freed = False  # a start ended on the spot gives its worker back: pair it again
            for start in starts:
                record = start.record
                script = self._script_now(record.script_id)
                error = None if script is not None else f"script {record.script_id!r} is no longer in the registry"
                if script is not None and self._checked_with.get(record.id) is not script:
                    try:  # another version than the one its arguments were checked against
                        record.arguments = validate_arguments(script, record.arguments)
                        self._checked_with[record.id] = script
                    except InvalidArguments as e:  # names the argument and its type, never its value
                        error = f"{e} (the script changed since the job was submitted)"
                if error is not None:  # for good: a retry would find the same registry
                    self._outcome(record.id, core.finished(record.id, start.attempt,
                                                           {"status": "failed", "error": error, **NOT_RETRYABLE}))
                    freed = True
                    continue
                assert script is not None
                if not self._tell_worker(start.worker, RunJob(record.id, start.attempt, script,
                                                              record.arguments, start.cancel, self.actor_ref)):
                    self._outcome(record.id, core.abandon(record.id, f"worker {start.worker} is gone"))
                    core.worker_lost(start.worker)
                    continue
                self._arm_deadline(record.id, start.attempt, self._timeout_of(script.id))
            starts = core.dispatch() if freed and not self.memory.draining else []
        if not self._deadlines:  # nothing runs: nothing to watch
            self._stop_deadline_timer()

    def _script_now(self, script_id: str) -> Script | None:
        """The script a starting job runs: the registry's version now (``None``: removed);
        the version known before while the registry cannot be read at all."""
        known = self._scripts.get(script_id)
        if self._current is None:
            return known
        try:
            script = self._current(script_id)
        except ActorRuntimeError as e:
            logger.warning("cannot read the registry, starting %r as known before: %s", script_id, e)
            return known
        if script is not known:
            if script is None:
                self._scripts.pop(script_id, None)
            else:
                self._remember(script)
        return script

    def _in_process(self, script_id: str) -> bool:
        script = self._scripts.get(script_id)
        return (script is not None and script.kind == "python"
                and script.options.get("isolation", "thread") == "thread")

    def _tell_worker(self, worker: str, message: RunJob) -> bool:
        return tell_ref(self._worker_refs.get(worker) or self.context.directory.get(worker), message)

    def _arm_deadline(self, job_id: str, attempt: int, timeout: float) -> None:
        due = self.context.clock.monotonic() + max(0.0, timeout + HANG_GRACE)
        self._deadlines[job_id] = (due, attempt)
        if self._deadline_timer is None or due < self._deadline_due:
            self._arm_deadline_timer(due)

    def _arm_deadline_timer(self, due: float) -> None:
        self._stop_deadline_timer()
        me = self.actor_ref
        clock = self.context.clock
        self._deadline_due = due
        self._deadline_timer = clock.call_later(due - clock.monotonic(), lambda: _tell(me, DeadlinePassed()))

    def _stop_deadline_timer(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _cancel_timer(self, job_id: str) -> None:
        """Forget the job's deadline and cancel its retry timer (the job ended or was lost)."""
        self._deadlines.pop(job_id, None)
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def _deadlines_due(self) -> None:
        """Give up the attempts past their deadline; arm the timer for the next one."""
        if self.memory.interrupting:  # the runtime stops: what still runs is queued at the teardown
            return
        now = self.context.clock.monotonic()
        for job_id, (due, attempt) in list(self._deadlines.items()):
            if due <= now:
                del self._deadlines[job_id]
                self._hung(job_id, attempt)
        # Re-armed from scratch: the jobs dispatched meanwhile may have armed it, and
        # this message may come from a timer already replaced.
        if self._deadlines:
            self._arm_deadline_timer(min(due for due, _ in self._deadlines.values()))
        else:
            self._stop_deadline_timer()

    def _hung(self, job_id: str, attempt: int) -> None:
        core = self._core()
        run = core.running.get(job_id)
        if run is None or run.attempt != attempt:
            cancelled = self._cancelled_busy.pop(job_id, None)
            if cancelled is not None and cancelled[2] == attempt and core.busy(cancelled[0]):
                ref = self._worker_refs.get(cancelled[0]) or self.context.directory.get(cancelled[0])
                if ref is not None and ref.actor_urn == cancelled[1]:  # not an instance that replaced it since
                    self._replace_hung(cancelled[0], job_id, attempt)  # the job itself has ended
                    self._dispatch()
            return
        run.cancel.cancel()
        error = self._replace_hung(run.worker, job_id, attempt)
        self._abandon(job_id, error)
        self._dispatch()

    def _replace_hung(self, worker: str, job_id: str, attempt: int) -> str:
        """Give up on a worker still running an attempt past its deadline; have the
        supervisor replace it. Returns the error that names it."""
        ref = self._worker_refs.pop(worker, None) or self.context.directory.get(worker)
        if ref is not None:
            self.memory.gone_workers.add(ref.actor_urn)
        error = f"worker {worker} hung: attempt {attempt} outlived its deadline"
        logger.warning("job %s: %s", job_id, error)
        self._core().worker_lost(worker)
        if ref is not None:
            self.context.directory.tell(self.context.supervisor, ReplaceChild(worker, ref.actor_urn, error))
        return error

    def _abandon(self, job_id: str, error: str) -> None:
        """End a running attempt that ran but will not report (its worker hung or died): a
        failed attempt, counted in the execution figures as one that reported would be."""
        core = self._core()
        run, record = core.running.get(job_id), core.jobs.get(job_id)
        if run is not None and record is not None:
            self.exec_stats.add(record.script_id, max(0.0, time.time() - run.started_at), False)
        self._outcome(job_id, core.abandon(job_id, error))

    def _outcome(self, job_id: str, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        if outcome.state is JobState.RETRYING and outcome.retry_in is not None:
            self._arm_retry(job_id, outcome.retry_in)
            logger.info("job %s: attempt failed, retry in %.2f s", job_id, outcome.retry_in)
        elif outcome.state.finished:
            self._ended(job_id, outcome.record)

    def _arm_retry(self, job_id: str, delay: float) -> None:
        me = self.actor_ref
        self._timers[job_id] = self.context.clock.call_later(delay, lambda: _tell(me, RetryDue(job_id)))

    def _ended(self, job_id: str, record: JobRecord | None) -> None:
        self._progress_callbacks.pop(job_id, None)
        self._checked_with.pop(job_id, None)
        waiters = self._waiters.pop(job_id, [])
        if waiters:
            status = job_status(record) if record is not None else self.status(job_id)
            if status is None:
                return
            # Held back until the final state is committed: a waiter must never see
            # an ending that a crash could undo. Each waiter gets a dict of its own: one
            # may change what it was given.
            self._unflushed.extend((job_id, fn, status if i == 0 else _copy_json(status))
                                   for i, fn in enumerate(waiters))


def _tell(ref: Any, message: Any) -> None:
    if not tell_ref(ref, message):
        logger.debug("dropped %r: scheduler stopped", message)
