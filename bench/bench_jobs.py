#!/usr/bin/env python3
"""Job benchmark: runtime overhead against a thread pool, child processes against a
thread pool, throughput against RQ, Dramatiq and Huey, and the control plane under load.

    python bench/bench_jobs.py             # full run (a few minutes)
    python bench/bench_jobs.py --quick     # a handful of everything, for the tests
    python bench/bench_jobs.py --json      # the figures as JSON only

The peers need ``pip install -e .[bench]`` and a Redis (``--redis-url``, by default
``redis://127.0.0.1:6379/15``). Each peer's run names its queues and keys with a tag of its
own and removes them after, so runs side by side do not disturb each other. A peer that is
not installed, or an unreachable Redis, is skipped with the reason in its section.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import floor, noop  # noqa: E402
from bench.common import emit, summary  # noqa: E402
from runtime import Runtime  # noqa: E402
from runtime.command_executor import CommandExecution  # noqa: E402
from runtime.registry import load_registry  # noqa: E402

clock = time.perf_counter


# --- shared pieces ----------------------------------------------------------------------


class Countdown:
    """Callable counting finished jobs; sets ``event`` (and ``finished_at``) at zero."""

    def __init__(self, n: int, ok: Callable[[Any], bool] = lambda _: True) -> None:
        self.left = n
        self.failed = 0
        self.finished_at = 0.0
        self.event = threading.Event()
        self._ok = ok
        self._lock = threading.Lock()

    def __call__(self, outcome: Any = None, *_: Any) -> None:
        good = self._ok(outcome)
        with self._lock:
            self.left -= 1
            self.failed += 0 if good else 1
            if self.left == 0:
                self.finished_at = clock()
                self.event.set()

    def wait(self, timeout: float, what: str) -> None:
        if not self.event.wait(timeout):
            raise TimeoutError(f"{what}: {self.left} jobs still unfinished after {timeout:g} s")


def _succeeded(status: Any) -> bool:
    return isinstance(status, dict) and status.get("status") == "succeeded"


def _future_ok(future: Any) -> bool:
    return future.exception() is None


def _registry(folder: Path) -> Path:
    path = folder / "registry.json"
    scripts = [
        {"id": "noop", "kind": "python", "callable": "bench.noop:noop", "description": "does nothing"},
        {"id": "stamp", "kind": "python", "callable": "bench.noop:stamp",
         "arguments": {"i": {"type": "integer", "required": True}}},
        {"id": "spin", "kind": "python", "callable": "bench.noop:spin", "timeout": 600,
         "arguments": {"n": {"type": "integer", "required": True}}},
        {"id": "spin_process", "kind": "python", "callable": "bench.noop:spin_reporting", "timeout": 600,
         "isolation": "process", "arguments": {"n": {"type": "integer", "required": True}}},
        {"id": "true", "kind": "command", "command": ["/bin/true"]},
    ]
    path.write_text(json.dumps({"scripts": scripts}, indent=2))
    return path


_run_number = 0


def _start(registry: Path, workers: int) -> Runtime:
    """A runtime with its own durable SQLite store (a fresh folder each time)."""
    global _run_number
    _run_number += 1
    store = registry.parent / f"store-{_run_number}"
    return Runtime.start(registry, job_concurrency=workers, job_storage_path=store,
                         watcher="polling", poll_interval=60, drain_timeout=60)


def _warm_up(rt: Runtime, n: int = 20) -> None:
    for _ in range(n):
        rt.wait_job(rt.submit("noop"), 30)


def _runtime_burst(rt: Runtime, n: int, timeout: float, stamped: bool) -> dict[str, Any]:
    """Submit ``n`` jobs as fast as possible, then wait for all (``on_done``, no polling)."""
    noop.STARTS.clear()
    done = Countdown(n, _succeeded)
    submitted = [0.0] * n
    submit_calls = [0.0] * n
    start = clock()
    for i in range(n):
        submitted[i] = clock()
        if stamped:
            rt.submit("stamp", {"i": i}, on_done=done)
        else:
            rt.submit("noop", on_done=done)
        submit_calls[i] = clock() - submitted[i]
    submit_phase = clock() - start
    done.wait(timeout, "runtime burst")
    wall = done.finished_at - start
    figures: dict[str, Any] = {"wall_s": wall, "jobs_per_s": n / wall, "submit_phase_s": submit_phase,
                               "failed": done.failed, "submit_call": summary(submit_calls)}
    if stamped:
        figures["submit_to_start"] = summary([noop.STARTS[i] - submitted[i] for i in range(n)])
    return figures


def _runtime_batched_burst(rt: Runtime, n: int, timeout: float, chunk: int = 100) -> dict[str, Any]:
    """Like ``_runtime_burst``, submitting ``chunk`` jobs per ``submit_many`` (one commit each)."""
    done = Countdown(n, _succeeded)
    start = clock()
    for first in range(0, n, chunk):
        rt.submit_many([("noop", None)] * min(chunk, n - first), on_done=done)
    done.wait(timeout, "runtime batched burst")
    wall = done.finished_at - start
    return {"wall_s": wall, "jobs_per_s": n / wall, "failed": done.failed, "batch": chunk}


def _pool_burst(pool: ThreadPoolExecutor, n: int, timeout: float) -> dict[str, Any]:
    noop.STARTS.clear()
    done = Countdown(n, _future_ok)
    submitted = [0.0] * n
    start = clock()
    for i in range(n):
        submitted[i] = clock()
        pool.submit(noop.stamp, i).add_done_callback(done)
    submit_phase = clock() - start
    done.wait(timeout, "thread pool burst")
    wall = done.finished_at - start
    return {"wall_s": wall, "jobs_per_s": n / wall, "submit_phase_s": submit_phase, "failed": done.failed,
            "submit_to_start": summary([noop.STARTS[i] - submitted[i] for i in range(n)])}


# --- 1. overhead ------------------------------------------------------------------------


def overhead(registry: Path, n: int, sequential: int, workers: int = 4) -> dict[str, Any]:
    timeout = max(120.0, n / 50)
    with ThreadPoolExecutor(workers) as pool:
        pool.submit(noop.noop).result()
        tpe = _pool_burst(pool, n, timeout)
        rt = _start(registry, workers)
        try:
            _warm_up(rt)
            runtime = _runtime_burst(rt, n, timeout, stamped=True)
            seq = _sequential(rt, pool, sequential)
        finally:
            rt.stop()
    return {
        "jobs": n,
        "workers": workers,
        "runtime": runtime,
        "thread_pool": tpe,
        "throughput_ratio_runtime_over_pool": runtime["jobs_per_s"] / tpe["jobs_per_s"],
        "sequential": seq,
    }


def _sequential(rt: Runtime, pool: ThreadPoolExecutor, n: int) -> dict[str, Any]:
    """One job at a time (submit, wait, next), runtime and thread pool taking turns; the
    runtime both ways: ``wait_job(submit(...))`` (two asks) and ``submit(..., on_done=)``."""
    noop.STARTS.clear()
    rt_done, rt_start, pool_done, pool_start, on_done = [], [], [], [], []
    for i in range(n):
        key = 3 * i
        start = clock()
        status = rt.wait_job(rt.submit("stamp", {"i": key}), 30)
        rt_done.append(clock() - start)
        rt_start.append(noop.STARTS[key] - start)
        if status["status"] != "succeeded":
            raise RuntimeError(f"sequential job failed: {status}")
        key += 1
        done = Countdown(1, _succeeded)  # submit(on_done=): one round trip, not two
        start = clock()
        rt.submit("stamp", {"i": key}, on_done=done)
        done.wait(30, "sequential on_done job")
        on_done.append(done.finished_at - start)
        if done.failed:
            raise RuntimeError("sequential on_done job failed")
        key += 1
        start = clock()
        pool.submit(noop.stamp, key).result(30)
        pool_done.append(clock() - start)
        pool_start.append(noop.STARTS[key] - start)
    return {
        "jobs": n,
        "runtime_submit_to_done": summary(rt_done),
        "runtime_submit_on_done_to_done": summary(on_done),
        "runtime_submit_to_start": summary(rt_start),
        "thread_pool_submit_to_done": summary(pool_done),
        "thread_pool_submit_to_start": summary(pool_start),
    }


# --- 2. processes -----------------------------------------------------------------------


def _pool_processes(n: int, run: Callable[[], Any]) -> float:
    with ThreadPoolExecutor(2) as pool:
        start = clock()
        for future in [pool.submit(run) for _ in range(n)]:
            future.result()
        return clock() - start


def _popen_like_runtime() -> None:
    """What the runtime does per command attempt, minus the actor messages: three pipes,
    its own process group, the arguments on stdin, both outputs read."""
    proc = subprocess.Popen(["/bin/true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, process_group=0)
    proc.communicate(b"{}")


def _cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system) of this process (all its threads) and of its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _measured(run: Callable[[], float], n: int, walls: list[float], cpu: dict[str, list[float]]) -> None:
    """Run one round; record its wall and the CPU per job (µs) of this process and of the children.

    The CPU is the figure noise moves least: both cores are nearly saturated by the
    baseline, so the wall follows the CPU spent per job."""
    own, children = _cpu_seconds()
    walls.append(run())
    own_after, children_after = _cpu_seconds()
    cpu["process"].append((own_after - own) / n * 1e6)
    cpu["children"].append((children_after - children) / n * 1e6)


def processes(registry: Path, n: int, rounds: int) -> dict[str, Any]:
    names = ["runtime", "thread_pool_subprocess_run", "thread_pool_popen_pipes_group",
             "thread_pool_command_execution", "floor_bare_actors"]
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, dict[str, list[float]]] = {name: {"process": [], "children": []} for name in names}
    rt = _start(registry, 2)
    true = load_registry(registry)["true"]

    def runtime_round() -> float:
        done = Countdown(n, _succeeded)
        start = clock()
        for _ in range(n):
            rt.submit("true", on_done=done)
        done.wait(max(120.0, n / 10), "runtime /bin/true")
        if done.failed:
            raise RuntimeError(f"{done.failed} /bin/true jobs failed")
        return done.finished_at - start

    runs: dict[str, Callable[[], float]] = {
        "thread_pool_subprocess_run": lambda: _pool_processes(n, lambda: subprocess.run(["/bin/true"], check=True)),
        "runtime": runtime_round,
        "thread_pool_popen_pipes_group": lambda: _pool_processes(n, _popen_like_runtime),
        # The runtime's own attempt code with no actor, scheduler or store around it.
        "thread_pool_command_execution": lambda: _pool_processes(n, lambda: CommandExecution(true, {}).run()),
        "floor_bare_actors": lambda: floor.processes(n),
    }
    try:
        rt.wait_job(rt.submit("true"), 30)
        for _ in range(rounds):  # taking turns, so machine noise falls on all alike
            for name, run in runs.items():
                _measured(run, n, walls[name], cpu[name])
    finally:
        rt.stop()
    median = {name: statistics.median(values) for name, values in walls.items()}
    return {
        "jobs": n,
        "workers": 2,
        "rounds": rounds,
        "wall_s": median,
        "jobs_per_s": {name: n / value for name, value in median.items()},
        "wall_ratio_runtime_over_subprocess_run": median["runtime"] / median["thread_pool_subprocess_run"],
        "wall_ratio_runtime_over_popen_pipes_group":
            median["runtime"] / median["thread_pool_popen_pipes_group"],
        "wall_ratio_command_execution_over_subprocess_run":
            median["thread_pool_command_execution"] / median["thread_pool_subprocess_run"],
        # The design's own floor: bare pykka actors running subprocess.run (see bench/floor.py).
        "wall_ratio_floor_over_subprocess_run": median["floor_bare_actors"] / median["thread_pool_subprocess_run"],
        "cpu_us_per_job": {name: {part: statistics.median(values) for part, values in parts.items()}
                           for name, parts in cpu.items()},
        "all_rounds_wall_s": walls,
    }


# --- 3. peers ---------------------------------------------------------------------------


def _redis(url: str) -> Any:
    import redis  # noqa: PLC0415

    conn = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    conn.ping()
    return conn


def _peer_burst(n: int, send: Callable[[], Any], done: Countdown, timeout: float, name: str,
                workers: str) -> dict[str, Any]:
    """Send ``n`` jobs as fast as possible, then wait for ``done`` to count them all."""
    start = clock()
    for _ in range(n):
        send()
    submit_phase = clock() - start
    done.wait(timeout, name)
    wall = done.finished_at - start
    return {"wall_s": wall, "jobs_per_s": n / wall, "submit_phase_s": submit_phase, "failed": done.failed,
            "workers": workers}


def _peer_rq(url: str, conn: Any, n: int, timeout: float, tag: str) -> dict[str, Any]:
    import rq  # noqa: PLC0415
    from rq.registry import FailedJobRegistry, FinishedJobRegistry  # noqa: PLC0415

    name = f"bench-rq-{tag}"
    queue = rq.Queue(name, connection=conn)
    program = Path(sys.executable).with_name("rq")
    command = [str(program)] if program.exists() else [shutil.which("rq") or "rq"]
    # RQ has no in-process thread pool: its "two workers" are `rq worker-pool -n 2`
    # processes; SimpleWorker runs each job in the worker (the default Worker forks per job).
    pool = subprocess.Popen([*command, "worker-pool", "-n", "2", "-w", "rq.worker.SimpleWorker", "-u", url,
                             "-P", str(ROOT), "-l", "WARNING", name],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(rq.Worker.all(connection=conn, queue=queue)) < 2:
            if pool.poll() is not None:
                error = pool.stderr.read().decode()[-500:] if pool.stderr else ""
                raise RuntimeError(f"rq worker-pool exited: {error}")
            if time.monotonic() > deadline:
                raise TimeoutError("rq workers did not register within 60 s")
            time.sleep(0.05)
        finished, failed = FinishedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)
        start = clock()
        for _ in range(n):
            # Its job keys do not name the queue: they expire instead of being removed after.
            queue.enqueue(noop.noop, result_ttl=60, failure_ttl=60)
        submit_phase = clock() - start
        deadline = start + timeout
        # RQ reports completion only in Redis: poll the registries (200 Hz; cheap ZCARDs).
        while (done := finished.count + failed.count) < n:
            if clock() > deadline:
                raise TimeoutError(f"rq: {n - done} jobs unfinished after {timeout:g} s")
            time.sleep(0.005)
        wall = clock() - start
        return {"wall_s": wall, "jobs_per_s": n / wall, "submit_phase_s": submit_phase, "failed": failed.count,
                "workers": "rq worker-pool -n 2 -w SimpleWorker (2 processes)"}
    finally:
        pool.send_signal(signal.SIGINT)
        try:
            pool.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait(5)
        conn.srem("rq:queues", queue.key)  # a set member, not a key: _delete_keys would miss it


def _peer_dramatiq(url: str, conn: Any, n: int, timeout: float, tag: str) -> dict[str, Any]:
    import dramatiq  # noqa: PLC0415
    from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

    done = Countdown(n, lambda exception: exception is None)

    class Finished(dramatiq.Middleware):
        def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                                  exception: BaseException | None = None) -> None:
            done(exception)

    broker = RedisBroker(url=url, namespace=f"bench-dramatiq-{tag}")
    broker.add_middleware(Finished())
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(broker=broker, actor_name=f"noop_{tag}", queue_name=f"bench_{tag}",
                           max_retries=0)(noop.noop)
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        return _peer_burst(n, actor.send, done, timeout, "dramatiq", "in-process Worker(worker_threads=2)")
    finally:
        worker.stop()
        broker.close()


def _peer_huey(url: str, conn: Any, n: int, timeout: float, tag: str) -> dict[str, Any]:
    from huey import RedisHuey  # type: ignore[import-untyped]  # noqa: PLC0415
    from huey.signals import SIGNAL_COMPLETE, SIGNAL_ERROR  # type: ignore[import-untyped]  # noqa: PLC0415

    done = Countdown(n, lambda sig: sig == SIGNAL_COMPLETE)
    huey = RedisHuey(f"bench-huey-{tag}", url=url)
    huey.signal(SIGNAL_COMPLETE, SIGNAL_ERROR)(lambda sig, task, *args, **kw: done(sig))
    task = huey.task(retries=0, name=f"noop_{tag}")(noop.noop)
    consumer = huey.create_consumer(workers=2, worker_type="thread", periodic=False, check_worker_health=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer.start()  # threads, in this process; it installs signal handlers, put back below
    try:
        return _peer_burst(n, task, done, timeout, "huey", "in-process consumer(workers=2, worker_type='thread')")
    finally:
        consumer.stop(graceful=True)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        huey.storage.conn.close()


def _delete_keys(conn: Any, tag: str) -> None:
    """Remove this run's keys, and nothing else: another run may share the database."""
    keys = list(conn.scan_iter(match=f"*{tag}*", count=1000))
    for first in range(0, len(keys), 500):
        conn.delete(*keys[first:first + 500])


