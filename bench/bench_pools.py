#!/usr/bin/env python3
"""Connection pool benchmark: the runtime's HttpPool and PostgresPool against a new
connection per call, one thread and four, and the PostgreSQL pool's own checkout+return
cost against one connection held the whole time.

    python bench/bench_pools.py            # full run (about two minutes on 2 busy cores)
    python bench/bench_pools.py --quick    # a handful of calls each, for the tests
    python bench/bench_pools.py --json     # the figures as JSON only

HTTP needs nothing external: the script starts its own ``ThreadingHTTPServer`` (HTTP/1.1,
keep-alive) in a child process, so that it competes with the client for the cores but not
for the GIL; the server counts the TCP connections each mode opened. PostgreSQL comes from
``--pg-dsn`` (by default ``host=127.0.0.1 port=5432 dbname=test user=postgres``); when it
cannot be reached that section says ``{"skipped": reason}``.

Baselines, what a user without the pools would write: for HTTP a fresh
``urllib3.PoolManager()`` per call, closed after it (the same client library, so the ratio
is the connection reuse; ``requests.get(url)`` also opens a connection per call); for
PostgreSQL ``psycopg2.connect(dsn)``, the query, ``close()``.

Throughput figures are medians over rounds. Each round opens every mode afresh (a new pool,
so its first connections are in the figures) and runs its calls in blocks, the modes taking
turns block by block so that the rest of the machine's load falls on all of them alike.
Latency percentiles are over the calls of all rounds. Ratios are pool / baseline
throughput: above 1 the pool is faster.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, summary  # noqa: E402
from runtime.pools import ConnectionPools, redact_dsn  # noqa: E402

clock = time.perf_counter

DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
THREADS = 4
QUERY = "SELECT %(n)s::int + 1"

#: What a call is: the call number in, nothing out; it raises when the answer is wrong.
Call = Callable[[int], None]


# --- the HTTP server (runs in a child process) --------------------------------------------

_BODY = json.dumps({"ok": True, "value": 42}).encode()


class _Counts:
    """Per mode (the request path): requests, TCP connections and distinct client ports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.connections: Counter[str] = Counter()
        self.ports: defaultdict[str, set[int]] = defaultdict(set)

    def record(self, mode: str, port: int, first_on_connection: bool) -> None:
        with self.lock:
            self.requests[mode] += 1
            self.connections[mode] += first_on_connection
            self.ports[mode].add(port)

    def reset(self, mode: str) -> None:
        with self.lock:
            self.requests.pop(mode, None)
            self.connections.pop(mode, None)
            self.ports.pop(mode, None)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {mode: {"requests": self.requests[mode], "tcp_connections": self.connections[mode],
                           "distinct_client_ports": len(self.ports[mode])} for mode in self.requests}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog of 5 overflows when 4 threads open connections in a
    # burst; a dropped SYN is retried after a second, which would swamp the figures.
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.counts = _Counts()


class _Handler(BaseHTTPRequestHandler):
    """``GET /<mode>`` answers a small JSON body; ``/_stats`` and ``/_reset?<mode>`` are
    the bench's controls and are not counted."""

    protocol_version = "HTTP/1.1"  # keep-alive: a connection serves many requests
    disable_nagle_algorithm = True  # headers and body are two writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.first_request = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        counts = self.server.counts
        if self.path == "/_stats":
            body = json.dumps(counts.snapshot()).encode()
        elif self.path.startswith("/_reset?"):
            counts.reset(self.path.partition("?")[2])
            body = b"{}"
        else:
            counts.record(self.path.lstrip("/"), self.client_address[1], self.first_request)
            self.first_request = False
            body = _BODY
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # one stderr line per request otherwise


def _serve(pipe: Any) -> None:
    server = _Server()
    pipe.send(server.server_address[1])
    server.serve_forever(poll_interval=0.5)


