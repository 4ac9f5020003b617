#!/usr/bin/env python3
"""The command line of the runtime.

    python run.py serve  --registry examples/registry.json   # run until SIGINT/SIGTERM
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

from runtime import ActorRuntimeError, Runtime, load_registry

logger = logging.getLogger("run")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the runtime and keep it up until SIGINT/SIGTERM")
    serve.add_argument("--registry", default=None, help="registry file (default: REGISTRY_PATH or ./registry.json)")
    serve.add_argument("--cache-size", type=int, default=None, help="LRU entries (default: CACHE_SIZE or 100)")
    serve.add_argument("--watcher", choices=("auto", "inotify", "polling"), default=None)
    serve.add_argument("--stats-every", type=float, default=0.0, metavar="SECONDS",
                       help="log a stats snapshot every SECONDS (0: only at exit)")

    check = sub.add_parser("check", help="validate a registry and list its scripts")
    check.add_argument("--registry", default="registry.json")
    return parser


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


def _check(args: argparse.Namespace) -> int:
    registry = load_registry(args.registry)
    for script in registry.values():
        arguments = ", ".join(
            f"{name}:{spec.type}{'' if spec.required else '?'}" for name, spec in script.arguments.items()
        )
        print(f"{script.id:<20} {script.kind:<8} ({arguments}) {script.description}")
    print(f"{len(registry)} scripts, valid")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: dict[str, Any] = {"serve": _serve, "check": _check}
    try:
        return int(handlers[args.command](args))
    except ActorRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
