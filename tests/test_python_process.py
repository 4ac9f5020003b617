"""PythonProcess against real host processes; no test sleeps, waits are on events or processes."""

from __future__ import annotations

import errno
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from runtime import child_exit
from runtime.executors import ExecutionResult, run_python
from runtime.python_host import _Channel
from runtime.python_process import _CHUNK, _READ_CHUNKS, PythonProcess, _Host
from runtime.registry import MAX_TIMEOUT, Script
from runtime.testing import process_gone

WAIT = 10.0  # generous upper bound for every wait; a passing test never reaches it


def _script(callable_spec: Any, **fields: Any) -> Script:
    if isinstance(callable_spec, str) and ":" not in callable_spec:
        callable_spec = f"tests.python_jobs:{callable_spec}"
    options = MappingProxyType({"callable": callable_spec, "isolation": "process"})
    return Script(id="py", kind="python", options=options, **fields)




@pytest.fixture(params=["pidfd", "portable"])
def process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[PythonProcess]:
    """A process of the test's own: for tests about the host's life, or that need a fresh one.

    Each such test runs twice: seeing the host's exit through a pidfd (Linux >= 5.3), and
    through the ``waitid`` poll of a kernel without them (``pidfd_open`` fails with ENOSYS)."""
    if request.param == "pidfd" and not child_exit.USE_PIDFD:
        pytest.skip("no pidfd on this platform")
    if request.param == "portable":
        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

        monkeypatch.setattr(child_exit, "USE_PIDFD", True)
        monkeypatch.setattr(os, "pidfd_open", no_pidfd, raising=False)
    with PythonProcess() as python_process:
        yield python_process


@pytest.fixture(scope="module")
def shared() -> Iterator[PythonProcess]:
    """One host for the tests about results: reuse is the normal case, and start-ups are slow."""
    with PythonProcess() as python_process:
        yield python_process


# -- results ---------------------------------------------------------------------------


def test_a_returned_value_succeeds(shared: PythonProcess) -> None:
    result = shared.run(_script("add"), {"a": 2, "b": 3})
    assert result.status == "succeeded", result
    assert result.value == {"sum": 5}
    assert result.error is None and result.exit_code is None
    assert result.duration >= 0


def test_arguments_arrive_as_keyword_arguments(shared: PythonProcess) -> None:
    arguments = {"text": "é\u2028x", "n": 3, "ratio": 0.5, "flag": True, "items": [1, {"k": None}]}
    result = shared.run(_script("echo"), arguments)
    assert result.status == "succeeded", result
    assert result.value == arguments


def test_progress_events_arrive_in_order_clamped_like_in_thread(shared: PythonProcess) -> None:
    events: list[tuple[float, str]] = []
    result = shared.run(_script("steps"), {"n": 4}, lambda f, m: events.append((f, m)))
    assert result.status == "succeeded", result
    assert result.value == 4
    expected = [(0.25, "step 1"), (0.5, "step 2"), (0.75, "step 3"), (1.0, "step 4"), (1.0, "")]
    assert events == expected
    in_thread: list[tuple[float, str]] = []
    run_python(_script("steps"), {"n": 4}, lambda f, m: in_thread.append((f, m)))
    assert in_thread == expected


def test_progress_without_an_observer_or_with_a_broken_one(shared: PythonProcess) -> None:
    assert shared.run(_script("steps"), {"n": 2}).value == 2

    def broken(fraction: float, message: str) -> None:
        raise RuntimeError("observer bug")

    assert shared.run(_script("steps"), {"n": 2}, broken).status == "succeeded"


def test_an_exception_fails_with_type_and_message_and_the_host_lives_on(shared: PythonProcess) -> None:
    result = shared.run(_script("boom"), {})
    assert result.status == "failed"
    assert result.error == "RuntimeError: nope"
    pid = shared.pid
    interrupted = shared.run(_script("interrupted"), {})
    assert interrupted.status == "failed" and interrupted.error == "KeyboardInterrupt: "
    assert shared.run(_script("pid"), {}).value == pid


@pytest.mark.parametrize("name", ["returns_a_set", "returns_nan"])
def test_a_non_json_return_value_fails_and_the_host_lives_on(shared: PythonProcess, name: str) -> None:
    result = shared.run(_script(name), {})
    assert result.status == "failed"
    assert result.value is None
    assert result.error == run_python(_script(name), {}).error
    assert result.error is not None and result.error.startswith("the return value is not JSON-serialisable: ")
    assert shared.run(_script("pid"), {}).value == shared.pid


