"""Runtime: assembles the actor tree in one place, starts it in dependency order and
stops it in reverse; the user's handle on a running runtime."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pykka

from runtime.clock import Clock, SystemClock
from runtime.config import Settings, load_settings
from runtime.errors import RuntimeStopped, SupervisorEscalated
from runtime.messages import InjectFault
from runtime.registry import load_registry
from runtime.registry_cache import CacheMemory, CacheView
from runtime.stats import StatsAccumulator
from runtime.supervision import Backoff, ChildSpec, RestartPolicy

from actors.base import ActorContext, Directory
from actors.cache import CacheActor
from actors.stats import StatsActor
from actors.supervisor import SupervisorActor
from actors.watcher import WatcherActor

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)


class Runtime:
    """A running actor tree: Supervisor -> StatsActor, CacheActor, WatcherActor.

    Use :meth:`start`, then the proxies (``rt.cache``, ``rt.stats``, ``rt.watcher``)
    and :meth:`stop` (or ``with Runtime.start(...) as rt:``).
    """

    def __init__(self, settings: Settings, clock: Clock | None = None,
                 inotify_factory: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._owns_clock = clock is None
        self.directory = Directory()
        self.cache_view = CacheView()
        self._stats = StatsAccumulator()
        self._cache_memory = CacheMemory()
        self._inotify_factory = inotify_factory
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._lifecycle = threading.Lock()  # guards start/stop of this handle, not actor state
        self._escalation: str | None = None
        self._supervisor: pykka.ActorRef[Any] | None = None
        self._proxies: dict[str, Any] = {}

    # --- lifecycle --------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        registry_path: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        inotify_factory: Callable[..., Any] | None = None,
        **settings: Any,
    ) -> Runtime:
        """Build and start the actor tree.

        Args:
            registry_path: the registry file (else ``REGISTRY_PATH``, else ``./registry.json``).
            clock: the clock (a ``ManualClock`` in tests); real time by default.
            env: the environment to read settings from (``os.environ`` by default).
            inotify_factory: replaces the inotify backend (tests simulate its absence).
            **settings: any field of :class:`~runtime.config.Settings`.

        Raises:
            ConfigError: an invalid setting.
            RegistryError: the registry is invalid (nothing is started).
            SupervisorEscalated: an actor kept failing during start-up.
        """
        resolved = load_settings(env, registry_path=registry_path, **settings)
        resolved = _absolute_registry(resolved)
        load_registry(resolved.registry_path)  # a bad registry is the user's error: say it now
        runtime = cls(resolved, clock, inotify_factory)
        runtime._start()
        return runtime

    def _start(self) -> None:
        policy = RestartPolicy(
            self.settings.max_restarts,
            self.settings.restart_window,
            Backoff(self.settings.backoff_min, self.settings.backoff_max),
            self.settings.backoff_reset,
        )
        self._supervisor = SupervisorActor.start(
            self._child_specs(), policy, self.clock, self.directory, self._ready, self._escalated
        )
        deadline = self.settings.ask_timeout
        if not self._ready.wait(deadline):
            self.stop()
            raise RuntimeStopped(f"the actor tree did not start within {deadline:g} s")
        if self._escalation is not None:
            self.stop()
            raise SupervisorEscalated(self._escalation)
        atexit.register(self.stop)
        logger.info("runtime started on %s", self.settings.registry_path)

    def _child_specs(self) -> list[ChildSpec]:
        def context(name: str) -> ActorContext:
            return ActorContext(name, self.settings, self.clock, self.directory)

        watcher_args: dict[str, Any] = {}
        if self._inotify_factory is not None:
            watcher_args["inotify_factory"] = self._inotify_factory
        return [
            ChildSpec("stats", lambda: StatsActor.start(context("stats"), self._stats)),
            ChildSpec("cache", lambda: CacheActor.start(context("cache"), self._cache_memory, self.cache_view)),
            ChildSpec("watcher", lambda: WatcherActor.start(context("watcher"), **watcher_args)),
        ]

    def _escalated(self, text: str) -> None:
        # Called on the supervisor's thread: record, then clean up from another thread
        # (joining actors from the supervisor's own thread would deadlock).
        self._escalation = text
        self._ready.set()  # wakes a start() still waiting for the tree
        threading.Thread(target=self.stop, name="runtime-escalation", daemon=True).start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop every actor and thread this runtime started (idempotent)."""
        timeout = self.settings.ask_timeout if timeout is None else timeout
        with self._lifecycle:
            if self._stopped.is_set() and self._supervisor is None:
                return
            supervisor, self._supervisor = self._supervisor, None
            children: list[pykka.ActorRef[Any]] = []
            if supervisor is not None:
                try:
                    children = supervisor.proxy().shutdown().get(timeout=timeout)
                except (pykka.ActorDeadError, pykka.Timeout):
                    children = [r for n in self.directory.names() if n != "supervisor"
                                if (r := self.directory.get(n)) is not None]
            for ref in children:
                _stop_ref(ref, timeout)
            if supervisor is not None:
                _stop_ref(supervisor, timeout)
            for name in self.directory.names():
                self.directory.set(name, None)
            if self._owns_clock:
                self.clock.close()
            self._proxies.clear()
            self._stopped.set()
        atexit.unregister(self.stop)
        logger.info("runtime stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the runtime stops; ``False`` on timeout.

        Raises:
            SupervisorEscalated: it stopped because an actor kept failing.
        """
        stopped = self._stopped.wait(timeout)
        if stopped and self._escalation is not None:
            raise SupervisorEscalated(self._escalation)
        return stopped

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    @property
    def escalation(self) -> str | None:
        """Why the supervisor stopped the runtime, if it did."""
        return self._escalation

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the user's handles -----------------------------------------------------------

    def ref(self, name: str, timeout: float | None = None) -> pykka.ActorRef[Any]:
        """The live ref of actor ``name``, waiting while it restarts.

        Raises:
            RuntimeStopped: the runtime is stopped, or the actor did not come back in time.
        """
        self._check_running()
        ref = self.directory.wait_for(name, self.settings.ask_timeout if timeout is None else timeout)
        if ref is None or not ref.is_alive():
            self._check_running()
            raise RuntimeStopped(f"actor {name} is not running")
        return ref

    def proxy(self, name: str) -> Any:
        """A pykka proxy of the current ``name`` actor (made once per instance: proxies cost)."""
        ref = self.ref(name)
        cached = self._proxies.get(name)
        if cached is None or cached[0] != ref.actor_urn:
            cached = (ref.actor_urn, ref.proxy())
            self._proxies[name] = cached
        return cached[1]

    @property
    def cache(self) -> Any:
        """Proxy of the CacheActor: ``rt.cache.get_script(id).get()``."""
        return self.proxy("cache")

    @property
    def stats(self) -> Any:
        """Proxy of the StatsActor: ``rt.stats.snapshot().get()``."""
        return self.proxy("stats")

    @property
    def watcher(self) -> Any:
        """Proxy of the WatcherActor."""
        return self.proxy("watcher")

    def stats_snapshot(self) -> dict[str, Any]:
        """Every figure, exact: each actor reports its pending counts before the snapshot."""
        timeout = self.settings.ask_timeout
        for name in self.directory.names():
            if name in ("supervisor", "stats"):
                continue
            try:
                self.proxy(name).flush_stats().get(timeout=timeout)
            except (pykka.ActorDeadError, RuntimeStopped):
                pass  # restarting: its count restarts with it
        return dict(self.stats.snapshot().get(timeout=timeout))

    def inject_fault(self, name: str, reason: str = "injected fault", exit: bool = False) -> None:
        """Make actor ``name`` raise on its next message (this one), as a crash would.

        Args:
            name: the actor.
            reason: the exception's message.
            exit: raise ``SystemExit`` (a ``BaseException``) instead of ``InjectedFault``.
        """
        self.ref(name).tell(InjectFault(reason, exit))

    def _check_running(self) -> None:
        if self._escalation is not None:
            raise RuntimeStopped(f"the runtime stopped: {self._escalation}")
        if self._stopped.is_set():
            raise RuntimeStopped("the runtime is stopped")


def _absolute_registry(settings: Settings) -> Settings:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(settings, registry_path=Path(settings.registry_path).absolute())


def _stop_ref(ref: pykka.ActorRef[Any], timeout: float) -> None:
    try:
        ref.stop(block=True, timeout=timeout)
    except pykka.Timeout:
        logger.error("actor %s did not stop within %.1f s", ref, timeout)
    except pykka.ActorDeadError:
        pass
