"""Start marks: a worker notes each attempt it runs on its own thread just before it
starts it, so that a job which kills the whole process still uses up an attempt.

A ``python`` job on a worker thread can take the runtime down with it (a segfault in
an extension, ``os._exit``, the OOM killer). The scheduler commits an attempt's start
with its next group commit, which may come after the job has killed the process; were
the start lost, the next run would start the job again as if it had never run, and a
job that always kills the process would never use up its retries. The start mark
closes that gap for the price of a copy of 96 bytes into a shared memory map of the
slot file (under a microsecond, no system call, so the worker keeps the GIL: a
``pwrite`` lets go of it and cost 13 µs of CPU and 27 µs in all per job under load),
instead of a commit before every start. Like the store's own commits
(``synchronous=NORMAL``) it survives the process being killed, as the page cache keeps
it; only an OS crash can lose it.

On a copy-on-write filesystem (btrfs, ZFS, bcachefs) a store into a mapped page can
need new disk space, and a full disk would turn it into a SIGBUS that kills the
process: there the marker writes with ``pwrite`` instead. Each line carries a CRC, so a
line torn by a kill in the middle of a copy (half one mark, half the last) is skipped.

At start-up, before anything runs, :func:`apply_marks` records in the store the
attempts that marks say started and the store does not know of; the store's recovery
then treats them as interrupted.

A ``command`` attempt's mark is written again once its child has started, with the
child's pid and start time: a child is left running when the process that started it
is killed, and the next start kills it (:func:`stop_left_running`) before its job runs
again, rather than let the two run side by side.

Layout: ``<job store folder>/starts/<worker name>.start``, one line
``<job id> <attempt> <unix time> [<pid>:<start time in clock ticks>] <crc32 of the rest,
hex>``, overwritten in place by the next start.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import StoreError
from runtime.store import INTERRUPTED_ERROR, JobState, JobStore

__all__ = ["StartMark", "StartMarker", "apply_marks", "marks_folder", "process_started", "read_marks",
           "stop_left_running"]

logger = logging.getLogger(__name__)

_SLOT = 96  # bytes: a 32-character id, an attempt number, a time and a CRC fit well within
#: Filesystems where writing a mapped page may allocate disk space (see the module's text).
_COPY_ON_WRITE = frozenset({"btrfs", "zfs", "bcachefs"})


def marks_folder(store_folder: Path) -> Path:
    """Where the workers of a store in ``store_folder`` keep their start marks."""
    return store_folder / "starts"


@dataclass(frozen=True, slots=True)
class StartMark:
    """Attempt ``attempt`` of job ``job_id`` started at ``at`` (unix time); ``process``:
    the child it started, as ``(pid, start time in clock ticks after boot)``."""

    job_id: str
    attempt: int
    at: float
    process: tuple[int, int] | None = None


def _line(job_id: str, attempt: int, at: float, process: tuple[int, int] | None = None) -> bytes:
    body = f"{job_id} {attempt} {at:.6f}" + (f" {process[0]}:{process[1]}" if process else "")
    return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


def process_started(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat``,
    field 22): with its pid, what tells it from a later process given the same pid.
    ``None``: no such process (or no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        return int(data.rsplit(b")", 1)[1].split()[19])  # the fields after the command's name
    except (OSError, IndexError, ValueError):
        return None


def filesystem_of(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem ``path`` is on ('' when unknown), from ``/proc/self/mounts``
    (or the ``mounts`` text given)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return ""
    target = str(path.resolve())
    best, kind = -1, ""
    for entry in mounts.splitlines():
        fields = entry.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, kind = len(mount), fields[2]
    return kind


class StartMarker:
    """One worker's slot: ``note`` overwrites it with the attempt about to start.

    Args:
        folder: the marks folder (see :func:`marks_folder`), created if missing.
        worker: the worker's name, which names its file.
        memory_map: store into a memory map of the file (the default, except on a
            copy-on-write filesystem) rather than ``pwrite`` it.

    Raises:
        StoreError: the folder or the file cannot be opened.
    """

    def __init__(self, folder: Path, worker: str, memory_map: bool | None = None) -> None:
        self.path = folder / f"{worker}.start"
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if memory_map is None:
                memory_map = filesystem_of(folder) not in _COPY_ON_WRITE
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.fstat(self._fd).st_size < _SLOT:
                # Written, not just extended: a page of a sparse file would be allocated at
                # the first store into the map, and a full disk would then kill the process.
                os.pwrite(self._fd, b" " * _SLOT, 0)
            if memory_map:
                self._map = mmap.mmap(self._fd, _SLOT)  # shared: the file's own pages
                os.close(self._fd)  # the map keeps the file
                self._fd = None
        except OSError as e:
            self.close()
            raise StoreError(f"cannot open the start mark {self.path}: {e.strerror or e}") from None

    def note(self, job_id: str, attempt: int, pid: int | None = None) -> None:
        """Mark the start; durable against the process being killed once this returns.
        With ``pid``, the attempt's child process, for the next start to stop it if this
        process is killed meanwhile (see :func:`stop_left_running`)."""
        started = None if pid is None else process_started(pid)
        line = _line(job_id, attempt, time.time(), None if started is None or pid is None else (pid, started))
        if len(line) > _SLOT:
            raise StoreError(f"start mark {self.path}: job id {job_id[:40]!r}... is too long for its slot")
        data = line.ljust(_SLOT)
        if self._map is not None:
            self._map[:] = data
        elif self._fd is not None:
            try:
                os.pwrite(self._fd, data, 0)
            except OSError as e:
                raise StoreError(f"cannot write the start mark {self.path}: {e.strerror or e}") from None
        else:
            raise StoreError(f"start mark {self.path} is closed")

    def close(self) -> None:
        mapped, self._map = self._map, None
        if mapped is not None:
            mapped.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_marks(folder: Path) -> list[StartMark]:
    """Every worker's last mark in ``folder`` (none if the folder does not exist). A
    file that does not hold a whole mark (empty, damaged, torn) is skipped with a warning."""
    marks = []
    for path in sorted(folder.glob("*.start")):
        try:
            text = path.read_bytes()[:_SLOT].decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            logger.warning("start mark %s unreadable, skipped: %s", path, e)
            continue
        if not text:
            continue
        try:
            *fields, crc = text.split()
            if len(fields) not in (3, 4) or int(crc, 16) != zlib.crc32(" ".join(fields).encode()):
                raise ValueError("not a mark, or a CRC mismatch")
            process = None
            if len(fields) == 4:
                pid, started = fields[3].split(":")
                process = (int(pid), int(started))
            marks.append(StartMark(fields[0], int(fields[1]), float(fields[2]), process))
        except ValueError:
            logger.warning("start mark %s holds no whole mark, skipped: %r", path, text[:_SLOT])
    return marks


def _boot_time() -> float | None:
    """When this machine booted (unix time, whole seconds; ``/proc/stat``), or ``None``."""
    try:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def stop_left_running(marks: list[StartMark]) -> list[str]:
    """Kill the process groups of the children that ``marks`` name and that still run:
    a child of a process that was killed (SIGKILL, the OOM killer) is left running, out
    of reach of its timeout, and the job it belongs to runs again as a new attempt.
    Each is recognised by its pid and its start time, never a later process given the
    same pid. (Python hosts end by themselves when their worker's thread ends.)

    Returns:
        the ids of the jobs whose child was stopped.
    """
    stopped = []
    booted = _boot_time()
    for mark in marks:
        if mark.process is None or (booted is not None and mark.at < booted - 1):
            continue  # no child marked, or one of an earlier boot (a pid and start time may recur)
        pid, started = mark.process
        if process_started(pid) != started:
            continue  # it ended (and was reaped), or the pid now names another process
        try:
            os.killpg(pid, signal.SIGKILL)  # the child leads its own group: its pid is the group's id
        except (ProcessLookupError, PermissionError):
            continue
        logger.warning("job %s: killed the process group %d of attempt %d, left running when the "
                       "process that ran it ended; the job runs again", mark.job_id, pid, mark.attempt)
        stopped.append(mark.job_id)
    return stopped


def apply_marks(store: JobStore, marks: list[StartMark]) -> list[str]:
    """Record in ``store`` the attempts that ``marks`` say started and it does not know of:
    each such job gets that attempt, open, and the ``running`` state, for the store's
    recovery to close as interrupted. The store may be more than one attempt behind
    (an attempt that failed and its retry, neither committed yet): the attempts in
    between, and any earlier one still open, are closed as interrupted too, so every
    start counts. Marks of finished jobs, of unknown ones, and of attempts the store
    already has change nothing (so applying them twice is harmless).

    Returns:
        the ids of the jobs changed.
    """
    latest: dict[str, StartMark] = {}
    for mark in marks:  # several slots may name one job: its highest attempt says the most
        if mark.job_id not in latest or mark.attempt > latest[mark.job_id].attempt:
            latest[mark.job_id] = mark
    changed = []
    for mark in latest.values():
        record = store.get(mark.job_id)
        if record is None or record.state.finished or len(record.attempts) >= mark.attempt:
            continue
        for earlier in record.attempts:  # a later attempt started: these ended, their end unstored
            if earlier.get("finished_at") is None:
                earlier.update(finished_at=mark.at, error=INTERRUPTED_ERROR, status="interrupted")
        for number in range(len(record.attempts) + 1, mark.attempt):  # started and ended, unstored
            record.attempts.append({"number": number, "started_at": None, "finished_at": mark.at,
                                    "error": INTERRUPTED_ERROR, "status": "interrupted"})
        record.attempts.append({"number": mark.attempt, "started_at": mark.at, "finished_at": None,
                                "error": None, "status": "running"})
        record.state = JobState.RUNNING
        record.updated_at = max(record.updated_at, mark.at)  # a later change stands
        changed.append(record)
    if changed:
        store.update_many(changed)
        logger.info("start marks: %d attempt(s) that started before the process ended were not "
                    "stored yet; they count as interrupted", len(changed))
    return [record.id for record in changed]
