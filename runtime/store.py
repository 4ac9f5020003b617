"""The durable job store: plain code, no actors. The job-owning actor is its only
caller, which is why nothing here locks.

Records are serialised as JSON, never pickle: a store file must stay readable by a
later version of the code and must not run code when it is read. Both stores keep
the JSON text, not the caller's objects, so ``MemoryStore`` has exactly the
semantics of ``SqliteStore`` (tuples come back as lists, dict keys as strings,
mutating a record after ``add`` changes nothing until ``update``).
"""

from __future__ import annotations

import enum
import fcntl
import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import StoreError

__all__ = [
    "INTERRUPTED_ERROR",
    "JobRecord",
    "JobState",
    "JobStore",
    "MemoryStore",
    "SqliteStore",
    "claim_folder",
    "encode_record",
    "recover",
]

#: The error of an attempt that was running when the runtime's process ended (killed).
INTERRUPTED_ERROR = "interrupted: the runtime stopped while it ran"
#: The error of an attempt still running when a graceful stop was over (its drain).
STOPPED_ERROR = "stopped: the runtime was stopped while it ran; it runs again at the next start"


class JobState(str, enum.Enum):
    """Where a job is in its life; the value is what the store writes."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job has reached a final state and will never run again."""
        return self in _FINISHED


_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
_UNFINISHED = tuple(state for state in JobState if state not in _FINISHED)


