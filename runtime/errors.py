"""The project's exception tree: one root, a branch per subsystem.

User mistakes (a bad registry, an unknown script, a bad setting) derive from
``ValueError`` or ``LookupError`` as well, so callers can catch them the usual way.
"""

from __future__ import annotations

__all__ = [
    "JobNotFound",
    "ActorRuntimeError",
    "PoolError",
    "PoolTimeout",
    "ConfigError",
    "InjectedFault",
    "InvalidArguments",
    "RegistryError",
    "RuntimeStopped",
    "ScriptNotFound",
    "StoreError",
    "SupervisorEscalated",
]


class ActorRuntimeError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(ActorRuntimeError, ValueError):
    """A setting (keyword argument or environment variable) has an invalid value."""


class RegistryError(ActorRuntimeError, ValueError):
    """The registry file is unreadable or invalid; the message names file, script and field."""


class ScriptNotFound(ActorRuntimeError, LookupError):
    """No script with the given id is registered."""

    def __init__(self, script_id: str, registry: str | None = None) -> None:
        where = f" in {registry}" if registry else ""
        super().__init__(f"unknown script {script_id!r}{where}")
        self.script_id = script_id

    def __reduce__(self) -> tuple[type[ScriptNotFound], tuple[str]]:
        return (type(self), (self.script_id,))


class InjectedFault(ActorRuntimeError):
    """Raised by an actor on purpose, by the test harness's fault injection."""


class SupervisorEscalated(ActorRuntimeError):
    """A child failed more often than the restart intensity allows; the runtime stopped."""


class RuntimeStopped(ActorRuntimeError):
    """The runtime is not running (stopped, or stopped by an escalation)."""


class StoreError(ActorRuntimeError):
    """The job store failed: its file is unopenable, corrupt or unwritable, or a
    record cannot be stored (unknown or duplicate id, not JSON). The message names
    the store's file."""


class InvalidArguments(ActorRuntimeError, ValueError):
    """A job's arguments do not match its script's declared arguments; the message names both."""


class JobNotFound(ActorRuntimeError, LookupError):
    """No job with the given id is known (in memory or in the store)."""

    def __init__(self, job_id: str) -> None:
        # Not the value of a non-string "id" (a status dict passed by mistake): it may hold secrets.
        super().__init__(f"unknown job {job_id!r}" if isinstance(job_id, str)
                         else f"unknown job: a job id is a string, got {type(job_id).__name__}")
        self.job_id = job_id

    def __reduce__(self) -> tuple[type[JobNotFound], tuple[str]]:
        return (type(self), (self.job_id,))


class PoolError(ActorRuntimeError):
    """A connection pool is unknown, closed or misconfigured, or cannot connect.
    Messages name the pool and never carry a password (DSNs are redacted)."""


class PoolTimeout(PoolError, TimeoutError):
    """Every connection of a pool stayed in use for the whole wait."""
