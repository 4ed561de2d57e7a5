"""The client: SDK calls from a backend, over one websocket (or an in-process pair).

Theory of operation: :class:`Client` keeps one connection (a :class:`_Link`) up. One task
reads frames and routes each by ``re`` to the :class:`_Inbox` of the request that asked for
it; while a consumer waits on an empty inbox it takes that task's place and receives itself,
so its own frame reaches it without a task switch (:class:`_Receiver`; under trio only, and
under asyncio the task yields after routing each frame instead). Routing never waits:
an inbox is bounded by its own policy, so a slow consumer of one request cannot stall the
others (a reader whose loop body awaits ``send`` on the same client would otherwise
deadlock). A read whose consumer falls behind *pauses*: the client cancels it on the engine,
drops what still arrives for it, and once the consumer has caught up reads again from the
next index, which the engine serves from its store. A subscription that falls behind keeps
only the newest run snapshot.

Every request is written so it can be issued again on a new connection: reads resume at the
next index they have not delivered, producers resend the batch that was not acknowledged
(the engine drops what it already stored, by producer sequence number), ``send`` and
``trigger`` carry an idempotency key (client-chosen when the caller gives none), and a
re-issued ``cancel_run`` that finds the run finished counts as done. ``_call`` refuses to
re-issue a request that carries no key. When the link breaks, every inbox is told, the
requests wait for the next connection, and the user sees nothing. Reconnecting starts at
once after a healthy connection (one that answered something, or lived a while), then
backs off exponentially with jitter; each attempt is bounded in time.

If the engine stays unreachable longer than ``reconnect_timeout``, waiting calls fail with
:class:`ConnectionError`, and so do new calls while the engine is down; the client keeps
trying in the background and works again once the engine is back. A refused credential
(``unauthorized``) on reconnect is final: calls fail with :class:`UnauthorizedError`.

Dead links are noticed (issue 19): while a request is open, a link that received nothing for
``ping_interval`` is pinged, and one whose pong does not come within ``ping_timeout`` is
dropped and made again as if it had broken (a proxy that stops forwarding, a stopped engine,
a cable pulled keep the socket open but answer nothing). Pongs answered on a link that
carries nothing else space the next pings out (twice as far each time, up to
``PING_SPACING_MAX``), and a client with nothing open does not ping at all: the engine
closes a connection idle for its ``idle_timeout`` (close code 1001), and the client then
reconnects only when a call needs the link. Reads keep their own timer: a read with a
``timeout_in_seconds`` raises :class:`StreamTimeoutError` when no chunk came for that long,
whatever the link does meanwhile (the engine's timer ends it too, but cannot when the link is
silent). Single-answer calls (``retrieve``, ``send``, ``trigger`` ...) may have a deadline
(``request_timeout``; off by default: the pings and ``reconnect_timeout`` already bound how
long a call waits on a dead link).

Every task the client starts lives in the nursery of ``connect()`` (a connection's helper
tasks in a nursery of their own, cancelled with it), so nothing outlives the block; on exit
the connection is closed gracefully first, then everything left is cancelled.
"""

from __future__ import annotations

import collections
import logging
import random
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import attrs
import orjson
import sniffio
import trio

from runwire.transport import (
    PROTOCOL_VERSION,
    Ack,
    Append,
    Cancel,
    CancelRun,
    Chunks,
    AsyncioConnection,
    CompleteWaitpoint,
    CreateWaitpoint,
    Connection,
    ConnectionBroken,
    End,
    Error,
    Frame,
    Hello,
    ListRuns,
    Read,
    Retrieve,
    RetrieveWaitpoint,
    RunInfo,
    RunList,
    Send,
    Subscribe,
    TransportError,
    Trigger,
    Triggered,
    WaitpointInfo,
    Welcome,
    connect_websocket,
    connect_websocket_asyncio,
)

from ._errors import (
    InternalError,
    OutsideRunError,
    PayloadTooLargeError,
    RunFinishedError,
    RunwireError,
    StreamTimeoutError,
    UnauthorizedError,
    error_from_code,
)
from ._convert import json_bytes, json_bytes_within
from ._models import Run, RunHandle, TaskRunResult
from .runtime import Completion, bind_client, collapse_exception_groups, unbind_client

log = logging.getLogger("runwire.client")

#: What the client sends and receives frames on: a trio ``Connection`` (trio-websocket or an
#: in-memory pair) under trio, an ``AsyncioConnection`` (websockets) under asyncio.
ClientConnection = Union[Connection, AsyncioConnection]
_T = TypeVar("_T")
Connector = Callable[[anyio.abc.TaskGroup], Awaitable[ClientConnection]]

#: Chunks a client producer buffers before ``put`` waits.
PRODUCER_HIGH_WATER = 8192
#: Most chunks in one ``append`` frame.
APPEND_BATCH = 4096
#: Most bytes of chunks in one ``append`` frame (fewer if the engine's messages are smaller).
APPEND_BATCH_BYTES = 1024 * 1024
#: Room left in a message for the frame around a payload.
FRAME_OVERHEAD = 4096
#: Chunks a read buffers for a consumer that is behind before it pauses.
READ_BUFFER = 8192
#: Snapshots a subscription buffers before it keeps only the newest.
SUBSCRIBE_BUFFER = 16
#: First and largest pause between reconnect attempts, in seconds (before jitter).
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
#: Seconds after which a connection counts as healthy even if it answered nothing.
STABLE_LINK = 5.0
#: Seconds to close a connection gracefully or to deliver a ``cancel``.
CLOSE_TIMEOUT = 1.0
#: Seconds without a frame before the client pings, and for the pong (``connect`` options).
PING_INTERVAL = 3.0
PING_TIMEOUT = 3.0
#: Longest pause between pings on a link that carries nothing but pongs, in seconds.
PING_SPACING_MAX = 60.0
#: The close code of an engine closing an idle connection (``Limits.idle_timeout``).
CLOSE_IDLE = 1001


