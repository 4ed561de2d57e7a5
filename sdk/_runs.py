"""``runs``: look at, cancel and follow runs."""

from __future__ import annotations

import builtins
import contextlib
import datetime
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import anyio

from ._models import Run, RunList, RunStatus
from .runtime import Backend, current_backend


@attrs.frozen
class RunPart:
    """One item of ``subscribe_to_run(...).with_streams()``.

    ``type`` is ``"run"`` (then ``run`` is the new snapshot) or a stream key (then ``chunk``
    is the next chunk of that stream and ``index`` its index).
    """

    type: str
    run: Run | None = None
    chunk: Any = None
    index: int | None = None


class RunSubscription:
    """``runs.subscribe_to_run(id)``: iterate for run snapshots, or ``.with_streams()``."""

    def __init__(self, run_id: str, client: Backend | None = None) -> None:
        if not isinstance(run_id, str) or not run_id:
            raise TypeError("run_id must be a non-empty string")
        if client is not None:
            current_backend(client)  # a wrong client is refused here, not at the first snapshot
        self.run_id = run_id
        self.client = client

    def __aiter__(self) -> AsyncIterator[Run]:
        return current_backend(self.client).subscribe(self.run_id).__aiter__()

    def with_streams(self) -> AsyncIterator[RunPart]:
        """Run parts and chunk parts of every stream (also streams that appear later).

        Ends once the run is finished and every one of its streams has ended.
        """
        return _with_streams(current_backend(self.client), self.run_id)


async def _with_streams(backend: Backend, run_id: str) -> AsyncIterator[RunPart]:
    send, receive = anyio.create_memory_object_stream[RunPart](256)
    scopes: list[anyio.CancelScope] = []
    readers: set[str] = set()
    pending = [1]  # open producers of parts: the run subscription plus one per stream

    async def finish_one() -> None:
        pending[0] -= 1
        if pending[0] == 0:
            await send.aclose()

    async def read_stream(key: str) -> None:
        with _guard(scopes):
            index = 0
            async for batch in backend.read(run_id, key, 0, None):
                for chunk in batch:
                    await send.send(RunPart(type=key, chunk=chunk, index=index))
                    index += 1
        await finish_one()

    async def follow_run() -> None:
        with _guard(scopes):
            async for run in backend.subscribe(run_id):
                for key in run.streams:
                    if key not in readers:
                        readers.add(key)
                        pending[0] += 1
                        backend.spawn_background(functools.partial(read_stream, key))
                await send.send(RunPart(type="run", run=run))
        await finish_one()

    backend.spawn_background(follow_run)
    try:
        async with receive:
            async for part in receive:
                yield part
    finally:
        for scope in scopes:
            scope.cancel()


@contextlib.contextmanager
def _guard(scopes: list[anyio.CancelScope]) -> Iterator[None]:
    """A cancel scope the consumer can cancel; a consumer gone away ends the task quietly."""
    scope = anyio.CancelScope()
    scopes.append(scope)
    try:
        with scope:
            yield
    except anyio.BrokenResourceError:
        pass


class _Runs:
    """``runs.retrieve``, ``runs.cancel``, ``runs.subscribe_to_run``, ``runs.list``."""

    async def retrieve(self, run_id: str, *, client: Backend | None = None) -> Run:
        """The run's current snapshot.

        Raises:
            NotFoundError: no such run.
        """
        return await current_backend(client).retrieve(run_id)

    async def cancel(self, run_id: str, *, client: Backend | None = None) -> None:
        """Cancel a run: its nursery is cancelled, its streams end, status ``CANCELED``."""
        await current_backend(client).cancel_run(run_id)

    def subscribe_to_run(self, run_id: str, *, client: Backend | None = None) -> RunSubscription:
        return RunSubscription(run_id, client)

    async def list(self, *, task: str | None = None,
                   status: RunStatus | str | builtins.list[RunStatus | str] | None = None,
                   tags: builtins.list[str] | None = None,
                   created_after: float | datetime.datetime | None = None,
                   created_before: float | datetime.datetime | None = None,
                   limit: int = 20, cursor: str | None = None,
                   client: Backend | None = None) -> RunList:
        """A page of runs, newest first; every filter given must hold (``tags``: all).

        Pass the page's ``cursor`` for the next one; pages do not shift when new runs
        start meanwhile. ``limit`` is 1-100. Times are epoch seconds or datetimes.
        From a backend this needs the API key (or a token with a ``read:runs`` scope).
        """
        statuses = [] if status is None else [status] if isinstance(status, str) else status
        if not isinstance(statuses, list):
            raise TypeError("status must be a RunStatus, a status name, or a list of them")
        filters = {
            "task": task, "status": [RunStatus(s).value for s in statuses],
            "tags": list(tags or []), "created_after": _epoch(created_after, "created_after"),
            "created_before": _epoch(created_before, "created_before"), "limit": limit,
            "cursor": cursor,
        }
        if task is not None and not isinstance(task, str):
            raise TypeError("task must be a task id")
        if cursor is not None and not isinstance(cursor, str):
            raise TypeError("cursor must be the string a previous page gave")
        found, nxt = await current_backend(client).list_runs(filters)
        return RunList(tuple(found), nxt)


def _epoch(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return float(value.timestamp())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be epoch seconds or a datetime")
    return float(value)


runs = _Runs()
