"""StatsActor: folds events told by the other actors into counters."""

from __future__ import annotations

from typing import Any

from runtime.messages import ActorCounted
from runtime.stats import StatsAccumulator

from actors.base import ActorContext, SupervisedActor

__all__ = ["StatsActor"]


class StatsActor(SupervisedActor):
    """Fed by ``tell`` only; ``snapshot()`` is its one question.

    Args:
        context: the actor's context.
        accumulator: the counters; the supervisor's factory hands the same one to a
            restarted instance, so a crash of this actor does not reset the figures.
    """

    def __init__(self, context: ActorContext, accumulator: StatsAccumulator) -> None:
        super().__init__(context)
        self.accumulator = accumulator

    def on_receive(self, message: Any) -> Any:
        if not self.accumulator.apply(message):
            return super().on_receive(message)
        return None

    def flush_stats(self) -> None:
        # Its own count goes straight into the accumulator, not through its inbox.
        if self._unreported:
            count, self._unreported = self._unreported, 0
            self.accumulator.apply(ActorCounted(self.name, count))

    def snapshot(self) -> dict[str, Any]:
        """Every figure, as a JSON-ready dict."""
        self.flush_stats()
        return self.accumulator.snapshot()
