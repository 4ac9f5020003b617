"""Settings: read once at the edge (keyword arguments, then the environment, then
defaults), validated, and passed down as one frozen object."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.registry import MAX_TIMEOUT

__all__ = ["ENV_NAMES", "Settings", "load_settings"]

#: Settings that may come from the environment, by field name.
ENV_NAMES: dict[str, str] = {
    "registry_path": "REGISTRY_PATH",
    "cache_size": "CACHE_SIZE",
    "cache_memory_mb": "CACHE_MEMORY_MB",
    "job_concurrency": "JOB_CONCURRENCY",
    "job_storage_path": "JOB_STORAGE_PATH",
    "redis_url": "REDIS_URL",
    "database_url": "DATABASE_URL",
    "watcher": "WATCHER",
}

_WATCHERS = ("auto", "inotify", "polling")
#: Settings that are seconds: each is waited for, and a wait takes at most about a year.
_DURATIONS = frozenset({"poll_interval", "restart_window", "backoff_min", "backoff_max", "backoff_reset",
                        "ask_timeout", "retry_backoff_min", "retry_backoff_max", "drain_timeout"})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a runtime, with its default.

    Attributes:
        registry_path: the registry file (``REGISTRY_PATH``).
        cache_size: most registry entries the cache keeps (``CACHE_SIZE``); 0 keeps
            none, so every lookup reads the registry file.
        cache_memory_mb: most memory the cached entries may take, in MiB
            (``CACHE_MEMORY_MB``; fractions allowed).
        job_concurrency: number of workers (``JOB_CONCURRENCY``).
        job_storage_path: folder of the job store (``JOB_STORAGE_PATH``; by default
            ``.jobs`` beside the registry, so each registry has its own jobs).
        redis_url: Redis for distributed mode; ``None`` keeps everything local
            (``REDIS_URL``).
        database_url: a PostgreSQL DSN or URL for the ``default`` database pool of
            ``sql`` scripts (``DATABASE_URL``); it connects on first use. Without it,
            pools are made with ``ConnectionPools.init_postgres_pool``.
        watcher: ``auto`` (inotify, else polling), ``inotify`` or ``polling`` (``WATCHER``).
        poll_interval: seconds between two polls of the registry by the polling watcher.
        max_restarts: restart intensity: at most this many restarts of one child ...
        restart_window: ... within this many seconds; one more and the supervisor escalates.
        backoff_min: delay before a child's first restart, seconds.
        backoff_max: cap of the doubling restart delay, seconds.
        backoff_reset: a child quiet this long starts again from ``backoff_min``.
        ask_timeout: seconds any internal ``ask`` waits before giving up.
        max_retries: retries of a failed job when neither its script nor its
            submission says (the specification's default, 3).
        retry_backoff_min: delay before a job's first retry, seconds (doubles after).
        retry_backoff_max: cap of the delay between two attempts, seconds.
        drain_timeout: on a graceful stop, seconds running jobs get to finish.
    """

    registry_path: Path = Path("registry.json")
    cache_size: int = 100
    cache_memory_mb: float = 100.0
    job_concurrency: int = 4
    job_storage_path: Path | None = None
    redis_url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    database_url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    watcher: str = "auto"
    poll_interval: float = 0.5
    max_restarts: int = 5
    restart_window: float = 10.0
    backoff_min: float = 0.05
    backoff_max: float = 5.0
    backoff_reset: float = 30.0
    ask_timeout: float = 10.0
    max_retries: int = 3
    retry_backoff_min: float = 1.0
    retry_backoff_max: float = 60.0
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float" and isinstance(value, (int, float)) and not math.isfinite(value):
                raise ConfigError(f"setting {field.name} must be a finite number, got {value}")
            if field.name in _DURATIONS and isinstance(value, (int, float)) and value > MAX_TIMEOUT:
                raise ConfigError(f"setting {field.name} must be at most {MAX_TIMEOUT} seconds (a year), "
                                  f"got {value}")
        if self.backoff_reset < 0:
            raise ConfigError(f"setting backoff_reset must be 0 or more, got {self.backoff_reset}")
        for name in ("job_concurrency", "max_restarts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting {name} must be at least 1, got {getattr(self, name)}")
        if self.cache_size < 0:
            raise ConfigError(f"setting cache_size must be 0 (no caching) or more, got {self.cache_size}")
        for name in ("cache_memory_mb", "poll_interval", "restart_window", "ask_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting {name} must be positive, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ConfigError(f"setting max_retries must be 0 or more, got {self.max_retries}")
        if self.drain_timeout < 0:
            raise ConfigError(f"setting drain_timeout must be 0 or more, got {self.drain_timeout}")
        if not 0 <= self.retry_backoff_min <= self.retry_backoff_max:
            raise ConfigError(
                f"settings retry_backoff_min ({self.retry_backoff_min}) and retry_backoff_max "
                f"({self.retry_backoff_max}) must satisfy 0 <= retry_backoff_min <= retry_backoff_max"
            )
        if not 0 <= self.backoff_min <= self.backoff_max:
            raise ConfigError(
                f"settings backoff_min ({self.backoff_min}) and backoff_max ({self.backoff_max}) "
                "must satisfy 0 <= backoff_min <= backoff_max"
            )
        if self.watcher not in _WATCHERS:
            raise ConfigError(f"setting watcher must be one of {', '.join(_WATCHERS)}, got {self.watcher!r}")

    @property
    def cache_memory_bytes(self) -> int:
        return int(self.cache_memory_mb * 1024 * 1024)


def _convert(name: str, raw: Any, source: str) -> Any:
    kind = str(Settings.__dataclass_fields__[name].type)  # annotations are strings here
    try:
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind in ("Path", "Path | None"):
            return Path(raw)
        if kind == "str | None":
            return None if raw in (None, "") else str(raw)
        return str(raw)
    except (TypeError, ValueError):
        expected = {"int": "an integer", "float": "a number"}.get(kind, "a string")
        raise ConfigError(f"setting {name} ({source}) must be {expected}, got {raw!r}") from None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from keyword arguments, then the environment, then defaults.

    Args:
        env: the environment to read (``os.environ`` when ``None``).
        **overrides: settings by field name; ``None`` values are ignored.

    Raises:
        ConfigError: an unknown setting or an invalid value, named.
    """
    env = os.environ if env is None else env
    fields = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for name, env_name in ENV_NAMES.items():
        if env.get(env_name, "") != "":
            values[name] = _convert(name, env[env_name], f"environment variable {env_name}")
    for name, raw in overrides.items():
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}; known: {', '.join(sorted(fields))}")
        if raw is not None:
            values[name] = _convert(name, raw, "keyword argument")
    return Settings(**values)