class HttpServer:
    """The child process's server, seen from the bench: its URL and its counts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def _control(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def reset(self, mode: str) -> None:
        self._control(f"/_reset?{mode}")

    def counts(self, mode: str) -> dict[str, int]:
        return self._control("/_stats").get(mode, {"requests": 0, "tcp_connections": 0, "distinct_client_ports": 0})


@contextmanager
def http_server() -> Iterator[HttpServer]:
    # fork where there is one: the child starts at once instead of importing the runtime
    # again, and the bench has started no threads yet at this point.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork") if "fork" in methods else multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(theirs,), daemon=True, name="bench-http-server")
    process.start()
    try:
        deadline = time.monotonic() + 60
        while not ours.poll(0.05):
            if not process.is_alive():
                raise RuntimeError(f"the HTTP server process exited with code {process.exitcode}")
            if time.monotonic() > deadline:
                raise TimeoutError("the HTTP server did not start within 60 s")
        yield HttpServer(ours.recv())
    finally:
        process.terminate()
        process.join(10)


# --- measuring ----------------------------------------------------------------------------


def _sequential(call: Call, n: int) -> tuple[float, list[float]]:
    samples = []
    for i in range(n):
        start = clock()
        call(i)
        samples.append(clock() - start)
    return sum(samples), samples


def _threaded(call: Call, n: int, threads: int) -> tuple[float, list[float]]:
    """``n`` calls shared by ``threads`` threads that start together: the wall time from
    the start to the last call's end, and every call's duration."""
    shares = [n // threads + (1 if t < n % threads else 0) for t in range(threads)]
    barrier = threading.Barrier(threads + 1)
    samples: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        mine = samples[t]
        barrier.wait()
        try:
            for i in range(shares[t]):
                start = clock()
                call(t * n + i)
                mine.append(clock() - start)
        except BaseException as e:  # noqa: BLE001 - re-raised in the bench's thread below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,), name=f"bench-{t}", daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = clock()
    for worker in workers:
        worker.join()
    wall = clock() - start
    if errors:
        raise errors[0]
    return wall, [value for part in samples for value in part]


#: One way of making the calls: opening it (fresh each round) gives the call and a
#: ``finish`` that closes what it opened and returns that round's counts (connections...).
Mode = Callable[[], tuple[Call, Callable[[], dict[str, Any]]]]


def _rounds(modes: dict[str, Mode], n: int, rounds: int, threads: int, unit: str, blocks: int
            ) -> dict[str, Any]:
    """Each round opens every mode afresh, then runs its ``n`` calls in ``blocks`` blocks,
    the modes taking turns block by block (the first turning too): the machine's load
    falls on all alike, and a mode's calls do not run among another's (a closed
    connection's teardown on the server would land on the next mode's call)."""
    names = list(modes)
    per_s: dict[str, list[float]] = {name: [] for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    extras: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    sizes = [n // blocks + (1 if b < n % blocks else 0) for b in range(blocks)]
    for r in range(rounds):
        opened = {name: modes[name]() for name in names}
        walls = dict.fromkeys(names, 0.0)
        try:
            for b, size in enumerate(sizes):
                turn = (r + b) % len(names)
                for name in names[turn:] + names[:turn]:
                    call = opened[name][0]
                    wall, values = _threaded(call, size, threads) if threads > 1 else _sequential(call, size)
                    walls[name] += wall
                    samples[name].extend(values)
        finally:
            for name, (_, finish) in opened.items():
                extras[name].append(finish())
        for name in names:
            per_s[name].append(n / walls[name])
    results: dict[str, Any] = {unit: n, "threads": threads, "rounds": rounds, "blocks_per_round": blocks}
    for name in names:
        results[name] = {
            f"{unit}_per_s": statistics.median(per_s[name]),
            "latency": summary(samples[name]),
            **_median_extras(extras[name]),
        }
    for other in names[1:]:
        results[f"ratio_pool_over_{other}"] = results["pool"][f"{unit}_per_s"] / results[other][f"{unit}_per_s"]
    results[f"all_rounds_{unit}_per_s"] = per_s
    return results


def _median_extras(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers: the median over rounds; anything else (pool figures): the last round's."""
    merged: dict[str, Any] = {}
    for key, value in rounds[-1].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            middle = statistics.median(entry[key] for entry in rounds)
            merged[key] = int(middle) if isinstance(value, int) and middle == int(middle) else middle
        else:
            merged[key] = value
    return merged


# --- 1. HTTP --------------------------------------------------------------------------------


def _check(response: urllib3.BaseHTTPResponse) -> None:
    if response.status != 200 or response.data != _BODY:
        raise RuntimeError(f"unexpected answer: {response.status} {response.data[:80]!r}")


