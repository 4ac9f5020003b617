"""Messages that cross actor boundaries: frozen, slotted dataclasses.

Commands are imperative (``InjectFault``), events past tense (``RegistryChanged``).
Lookups that need an answer are proxy calls (``ask``); everything here is sent
with ``tell`` unless its docstring says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ActorCounted",
    "CacheFigures",
    "ChildFailed",
    "ChildRestarted",
    "ChildStarted",
    "FacadeHits",
    "FileChanged",
    "InjectFault",
    "PollRegistry",
    "RegistryChanged",
    "RegistryLoaded",
    "RegistryRejected",
    "RestartChild",
    "WatcherStarted",
]


# --- supervision -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """A supervised child finished ``on_start``; sent by the child to its supervisor."""

    name: str
    urn: str


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A supervised child died of an exception (in ``on_start`` or a handler).

    Attributes:
        name: the child's name in the supervisor.
        urn: the dead instance, so a late report about an old instance is ignored.
        error: ``repr`` of the exception.
    """

    name: str
    urn: str
    error: str


@dataclass(frozen=True, slots=True)
class RestartChild:
    """Timer → supervisor: the backoff delay of ``name`` is over, start it again."""

    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class InjectFault:
    """Test harness → any supervised actor: raise on receipt.

    Attributes:
        reason: the exception's message.
        exit: raise ``SystemExit`` (a ``BaseException``) instead of ``InjectedFault``.
    """

    reason: str = "injected fault"
    exit: bool = False


# --- registry and watcher --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileChanged:
    """Watcher backend → WatcherActor: an event about the registry's file name."""

    mask: str


@dataclass(frozen=True, slots=True)
class PollRegistry:
    """Timer → WatcherActor (polling backend): compare the file's stamp with the last one."""


@dataclass(frozen=True, slots=True)
class RegistryChanged:
    """WatcherActor → CacheActor: the registry file was written or replaced."""

    path: str
    detected_at: float


# --- stats events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildRestarted:
    """Supervisor → StatsActor: ``name`` failed with ``error`` and is being restarted."""

    name: str
    error: str
    restarts: int


@dataclass(frozen=True, slots=True)
class ActorCounted:
    """Any supervised actor → StatsActor: messages handled since its last report."""

    name: str
    messages: int


@dataclass(frozen=True, slots=True)
class CacheFigures:
    """CacheActor → StatsActor: the cache's counters as they are now."""

    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FacadeHits:
    """A cache facade → CacheActor: its cumulative hits served from the published snapshot.

    Attributes:
        facade: which facade (hits of several facades add up).
        total: every hit this facade served so far (a total, so a late or repeated
            report can never count twice).
        recent: ids hit lately, to refresh their recency in the LRU.
    """

    facade: int
    total: int
    recent: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistryLoaded:
    """CacheActor → StatsActor: a new version of the registry was read and accepted."""

    path: str
    scripts: int


@dataclass(frozen=True, slots=True)
class RegistryRejected:
    """CacheActor → StatsActor: the registry file is invalid; the last good one stays."""

    path: str
    error: str


@dataclass(frozen=True, slots=True)
class WatcherStarted:
    """WatcherActor → StatsActor: which backend watches the registry."""

    backend: str
    reason: str = ""
