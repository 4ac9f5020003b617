"""The submit journal: a job is in the file before it is delivered, a new scheduler
instance replays what none accepted, and the file is emptied only once all of it is
stored."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest

from runtime import submit_journal
from runtime.errors import RuntimeStopped, StoreError
from runtime.registry import Script
from runtime.store import JobRecord
from runtime.submit_journal import SubmitJournal, parse

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Script("s")


def _record(n: int = 0) -> JobRecord:
    return JobRecord.new("s", {"n": n})


def _ids(path: Path) -> list[str]:
    records, bad = parse(path.read_bytes())
    assert bad == 0
    return [r.id for r in records]


def _nothing(*_: Any) -> None:
    return None


def _two_submitted_cut_at_once(journal: SubmitJournal, monkeypatch: pytest.MonkeyPatch) -> tuple[JobRecord, ...]:
    """Records a, b, c: a and b submitted, c not yet; committed lines are cut at once."""
    monkeypatch.setattr(submit_journal, "EMPTY_AT", 1)
    journal.take_over(_nothing, _nothing)
    a, b, c = _record(1), _record(2), _record(3)
    journal.submit(a, SCRIPT, (None, None), 1)
    journal.submit(b, SCRIPT, (None, None), 1)
    return a, b, c


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    made = SubmitJournal(tmp_path)
    yield made
    made.close()


def test_a_submit_is_in_the_file_before_it_is_delivered(journal: SubmitJournal) -> None:
    seen: list[tuple[str, list[str]]] = []
    journal.take_over(lambda record, script: seen.append((record.id, _ids(journal.path))), _nothing)
    a, b = _record(1), _record(2)
    journal.submit(a, SCRIPT, (None, None), 1)
    journal.submit(b, SCRIPT, (None, None), 1)
    assert seen == [(a.id, [a.id]), (b.id, [a.id, b.id])]
    assert parse(journal.path.read_bytes())[0] == [a, b]  # the whole record, as JSON


def test_a_new_instance_replays_the_journal_and_gets_the_callbacks_no_instance_took(
    journal: SubmitJournal,
) -> None:
    journal.take_over(_nothing, _nothing)  # an instance that will fail
    on_done, progress = (lambda status: None), (lambda *event: None)
    a, b = _record(1), _record(2)
    journal.submit(a, SCRIPT, (progress, on_done), 1)
    journal.submit(b, SCRIPT, (None, on_done), 1)
    assert journal.accepted(b.id) == (None, on_done)  # it handled b's Submitted, not a's
    journal.stop_delivery(_nothing)
    inserted: list[JobRecord] = []
    assert journal.take_over(_nothing, inserted.extend) == {a.id: (progress, on_done)}
    assert inserted == [a, b]  # the scheduler skips what its store has
    assert journal.path.read_bytes() == b""


def test_a_new_process_replays_what_the_last_one_left(tmp_path: Path) -> None:
    first = SubmitJournal(tmp_path)
    first.take_over(_nothing, _nothing)
    a = _record()
    first.submit(a, SCRIPT, (None, None), 1)
    first.close()  # as a kill would leave it: the line stays
    second = SubmitJournal(tmp_path)
    try:
        inserted: list[JobRecord] = []
        assert second.take_over(_nothing, inserted.extend) == {}
        assert inserted == [a]
    finally:
        second.close()


def test_a_failed_replay_changes_nothing_and_takes_no_deliveries(journal: SubmitJournal) -> None:
    journal.take_over(_nothing, _nothing)
    a = _record()
    journal.submit(a, SCRIPT, (None, None), 1)
    journal.stop_delivery(_nothing)

    def failing(_records: list[JobRecord]) -> None:
        raise StoreError("disk I/O error (simulated)")

    with pytest.raises(StoreError, match="simulated"):
        journal.take_over(_nothing, failing)
    assert _ids(journal.path) == [a.id]
    with pytest.raises(RuntimeStopped, match="did not come back"):
        journal.submit(_record(), SCRIPT, (None, None), 0.01)


def test_torn_and_damaged_lines_are_skipped(journal: SubmitJournal, caplog: pytest.LogCaptureFixture) -> None:
    journal.take_over(_nothing, _nothing)
    a, b = _record(1), _record(2)
    journal.submit(a, SCRIPT, (None, None), 1)
    journal.submit(b, SCRIPT, (None, None), 1)
    journal.stop_delivery(_nothing)
    lines = journal.path.read_bytes().splitlines(keepends=True)
    damaged = lines[0].replace(b'"n":1', b'"n":7')  # the CRC no longer matches
    journal.path.write_bytes(damaged + lines[1] + lines[1][:40])  # and a line cut by a kill
    inserted: list[JobRecord] = []
    journal.take_over(_nothing, inserted.extend)
    assert inserted == [b]
    assert "2 unreadable line(s)" in caplog.text


def test_committed_jobs_are_cut_off_and_the_rest_stays(
    journal: SubmitJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = _two_submitted_cut_at_once(journal, monkeypatch)
    journal.committed(1)
    assert _ids(journal.path) == [b.id]  # a is in the store; b is not yet
    journal.submit(c, SCRIPT, (None, None), 1)
    assert _ids(journal.path) == [b.id, c.id]  # appended to the new file
    journal.committed(2)
    assert journal.path.read_bytes() == b""
    assert not journal.path.with_name("submits.journal.new").exists()


def test_the_journal_is_kept_until_it_is_worth_emptying(journal: SubmitJournal) -> None:
    journal.take_over(_nothing, _nothing)
    a = _record()
    journal.submit(a, SCRIPT, (None, None), 1)
    journal.committed(1)
    assert _ids(journal.path) == [a.id]  # one line: a truncate per commit would cost more


def test_a_submit_waits_for_a_scheduler_and_fails_once_the_runtime_stops(journal: SubmitJournal) -> None:
    with pytest.raises(RuntimeStopped, match="did not come back within 0.01 s"):
        journal.submit(_record(), SCRIPT, (None, None), 0.01)
    assert journal.path.read_bytes() == b""  # nothing appended without a scheduler to tell
    outcomes: list[Any] = []

    def submit(record: JobRecord) -> None:
        try:
            journal.submit(record, SCRIPT, (None, None), 30)
            outcomes.append(record.id)
        except RuntimeStopped as e:
            outcomes.append(e)

    delivered: list[str] = []

    def deliver(record: JobRecord, script: Script) -> None:
        delivered.append(record.id)

    first = threading.Thread(target=submit, args=(a := _record(1),))
    first.start()
    journal.take_over(deliver, _nothing)
    first.join(5)
    assert outcomes == [a.id] and delivered == [a.id]
    journal.stop_delivery(deliver)
    second = threading.Thread(target=submit, args=(_record(2),))
    second.start()
    journal.close()
    second.join(5)
    assert not second.is_alive()
    assert isinstance(outcomes[1], RuntimeStopped) and "stopped" in str(outcomes[1])


def test_a_delivery_to_a_dead_instance_leaves_the_job_to_the_next(journal: SubmitJournal) -> None:
    def dead(record: JobRecord, script: Script) -> None:
        raise pykka.ActorDeadError("scheduler is dead")

    journal.take_over(dead, _nothing)
    on_done = (lambda status: None)
    a = _record()
    journal.submit(a, SCRIPT, (None, on_done), 1)  # durable: the submit succeeds
    with pytest.raises(RuntimeStopped):  # and deliveries wait for the next instance
        journal.submit(_record(), SCRIPT, (None, None), 0.01)
    inserted: list[JobRecord] = []
    assert journal.take_over(_nothing, inserted.extend) == {a.id: (None, on_done)}
    assert inserted == [a]


def test_a_record_that_is_not_json_is_refused(journal: SubmitJournal) -> None:
    journal.take_over(_nothing, _nothing)
    with pytest.raises(StoreError, match="not JSON"):
        journal.submit(JobRecord.new("s", {"x": float("nan")}), SCRIPT, (None, None), 1)
    assert journal.path.read_bytes() == b""


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from runtime.errors import StoreError
    from runtime.registry import Script
    from runtime.store import JobRecord
    from runtime.submit_journal import SubmitJournal
    journal = SubmitJournal(Path({folder!r}))
    journal.take_over(lambda record, script: None, lambda records: None)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
    accepted = 0
    try:
        while True:
            journal.submit(JobRecord.new("s", {{"pad": "x" * 100}}), Script("s"), (None, None), 1)
            accepted += 1
    except StoreError as e:
        print(accepted, e)
""")


