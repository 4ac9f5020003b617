"""The statistics accumulator (plain logic): the StatsActor feeds it events."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from runtime.messages import (
    ActorCounted,
    CacheFigures,
    ChildRestarted,
    JobFigures,
    PoolFigures,
    RegistryLoaded,
    RegistryRejected,
    WatcherStarted,
)

__all__ = ["StatsAccumulator"]


class StatsAccumulator:
    """Counters fed by events; ``snapshot()`` is a plain JSON-ready dict."""

    def __init__(self) -> None:
        self.messages: defaultdict[str, int] = defaultdict(int)
        self.restarts: defaultdict[str, int] = defaultdict(int)
        self.last_failure: dict[str, str] = {}
        self.cache: dict[str, Any] = {}
        self.registry: dict[str, Any] = {"reloads": 0, "errors": 0, "last_error": None, "scripts": None}
        self.watcher: dict[str, Any] = {"backend": None, "reason": ""}
        self.jobs: dict[str, Any] = {}
        self.pools: dict[str, Any] = {}

    def apply(self, event: Any) -> bool:
        """Fold one event in; ``False`` when the event is not a stats event."""
        if isinstance(event, ActorCounted):
            self.messages[event.name] += event.messages
        elif isinstance(event, ChildRestarted):
            self.restarts[event.name] += 1
            self.last_failure[event.name] = event.error
        elif isinstance(event, CacheFigures):
            self.cache = dict(event.figures)
        elif isinstance(event, RegistryLoaded):
            self.registry["reloads"] += 1
            self.registry["scripts"] = event.scripts
        elif isinstance(event, RegistryRejected):
            self.registry["errors"] += 1
            self.registry["last_error"] = event.error
        elif isinstance(event, JobFigures):
            self.jobs = dict(event.figures)
        elif isinstance(event, PoolFigures):
            self.pools = dict(event.figures)
        elif isinstance(event, WatcherStarted):
            self.watcher = {"backend": event.backend, "reason": event.reason}
        else:
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        names = sorted(set(self.messages) | set(self.restarts))
        return {
            "actors": {
                name: {
                    "messages": self.messages.get(name, 0),
                    "restarts": self.restarts.get(name, 0),
                    "last_failure": self.last_failure.get(name),
                }
                for name in names
            },
            "restarts": sum(self.restarts.values()),
            "cache": dict(self.cache),
            "registry": dict(self.registry),
            "watcher": dict(self.watcher),
            "jobs": dict(self.jobs),
            "pools": dict(self.pools),
        }
