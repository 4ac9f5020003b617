from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from runtime.testing import require_service

pytest_plugins = ["runtime.testing"]


@pytest.fixture(autouse=True)
def _every_actor_stopped() -> Iterator[None]:
    """The actor registry is process-global: no test may leave an actor behind."""
    yield
    leaked = [str(ref) for ref in pykka.ActorRegistry.get_all()]
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    assert not leaked, f"actors left running after the test: {leaked}"


@pytest.fixture
def admin() -> Iterator[Any]:
    """A PostgreSQL connection of its own (autocommit), outside any pool, to set up and
    inspect what jobs did; skips when the server is down, fails under CI."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", connect_timeout=3)
    except psycopg2.OperationalError as e:
        require_service("PostgreSQL at 127.0.0.1:5432", e)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def names_table(admin: Any) -> Iterator[Callable[[str, list[str]], str]]:
    """``names_table(prefix, names)``: a fresh table ``(id serial, name text)`` holding
    ``names``; every table made is dropped after the test."""
    made: list[str] = []

    def make(prefix: str, names: list[str]) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, name text NOT NULL)")
            for value in names:
                cur.execute(f"INSERT INTO {name} (name) VALUES (%s)", (value,))
        made.append(name)
        return name

    yield make
    with admin.cursor() as cur:
        for name in made:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
