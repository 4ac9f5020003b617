"""The submit journal: ``Runtime.submit`` makes a job durable without waiting for the scheduler.

A submit that asks the SchedulerActor to commit the job to SQLite before it answers
costs two thread hand-offs and a commit (about 270 µs here, most of it waiting). With
the journal, the caller appends the job to ``<job store folder>/submits.journal``
(one ``write``: like the store's commits it survives ``kill -9``, as the page cache
keeps it) and tells the scheduler, then returns. The scheduler inserts the jobs with
its group commits, and the lines of committed jobs are cut off the journal.

Why no job is lost or accepted twice:

- Appending and telling happen together under the journal's lock, and only while a
  scheduler instance takes deliveries. A scheduler that fails or stops withdraws
  (``stop_delivery``) under that lock before anything else, so nothing is told to it
  after; the tells it had not handled die with its inbox, but their lines are here.
  (pykka marks a failing actor dead just before its ``on_failure`` runs: a tell in that
  gap fails, and the job, already appended, is left to the next instance in the same way.)
- A new scheduler instance, under the lock, inserts every journalled job the store does
  not know (``take_over``), empties the journal, and only then takes deliveries: a job
  is either replayed or told to it, never both.
- The scheduler accepts delivered jobs in the order they were appended and commits
  everything it accepted, so the committed jobs are always the first lines: only those
  are cut off (``committed``), so a line goes only once its job is in the store.
- A submitter may run at most ``MAX_AHEAD`` jobs ahead of the scheduler; past that it
  waits, or every question asked of the scheduler would queue behind the backlog.
- A job's progress callback and completion callback wait here until an instance
  accepts the job, so they are not lost with a dead inbox either.

This is the one place where client threads and the scheduler share state; the lock
guards the file, the delivery target and the callbacks, and is held for a ``write``
and a ``tell``.

Durability is that of the store (``synchronous=NORMAL``): a job survives the process
being killed, as the page cache keeps the file; an OS crash or a power loss may lose the
last ones. Nothing here calls ``fsync``.

Layout: one line per job, ``<crc32 of the JSON, hex> <the JobRecord as JSON>``. A line
torn by a kill in the middle of a write fails its CRC and is skipped: its submit never
returned.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.errors import RuntimeStopped, StoreError
from runtime.registry import Script
from runtime.store import JobRecord, encode_record

__all__ = ["Callbacks", "SubmitJournal", "parse"]

logger = logging.getLogger(__name__)

#: A job's ``(progress callback, completion callback)``, either may be ``None``.
Callbacks = tuple[Callable[..., Any] | None, Callable[[dict[str, Any]], Any] | None]
#: Deliver a journalled job to the scheduler instance that takes deliveries (a tell).
Deliver = Callable[[JobRecord, Script], None]

#: The lines of committed jobs are cut off the journal once they add up to this many
#: bytes: a cut per commit would cost system calls each time, and a start-up reads what
#: is left (jobs the store already has are skipped).
EMPTY_AT = 64 * 1024
#: Submitters wait while the scheduler has this many delivered jobs not yet accepted.
MAX_AHEAD = 256


def _line(record: JobRecord) -> bytes:
    body = encode_record(record, "submit journal")
    return f"{zlib.crc32(body.encode()):08x} {body}\n".encode()


def parse(data: bytes) -> tuple[list[JobRecord], int]:
    """The records in a journal's content, in order, and how many lines were unreadable."""
    records, bad = [], 0
    for raw in data.split(b"\n"):
        if not raw:
            continue
        try:
            crc, body = raw.decode().split(" ", 1)
            if int(crc, 16) != zlib.crc32(body.encode()):
                raise ValueError("CRC mismatch")
            records.append(JobRecord.from_dict(json.loads(body)))
        except (ValueError, KeyError, TypeError):
            bad += 1
    return records, bad