def test_a_write_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    # A file size limit makes write() stop part way, as a full disk would.
    code = FULL_DISK.format(root=str(ROOT), folder=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    accepted, message = done.stdout.split(" ", 1)
    assert "cannot write the submit journal" in message and "too large" in message
    records, bad = parse((tmp_path / "submits.journal").read_bytes())
    assert bad == 0 and len(records) == int(accepted) > 0  # every accepted job, nothing else


def test_a_late_withdrawal_leaves_the_next_instance_its_deliveries(journal: SubmitJournal) -> None:
    def old(record: JobRecord, script: Script) -> None:
        return None

    delivered: list[str] = []
    journal.take_over(old, _nothing)
    journal.take_over(lambda record, script: delivered.append(record.id), _nothing)  # its successor
    journal.stop_delivery(old)  # the old instance's clean-up comes late
    a = _record()
    journal.submit(a, SCRIPT, (None, None), 1)
    assert delivered == [a.id]


def test_submitters_wait_while_the_scheduler_is_too_far_behind(
    journal: SubmitJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit_journal, "MAX_AHEAD", 2)
    delivered: list[str] = []
    journal.take_over(lambda record, script: delivered.append(record.id), _nothing)
    a, b, c = _record(1), _record(2), _record(3)
    journal.submit(a, SCRIPT, (None, None), 1)
    journal.submit(b, SCRIPT, (None, None), 1)
    with pytest.raises(TimeoutError, match="2 submits behind"):
        journal.submit(c, SCRIPT, (None, None), 0.01)
    assert _ids(journal.path) == [a.id, b.id]  # nothing appended for c
    journal.accepted(a.id)  # half the backlog is taken: submitters may go on
    journal.submit(c, SCRIPT, (None, None), 1)
    assert delivered == [a.id, b.id, c.id]


def test_after_a_cut_submits_go_to_the_file_on_disk(journal: SubmitJournal, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cut replaces the file: later appends must reach the new one, even when no new
    # descriptor can be opened (too many open files).
    a, b, c = _two_submitted_cut_at_once(journal, monkeypatch)

    def no_descriptors(self: SubmitJournal) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(SubmitJournal, "_open", no_descriptors)
    journal.committed(1)
    journal.submit(c, SCRIPT, (None, None), 1)
    assert _ids(journal.path) == [b.id, c.id]


def test_a_failed_close_after_a_cut_loses_no_line(journal: SubmitJournal, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = _two_submitted_cut_at_once(journal, monkeypatch)
    replaced_fd = journal._fd
    close = os.close

    def failing_close(fd: int) -> None:
        close(fd)
        if fd == replaced_fd:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "close", failing_close)
    journal.committed(1)  # a is cut off; closing the replaced file fails
    monkeypatch.setattr(os, "close", close)
    journal.submit(c, SCRIPT, (None, None), 1)
    journal.committed(1)  # b is committed, c is not
    assert _ids(journal.path) == [c.id]
