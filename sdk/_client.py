"""The client: SDK calls from a backend, over one websocket (or an in-process pair).

Theory of operation: :class:`Client` keeps one :class:`~transport.Connection` up. One task
reads frames and routes each by ``re`` to the :class:`_Inbox` of the request that asked for
it. Every request is written so it can be issued again on a new connection: reads resume at
the next index they have not delivered, producers resend the batch that was not acknowledged
(the engine drops what it already stored, by producer sequence number), ``send`` and
``trigger`` carry a client-chosen idempotency key. When the link breaks, every inbox is told,
the requests wait for the next connection, and the user sees nothing, unless the engine stays
unreachable longer than ``reconnect_timeout``: then calls fail with :class:`ConnectionError`.
"""

from __future__ import annotations

import collections
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio

from transport import (
    Ack, Append, Cancel, CancelRun, Chunks, Connection, ConnectionBroken, End, Error, Frame,
    Hello, PROTOCOL_VERSION, Read, Retrieve, RunInfo, Send, Subscribe, Trigger, Triggered,
    TransportError, Welcome, connect_websocket,
)

from ._errors import (
    OutsideRunError, RunwireError, StreamTimeoutError, UnauthorizedError, error_from_code,
)
from ._models import Run, RunHandle, TaskRunResult
from .runtime import Completion, bind_client, collapse_exception_groups, unbind_client

log = logging.getLogger("runwire.client")

Connector = Callable[[trio.Nursery], Awaitable[Connection]]

#: Chunks a client producer buffers before ``put`` waits.
PRODUCER_HIGH_WATER = 8192
#: Most chunks in one ``append`` frame.
APPEND_BATCH = 4096


class _Disconnected:
    """Put in every inbox when the connection breaks."""


DISCONNECTED = _Disconnected()


class _Inbox:
    """Frames for one request. ``put`` waits when the consumer is far behind (backpressure)."""

    def __init__(self, limit: int = 64) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._limit = limit
        self._ready = trio.Event()
        self._space = trio.Event()
        self.detached = False

    async def put(self, frame: Any) -> None:
        self._items.append(frame)
        self._ready.set()
        while len(self._items) > self._limit and not self.detached:
            self._space = trio.Event()
            await self._space.wait()

    def put_nowait(self, frame: Any) -> None:
        self._items.append(frame)
        self._ready.set()

    async def get(self) -> Any:
        while not self._items:
            self._ready = trio.Event()
            await self._ready.wait()
        frame = self._items.popleft()
        if len(self._items) <= self._limit:
            self._space.set()
        return frame

    def detach(self) -> None:
        self.detached = True
        self._space.set()


