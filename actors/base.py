"""What every supervised actor shares: routing by name, failure reports, message
counts, fault injection, and containment of ``BaseException``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import pykka

from runtime.clock import Clock
from runtime.config import Settings
from runtime.errors import ActorRuntimeError, InjectedFault
from runtime.messages import ActorCounted, ChildFailed, ChildStarted, InjectFault

__all__ = ["ActorContext", "Directory", "SupervisedActor", "tell_ref"]

logger = logging.getLogger(__name__)

#: A supervised actor reports its message count to the stats after this many messages.
COUNT_BATCH = 256


class Directory:
    """Stable name -> current ``ActorRef``: a restarted actor is a new instance with a
    new ref, so everybody routes through this table.

    Only the supervisor writes it; it publishes a new immutable mapping on each
    change, so readers never see a half-made table.
    """

    def __init__(self) -> None:
        self._refs: Mapping[str, pykka.ActorRef[Any]] = MappingProxyType({})
        self._changed = threading.Condition()

    def get(self, name: str) -> pykka.ActorRef[Any] | None:
        return self._refs.get(name)

    def names(self) -> list[str]:
        return list(self._refs)

    def set(self, name: str, ref: pykka.ActorRef[Any] | None) -> None:
        refs = dict(self._refs)
        if ref is None:
            refs.pop(name, None)
        else:
            refs[name] = ref
        with self._changed:
            self._refs = MappingProxyType(refs)
            self._changed.notify_all()

    def wait_for(self, name: str, timeout: float) -> pykka.ActorRef[Any] | None:
        """The live ref of ``name``, waiting up to ``timeout`` while it restarts."""
        with self._changed:
            self._changed.wait_for(lambda: (r := self._refs.get(name)) is not None and r.is_alive(), timeout)
            return self._refs.get(name)

    def tell(self, name: str, message: Any) -> bool:
        """Tell the current ``name`` actor; ``False`` when it is not running (dropped)."""
        return tell_ref(self._refs.get(name), message)


def tell_ref(ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
    """Tell ``ref``; ``False`` (the message is dropped) when it is missing or dead."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ActorContext:
    """What the runtime gives each supervised actor.

    Attributes:
        name: the actor's stable name.
        settings: the runtime's settings.
        clock: time and delayed calls.
        directory: routing table of the actor tree.
        supervisor: name of the supervising actor in the directory.
    """

    name: str
    settings: Settings
    clock: Clock
    directory: Directory
    supervisor: str = "supervisor"


class _Crashed(ActorRuntimeError):
    """A ``BaseException`` raised by a handler, turned into an ordinary failure."""


class SupervisedActor(pykka.ThreadingActor):
    """Base of every actor in the tree.

    Subclasses put their start-up work in ``setup()`` and their clean-up in
    ``teardown()`` (called after a normal stop and after a failure alike).
    """

    # A forgotten runtime must not keep the process alive at exit: the Runtime
    # stops actors cleanly (also from atexit), so daemon threads lose nothing.
    use_daemon_thread = True

    def __init__(self, context: ActorContext) -> None:
        super().__init__()
        self.context = context
        self.name = context.name
        self._unreported = 0

    # --- hooks for subclasses ---------------------------------------------------------

    def setup(self) -> None:
        """Start-up work, run on the actor's thread before any message."""

    def teardown(self) -> None:
        """Release what ``setup`` took; must not raise."""

    # --- pykka hooks ------------------------------------------------------------------

    def on_start(self) -> None:
        try:
            self.setup()
        except Exception as e:
            # pykka neither calls on_failure nor tells anyone when on_start raises. Clean
            # up before reporting: the supervisor may start the next instance at once.
            self._safe_teardown()
            self._report_failure(e)
            raise
        self.context.directory.tell(self.context.supervisor, ChildStarted(self.name, self.actor_urn))

    def on_stop(self) -> None:
        self.flush_stats()
        self._safe_teardown()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._report_failure(exception_value)
        self._safe_teardown()

    def _handle_receive(self, message: Any) -> Any:
        self._unreported += 1
        if self._unreported >= COUNT_BATCH:
            self.flush_stats()
        try:
            if isinstance(message, InjectFault):
                if message.exit:
                    raise SystemExit(f"{message.reason} in {self.name}")
                raise InjectedFault(f"{message.reason} in {self.name}")
            return super()._handle_receive(message)
        except Exception:
            raise
        except BaseException as e:
            # pykka answers a BaseException by stopping every actor in the process;
            # here it is one actor's failure, handled by its supervisor.
            raise _Crashed(f"{type(e).__name__} raised in {self.name}: {e}") from e

    # --- shared behaviour -------------------------------------------------------------

    def flush_stats(self) -> None:
        """Report the messages handled since the last report to the StatsActor."""
        if self._unreported:
            count, self._unreported = self._unreported, 0
            self.context.directory.tell("stats", ActorCounted(self.name, count))

    def _report_failure(self, error: BaseException | None) -> None:
        logger.warning("actor %s failed: %r", self.name, error)
        self.context.directory.tell(self.context.supervisor, ChildFailed(self.name, self.actor_urn, repr(error)))

    def _safe_teardown(self) -> None:
        try:
            self.teardown()
        except Exception:
            logger.exception("actor %s: teardown failed", self.name)
