"""Start marks: what a worker notes before an in-process attempt, and how a start-up
records the attempts that the store had not stored yet."""

from __future__ import annotations

import signal
import subprocess
import zlib
from pathlib import Path

import pytest

from runtime.errors import StoreError
from runtime.start_marks import (StartMark, StartMarker, apply_marks, filesystem_of, marks_folder, process_started,
                                 read_marks, stop_left_running)
from runtime.store import INTERRUPTED_ERROR, JobRecord, JobState, SqliteStore, recover


def test_a_worker_slot_holds_its_last_start_only(tmp_path: Path) -> None:
    folder = marks_folder(tmp_path)
    marker = StartMarker(folder, "worker-0")
    other = StartMarker(folder, "worker-1")
    try:
        marker.note("a" * 32, 1)
        marker.note("b" * 32, 12)  # overwrites in place: one slot per worker
        other.note("c" * 32, 3)
        marks = read_marks(folder)
    finally:
        marker.close()
        other.close()
        marker.close()  # idempotent
    assert [(m.job_id, m.attempt) for m in marks] == [("b" * 32, 12), ("c" * 32, 3)]
    assert all(m.at > 0 for m in marks)
    with pytest.raises(StoreError, match="closed"):
        marker.note("d" * 32, 1)


def test_missing_empty_and_damaged_marks_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = marks_folder(tmp_path)
    assert read_marks(folder) == []
    folder.mkdir()
    (folder / "worker-0.start").write_bytes(b"")
    (folder / "worker-1.start").write_bytes(b"not a mark\n")
    (folder / "worker-2.start").write_bytes(b"\xff\xfe")
    crc = zlib.crc32(b"abc 2 1700000000.5")
    (folder / "worker-3.start").write_bytes(f"abc 2 1700000000.5 {crc:08x}\n".encode() + b" " * 50)
    # Torn by a kill mid-copy: the start of a new mark over the rest of the last one.
    (folder / "worker-4.start").write_bytes(f"xyz 2 1700000000.5 {crc:08x}\n".encode())
    assert read_marks(folder) == [StartMark("abc", 2, 1700000000.5)]
    assert "worker-1.start holds no whole mark" in caplog.text and "worker-2.start unreadable" in caplog.text
    assert "worker-4.start holds no whole mark" in caplog.text


