"""The actors of the runtime's tree, one module each."""

from __future__ import annotations

from actors.base import ActorContext, Directory, SupervisedActor
from actors.cache import CacheActor
from actors.stats import StatsActor
from actors.supervisor import SupervisorActor
from actors.watcher import WatcherActor

__all__ = [
    "ActorContext",
    "CacheActor",
    "Directory",
    "StatsActor",
    "SupervisedActor",
    "SupervisorActor",
    "WatcherActor",
]
