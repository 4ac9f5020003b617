"""The specification's facade: ``init_cache`` and the objects it returns.

The facade runs an embedded :class:`~runtime.runtime.Runtime`. A warm lookup
reads the CacheActor's published immutable snapshot instead of asking the actor
(a dict lookup rather than a message round trip); the hits are reported to the
actor in batches, and always before ``get_stats`` answers, so the figures stay
exact and the cache's state stays the actor's own.
"""

from __future__ import annotations

import os
from typing import Any

from runtime.errors import ConfigError
from runtime.registry import Script
from runtime.runtime import Runtime
from runtime.store import MemoryStore

__all__ = ["RegistryCache", "init_cache"]

class RegistryCache:
    """A registry cache backed by a running runtime (see :func:`init_cache`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def get_script(self, script_id: str) -> Script:
        """The registry entry ``script_id``.

        Raises:
            ScriptNotFound: no such script.
            RuntimeStopped: the runtime behind this cache is stopped.
        """
        return self.runtime.script(script_id)

    def get_stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``evictions``, ``hit_rate``, ``memory_usage`` (bytes) and
        more, counting every lookup made before this call (by the runtime's jobs too)."""
        return self.runtime.cache_stats()

    def close(self) -> None:
        """Stop the runtime behind this cache."""
        self.runtime.stop()

    def __enter__(self) -> RegistryCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def init_cache(
    registry_path: str | os.PathLike[str] = "registry.json",
    cache_size: int | None = None,
    redis_url: str | None = None,
    **settings: Any,
) -> RegistryCache:
    """Start a runtime on ``registry_path`` and return its cache.

    The runtime behind a cache keeps no job store on disk and runs one idle worker: the
    job store folder belongs to the runtime that runs jobs, and ``init_queue`` or
    ``ToolExecutionService`` in the same process must be able to claim it.

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
    settings.setdefault("store_factory", MemoryStore)
    settings.setdefault("job_concurrency", 1)
    return RegistryCache(Runtime.start(registry_path, cache_size=cache_size, **settings))