def test_a_child_left_running_is_killed_by_its_mark_and_no_other_process_is(tmp_path: Path) -> None:
    folder = marks_folder(tmp_path)
    child = subprocess.Popen(["sleep", "60"], process_group=0)  # as CommandExecution starts one
    bystander = subprocess.Popen(["sleep", "60"], process_group=0)
    marker = StartMarker(folder, "worker-0")
    try:
        marker.note("a" * 32, 2, child.pid)
        (mark,) = read_marks(folder)
        assert mark.process == (child.pid, process_started(child.pid)) and mark.attempt == 2
        # A mark whose pid names a process started at another time (the pid was given again).
        started = process_started(bystander.pid)
        assert started is not None
        stale = StartMark("b" * 32, 1, mark.at, (bystander.pid, started - 1))
        gone = StartMark("c" * 32, 1, mark.at, (2**22 + 7, 1))  # no such process
        # The bystander's own pid and start time, but marked before this boot: pids recur.
        earlier_boot = StartMark("e" * 32, 1, 1_000_000_000.0, (bystander.pid, started))
        assert stop_left_running([mark, stale, gone, earlier_boot, StartMark("d" * 32, 1, mark.at)]) == ["a" * 32]
        assert child.wait(10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        marker.close()
        for proc in (child, bystander):
            proc.kill()
            proc.wait(10)


def test_a_mark_written_before_children_were_marked_still_reads(tmp_path: Path) -> None:
    folder = marks_folder(tmp_path)
    folder.mkdir()
    body = "a" * 32 + " 3 1700000000.500000"
    (folder / "worker-0.start").write_bytes(f"{body} {zlib.crc32(body.encode()):08x}\n".encode())
    assert read_marks(folder) == [StartMark("a" * 32, 3, 1700000000.5, None)]


def test_on_a_copy_on_write_filesystem_marks_are_written_not_mapped(tmp_path: Path) -> None:
    mounts = ("/dev/sda1 / ext4 rw 0 0\n"
              "/dev/sdb1 /data btrfs rw,relatime 0 0\n"
              "tank/jobs /data/jobs\\040store zfs rw 0 0\n")
    assert filesystem_of(Path("/data/x/y"), mounts) == "btrfs"
    assert filesystem_of(Path("/data/jobs store/starts"), mounts) == "zfs"
    assert filesystem_of(Path("/database"), mounts) == "ext4"  # /data is not a prefix of /database
    assert filesystem_of(Path("/x"), "") == ""
    folder = marks_folder(tmp_path)
    marker = StartMarker(folder, "worker-0", memory_map=False)  # the pwrite path
    try:
        marker.note("a" * 32, 4)
    finally:
        marker.close()
    assert [(m.job_id, m.attempt) for m in read_marks(folder)] == [("a" * 32, 4)]
    with pytest.raises(StoreError, match="closed"):
        marker.note("a" * 32, 5)


def test_a_folder_that_cannot_hold_marks_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot open the start mark .*worker-0\.start"):
        StartMarker(blocker / "starts", "worker-0")


def test_marks_add_the_attempts_the_store_missed_and_recovery_interrupts_them(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs")
    try:
        queued = JobRecord.new("s")                  # started, never stored as running
        retrying = JobRecord.new("s")                # attempt 2 started after a stored failure
        retrying.attempts.append({"number": 1, "started_at": 1.0, "finished_at": 2.0, "error": "boom",
                                  "status": "failed"})
        retrying.state = JobState.RETRYING
        known = JobRecord.new("s")                   # the store has the attempt already
        known.attempts.append({"number": 1, "started_at": 1.0, "finished_at": None, "error": None,
                               "status": "running"})
        known.state = JobState.RUNNING
        done = JobRecord.new("s")                    # finished: its old mark means nothing
        done.attempts.append({"number": 1, "started_at": 1.0, "finished_at": 2.0, "error": None,
                              "status": "succeeded"})
        done.state = JobState.SUCCEEDED
        store.add_many([queued, retrying, known, done])
        marks = [StartMark(queued.id, 1, 5.0), StartMark(retrying.id, 2, 6.0), StartMark(known.id, 1, 7.0),
                 StartMark(done.id, 1, 8.0), StartMark("f" * 32, 1, 9.0)]
        assert apply_marks(store, marks) == [queued.id, retrying.id]
        assert apply_marks(store, marks) == []  # applied twice: nothing more
        marked = store.get(queued.id)
        assert marked is not None and marked.updated_at == queued.updated_at  # a mark never moves it back
        recover(store)
        got = {r.id: r for r in (store.get(j) for j in (queued.id, retrying.id, known.id, done.id)) if r}
    finally:
        store.close()
    assert [(a["number"], a["status"], a["error"], a["started_at"]) for a in got[queued.id].attempts] == [
        (1, "interrupted", INTERRUPTED_ERROR, 5.0)]
    assert [a["status"] for a in got[retrying.id].attempts] == ["failed", "interrupted"]
    assert got[queued.id].state is got[retrying.id].state is got[known.id].state is JobState.RETRYING
    assert len(got[known.id].attempts) == 1 and got[done.id].state is JobState.SUCCEEDED


def test_a_store_several_attempts_behind_counts_every_start(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs")
    try:
        behind = JobRecord.new("s")  # attempt 1 failed and 2 started: neither was committed
        open_one = JobRecord.new("s")  # attempt 1's start was committed, its end and attempt 2 were not
        open_one.attempts.append({"number": 1, "started_at": 1.0, "finished_at": None, "error": None,
                                  "status": "running"})
        open_one.state = JobState.RUNNING
        store.add_many([behind, open_one])
        # Two slots name one job (its attempts ran on two workers): the highest attempt counts.
        marks = [StartMark(behind.id, 1, 5.0), StartMark(behind.id, 2, 6.0), StartMark(open_one.id, 2, 7.0)]
        assert sorted(apply_marks(store, marks)) == sorted([behind.id, open_one.id])
        recover(store)
        got = {j: store.get(j) for j in (behind.id, open_one.id)}
    finally:
        store.close()
    for record in got.values():
        assert record is not None
        assert [(a["number"], a["status"]) for a in record.attempts] == [(1, "interrupted"), (2, "interrupted")]
        assert all(a["finished_at"] is not None for a in record.attempts)


def test_an_id_too_long_for_the_slot_is_refused(tmp_path: Path) -> None:
    marker = StartMarker(marks_folder(tmp_path), "worker-0")
    try:
        marker.note("a" * 32, 1)
        with pytest.raises(StoreError, match="too long for its slot"):
            marker.note("x" * 200, 1)
    finally:
        marker.close()
    assert [(m.job_id, m.attempt) for m in read_marks(marks_folder(tmp_path))] == [("a" * 32, 1)]