@pytest.mark.parametrize(
    "spec",
    [None, ["not", "hashable"], "tests.python_jobs.add", "a:b:c", "no_such_module_xyz:f", "tests.python_jobs:missing",
     "tests.python_jobs:NOT_CALLABLE"],
)
def test_a_bad_callable_fails_as_it_does_in_thread(shared: PythonProcess, spec: Any) -> None:
    result = shared.run(_script(spec), {})
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("script 'py': ")
    assert result.error == run_python(_script(spec), {}).error
    assert result.to_dict()["retryable"] is False


def test_wrong_arguments_fail(shared: PythonProcess) -> None:
    result = shared.run(_script("add"), {"c": 1})
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("TypeError:")


def test_arguments_json_cannot_carry_fail_without_starting_a_host(process: PythonProcess) -> None:
    result = process.run(_script("echo"), {"s": {1, 2}})
    assert result.status == "failed"
    assert result.error is not None and "arguments are not JSON-serialisable" in result.error
    assert process.pid is None


def test_the_host_imports_what_the_parent_would(process: PythonProcess, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "python_process_path_probe.py").write_text("def f():\n    return 'found'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = process.run(_script("python_process_path_probe:f"), {})
    assert result.status == "succeeded", result
    assert result.value == "found"


def test_a_non_python_script_is_a_caller_error(shared: PythonProcess) -> None:
    with pytest.raises(ValueError):
        shared.run(Script(id="c", command=("true",)), {})


# -- the protocol is out of user code's reach --------------------------------------------


def test_prints_do_not_break_the_protocol_and_go_to_stderr(process: PythonProcess,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    events: list[tuple[float, str]] = []
    result = process.run(_script("chatty"), {}, lambda f, m: events.append((f, m)))
    assert result.status == "succeeded", result
    assert result.value == "real"
    assert events == []
    assert process.run(_script("add"), {"a": 1}).value == {"sum": 1}
    err = capfd.readouterr().err
    assert '"value": "forged"' in err and "forged by fd 1" in err and "half a line" in err


def test_user_code_reads_an_empty_stdin_not_the_requests(shared: PythonProcess) -> None:
    assert shared.run(_script("reads_stdin"), {}).value == ""
    assert shared.run(_script("add"), {"a": 4}).value == {"sum": 4}


def test_progress_from_a_finished_job_is_not_reported_as_the_next_ones(shared: PythonProcess) -> None:
    first: list[tuple[float, str]] = []
    assert shared.run(_script("reports_after_returning"), {}, lambda f, m: first.append((f, m))).value == "first"
    second: list[tuple[float, str]] = []
    result = shared.run(_script("releases_the_late_report"), {}, lambda f, m: second.append((f, m)))
    assert result.value is True  # the late report was made while the second job ran...
    assert first == [] and second == []  # ...and reached no one
    assert shared.run(_script("add"), {"a": 5}).value == {"sum": 5}


def test_the_hosts_channel_drops_progress_of_every_finished_job() -> None:
    # In the host itself: a job's thread may report after its result, or while a later job runs.
    stream = io.BytesIO()
    channel = _Channel(stream)
    sinks = []
    for n in range(4):
        sinks.append(channel.begin())
        sinks[-1](0.5, f"job {n}")
        channel.finish(f"result {n}\n".encode())
        for late in sinks:  # between jobs: every job so far has finished
            late(0.9, "late")
    sinks.append(channel.begin())
    for late in sinks[:-1]:  # while the next job runs
        late(0.9, "late")
    assert b"late" not in stream.getvalue()
    assert stream.getvalue().count(b"result") == 4 and stream.getvalue().count(b"job ") == 4


def test_the_hosts_output_is_cut_into_lines_a_few_reads_at_a_time() -> None:
    # Lines split across reads, a line longer than many reads, and a host that writes without
    # pause: read_lines returns after a bounded number of reads, so the run loop gets to look
    # at its deadline and a cancel in between.
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    host = _Host.__new__(_Host)
    host.stdout, host._pieces = read_end, []
    long_line = b"x" * (_CHUNK * (_READ_CHUNKS + 3))
    data = b"one\ntw" + b"o\n" + long_line + b"\nthree\n"
    writer = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    writer.start()
    lines: list[bytes] = []
    calls = 0
    while True:
        got = host.read_lines()
        if got is None:
            break
        lines += got
        calls += 1
        assert calls < 10_000
    writer.join(WAIT)
    os.close(read_end)
    assert lines == [b"one", b"two", long_line, b"three"]
    assert calls > 1  # the long line took more than one call


def test_a_return_value_nested_too_deeply_fails_in_the_host_and_the_host_goes_on(shared: PythonProcess) -> None:
    result = shared.run(_script("nested"), {"depth": 600})
    assert result.status == "failed" and "nested more than 100 levels deep" in (result.error or "")
    assert shared.run(_script("nested"), {"depth": 3}).value == [[["leaf"]]]


def test_a_child_a_job_forks_neither_answers_for_it_nor_takes_the_hosts_place(process: PythonProcess) -> None:
    host = process.run(_script("pid"), {}).value
    events: list[tuple[float, str]] = []
    assert process.run(_script("forks_and_returns"), {}, lambda f, m: events.append((f, m))).value == "parent"
    assert events == []  # the child's progress is not the job's
    assert process.run(_script("pid"), {}).value == host  # the host still serves, itself


@pytest.mark.parametrize(("how", "code"), [("exit", 3), ("raise", 1)])
def test_a_child_a_job_forks_ends_with_its_own_exit_code(shared: PythonProcess, how: str, code: int) -> None:
    assert shared.run(_script("forked_child_exit_code"), {"how": how}).value == code


def test_a_timeout_of_a_year_is_a_deadline_like_any_other(shared: PythonProcess) -> None:
    assert shared.run(_script("add", timeout=float(MAX_TIMEOUT)), {"a": 2}).value == {"sum": 2}


# -- one host, reused; killed when a run must end -----------------------------------------


def test_runs_reuse_one_host(process: PythonProcess) -> None:
    assert process.pid is None  # started lazily
    first = process.run(_script("pid"), {}).value
    second = process.run(_script("pid"), {}).value
    assert first == second == process.pid
    assert first != os.getpid()


def test_a_timeout_kills_the_host_group_and_the_next_run_has_a_new_host(process: PythonProcess) -> None:
    old = process.run(_script("pid"), {}).value
    spawned: list[int] = []
    result = process.run(_script("spawns_then_sleeps", timeout=0.5), {"seconds": 60},
                         lambda f, m: spawned.append(int(m)))
    assert result.status == "timeout"
    assert result.error == "timed out after 0.5s"
    assert result.exit_code == -signal.SIGKILL
    assert 0.5 <= result.duration < WAIT
    assert process.pid is None
    assert process_gone(old)
    assert process_gone(spawned[0])  # the job's own child went with the group
    result = process.run(_script("pid"), {})
    assert result.status == "succeeded"
    assert result.value == process.pid and result.value != old


@pytest.mark.parametrize("handle", ["process", "execution"])
def test_cancel_from_another_thread_ends_the_run_quickly(process: PythonProcess, handle: str) -> None:
    started = threading.Event()
    host_pids: list[int] = []

    def on_progress(fraction: float, message: str) -> None:
        host_pids.append(int(message))
        started.set()

    execution = process.execution(_script("announces_then_sleeps"), {"seconds": 60}, on_progress=on_progress)
    results: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: results.append(execution.run()))
    runner.start()
    assert started.wait(WAIT)
    cancelled_at = time.monotonic()
    (process.cancel if handle == "process" else execution.cancel)()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert time.monotonic() - cancelled_at < 2.0, time.monotonic() - cancelled_at
    [result] = results
    assert result.status == "cancelled"
    assert result.error == "cancelled"
    assert result.exit_code == -signal.SIGKILL
    assert process_gone(host_pids[0])
    assert process.run(_script("pid"), {}).value not in (None, host_pids[0])


def test_cancel_while_idle_does_not_touch_the_next_run(process: PythonProcess) -> None:
    process.cancel()  # before any run
    pid = process.run(_script("pid"), {}).value
    process.cancel()  # a late call for the run that just ended
    result = process.run(_script("pid"), {})
    assert result.status == "succeeded"
    assert result.value == pid


def test_a_host_killed_mid_job_fails_clearly_and_the_next_run_works(process: PythonProcess) -> None:
    def kill_host(fraction: float, message: str) -> None:
        os.kill(int(message), signal.SIGKILL)

    result = process.run(_script("announces_then_sleeps"), {"seconds": 60}, kill_host)
    assert result.status == "failed"
    assert result.error == "python host exited with code -9 while running script 'py'"
    assert result.exit_code == -9
    assert process.pid is None
    assert process.run(_script("add"), {"a": 1, "b": 1}).value == {"sum": 2}


def test_a_host_that_exits_mid_job_fails_clearly(process: PythonProcess) -> None:
    result = process.run(_script("exits"), {"code": 3})
    assert result.status == "failed"
    assert result.error == "python host exited with code 3 while running script 'py'"
    assert result.exit_code == 3
    assert process.run(_script("add"), {"a": 1}).status == "succeeded"


def test_a_host_that_died_between_jobs_is_replaced_silently(process: PythonProcess) -> None:
    pid = process.run(_script("pid"), {}).value
    os.kill(pid, signal.SIGKILL)
    assert process_gone(pid)
    result = process.run(_script("pid"), {})
    assert result.status == "succeeded"
    assert result.value != pid


def test_a_new_hosts_start_up_does_not_count_against_the_timeout(process: PythonProcess) -> None:
    # The host imports the runtime package before it is ready: far longer than 50 ms.
    result = process.run(_script("add", timeout=0.05), {"a": 1})
    assert result.status == "succeeded", result
    assert result.value == {"sum": 1}


def test_an_interpreter_that_cannot_start_fails_clearly(process: PythonProcess,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    result = process.run(_script("add"), {"a": 1})
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("script 'py': cannot start the python host: ")
    monkeypatch.setattr(sys, "executable", shutil.which("false"))
    result = process.run(_script("add"), {"a": 1})
    assert result.status == "failed"
    assert result.error == "python host exited with code 1 while running script 'py' (it failed to start: see its stderr)"
    monkeypatch.undo()
    assert process.run(_script("add"), {"a": 1}).status == "succeeded"


def test_an_execution_cancelled_before_it_runs_starts_nothing(process: PythonProcess) -> None:
    execution = process.execution(_script("pid"), {})
    execution.cancel()
    result = execution.run()
    assert result.status == "cancelled"
    assert result.error == "cancelled before start"
    assert process.pid is None


def test_an_executions_late_cancel_is_harmless_and_it_runs_once(process: PythonProcess) -> None:
    execution = process.execution(_script("pid"), {})
    pid = execution.run().value
    execution.cancel()  # the process may be running a later attempt by now
    assert process.run(_script("pid"), {}).value == pid
    with pytest.raises(RuntimeError):
        execution.run()
    with pytest.raises(ValueError):
        process.execution(Script(id="c", command=("true",)), {})


def test_the_host_speaks_json_lines_on_its_stdio(tmp_path: Path) -> None:
    requests = [
        {"script": "a", "callable": "tests.python_jobs:steps", "arguments": {"n": 2}},
        {"script": "b", "callable": "tests.python_jobs:chatty", "arguments": {}},
        {"script": "c", "callable": "tests.python_jobs:boom", "arguments": {}},
    ]
    done = subprocess.run([sys.executable, "-m", "runtime.python_host"], cwd=Path(__file__).parent.parent,
                          input="".join(json.dumps(r) + "\n" for r in requests).encode() + b"not json\n",
                          capture_output=True, timeout=WAIT, check=True)
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"ready": True},
        {"progress": [0.5, "step 1"]}, {"progress": [1.0, "step 2"]}, {"progress": [1.0, ""]},
        {"status": "succeeded", "value": 2},
        {"status": "succeeded", "value": "real"},
        {"status": "failed", "error": "RuntimeError: nope"},
        {"status": "failed", "error": "python host: a request is not JSON: Expecting value: line 1 column 1 (char 0)"},
    ]
    assert b"forged by fd 1" in done.stderr and b"Traceback" in done.stderr


