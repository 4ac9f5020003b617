"""Messages that cross actor boundaries: frozen, slotted dataclasses.

Commands are imperative (``InjectFault``), events past tense (``RegistryChanged``).
Lookups that need an answer are proxy calls (``ask``); everything here is sent
with ``tell`` unless its docstring says otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AcceptJobs",
    "ActorCounted",
    "CancelSlot",
    "ChildDown",
    "DeadlinePassed",
    "JobFigures",
    "JobFinished",
    "JobProgress",
    "PoolFigures",
    "ReplaceChild",
    "ReportReady",
    "RetryDue",
    "FlushDue",
    "ForgetWaiter",
    "RunJob",
    "Submitted",
    "WorkerReady",
    "CacheFigures",
    "ChildFailed",
    "ChildRestarted",
    "ChildStarted",
    "FacadeHits",
    "FileChanged",
    "InjectFault",
    "PollRegistry",
    "RegistryChanged",
    "RegistryLoaded",
    "RegistryRejected",
    "RestartChild",
    "WatcherStarted",
]


# --- supervision -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """A supervised child finished ``on_start``; sent by the child to its supervisor."""

    name: str
    urn: str


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A supervised child died of an exception (in ``on_start`` or a handler).

    Attributes:
        name: the child's name in the supervisor.
        urn: the dead instance, so a late report about an old instance is ignored.
        error: ``repr`` of the exception.
    """

    name: str
    urn: str
    error: str


@dataclass(frozen=True, slots=True)
class RestartChild:
    """Timer → supervisor: the backoff delay of ``name`` is over, start it again."""

    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class InjectFault:
    """Test harness → any supervised actor: raise on receipt.

    Attributes:
        reason: the exception's message.
        exit: raise ``SystemExit`` (a ``BaseException``) instead of ``InjectedFault``.
    """

    reason: str = "injected fault"
    exit: bool = False


@dataclass(frozen=True, slots=True)
class ChildDown:
    """Supervisor → SchedulerActor: child ``name`` (its instance ``urn``) failed with ``error``."""

    name: str
    error: str
    urn: str = ""


@dataclass(frozen=True, slots=True)
class ReplaceChild:
    """SchedulerActor → Supervisor: the instance ``urn`` of ``name`` hangs; replace it."""

    name: str
    urn: str
    error: str


# --- jobs ------------------------------------------------------------------------------


