"""WatcherActor: turns file events on the registry into ``RegistryChanged`` for the cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka

from runtime.messages import FileChanged, PollRegistry, RegistryChanged, WatcherStarted
from runtime.watching import InotifyBackend, PollingBackend, WatchUnavailable

from actors.base import ActorContext, SupervisedActor

__all__ = ["WatcherActor"]

logger = logging.getLogger(__name__)


class WatcherActor(SupervisedActor):
    """Watches the registry with inotify, or polls it where inotify cannot be used.

    Args:
        context: the actor's context (``settings.watcher`` picks the backend).
        inotify_factory: builds the inotify backend; tests replace it to simulate a
            machine without inotify.
    """

    def __init__(
        self,
        context: ActorContext,
        inotify_factory: Callable[[Path, Callable[[str], None]], Any] = InotifyBackend,
    ) -> None:
        super().__init__(context)
        self.path = Path(context.settings.registry_path)
        self._inotify_factory = inotify_factory
        self.backend: Any = None

    def setup(self) -> None:
        choice = self.context.settings.watcher
        reason = f"watcher={choice}"
        if choice in ("auto", "inotify"):
            backend = self._inotify_factory(self.path, self._from_backend)
            try:
                backend.start()
                self.backend = backend
            except WatchUnavailable as e:
                if choice == "inotify":
                    raise
                reason = f"inotify unavailable: {e}"
        if self.backend is None:
            self.backend = PollingBackend(
                self.path, self.context.clock, self.context.settings.poll_interval, self._poll_due
            )
            self.backend.start()
        logger.info("watching %s with %s (%s)", self.path, self.backend.name, reason)
        self.context.directory.tell("stats", WatcherStarted(self.backend.name, reason))

    def teardown(self) -> None:
        if self.backend is not None:
            self.backend.stop()
            self.backend = None

    def backend_name(self) -> str | None:
        """``inotify`` or ``polling``."""
        return None if self.backend is None else str(self.backend.name)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, FileChanged):
            self._changed()
        elif isinstance(message, PollRegistry):
            if isinstance(self.backend, PollingBackend) and self.backend.check():
                self._changed()
        else:
            return super().on_receive(message)
        return None

    def _changed(self) -> None:
        self.context.directory.tell("cache", RegistryChanged(str(self.path), self.context.clock.monotonic()))

    # Called on the backend's thread or the timer's: only tell this actor, never touch state.
    def _from_backend(self, mask: str) -> None:
        self._tell_self(FileChanged(mask))

    def _poll_due(self) -> None:
        self._tell_self(PollRegistry())

    def _tell_self(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # stopped while an event was in flight
