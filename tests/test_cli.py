from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.store import JobState, SqliteStore

ROOT = Path(__file__).parent.parent
EXAMPLES = str(ROOT / "examples" / "registry.json")


def _run_py(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``run.py ARGS`` to its end, with a job store of the test's own."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "JOB_STORAGE_PATH": str(tmp_path / "jobs")},
    )


def test_serve_runs_until_sigterm_and_prints_stats(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "--log-level", "warning", "serve",
         "--registry", str(ROOT / "examples" / "registry.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the runtime is up
        assert "runtime up: 4 scripts" in first
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["registry"]["scripts"] == 4


def test_bad_registry_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "registry.json"
    bad.write_text('{"scripts": [{"id": "x", "command": ["true"], "timeout": -1}]}')
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "serve", "--registry", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {bad}: script 'x' (#1), field 'timeout': must be positive, got -1"


def test_run_runs_one_job_with_progress_and_typed_arguments(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = _run_py(tmp_path, "--log-level", "warning", "run", "flaky", "--arg", f"marker={marker}",
                     "--registry", EXAMPLES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "second attempt succeeds\n"
    assert "attempt 1: exit code 3: first attempt fails on purpose" in result.stderr
    assert "succeeded after 2 attempt(s)" in result.stderr


def test_run_rejects_an_unknown_argument_clearly(tmp_path: Path) -> None:
    result = _run_py(tmp_path, "run", "greet", "--arg", "nam=Ada", "--registry", EXAMPLES)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("error: script 'greet': unknown argument(s) nam (declared: name)")


def test_the_runtime_runs_jobs_without_the_optional_postgres_extra(tmp_path: Path) -> None:
    # `pip install -e .` has no psycopg2: the quick start must work without it.
    code = (
        "import sys; sys.modules['psycopg2'] = None\n"  # an import of it now fails
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from runtime import Runtime\n"
        f"with Runtime.start({str(ROOT / 'examples' / 'registry.json')!r}, job_storage_path={str(tmp_path)!r},"
        " watcher='polling') as rt:\n"
        "    print(rt.run('greet', {'name': 'Ada'}, timeout=30)['status'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "succeeded"


def test_run_shows_its_progress_bar_without_log_lines_by_default(tmp_path: Path) -> None:
    result = _run_py(tmp_path, "run", "greet", "--arg", "name=Ada", "--registry", EXAMPLES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, Ada!\n"
    assert "100% done" in result.stderr and "succeeded after 1 attempt(s)" in result.stderr
    assert " INFO " not in result.stderr  # the runtime's INFO log would break the bar's line


def _slow_registry(tmp_path: Path) -> Path:
    registry = tmp_path / "registry.json"
    code = "import sys, time\nprint('::progress 0.1 going', flush=True)\ntime.sleep(60)"
    registry.write_text(json.dumps({"scripts": [{"id": "slow", "command": [sys.executable, "-c", code],
                                                 "timeout": 120}]}))
    return registry


def test_run_gives_up_waiting_at_its_timeout_and_leaves_the_job_to_the_next_start(tmp_path: Path) -> None:
    registry = _slow_registry(tmp_path)
    result = _run_py(tmp_path, "run", "slow", "--timeout", "0.5", "--registry", str(registry))
    assert result.returncode == 3, result.stderr
    assert "still running after 0.5 s: stopped; it stays in the store" in result.stderr
    assert "did not stop" not in result.stderr  # its attempt was stopped before its worker
    from runtime.store import SqliteStore

    store = SqliteStore(tmp_path / "jobs")
    try:
        (job,) = store.unfinished()
    finally:
        store.close()
    assert job.state.value == "queued" and job.attempts[0]["status"] == "stopped"  # the next start runs it


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                    (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_during_run_cancels_the_job_and_says_so(tmp_path: Path, sig: signal.Signals, code: int,
                                                                  word: str) -> None:
    registry = _slow_registry(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "run", "slow", "--registry", str(registry)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JOB_STORAGE_PATH": str(tmp_path / "jobs")},
    )
    try:
        assert proc.stderr is not None
        queued = proc.stderr.readline()
        assert queued.startswith("job ") and queued.endswith(" queued\n")
        job = queued.split()[1]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert f"job {job} cancelled ({word})" in err
    assert "Traceback" not in err
    store = SqliteStore(tmp_path / "jobs")  # cancelled for good: the next start has nothing of it to run
    try:
        record = store.get(job)
        assert record is not None and record.state is JobState.CANCELLED
    finally:
        store.close()


def test_run_never_echoes_an_argument_value_it_refuses_nor_waits_an_impossible_time(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"scripts": [
        {"id": "typed", "command": ["true"], "arguments": {"n": {"type": "integer", "required": True}}}]}))
    for timeout in ("nan", "inf", "-1"):
        result = _run_py(tmp_path, "run", "typed", "--arg", "n=1", "--timeout", timeout, "--registry", str(registry))
        assert result.returncode == 2 and "argument --timeout: must be from 0 to a year" in result.stderr
    assert not (tmp_path / "jobs").exists()  # refused before a runtime (and its store) started
    result = _run_py(tmp_path, "run", "typed", "--arg", "n=secret123", "--registry", str(registry))
    assert result.returncode == 2
    assert "argument 'n' must be of type integer" in result.stderr and "secret123" not in result.stderr
    result = _run_py(tmp_path, "run", "typed", "--arg", "secret123", "--registry", str(registry))
    assert result.returncode == 2 and "NAME=VALUE" in result.stderr and "secret123" not in result.stderr