class _Signal:
    """A marker put in an inbox: ``DISCONNECTED`` or ``PAUSED``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The connection broke; the request is issued again on the next one.
DISCONNECTED = _Signal("DISCONNECTED")
#: The read's consumer fell behind; the read is issued again from the next index.
PAUSED = _Signal("PAUSED")


class _Event(Protocol):
    """What the client needs of an event: ``anyio.Event``, or ``trio.Event`` under trio."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> None: ...


#: Makes the events of requests and of the receiver hand-off. Under trio the client uses
#: ``trio.Event`` itself: ``anyio.Event()`` wraps one, and making it (finding the backend
#: through sniffio) took ~6x as long (3.7 against 0.6 us), several times per request.
EventFactory = Callable[[], _Event]


class _Inbox:
    """Frames for one request. ``put`` never waits; this base class keeps every frame.

    ``lead`` (set by the client) lets ``get`` receive frames itself while the inbox is
    empty, instead of waiting to be woken (see :class:`_Receiver`).
    """

    def __init__(self, new_event: EventFactory = anyio.Event) -> None:
        self._new_event = new_event
        self._items: collections.deque[Frame | _Signal] = collections.deque()
        self._ready = new_event()
        self.lead: Callable[[_Inbox], Awaitable[bool]] | None = None

    @property
    def pending(self) -> bool:
        """Something to get."""
        return bool(self._items)

    def items(self) -> tuple[Frame | _Signal, ...]:
        """What waits to be got."""
        return tuple(self._items)

    def put(self, frame: Frame) -> bool:
        """Keep ``frame``; ``True`` asks the router to cancel the request on the engine."""
        self.append(frame)
        return False

    def append(self, item: Frame | _Signal) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Frame | _Signal:
        while not self._items:
            self._ready = self._new_event()
            if self.lead is None or not await self.lead(self):
                await self._ready.wait()
        return self._items.popleft()


class _ReadInbox(_Inbox):
    """A read's inbox: past ``limit`` buffered chunks it pauses and drops what follows."""

    def __init__(self, limit: int = READ_BUFFER, new_event: EventFactory = anyio.Event) -> None:
        super().__init__(new_event)
        self.limit = limit
        self.buffered = 0
        self.paused = False

    def put(self, frame: Frame) -> bool:
        if self.paused:
            return False
        if isinstance(frame, Chunks):
            if self.buffered and self.buffered + len(frame.items) > self.limit:
                self.paused = True
                self.append(PAUSED)
                return True
            self.buffered += len(frame.items)
        self.append(frame)
        return False

    async def get(self) -> Frame | _Signal:
        frame = await super().get()
        if isinstance(frame, Chunks):
            self.buffered -= len(frame.items)
        return frame


class _RunInbox(_Inbox):
    """A subscription's inbox: past ``limit`` snapshots, a new one replaces the newest."""

    def __init__(self, limit: int = SUBSCRIBE_BUFFER,
                 new_event: EventFactory = anyio.Event) -> None:
        super().__init__(new_event)
        self.limit = limit

    def put(self, frame: Frame) -> bool:
        items = self._items
        if isinstance(frame, RunInfo) and len(items) >= self.limit \
                and isinstance(items[-1], RunInfo):
            items[-1] = frame  # the engine coalesces snapshots too: the newest one wins
            return False
        return super().put(frame)


class _Receiver:
    """Who takes a link's frames off its connection: the link's serve task, or a consumer.

    Routing a frame to a waiting consumer wakes it one scheduler pass later. So a consumer
    whose inbox is empty takes over (:meth:`lead`): it receives and routes frames itself
    until one of them is its own, which it then has without a task switch, and gives the
    connection back. Only one task receives at a time, so frames are routed in the order
    they came: the consumer asks the serve task to stop receiving (cancelling that receive
    loses nothing: a channel's receive either got its message or did not) and waits until
    it stood aside, after routing whatever it had already got.
    """

    def __init__(self, conn: ClientConnection, leads: bool = True) -> None:
        self.conn = conn
        self.leads = leads  # consumers may lead (under trio only; else serve always receives)
        new_event: EventFactory = trio.Event if leads else anyio.Event
        self._new_event = new_event
        self.leader: _Inbox | None = None
        self.error: Exception | None = None  # what a leader's receive raised, for serve
        self.closed = False
        self._scope: trio.CancelScope | None = None  # the serve task's receive (trio only)
        self._aside = new_event()  # the serve task stood aside for the leader
        self._back = new_event()  # the leader gave the connection back

    async def serve_receive(self) -> Frame | None:
        """The serve task's next frame; ``None`` after standing aside for a leader.

        Raises:
            Exception: what the connection raised (to the leader, if it was receiving).
        """
        if self.error is not None:
            raise self.error
        if self.leader is not None:
            self._aside.set()
            await self._back.wait()
            return None
        if not self.leads:  # nobody cancels this receive: no scope to pay for
            return await self.conn.receive()
        with trio.CancelScope() as self._scope:  # leads only under trio: no wrapper needed
            try:
                return await self.conn.receive()
            finally:
                self._scope = None
        return None  # asked to stand aside (only lead() cancels this scope)

    async def lead(self, inbox: _Inbox, route: Callable[[Frame], None]) -> bool:
        """Receive and route frames until ``inbox`` has one; ``False`` if another task
        receives (or the link is gone), and the caller should wait to be woken instead."""
        if self.leader is not None or self.closed or self.error is not None:
            return False
        self.leader, self._aside = inbox, self._new_event()
        try:
            if self._scope is not None:
                self._scope.cancel()
            await self._aside.wait()
            while not inbox.pending and not self.closed:
                try:
                    frame = await self.conn.receive()
                except Exception as exc:  # noqa: BLE001 - the serve task handles it, as ever
                    self.error = exc
                    break
                route(frame)
        finally:
            self.leader = None
            self._back.set()
            self._back = self._new_event()
        return True

    def close(self) -> None:
        """The serve task is done: nobody receives on this connection any more."""
        self.closed = True
        self._aside.set()