class SubmitJournal:
    """The submit journal of one runtime (see the module's text).

    Args:
        folder: the job store's folder (``JOB_STORAGE_PATH``).

    Raises:
        StoreError: the journal file cannot be opened.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "submits.journal"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = self._open()
            self._size = os.fstat(self._fd).st_size
        except OSError as e:
            raise StoreError(f"cannot open the submit journal {self.path}: {e.strerror or e}") from e
        self._cond = threading.Condition()
        self._deliver: Deliver | None = None
        self._closed = False
        # Sizes of the lines appended since the journal was last emptied whose jobs are not
        # committed yet, in order: the scheduler accepts jobs in the order they were
        # appended and commits all it accepted, so the committed ones are always the first
        # lines, and ``_committed_bytes`` of them may go.
        self._uncommitted: deque[int] = deque()
        self._committed_bytes = 0
        self._ahead = 0  # jobs delivered to the current instance and not accepted yet
        self._callbacks: dict[str, Callbacks] = {}
        # A scheduler has put what the file held when it was opened into the store: until
        # then, the lines a last process left are not known to be stored.
        self._replayed = False

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    # --- client threads ---------------------------------------------------------------

    def submit(self, record: JobRecord, script: Script, callbacks: Callbacks, timeout: float) -> None:
        """Append ``record`` and deliver it to the scheduler; it is durable on return.

        Waits up to ``timeout`` seconds while no scheduler instance takes deliveries (one
        is restarting), or while the scheduler is ``MAX_AHEAD`` submits behind: callers
        must not outrun it, or every question asked of it would queue behind the backlog.

        Raises:
            StoreError: the record is not JSON, or the journal cannot be written (nothing
                is appended or delivered).
            RuntimeStopped: the runtime stopped, or no scheduler came back in time.
            TimeoutError: the scheduler did not catch up in time (nothing is queued).
        """
        line = _line(record)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._deliver is None or self._ahead >= MAX_AHEAD:
                if self._closed:
                    raise RuntimeStopped("the runtime is stopped")
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._deliver is None:
                        raise RuntimeStopped(f"the scheduler did not come back within {timeout:g} s")
                    raise TimeoutError(f"the scheduler is {self._ahead} submits behind and did not catch "
                                       f"up within {timeout:g} s; nothing was queued")
                self._cond.wait(left)
            self._append(line)
            self._uncommitted.append(len(line))
            if callbacks != (None, None):
                self._callbacks[record.id] = callbacks
            try:
                self._deliver(record, script)
            except Exception as e:  # noqa: BLE001 - the instance is failing: it is dead before it withdraws
                # The line is here, and the next instance replays it, callbacks and all.
                logger.warning("submit journal: job %s waits for the next scheduler instance (%s)", record.id, e)
                self._deliver = None
            else:
                self._ahead += 1

    def _append(self, data: bytes) -> None:
        assert self._fd is not None  # open while deliveries are taken
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as e:
            try:  # no torn line may stay: the next one would be read as part of it
                os.ftruncate(self._fd, self._size)
            except OSError:
                logger.exception("submit journal %s: a torn line could not be cut off", self.path)
            raise StoreError(f"cannot write the submit journal {self.path}: {e.strerror or e}") from e
        self._size += done

    # --- the scheduler ------------------------------------------------------------------

    def take_over(self, deliver: Deliver, insert: Callable[[list[JobRecord]], None]) -> dict[str, Callbacks]:
        """A scheduler instance starts: pass every journalled job to ``insert`` (which stores
        those the store does not have), empty the journal, then deliver to ``deliver``.

        Returns:
            the callbacks of the jobs that no instance accepted, by job id.

        Raises:
            StoreError: ``insert`` failed or the journal cannot be read (nothing changes,
                and deliveries stay closed until an instance takes over).
        """
        with self._cond:
            if self._fd is None:
                raise StoreError(f"the submit journal {self.path} is closed")
            try:
                self._size = os.fstat(self._fd).st_size
                data = os.pread(self._fd, self._size, 0)
            except OSError as e:
                raise StoreError(f"cannot read the submit journal {self.path}: {e.strerror or e}") from e
            records, bad = parse(data)
            if bad:
                logger.warning("submit journal %s: %d unreadable line(s) skipped (torn by a kill, or damaged)",
                               self.path, bad)
            if records:
                insert(records)
            self._uncommitted.clear()  # all in the store now
            self._committed_bytes = self._size
            self._drop_committed()
            self._ahead = 0  # what the last instance was told and did not accept is in the store too
            self._replayed = True
            callbacks = {r.id: self._callbacks[r.id] for r in records if r.id in self._callbacks}
            self._callbacks.clear()
            self._deliver = deliver
            self._cond.notify_all()
            return callbacks

    def accepted(self, job_id: str) -> Callbacks:
        """The scheduler accepted a delivered job: its callbacks (taken from here)."""
        with self._cond:
            self._ahead -= 1
            if self._ahead == MAX_AHEAD // 2:  # submitters held back may go on (once per half)
                self._cond.notify_all()
            return self._callbacks.pop(job_id, (None, None))

    def committed(self, count: int) -> None:
        """The scheduler committed the next ``count`` delivered jobs to the store."""
        with self._cond:
            for _ in range(min(count, len(self._uncommitted))):
                self._committed_bytes += self._uncommitted.popleft()
            if self._committed_bytes >= EMPTY_AT:
                self._drop_committed()

    def stop_delivery(self, deliver: Deliver) -> None:
        """The scheduler instance that delivers to ``deliver`` is failing or stopping:
        deliver nothing more to it (a later instance's deliveries stay)."""
        with self._cond:
            if self._deliver is deliver:
                self._deliver = None

    def close(self) -> None:
        """No more submits (the runtime stopped); those waiting get ``RuntimeStopped``."""
        with self._cond:
            self._closed = True
            self._deliver = None
            self._cond.notify_all()
            if self._replayed and not self._uncommitted:  # all of it is in the store: leave nothing to read back
                self._committed_bytes = self._size
                self._drop_committed()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _drop_committed(self) -> None:
        """Cut the lines of committed jobs off the front of the journal."""
        if not self._committed_bytes or self._fd is None:
            return
        try:
            if self._committed_bytes >= self._size:  # nothing else in it: the cheap way
                os.ftruncate(self._fd, 0)
                self._size = 0
            else:  # the jobs not committed yet go to a new file, which replaces this one at once
                tail = os.pread(self._fd, self._size - self._committed_bytes, self._committed_bytes)
                spare = self.path.with_name(self.path.name + ".new")
                out = os.open(spare, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    written = 0
                    while written < len(tail):
                        written += os.write(out, tail[written:])
                    os.replace(spare, self.path)
                except BaseException:
                    os.close(out)
                    raise
                # The new file is the journal from here on, through the descriptor already
                # open on it (a reopen that failed would leave appends in a file with no name).
                old, self._fd, self._size, self._committed_bytes = self._fd, out, len(tail), 0
                try:
                    os.close(old)
                except OSError:
                    logger.warning("submit journal %s: closing the replaced file failed", self.path)
                return
        except OSError:  # the lines stay; a start-up skips the jobs the store has
            logger.exception("submit journal %s: committed jobs could not be cut off", self.path)
            return
        self._committed_bytes = 0
