"""``runwire serve`` (also ``python -m runwire.engine serve``): run an engine from a shell
until interrupted; and the client commands (``runwire runs|trigger|send|token``, in
``_commands``).

Every ``serve`` flag can also come from the environment (the flag wins): ``RUNWIRE_TASKS``,
``RUNWIRE_STORE``, ``RUNWIRE_HOST``, ``RUNWIRE_PORT``, ``RUNWIRE_API_KEY``,
``RUNWIRE_DRAIN_TIMEOUT``, ``RUNWIRE_GRACE_PERIOD``, ``RUNWIRE_RETENTION``, ``RUNWIRE_ANONYMOUS_STREAMS`` (1/true/yes/on),
``RUNWIRE_LONG_POLL_TIMEOUT``, ``RUNWIRE_MAX_CONNECTIONS_PER_ADDRESS``, ``RUNWIRE_PING_INTERVAL``,
``RUNWIRE_PING_TIMEOUT``, ``RUNWIRE_IDLE_TIMEOUT``, ``RUNWIRE_LOG_LEVEL``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import attrs
import trio

from runwire.runtime import parse_duration, tasks_in

from ._commands import add_commands, run_command
from ._engine import open_engine
from ._limits import Limits
from .service import generate_api_key
from .store import StoreError, backup_database


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"RUNWIRE_{name}", default)


def _env_flag(name: str) -> bool:
    """A boolean flag's default from ``RUNWIRE_<name>``: 1/true/yes/on turn it on."""
    return (_env(name, "") or "").strip().lower() in {"1", "true", "yes", "on"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runwire", description="runwire engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve tasks over websockets until interrupted",
                           epilog="Every flag may also be set in the environment: "
                                  "RUNWIRE_TASKS, RUNWIRE_STORE, RUNWIRE_HOST, RUNWIRE_PORT, "
                                  "RUNWIRE_API_KEY, RUNWIRE_DRAIN_TIMEOUT, RUNWIRE_GRACE_PERIOD, "
                                  "RUNWIRE_RETENTION, RUNWIRE_ANONYMOUS_STREAMS, RUNWIRE_LONG_POLL_TIMEOUT, "
                                  "RUNWIRE_MAX_CONNECTIONS_PER_ADDRESS, RUNWIRE_PING_INTERVAL, "
                                  "RUNWIRE_PING_TIMEOUT, RUNWIRE_IDLE_TIMEOUT, "
                                  "RUNWIRE_LOG_LEVEL (a flag wins).")
    tasks_env = _env("TASKS", None)
    serve.add_argument("--tasks", action="append", metavar="MODULE_OR_FILE",
                       default=[tasks_env] if tasks_env else [],
                       help="module to import (e.g. examples.quickstart) or a .py file path; "
                            "every task defined in it is registered (repeat or comma-separate "
                            "for several; default: $RUNWIRE_TASKS)")
    serve.add_argument("--store", default=_env("STORE", "sqlite:///runwire.db"),
                       help="memory://, sqlite:///path (default: $RUNWIRE_STORE, else "
                            "sqlite:///runwire.db)")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                       help="default: $RUNWIRE_HOST, else 127.0.0.1")
    serve.add_argument("--port", type=int, default=_env("PORT", "8765"),
                       help="0 picks a free port (default: $RUNWIRE_PORT, else 8765)")
    serve.add_argument("--api-key", default=None,
                       help="secret API key, at least 8 characters (default: $RUNWIRE_API_KEY, "
                            "else generated and printed once)")
    serve.add_argument("--drain-timeout", type=float, default=_env("DRAIN_TIMEOUT", "60"),
                       help="seconds a finished task's producers may go on (default: "
                            "$RUNWIRE_DRAIN_TIMEOUT, else 60)")
    serve.add_argument("--grace-period", type=_grace, default=_env("GRACE_PERIOD", "30"),
                       help="on SIGINT/SIGTERM, seconds executing runs get to finish before "
                            "the live runs are handed back for the next engine (default: "
                            "$RUNWIRE_GRACE_PERIOD, else 30)")
    serve.add_argument("--retention", default=_env("RETENTION", "28d"), type=_retention,
                       help="how long finished runs are kept: seconds or 30m/12h/28d "
                            "(default: $RUNWIRE_RETENTION, else 28d)")
    serve.add_argument("--anonymous-streams", action="store_true",
                       default=_env_flag("ANONYMOUS_STREAMS"),
                       help="let HTTP requests without credentials use free-standing durable "
                            "streams at /v1/stream/... (default: $RUNWIRE_ANONYMOUS_STREAMS, "
                            "else off)")
    serve.add_argument("--long-poll-timeout", type=float, default=_env("LONG_POLL_TIMEOUT", None),
                       metavar="SECONDS",
                       help="seconds a long-poll read waits before 204 (default: "
                            "$RUNWIRE_LONG_POLL_TIMEOUT, else 10)")
    serve.add_argument("--max-connections-per-address", type=_cap,
                       default=_env("MAX_CONNECTIONS_PER_ADDRESS", None), metavar="N|none",
                       help="TCP connections one client address may hold (default: "
                            "$RUNWIRE_MAX_CONNECTIONS_PER_ADDRESS, else 256; 'none' behind a "
                            "proxy that makes every client one address)")
    serve.add_argument("--ping-interval", type=_seconds_or_none,
                       default=_env("PING_INTERVAL", None), metavar="SECONDS|none",
                       help="ping every websocket this often; a pong later than "
                            "--ping-timeout drops it (default: $RUNWIRE_PING_INTERVAL, else 20)")
    serve.add_argument("--ping-timeout", type=_seconds, default=_env("PING_TIMEOUT", None),
                       metavar="SECONDS",
                       help="default: $RUNWIRE_PING_TIMEOUT, else 20")
    serve.add_argument("--idle-timeout", type=_seconds_or_none,
                       default=_env("IDLE_TIMEOUT", None), metavar="SECONDS|none",
                       help="close a websocket with no request open that sent nothing this "
                            "long (default: $RUNWIRE_IDLE_TIMEOUT, else 600)")
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"),
                       help="default: $RUNWIRE_LOG_LEVEL, else INFO")
    backup = sub.add_parser("backup", help="copy a SQLite store consistently, also while an "
                                           "engine writes to it")
    backup.add_argument("dest", metavar="PATH", help="the new file to write")
    backup.add_argument("--store", default=_env("STORE", "sqlite:///runwire.db"),
                        help="the engine's store URL (default: $RUNWIRE_STORE, else "
                             "sqlite:///runwire.db)")
    add_commands(sub)
    return parser