class _Link:
    """One connection, the nursery of its helper tasks, and whether it is gone."""

    def __init__(self, conn: ClientConnection, nursery: anyio.abc.TaskGroup,
                 leads: bool = True) -> None:
        self.conn = conn
        self.receiver = _Receiver(conn, leads)
        self.nursery = nursery
        self.gone = anyio.Event()
        self.answered = False
        self.closed_idle = False  # the engine closed it for idling (no reconnect until needed)
        self.opened_at = anyio.current_time()
        self._closing = False
        self._closed = anyio.Event()

    @property
    def healthy(self) -> bool:
        """Did it answer a request, or live long? (A link that breaks before it answers
        anything may be broken by a request; reconnecting at once would loop.)"""
        return self.answered or anyio.current_time() - self.opened_at >= STABLE_LINK

    async def close(self) -> None:
        """Close gracefully (bounded), then stop the connection's helper tasks.

        A second caller waits for the first: the helper tasks must live until the close
        handshake is over, or it would wait for a reply nobody reads.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self.conn.aclose()
        finally:  # whatever happened, the helper tasks stop and a second caller is let go
            self.nursery.cancel_scope.cancel()
            self._closed.set()


async def _nursery_task(*, task_status: anyio.abc.TaskStatus[anyio.abc.TaskGroup] =
                        anyio.TASK_STATUS_IGNORED) -> None:
    """Hold a task group open until it is cancelled (a connection's helper tasks live in it)."""
    async with anyio.create_task_group() as nursery:
        task_status.started(nursery)
        await anyio.sleep_forever()


@attrs.frozen
class ClientStatistics:
    """What a client holds now.

    Attributes:
        open_requests: requests waiting for their answer or their end (reads included).
        buffered_chunks: chunks received for reads whose consumers have not taken them yet.
        background_tasks: the client's own tasks (the connection's, producers' flushes).
    """

    open_requests: int
    buffered_chunks: int
    background_tasks: int


class Client:
    """A connection to an engine; use :func:`connect` or ``engine.connect()`` to get one.

    Args:
        connector: opens a new (not yet greeted) connection, with its helper tasks in the
            nursery it is given; called again to reconnect.
        token: the API key or a public access token.
        reconnect_timeout: seconds the engine may stay unreachable before calls fail.
        connect_timeout: seconds one connection attempt (up to ``welcome``) may take.
        producer_buffer: chunks a producer (``pipe``, ``append``, ``writer`` with
            ``target=``) buffers before it waits for the engine's acknowledgements.
        ping_interval: seconds without a frame from the engine, while a request is open,
            before the client pings it (``None``: never).
        ping_timeout: seconds a pong may take; then the link counts as dead and is made again.
        request_timeout: seconds a single-answer call may wait for its answer, reconnects
            included, before it raises :class:`TimeoutError` (``None``: no deadline).

    Attributes:
        random: where the jitter of reconnect pauses comes from (seed it to replay one).
        welcome: the engine's ``welcome`` on the current (or last) connection.
    """

    def __init__(self, connector: Connector, token: str, *, reconnect_timeout: float = 60.0,
                 connect_timeout: float = 10.0,
                 producer_buffer: int = PRODUCER_HIGH_WATER,
                 ping_interval: float | None = PING_INTERVAL,
                 ping_timeout: float = PING_TIMEOUT,
                 request_timeout: float | None = None) -> None:
        if not isinstance(reconnect_timeout, (int, float)) or reconnect_timeout < 0:
            raise ValueError("reconnect_timeout must be a number of seconds >= 0")
        for name, value, optional in (("ping_interval", ping_interval, True),
                                      ("ping_timeout", ping_timeout, False),
                                      ("request_timeout", request_timeout, True)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds > 0"
                                 + (" or None" if optional else ""))
        self.ping_interval = None if ping_interval is None else float(ping_interval)
        self.ping_timeout = float(ping_timeout)
        self.request_timeout = None if request_timeout is None else float(request_timeout)
        if isinstance(producer_buffer, bool) or not isinstance(producer_buffer, int) \
                or producer_buffer < 1:
            raise ValueError("producer_buffer must be a whole number of chunks >= 1")
        self.producer_buffer = producer_buffer
        self._connector = connector
        self._token = token
        self.reconnect_timeout = float(reconnect_timeout)
        self.connect_timeout = float(connect_timeout)
        self.random = random.Random()
        self._nursery: anyio.abc.TaskGroup | None = None
        self._tasks = 0  # tasks running in _nursery (anyio's task groups do not count them)
        # Consumers take over receiving (_Receiver) under trio only: there a cancel is cheap;
        # under asyncio cancelling the serve task's receive costs more than waking a waiter
        self._leads = sniffio.current_async_library() == "trio"
        self._new_event: EventFactory = trio.Event if self._leads else anyio.Event
        self._link: _Link | None = None
        self._up = anyio.Event()
        self._delay = BACKOFF_FIRST
        self._fatal: tuple[type[Exception], str] | None = None
        self._closing = False
        self._inboxes: dict[int, _Inbox] = {}
        self._next_id = 0
        self._wanted: _Event | None = None  # set by the next request (keepalive, reconnect)
        self.welcome: Welcome | None = None

    def statistics(self) -> ClientStatistics:
        """Counts for tests and monitoring."""
        buffered = sum(len(item.items) for inbox in self._inboxes.values()
                       for item in inbox.items() if isinstance(item, Chunks))
        tasks = self._tasks if self._nursery is not None else 0
        return ClientStatistics(open_requests=len(self._inboxes), buffered_chunks=buffered,
                                background_tasks=tasks)

    # --- connection ------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep a connection up until cancelled (started by :func:`open_client`).

        Raises:
            ConnectionBroken: the first connection could not be made.
            UnauthorizedError: the credential was refused.
        """
        link = await self._open_link(self.connect_timeout)
        task_status.started()
        while True:
            await self._serve(link)
            if self._closing:
                return
            if link.closed_idle and not self._inboxes:
                await self._until_wanted()  # closed for idling: reconnect when a call needs it
                if self._closing:
                    return
            link = await self._reconnect(link.healthy)

    async def _open_link(self, timeout: float) -> _Link:
        assert self._nursery is not None
        nursery = await self._start(_nursery_task)
        try:
            with anyio.fail_after(timeout):
                conn = await self._connector(nursery)
                await self._greet(conn)
        except TimeoutError:
            nursery.cancel_scope.cancel()
            raise ConnectionBroken(f"no connection to the engine within {timeout:g} s") \
                from None
        except RuntimeError:
            # the client is being cancelled: the helper nursery may close before we are
            # told, and then refuses new tasks; that is a cancellation, not an error
            nursery.cancel_scope.cancel()
            await anyio.lowlevel.checkpoint_if_cancelled()
            raise
        except BaseException:
            nursery.cancel_scope.cancel()
            raise
        return _Link(conn, nursery, self._leads)

    async def _greet(self, conn: ClientConnection) -> None:
        try:
            await conn.send(Hello(protocol=PROTOCOL_VERSION, token=self._token))
            frame = await conn.receive()
            if isinstance(frame, Error):
                raise error_from_code(frame.code, frame.message)
            if not isinstance(frame, Welcome):
                raise ConnectionBroken(f"expected welcome, got {frame.type!r}")
        except BaseException:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await conn.aclose()
            raise
        self.welcome = frame

    async def _serve(self, link: _Link) -> None:
        """Route the link's frames until it breaks or is closed."""
        self._attach(link)
        if self.ping_interval is not None and link.conn.can_ping:
            link.nursery.start_soon(self._keepalive, link, self.ping_interval)
        receiver = link.receiver
        try:
            while True:
                frame = await receiver.serve_receive()
                if frame is not None:
                    self._route(link, frame)
                    if not self._leads:
                        # let a consumer this frame woke take it before the next one is
                        # received: else a fast engine fills its inbox and pauses the read
                        await anyio.lowlevel.checkpoint()
        except TransportError as exc:
            link.closed_idle = getattr(exc, "code", None) == CLOSE_IDLE
            if not self._closing and not link.closed_idle:
                log.info("connection lost (%s); reconnecting", exc)
        finally:
            receiver.close()
            self._detach(link)
            await link.close()

    async def _keepalive(self, link: _Link, interval: float) -> None:
        """While a request is open, ping when the link has been quiet for ``interval`` (more
        after pongs with nothing between them); drop the link if the pong is late (the serve
        task then sees it broken and reconnects)."""
        conn = link.conn
        alive = anyio.current_time()  # the last pong (frames count through received_at)
        spacing = interval
        longest = max(interval, PING_SPACING_MAX)
        try:
            while True:
                if not self._inboxes:  # nothing waits on the link: nothing to notice
                    await self._until_wanted()
                    spacing = interval
                    continue
                if conn.received_at > alive:  # frames came since the last pong
                    spacing = interval
                due = max(conn.received_at, alive) + spacing
                now = anyio.current_time()
                if now < due:
                    await anyio.sleep(due - now)
                    continue
                with anyio.move_on_after(self.ping_timeout) as wait:
                    await conn.ping()
                if wait.cancelled_caught:
                    log.info("no pong from the engine within %g s; the link is dead, "
                             "reconnecting", self.ping_timeout)
                    await conn.abort()
                    return
                alive = anyio.current_time()
                spacing = min(spacing * 2, longest)
        except TransportError:
            return  # broken or closed: the serve task sees it too

    async def _until_wanted(self) -> None:
        """Wait until a request is registered, or a call waits for a link."""
        if self._wanted is None:
            self._wanted = self._new_event()
        await self._wanted.wait()

    def _want(self) -> None:
        wanted = self._wanted
        if wanted is not None:
            self._wanted = None
            wanted.set()

    def _attach(self, link: _Link) -> None:
        self._link = link
        self._fatal = None
        self._up.set()

    def _detach(self, link: _Link) -> None:
        self._link = None
        self._up = anyio.Event()
        link.gone.set()
        for inbox in self._inboxes.values():
            inbox.append(DISCONNECTED)

    async def _reconnect(self, healthy: bool) -> _Link:
        """A new link: at once after a healthy one, else after a growing, jittered pause.

        Attempts are bounded by the time left before ``reconnect_timeout``; once it has
        passed, calls fail (:meth:`_give_up`) and the attempts go on in the background.
        """
        deadline = anyio.current_time() + self.reconnect_timeout
        if healthy:
            self._delay = BACKOFF_FIRST
        else:
            await self._back_off(deadline)
        error: BaseException | None = None
        while True:
            now = anyio.current_time()
            if now >= deadline and self._fatal is None:
                self._give_up(ConnectionError, f"engine unreachable for "
                              f"{self.reconnect_timeout:g} s (last error: {error})")
            budget = deadline - now if now < deadline else self.connect_timeout
            try:
                return await self._open_link(min(budget, self.connect_timeout))
            except UnauthorizedError as exc:
                self._give_up(UnauthorizedError, f"the engine refused the credential on "
                              f"reconnect: {exc.message}")
                await anyio.sleep_forever()  # retrying will not make the credential valid
            except (TransportError, OSError, RunwireError) as exc:
                error = exc
            await self._back_off(deadline)

    async def _back_off(self, deadline: float) -> None:
        """Sleep between half and all of the current delay (not past ``deadline``); double it."""
        pause = self.random.uniform(self._delay / 2, self._delay)
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        now = anyio.current_time()
        await anyio.sleep(pause if now >= deadline else min(pause, deadline - now))

    def _give_up(self, kind: type[Exception], message: str) -> None:
        log.warning("%s", message)
        self._fatal = (kind, message)
        self._up.set()

    async def _wait_link(self) -> _Link:
        """The current connection; waits while reconnecting.

        Raises:
            ConnectionError: the engine was unreachable for ``reconnect_timeout``, or the
                client is closed.
            UnauthorizedError: the credential was refused on reconnect.
        """
        while True:
            if self._link is not None:
                return self._link
            if self._closing:
                raise ConnectionError("the client is closed")
            self._want()  # (a link closed for idling is made again now)
            if self._fatal is not None:
                kind, message = self._fatal
                raise kind(message)
            await self._up.wait()

    def _route(self, link: _Link, frame: Frame) -> None:
        re: int | None = getattr(frame, "re", None)
        inbox = self._inboxes.get(re) if re is not None else None
        link.answered = True
        if re is None or inbox is None:
            if isinstance(frame, Error):
                log.warning("engine error without a request: %s %s", frame.code, frame.message)
            return
        if inbox.put(frame):
            link.nursery.start_soon(self._cancel_request, link, re)

    def _register(self, inbox: _Inbox) -> int:
        self._next_id += 1
        self._inboxes[self._next_id] = inbox
        if self._wanted is not None:
            self._want()
        if self._leads:
            inbox.lead = self._lead
        return self._next_id

    async def _lead(self, inbox: _Inbox) -> bool:
        """Let a consumer with an empty inbox receive on the current link (:class:`_Receiver`)."""
        link = self._link
        if link is None:
            return False
        return await link.receiver.lead(inbox, lambda frame: self._route(link, frame))

    async def _send(self, link: _Link, frame: Frame) -> bool:
        """Send on ``link``; ``False`` if the link broke (the caller waits and retries)."""
        try:
            await link.conn.send(frame)
            return True
        except TransportError:
            return False

    async def _call(self, make: Callable[[int], Frame], *, deadline: bool = True) -> Frame:
        """One request, one answer; issued again after a reconnect if it is idempotent.

        ``deadline``: whether ``request_timeout`` applies (appends are paced by the engine's
        acknowledgements instead).

        Raises:
            ConnectionError: the link broke before the answer and the request carries no
                key that makes issuing it again safe.
            TimeoutError: no answer within ``request_timeout``.
        """
        timeout = self.request_timeout if deadline else None
        if timeout is None:
            return await self._call_once(make)
        with anyio.move_on_after(timeout):
            return await self._call_once(make)
        raise TimeoutError(f"no answer within {timeout:g} s (request_timeout); the request "
                           f"may or may not have happened (issuing it again with the same "
                           f"idempotency key is safe)")

    async def _call_once(self, make: Callable[[int], Frame]) -> Frame:
        while True:
            link = await self._wait_link()
            inbox = _Inbox(self._new_event)
            rid = self._register(inbox)
            answer: Frame | _Signal | None = None
            issued = False
            try:
                frame = make(rid)
                issued = True
                answer = await self._issue(link, inbox, frame)
            finally:
                del self._inboxes[rid]
                if issued and answer is None:  # cancelled (a deadline, the caller): stop it
                    await self._cancel_request(link, rid)  # on the engine too
            if isinstance(answer, _Signal):  # DISCONNECTED (a plain inbox never pauses)
                if not _reissuable(frame):
                    raise ConnectionError(f"the connection broke before the answer to "
                                          f"{frame.type!r}; it may or may not have happened")
                await link.gone.wait()
                continue
            if isinstance(answer, Error):
                raise error_from_code(answer.code, answer.message)
            return answer

    async def _issue(self, link: _Link, inbox: _Inbox, frame: Frame) -> Frame | _Signal:
        """Send a request; its first answer, or ``DISCONNECTED`` if the link broke."""
        return await inbox.get() if await self._send(link, frame) else DISCONNECTED

    async def _cancel_request(self, link: _Link, rid: int) -> None:
        if not link.gone.is_set():
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._send(link, Cancel(id=rid))

    def _encode(self, value: Any, what: str) -> bytes:
        """``value`` as JSON, refused here if it could never fit in one message.

        Raises:
            TypeError: ``value`` is not JSON.
            PayloadTooLargeError: it is larger than the engine's messages.
        """
        try:
            data = json_bytes(value)
        except TypeError as exc:
            raise TypeError(f"{what} is not JSON: {exc}") from None
        limit = self.max_item_bytes
        if limit and len(data) > limit:
            raise PayloadTooLargeError(f"{what} of {len(data)} bytes is over the "
                                       f"{limit}-byte message limit of the engine")
        return data

    def _encode_many(self, values: list[Any]) -> list[bytes] | None:
        """``values`` as JSON in one batch; ``None`` if :meth:`_encode` would refuse one."""
        return json_bytes_within(values, self.max_item_bytes or None)  # 0: not known

    @property
    def max_item_bytes(self) -> int:
        """Largest encoded payload one frame can carry (0: the engine did not say)."""
        size = self.welcome.max_message if self.welcome is not None else 0
        return max(size - FRAME_OVERHEAD, 0)

    async def aclose(self) -> None:
        """Close the connection gracefully; calls fail afterwards. Safe to call twice."""
        self._closing = True
        self._up.set()
        self._want()
        if self._link is not None:
            await self._link.close()

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
        if self._nursery is None or self._closing:
            raise OutsideRunError("the client is closed")
        self._nursery.start_soon(self._counted, fn)

    async def _counted(self, fn: Callable[[], Awaitable[object]]) -> None:
        self._tasks += 1
        try:
            await fn()
        finally:
            self._tasks -= 1

    async def _start(self, fn: Callable[..., Awaitable[Any]]) -> Any:
        """``fn`` started in the client's task group (it reports its value when started)."""
        assert self._nursery is not None

        async def counted(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
            self._tasks += 1
            try:
                await fn(task_status=task_status)
            finally:
                self._tasks -= 1

        return await self._nursery.start(counted)

    async def read(self, run_id: str, key: str, start: int,
                   timeout: float | None) -> AsyncGenerator[list[Any], None]:
        """Batches of chunks from ``start``; resumes at the next index after a reconnect.

        Leaving the iteration early (``aclose``) cancels the read on the engine. With a
        ``timeout``, the read raises :class:`StreamTimeoutError` once no chunk came for that
        long, on the client's own clock: a silent link or a stopped engine cannot hold it.
        """
        nxt = start
        last = anyio.current_time()  # when the last chunk came: the read's timer
        try:
            while True:
                expires = None if timeout is None else last + timeout
                link = await self._until(expires, self._wait_link)
                inbox = _ReadInbox(new_event=self._new_event)
                rid = self._register(inbox)
                over = False
                frame: Frame | _Signal = DISCONNECTED
                try:
                    frame = await self._until(expires, self._issue, link, inbox, Read(
                        id=rid, run=run_id, stream=key, from_=nxt, timeout_s=timeout))
                    while not isinstance(frame, _Signal):
                        if isinstance(frame, Chunks):
                            items = _fresh(frame, nxt)
                            if items:
                                nxt += len(items)
                                if timeout is not None:
                                    last = anyio.current_time()
                                yield items
                        elif isinstance(frame, (End, Error)):
                            over = True
                            _raise_end(frame, run_id, key, timeout)
                            return
                        if timeout is None or inbox.pending:
                            frame = await inbox.get()
                        else:
                            frame = await self._until(last + timeout, inbox.get)
                finally:
                    del self._inboxes[rid]
                    if not over and not inbox.paused:
                        await self._cancel_request(link, rid)
                if frame is DISCONNECTED:
                    await self._until(None if timeout is None else last + timeout,
                                      link.gone.wait)
        except _Expired:
            raise StreamTimeoutError(f"no chunk on stream {key!r} of run {run_id} for "
                                     f"{timeout} s") from None

    async def _until(self, expires: float | None, fn: Callable[..., Awaitable[_T]],
                     *args: Any) -> _T:
        """``await fn(*args)``, given up at ``expires`` (client clock) with :class:`_Expired`."""
        if expires is None:
            return await fn(*args)
        with (trio.CancelScope(deadline=expires) if self._leads  # trio's own: cheaper
              else anyio.CancelScope(deadline=expires)):
            return await fn(*args)
        raise _Expired()

    async def send(self, run_id: str, key: str, data: Any,
                   idempotency_key: str | None = None) -> int:
        ikey = idempotency_key or f"auto:{uuid.uuid4().hex}"
        body = orjson.Fragment(self._encode(data, f"record for input stream {key!r}"))
        frame = await self._call(lambda rid: Send(id=rid, run=run_id, stream=key, data=body,
                                                  key=ikey))
        assert isinstance(frame, Ack)
        return frame.index if frame.index is not None else -1

    # --- Backend: tasks and runs ------------------------------------------------------------

    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any]) -> RunHandle:
        opts = dict(options)
        if opts.get("idempotency_key") is None:
            opts["idempotency_key"] = f"auto:{uuid.uuid4().hex}"
        body = orjson.Fragment(self._encode(payload, f"payload for task {task_id!r}"))
        frame = await self._call(lambda rid: Trigger(id=rid, task=task_id, payload=body,
                                                     options=opts))
        assert isinstance(frame, Triggered)
        return RunHandle(id=frame.run, public_access_token=frame.token)

    async def trigger_and_wait(self, task_id: str, payload: Any,
                               options: dict[str, Any]) -> TaskRunResult[Any]:
        handle = await self.trigger(task_id, payload, options)
        return await self.wait_for_run(handle.id)

    async def batch_trigger_and_wait(self, task_id: str, items: list[tuple[Any, dict[str, Any]]],
                                     ) -> list[TaskRunResult[Any]]:
        handles = [await self.trigger(task_id, p, o) for p, o in items]
        results: list[TaskRunResult[Any] | None] = [None] * len(handles)

        async def one(i: int, run_id: str) -> None:
            results[i] = await self.wait_for_run(run_id)

        async with anyio.create_task_group() as nursery:
            for i, handle in enumerate(handles):
                nursery.start_soon(one, i, handle.id)
        return [r for r in results if r is not None]

    async def wait_for_run(self, run_id: str) -> TaskRunResult[Any]:
        """Wait until the run is finished and return its result."""
        last: Run | None = None
        async for run in self.subscribe(run_id):
            last = run
        if last is None or not last.is_finished:  # an engine that broke its contract
            raise InternalError(f"the subscription to run {run_id} ended before the run "
                                f"finished ({last.status.value if last else 'no snapshot'})")
        return TaskRunResult.from_run(last)

    async def retrieve(self, run_id: str) -> Run:
        frame = await self._call(lambda rid: Retrieve(id=rid, run=run_id))
        assert isinstance(frame, RunInfo)
        return Run.from_wire(frame.run)

    async def cancel_run(self, run_id: str) -> None:
        attempts = 0

        def make(rid: int) -> Frame:
            nonlocal attempts
            attempts += 1
            return CancelRun(id=rid, run=run_id)

        try:
            await self._call(make)
        except RunFinishedError:
            if attempts == 1:
                raise
            # an earlier attempt's answer was lost: that attempt may be what ended the run

    async def list_runs(self, filters: dict[str, Any]) -> tuple[list[Run], str | None]:
        f = filters
        frame = await self._call(lambda rid: ListRuns(
            id=rid, task=f.get("task"), status=list(f.get("status") or ()),
            tags=list(f.get("tags") or ()), created_after=f.get("created_after"),
            created_before=f.get("created_before"), limit=f.get("limit", 20),
            cursor=f.get("cursor")))
        assert isinstance(frame, RunList)
        return [Run.from_wire(run) for run in frame.runs], frame.cursor

    async def create_waitpoint(self, timeout: float | None, idempotency_key: str | None,
                               tags: list[str]) -> dict[str, Any]:
        key = idempotency_key or f"auto:{uuid.uuid4().hex}"  # safe to issue again
        frame = await self._call(lambda rid: CreateWaitpoint(
            id=rid, timeout_s=timeout, idempotency_key=key, tags=tags))
        assert isinstance(frame, WaitpointInfo)
        token = dict(frame.waitpoint)
        if idempotency_key is None:
            token["idempotency_key"] = None  # the key was the client's, not the caller's
        return token

    async def complete_waitpoint(self, token_id: str, data: Any) -> tuple[dict[str, Any], bool]:
        body = orjson.Fragment(self._encode(data, f"data for waitpoint {token_id!r}"))
        frame = await self._call(lambda rid: CompleteWaitpoint(id=rid, waitpoint=token_id,
                                                               data=body))
        assert isinstance(frame, WaitpointInfo)
        return frame.waitpoint, bool(frame.completed)

    async def retrieve_waitpoint(self, token_id: str) -> dict[str, Any]:
        frame = await self._call(lambda rid: RetrieveWaitpoint(id=rid, waitpoint=token_id))
        assert isinstance(frame, WaitpointInfo)
        return frame.waitpoint

    async def subscribe(self, run_id: str) -> AsyncIterator[Run]:
        """Run snapshots until the run is finished; re-subscribes after a reconnect."""
        last: dict[str, Any] | None = None
        while True:
            link = await self._wait_link()
            inbox = _RunInbox(new_event=self._new_event)
            rid = self._register(inbox)
            over = False
            try:
                frame = await self._issue(link, inbox, Subscribe(id=rid, run=run_id))
                while not isinstance(frame, _Signal):
                    if isinstance(frame, RunInfo):
                        if frame.run != last:  # a re-subscription repeats the current state
                            last = frame.run
                            yield Run.from_wire(frame.run)
                    elif isinstance(frame, (End, Error)):
                        over = True
                        if isinstance(frame, Error):
                            raise error_from_code(frame.code, frame.message)
                        return
                    frame = await inbox.get()
            finally:
                del self._inboxes[rid]
                if not over:
                    await self._cancel_request(link, rid)
            await link.gone.wait()


