"""WorkerActor: runs one job attempt at a time, on its own thread, and reports back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from runtime.command_executor import CommandExecution
from runtime.errors import StoreError
from runtime.executors import MAX_NESTING, NOT_RETRYABLE, ExecutionResult, run_python, too_deep
from runtime.http_executor import HttpExecution
from runtime.messages import JobFinished, JobProgress, PoolFigures, ReportReady, RunJob, WorkerReady
from runtime.pools import ConnectionPools
from runtime.python_process import PythonProcess
from runtime.registry import Script
from runtime.start_marks import StartMarker

from actors.base import ActorContext, SupervisedActor, tell_ref

__all__ = ["WorkerActor"]

logger = logging.getLogger(__name__)


class _Execution(Protocol):
    def run(self) -> ExecutionResult: ...
    def cancel(self) -> None: ...


class WorkerActor(SupervisedActor):
    """Takes ``RunJob`` and answers ``JobProgress`` and ``JobFinished``.

    A worker runs its attempt inside its handler: the scheduler sends a job only
    to an idle worker, so nothing waits behind it. An attempt is cancelled through
    the job's ``CancelSlot``, where the worker attaches the execution's stop (it
    kills the process group, aborts the HTTP call or cancels the query), not
    through this actor's inbox.

    Args:
        context: the actor's context.
        pools: the runtime's connection pools, used by ``http`` and ``sql`` scripts.
        marks: the start marks folder: the start of each attempt is marked there
            first (``runtime/start_marks.py``).
    """

    def __init__(self, context: ActorContext, pools: ConnectionPools | None = None,
                 marks: Path | None = None) -> None:
        super().__init__(context)
        self.pools = pools or ConnectionPools()
        self._marks = marks
        self._marker: StartMarker | None = None
        self._python_process: PythonProcess | None = None  # this worker's host for isolated python jobs
        # The last report, sent again when a (restarted) scheduler asks who is ready: one
        # sent while no scheduler was listening is lost otherwise. Duplicates are ignored.
        self._last_report: JobFinished | None = None

    def setup(self) -> None:
        if self._marks is not None:
            try:
                self._marker = StartMarker(self._marks, self.name)
            except StoreError as e:  # a full or read-only disk must not stop the jobs: run them unmarked
                logger.error("worker %s runs its jobs without start marks: %s", self.name, e)
        self._ready()

    def teardown(self) -> None:
        if self._python_process is not None:
            self._python_process.close()
        if self._marker is not None:
            self._marker.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RunJob):
            self._run(message)  # its JobFinished frees this worker in the scheduler
        elif isinstance(message, ReportReady):
            if message.reply_to is None:
                if self._last_report is not None:
                    self.context.directory.tell("scheduler", self._last_report)
                self._ready()
            else:
                if self._last_report is not None:
                    tell_ref(message.reply_to, self._last_report)
                tell_ref(message.reply_to, self._ready_message())
        else:
            return super().on_receive(message)
        return None

    def _ready(self) -> None:
        self.context.directory.tell("scheduler", self._ready_message())

    def _ready_message(self) -> WorkerReady:
        return WorkerReady(self.name, self.actor_urn, self.actor_ref)

    def _run(self, job: RunJob) -> None:
        def report(message: JobProgress | JobFinished) -> None:
            # To the instance that sent the job (it may not be in the directory yet); if it
            # is gone, to its successor, which also asks for the last report when it starts.
            if not tell_ref(job.reply_to, message):
                self.context.directory.tell("scheduler", message)

        def progress(fraction: float, message: str) -> None:
            report(JobProgress(job.job_id, job.attempt, fraction, message))

        script = job.script
        logger.debug("worker %s runs job %s attempt %d (%s)", self.name, job.job_id, job.attempt, script.id)
        result = self._attempt(job, progress)
        # A python value is checked where it is made (run_python, the host); sql rows are not.
        if any(too_deep(value) for value in result.extra.values()):
            result = ExecutionResult("failed", result.exit_code, duration=result.duration,
                                     error=f"the result is nested more than {MAX_NESTING} levels deep")
        self._last_report = JobFinished(job.job_id, job.attempt, self.name, result.to_dict(), self.actor_urn)
        report(self._last_report)

    def _attempt(self, job: RunJob, progress: Any) -> ExecutionResult:
        script = job.script
        if script.kind == "python" and script.options.get("isolation", "thread") == "thread":
            if job.cancel.cancelled:  # cancelled after it was sent: a thread cannot be stopped once it runs
                return ExecutionResult("cancelled", error="cancelled before it started")
            self._mark(job)  # it could take the process down: mark its start first
            return run_python(script, job.arguments, progress)  # cancelled by its own checks only
        try:
            execution = self._execution(script, job, progress)
        except ImportError as e:  # only a missing optional extra gets here
            error = f"script {script.id!r}: {e.name or e} is not installed (pip install 'actor-runtime[postgres]')"
            return ExecutionResult("failed", error=error, extra=NOT_RETRYABLE)
        job.cancel.attach(execution.cancel)  # a cancel that came first stops it before it starts
        # Its start may not be in the store yet (a job from the submit journal starts before
        # the group commit that inserts it): the mark makes a kill of the process count it.
        self._mark(job)
        result = execution.run()
        if script.kind in ("http", "sql"):
            self.context.directory.tell("stats", PoolFigures(self.pools.figures()))
        return result

    def _mark(self, job: RunJob, pid: int | None = None) -> None:
        if self._marker is not None:
            try:
                self._marker.note(job.job_id, job.attempt, pid)
            except StoreError as e:  # defensive (a closed marker, an odd id): run it, unmarked
                logger.error("job %s runs without its start mark: %s", job.job_id, e)

    def _execution(self, script: Script, job: RunJob, progress: Any) -> _Execution:
        arguments = job.arguments
        if script.kind == "command":
            # Its child outlives this process if it is killed: marked, the next start stops it.
            on_start = None if self._marker is None else lambda pid: self._mark(job, pid)
            return CommandExecution(script, arguments, on_progress=progress, on_start=on_start)
        if script.kind == "http":
            return HttpExecution(script, arguments, self.pools.http, on_progress=progress)
        if script.kind == "sql":
            # Imported here: psycopg2 is the optional ``postgres`` extra, and a runtime
            # without sql scripts must start without it.
            from runtime.sql_executor import SqlExecution

            return SqlExecution(script, arguments, self.pools, on_progress=progress)
        return self._host().execution(script, arguments, on_progress=progress)

    def _host(self) -> PythonProcess:
        if self._python_process is None:
            self._python_process = PythonProcess()
        return self._python_process
