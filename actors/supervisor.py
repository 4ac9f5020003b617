"""The Supervisor: starts its children in order, restarts a failed one (one-for-one)
after a backoff, and escalates past the restart intensity."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from runtime.clock import Clock, TimerHandle
from runtime.messages import ChildDown, ChildFailed, ChildRestarted, ChildStarted, ReplaceChild, RestartChild
from runtime.supervision import ChildSpec, RestartPolicy

from actors.base import Directory

__all__ = ["SupervisorActor"]

logger = logging.getLogger(__name__)


class SupervisorActor(pykka.ThreadingActor):
    """Owns the children's lifecycle; the Runtime is its only caller.

    Args:
        specs: children, in start order (stopped in reverse).
        policy: restart intensity and backoff.
        clock: schedules the delayed restarts.
        directory: the routing table this actor keeps current.
        ready: set once every child has started for the first time.
        on_escalate: called (on this actor's thread, so it must not block) with the
            error message when a child failed more often than the policy allows.
    """

    use_daemon_thread = True

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        policy: RestartPolicy,
        clock: Clock,
        directory: Directory,
        ready: threading.Event,
        on_escalate: Callable[[str], None],
    ) -> None:
        super().__init__()
        self._specs = {spec.name: spec for spec in specs}
        self._order = [spec.name for spec in specs]
        self._policy = policy
        self._clock = clock
        self._directory = directory
        self._ready = ready
        self._on_escalate = on_escalate
        self._started: set[str] = set()
        self._current: dict[str, str] = {}  # name -> urn of the live instance
        self._generation: dict[str, int] = {}
        self._timers: dict[str, TimerHandle] = {}
        self._last_failure: dict[str, str] = {}
        self._stopping = False

    def on_start(self) -> None:
        self._directory.set("supervisor", self.actor_ref)
        for name in self._order:
            self._start_child(name)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._escalate("supervisor", repr(exception_value))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildStarted):
            if self._current.get(message.name) == message.urn:
                self._started.add(message.name)
                if self._started.issuperset(self._order):
                    self._ready.set()
        elif isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, ReplaceChild):
            # A hung child cannot process a stop; it is abandoned (its thread is a
            # daemon and stops once its handler returns) and replaced like a failed one.
            ref = self._directory.get(message.name)
            if ref is not None and ref.actor_urn == message.urn:
                ref.stop(block=False)
            self._child_failed(ChildFailed(message.name, message.urn, message.error), notify=False)
        elif isinstance(message, RestartChild):
            if not self._stopping and self._generation.get(message.name) == message.generation:
                self._timers.pop(message.name, None)
                self._start_child(message.name)
        else:
            return super().on_receive(message)
        return None

    # --- called by the Runtime through a proxy ----------------------------------------

    def shutdown(self) -> list[pykka.ActorRef[Any]]:
        """Stop restarting; return the live children in reverse start order for the
        caller to stop (stopping them here would block this actor on their futures)."""
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        refs = [self._directory.get(name) for name in reversed(self._order)]
        return [ref for ref in refs if ref is not None]

    def add_child(self, spec: ChildSpec) -> None:
        """Start a new child (a worker, as the pool grows) and supervise it like the others."""
        if self._stopping or spec.name in self._specs:
            return
        self._specs[spec.name] = spec
        self._order.append(spec.name)
        self._started.add(spec.name)  # the tree is ready already: this one is not waited for
        self._start_child(spec.name)

    def remove_child(self, name: str) -> pykka.ActorRef[Any] | None:
        """Stop supervising ``name`` (the pool shrinks); returns its live ref for the caller
        to stop (stopping it here would block this actor)."""
        if name not in self._specs:
            return None
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._generation[name] = self._generation.get(name, 0) + 1  # a pending restart is void
        del self._specs[name]
        self._order.remove(name)
        self._started.discard(name)
        self._current.pop(name, None)
        ref = self._directory.get(name)
        self._directory.set(name, None)
        return ref

    def restarts(self) -> dict[str, dict[str, Any]]:
        """Restarts granted and the last failure, by child."""
        return {
            name: {"restarts": self._policy.restarts(name), "last_failure": self._last_failure.get(name)}
            for name in self._order
        }

    # --- internals --------------------------------------------------------------------

    def _start_child(self, name: str) -> None:
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        ref = self._specs[name].start()
        self._current[name] = ref.actor_urn
        self._directory.set(name, ref)

    def _child_failed(self, message: ChildFailed, notify: bool = True) -> None:
        if self._stopping or self._current.get(message.name) != message.urn:
            return  # a late report about an instance already replaced, or shutting down
        name = message.name
        if notify and name != "scheduler":
            # The scheduler retries whatever job the failed child was running.
            self._directory.tell("scheduler", ChildDown(name, message.error, message.urn))
        self._current.pop(name, None)
        self._directory.set(name, None)
        self._last_failure[name] = message.error
        spec = self._specs[name]
        if spec.restart == "temporary":
            logger.warning("child %s failed and is not restarted (temporary): %s", name, message.error)
            return
        delay = self._policy.on_failure(name, self._clock.monotonic())
        if delay is None:
            self._escalate(name, message.error)
            return
        restarts = self._policy.restarts(name)
        logger.warning("child %s failed (%s); restart %d in %.3f s", name, message.error, restarts, delay)
        self._directory.tell("stats", ChildRestarted(name, message.error, restarts))
        generation = self._generation[name]
        self_ref = self.actor_ref
        self._timers[name] = self._clock.call_later(
            delay, lambda: _tell_quietly(self_ref, RestartChild(name, generation))
        )

    def _escalate(self, name: str, error: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        text = (
            f"actor {name} failed more than {self._policy.max_restarts} times within "
            f"{self._policy.window:g} s (last error: {error}); the runtime stops"
        )
        logger.error("%s", text)
        for timer in self._timers.values():
            timer.cancel()
        for child in reversed(self._order):
            ref = self._directory.get(child)
            self._directory.set(child, None)
            if ref is not None:
                ref.stop(block=False)
        self._on_escalate(text)
        self.stop()


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass  # the supervisor stopped while the restart was pending: nothing to restart