class _Expired(Exception):
    """A read's timer ran out (raised as :class:`StreamTimeoutError`)."""


def _fresh(frame: Chunks, nxt: int) -> list[Any]:
    """The items of ``frame`` from index ``nxt`` on."""
    if frame.start > nxt:
        raise RunwireError(f"engine skipped chunks {nxt}..{frame.start - 1}")
    return frame.items if frame.start == nxt else frame.items[nxt - frame.start:]


def _raise_end(frame: End | Error, run_id: str, key: str, timeout: float | None) -> None:
    """Raise what ends a read, if anything (a complete read ends quietly)."""
    if isinstance(frame, Error):
        raise error_from_code(frame.code, frame.message)
    if frame.reason == "timeout":
        raise StreamTimeoutError(f"no chunk on stream {key!r} of run {run_id} for {timeout} s")


def _reissuable(frame: Frame) -> bool:
    """May ``frame`` be sent again after its answer was lost, without doing it twice?"""
    if isinstance(frame, Send):
        return frame.key is not None
    if isinstance(frame, Trigger):
        return frame.options.get("idempotency_key") is not None
    if isinstance(frame, CreateWaitpoint):
        return frame.idempotency_key is not None
    # reads of state, appends (numbered), cancel_run (see Client.cancel_run), and
    # complete_waitpoint (the first completion wins; a repeat changes nothing)
    return True


