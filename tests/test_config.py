from __future__ import annotations

from pathlib import Path

import pytest

from runtime import ConfigError, load_settings


def test_keyword_beats_environment_beats_default() -> None:
    env = {"CACHE_SIZE": "7", "CACHE_MEMORY_MB": "0.5", "JOB_CONCURRENCY": "3", "JOB_STORAGE_PATH": "/tmp/j"}
    settings = load_settings(env, cache_size=9)
    assert settings.cache_size == 9
    assert settings.cache_memory_mb == 0.5
    assert settings.cache_memory_bytes == 512 * 1024
    assert settings.job_concurrency == 3
    assert settings.job_storage_path == Path("/tmp/j")
    assert load_settings({}).cache_size == 100


@pytest.mark.parametrize(
    ("env", "kwargs", "needle"),
    [
        ({"CACHE_SIZE": "lots"}, {}, "cache_size (environment variable CACHE_SIZE) must be an integer"),
        ({"CACHE_SIZE": "-1"}, {}, "cache_size must be 0 (no caching) or more"),
        ({}, {"cache_memory_mb": -1}, "cache_memory_mb must be positive"),
        ({}, {"watcher": "magic"}, "watcher must be one of"),
        ({}, {"cache_sise": 3}, "unknown setting 'cache_sise'"),
        ({}, {"cache_size": True}, "must be an integer"),
        ({"CACHE_MEMORY_MB": "nan"}, {}, "cache_memory_mb must be a finite number, got nan"),
        ({}, {"cache_memory_mb": float("inf")}, "cache_memory_mb must be a finite number"),
        ({}, {"drain_timeout": float("nan")}, "drain_timeout must be a finite number"),
        ({}, {"ask_timeout": 1e12}, "ask_timeout must be at most 31622400 seconds (a year)"),
        ({}, {"backoff_reset": -1}, "backoff_reset must be 0 or more"),
    ],
)
def test_invalid_settings_are_named(env: dict[str, str], kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env, **kwargs)


def test_redis_url_is_not_in_the_repr() -> None:
    settings = load_settings({"REDIS_URL": "redis://:s3cret@localhost:6379"})
    assert settings.redis_url == "redis://:s3cret@localhost:6379"
    assert "s3cret" not in repr(settings)


def test_database_url_is_read_from_the_environment_and_not_in_the_repr() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://app:pw@db/test"})
    assert settings.database_url == "postgresql://app:pw@db/test"
    assert "pw" not in repr(settings)
