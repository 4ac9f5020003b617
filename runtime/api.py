"""The specification's facade: ``init_cache`` and the objects it returns.

The facade runs an embedded :class:`~runtime.runtime.Runtime`. A warm lookup
reads the CacheActor's published immutable snapshot instead of asking the actor
(a dict lookup rather than a message round trip); the hits are reported to the
actor in batches, and always before ``get_stats`` answers, so the figures stay
exact and the cache's state stays the actor's own.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from typing import Any

from runtime.errors import ConfigError
from runtime.messages import FacadeHits
from runtime.registry import Script
from runtime.runtime import Runtime

__all__ = ["RegistryCache", "init_cache"]

#: Hits the facade serves before it reports them to the CacheActor.
HIT_BATCH = 256

_facade_ids = itertools.count(1)


def _count_value(counter: itertools.count[int]) -> int:
    """Read an ``itertools.count`` without advancing it.

    ``next()`` on a count is one atomic C call, which is why the facade counts
    hits with one: no lock and no lost increment across threads.
    """
    return int(repr(counter)[len("count("):-1])


class RegistryCache:
    """A registry cache backed by a running runtime (see :func:`init_cache`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._view = runtime.cache_view
        self._id = next(_facade_ids)
        self._hits = itertools.count()
        self._recent: deque[str] = deque(maxlen=HIT_BATCH)

    def get_script(self, script_id: str) -> Script:
        """The registry entry ``script_id``.

        Raises:
            ScriptNotFound: no such script.
            RuntimeStopped: the runtime behind this cache is stopped.
        """
        script = self._view.entries.get(script_id)
        if script is not None:
            served = next(self._hits) + 1
            self._recent.append(script_id)
            if served % HIT_BATCH == 0:
                self._report(served)
            return script
        return self.runtime.cache.get_script(script_id).get(timeout=self.runtime.settings.ask_timeout)

    def get_stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``evictions``, ``hit_rate``, ``memory_usage`` (bytes) and
        more, counting every lookup made before this call."""
        self._report(_count_value(self._hits))
        return dict(self.runtime.cache.stats().get(timeout=self.runtime.settings.ask_timeout))

    def close(self) -> None:
        """Stop the runtime behind this cache."""
        self.runtime.stop()

    def __enter__(self) -> RegistryCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _report(self, total: int) -> None:
        recent = tuple(self._recent.copy())  # deque.copy is one C call: safe against appends
        self.runtime.ref("cache").tell(FacadeHits(self._id, total, recent))


def init_cache(
    registry_path: str | os.PathLike[str] = "registry.json",
    cache_size: int | None = None,
    redis_url: str | None = None,
    **settings: Any,
) -> RegistryCache:
    """Start a runtime on ``registry_path`` and return its cache.

    Args:
        registry_path: the registry file.
        cache_size: most entries kept (else ``CACHE_SIZE``, else 100).
        redis_url: a Redis second level shared by several nodes.
        **settings: any other runtime setting (``cache_memory_mb``, ``watcher``, ...).

    Raises:
        RegistryError: the registry is invalid.
        ConfigError: an invalid setting.
    """
    if redis_url:
        raise ConfigError("redis_url: the Redis cache level is not available yet in this version")
    return RegistryCache(Runtime.start(registry_path, cache_size=cache_size, **settings))
