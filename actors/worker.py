"""WorkerActor: runs one job attempt at a time, on its own thread, and reports back."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Protocol

from runtime.command_executor import CommandExecution
from runtime.executors import ExecutionResult, run_python
from runtime.http_executor import HttpExecution
from runtime.messages import JobFinished, JobProgress, PoolFigures, ReportReady, RunJob, WorkerReady
from runtime.pools import ConnectionPools
from runtime.python_process import PythonProcess
from runtime.registry import Script

from actors.base import ActorContext, SupervisedActor, tell_ref

__all__ = ["WorkerActor"]

logger = logging.getLogger(__name__)

#: Reports a worker keeps to send again to a restarted scheduler.
REPORTS_KEPT = 8


class _Execution(Protocol):
    def run(self) -> ExecutionResult: ...
    def cancel(self) -> None: ...


class WorkerActor(SupervisedActor):
    """Takes ``RunJob`` and answers ``JobProgress`` and ``JobFinished``.

    A worker runs its attempt inside its handler. Behind it waits at most one job
    sent ahead (child processes, HTTP, SQL, isolated python: see
    ``SchedulerCore.dispatch``), which it starts the moment the attempt ends, unless
    the scheduler took it back meanwhile (its ``AttemptHandle`` says which of the two
    came first). An attempt is cancelled through
    the job's ``AttemptHandle``, where the worker attaches the execution's stop (it
    kills the process group, aborts the HTTP call or cancels the query), not
    through this actor's inbox.

    Args:
        context: the actor's context.
        pools: the runtime's connection pools, used by ``http`` and ``sql`` scripts.
    """

    def __init__(self, context: ActorContext, pools: ConnectionPools | None = None) -> None:
        super().__init__(context)
        self.pools = pools or ConnectionPools()
        self._python_process: PythonProcess | None = None  # this worker's host for isolated python jobs
        # The last reports, sent again when a (restarted) scheduler asks who is ready: one
        # sent while no scheduler was listening is lost otherwise. Duplicates are ignored.
        # More than one: with a job sent ahead, the reports of two attempts (or, after
        # take-backs that came too late, a few) may be unread when the scheduler fails.
        self._reports: deque[JobFinished] = deque(maxlen=REPORTS_KEPT)

    def setup(self) -> None:
        self._ready()

    def teardown(self) -> None:
        if self._python_process is not None:
            self._python_process.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RunJob):
            if message.handle.claim():  # else the scheduler took back a job sent ahead
                self._run(message)  # its JobFinished frees this worker in the scheduler
        elif isinstance(message, ReportReady):
            if message.reply_to is None:
                for report in self._reports:
                    self.context.directory.tell("scheduler", report)
                self._ready()
            else:
                for report in self._reports:
                    tell_ref(message.reply_to, report)
                tell_ref(message.reply_to, self._ready_message())
        else:
            return super().on_receive(message)
        return None

    def _ready(self) -> None:
        self.context.directory.tell("scheduler", self._ready_message())

    def _ready_message(self) -> WorkerReady:
        return WorkerReady(self.name, self.actor_urn, self.actor_ref)

    def _run(self, job: RunJob) -> None:
        directory = self.context.directory

        def progress(fraction: float, message: str) -> None:
            directory.tell("scheduler", JobProgress(job.job_id, job.attempt, fraction, message))

        script = job.script
        logger.debug("worker %s runs job %s attempt %d (%s)", self.name, job.job_id, job.attempt, script.id)
        result = self._attempt(job, progress)
        report = JobFinished(job.job_id, job.attempt, self.name, result.to_dict(), self.actor_urn)
        self._reports.append(report)
        directory.tell("scheduler", report)

    def _attempt(self, job: RunJob, progress: Any) -> ExecutionResult:
        script = job.script
        if script.kind == "python" and script.options.get("isolation", "thread") == "thread":
            return run_python(script, job.arguments, progress)  # cancelled by its own checks only
        try:
            execution = self._execution(script, job.arguments, progress)
        except ImportError as e:  # only a missing optional extra gets here
            error = f"script {script.id!r}: {e.name or e} is not installed (pip install 'actor-runtime[postgres]')"
            return ExecutionResult("failed", error=error, extra={"retryable": False})
        job.handle.attach(execution.cancel)  # a cancel that came first stops it before it starts
        result = execution.run()
        if script.kind in ("http", "sql"):
            self.context.directory.tell("stats", PoolFigures(self.pools.figures()))
        return result

    def _execution(self, script: Script, arguments: dict[str, Any], progress: Any) -> _Execution:
        if script.kind == "command":
            return CommandExecution(script, arguments, on_progress=progress)
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
