"""The Engine: supervisor of run actors, owner of the store, the front door and the sweeper.

Theory of operation: ``open_engine`` opens one nursery. In it live every :class:`RunActor`
(each started with ``nursery.start``), every connection's session, the websocket server
(when a host or port is given) and the retention sweeper. The engine itself keeps no run
state beyond ``actors`` (the runs executing here); everything else is asked of the actor or,
for runs that are not live, of the Store.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from runwire import (
    BadFrameError,
    InvalidPayloadError, NotFoundError, PayloadTooLargeError, RunFinishedError, Task,
    UnknownTaskError,
)
from runwire._client import Client, open_client
from runwire.runtime import collapse_exception_groups
from runwire.transport import Connection, memory_connection_pair

from ._actor import ExternalAppend, RunActor, SendInput
from ._auth import Auth, generate_api_key
from ._backend import RunBackend
from ._limits import RateLimiter
from ._records import RunRecord, new_run_id
from ._store import Batch, Store, open_store
from ._streams import PRODUCER_HIGH_WATER, OutputStream, cap_bytes

log = logging.getLogger("runwire.engine")

MiB = 1024 * 1024
DAY = 86400.0


@attrs.frozen
class Limits:
    """Every limit the engine enforces (all configurable through ``open_engine(limits=...)``).

    ``docs/security.md`` lists each with its default and the error a client gets. The rates
    are token buckets per credential: ``*_rate`` requests per second on average, bursts of
    up to ``*_burst``; a rate of ``None`` turns that limit off.
    """

    max_stream_bytes: int = 300 * MiB
    max_record_bytes: int = 1 * MiB
    max_chunk_bytes: int = 1 * MiB
    max_payload_bytes: int = 3 * MiB
    max_message_bytes: int = 16 * MiB
    frame_items: int = 1024
    frame_bytes: int = 1 * MiB
    live_tail: int = PRODUCER_HIGH_WATER  # >= it, so live readers stay in memory
    mailbox_size: int = 1024
    retention: float = 28 * DAY
    sweep_interval: float = 3600.0
    max_connections: int = 1024
    max_requests_per_connection: int = 1024
    handshake_timeout: float = 10.0
    trigger_rate: float | None = 100.0
    trigger_burst: int = 1000
    send_rate: float | None = 1000.0
    send_burst: int = 10000
    rate_limit_api_key: bool = False
    max_token_lifetime: float = 30 * DAY
    max_key_chars: int = 256


class ReadTimeout(Exception):
    """No chunk arrived within the read's timeout."""


class Reader:
    """One read of one stream: batches of JSON chunks from ``next``, until the stream ends."""

    def __init__(self, engine: Engine, run_id: str, key: str, start: int,
                 stream: OutputStream) -> None:
        self.engine = engine
        self.run_id = run_id
        self.key = key
        self.next = start
        self.stream = stream
        #: parked at the live tail, waiting for chunks (a pusher may hand them over meanwhile)
        self.waiting = False

    async def next_batch(self, timeout: float | None) -> list[bytes] | None:
        """The next chunks (at least one), ``None`` once the stream has ended.

        Raises:
            ReadTimeout: nothing new for ``timeout`` seconds.
        """
        limits = self.engine.limits
        while True:
            stream = self.stream
            if self.next < stream.length:
                items = self.tail()
                if items is None:  # behind the live tail: the store has it
                    items = cap_bytes(await self.engine.store.read_chunks(
                        self.run_id, self.key, self.next, limits.frame_items), limits.frame_bytes)
                if items:
                    self.next += len(items)
                    return items
            if stream.ended:
                return None
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                self.waiting = True
                try:
                    await stream.wait_beyond(self.next)
                finally:
                    self.waiting = False
                continue  # woken (chunks, maybe already pushed, or the end): the timer restarts
            raise ReadTimeout()

    def tail(self) -> list[bytes] | None:
        """A frame's worth of chunks from ``next``, if the live tail still holds them."""
        limits = self.engine.limits
        return self.stream.tail(self.next, limits.frame_items, limits.frame_bytes)


