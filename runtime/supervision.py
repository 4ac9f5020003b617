"""Supervision as data and plain decisions: child specs, restart intensity, backoff.

Nothing here has threads or actors; the supervisor actor calls it with ``now``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Backoff", "ChildSpec", "RestartPolicy"]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How the supervisor starts one child.

    Attributes:
        name: stable name, used to route messages to whichever instance is current.
        start: starts a new instance and returns its ``ActorRef``; called with the name.
        restart: ``permanent`` (always restarted), ``transient`` (restarted after a
            failure, not after a normal stop) or ``temporary`` (never restarted).
    """

    name: str
    start: Callable[[], Any]
    restart: str = "permanent"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt ``k`` waits up to ``minimum * 2**k``.

    The delay is drawn from [d/2, d] ("equal jitter"), so restarts of many children
    that failed together spread out but never come sooner than half the nominal delay.
    """

    minimum: float
    maximum: float
    rng: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        nominal = min(self.maximum, self.minimum * (2 ** min(attempt, 62)))
        return nominal / 2 + self.rng() * nominal / 2


@dataclass
class _ChildHistory:
    failures: deque[float] = field(default_factory=deque)
    consecutive: int = 0
    last_failure: float | None = None
    restarts: int = 0


class RestartPolicy:
    """Decides, per child, whether a failure gets a restart (after which delay) or escalates.

    Args:
        max_restarts: at most this many restarts of one child ...
        window: ... within this many seconds; the next failure escalates.
        backoff: delay between a failure and the restart.
        reset_after: a child that ran this long without failing starts its backoff over.
    """

    def __init__(self, max_restarts: int, window: float, backoff: Backoff, reset_after: float) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.backoff = backoff
        self.reset_after = reset_after
        self._history: dict[str, _ChildHistory] = {}

    def on_failure(self, name: str, now: float) -> float | None:
        """Record a failure of ``name`` at ``now``.

        Returns:
            the delay before restarting it, or ``None`` to escalate.
        """
        history = self._history.setdefault(name, _ChildHistory())
        if history.last_failure is not None and now - history.last_failure >= self.reset_after:
            history.consecutive = 0
        history.last_failure = now
        while history.failures and now - history.failures[0] > self.window:
            history.failures.popleft()
        history.failures.append(now)
        if len(history.failures) > self.max_restarts:
            return None
        delay = self.backoff.delay(history.consecutive)
        history.consecutive += 1
        history.restarts += 1
        return delay

    def restarts(self, name: str) -> int:
        """How many restarts of ``name`` were granted so far."""
        history = self._history.get(name)
        return history.restarts if history else 0