class _ClientProducer:
    """A producer outside the engine: numbered batches, resent until acknowledged.

    Chunks are encoded when they are put, so a chunk that is not JSON fails the ``put``
    (not the connection), and batches are cut by size as well as by count.
    """

    def __init__(self, client: Client, run_id: str, key: str) -> None:
        self._client = client
        self._run = run_id
        self._key = key
        self.id = uuid.uuid4().hex
        self._buffer: list[bytes] = []
        self._base = 0  # sequence number of _buffer[0]
        self._closed = False
        self._error: BaseException | None = None
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._started = False
        self._puts = 0
        self._what = f"chunk for stream {key!r}"

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._client.spawn_background(self._sender)

    def put_nowait(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._buffer.append(self._client._encode(item, self._what))
        self._wake.set()
        self._start()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)
        self._puts += 1
        await self._below_high_water()
        if self._puts % 256 == 0:
            await anyio.lowlevel.checkpoint()

    async def put_many(self, items: list[Any]) -> None:
        if self._error is not None:
            raise self._error
        client, what, buffer = self._client, self._what, self._buffer
        try:
            encoded = client._encode_many(items)
            if encoded is not None:
                buffer.extend(encoded)
            else:  # something is refused: the chunks before it are kept, then it raises
                for item in items:
                    buffer.append(client._encode(item, what))
        finally:
            self._wake.set()
            self._start()
        await self._below_high_water()
        await anyio.lowlevel.checkpoint()

    async def _below_high_water(self) -> None:
        while len(self._buffer) >= self._client.producer_buffer and self._error is None:
            await self._progress.wait()

    def _advance(self) -> None:
        """Wake every waiter (a writer's merges share one producer), for the next change."""
        self._progress.set()
        self._progress = anyio.Event()

    async def flush(self) -> None:
        target = self._base + len(self._buffer)
        while self._base < target and self._error is None:
            await self._progress.wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _batch(self) -> list[orjson.Fragment]:
        limit = min(APPEND_BATCH_BYTES, self._client.max_item_bytes or APPEND_BATCH_BYTES)
        size = 0
        batch: list[orjson.Fragment] = []
        for data in self._buffer[:APPEND_BATCH]:
            size += len(data)
            if batch and size > limit:
                break
            batch.append(orjson.Fragment(data))
        return batch

    def _append_frame(self, seq: int, batch: list[orjson.Fragment]) -> Callable[[int], Frame]:
        """The same batch, from sequence number ``seq``, for every attempt."""
        return lambda rid: Append(id=rid, run=self._run, stream=self._key, producer=self.id,
                                  seq=seq, items=batch)

    async def _sender(self) -> None:
        try:
            while True:
                if not self._buffer:
                    if self._closed:
                        return
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                frame = await self._client._call(self._append_frame(self._base, self._batch()),
                                                 deadline=False)
                assert isinstance(frame, Ack) and frame.next_seq is not None
                del self._buffer[:frame.next_seq - self._base]
                self._base = frame.next_seq
                self._advance()
        except Exception as exc:  # kept for put/flush to raise; never the client's problem
            self._error = exc
            self._advance()


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"engine URL must start with ws:// or wss://, not {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@asynccontextmanager
async def open_client(connector: Connector, token: str, *, reconnect_timeout: float = 60.0,
                      connect_timeout: float = 10.0,
                      producer_buffer: int = PRODUCER_HIGH_WATER,
                      ping_interval: float | None = PING_INTERVAL,
                      ping_timeout: float = PING_TIMEOUT,
                      request_timeout: float | None = None) -> AsyncIterator[Client]:
    """Run a :class:`Client` over ``connector`` for the duration of the block."""
    client = Client(connector, token, reconnect_timeout=reconnect_timeout,
                    connect_timeout=connect_timeout, producer_buffer=producer_buffer,
                    ping_interval=ping_interval, ping_timeout=ping_timeout,
                    request_timeout=request_timeout)
    with collapse_exception_groups():
        async with anyio.create_task_group() as nursery:
            client._nursery = nursery
            await client._start(client.run)
            bound = bind_client(client)
            try:
                yield client
            finally:
                unbind_client(bound)
                await client.aclose()
                nursery.cancel_scope.cancel()
                client._nursery = None


