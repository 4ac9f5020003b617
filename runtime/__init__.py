"""An actor runtime that runs a registry of scripts as jobs.

The public names are re-exported here; the modules are named after their roles.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.api import RegistryCache, init_cache
    from runtime.clock import ManualClock, SystemClock
    from runtime.config import Settings, load_settings
    from runtime.errors import (
        ActorRuntimeError,
        ConfigError,
        InjectedFault,
        InvalidArguments,
        JobNotFound,
        PoolError,
        PoolTimeout,
        RegistryError,
        RuntimeStopped,
        ScriptNotFound,
        SupervisorEscalated,
    )
    from runtime.jobs_api import JobPriority, JobQueue, ToolExecutionService, init_queue
    from runtime.pools import ConnectionPools, HttpPool, PostgresPool
    from runtime.registry import ArgumentSpec, Registry, Script, load_registry
    from runtime.runtime import Runtime

# Imported on first use (PEP 562): a python job's host process imports
# ``runtime.executors`` and should not pay for the actors, pykka and asyncio.
_EXPORTS = {
    "ActorRuntimeError": "runtime.errors",
    "ArgumentSpec": "runtime.registry",
    "ConfigError": "runtime.errors",
    "ConnectionPools": "runtime.pools",
    "HttpPool": "runtime.pools",
    "InjectedFault": "runtime.errors",
    "InvalidArguments": "runtime.errors",
    "JobNotFound": "runtime.errors",
    "JobPriority": "runtime.jobs_api",
    "JobQueue": "runtime.jobs_api",
    "ManualClock": "runtime.clock",
    "PoolError": "runtime.errors",
    "PoolTimeout": "runtime.errors",
    "PostgresPool": "runtime.pools",
    "Registry": "runtime.registry",
    "RegistryCache": "runtime.api",
    "RegistryError": "runtime.errors",
    "Runtime": "runtime.runtime",
    "RuntimeStopped": "runtime.errors",
    "Script": "runtime.registry",
    "ScriptNotFound": "runtime.errors",
    "Settings": "runtime.config",
    "SupervisorEscalated": "runtime.errors",
    "SystemClock": "runtime.clock",
    "ToolExecutionService": "runtime.jobs_api",
    "init_cache": "runtime.api",
    "init_queue": "runtime.jobs_api",
    "load_registry": "runtime.registry",
    "load_settings": "runtime.config",
}

__all__ = [
    "ActorRuntimeError",
    "ArgumentSpec",
    "ConfigError",
    "ConnectionPools",
    "HttpPool",
    "InjectedFault",
    "InvalidArguments",
    "JobNotFound",
    "JobPriority",
    "JobQueue",
    "ManualClock",
    "PoolError",
    "PoolTimeout",
    "PostgresPool",
    "RegistryCache",
    "Registry",
    "RegistryError",
    "Runtime",
    "RuntimeStopped",
    "Script",
    "ScriptNotFound",
    "Settings",
    "SupervisorEscalated",
    "SystemClock",
    "ToolExecutionService",
    "init_cache",
    "init_queue",
    "load_registry",
    "load_settings",
]



def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


logging.getLogger(__name__).addHandler(logging.NullHandler())
logging.getLogger("actors").addHandler(logging.NullHandler())
