"""``runwire runs|trigger|send|token``: look at and drive a running engine from a shell.

Theory of operation: each command connects to an engine with the SDK's ``connect`` (``--url``
and ``--api-key``, or ``$RUNWIRE_URL`` / ``$RUNWIRE_API_KEY``; the key may also be a public
access token), makes one or a few SDK calls, prints the answer with rich (tables, a live tail)
or as JSON (``--json``), and exits. Every failure is one line on stderr and a non-zero exit:
1 for what the engine refused or could not do (a wrong key, an unknown run, a finished run)
or an engine it could not reach, 2 for bad arguments (bad JSON, a bad duration).
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
from rich.console import Console
from rich.table import Table

from runwire import (
    Run, RunwireError, auth, connect, runs, streams, tasks, wait,
)
from runwire.runtime import parse_duration

#: Where commands connect when neither ``--url`` nor ``$RUNWIRE_URL`` says.
DEFAULT_URL = "ws://127.0.0.1:8765"
#: Exit codes.
EXIT_FAILED = 1
EXIT_USAGE = 2

Command = Callable[[argparse.Namespace, Console], Awaitable[None]]


class UsageError(Exception):
    """A bad argument found after parsing (bad JSON, say): exit 2."""


def add_commands(sub: Any) -> None:
    """Add the client commands to ``runwire``'s subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("RUNWIRE_URL", DEFAULT_URL),
                        help=f"engine URL (default: $RUNWIRE_URL, else {DEFAULT_URL})")
    common.add_argument("--api-key", default=os.environ.get("RUNWIRE_API_KEY"),
                        help="API key or public access token (default: $RUNWIRE_API_KEY)")
    common.add_argument("--connect-timeout", type=float, default=10.0,
                        help="seconds to wait for an unreachable engine (default 10)")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")

    runs_cmd = sub.add_parser("runs", help="list, show, tail or cancel runs")
    runs_sub = runs_cmd.add_subparsers(dest="action", required=True)
    listing = runs_sub.add_parser("list", parents=[common], help="a table of runs, newest first")
    listing.add_argument("--task", help="only runs of this task")
    listing.add_argument("--status", action="append", default=[],
                         help="only runs with this status (repeat for several)")
    listing.add_argument("--tag", action="append", default=[], help="only runs with this tag")
    listing.add_argument("--since", help="only runs created in the last DURATION (e.g. 1h)")
    listing.add_argument("--limit", type=int, default=20, help="runs per page (1-100)")
    listing.add_argument("--cursor", help="the next-page cursor a previous list printed")
    listing.set_defaults(run=_runs_list)
    for name, fn, text in (("show", _runs_show, "one run's fields, payload and output"),
                           ("tail", _runs_tail, "follow a run and print its streams live"),
                           ("cancel", _runs_cancel, "cancel a live run")):
        cmd = runs_sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument("run_id", metavar="RUN")
        cmd.set_defaults(run=fn)

    trigger = sub.add_parser("trigger", parents=[common], help="start a run of a task")
    trigger.add_argument("task_id", metavar="TASK")
    trigger.add_argument("--payload", default="null", help="the payload as JSON")
    trigger.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    trigger.add_argument("--idempotency-key")
    trigger.add_argument("--wait", action="store_true", help="wait for the run's result")
    trigger.set_defaults(run=_trigger)

    send = sub.add_parser("send", parents=[common], help="send a record to a run's input stream")
    send.add_argument("run_id", metavar="RUN")
    send.add_argument("key", metavar="KEY", help="input stream key")
    send.add_argument("data", metavar="JSON", help="the record as JSON")
    send.set_defaults(run=_send)

    token = sub.add_parser("token", help="access tokens and waitpoint tokens")
    token_sub = token.add_subparsers(dest="action", required=True)
    create = token_sub.add_parser("create", parents=[common],
                                  help="a public access token (API key only)")
    create.add_argument("--scope", action="append", required=True,
                        help="e.g. read:runs:<run id> (repeatable)")
    create.add_argument("--expires-in", default="15m", help="lifetime (default 15m)")
    create.set_defaults(run=_token_create)
    waitpoint = token_sub.add_parser("waitpoint", parents=[common],
                                     help="create a waitpoint token (API key only)")
    waitpoint.add_argument("--timeout", dest="wait_timeout", help="e.g. 1h (default: none)")
    waitpoint.add_argument("--idempotency-key")
    waitpoint.add_argument("--tag", action="append", default=[])
    waitpoint.set_defaults(run=_token_waitpoint)
    complete = token_sub.add_parser("complete", parents=[common],
                                    help="complete a waitpoint token with JSON data")
    complete.add_argument("token_id", metavar="TOKEN")
    complete.add_argument("data", metavar="JSON", nargs="?", default="null")
    complete.set_defaults(run=_token_complete)
    show = token_sub.add_parser("show", parents=[common], help="a waitpoint token's state")
    show.add_argument("token_id", metavar="TOKEN")
    show.set_defaults(run=_token_show)


