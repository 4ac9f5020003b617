#!/usr/bin/env python3
"""The command line of the runtime.

    python run.py serve  --registry examples/registry.json   # run stored jobs until SIGINT/SIGTERM
    python run.py run greet --arg name=Ada --registry examples/registry.json   # one job, with progress
    python run.py check  --registry examples/registry.json   # validate, list the scripts
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from runtime import ActorRuntimeError, InvalidArguments, Runtime, load_registry
from runtime.config import load_settings
from runtime.registry import MAX_TIMEOUT

logger = logging.getLogger("run")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                        help="logging level (default INFO; WARNING for run, whose output is its progress bar)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the runtime and keep it up until SIGINT/SIGTERM")
    serve.add_argument("--registry", default=None, help="registry file (default: REGISTRY_PATH or ./registry.json)")
    serve.add_argument("--cache-size", type=int, default=None, help="LRU entries (default: CACHE_SIZE or 100)")
    serve.add_argument("--watcher", choices=("auto", "inotify", "polling"), default=None)
    serve.add_argument("--stats-every", type=_seconds, default=0.0, metavar="SECONDS",
                       help="log a stats snapshot every SECONDS (0: only at exit)")

    run = sub.add_parser("run", help="run one job to its end, showing its progress and result")
    run.add_argument("script", help="script id")
    run.add_argument("--registry", default=None, help="registry file (default: REGISTRY_PATH or ./registry.json)")
    run.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                     help="an argument, converted to the type the registry declares (repeatable)")
    run.add_argument("--args-json", default=None, metavar="JSON", help="all arguments as one JSON object")
    run.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    run.add_argument("--timeout", type=_seconds, default=None, help="give up waiting after this many seconds")

    check = sub.add_parser("check", help="validate a registry and list its scripts")
    check.add_argument("--registry", default=None, help="registry file (default: REGISTRY_PATH or ./registry.json)")
    return parser


def _seconds(text: str) -> float:
    """A number of seconds for an option: finite, 0 or more, at most a year."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= seconds <= MAX_TIMEOUT:  # False for NaN too
        raise argparse.ArgumentTypeError(f"must be from 0 to a year of seconds, got {text!r}")
    return seconds


def _serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rt = Runtime.start(args.registry, cache_size=args.cache_size, watcher=args.watcher)
    try:
        snapshot = rt.stats_snapshot()
        print(
            f"runtime up: {snapshot['registry']['scripts']} scripts from {rt.settings.registry_path}, "
            f"watching with {snapshot['watcher']['backend']}; Ctrl-C stops it",
            flush=True,
        )
        while not stop.is_set() and rt.running:
            stop.wait(args.stats_every or 0.5)
            if args.stats_every and rt.running:
                logger.info("stats %s", json.dumps(rt.stats_snapshot()))
        if rt.escalation is not None:
            print(f"error: {rt.escalation}", file=sys.stderr)
            return 1
        print(json.dumps(rt.stats_snapshot(), indent=2), flush=True)
        return 0
    finally:
        rt.stop()


def _convert(kind: str, name: str, raw: str) -> Any:
    """A command-line string as the JSON type the registry declares."""
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind in ("object", "array"):
            return json.loads(raw)
    except ValueError:  # not the value itself: it may be a secret
        raise InvalidArguments(f"argument {name!r} must be of type {kind}; its value does not read as one") from None
    return raw


def _arguments(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.args_json:
        try:
            values = json.loads(args.args_json)
        except ValueError as e:
            raise InvalidArguments(f"--args-json is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise InvalidArguments("--args-json must be a JSON object")
    script = rt.script(args.script)
    for item in args.arg:
        name, sep, raw = item.partition("=")
        if not sep:  # no "=": the text may be a value given alone, so only its length is shown
            raise InvalidArguments(f"--arg takes NAME=VALUE; one of them has no '=' ({len(item)} characters)")
        spec = script.arguments.get(name)
        values[name] = _convert(spec.type, name, raw) if spec else raw  # unknown names: rejected by submit
    return values


class _ProgressBar:
    """Draws a job's progress on stderr until it is switched off."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, job_id: str, fraction: float, message: str) -> None:
        if not self.on:
            return
        width = 30
        filled = round(fraction * width)
        print(f"\r[{'#' * filled}{' ' * (width - filled)}] {fraction:4.0%} {message[:40]:<40}", end="",
              file=sys.stderr, flush=True)


class _Terminated(Exception):
    """SIGTERM while ``run`` waits: handled as Ctrl-C is (the job is cancelled)."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise _Terminated


def _run(args: argparse.Namespace) -> int:
    bar = _ProgressBar()
    with Runtime.start(args.registry) as rt:
        job_id = rt.submit(args.script, _arguments(rt, args), args.priority, callback=bar)
        # While it waits for its job, SIGTERM is handled as Ctrl-C is (before, it ends the process
        # as it always does, and a job already submitted stays queued for the next start).
        default = signal.signal(signal.SIGTERM, _terminate)
        try:
            try:
                print(f"job {job_id} queued", file=sys.stderr, flush=True)
                final = rt.wait_job(job_id, args.timeout)
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if default is None else default)
        except TimeoutError:
            bar.on = False
            print(f"\njob {job_id} still running after {args.timeout:g} s: stopped; it stays in the store "
                  f"({rt.settings.job_storage_path}) and the next start runs it again", file=sys.stderr)
            rt.stop(drain=0)  # no drain: the attempt is stopped, and the job queued for the next start
            return 3
        except (KeyboardInterrupt, _Terminated) as e:
            bar.on = False
            rt.cancel(job_id)
            terminated = isinstance(e, _Terminated)
            print(f"\njob {job_id} cancelled ({'terminated' if terminated else 'interrupted'})", file=sys.stderr)
            rt.stop(drain=0)
            return 143 if terminated else 130
        print(file=sys.stderr)
        result = final.get("result") or {}
        if result.get("stdout"):
            print(result["stdout"], end="" if result["stdout"].endswith("\n") else "\n")
        for attempt in final["attempts"]:
            if attempt.get("error"):
                print(f"attempt {attempt['number']}: {attempt['error']}", file=sys.stderr)
        print(f"job {job_id}: {final['status']} after {len(final['attempts'])} attempt(s)", file=sys.stderr)
        return 0 if final["status"] == "succeeded" else 1


def _check(args: argparse.Namespace) -> int:
    registry = load_registry(load_settings(registry_path=args.registry).registry_path)
    for script in registry.values():
        arguments = ", ".join(
            f"{name}:{spec.type}{'' if spec.required else '?'}" for name, spec in script.arguments.items()
        )
        print(f"{script.id:<20} {script.kind:<8} ({arguments}) {script.description}")
    print(f"{len(registry)} scripts, valid")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level or ("WARNING" if args.command == "run" else "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: dict[str, Any] = {"serve": _serve, "run": _run, "check": _check}
    try:
        return int(handlers[args.command](args))
    except ActorRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