class Client:
    """A connection to an engine; use :func:`connect` or ``engine.connect()`` to get one.

    Args:
        connector: opens a new (not yet greeted) connection; called again to reconnect.
        token: the API key or a public access token.
        reconnect_timeout: seconds the engine may stay unreachable before calls fail.
    """

    def __init__(self, connector: Connector, token: str, *,
                 reconnect_timeout: float = 60.0) -> None:
        self._connector = connector
        self._token = token
        self.reconnect_timeout = reconnect_timeout
        self._nursery: trio.Nursery | None = None
        self._conn: Connection | None = None
        self._connected = trio.Event()
        self._fatal: BaseException | None = None
        self._inboxes: dict[int, _Inbox] = {}
        self._next_id = 0
        self.welcome: Welcome | None = None

    # --- connection ------------------------------------------------------------------------

    async def _open(self, nursery: trio.Nursery) -> Connection:
        conn = await self._connector(nursery)
        try:
            await conn.send(Hello(protocol=PROTOCOL_VERSION, token=self._token))
            frame = await conn.receive()
        except BaseException:
            await conn.aclose()
            raise
        if isinstance(frame, Error):
            await conn.aclose()
            raise error_from_code(frame.code, frame.message)
        assert isinstance(frame, Welcome)
        self.welcome = frame
        return conn

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection up until cancelled (started by :func:`connect`)."""
        assert self._nursery is not None
        conn = await self._open(self._nursery)
        task_status.started()
        while True:
            self._attach(conn)
            try:
                await self._read_loop(conn)
            except (ConnectionBroken, TransportError) as exc:
                log.info("connection lost (%s); reconnecting", exc)
            finally:
                self._detach()
                await conn.aclose()
            conn = await self._reconnect()

    def _attach(self, conn: Connection) -> None:
        self._conn = conn
        self._connected.set()

    def _detach(self) -> None:
        self._conn = None
        self._connected = trio.Event()
        for inbox in self._inboxes.values():
            inbox.put_nowait(DISCONNECTED)
            inbox.detach()

    async def _reconnect(self) -> Connection:
        assert self._nursery is not None
        deadline = trio.current_time() + self.reconnect_timeout
        delay = 0.05
        while True:
            try:
                return await self._open(self._nursery)
            except UnauthorizedError as exc:
                self._fail(exc)
                raise
            except (TransportError, OSError, RunwireError) as exc:
                if trio.current_time() + delay > deadline:
                    self._fail(ConnectionError(
                        f"engine unreachable for {self.reconnect_timeout:g} s: {exc}"))
                    await trio.sleep_forever()
                await trio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        self._connected.set()

    async def _read_loop(self, conn: Connection) -> None:
        while True:
            frame = await conn.receive()
            re = getattr(frame, "re", None)
            inbox = self._inboxes.get(re) if re is not None else None
            if inbox is not None:
                await inbox.put(frame)
            elif isinstance(frame, Error):
                log.warning("engine error without a request: %s %s", frame.code, frame.message)

    async def _wait_connected(self) -> Connection:
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._conn is not None:
                return self._conn
            await self._connected.wait()

    def _register(self, limit: int = 64) -> tuple[int, _Inbox]:
        self._next_id += 1
        inbox = _Inbox(limit)
        self._inboxes[self._next_id] = inbox
        return self._next_id, inbox

    async def _send(self, conn: Connection, frame: Frame) -> bool:
        """Send on ``conn``; ``False`` if the link broke (the caller waits and retries)."""
        try:
            await conn.send(frame)
            return True
        except TransportError:
            return False

    async def _call(self, make: Callable[[int], Frame]) -> Frame:
        """One request, one answer; issued again after a reconnect."""
        while True:
            conn = await self._wait_connected()
            rid, inbox = self._register(4)
            try:
                if not await self._send(conn, make(rid)):
                    continue
                frame = await inbox.get()
            finally:
                del self._inboxes[rid]
            if frame is DISCONNECTED:
                continue
            if isinstance(frame, Error):
                raise error_from_code(frame.code, frame.message)
            return frame

    async def _cancel_request(self, rid: int) -> None:
        conn = self._conn
        if conn is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self._send(conn, Cancel(id=rid))

    # --- Backend: streams -----------------------------------------------------------------

    def resolve_target(self, target: str) -> str:
        if not isinstance(target, str) or not target:
            raise TypeError("target must be 'self', 'parent', 'root' or a run id")
        if target in ("self", "parent", "root"):
            raise OutsideRunError(f"target={target!r} only means something inside a run; "
                                  "outside a run, pass the run id")
        return target

    def open_producer(self, run_id: str, key: str) -> _ClientProducer:
        return _ClientProducer(self, run_id, key)

    def spawn_producer(self, fn: Callable[[], Awaitable[None]]) -> Completion:
        done = Completion()

        async def job() -> None:
            try:
                await fn()
            except Exception as exc:
                done.set_error(exc)
            else:
                done.set_result()

        self.spawn_background(job)
        return done

    def spawn_background(self, fn: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is None:
            raise OutsideRunError("the client is closed")
        self._nursery.start_soon(fn)

    async def read(self, run_id: str, key: str, start: int,
                   timeout: float | None) -> AsyncIterator[list[Any]]:
        """Batches of chunks from ``start``; resumes at the next index after a reconnect."""
        nxt = start
        while True:
            conn = await self._wait_connected()
            rid, inbox = self._register()
            finished = False
            try:
                if not await self._send(conn, Read(id=rid, run=run_id, stream=key, from_=nxt,
                                                   timeout_s=timeout)):
                    continue
                while True:
                    frame = await inbox.get()
                    if frame is DISCONNECTED:
                        break
                    if isinstance(frame, Chunks):
                        items = frame.items
                        if frame.start < nxt:
                            items = items[nxt - frame.start:]
                        elif frame.start > nxt:
                            raise RunwireError(f"engine skipped chunks {nxt}..{frame.start - 1}")
                        if items:
                            nxt += len(items)
                            yield items
                    elif isinstance(frame, End):
                        finished = True
                        if frame.reason == "timeout":
                            raise StreamTimeoutError(
                                f"no chunk on stream {key!r} of run {run_id} for {timeout} s")
                        return
                    elif isinstance(frame, Error):
                        finished = True
                        raise error_from_code(frame.code, frame.message)
            finally:
                self._inboxes.pop(rid, None)
                if not finished:
                    await self._cancel_request(rid)

    async def send(self, run_id: str, key: str, data: Any,
                   idempotency_key: str | None = None) -> int:
        ikey = idempotency_key or uuid.uuid4().hex
        frame = await self._call(lambda rid: Send(id=rid, run=run_id, stream=key, data=data,
                                                  key=ikey))
        assert isinstance(frame, Ack)
        return frame.index if frame.index is not None else -1

    # --- Backend: tasks and runs ------------------------------------------------------------

    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any]) -> RunHandle:
        opts = dict(options)
        opts.setdefault("idempotency_key", f"auto:{uuid.uuid4().hex}")
        frame = await self._call(lambda rid: Trigger(id=rid, task=task_id, payload=payload,
                                                     options=opts))
        assert isinstance(frame, Triggered)
        return RunHandle(id=frame.run, public_access_token=frame.token)

    async def trigger_and_wait(self, task_id: str, payload: Any,
                               options: dict[str, Any]) -> TaskRunResult[Any]:
        handle = await self.trigger(task_id, payload, options)
        return await self.wait_for_run(handle.id)

    async def batch_trigger_and_wait(self, task_id: str, payloads: list[Any],
                                     options: dict[str, Any]) -> list[TaskRunResult[Any]]:
        handles = [await self.trigger(task_id, p, options) for p in payloads]
        results: list[TaskRunResult[Any] | None] = [None] * len(handles)

        async def one(i: int, run_id: str) -> None:
            results[i] = await self.wait_for_run(run_id)

        async with trio.open_nursery() as nursery:
            for i, handle in enumerate(handles):
                nursery.start_soon(one, i, handle.id)
        return [r for r in results if r is not None]

    async def wait_for_run(self, run_id: str) -> TaskRunResult[Any]:
        """Wait until the run is finished and return its result."""
        last: Run | None = None
        async for run in self.subscribe(run_id):
            last = run
        assert last is not None and last.is_finished
        return TaskRunResult.from_run(last)

    async def retrieve(self, run_id: str) -> Run:
        frame = await self._call(lambda rid: Retrieve(id=rid, run=run_id))
        assert isinstance(frame, RunInfo)
        return Run.from_wire(frame.run)

    async def cancel_run(self, run_id: str) -> None:
        await self._call(lambda rid: CancelRun(id=rid, run=run_id))

    async def subscribe(self, run_id: str) -> AsyncIterator[Run]:
        """Run snapshots until the run is finished; re-subscribes after a reconnect."""
        while True:
            conn = await self._wait_connected()
            rid, inbox = self._register()
            finished = False
            try:
                if not await self._send(conn, Subscribe(id=rid, run=run_id)):
                    continue
                while True:
                    frame = await inbox.get()
                    if frame is DISCONNECTED:
                        break
                    if isinstance(frame, RunInfo):
                        yield Run.from_wire(frame.run)
                    elif isinstance(frame, End):
                        finished = True
                        return
                    elif isinstance(frame, Error):
                        finished = True
                        raise error_from_code(frame.code, frame.message)
            finally:
                self._inboxes.pop(rid, None)
                if not finished:
                    await self._cancel_request(rid)


class _ClientProducer:
    """A producer outside the engine: numbered batches, resent until acknowledged."""

    def __init__(self, client: Client, run_id: str, key: str) -> None:
        self._client = client
        self._run = run_id
        self._key = key
        self.id = uuid.uuid4().hex
        self._buffer: list[Any] = []
        self._base = 0  # sequence number of _buffer[0]
        self._acked = 0
        self._closed = False
        self._error: BaseException | None = None
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._started = False
        self._puts = 0

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._client.spawn_background(self._sender)

    def put_nowait(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._buffer.append(item)
        self._wake.set()
        self._start()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)
        self._puts += 1
        while len(self._buffer) >= PRODUCER_HIGH_WATER and self._error is None:
            await self._wait_progress()
        if self._puts % 256 == 0:
            await trio.lowlevel.checkpoint()

    async def _wait_progress(self) -> None:
        self._progress = trio.Event()
        await self._progress.wait()

    async def flush(self) -> None:
        target = self._base + len(self._buffer)
        while self._acked < target and self._error is None:
            await self._wait_progress()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def _sender(self) -> None:
        try:
            while True:
                if not self._buffer:
                    if self._closed:
                        return
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                batch = self._buffer[:APPEND_BATCH]
                base = self._base
                frame = await self._client._call(
                    lambda rid: Append(id=rid, run=self._run, stream=self._key,
                                       producer=self.id, seq=base, items=batch))
                assert isinstance(frame, Ack) and frame.next_seq is not None
                done = frame.next_seq - self._base
                del self._buffer[:done]
                self._base = self._acked = frame.next_seq
                self._progress.set()
        except (RunwireError, ConnectionError) as exc:
            self._error = exc
            self._progress.set()


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"engine URL must start with ws:// or wss://, not {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@asynccontextmanager
async def open_client(connector: Connector, token: str, *,
                      reconnect_timeout: float = 60.0) -> AsyncIterator[Client]:
    """Run a :class:`Client` over ``connector`` for the duration of the block."""
    client = Client(connector, token, reconnect_timeout=reconnect_timeout)
    with collapse_exception_groups():
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            await nursery.start(client.run)
            bound = bind_client(client)
            try:
                yield client
            finally:
                unbind_client(bound)
                nursery.cancel_scope.cancel()
                client._nursery = None


@asynccontextmanager
async def connect(url: str, api_key: str | None = None, *, access_token: str | None = None,
                  reconnect_timeout: float = 60.0,
                  max_message_size: int = 64 * 1024 * 1024) -> AsyncIterator[Client]:
    """Connect to an engine at ``url`` with an API key or a public access token.

    Inside the block, SDK calls (``tasks.trigger``, ``streams.read``, ``runs.retrieve`` ...)
    go to this engine.

    Raises:
        UnauthorizedError: the credential was refused.
        ConnectionError: the engine could not be reached.
    """
    token = api_key if api_key is not None else access_token
    if not isinstance(token, str) or not token:
        raise ValueError("connect() needs api_key=... or access_token=...")
    target = _ws_url(url)

    async def connector(nursery: trio.Nursery) -> Connection:
        return await connect_websocket(nursery, target, max_message_size=max_message_size)

    try:
        async with open_client(connector, token, reconnect_timeout=reconnect_timeout) as client:
            yield client
    except ConnectionBroken as exc:
        raise ConnectionError(str(exc)) from exc