_PEERS = {"rq": ("rq", _peer_rq), "dramatiq": ("dramatiq", _peer_dramatiq), "huey": ("huey", _peer_huey)}


def peers(registry: Path, n: int, url: str) -> dict[str, Any]:
    timeout = max(120.0, n / 20)
    results: dict[str, Any] = {"jobs": n, "redis_url": url}
    rt = _start(registry, 2)
    try:
        _warm_up(rt)
        results["runtime"] = {**_runtime_burst(rt, n, timeout, stamped=False),
                              "workers": "job_concurrency=2, durable SQLite store"}
        results["runtime_submit_many"] = _runtime_batched_burst(rt, n, timeout)
    finally:
        rt.stop()
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        # The design's own floor: the hand-offs and two commits a durable job needs (bench/floor.py).
        results["floor_bare_actors"] = {"jobs_per_s": floor.pipeline(n, Path(tmp)),
                                        "what": "bare pykka: ask + commit, worker, report + commit, callback"}
    results["ratio_runtime_over_floor"] = results["runtime"]["jobs_per_s"] / results["floor_bare_actors"]["jobs_per_s"]
    try:
        conn = _redis(url)
    except Exception as e:  # noqa: BLE001 - not installed, unreachable, refused...
        reason = f"Redis at {url} unreachable: {type(e).__name__}: {e}"
        conn = None
    for name, (module, run) in _PEERS.items():
        if conn is None:
            results[name] = {"skipped": reason}
            continue
        try:
            __import__(module)
        except ImportError as e:
            results[name] = {"skipped": f"not installed ({e}); pip install -e .[bench]"}
            continue
        tag = uuid.uuid4().hex[:8]  # in every key and queue name of this peer's run
        try:
            results[name] = run(url, conn, n, timeout, tag)
        except Exception as e:  # noqa: BLE001 - one peer's trouble must not hide the others
            results[name] = {"skipped": f"failed: {type(e).__name__}: {e}"}
        finally:
            _delete_keys(conn, tag)
    ran = {name: results[name]["jobs_per_s"] for name in _PEERS if "jobs_per_s" in results[name]}
    if ran:
        fastest = max(ran, key=ran.__getitem__)
        results["fastest_peer"] = fastest
        results["ratio_runtime_over_fastest_peer"] = results["runtime"]["jobs_per_s"] / ran[fastest]
        results["ratio_runtime_submit_many_over_fastest_peer"] = (
            results["runtime_submit_many"]["jobs_per_s"] / ran[fastest])
        results["ratio_floor_over_fastest_peer"] = results["floor_bare_actors"]["jobs_per_s"] / ran[fastest]
    if conn is not None:
        conn.close()
    return results