@dataclass(slots=True)
class JobRecord:
    """Everything the store knows about one job.

    Attributes:
        id: unique id, a uuid4 hex string (see ``new``).
        script_id: the registry entry the job runs.
        arguments: the script's arguments; JSON values only.
        priority: 0 = high, 1 = normal, 2 = low; lower runs first.
        seq: submission order, FIFO within a priority; the store assigns it on
            ``add`` when it is 0.
        state: see ``JobState``.
        attempts: one dict per attempt: ``number``, ``started_at``,
            ``finished_at``, ``error``, ``status``.
        progress: ``{"fraction": float, "message": str}`` or ``None``.
        result: the script's result (a JSON object) once it succeeded.
        error: why the job failed, once it failed.
        created_at: wall-clock time of submission (``time.time()``: it must mean
            the same thing after a restart, which a monotonic clock does not).
        updated_at: wall-clock time of the last change; the caller sets it.
        not_before: wall-clock time before which a retrying job must not start.
        max_retries: per-job override of the runtime's retry limit, or ``None``.
    """

    id: str
    script_id: str
    arguments: dict[str, Any]
    priority: int = 1
    seq: int = 0
    state: JobState = JobState.QUEUED
    attempts: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    not_before: float = 0.0
    max_retries: int | None = None

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at

    @classmethod
    def new(
        cls,
        script_id: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        priority: int = 1,
        max_retries: int | None = None,
    ) -> JobRecord:
        """A fresh queued record with a new uuid4 id; ``seq`` is left to the store."""
        return cls(uuid.uuid4().hex, script_id, dict(arguments or {}), priority=priority,
                   max_retries=max_retries)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (``state`` as its string).

        Nested containers are shared with the record, not copied.
        """
        # Spelled out: a comprehension over the fields with getattr costs twice as much,
        # and this runs for every write of every job.
        return {
            "id": self.id, "script_id": self.script_id, "arguments": self.arguments,
            "priority": self.priority, "seq": self.seq, "state": self.state.value,
            "attempts": self.attempts, "progress": self.progress, "result": self.result,
            "error": self.error, "created_at": self.created_at, "updated_at": self.updated_at,
            "not_before": self.not_before, "max_retries": self.max_retries,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        """The inverse of ``to_dict``.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not a record.
        """
        fields = dict(data)
        fields["state"] = JobState(fields["state"])
        return cls(**fields)


class JobStore(Protocol):
    """What the job actor needs from a store. Every write is durable on return."""

    def add(self, record: JobRecord) -> None: ...
    def add_many(self, records: Iterable[JobRecord]) -> None: ...
    def update(self, record: JobRecord) -> None: ...
    def update_many(self, records: Iterable[JobRecord]) -> None: ...
    def write(self, added: Iterable[JobRecord] = (), updated: Iterable[JobRecord] = ()) -> None: ...
    def assign_seq(self, record: JobRecord) -> None: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def known_ids(self, job_ids: Iterable[str]) -> set[str]: ...
    def unfinished(self) -> list[JobRecord]: ...
    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...


# One encoder for every write: ``json.dumps`` with options builds a new one per call.
# allow_nan=False: NaN/Infinity are not JSON and other readers would reject them.
_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def encode_record(record: JobRecord, where: object) -> str:
    """The record as compact JSON text.

    Raises:
        StoreError: a value is not JSON (``where`` names the store in the message).
    """
    try:
        return _JSON.encode(record.to_dict())
    except (TypeError, ValueError) as exc:
        raise StoreError(f"job store {where}: job {record.id} is not JSON: {exc}") from exc


def _decode(text: str, where: object) -> JobRecord:
    try:
        return JobRecord.from_dict(json.loads(text))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"job store {where}: unreadable record: {exc!r}") from exc


class _SeqCounter:
    """Hands out submission numbers; explicit numbers move it forward."""

    def __init__(self, last: int) -> None:
        self.last = last

    def assign(self, record: JobRecord) -> None:
        if record.seq == 0:
            self.last += 1
            record.seq = self.last
        else:
            self.last = max(self.last, record.seq)


class MemoryStore:
    """In-memory ``JobStore`` with the same semantics as ``SqliteStore``; nothing
    survives the process."""

    where = ":memory:"

    def __init__(self) -> None:
        # id -> (state, priority, seq, JSON text)
        self._rows: dict[str, tuple[JobState, int, int, str]] = {}
        self._seq = _SeqCounter(0)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"job store {self.where} is closed")

    def add(self, record: JobRecord) -> None:
        """Store a new record; assigns ``record.seq`` if it is 0."""
        self.add_many([record])

    def add_many(self, records: Iterable[JobRecord]) -> None:
        """Store new records, all or none."""
        self.add_or_update(records, (), check=True)

    def update(self, record: JobRecord) -> None:
        """Overwrite a stored record with ``record``."""
        self.add_or_update((), [record], check=True)

    def update_many(self, records: Iterable[JobRecord]) -> None:
        """Overwrite stored records, all or none."""
        self.add_or_update((), records, check=True)

    def add_or_update(self, added: Iterable[JobRecord], updated: Iterable[JobRecord], check: bool) -> None:
        self._check_open()
        new, changed = list(added), list(updated)
        if check:
            seen: set[str] = set()
            for record in new:
                if record.id in self._rows or record.id in seen:
                    raise StoreError(f"job store {self.where}: job {record.id} already exists")
                seen.add(record.id)
            missing = [r.id for r in changed if r.id not in self._rows and r.id not in seen]
            if missing:
                raise StoreError(f"job store {self.where}: unknown job(s) {', '.join(missing)}")
        for record in new:
            self._seq.assign(record)
        rows = [(r.id, (r.state, r.priority, r.seq, encode_record(r, self.where))) for r in new + changed]
        self._rows.update(rows)

    def write(self, added: Iterable[JobRecord] = (), updated: Iterable[JobRecord] = ()) -> None:
        """Store new records and overwrite others, all or none (an upsert, as ``SqliteStore``)."""
        self.add_or_update(added, updated, check=False)

    def assign_seq(self, record: JobRecord) -> None:
        """Give a new record its submission number now (``add`` would do it), so that it
        can be queued before it is written."""
        self._seq.assign(record)

    def get(self, job_id: str) -> JobRecord | None:
        """The stored record, or ``None``."""
        self._check_open()
        row = self._rows.get(job_id)
        return None if row is None else _decode(row[3], self.where)

    def known_ids(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` the store has."""
        self._check_open()
        return {job_id for job_id in job_ids if job_id in self._rows}

    def unfinished(self) -> list[JobRecord]:
        """Queued, running and retrying records, by priority then seq."""
        self._check_open()
        rows = sorted((p, s, text) for st, p, s, text in self._rows.values() if not st.finished)
        return [_decode(text, self.where) for _, _, text in rows]

    def counts(self) -> dict[str, int]:
        """Number of records by state value; every state is present."""
        self._check_open()
        result = dict.fromkeys((state.value for state in JobState), 0)
        for state, _, _, _ in self._rows.values():
            result[state.value] += 1
        return result

    def close(self) -> None:
        """Forget everything; later calls raise ``StoreError``."""
        self._closed = True
        self._rows.clear()