#: ``none`` given for a limit that can be turned off (``None`` means "not given").
_NONE = object()


def _seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, not {text!r}")
    return value


def _seconds_or_none(text: str) -> object:
    """Seconds, or ``none`` (the limit off)."""
    return _NONE if text.strip().lower() == "none" else _seconds(text)


def _cap(text: str) -> object:
    """A whole number >= 1, or ``none`` (no cap)."""
    if text.strip().lower() == "none":
        return _NONE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number or 'none', not {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text!r}")
    return value


def _backup(args: argparse.Namespace) -> int:
    began = time.monotonic()
    size = backup_database(args.store, args.dest)
    print(f"backed up {args.store} to {args.dest} ({size} bytes, checked) in "
          f"{time.monotonic() - began:.2f}s", flush=True)
    return 0


def _retention(text: str) -> float:
    """``--retention``: a number of seconds, or a duration such as ``12h``."""
    try:
        value: Any = float(text)
    except ValueError:
        value = text  # "30m", "28d", ...
    try:
        seconds = parse_duration(value, "--retention")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds is None or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"--retention must be finite, not {text!r}")
    return seconds


def _grace(text: str) -> float:
    """``--grace-period``: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grace-period must be seconds, not {text!r}") \
            from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"--grace-period must be >= 0 and finite, not {text!r}")
    return value


def load_tasks(modules: list[str]) -> list[Any]:
    """Import each module (a dotted name, or a ``.py`` file path) and collect its tasks."""
    found: list[Any] = []
    for spec in modules:
        for name in filter(None, (part.strip() for part in spec.split(","))):
            found.extend(tasks_in(_import(name)))
    return found


def _import(name: str) -> Any:
    """A module by dotted name, or by file path (``path/to/tasks.py``): a path lets
    ``serve`` find tasks outside the current folder and outside ``sys.path``."""
    if not name.endswith(".py") and os.sep not in name:
        return importlib.import_module(name)
    path = os.path.abspath(name)
    if not os.path.isfile(path):
        raise ImportError(f"no tasks file {name!r}")
    module_name = "runwire_tasks_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {name!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and attrs look their module up
    spec.loader.exec_module(module)
    return module


def serve_limits(args: argparse.Namespace) -> Limits:
    """The engine's limits from ``serve``'s flags (the rest keep their defaults)."""
    limits = Limits(retention=args.retention)
    if args.long_poll_timeout is not None:
        limits = attrs.evolve(limits, long_poll_timeout=args.long_poll_timeout)
    changes: dict[str, Any] = {}
    for name in ("max_connections_per_address", "ping_interval", "ping_timeout",
                 "idle_timeout"):
        value = getattr(args, name)
        if value is not None:  # (a "none" given is _NONE: the limit is turned off)
            changes[name] = None if value is _NONE else value
    return attrs.evolve(limits, **changes)


async def _serve(args: argparse.Namespace) -> None:
    api_key = args.api_key or os.environ.get("RUNWIRE_API_KEY")
    if not api_key:
        api_key = generate_api_key()
        print(f"generated API key (shown once): {api_key}", flush=True)
    tasks = load_tasks(args.tasks)
    limits = serve_limits(args)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_engine(tasks, store=args.store, api_key=api_key, host=args.host,
                               port=args.port, drain_timeout=args.drain_timeout,
                               limits=limits, anonymous_streams=args.anonymous_streams) as eng:
            names = ", ".join(sorted(eng.tasks)) or "(none)"
            print(f"runwire engine serving {eng.url} and {eng.http_url} (store {args.store}; tasks: {names})",
                  flush=True)
            async for signum in signals:
                print(f"received {signal.Signals(signum).name}; stopping (grace period "
                      f"{args.grace_period:g}s; a second signal hands runs back at once)",
                      flush=True)
                break
            async with trio.open_nursery() as nursery:
                async def second_signal() -> None:
                    async for _ in signals:
                        print("second signal: handing runs back now", flush=True)
                        eng.hurry()
                        return

                nursery.start_soon(second_signal)
                handed = await eng.stop(args.grace_period)
                nursery.cancel_scope.cancel()
            print(f"handed back {handed} live runs for the next engine", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "backup":
        try:
            return _backup(args)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command != "serve":
        return run_command(args)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, os.getcwd())
    try:
        trio.run(_serve, args)
    except KeyboardInterrupt:
        pass
    except (ValueError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("stopped", flush=True)
    return 0
