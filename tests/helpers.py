"""Helpers shared by the behaviour tests: an engine with a bound client, a run's end, and a
``go`` signal a test sends to a run that waits for it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from runwire.engine import Engine, open_engine
from runwire.engine.store._sqlite import SqliteStore
from runwire import Run, connect, runs, streams

API_KEY = "test-api-key-0123456789"

#: The input stream a test sends on to let a waiting run go on (see ``until_go``, ``finish``).
go = streams.input(id="go")


def bounded(seconds: float) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Fail the test if it runs longer than ``seconds``: real seconds, unless the test runs
    on the mock clock (for tests that wait on threads, which the mock clock cannot bound)."""

    def wrap(fn: Callable[..., Awaitable[None]]) -> Any:
        @functools.wraps(fn)
        async def test(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await fn(*args, **kwargs)

        return test

    return wrap


@asynccontextmanager
async def serve(tasks: Any, transport: str = "memory", *, time_limit: float = 86400.0,
                producer_buffer: int | None = None,
                **engine_options: Any) -> AsyncIterator[Engine]:
    """An engine with ``tasks`` and a client bound for SDK calls (in-process or websocket).

    The block fails after ``time_limit`` seconds of (mock) time: a hang becomes a failure.
    ``producer_buffer`` is the websocket client's (see ``connect``).
    """
    port = 0 if transport == "ws" else None
    client_options = {} if producer_buffer is None else {"producer_buffer": producer_buffer}
    with trio.fail_after(time_limit):
        async with open_engine(tasks, api_key=API_KEY, port=port, **engine_options) as eng:
            if transport == "ws":
                assert eng.url is not None
                async with connect(eng.url, api_key=API_KEY, **client_options):
                    yield eng
            else:
                async with eng.connect():
                    yield eng


async def final(run_id: str) -> Run:
    """The run once it is finished (follows its subscription to the end)."""
    async for run in runs.subscribe_to_run(run_id):
        if run.is_finished:
            return run
    return await runs.retrieve(run_id)


async def until_go() -> None:
    """Inside a run: wait until the test sends on the ``go`` input stream (``finish``)."""
    (await go.once()).unwrap()


async def finish(run_id: str) -> None:
    """Send on the ``go`` input stream of ``run_id``: its ``until_go()`` returns."""
    await go.send(run_id, True)


def count_groups(store: SqliteStore) -> list[int]:
    """Spy on ``store``'s group commits: the list gets each group's number of batches."""
    groups: list[int] = []
    write = store._write
    store._write = lambda group: (groups.append(len(group)), write(group))[1]  # type: ignore
    return groups