# --- 4. control plane under load ----------------------------------------------------------


def _spin_size(seconds: float) -> int:
    probe = 200_000
    start = clock()
    noop.spin(probe)
    return max(1000, int(probe * seconds / (clock() - start)))


def control_plane(registry: Path, n_idle: int, spin_seconds: float, rounds: int) -> dict[str, Any]:
    rt = _start(registry, 2)
    try:
        _warm_up(rt)
        rt.script("noop")
        ops: dict[str, Callable[[], Any]] = {
            "rt.script (published view)": lambda: rt.script("noop"),
            "rt.cache.get_script().get() (actor proxy)": lambda: rt.cache.get_script("noop").get(timeout=30),
            "rt.submit(noop)": lambda: rt.submit("noop"),
        }
        idle = _sample(ops, lambda i: i < n_idle)
        rt.wait_job(rt.submit("noop"), 60)  # the no-ops submitted above have run
        size = _spin_size(spin_seconds)
        busy: dict[str, list[float]] = {name: [] for name in ops}
        for _ in range(rounds):
            for name, values in _under_thread_spins(rt, ops, size).items():
                busy[name].extend(values)
        # Diagnostic: the same under load with a 10x shorter GIL switch interval (process-wide,
        # put back after), to show how much of the figure above is waiting for the GIL.
        short: dict[str, list[float]] = {name: [] for name in ops}
        default_interval = sys.getswitchinterval()
        sys.setswitchinterval(default_interval / 10)
        try:
            for name, values in _under_thread_spins(rt, ops, size).items():
                short[name].extend(values)
        finally:
            sys.setswitchinterval(default_interval)
        rt.wait_job(rt.submit("noop"), 60)
        isolated = _under_isolated_spins(rt, ops, size, spin_seconds, rounds)
    finally:
        rt.stop()
    loaded = {name: summary(values) for name, values in busy.items() if values}
    return {
        "spin_seconds": spin_seconds,
        "spin_rounds": rounds,
        "switch_interval_s": default_interval,
        "idle": idle,
        "under_load": loaded,
        "p50_ratio_load_over_idle": {name: loaded[name]["p50_us"] / idle[name]["p50_us"] for name in loaded},
        "under_load_switch_interval_div_10 (diagnostic, one round)":
            {name: summary(values) for name, values in short.items() if values},
        "under_load_isolation_process": isolated,
        "p50_ratio_isolated_load_over_idle": {name: isolated[name]["p50_us"] / idle[name]["p50_us"]
                                              for name in isolated},
    }