# -- close ------------------------------------------------------------------------------


def test_close_leaves_no_process() -> None:
    process = PythonProcess()
    grandchild = process.run(_script("spawns_then_sleeps"), {"seconds": 0}).value
    host = process.pid
    assert host is not None
    process.close()
    with pytest.raises(ProcessLookupError):
        os.kill(host, 0)
    with pytest.raises(ChildProcessError):  # already reaped: no zombie left
        os.waitpid(host, os.WNOHANG)
    assert process_gone(grandchild)
    process.close()  # idempotent
    process.cancel()  # harmless
    with pytest.raises(RuntimeError):
        process.run(_script("pid"), {})


def test_close_without_a_run_starts_nothing() -> None:
    process = PythonProcess()
    process.close()
    assert process.pid is None


def test_the_host_dies_with_a_runtime_killed_by_sigkill(tmp_path: Path) -> None:
    # A stand-in for a runtime process: it starts a host on a long job and says the host's pid.
    code = (
        "import sys, threading\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from runtime.python_process import PythonProcess\n"
        "from tests.test_python_process import _script\n"
        "process = PythonProcess()\n"
        "script = _script('tests.python_jobs:announces_then_sleeps', timeout=60)\n"
        "def said(fraction, message):\n"
        "    print(message, flush=True)\n"
        "process.run(script, {'seconds': 60}, said)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=tmp_path)
    try:
        assert parent.stdout is not None
        host = int(parent.stdout.readline())
        watch = os.pidfd_open(host)
    finally:
        parent.kill()  # SIGKILL: no clean-up code runs in the parent
        parent.wait(10)
    try:
        # The pidfd turns readable when the host terminates: a wait on the event, not a sleep.
        assert select.select([watch], [], [], 10)[0], f"host {host} outlived its killed runtime"
    finally:
        os.close(watch)
