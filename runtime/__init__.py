"""An actor runtime that runs a registry of scripts as jobs.

The public names are re-exported here; the modules are named after their roles.
"""

from __future__ import annotations

import logging

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

logging.getLogger(__name__).addHandler(logging.NullHandler())
logging.getLogger("actors").addHandler(logging.NullHandler())