def _under_thread_spins(rt: Runtime, ops: dict[str, Callable[[], Any]], size: int) -> dict[str, list[float]]:
    """One round of samples while two ``spin`` jobs hold both worker threads."""
    noop.SPIN_STARTED.clear()
    spins = [rt.submit("spin", {"n": size}) for _ in range(2)]
    deadline = time.monotonic() + 30
    while noop.SPINNING < 2:  # both workers busy before the first sample
        if time.monotonic() > deadline:
            raise TimeoutError("the spin jobs did not start within 30 s")
        time.sleep(0.001)
    samples: dict[str, list[float]] = _sample(ops, lambda i: noop.SPINNING == 2, raw=True)
    for job_id in spins:
        rt.wait_job(job_id, 600)
    return samples


def _under_isolated_spins(rt: Runtime, ops: dict[str, Callable[[], Any]], size: int, spin_seconds: float,
                          rounds: int) -> dict[str, Any]:
    """The same samples while the two spins run as ``"isolation": "process"`` python jobs."""
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        spins = [rt.submit("spin_process", {"n": size}) for _ in range(2)]
        deadline = time.monotonic() + 60
        while not all((rt.status(j)["progress"] or {}).get("message") == "spinning" for j in spins):
            if time.monotonic() > deadline:  # a host start takes ~0.3 s
                raise TimeoutError("the isolated spin jobs did not start within 60 s")
            time.sleep(0.005)
        end = time.monotonic() + spin_seconds * 0.6  # well inside the spins' run time
        for name, values in _sample(ops, lambda i: time.monotonic() < end, raw=True).items():
            samples[name].extend(values)
        for job_id in spins:
            if rt.wait_job(job_id, 600)["status"] != "succeeded":
                raise RuntimeError(f"isolated spin {job_id} failed")
    return {name: summary(values) for name, values in samples.items() if values}