_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_run_order ON jobs (state, priority, seq);
"""


class SqliteStore:
    """``JobStore`` in ``<folder>/jobs.sqlite3``.

    Durability: WAL journal with ``synchronous=NORMAL``. A commit is written to the
    WAL file before ``add``/``update`` return, so it survives a crash of the
    process (even ``kill -9``): the data sits in the OS page cache. Only a power
    loss or OS crash can lose the last commits (never corrupting the file), since
    NORMAL fsyncs at checkpoints rather than at every commit; that is what buys
    the throughput of the single-commit path.

    Threads: one connection, opened with ``check_same_thread=False`` so the owning
    actor may run on any thread, but callers must serialise every call (one
    owner); the store does not lock.

    Args:
        folder: the store's folder (``JOB_STORAGE_PATH``), created with parents.

    Raises:
        StoreError: the folder or file cannot be created or opened, or the file
            is not a job store (corrupt, another database, a newer schema).
    """

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        self.path = folder / "jobs.sqlite3"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves; lone writes autocommit.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open job store {self.path}: {exc}") from exc
        try:
            # The first statement reads the header: a corrupt file fails here.
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"job store {self.path} has schema version {version}; "
                    f"this code reads up to {_SCHEMA_VERSION}"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(
                f"cannot open job store {self.path}: {exc} (corrupt, or not a job store; "
                "move the file away to start with an empty store)"
            ) from exc
        except StoreError:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._seq = _SeqCounter(int(last))

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @contextmanager
    def _guard(self, what: str) -> Iterator[sqlite3.Connection]:
        """The open connection; sqlite3 errors become ``StoreError`` naming the file."""
        if self._conn is None:
            raise StoreError(f"job store {self.path} is closed")
        try:
            yield self._conn
        except sqlite3.Error as exc:
            raise StoreError(f"job store {self.path}: {what} failed: {exc}") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One committed transaction; rolled back if the body raises."""
        with self._guard(what) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk does): a ROLLBACK would then
                # fail and hide the real error. A failed COMMIT leaves the transaction open:
                # later writes must not go into it.
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _row(record: JobRecord, text: str) -> tuple[Any, ...]:
        return (record.state.value, record.priority, record.seq, text, record.updated_at, record.id)

    def add(self, record: JobRecord) -> None:
        """Insert a new record, committed on return; assigns ``record.seq`` if 0."""
        self._seq.assign(record)
        row = self._row(record, encode_record(record, self.path))
        with self._guard(f"adding job {record.id}") as conn:  # autocommit: one transaction
            conn.execute(_INSERT, row)

    def add_many(self, records: Iterable[JobRecord]) -> None:
        """Insert new records in one transaction (one commit), all or none."""
        batch = list(records)
        for record in batch:
            self._seq.assign(record)
        rows = [self._row(r, encode_record(r, self.path)) for r in batch]
        with self._transaction(f"adding {len(rows)} jobs") as conn:
            conn.executemany(_INSERT, rows)

    def update(self, record: JobRecord) -> None:
        """Overwrite a stored record, committed on return."""
        row = self._row(record, encode_record(record, self.path))
        with self._guard(f"updating job {record.id}") as conn:  # autocommit: one statement, one commit
            if conn.execute(_UPDATE, row).rowcount != 1:
                raise StoreError(f"job store {self.path}: unknown job(s) {record.id}")

    def update_many(self, records: Iterable[JobRecord]) -> None:
        """Overwrite stored records in one transaction (one commit), all or none."""
        batch = list(records)
        rows = [self._row(r, encode_record(r, self.path)) for r in batch]
        with self._transaction(f"updating {len(rows)} jobs") as conn:
            if conn.executemany(_UPDATE, rows).rowcount != len(rows):
                known = {i for (i,) in conn.execute("SELECT id FROM jobs")}  # rare path
                missing = ", ".join(r.id for r in batch if r.id not in known) or "duplicates"
                raise StoreError(f"job store {self.path}: unknown job(s) {missing}")

    def write(self, added: Iterable[JobRecord] = (), updated: Iterable[JobRecord] = ()) -> None:
        """Store new records and overwrite others in one transaction (one commit), all or
        none: the scheduler's group commit.

        One statement (an upsert of every row) in autocommit mode: each call into
        SQLite lets go of the GIL, and getting it back costs far more than the
        write itself while the workers run, so a BEGIN/INSERT/UPDATE/COMMIT
        sequence would be several times slower. The price: no check that an
        added id is new or an updated one known (ids are uuid4, the scheduler
        updates only what it added).
        """
        new = list(added)
        for record in new:
            self._seq.assign(record)
        rows = [self._row(r, encode_record(r, self.path)) for r in (*new, *updated)]
        if len(rows) <= _UPSERT_ROWS:
            if rows:
                with self._guard(f"writing {len(rows)} jobs") as conn:
                    conn.execute(_upsert(len(rows)), [value for row in rows for value in row])
            return
        with self._transaction(f"writing {len(rows)} jobs") as conn:  # rare: a very long burst
            for start in range(0, len(rows), _UPSERT_ROWS):
                chunk = rows[start:start + _UPSERT_ROWS]
                conn.execute(_upsert(len(chunk)), [value for row in chunk for value in row])

    def assign_seq(self, record: JobRecord) -> None:
        """Give a new record its submission number now (``add`` would do it), so that it
        can be queued before it is written."""
        self._seq.assign(record)

    def get(self, job_id: str) -> JobRecord | None:
        """The stored record, or ``None``."""
        with self._guard(f"reading job {job_id}") as conn:
            # fetchall: a statement left unfinished keeps its read snapshot open on the connection
            rows = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchall()
        return _decode(rows[0][0], self.path) if rows else None

    def known_ids(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` the store has."""
        wanted = list(job_ids)
        known: set[str] = set()
        with self._guard(f"looking up {len(wanted)} jobs") as conn:
            for start in range(0, len(wanted), _UPSERT_ROWS):
                chunk = wanted[start:start + _UPSERT_ROWS]
                marks = ", ".join("?" * len(chunk))
                known.update(i for (i,) in conn.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", chunk))
        return known

    def unfinished(self) -> list[JobRecord]:
        """Queued, running and retrying records, by priority then seq."""
        marks = ",".join("?" * len(_UNFINISHED))
        sql = f"SELECT data FROM jobs WHERE state IN ({marks}) ORDER BY priority, seq"
        with self._guard("listing unfinished jobs") as conn:
            rows = conn.execute(sql, [s.value for s in _UNFINISHED]).fetchall()
        return [_decode(text, self.path) for (text,) in rows]

    def counts(self) -> dict[str, int]:
        """Number of records by state value; every state is present."""
        result = dict.fromkeys((state.value for state in JobState), 0)
        with self._guard("counting jobs") as conn:
            for state, n in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                result[state] = n
        return result

    def close(self) -> None:
        """Close the file (idempotent); later calls raise ``StoreError``."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


_INSERT = "INSERT INTO jobs (state, priority, seq, data, updated_at, id) VALUES (?, ?, ?, ?, ?, ?)"
_UPSERT_ROWS = 256  # rows per statement: 6 parameters each, well under SQLite's limit


@functools.lru_cache(maxsize=64)
def _upsert(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    return (f"INSERT INTO jobs (state, priority, seq, data, updated_at, id) VALUES {values} "
            "ON CONFLICT(id) DO UPDATE SET state = excluded.state, priority = excluded.priority, "
            "seq = excluded.seq, data = excluded.data, updated_at = excluded.updated_at")
_UPDATE = "UPDATE jobs SET state = ?, priority = ?, seq = ?, data = ?, updated_at = ? WHERE id = ?"


def claim_folder(folder: Path) -> int:
    """Take the store folder for one runtime: an exclusive ``flock`` on ``<folder>/runtime.lock``,
    held until the returned descriptor is closed (the kernel lets go of it when the
    process dies, even killed). Two runtimes on one store would both run its jobs.

    Raises:
        StoreError: another runtime (in this process or another) holds the folder, or it
            cannot be opened.
    """
    path = folder / "runtime.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open the job store lock {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise StoreError(
            f"job store {folder} is in use by another runtime{f' (pid {holder})' if holder else ''}: "
            "two runtimes on one store would both run its jobs; give each its own JOB_STORAGE_PATH"
        ) from None
    try:  # the pid only helps the refusal message of another runtime: the lock is what counts
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def recover(store: JobStore, live: Mapping[str, int] | None = None) -> list[JobRecord]:
    """Start-up after a crash: the jobs that were running become retrying.

    ``live`` maps the ids of jobs whose attempt is known to be still running (on a
    worker that outlived a scheduler restart) to that attempt's number; a running
    record with exactly that attempt is left running for the caller to adopt.

    Each interrupted job's open attempt (appended if the record has none) is
    closed with ``INTERRUPTED_ERROR`` and status ``"interrupted"``; it counts as an
    attempt, so a job that keeps killing the runtime still exhausts its retries.
    Its progress is cleared, since the next attempt starts over. Whether retries
    remain is the caller's decision.

    Returns:
        Every unfinished record, by priority then seq (the run order).
    """
    now = time.time()
    pending = store.unfinished()
    live = live or {}
    interrupted = [r for r in pending if r.state is JobState.RUNNING and live.get(r.id) != len(r.attempts)]
    for record in interrupted:
        last = record.attempts[-1] if record.attempts else None
        if last is None or last.get("finished_at") is not None:
            last = {"number": len(record.attempts) + 1, "started_at": record.updated_at,
                    "finished_at": None, "error": None, "status": "running"}
            record.attempts.append(last)
        last.update(finished_at=now, error=INTERRUPTED_ERROR, status="interrupted")
        record.state = JobState.RETRYING
        record.progress = None
        record.updated_at = now
    if interrupted:
        store.update_many(interrupted)
    return pending
