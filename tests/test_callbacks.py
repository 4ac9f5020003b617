"""CallbackRunner as plain code: per-job order, jobs side by side, errors contained."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from runtime.callbacks import CallbackRunner
from runtime.testing import wait_until


@pytest.fixture
def runner() -> Iterator[CallbackRunner]:
    runner = CallbackRunner(threads=2)
    yield runner
    runner.close()


def test_calls_of_one_job_run_in_order(runner: CallbackRunner) -> None:
    seen: list[int] = []
    for n in range(200):
        runner.post(seen.append, n, job_id="a")
    wait_until(lambda: len(seen) == 200)
    assert seen == list(range(200))


def test_a_blocked_callback_holds_up_only_its_own_job(runner: CallbackRunner) -> None:
    hold, entered = threading.Event(), threading.Event()
    seen: list[str] = []

    def blocking(tag: str) -> None:
        entered.set()
        hold.wait(10)
        seen.append(tag)

    runner.post(blocking, "a1", job_id="a")
    runner.post(seen.append, "a2", job_id="a")
    assert entered.wait(5)
    for n in range(3):
        runner.post(seen.append, f"b{n}", job_id="b")
    runner.post(seen.append, "no job")
    wait_until(lambda: len(seen) == 4, message="job b waited behind job a")
    assert sorted(seen) == ["b0", "b1", "b2", "no job"] and "a2" not in seen
    hold.set()
    wait_until(lambda: seen[-2:] == ["a1", "a2"], message="job a's calls lost or out of order")


def test_a_raising_callback_is_logged_and_the_next_one_runs(runner: CallbackRunner,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def raising() -> None:
        raise RuntimeError("observer bug")

    with caplog.at_level(logging.ERROR, logger="runtime.callbacks"):
        runner.post(raising, job_id="a")
        runner.post(seen.append, "after", job_id="a")
        wait_until(lambda: seen == ["after"])
    assert "observer bug" in caplog.text


def test_close_runs_what_is_queued() -> None:
    runner = CallbackRunner(threads=2)
    seen: list[int] = []
    for n in range(50):
        runner.post(seen.append, n, job_id=f"j{n % 5}")
    runner.close()
    assert sorted(seen) == list(range(50))


def test_an_inline_call_runs_at_once_unless_its_job_has_calls_queued(runner: CallbackRunner) -> None:
    caller = threading.current_thread()
    threads: list[threading.Thread] = []
    runner.post(lambda: threads.append(threading.current_thread()), job_id="a", inline=True)
    assert threads == [caller]  # nothing of job a queued: no hop
    hold = threading.Event()
    runner.post(hold.wait, 10, job_id="b")
    runner.post(lambda: threads.append(threading.current_thread()), job_id="b", inline=True)
    assert len(threads) == 1  # behind job b's queued call
    hold.set()
    wait_until(lambda: len(threads) == 2)
    assert threads[1] is not caller


@pytest.mark.parametrize("raised", [SystemExit(1), KeyboardInterrupt()])
def test_even_a_base_exception_from_a_callback_is_contained(runner: CallbackRunner, raised: BaseException) -> None:
    seen: list[str] = []

    def raising() -> None:
        raise raised

    runner.post(raising, job_id="a")
    runner.post(seen.append, "after", job_id="a")  # the job's next call still runs
    wait_until(lambda: seen == ["after"], message="a callback's BaseException stranded its job")


def test_jobs_get_threads_of_their_own_while_every_thread_is_blocked() -> None:
    runner = CallbackRunner(threads=2, most=4)
    hold = threading.Event()
    entered: list[str] = []
    seen: list[str] = []

    def blocking(tag: str) -> None:
        entered.append(tag)
        hold.wait(10)

    try:
        for job in ("a", "b", "c", "d"):  # more blocked jobs than the two threads kept
            runner.post(blocking, job, job_id=job)
        wait_until(lambda: sorted(entered) == ["a", "b", "c", "d"], message="a job waited for another's callback")
        assert runner.thread_count() == 4
        runner.post(seen.append, "e", job_id="e")  # past `most`: it waits for a free thread
        assert runner.thread_count() == 4 and seen == []
    finally:
        hold.set()
    wait_until(lambda: seen == ["e"], message="a job beyond the limit never ran")
    # The threads started for the busy moment end with it.
    wait_until(lambda: runner.thread_count() == 2, message="extra callback threads did not end")
    runner.close()
    assert runner.thread_count() == 0


def test_close_waits_its_timeout_once_for_all_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CallbackRunner(threads=1, most=4)
    hold = threading.Event()
    started = [threading.Event() for _ in range(4)]
    given: list[float] = []
    real_join = threading.Thread.join

    def join(self: threading.Thread, timeout: float | None = None) -> None:
        given.append(timeout if timeout is not None else float("inf"))
        real_join(self, timeout)

    try:
        for i in range(4):  # every thread blocked: the watcher adds threads up to four
            runner.post(lambda i=i: (started[i].set(), hold.wait(30)), job_id=f"j{i}")
            assert started[i].wait(5)
        monkeypatch.setattr(threading.Thread, "join", join)
        runner.close(timeout=0.5)
    finally:
        hold.set()
    assert len(given) == 5 and sum(given) <= 0.5 * 1.5  # one shared deadline, not 0.5 s per thread
