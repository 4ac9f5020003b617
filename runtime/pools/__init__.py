"""The connection pools the runtime owns for ``http`` and ``sql`` scripts.

``ConnectionPools`` is what the specification calls ``tes.connection_pool``: one
urllib3 ``PoolManager`` (``HttpPool``) and any number of named PostgreSQL pools
(``PostgresPool``) that jobs borrow connections from.

These objects are shared by the worker threads, so unlike the rest of the
runtime (where every piece of state has one owning actor) they lock: a
connection is a resource that is handed from thread to thread, and a pool that
answered through an actor would add a message round trip to every query.

Secrets never leave this package: descriptions are built from the parsed
settings without the password, DSNs shown anywhere go through ``redact_dsn``,
and connection errors are re-raised ``from None`` with the password scrubbed.

Modules: ``postgres`` (``PostgresPool``) and ``postgres_connection`` (what is done
with one of its connections), ``http`` (``HttpPool``), ``redaction``
(``redact_dsn``) and ``validation`` (the settings checks both kinds share).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from runtime.errors import PoolError
from runtime.pools.http import HttpPool
from runtime.pools.postgres import PostgresPool
from runtime.pools.redaction import redact_dsn

__all__ = ["ConnectionPools", "HttpPool", "PostgresPool", "redact_dsn"]

logger = logging.getLogger(__name__)


class ConnectionPools:
    """What ``tes.connection_pool`` is: the runtime's pools.

    One HTTP pool, created with defaults on first use, and named database pools
    created by ``init_postgres_pool``. Thread-safe: pools are created and replaced
    under a lock, looked up from any worker thread.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._postgres: dict[str, PostgresPool] = {}
        self._http: HttpPool | None = None

    def init_postgres_pool(
        self,
        host: str | None = None,
        database: str | None = None,
        minconn: int = 1,
        maxconn: int = 20,
        *,
        name: str = "default",
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        dsn: str | None = None,
        acquire_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        **connect_kwargs: Any,
    ) -> PostgresPool:
        """Create (or replace) the database pool ``name``; see ``PostgresPool``.

        A replaced pool is closed: its idle connections now, its borrowed ones as
        they come back, so jobs in flight finish undisturbed.

        Raises:
            ConfigError: a setting is invalid.
            PoolError: the first ``minconn`` connections cannot be opened.
        """
        pool = PostgresPool(
            name,
            dsn=dsn,
            host=host,
            port=port,
            database=database,
            user=user,
            password=password,
            minconn=minconn,
            maxconn=maxconn,
            acquire_timeout=acquire_timeout,
            connect_timeout=connect_timeout,
            env=self._env,
            **connect_kwargs,
        )
        with self._lock:
            old = self._postgres.get(name)
            self._postgres[name] = pool
        if old is not None:
            logger.info("database pool %r replaced: %s -> %s", name, old.description, pool.description)
            old.close()
        return pool

    def init_http_pool(self, **options: Any) -> HttpPool:
        """Create (or replace) the HTTP pool; ``options`` are ``HttpPool``'s."""
        pool = HttpPool(**options)
        with self._lock:
            old, self._http = self._http, pool
        if old is not None:
            old.close()
        return pool

    @property
    def http(self) -> HttpPool:
        """The HTTP pool, created with the defaults on first use."""
        with self._lock:
            if self._http is None:
                self._http = HttpPool()
            return self._http

    def postgres(self, name: str = "default") -> PostgresPool:
        """The database pool ``name``.

        Raises:
            PoolError: no pool of that name was created.
        """
        with self._lock:
            pool = self._postgres.get(name)
        if pool is None:
            raise PoolError(
                f"no database pool named {name!r}; create it with "
                f"connection_pool.init_postgres_pool(name={name!r}, ...)"
            )
        return pool

    def names(self) -> list[str]:
        """The database pools' names, sorted."""
        with self._lock:
            return sorted(self._postgres)

    def figures(self) -> dict[str, Any]:
        """Every pool's figures: ``{"http": ... or None, "postgres": {name: ...}}``."""
        with self._lock:
            http, postgres = self._http, dict(self._postgres)
        return {
            "http": None if http is None else http.figures(),
            "postgres": {name: pool.figures() for name, pool in sorted(postgres.items())},
        }

    def close(self) -> None:
        """Close every pool and forget them; pools can be created again afterwards."""
        with self._lock:
            http, postgres = self._http, list(self._postgres.values())
            self._http = None
            self._postgres.clear()
        for pool in postgres:
            pool.close()
        if http is not None:
            http.close()
