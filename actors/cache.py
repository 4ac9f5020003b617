"""CacheActor: owns the registry LRU and publishes an immutable view of it."""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runtime.messages import CacheFigures, FacadeHits, RegistryChanged
from runtime.registry import Script
from runtime.registry_cache import CacheMemory, CacheView, RegistryCacheCore

from actors.base import ActorContext, SupervisedActor

__all__ = ["CacheActor"]

logger = logging.getLogger(__name__)

#: The cache tells the StatsActor its figures after this many lookups (and on every change).
FIGURES_EVERY = 256


class CacheActor(SupervisedActor):
    """Serves ``get_script`` (ask) and takes ``RegistryChanged`` / ``FacadeHits`` (tell).

    Args:
        context: the actor's context.
        memory: counters and last good registry, carried across restarts.
        view: where the actor publishes its snapshot for the facades.
    """

    def __init__(self, context: ActorContext, memory: CacheMemory, view: CacheView) -> None:
        super().__init__(context)
        settings = context.settings
        self.core = RegistryCacheCore(
            Path(settings.registry_path), settings.cache_size, settings.cache_memory_bytes, memory
        )
        self.view = view
        self._since_figures = 0

    def setup(self) -> None:
        if self.core.memory.last_good is None:
            self.core.load()  # an instance must start with a good registry to fall back on
            self._tell_registry_events()
        self._publish()

    def teardown(self) -> None:
        self.core.memory.evictions_before += self.core.lru.evictions
        self.core.lru.evictions = 0
        self.view.entries = MappingProxyType({})

    # --- questions (ask / proxy) ------------------------------------------------------

    def get_script(self, script_id: str) -> Script:
        """The registry entry for ``script_id``.

        Raises:
            ScriptNotFound: no such script.
            RegistryError: the registry was never valid.
        """
        warm = script_id in self.core.lru
        try:
            script = self.core.lookup(script_id)
        finally:
            if not warm:
                self._publish()
                self._tell_registry_events()
        self._since_figures += 1
        if self._since_figures >= FIGURES_EVERY:
            self.flush_stats()
        return script

    def stats(self) -> dict[str, Any]:
        """The cache's figures: hits, misses, evictions, hit_rate, memory_usage and more."""
        return self.core.figures()

    def flush_stats(self) -> None:
        super().flush_stats()
        self._since_figures = 0
        self.context.directory.tell("stats", CacheFigures(self.core.figures()))

    # --- events (tell) ----------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RegistryChanged):
            accepted, changed = self.core.refresh()
            if changed:
                self._publish()
            if accepted:
                logger.info("registry %s reloaded; %d cached entries changed", message.path, len(changed))
            self._tell_registry_events()
            self.flush_stats()
        elif isinstance(message, FacadeHits):
            self.core.add_facade_hits(message.facade, message.total, message.recent)
        else:
            return super().on_receive(message)
        return None

    # --- internals --------------------------------------------------------------------

    def _publish(self) -> None:
        self.view.entries = MappingProxyType(self.core.lru.snapshot())

    def _tell_registry_events(self) -> None:
        for event in self.core.drain_events():
            self.context.directory.tell("stats", event)