class CancelSlot:
    """How the scheduler stops an attempt running on a worker's thread.

    The scheduler makes one per attempt, keeps it and sends it along in ``RunJob``;
    the worker attaches the execution's own ``cancel`` once it has one. A cancel that
    comes first is remembered, and the attach then cancels at once. So a start needs
    no message back. The lock only orders ``cancel`` against ``attach``: the two
    actors share nothing else through it.
    """

    __slots__ = ("_lock", "_stop", "cancelled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the attempt (from any thread); idempotent."""
        with self._lock:
            self.cancelled = True
            stop = self._stop
        if stop is not None:
            stop()

    def attach(self, stop: Callable[[], None]) -> None:
        """The worker: ``stop`` stops the attempt; it is called now if a cancel came first."""
        with self._lock:
            self._stop = stop
            cancelled = self.cancelled
        if cancelled:
            stop()


@dataclass(frozen=True, slots=True)
class AcceptJobs:
    """Runtime → SchedulerActor (ask): accept jobs the runtime has checked already, in one
    commit; the answer is their ids. (The scheduler's proxy ``submit`` checks what it is
    given itself: this message spares the runtime's own submits a second lookup.)

    Attributes:
        jobs: ``(script, validated arguments)`` pairs.
        priority: 0, 1 or 2.
        max_retries: the submission's retry limit, or ``None``.
        callback: each job's progress callback, or ``None``.
        on_done: each job's completion callback, or ``None``.
    """

    jobs: tuple[tuple[Any, dict[str, Any]], ...]
    priority: int
    max_retries: int | None = None
    callback: Callable[..., Any] | None = None
    on_done: Callable[[dict[str, Any]], Any] | None = None


@dataclass(frozen=True, slots=True)
class ForgetWaiter:
    """Runtime → SchedulerActor: ``fn`` no longer waits for ``job_id`` (its wait timed out or
    was cancelled): drop it rather than keep it until the job ends."""

    job_id: str
    fn: Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Submitted:
    """Runtime.submit → SchedulerActor: accept a job already in the submit journal.

    Attributes:
        record: the new job's record (queued; the scheduler gives it its ``seq``).
        script: the registry entry, as validated at submission.
    """

    record: Any
    script: Any


@dataclass(frozen=True, slots=True)
class RunJob:
    """SchedulerActor → WorkerActor: run attempt ``attempt`` of a job.

    Attributes:
        job_id: the job.
        attempt: attempt number, 1 for the first; reports carry it back so a late
            report about an attempt already given up on is ignored.
        script: the registry entry, as validated at submission.
        arguments: validated arguments (JSON values).
        cancel: where the worker attaches the attempt's stop (see ``CancelSlot``).
        reply_to: the scheduler instance that sent it, where the reports go: one that
            has just started may not be in the directory yet (``None``: the directory's).
    """

    job_id: str
    attempt: int
    script: Any
    arguments: dict[str, Any]
    cancel: CancelSlot
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """WorkerActor → SchedulerActor: idle and ready for a job; ``ref`` is where to send it."""

    worker: str
    urn: str
    ref: Any = None


@dataclass(frozen=True, slots=True)
class ReportReady:
    """SchedulerActor → WorkerActor (after a scheduler restart): say ``WorkerReady`` when idle,
    after repeating the last ``JobFinished``, to ``reply_to``: the new scheduler asks from its
    start-up, before the supervisor has put it in the directory."""

    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class JobProgress:
    """WorkerActor → SchedulerActor: the script reported progress."""

    job_id: str
    attempt: int
    fraction: float
    message: str


@dataclass(frozen=True, slots=True)
class JobFinished:
    """WorkerActor → SchedulerActor: the attempt ended with ``result`` (an ExecutionResult dict)."""

    job_id: str
    attempt: int
    worker: str
    result: dict[str, Any]
    urn: str = ""


@dataclass(frozen=True, slots=True)
class FlushDue:
    """Timer → SchedulerActor: commit the pending changes (the commit window is over, or
    a failed commit is to be tried again)."""


@dataclass(frozen=True, slots=True)
class RetryDue:
    """Timer → SchedulerActor: the backoff before the next attempt of ``job_id`` is over."""

    job_id: str


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """Timer → SchedulerActor: the earliest deadline of the running attempts is here
    (the scheduler keeps one timer for all of them and checks which are over)."""


@dataclass(frozen=True, slots=True)
class JobFigures:
    """SchedulerActor → StatsActor: the queue's figures as they are now."""

    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """WorkerActor → StatsActor: the connection pools' figures after an ``http``/``sql`` attempt
    (``ConnectionPools.figures()``: no credentials in them)."""

    figures: dict[str, Any] = field(default_factory=dict)


# --- registry and watcher --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileChanged:
    """Watcher backend → WatcherActor: an event about the registry's file name."""

    mask: str


@dataclass(frozen=True, slots=True)
class PollRegistry:
    """Timer → WatcherActor (polling backend): compare the file's stamp with the last one."""


@dataclass(frozen=True, slots=True)
class RegistryChanged:
    """WatcherActor → CacheActor: the registry file was written or replaced."""

    path: str
    detected_at: float


# --- stats events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildRestarted:
    """Supervisor → StatsActor: ``name`` failed with ``error`` and is being restarted."""

    name: str
    error: str
    restarts: int


@dataclass(frozen=True, slots=True)
class ActorCounted:
    """Any supervised actor → StatsActor: messages handled since its last report."""

    name: str
    messages: int


@dataclass(frozen=True, slots=True)
class CacheFigures:
    """CacheActor → StatsActor: the cache's counters as they are now."""

    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FacadeHits:
    """A cache facade → CacheActor: its cumulative hits served from the published snapshot.

    Attributes:
        facade: which facade (hits of several facades add up).
        total: every hit this facade served so far (a total, so a late or repeated
            report can never count twice).
        recent: ids hit lately, to refresh their recency in the LRU.
    """

    facade: int
    total: int
    recent: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistryLoaded:
    """CacheActor → StatsActor: a new version of the registry was read and accepted."""

    path: str
    scripts: int


@dataclass(frozen=True, slots=True)
class RegistryRejected:
    """CacheActor → StatsActor: the registry file is invalid; the last good one stays."""

    path: str
    error: str


@dataclass(frozen=True, slots=True)
class WatcherStarted:
    """WatcherActor → StatsActor: which backend watches the registry."""

    backend: str
    reason: str = ""