@asynccontextmanager
async def connect(url: str, api_key: str | None = None, *, access_token: str | None = None,
                  reconnect_timeout: float = 60.0, connect_timeout: float = 10.0,
                  max_message_size: int = 64 * 1024 * 1024,
                  producer_buffer: int = PRODUCER_HIGH_WATER,
                  ping_interval: float | None = PING_INTERVAL,
                  ping_timeout: float = PING_TIMEOUT,
                  request_timeout: float | None = None) -> AsyncIterator[Client]:
    """Connect to an engine at ``url`` with an API key or a public access token.

    Inside the block, SDK calls (``tasks.trigger``, ``streams.read``, ``runs.retrieve`` ...)
    go to this engine. A lost connection is made again in the background, and requests are
    resumed on it (see ``docs/guide.md``, "Reconnects and exactly-once").

    Args:
        url: ``ws://host:port`` (the path defaults to ``/v1``).
        api_key: the engine's secret key; or give ``access_token`` instead.
        reconnect_timeout: seconds the engine may stay unreachable before calls fail
            with :class:`ConnectionError`.
        connect_timeout: seconds one connection attempt may take.
        max_message_size: largest message accepted from the engine.
        producer_buffer: chunks a producer with ``target=`` buffers before it waits.
        ping_interval: seconds without a frame from the engine, while a request is open,
            before the client pings it (default 3; ``None``: never ping).
        ping_timeout: seconds the pong may take (default 3); a later one means the link is
            dead: the client drops it and reconnects, and reads resume where they were.
        request_timeout: seconds a single-answer call (``retrieve``, ``send``, ``trigger``,
            ...) may wait for its answer, reconnects included, before it raises
            :class:`TimeoutError` (default ``None``: no deadline beyond
            ``reconnect_timeout``).

    Raises:
        UnauthorizedError: the credential was refused.
        ConnectionError: the engine could not be reached.
    """
    token = api_key if api_key is not None else access_token
    if not isinstance(token, str) or not token:
        raise ValueError("connect() needs api_key=... or access_token=...")
    target = _ws_url(url)

    async def connector(nursery: anyio.abc.TaskGroup) -> ClientConnection:
        if sniffio.current_async_library() == "trio":  # trio-websocket measures best there
            return await connect_websocket(nursery, target,  # type: ignore[arg-type]
                                           max_message_size=max_message_size,
                                           connect_timeout=connect_timeout)
        return await connect_websocket_asyncio(target, max_message_size=max_message_size,
                                               connect_timeout=connect_timeout)

    try:
        async with open_client(connector, token, reconnect_timeout=reconnect_timeout,
                               connect_timeout=connect_timeout,
                               producer_buffer=producer_buffer, ping_interval=ping_interval,
                               ping_timeout=ping_timeout,
                               request_timeout=request_timeout) as client:
            yield client
    except ConnectionBroken as exc:
        raise ConnectionError(str(exc)) from exc