class Engine:
    """A run engine. Make one with :func:`open_engine`."""

    def __init__(self, tasks: Iterable[Task[Any, Any]], store: Store, api_key: str, *,
                 drain_timeout: float = 60.0, limits: Limits | None = None) -> None:
        self.tasks: dict[str, Task[Any, Any]] = {}
        for task in tasks:
            if not isinstance(task, Task):
                raise TypeError(f"tasks must be Task objects made with @task, not {task!r}")
            if task.id in self.tasks and self.tasks[task.id] is not task:
                raise ValueError(f"two different tasks share the id {task.id!r}")
            self.tasks[task.id] = task
        if not isinstance(drain_timeout, (int, float)) or drain_timeout < 0:
            raise ValueError("drain_timeout must be a number of seconds >= 0")
        self.store = store
        self.api_key = api_key
        self.auth = Auth(api_key, clock=self.clock)
        self.rate_limiter = RateLimiter()
        self.drain_timeout = float(drain_timeout)
        self.limits = limits or Limits()
        self.actors: dict[str, RunActor] = {}
        self.url: str | None = None
        self.port: int | None = None
        self._queues: dict[str, trio.Semaphore] = {}
        self._triggering: dict[tuple[str, str], trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._wall0 = time.time()
        self._trio0 = 0.0
        self.connections = 0

    # --- time --------------------------------------------------------------------------------

    def clock(self) -> float:
        """Wall-clock seconds, advanced by trio's clock (so a mock clock moves it in tests)."""
        return self._wall0 + (trio.current_time() - self._trio0)

    # --- queues ----------------------------------------------------------------------------

    def queue_slots(self, task: Task[Any, Any] | None) -> trio.Semaphore | None:
        """The semaphore of the task's queue, or ``None`` when it has no limit."""
        if task is None or task.queue is None or task.queue.concurrency_limit is None:
            return None
        slots = self._queues.get(task.queue.name)
        if slots is None:
            slots = self._queues[task.queue.name] = trio.Semaphore(task.queue.concurrency_limit)
        return slots

    # --- runs ------------------------------------------------------------------------------

    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any] | None = None,
                      parent: RunActor | None = None) -> RunRecord:
        """Start a run of ``task_id``; returns once its actor is running.

        Raises:
            UnknownTaskError, InvalidPayloadError, PayloadTooLargeError.
        """
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise UnknownTaskError(f"no task is registered with id {task_id!r}")
        opts = _TriggerOptions.parse(options or {})
        try:
            size = len(orjson.dumps(payload))
        except TypeError as exc:
            raise InvalidPayloadError(f"payload is not JSON: {exc}") from None
        if size > self.limits.max_payload_bytes:
            raise PayloadTooLargeError(f"payload of {size} bytes is over the "
                                       f"{self.limits.max_payload_bytes}-byte limit")
        task.validate(payload)
        ikey = (task_id, opts.idempotency_key) if opts.idempotency_key else None
        if ikey:  # claim the key before any await, so two triggers with it never both start
            while ikey in self._triggering:
                await self._triggering[ikey].wait()
            self._triggering[ikey] = trio.Event()
        try:
            if ikey:
                existing = await self._existing_run(*ikey)
                if existing is not None:
                    return existing
            record = RunRecord(
                id=new_run_id(), task_id=task_id, payload=payload, tags=list(opts.tags),
                metadata=dict(opts.metadata), created_at=self.clock(),
                parent_id=parent.id if parent else None,
                root_id=(parent.record.root_id or parent.id) if parent else None,
                idempotency_key=opts.idempotency_key)
            # a run is stored and started, or neither: cancelled in between (a client gone),
            # it would stay QUEUED forever, and a retry with its key would get that dead run
            with trio.CancelScope(shield=True):
                await self.store.commit(Batch(runs=[record.to_store()]))
                await self._start_actor(record, task)
            return record
        finally:
            if ikey:
                self._triggering.pop(ikey).set()

    async def _existing_run(self, task_id: str, key: str) -> RunRecord | None:
        run_id = await self.store.find_run(task_id, key)
        return await self.get_record(run_id) if run_id else None

    async def _start_actor(self, record: RunRecord, task: Task[Any, Any] | None,
                           prepare: Any = None) -> RunActor:
        assert self._nursery is not None, "the engine is not running"
        actor = RunActor(self, record, task)
        actor.backend = RunBackend(self, actor)
        if prepare is not None:
            prepare(actor)
        self.actors[record.id] = actor
        await self._nursery.start(actor.run)
        return actor

    def _actor_done(self, actor: RunActor) -> None:
        if self.actors.get(actor.id) is actor:
            del self.actors[actor.id]

    async def get_record(self, run_id: str) -> RunRecord:
        """The run, live or stored.

        Raises:
            NotFoundError: no such run (or it expired).
        """
        actor = self.actors.get(run_id)
        if actor is not None:
            return actor.record
        raw = await self.store.get_run(run_id) if isinstance(run_id, str) else None
        if raw is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return RunRecord.from_wire(raw)

    def issue_token(self, scopes: Any, expires_in: float) -> tuple[str, float]:
        """A public access token for ``scopes``, valid ``expires_in`` seconds; and its expiry.

        Raises:
            BadFrameError: a malformed scope, or a lifetime outside ``(0, max_token_lifetime]``.
        """
        limit = self.limits.max_token_lifetime
        if not (isinstance(expires_in, (int, float)) and math.isfinite(expires_in)
                and 0 < expires_in <= limit):
            raise BadFrameError(f"'expires_in' must be a number of seconds in (0, {limit:g}]")
        if not isinstance(scopes, list):  # create_token would accept any iterable
            raise BadFrameError("scopes must be a list such as ['read:runs:<run id>']")
        try:
            return self.auth.issue(scopes, expires_in)
        except ValueError as exc:  # a malformed scope
            raise BadFrameError(str(exc)) from None

    async def missing_run_error(self, run_id: str) -> Exception:
        """The error for a run that is not live here: finished, or unknown."""
        try:
            record = await self.get_record(run_id)
        except NotFoundError as exc:
            return exc
        return RunFinishedError(f"run {run_id} has finished ({record.status.value})")

    async def _live_actor(self, run_id: str) -> RunActor:
        actor = self.actors.get(run_id)
        if actor is None:
            raise await self.missing_run_error(run_id)
        return actor

    async def send_input(self, run_id: str, key: str, data: Any, ikey: str | None) -> int:
        """Store one input record and deliver it; returns its index."""
        try:
            actor = await self._live_actor(run_id)
            return await actor.submit(SendInput(key, data, ikey))
        except RunFinishedError:
            # a retried send whose first attempt was stored (maybe it is what ended the
            # run) gets that record's index, as it would from the live actor
            index = await self._stored_input(run_id, key, ikey) if ikey else None
            if index is None:
                raise
            return index

    async def _stored_input(self, run_id: str, key: str, ikey: str) -> int | None:
        for record in (await self.store.records(run_id)).get(key, []):
            if record.idempotency_key == ikey:
                return record.index
        return None

    async def append(self, run_id: str, key: str, producer: str, seq: int,
                     items: list[Any]) -> int:
        """Append a client producer's batch; returns the producer's next sequence number."""
        actor = await self._live_actor(run_id)
        return await actor.submit(ExternalAppend(key, producer, seq, items))

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a live run; a finished run answers ``run_finished``."""
        actor = await self._live_actor(run_id)
        actor.cancel()
        await actor.finished.wait()

    async def wait_finished(self, run_id: str) -> RunRecord:
        """Wait until the run has finished; its final record."""
        actor = self.actors.get(run_id)
        if actor is not None:
            await actor.finished.wait()
            return actor.record
        return await self.get_record(run_id)

    async def subscribe(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """Snapshots of the run's record on every change, ending with the final one."""
        actor = self.actors.get(run_id)
        if actor is None:
            yield (await self.get_record(run_id)).to_wire()
            return
        seen = -1
        while True:
            await actor.wait_change(seen)
            seen = actor.version
            final = actor.finished.is_set()  # of this snapshot: it may finish while we yield
            yield actor.record.to_wire()
            if final:
                return

    async def open_reader(self, run_id: str, key: str, start: int) -> Reader:
        """A reader of stream ``key`` of ``run_id`` from index ``start``.

        Raises:
            NotFoundError: no such run.
        """
        actor = self.actors.get(run_id)
        if actor is not None:
            return Reader(self, run_id, key, start, actor.stream(key))
        record = await self.get_record(run_id)
        state = (await self.store.streams(run_id)).get(key)
        stream = OutputStream(key, length=state.length if state else 0,
                              nbytes=state.nbytes if state else 0,
                              ended=record.status.is_final or bool(state and state.ended),
                              tail_limit=0)
        return Reader(self, run_id, key, start, stream)

    # --- lifetime ------------------------------------------------------------------------

    async def run(self, *, host: str | None, port: int | None,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: recovery, sweeper, and the websocket server if asked."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._trio0 = trio.current_time()
            await self._recover()
            nursery.start_soon(self._sweep_loop)
            if host is not None or port is not None:
                from ._server import serve

                await nursery.start(serve, self, host or "127.0.0.1", port or 0)
            task_status.started()

    async def _recover(self) -> None:
        """Runs that were executing when the engine stopped: retry or mark ``CRASHED``."""
        from ._recovery import recover

        await recover(self)

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(self.limits.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # a full disk or a locked file must not stop the engine
                log.exception("retention sweep failed; it will be tried again")

    async def sweep(self) -> int:
        """Delete runs that finished more than ``retention`` seconds ago; how many."""
        removed = await self.store.delete_finished_before(self.clock() - self.limits.retention)
        if removed:
            log.info("retention: deleted %d finished runs", removed)
        return removed

    async def serve_connection(self, conn: Connection) -> None:
        """Run one session on a connection (websocket or in-process)."""
        from ._session import Session

        await Session(self, conn).serve()

    @asynccontextmanager
    async def connect(self, token: str | None = None) -> AsyncIterator[Client]:
        """An in-process client: the same SDK calls, over an in-memory connection."""
        assert self._nursery is not None, "the engine is not running"
        nursery = self._nursery

        async def connector(_: trio.Nursery) -> Connection:
            client_end, engine_end = memory_connection_pair()
            nursery.start_soon(self.serve_connection, engine_end)
            return client_end

        async with open_client(connector, token or self.api_key) as client:
            yield client


@attrs.frozen
class _TriggerOptions:
    tags: tuple[str, ...] = ()
    idempotency_key: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> _TriggerOptions:
        if not isinstance(options, dict):
            raise InvalidPayloadError("trigger options must be an object")
        known = {"tags", "idempotency_key", "metadata"}
        unknown = set(options) - known
        if unknown:
            raise InvalidPayloadError(f"unknown trigger options: {sorted(unknown)}")
        tags = options.get("tags") or []
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidPayloadError("options.tags must be a list of strings")
        key = options.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not key or len(key) > 256):
            raise InvalidPayloadError("options.idempotency_key must be a string of 1-256 chars")
        meta = options.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InvalidPayloadError("options.metadata must be an object")
        return cls(tuple(tags), key, meta)


@asynccontextmanager
async def open_engine(tasks: Iterable[Task[Any, Any]] = (), *, store: str | Store = "memory://",
                      api_key: str | None = None, host: str | None = None,
                      port: int | None = None, drain_timeout: float = 60.0,
                      limits: Limits | None = None) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the block.

    Args:
        tasks: the tasks it can run.
        store: ``memory://``, ``sqlite:///path``, or a :class:`Store`.
        api_key: the secret key; made (and logged once) when not given.
        host, port: serve websockets there (``port=0`` picks a free port; ``eng.url``);
            with neither, only in-process clients (``eng.connect()``) reach it.
        drain_timeout: seconds a finished task's producers get to finish.
        limits: sizes and counts the engine enforces.
    """
    if api_key is None:
        api_key = generate_api_key()
        log.warning("no API key given; generated one for this engine: %s", api_key)
    backing = open_store(store) if isinstance(store, str) else store
    engine = Engine(tasks, backing, api_key, drain_timeout=drain_timeout, limits=limits)
    try:
        with collapse_exception_groups():
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: engine.run(
                    host=host, port=port, task_status=task_status))
                try:
                    yield engine
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await backing.aclose()