def _http_modes(server: HttpServer, threads: int) -> dict[str, Mode]:
    def counted(mode: str, call: Call, close: Callable[[], Any], more: Callable[[], dict[str, Any]]
                ) -> tuple[Call, Callable[[], dict[str, Any]]]:
        def finish() -> dict[str, Any]:
            extra = more()
            close()
            return {**server.counts(mode), **extra}

        server.reset(mode)
        return call, finish

    def pool() -> tuple[Call, Callable[[], dict[str, Any]]]:
        pools = ConnectionPools()
        http = pools.init_http_pool(maxsize=threads)
        url = f"{server.base}/pool"
        return counted("pool", lambda i: _check(http.request("GET", url, preload_content=True)), pools.close,
                       lambda: {"pool_waits": http.figures()["waits"]})

    def new_connection() -> tuple[Call, Callable[[], dict[str, Any]]]:
        url = f"{server.base}/new_connection"

        def call(i: int) -> None:
            with urllib3.PoolManager() as manager:
                _check(manager.request("GET", url))

        return counted("new_connection", call, lambda: None, dict)

    def bare_pool_manager() -> tuple[Call, Callable[[], dict[str, Any]]]:
        manager = urllib3.PoolManager(maxsize=threads, block=True)
        url = f"{server.base}/bare_pool_manager"
        return counted("bare_pool_manager", lambda i: _check(manager.request("GET", url)), manager.clear, dict)

    return {"pool": pool, "new_connection": new_connection, "bare_pool_manager": bare_pool_manager}


def http_section(n: int, rounds: int, blocks: int, warmup: int) -> dict[str, Any]:
    with http_server() as server:
        results: dict[str, Any] = {
            "server": "http.server.ThreadingHTTPServer, HTTP/1.1 keep-alive, in a child process",
            "baseline": "new_connection: a fresh urllib3.PoolManager() per call, closed after it",
            "diagnostic": "bare_pool_manager: one shared urllib3.PoolManager(maxsize, block=True), "
                          "the HttpPool wrapper's cost",
        }
        for threads in (1, THREADS):
            modes = _http_modes(server, threads)
            for mode in modes.values():  # imports, first connections, code paths warm
                call, finish = mode()
                for i in range(warmup):
                    call(i)
                finish()
            key = "sequential" if threads == 1 else f"threads_{threads}"
            results[key] = _rounds(modes, n, rounds, threads, "calls", blocks)
    return results


# --- 2. and 3. PostgreSQL ---------------------------------------------------------------------


def _query(conn: Any, i: int) -> None:
    with conn.cursor() as cursor:
        cursor.execute(QUERY, {"n": i})
        (value,) = cursor.fetchone()
    if value != i + 1:
        raise RuntimeError(f"{QUERY} with n={i} answered {value!r}")


_POOL_FIGURES = ("opened", "checkouts", "replaced", "waits", "wait_time_max", "timeouts", "errors")


def _pg_modes(psycopg2: Any, dsn: str, threads: int) -> dict[str, Mode]:
    def pool() -> tuple[Call, Callable[[], dict[str, Any]]]:
        pools = ConnectionPools()
        db = pools.init_postgres_pool(dsn=dsn, minconn=1, maxconn=threads, name="bench")

        def call(i: int) -> None:
            with db.connection() as conn:
                _query(conn, i)

        def finish() -> dict[str, Any]:
            figures = db.figures()
            pools.close()
            return {"connections_opened": figures["opened"],
                    "pool_figures": {key: figures[key] for key in _POOL_FIGURES}}

        return call, finish

    def new_connection() -> tuple[Call, Callable[[], dict[str, Any]]]:
        opened = Counter[str]()
        lock = threading.Lock()

        def call(i: int) -> None:
            conn = psycopg2.connect(dsn)
            with lock:
                opened["n"] += 1
            try:
                _query(conn, i)
            finally:
                conn.close()

        return call, lambda: {"connections_opened": opened["n"]}

    return {"pool": pool, "new_connection": new_connection}