def run_command(args: argparse.Namespace) -> int:
    """Run a client command; its exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False, soft_wrap=True)
    if not args.api_key:
        err.print("error: no credential: pass --api-key or set RUNWIRE_API_KEY")
        return EXIT_USAGE
    try:
        trio.run(_connected, args, out)
    except UsageError as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_USAGE
    except RunwireError as exc:
        err.print(f"error ({exc.code}): {exc.message or exc}", markup=False)
        return EXIT_FAILED
    except (ConnectionError, OSError) as exc:
        err.print(f"error: cannot reach the engine at {args.url}: {exc}", markup=False)
        return EXIT_FAILED
    except ValueError as exc:  # a bad URL, a bad status name, ...
        err.print(f"error: {exc}", markup=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


async def _connected(args: argparse.Namespace, out: Console) -> None:
    command: Command = args.run
    _prepare(args)  # bad arguments fail before connecting
    async with connect(args.url, api_key=args.api_key,
                       reconnect_timeout=args.connect_timeout,
                       connect_timeout=args.connect_timeout):
        await command(args, out)


def _prepare(args: argparse.Namespace) -> None:
    for name in ("payload", "data"):
        if hasattr(args, name):
            setattr(args, name + "_value", _json(getattr(args, name), name))


def _json(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc}): {text[:80]!r}") from None


def _print_json(out: Console, value: Any) -> None:
    out.print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode(), markup=False,
              soft_wrap=True)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: Run) -> str:
    if run.started_at is None:
        return "-"
    end = run.finished_at if run.finished_at is not None else datetime.datetime.now().timestamp()
    return f"{end - run.started_at:.2f}s"


_STYLE = {"COMPLETED": "green", "FAILED": "red", "CRASHED": "red", "TIMED_OUT": "red",
          "CANCELED": "yellow", "WAITING": "cyan", "EXECUTING": "blue", "QUEUED": "dim"}


def _status(run: Run) -> str:
    return f"[{_STYLE.get(run.status.value, '')}]{run.status.value}[/]"


# --- runs -------------------------------------------------------------------------------


async def _runs_list(args: argparse.Namespace, out: Console) -> None:
    since = None
    if args.since:
        try:
            seconds = parse_duration(args.since, "--since") or 0.0
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        since = datetime.datetime.now().timestamp() - seconds
    page = await runs.list(task=args.task, status=[s.upper() for s in args.status] or None,
                           tags=args.tag or None, created_after=since, limit=args.limit,
                           cursor=args.cursor)
    if args.json:
        _print_json(out, {"runs": [_run_json(r) for r in page.runs], "cursor": page.cursor})
        return
    table = Table(title=f"{len(page.runs)} runs", title_justify="left")
    for column in ("run", "task", "status", "attempt", "created", "duration", "tags"):
        table.add_column(column)
    for run in page.runs:
        table.add_row(run.id, run.task_id, _status(run), str(run.attempt), _when(run.created_at),
                      _duration(run), ", ".join(run.tags))
    out.print(table)
    if page.cursor:
        out.print(f"next page: --cursor {page.cursor}", markup=False)


def _run_json(run: Run) -> dict[str, Any]:
    return {"id": run.id, "task_id": run.task_id, "status": run.status.value,
            "payload": run.payload, "output": run.output,
            "error": None if run.error is None else {"type": run.error.type,
                                                     "message": run.error.message},
            "metadata": run.metadata, "tags": list(run.tags), "attempt": run.attempt,
            "parent_id": run.parent_id, "root_id": run.root_id, "streams": list(run.streams),
            "created_at": run.created_at, "started_at": run.started_at,
            "finished_at": run.finished_at}


async def _runs_show(args: argparse.Namespace, out: Console) -> None:
    run = await runs.retrieve(args.run_id)
    if args.json:
        _print_json(out, _run_json(run))
        return
    table = Table(show_header=False, title=f"run {run.id}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [("task", run.task_id), ("status", _status(run)), ("attempt", str(run.attempt)),
            ("created", _when(run.created_at)), ("started", _when(run.started_at)),
            ("finished", _when(run.finished_at)), ("duration", _duration(run)),
            ("tags", ", ".join(run.tags) or "-"), ("parent", run.parent_id or "-"),
            ("streams", ", ".join(run.streams) or "-")]
    for name, value in rows:
        table.add_row(name, value)
    for name, data in (("payload", run.payload), ("output", run.output),
                       ("metadata", run.metadata or None)):
        table.add_row(name, _escaped(orjson.dumps(data).decode()))
    if run.error is not None:
        table.add_row("error", _escaped(f"{run.error.type}: {run.error.message}"))
    out.print(table)


def _escaped(text: str) -> str:
    return text.replace("[", "\\[")


async def _runs_tail(args: argparse.Namespace, out: Console) -> None:
    """Every stream's chunks as they arrive, and each status change, until the run is
    finished and its streams have ended."""
    last = None
    async for part in runs.subscribe_to_run(args.run_id).with_streams():
        if part.type == "run":
            assert part.run is not None
            if part.run.status is not last:
                last = part.run.status
                if args.json:
                    _print_json(out, {"run": part.run.id, "status": last.value})
                else:
                    out.print(f"[bold]{part.run.id}[/] {_status(part.run)}")
        elif args.json:
            out.print(orjson.dumps({"stream": part.type, "index": part.index,
                                    "chunk": part.chunk}).decode(), markup=False)
        else:
            chunk = part.chunk if isinstance(part.chunk, str) else orjson.dumps(
                part.chunk).decode()
            out.print(f"[dim]{part.type}[{part.index}][/] {_escaped(chunk)}")


async def _runs_cancel(args: argparse.Namespace, out: Console) -> None:
    await runs.cancel(args.run_id)
    out.print(f"run {args.run_id} canceled", markup=False)


# --- trigger and send ---------------------------------------------------------------------


async def _trigger(args: argparse.Namespace, out: Console) -> None:
    options: dict[str, Any] = {}
    if args.tag:
        options["tags"] = args.tag
    if args.idempotency_key:
        options["idempotency_key"] = args.idempotency_key
    handle = await tasks.trigger(args.task_id, args.payload_value, **options)
    if not args.wait:
        if args.json:
            _print_json(out, {"id": handle.id, "public_access_token": handle.public_access_token})
        else:
            out.print(f"triggered run {handle.id}", markup=False)
            out.print(f"public access token: {handle.public_access_token}", markup=False)
        return
    async for _ in runs.subscribe_to_run(handle.id):
        pass
    run = await runs.retrieve(handle.id)
    if args.json:
        _print_json(out, _run_json(run))
    else:
        out.print(f"run {run.id} {_status(run)}: "
                  f"{_escaped(orjson.dumps(run.output).decode())}")
        if run.error is not None:
            out.print(_escaped(f"{run.error.type}: {run.error.message}"))
    if run.status.value != "COMPLETED":
        raise RunwireError(f"run {run.id} ended {run.status.value}")


async def _send(args: argparse.Namespace, out: Console) -> None:
    await streams.input(id=args.key).send(args.run_id, args.data_value)
    out.print(f"sent to {args.run_id} input stream {args.key!r}", markup=False)


# --- tokens -------------------------------------------------------------------------------


async def _token_create(args: argparse.Namespace, out: Console) -> None:
    try:
        seconds = parse_duration(args.expires_in, "--expires-in") or 0.0
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    token = await auth.create_public_token(scopes=args.scope, expiration=seconds)
    out.print(token, markup=False, soft_wrap=True)


async def _token_waitpoint(args: argparse.Namespace, out: Console) -> None:
    try:
        timeout = parse_duration(args.wait_timeout, "--timeout")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    token = await wait.create_token(timeout=timeout, idempotency_key=args.idempotency_key,
                                    tags=args.tag or None)
    if args.json:
        _print_json(out, {"id": token.id, "public_access_token": token.public_access_token,
                          "expires_at": token.expires_at})
        return
    out.print(f"waitpoint token {token.id} (expires {_when(token.expires_at)})", markup=False)
    out.print(f"public access token: {token.public_access_token}", markup=False)


async def _token_complete(args: argparse.Namespace, out: Console) -> None:
    completed = await wait.complete_token(args.token_id, args.data_value)
    if completed:
        out.print(f"completed {args.token_id}", markup=False)
    else:
        out.print(f"{args.token_id} was already completed; its data is unchanged", markup=False)


async def _token_show(args: argparse.Namespace, out: Console) -> None:
    token = await wait.retrieve_token(args.token_id)
    fields = {"id": token.id, "status": token.status, "created_at": token.created_at,
              "expires_at": token.expires_at, "completed_at": token.completed_at,
              "tags": list(token.tags), "idempotency_key": token.idempotency_key,
              "run_id": token.run_id, "output": token.output}
    if args.json:
        _print_json(out, fields)
        return
    table = Table(show_header=False, title=f"waitpoint {token.id}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in fields.items():
        shown = _when(value) if name.endswith("_at") else (
            value if isinstance(value, str) else orjson.dumps(value).decode())
        table.add_row(name, _escaped(str(shown)))
    out.print(table)
