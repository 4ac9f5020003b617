"""CommandExecution against real child processes; no test sleeps, waits are on events or processes."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from runtime import child_exit, command_executor
from runtime.command_executor import CommandExecution
from runtime.executors import ExecutionResult
from runtime.registry import Script
from runtime.testing import process_gone, wait_until

WAIT = 10.0  # generous upper bound for every wait; a passing test never reaches it


def _command(tmp_path: Path, code: str, **fields: Any) -> Script:
    return Script(id="cmd", command=(sys.executable, "-c", textwrap.dedent(code)), folder=str(tmp_path), **fields)




# -- command scripts ---------------------------------------------------------------


def test_arguments_arrive_as_json_on_stdin_in_the_registry_folder(tmp_path: Path) -> None:
    script = _command(tmp_path, """
        import json, os, sys
        print(json.dumps({"got": json.load(sys.stdin), "cwd": os.getcwd()}))
    """)
    result = CommandExecution(script, {"name": "x", "n": 2}).run()
    assert result.status == "succeeded", result
    assert result.exit_code == 0 and result.error is None
    assert json.loads(result.stdout) == {"got": {"name": "x", "n": 2}, "cwd": str(tmp_path)}
    assert result.duration >= 0
    assert json.loads(json.dumps(result.to_dict()))["status"] == "succeeded"


def test_progress_lines_become_events_and_malformed_ones_stay_output(tmp_path: Path) -> None:
    script = _command(tmp_path, """
        print("::progress 0.25 a quarter")
        print("hello")
        print("::progress 7")
        print("::progress -1 below")
        print("::progress abc")
        print("::progress")
        print("::progress nan")
        print("::progressive 0.5")
        print("::progress 1 done", end="")
    """)
    events: list[tuple[float, str]] = []
    result = CommandExecution(script, {}, on_progress=lambda f, m: events.append((f, m))).run()
    assert result.status == "succeeded", result
    assert events == [(0.25, "a quarter"), (1.0, ""), (0.0, "below"), (1.0, "done")]
    assert result.stdout.splitlines() == ["hello", "::progress abc", "::progress", "::progress nan", "::progressive 0.5"]


def test_non_zero_exit_fails_with_code_and_last_stderr_line(tmp_path: Path) -> None:
    script = _command(tmp_path, """
        import sys
        print("some output")
        sys.stderr.write("warming up\\nboom: disk full\\n\\n")
        sys.exit(3)
    """)
    result = CommandExecution(script, {}).run()
    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.error == "exit code 3: boom: disk full"
    assert result.stdout == "some output\n"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    script = _command(tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """, timeout=0.5)
    result = CommandExecution(script, {}).run()
    assert result.status == "timeout"
    assert result.error == "timed out after 0.5s"
    assert result.duration < WAIT
    grandchild = int(result.stdout.split()[0])
    assert process_gone(grandchild)


def test_processes_left_behind_by_a_normal_exit_are_killed(tmp_path: Path) -> None:
    script = _command(tmp_path, """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(child.pid)
    """)
    result = CommandExecution(script, {}).run()
    assert result.status == "succeeded"
    assert process_gone(int(result.stdout))


def test_death_by_signal_fails(tmp_path: Path) -> None:
    result = CommandExecution(_command(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), {}).run()
    assert result.status == "failed"
    assert result.exit_code == -9
    assert result.error == "killed by signal 9"


def test_child_that_never_reads_a_large_stdin(tmp_path: Path) -> None:
    big = {"blob": "x" * (4 << 20)}  # far beyond a pipe buffer
    assert CommandExecution(_command(tmp_path, "print('done')"), big).run().status == "succeeded"
    blocked = _command(tmp_path, "import time; time.sleep(60)", timeout=0.2)
    assert CommandExecution(blocked, big).run().status == "timeout"


def test_explicit_timeout_overrides_the_scripts(tmp_path: Path) -> None:
    script = _command(tmp_path, "import time; time.sleep(60)", timeout=600)
    result = CommandExecution(script, {}, timeout=0.2).run()
    assert result.status == "timeout"
    assert result.duration < WAIT


