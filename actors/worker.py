"""WorkerActor: runs one job attempt at a time, on its own thread, and reports back."""

from __future__ import annotations

import logging
from typing import Any

from runtime.executors import CommandExecution, ExecutionResult, run_python
from runtime.messages import JobFinished, JobProgress, JobStarted, ReportReady, RunJob, WorkerReady

from actors.base import SupervisedActor

__all__ = ["WorkerActor"]

logger = logging.getLogger(__name__)


class WorkerActor(SupervisedActor):
    """Takes ``RunJob`` and answers ``JobStarted``, ``JobProgress`` and ``JobFinished``.

    A worker runs its attempt inside its handler: the scheduler sends a job only
    to an idle worker, so nothing waits behind it. A command attempt is cancelled
    through the handle sent in ``JobStarted`` (it kills the process group), not
    through this actor's inbox.
    """

    def setup(self) -> None:
        self._ready()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RunJob):
            self._run(message)  # its JobFinished frees this worker in the scheduler
        elif isinstance(message, ReportReady):
            self._ready()
        else:
            return super().on_receive(message)
        return None

    def _ready(self) -> None:
        self.context.directory.tell("scheduler", WorkerReady(self.name, self.actor_urn, self.actor_ref))

    def _run(self, job: RunJob) -> None:
        directory = self.context.directory

        def progress(fraction: float, message: str) -> None:
            directory.tell("scheduler", JobProgress(job.job_id, job.attempt, fraction, message))

        script = job.script
        logger.debug("worker %s runs job %s attempt %d (%s)", self.name, job.job_id, job.attempt, script.id)
        if script.kind == "command":
            execution = CommandExecution(script, job.arguments, on_progress=progress)
            directory.tell("scheduler", JobStarted(job.job_id, job.attempt, execution.cancel))
            result = execution.run()
        elif script.kind == "python":
            result = run_python(script, job.arguments, progress)
        else:
            result = ExecutionResult("failed", error=f"script {script.id!r}: kind {script.kind!r} cannot run yet")
        directory.tell("scheduler", JobFinished(job.job_id, job.attempt, self.name, result.to_dict(), self.actor_urn))
