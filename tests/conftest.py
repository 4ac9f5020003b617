from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest

pytest_plugins = ["runtime.testing"]


@pytest.fixture(autouse=True)
def _every_actor_stopped() -> Iterator[None]:
    """The actor registry is process-global: no test may leave an actor behind."""
    yield
    leaked = [str(ref) for ref in pykka.ActorRegistry.get_all()]
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
    assert not leaked, f"actors left running after the test: {leaked}"