def test_term_ignoring_child_is_killed(tmp_path: Path) -> None:
    # sh, not Python: under load an interpreter may not be ignoring SIGTERM yet after 0.2 s.
    script = Script(id="sh", command=("/bin/sh", "-c", "trap '' TERM; exec sleep 60"), folder=str(tmp_path),
                    timeout=0.2)
    result = CommandExecution(script, {}).run()
    assert result.status == "timeout"
    assert result.exit_code == -9


def test_cancel_from_another_thread_kills_the_group(tmp_path: Path) -> None:
    script = _command(tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        print("::progress 0 started", flush=True)
        time.sleep(60)
    """, timeout=600)
    started = threading.Event()
    execution = CommandExecution(script, {}, on_progress=lambda f, m: started.set())
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    assert started.wait(WAIT)
    execution.cancel()
    runner.join(WAIT)
    assert not runner.is_alive()
    [result] = results
    assert result.status == "cancelled"
    assert result.error == "cancelled"
    assert process_gone(int(result.stdout.split()[0]))


def test_cancel_before_run_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    execution = CommandExecution(_command(tmp_path, f"open({str(marker)!r}, 'w')"), {})
    execution.cancel()
    result = execution.run()
    assert result.status == "cancelled"
    assert result.exit_code is None
    assert not marker.exists()


def test_cancel_after_run_is_harmless(tmp_path: Path) -> None:
    execution = CommandExecution(_command(tmp_path, "pass"), {})
    assert execution.run().status == "succeeded"
    execution.cancel()
    with pytest.raises(RuntimeError):
        execution.run()


def test_output_beyond_the_cap_is_drained_and_reported(tmp_path: Path) -> None:
    # Megabytes on both pipes: without concurrent readers the child would block forever.
    script = _command(tmp_path, """
        import sys
        for _ in range(2000):
            sys.stdout.write("o" * 1023 + "\\n")
            sys.stderr.write("e" * 1023 + "\\n")
    """)
    result = CommandExecution(script, {}, output_cap=1000).run()
    assert result.status == "succeeded"
    assert result.stdout == "o" * 1000 and result.stdout_truncated
    assert result.stderr == "e" * 1000 and result.stderr_truncated


def test_output_within_the_cap_is_not_truncated(tmp_path: Path) -> None:
    result = CommandExecution(_command(tmp_path, "print('x' * 99)"), {}, output_cap=100).run()
    assert result.stdout == "x" * 99 + "\n"
    assert not result.stdout_truncated and not result.stderr_truncated


@pytest.mark.parametrize("program", ["/nonexistent/program", "no-such-program-on-path-xyz"])
def test_missing_program_fails_without_raising(tmp_path: Path, program: str) -> None:
    result = CommandExecution(Script(id="cmd", command=(program,), folder=str(tmp_path)), {}).run()
    assert result.status == "failed"
    assert result.exit_code is None
    assert result.error is not None and program in result.error and "No such file" in result.error
    assert result.to_dict()["retryable"] is False  # a retry would not find it either


def test_an_argv_no_program_can_take_fails_for_good_without_raising(tmp_path: Path) -> None:
    # The registry refuses a NUL in a command; a Script built in code can still carry one.
    result = CommandExecution(Script(id="cmd", command=("true", "a\0b"), folder=str(tmp_path)), {}).run()
    assert result.status == "failed" and "null byte" in (result.error or "")
    assert result.to_dict()["retryable"] is False


def test_a_program_that_cannot_start_for_now_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_processes(*args: Any, **kwargs: Any) -> Any:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(command_executor.subprocess, "Popen", out_of_processes)
    result = CommandExecution(Script(id="cmd", command=("true",), folder=str(tmp_path)), {}).run()
    assert result.status == "failed" and "Resource temporarily unavailable" in (result.error or "")
    assert "retryable" not in result.to_dict()


def test_raising_progress_callback_is_contained(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = _command(tmp_path, """
        print("::progress 0.1 one")
        print("between")
        print("::progress 0.9 two")
    """)
    calls: list[float] = []

    def broken(fraction: float, message: str) -> None:
        calls.append(fraction)
        raise RuntimeError("observer bug")

    with caplog.at_level(logging.ERROR, logger="runtime.executors"):
        result = CommandExecution(script, {}, on_progress=broken).run()
    assert result.status == "succeeded"
    assert result.stdout == "between\n"
    assert calls == [0.1, 0.9]
    assert "progress callback raised" in caplog.text


def test_argument_values_are_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = _command(tmp_path, "import sys; sys.stdin.read(); sys.exit(1)")
    with caplog.at_level(logging.DEBUG, logger="runtime.command_executor"):
        CommandExecution(script, {"password": "hunter2-secret"}).run()
    assert caplog.records and "hunter2-secret" not in caplog.text


def test_wrong_kind_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        CommandExecution(Script(id="py", kind="python", options=MappingProxyType({"callable": "m:f"})), {})


# -- the one loop: stdin, outputs, exit, timeout and cancel in the calling thread ------------


@pytest.fixture(params=["pidfd", "portable"])
def wait_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each loop test runs with a pidfd and an eventfd (Linux) and with neither (the
    ``waitid`` poll and the self-pipe every POSIX system has)."""
    if request.param == "pidfd":
        if not (child_exit.USE_PIDFD and command_executor._USE_EVENTFD):
            pytest.skip("no pidfd or eventfd on this platform")
    else:
        monkeypatch.setattr(child_exit, "USE_PIDFD", False)
        monkeypatch.setattr(command_executor, "_USE_EVENTFD", False)
    return str(request.param)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_progress_line_split_across_writes_is_one_event_in_the_calling_thread(tmp_path: Path, wait_mode: str) -> None:
    script = _command(tmp_path, """
        import sys, time
        for piece in ["::progress 0.5 ha", "lf\\nplain ", "text\\n::pro", "gress 1 all done\\n"]:
            sys.stdout.write(piece)
            sys.stdout.flush()
            time.sleep(0.02)  # lets the parent read each piece on its own
    """)
    events: list[tuple[float, str]] = []
    threads: set[int] = set()

    def observe(fraction: float, message: str) -> None:
        events.append((fraction, message))
        threads.add(threading.get_ident())

    result = CommandExecution(script, {}, on_progress=observe).run()
    assert result.status == "succeeded", result
    assert events == [(0.5, "half"), (1.0, "all done")]
    assert result.stdout == "plain text\n"
    assert threads == {threading.get_ident()}


def test_a_newline_less_flood_from_a_child_is_capped(tmp_path: Path) -> None:
    script = _command(tmp_path, """
        import sys
        sys.stdout.write("::progress 0.5 ")
        for _ in range(160):
            sys.stdout.write("x" * 65536)
    """)
    events: list[tuple[float, str]] = []
    result = CommandExecution(script, {}, on_progress=lambda f, m: events.append((f, m)), output_cap=1000).run()
    assert result.status == "succeeded", result
    assert result.stdout == "::progress 0.5 " + "x" * 985 and result.stdout_truncated
    assert events == []


def test_stdin_larger_than_a_pipe_reaches_a_child_that_reads_it_all(tmp_path: Path, wait_mode: str) -> None:
    script = _command(tmp_path, """
        import json, sys
        print(len(json.load(sys.stdin)["blob"]))
    """)
    result = CommandExecution(script, {"blob": "x" * (4 << 20)}).run()
    assert result.status == "succeeded", result
    assert result.stdout == f"{4 << 20}\n"


def test_a_child_that_reads_part_of_stdin_and_exits(tmp_path: Path, wait_mode: str) -> None:
    script = _command(tmp_path, "import sys; sys.stdin.buffer.read(10); print('enough')")
    result = CommandExecution(script, {"blob": "x" * (4 << 20)}).run()
    assert result.status == "succeeded", result
    assert result.stdout == "enough\n"


def test_a_child_that_closes_its_outputs_is_still_awaited(tmp_path: Path, wait_mode: str) -> None:
    script = _command(tmp_path, """
        import os, sys
        os.close(1)
        os.close(2)
        sys.stdin.read()  # the exit comes after both outputs have ended
        os._exit(4)
    """)
    result = CommandExecution(script, {"blob": "x" * 100_000}).run()
    assert result.status == "failed"
    assert result.exit_code == 4


def test_timeout_in_the_loop_kills_the_group(tmp_path: Path, wait_mode: str) -> None:
    # sh starts in a blink, so the grandchild's pid is out long before the timeout.
    script = Script(id="sh", command=("/bin/sh", "-c", "sleep 60 & echo $!; exec sleep 60"), timeout=0.5)
    result = CommandExecution(script, {}).run()
    assert result.status == "timeout"
    assert result.exit_code == -15
    assert process_gone(int(result.stdout.split()[0]))


def test_cancel_while_the_loop_waits_on_a_silent_child(tmp_path: Path, wait_mode: str) -> None:
    marker = tmp_path / "running"
    script = _command(tmp_path, f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so the grace runs out and SIGKILL follows
        open({str(marker)!r}, "w").close()
        time.sleep(60)
    """, timeout=600)
    execution = CommandExecution(script, {})
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    wait_until(marker.exists, WAIT)
    execution.cancel()
    execution.cancel()  # a second cancel changes nothing
    runner.join(WAIT)
    assert not runner.is_alive()
    [result] = results
    assert result.status == "cancelled"
    assert result.exit_code == -9
    assert result.duration < WAIT


def test_cancel_racing_the_start_never_hangs_or_leaks(tmp_path: Path, wait_mode: str) -> None:
    before = _open_fds()
    script = Script(id="true", command=("/bin/true",), folder=str(tmp_path))
    for _ in range(20):
        execution = CommandExecution(script, {})
        canceller = threading.Thread(target=execution.cancel)
        canceller.start()
        result = execution.run()
        canceller.join(WAIT)
        assert result.status in ("cancelled", "succeeded"), result
    assert _open_fds() == before


def test_an_attempt_leaves_no_descriptor_open(tmp_path: Path, wait_mode: str) -> None:
    def run(*command: str, timeout: float = 10.0, **arguments: Any) -> str:
        script = Script(id="cmd", command=command, folder=str(tmp_path), timeout=timeout)
        return CommandExecution(script, arguments).run().status

    before = _open_fds()
    assert run("/bin/echo", "x") == "succeeded"
    assert run("/bin/false", blob="x" * 100_000) == "failed"
    assert run("/bin/sleep", "60", timeout=0.1) == "timeout"
    assert run("/nonexistent/program") == "failed"
    assert _open_fds() == before


def test_outputs_held_open_by_a_process_that_left_the_group_are_drained_for_a_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(command_executor, "_DRAIN_TIMEOUT", 0.3)
    script = _command(tmp_path, """
        import subprocess, sys
        # A new session: out of the group's reach, and it keeps both outputs open.
        escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        print(escaped.pid, flush=True)
    """)
    with caplog.at_level(logging.WARNING, logger="runtime.command_executor"):
        result = CommandExecution(script, {}).run()
    escaped = int(result.stdout)
    try:
        assert result.status == "succeeded", result
        assert result.duration < WAIT
        assert "left the group" in caplog.text
    finally:
        os.kill(escaped, signal.SIGKILL)
    assert process_gone(escaped)


def test_the_child_leads_its_own_group_and_inherits_only_0_to_2(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # would leak into a child that kept what it may inherit
    try:
        script = _command(tmp_path, f"""
            import json, os
            try:
                os.fstat({write_end})
                leaked = True
            except OSError:
                leaked = False
            print(json.dumps({{"leader": os.getpgrp() == os.getpid(), "leaked": leaked}}))
        """)
        result = CommandExecution(script, {}).run()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.status == "succeeded", result
    assert json.loads(result.stdout) == {"leader": True, "leaked": False}


def test_a_timeout_of_years_is_no_error(tmp_path: Path) -> None:
    result = CommandExecution(_command(tmp_path, "print('quick')"), {}, timeout=1e12).run()
    assert (result.status, result.stdout) == ("succeeded", "quick\n")

def test_a_kernel_without_pidfd_falls_back_to_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open is not implemented")

    with monkeypatch.context() as patched:
        patched.setattr(command_executor.os, "pidfd_open", no_pidfd)
        ok = CommandExecution(_command(tmp_path, "print('ok')"), {}).run()
        slow = CommandExecution(_command(tmp_path, "import time; time.sleep(60)", timeout=0.2), {}).run()
    assert (ok.status, ok.stdout) == ("succeeded", "ok\n")
    assert slow.status == "timeout"
