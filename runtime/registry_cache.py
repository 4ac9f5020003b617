"""The registry cache's plain logic: an LRU in front of the registry file, the last
good version of that file, and exact counters. The CacheActor wraps it."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runtime.errors import RegistryError, ScriptNotFound
from runtime.lru import LruCache
from runtime.messages import FacadeHits, RegistryLoaded, RegistryRejected
from runtime.registry import Registry, Script, parse_registry

__all__ = ["CacheMemory", "CacheView", "RegistryCacheCore"]

logger = logging.getLogger(__name__)


@dataclass
class CacheMemory:
    """What outlives one CacheActor instance: the counters and the last good registry.

    The supervisor's factory hands it to each new instance; only the live instance
    touches it.
    """

    hits: int = 0
    misses: int = 0
    invalidations: int = 0
    reloads: int = 0
    registry_errors: int = 0
    last_error: str | None = None
    last_good: bytes | None = None
    facade_hits: dict[int, int] = field(default_factory=dict)
    evictions_before: int = 0


class CacheView:
    """The cache's published, immutable snapshot: id -> Script.

    Only the CacheActor assigns ``entries`` (one atomic attribute store); facades
    read it without asking the actor, which is how a warm lookup through the
    facade costs a dict lookup instead of a message round trip.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: MappingProxyType[str, Script] = MappingProxyType({})


#: Hits served from the published view before they are reported to the CacheActor.
HIT_BATCH = 256

_counter_ids = itertools.count(1)


def _count_value(counter: itertools.count[int]) -> int:
    """Read an ``itertools.count`` without advancing it.

    ``next()`` on a count is one atomic C call, which is why hits are counted with
    one: no lock and no lost increment across threads.
    """
    return int(repr(counter)[len("count("):-1])


class ViewHits:
    """Counts the lookups served from a :class:`CacheView`, from any thread and without a
    lock, and reports them to the CacheActor (``report(FacadeHits)``) every ``HIT_BATCH``
    hits and on :meth:`flush`, so its figures stay exact and its state its own."""

    def __init__(self, report: Callable[[FacadeHits], None]) -> None:
        self._id = next(_counter_ids)
        self._hits = itertools.count()
        self._recent: deque[str] = deque(maxlen=HIT_BATCH)
        self._reported = 0
        self._report = report

    def hit(self, script_id: str) -> None:
        served = next(self._hits) + 1
        self._recent.append(script_id)
        if served % HIT_BATCH == 0:
            self._send(served)

    def flush(self) -> None:
        """Report every hit so far, if any came since the last report (a total: reporting
        twice never counts twice)."""
        total = _count_value(self._hits)
        if total != self._reported:
            self._send(total)

    def _send(self, total: int) -> None:
        recent = tuple(self._recent.copy())  # deque.copy is one C call: safe against appends
        self._reported = total  # threads may race here: at worst a total is sent again
        self._report(FacadeHits(self._id, total, recent))


class RegistryCacheCore:
    """LRU of registry entries; a miss reads and parses the registry file.

    Args:
        path: the registry file.
        max_entries: LRU bound by count.
        max_bytes: LRU bound by measured size.
        memory: counters and last good registry, carried across restarts.
    """

    def __init__(self, path: Path, max_entries: int, max_bytes: int, memory: CacheMemory) -> None:
        self.path = path
        self.lru = LruCache(max_entries, max_bytes)
        self.memory = memory
        self._events: list[RegistryLoaded | RegistryRejected] = []

    def drain_events(self) -> list[RegistryLoaded | RegistryRejected]:
        """Registry versions accepted or rejected since the last call (for the stats)."""
        events, self._events = self._events, []
        return events

    def load(self) -> Registry:
        """Read the file; on success it becomes the last good registry.

        Raises:
            RegistryError: invalid now and no good version was ever read.
        """
        try:
            data = self.path.read_bytes()
            registry = parse_registry(self.path, data)
        except (OSError, RegistryError) as e:
            self.memory.registry_errors += 1
            error = e if isinstance(e, RegistryError) else RegistryError(f"{self.path}: cannot read: {e}")
            self.memory.last_error = str(error)
            self._events.append(RegistryRejected(str(self.path), str(error)))
            if self.memory.last_good is None:
                raise error from e
            logger.warning("registry %s is invalid, keeping the last good one: %s", self.path, error)
            return parse_registry(self.path, self.memory.last_good)
        if data != self.memory.last_good:
            self.memory.last_good = data
            self.memory.reloads += 1
            self._events.append(RegistryLoaded(str(self.path), len(registry)))
        return registry

    def lookup(self, script_id: str) -> Script:
        """The entry for ``script_id``, from the LRU or (a miss) from the file.

        Raises:
            ScriptNotFound: no such script in the registry in force.
        """
        script = self.lru.get(script_id)
        if script is not None:
            self.memory.hits += 1
            return script
        self.memory.misses += 1
        registry = self.load()
        script = registry.get(script_id)
        if script is None:
            raise ScriptNotFound(script_id, str(self.path))
        self.lru.put(script_id, script)
        return script

    def refresh(self) -> tuple[bool, list[str]]:
        """The file changed: re-read it and drop or replace the entries that changed.

        Returns:
            whether the new file was accepted, and the ids whose cached entry changed.
        """
        errors_before = self.memory.registry_errors
        try:
            registry = self.load()
        except RegistryError:
            return False, []
        if self.memory.registry_errors != errors_before:
            return False, []
        changed = []
        for script_id in list(self.lru):
            new = registry.get(script_id)
            if new is None:
                self.lru.pop(script_id)
                changed.append(script_id)
            elif new != self.lru.get(script_id):
                self.lru.put(script_id, new)
                changed.append(script_id)
        self.memory.invalidations += len(changed)
        return True, changed

    def add_facade_hits(self, facade: int, total: int, recent: tuple[str, ...]) -> None:
        if total > self.memory.facade_hits.get(facade, 0):
            self.memory.facade_hits[facade] = total
        for script_id in recent:
            self.lru.touch(script_id)

    def figures(self) -> dict[str, Any]:
        """The counters as the specification names them, plus the cache's bounds."""
        hits = self.memory.hits + sum(self.memory.facade_hits.values())
        lookups = hits + self.memory.misses
        return {
            "hits": hits,
            "misses": self.memory.misses,
            "evictions": self.memory.evictions_before + self.lru.evictions,
            "hit_rate": hits / lookups if lookups else 0.0,
            "memory_usage": self.lru.bytes,
            "entries": len(self.lru),
            "max_entries": self.lru.max_entries,
            "max_bytes": self.lru.max_bytes,
            "invalidations": self.memory.invalidations,
            "reloads": self.memory.reloads,
            "registry_errors": self.memory.registry_errors,
            "last_registry_error": self.memory.last_error,
        }
