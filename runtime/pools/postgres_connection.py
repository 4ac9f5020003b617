"""One PostgreSQL connection as the pool sees it: how to open it, how to name it
without its password, how to tell it is healthy, and how to make it clean again.

psycopg2 is the optional ``postgres`` extra: it is imported on first use, so the
runtime runs without it until a database pool is made.
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import Mapping
from types import ModuleType
from typing import Any
from urllib.parse import quote

from runtime.errors import ConfigError, PoolError
from runtime.pools.redaction import redact_dsn

__all__ = ["TRANSACTION_IDLE", "close_quietly", "connect_params", "describe_target", "import_psycopg2", "ping",
           "readable", "reset_session"]

logger = logging.getLogger(__name__)

#: Connection keywords filled from the standard libpq environment variables.
_PG_ENVIRONMENT = (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"),
                   ("user", "PGUSER"), ("password", "PGPASSWORD"))

TRANSACTION_IDLE = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE, without importing psycopg2


def import_psycopg2() -> ModuleType:
    """psycopg2, imported on first use: it is the optional ``postgres`` extra."""
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - the test extras install it
        raise PoolError(
            "database pools need psycopg2: pip install 'actor-runtime[postgres]' (psycopg2-binary)"
        ) from None
    return psycopg2


def connect_params(
    owner: str,
    dsn: str | None,
    explicit: Mapping[str, Any],
    env: Mapping[str, str],
    connect_timeout: float,
    connect_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The keywords for ``psycopg2.connect``: explicit values beat the DSN, which
    beats the PG* environment of ``env``.

    The environment is resolved here rather than left to libpq because libpq reads
    the process environment, not the ``env`` the caller gave.
    """
    params: dict[str, Any] = {}
    if dsn:
        psycopg2 = import_psycopg2()
        try:
            params.update(psycopg2.extensions.parse_dsn(dsn))
        except psycopg2.Error:
            # libpq's message quotes the faulty fragment, which may be the password.
            raise ConfigError(f"{owner}: invalid dsn {redact_dsn(dsn)!r}") from None
    if "database" in params:
        params.setdefault("dbname", params.pop("database"))
    params.update((key, value) for key, value in explicit.items() if value is not None)
    for key, variable in _PG_ENVIRONMENT:
        if key not in params and env.get(variable):
            params[key] = env[variable]
    # libpq takes whole seconds (and treats anything below 2 as 2).
    params["connect_timeout"] = math.ceil(connect_timeout)
    params.update(connect_kwargs)
    return params


def describe_target(params: Mapping[str, Any]) -> str:
    """The target as a libpq URL without the password: ``postgresql://user@host:port/db``.

    A missing host stays empty (libpq's default Unix socket), a missing port shows
    libpq's default 5432, a missing database the user's name, as libpq would.
    """
    host = str(params.get("host") or params.get("hostaddr") or "")
    if host.startswith("/"):
        host = quote(host, safe="")
    elif ":" in host and "," not in host:
        host = f"[{host}]"
    user = params.get("user")
    userinfo = f"{quote(str(user), safe='')}@" if user else ""
    database = params.get("dbname") or user or ""
    return f"postgresql://{userinfo}{host}:{params.get('port') or 5432}/{quote(str(database), safe='')}"


def readable(conn: Any) -> bool:
    """Whether the server sent something to an idle connection (poll, not select:
    select fails on descriptors above 1023)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def ping(conn: Any) -> bool:
    """A ``SELECT 1`` round trip, outside any transaction."""
    psycopg2 = import_psycopg2()
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        conn.autocommit = False
    except psycopg2.Error:
        return False
    return True


def reset_session(conn: Any) -> bool:
    """Make a returned connection as good as new; False if it is broken.

    ``DISCARD ALL`` rather than ``conn.reset()`` (``ABORT; RESET ALL``): at the
    same cost (36 µs, one round trip) it also drops what one job could leave for
    the next: temporary tables, prepared statements, ``LISTEN``s, advisory locks.
    ``set_session`` then undoes what the job set on the Python side (autocommit,
    isolation level, read-only), which psycopg2 sends with each ``BEGIN``.
    """
    if conn.closed:
        return False
    psycopg2 = import_psycopg2()
    try:
        if conn.info.transaction_status != TRANSACTION_IDLE:
            conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("DISCARD ALL")
        conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT", deferrable="DEFAULT", autocommit=False)
    except psycopg2.Error:
        return False
    return not conn.closed and conn.info.transaction_status == TRANSACTION_IDLE


def close_quietly(conn: Any) -> None:
    """Close a connection that is being thrown away; it may already be dead."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone either way
        logger.debug("closing a discarded connection failed", exc_info=True)
