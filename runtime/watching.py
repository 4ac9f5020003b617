"""Watcher backends (plain code, no actors): inotify on the registry's folder, or polling.

Both call ``notify(description)`` when the registry file may have changed. The
folder is watched rather than the file, so an editor's atomic save (write a
temporary file, rename it over the registry) is seen as well as an in-place write;
a watch on the file itself would die at the first rename.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from runtime.clock import Clock, TimerHandle
from runtime.registry import FileStamp, stamp

__all__ = ["InotifyBackend", "PollingBackend", "WatchBackend", "WatchUnavailable"]

logger = logging.getLogger(__name__)


class WatchUnavailable(Exception):
    """inotify cannot be used here (not Linux, no pyinotify, limits exhausted)."""


class WatchBackend(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class InotifyBackend:
    """pyinotify on the registry's folder, filtered on the registry's file name."""

    name = "inotify"

    def __init__(self, path: Path, notify: Callable[[str], None]) -> None:
        self.path = path
        self.notify = notify
        self._notifier: Any = None

    def start(self) -> None:
        if self.path.is_symlink():
            # The file is a link (a Kubernetes ConfigMap swaps its target): the events of the
            # folder it is in say nothing of the target's changes. Polling compares the target.
            # (A linked folder on the way is harmless: the watch is on the resolved folder.)
            raise WatchUnavailable(f"{self.path} is a symbolic link")
        try:
            import pyinotify  # noqa: PLC0415 - optional: absent or broken means polling
        except Exception as e:  # ImportError, or asyncore missing on Python >= 3.12
            raise WatchUnavailable(f"pyinotify cannot be imported: {e}") from e
        filename = self.path.name
        notify = self.notify

        class Handler(pyinotify.ProcessEvent):  # type: ignore[misc]
            def process_default(self, event: Any) -> None:
                if event.name == filename:
                    notify(event.maskname)

        mask = pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO | pyinotify.IN_DELETE
        try:
            manager = pyinotify.WatchManager()
            notifier = pyinotify.ThreadedNotifier(manager, Handler())
            notifier.daemon = True
            manager.add_watch(str(self.path.parent.resolve()), mask, quiet=False)
        except (OSError, pyinotify.WatchManagerError) as e:
            raise WatchUnavailable(f"inotify watch failed: {e}") from e
        notifier.start()
        self._notifier = notifier

    def stop(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None


class PollingBackend:
    """Compares the file's stamp (mtime, size, inode) every ``interval`` seconds.

    Args:
        path: the registry file.
        clock: schedules the polls.
        interval: seconds between polls.
        poll_due: called when a poll is due; the owner then calls ``check()`` on its
            own thread (so the stamp is only touched by one thread).
    """

    name = "polling"

    def __init__(self, path: Path, clock: Clock, interval: float, poll_due: Callable[[], None]) -> None:
        self.path = path
        self.clock = clock
        self.interval = interval
        self.poll_due = poll_due
        self._last: FileStamp | None = None
        self._timer: TimerHandle | None = None

    def start(self) -> None:
        self._last = stamp(self.path)
        self._schedule()

    def check(self) -> bool:
        """Whether the file changed since the last check; schedules the next poll."""
        current = stamp(self.path)
        changed = current != self._last
        self._last = current
        self._schedule()
        return changed

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = self.clock.call_later(self.interval, self.poll_due)