def _sample(ops: dict[str, Callable[[], Any]], more: Callable[[int], bool], raw: bool = False) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in ops}
    i = 0
    while more(i):
        for name, fn in ops.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
        i += 1
    return samples if raw else {name: summary(values) for name, values in samples.items()}


# --- output -------------------------------------------------------------------------------


def _print(results: dict[str, Any]) -> None:
    def show(name: str, value: Any, indent: int) -> None:
        pad = "  " * indent
        if isinstance(value, dict) and "p50_us" in value:
            print(f"{pad}{name:<48} p50 {value['p50_us']:11.1f} us  p99 {value['p99_us']:11.1f} us  "
                  f"(n={value['n']})")
        elif isinstance(value, dict):
            print(f"{pad}{name}:")
            for key, inner in value.items():
                show(key, inner, indent + 1)
        elif isinstance(value, float):
            print(f"{pad}{name:<48} {value:,.3f}")
        elif isinstance(value, list):
            print(f"{pad}{name:<48} {', '.join(f'{v:.3f}' for v in value)}")
        else:
            print(f"{pad}{name:<48} {value}")

    for section, figures in results.items():
        print()
        show(section, figures, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a handful of everything: proves the bench runs")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
                        help="Redis for the peers; its database is flushed before each peer")
    parser.add_argument("--only", nargs="+", choices=["overhead", "processes", "peers", "control_plane"],
                        help="run only these sections")
    args = parser.parse_args()
    if args.quick:
        n, seq, procs, rounds, peer_n, idle_n, spin_s, spin_rounds = 200, 20, 20, 1, 50, 50, 0.2, 1
    else:
        n, seq, procs, rounds, peer_n, idle_n, spin_s, spin_rounds = 10_000, 500, 500, 3, 5_000, 2_000, 2.0, 3
    sections: dict[str, Callable[[Path], dict[str, Any]]] = {
        "overhead": lambda reg: overhead(reg, n, seq),
        "processes": lambda reg: processes(reg, procs, rounds),
        "peers": lambda reg: peers(reg, peer_n, args.redis_url),
        "control_plane": lambda reg: control_plane(reg, idle_n, spin_s, spin_rounds),
    }
    results: dict[str, Any] = {"meta": {"quick": args.quick, "python": sys.version.split()[0],
                                        "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}}
    began = clock()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        registry = _registry(Path(tmp))
        for name, run in sections.items():
            if args.only and name not in args.only:
                continue
            results[name] = run(registry)
    results["meta"]["seconds"] = clock() - began
    emit(results, args.json, _print)


if __name__ == "__main__":
    main()