def _overhead(psycopg2: Any, dsn: str, n: int, rounds: int, blocks: int, warmup: int) -> dict[str, Any]:
    """The pool's own cost: the query through the pool, on one connection held the whole
    time (ending its transaction the same way, by a rollback), and an empty checkout and
    return; taking turns call by call, since the differences are a few tens of µs.

    Every block has connections of its own: on this machine one connection's round trip
    can be 2-3x another's for as long as it lives (wherever the scheduler puts its server
    process), so the figures are medians over many sets of connections, not one.
    """
    names = ("pool", "bare_connection", "pool_checkout_return_only", "one_round_trip")
    samples: dict[str, list[float]] = {name: [] for name in names}
    per_s: dict[str, list[float]] = {name: [] for name in names}
    block_p50: dict[str, list[float]] = {name: [] for name in names}
    sizes = [n // blocks + (1 if b < n % blocks else 0) for b in range(blocks)]
    for _ in range(rounds):
        this_round: dict[str, list[float]] = {name: [] for name in names}
        for size in sizes:
            pools = ConnectionPools()
            db = pools.init_postgres_pool(dsn=dsn, minconn=1, maxconn=1, name="bench")
            held, ping = psycopg2.connect(dsn), psycopg2.connect(dsn)
            ping.autocommit = True
            try:
                def through_pool(i: int) -> None:
                    with db.connection() as conn:
                        _query(conn, i)

                def bare(i: int) -> None:
                    _query(held, i)
                    held.rollback()

                def checkout_return(i: int) -> None:
                    with db.connection():
                        pass

                def round_trip(i: int) -> None:
                    with ping.cursor() as cursor:
                        cursor.execute("SELECT 1")

                calls = dict(zip(names, (through_pool, bare, checkout_return, round_trip), strict=True))
                for i in range(max(2, warmup // blocks)):
                    for call in calls.values():
                        call(i)
                block: dict[str, list[float]] = {name: [] for name in names}
                for i in range(size):
                    turn = i % len(names)  # which goes first turns too
                    for name in names[turn:] + names[:turn]:
                        start = clock()
                        calls[name](i)
                        block[name].append(clock() - start)
                for name, values in block.items():
                    this_round[name].extend(values)
                    block_p50[name].append(statistics.median(values))
                figures = db.figures()
            finally:
                held.close()
                ping.close()
                pools.close()
        for name, values in this_round.items():
            samples[name].extend(values)
            per_s[name].append(n / sum(values))
    latency = {name: summary(values) for name, values in samples.items()}
    differences = [p - b for p, b in zip(block_p50["pool"], block_p50["bare_connection"], strict=True)]
    ratios = [p / b for p, b in zip(block_p50["pool"], block_p50["bare_connection"], strict=True)]
    return {
        "queries": n,
        "rounds": rounds,
        "connection_sets": rounds * blocks,
        "what": {
            "pool": "with pool.connection() as conn: the query (BEGIN, SELECT; on return ROLLBACK, DISCARD ALL)",
            "bare_connection": "the query on one connection held throughout, then conn.rollback() "
                               "(BEGIN, SELECT, ROLLBACK)",
            "pool_checkout_return_only": "with pool.connection(): pass (health checks, DISCARD ALL, set_session)",
            "one_round_trip": "SELECT 1 on an autocommit connection (diagnostic: one network round trip)",
        },
        **{name: {"queries_per_s": statistics.median(per_s[name]), "latency": latency[name],
                  "p50_us_median_of_connection_sets": statistics.median(block_p50[name]) * 1e6}
           for name in names},
        # From medians: a few stalls of milliseconds (a shared machine) would swamp a
        # difference of tens of µs in the means behind queries_per_s.
        "p50_ratio_pool_over_bare_connection": statistics.median(ratios),
        "pool_overhead_p50_us": statistics.median(differences) * 1e6,
        "pool_figures": {key: figures[key] for key in _POOL_FIGURES},
    }


def postgres_section(dsn: str, n: int, rounds: int, blocks: int, warmup: int) -> dict[str, Any]:
    shown = redact_dsn(dsn)
    try:
        import psycopg2  # type: ignore[import-untyped]  # noqa: PLC0415 - the optional postgres extra
    except ImportError as e:
        return {"skipped": f"psycopg2 not installed ({e}); pip install -e .[postgres]"}
    try:
        probe = psycopg2.connect(dsn, connect_timeout=3)
    except psycopg2.Error as e:
        return {"skipped": f"PostgreSQL at {shown!r} unreachable: {' '.join(str(e).split())}"}
    try:
        server_version = probe.server_version
    finally:
        probe.close()
    results: dict[str, Any] = {
        "dsn": shown,
        "server_version": server_version,
        "query": QUERY,
        "baseline": "new_connection: psycopg2.connect(dsn), the query, conn.close() per query",
    }
    for threads in (1, THREADS):
        modes = _pg_modes(psycopg2, dsn, threads)
        for mode in modes.values():
            call, finish = mode()
            for i in range(warmup):
                call(i)
            finish()
        key = "sequential" if threads == 1 else f"threads_{threads}"
        results[key] = _rounds(modes, n, rounds, threads, "queries", blocks)
    results["pool_overhead"] = _overhead(psycopg2, dsn, n, rounds, blocks, warmup)
    return results


# --- output -------------------------------------------------------------------------------


def _print(results: dict[str, Any]) -> None:
    meta = results["meta"]
    print(f"Python {meta['python']}, urllib3 {meta['urllib3']}, {meta['cpus']} CPUs, "
          f"load average at start {meta['load_average']}, {meta['seconds']:.0f} s")
    for section in ("http", "postgres"):
        if section not in results:
            continue
        figures = results[section]
        print(f"\n{section.upper()}")
        if "skipped" in figures:
            print(f"  skipped: {figures['skipped']}")
            continue
        for key, value in figures.items():
            if isinstance(value, dict) and "rounds" in value:
                _print_comparison(key, value)
            elif not isinstance(value, dict):
                print(f"  {key}: {value}")


def _print_comparison(title: str, figures: dict[str, Any]) -> None:
    unit = "calls" if "calls" in figures else "queries"
    threads = f", {figures['threads']} threads" if figures.get("threads", 1) > 1 else ""
    print(f"\n  {title}: {figures[unit]:,} {unit} per mode{threads}, median of {figures['rounds']} round(s)")
    print(f"    {'mode':<27} {unit + '/s':>10} {'p50 µs':>9} {'p99 µs':>9}  connections opened")
    for name, mode in figures.items():
        if isinstance(mode, dict) and "latency" in mode:
            opened = mode.get("tcp_connections", mode.get("connections_opened", ""))
            ports = f" ({mode['distinct_client_ports']} client ports)" if "distinct_client_ports" in mode else ""
            sets = mode.get("p50_us_median_of_connection_sets")
            across = f"p50 {sets:,.1f} µs over {figures['connection_sets']} connection sets" if sets else ""
            print(f"    {name:<27} {mode[unit + '_per_s']:>10,.0f} {mode['latency']['p50_us']:>9,.1f} "
                  f"{mode['latency']['p99_us']:>9,.1f}  {opened}{ports}{across}")
    for key, value in figures.items():
        if key.startswith(("ratio_", "p50_ratio_")):
            print(f"    {key:<44} {value:.2f}x")
        elif key == "pool_overhead_p50_us":
            print(f"    {key:<44} {value:.1f} µs")
    pool_figures = figures.get("pool_figures") or figures.get("pool", {}).get("pool_figures")
    if pool_figures:
        print(f"    pool figures (last round): {pool_figures}")
    if "what" in figures:
        for name, text in figures["what"].items():
            print(f"    {name}: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a handful of calls each: proves the bench runs")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--pg-dsn", default=DEFAULT_DSN, help=f"PostgreSQL to query (default {DEFAULT_DSN!r})")
    parser.add_argument("--only", nargs="+", choices=["http", "postgres"], help="run only these sections")
    args = parser.parse_args()
    n, rounds, blocks, warmup = (20, 1, 2, 2) if args.quick else (1000, 5, 10, 50)
    results: dict[str, Any] = {"meta": {
        "quick": args.quick, "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "urllib3": urllib3.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }}
    began = clock()
    if not args.only or "http" in args.only:
        results["http"] = http_section(n, rounds, blocks, warmup)
    if not args.only or "postgres" in args.only:
        results["postgres"] = postgres_section(args.pg_dsn, n, rounds, blocks, warmup)
    results["meta"]["seconds"] = clock() - began
    emit(results, args.json, _print)


if __name__ == "__main__":
    main()
