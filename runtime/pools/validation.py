"""Checks of the pools' settings, shared by the PostgreSQL and HTTP pools.

A wrong setting is the caller's mistake: ``ConfigError`` naming the pool (``owner``),
the setting and the value given.
"""

from __future__ import annotations

import math

from runtime.errors import ConfigError

__all__ = ["check_int", "check_positive"]


def check_int(owner: str, setting: str, value: object, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``.

    Raises:
        ConfigError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: {setting} must be an integer >= {minimum}, not {value!r}")
    return value


def check_positive(owner: str, setting: str, value: object) -> float:
    """``value`` as a float if it is a positive, finite number of seconds.

    Raises:
        ConfigError: it is not (a bool, NaN and infinity are refused too).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{owner}: {setting} must be a positive number of seconds, not {value!r}")
    return float(value)
