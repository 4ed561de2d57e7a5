"""One client connection on the engine side: handshake, then one task per request.

Theory of operation: the session reads frames in one loop. ``hello`` must come first (within
``handshake_timeout``); a bad or missing credential is answered with an ``error`` and close
code 4401. After ``welcome``, every request runs as its own task in the session's nursery,
inside a cancel scope that ``cancel`` (or the end of the connection) cancels. A bad frame is
answered with an ``error`` frame and the loop goes on; nothing a client sends can take down
the engine or another client: a bug in a session closes that connection (1011), no more.
Every request goes through the connection's :class:`~._requests.Caller` (the door-neutral
layer): it is checked against the grant (and its expiry) there, rate-limited and validated.

Limits, each answered with an error the client can act on (see ``docs/security.md``):
connections beyond ``max_connections`` are refused (``rate_limited``, close 1013); at most
``max_requests_per_connection`` requests are open at once (``rate_limited``); ``trigger``
and ``send`` draw from token buckets per public access token (``rate_limited``; the API key
too if ``Limits.rate_limit_api_key`` is set).

Cancelling a request (a ``cancel`` frame) never cuts a message short: a request sends
through :meth:`Session._emit`, under a shield that only the end of the session lifts, so a
frame being written is finished first (a torn websocket message would break the connection
for every other request on it); the request stops at its next checkpoint, and a request
that already sent its final answer gets no ``end``.

Backpressure: the session never queues frames for a client. Every answer is sent with
``await conn.send`` under the connection's one send lock, which waits for the socket (or the
bounded in-memory channel) to take it. A client that stops reading stalls only its own
session: its request tasks wait on the lock (at most ``max_requests_per_connection`` of
them), the read loop stops reading, and TCP pushes back on the client.

Live pushes: a read that waits at the live tail registers a *pusher* with the stream. When
the run's commit cycle stores new chunks, the pusher sends them at once, from the commit
cycle, with :meth:`Connection.send_nowait` -- one non-blocking socket write, no task to
wake and no scheduler pass before the bytes leave (this is most of a chunk's latency). It
sends only what a read task would have sent next (one ``chunks`` frame from ``reader.next``)
and only when that cannot block: the read is parked, not cancelled, the connection's send
lock is free and the socket takes the message. Otherwise it does nothing and the read task,
woken as always, sends the frame itself (the overrun policy: wait, never drop). A message
the socket took only in part is finished by a short ``_flush`` task before any other byte
goes out on that connection.

Dead links and hostile peers (issue 19; ``docs/security.md``, "Connections"), for websocket
sessions (in-process ones are the embedding program's own): while a request is open, the
engine pings every ``ping_interval`` and drops a connection whose pong does not come within
``ping_timeout`` (a dead link, a stopped client, a peer that never reads); pongs with
nothing else received between them space the pings out, up to 4 x ``ping_interval``. A
session with no request open that received nothing for ``idle_timeout`` is closed (1001),
dead or alive, so it needs no pings; a message left half-sent for
``message_timeout`` closes the connection (1008). Before ``hello`` a message may be at most
``max_hello_bytes`` (the server sets that; the session raises it to ``max_message_bytes``
before it sends ``welcome``). One public access token may hold at most
``max_connections_per_credential`` sessions (more are refused with ``rate_limited``, close
1013) and ``max_reads_per_credential`` open reads and subscriptions; one client address at
most ``max_reads_per_address``. The API key is the embedding backend's: only the
per-address caps apply to it.

Memory per connection: a read holds a batch of chunks from the moment it takes one until its
frame is written. At most ``read_batches_per_connection`` reads of a connection hold one at
once (a per-connection semaphore the reader takes before it fetches, see ``Reader.gate``),
so a client that opens a thousand reads and never reads costs a few batches, not a
thousand (the read tasks themselves wait without data).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from runwire import RateLimitedError, RunwireError, UnauthorizedError
from runwire.transport import (
    CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED,
    PROTOCOL_VERSION, Ack, Append, Cancel, CancelRun, Chunks, CompleteWaitpoint, Connection,
    ConnectionBroken, ConnectionClosed, CreateToken, CreateWaitpoint, End, Error, Frame, Hello,
    ListRuns, Read, RemoteProtocolError, Retrieve, RetrieveWaitpoint, RunInfo, RunList, Send,
    Subscribe, Token, Trigger, Triggered, WaitpointInfo, Welcome,
)

from ..run import Reader, ReadTimeout
from ..store import client_message
from ._requests import Caller, Door

log = logging.getLogger("runwire.engine")

Handler = Callable[[Any], Awaitable[None]]

#: Seconds a refusal (error frame and close) may take before the connection is dropped.
REFUSE_TIMEOUT = 5.0


class Session:
    """The engine's half of one connection.

    Args:
        door: what the engine's doors share.
        conn: the connection (websocket or in-process).
        address: the client's IP address (``None`` in-process): keys the per-address caps.
        hello_by: trio time by which ``hello`` must have come (default: ``handshake_timeout``
            from now; the server counts from the TCP accept).
    """

    def __init__(self, door: Door, conn: Connection, *, address: str | None = None,
                 hello_by: float | None = None) -> None:
        self.door = door
        self.conn = conn
        self.address = address
        self._hello_by = hello_by
        self._credential: str | None = None  # a public token's fingerprint, once counted
        self._batches = trio.Semaphore(max(door.limits.read_batches_per_connection, 1))
        self._last_end = trio.current_time()  # when a request last ended (idle timer)
        self._busy: trio.Event | None = None  # set when a request opens (keepalive waits)
        self._caller: Caller | None = None  # once the handshake is done
        self._requests: dict[int, trio.CancelScope] = {}
        self._sending: set[trio.CancelScope] = set()
        self._ending = False
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[type[Frame], Handler] = {
            Read: self._read, Append: self._append, Send: self._send, Trigger: self._trigger,
            Subscribe: self._subscribe, Retrieve: self._retrieve, CancelRun: self._cancel_run,
            CreateToken: self._create_token, ListRuns: self._list_runs,
            CreateWaitpoint: self._create_waitpoint, CompleteWaitpoint: self._complete_waitpoint,
            RetrieveWaitpoint: self._retrieve_waitpoint,
        }

    async def serve(self) -> None:
        self.door.connections += 1
        close_code = 1000
        try:
            if self.door.connections > self.door.limits.max_connections:
                await self._refuse("rate_limited", "too many connections; try again later",
                                   CLOSE_TRY_AGAIN)
            elif await self._handshake():
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self.conn.can_ping:  # a websocket: watch the link and the peer
                        nursery.start_soon(self._keepalive)
                        nursery.start_soon(self._watchdog)
                    try:
                        await self._loop(nursery)
                    finally:
                        self._end_requests(nursery)
        except (ConnectionBroken, ConnectionClosed):
            pass
        except Exception:  # a bug here must end this connection, never the engine
            log.exception("session failed; closing its connection")
            close_code = CLOSE_INTERNAL
        finally:
            self.door.connections -= 1
            if self._credential is not None:
                self.door.free_slot(("session", self._credential))
            await self.conn.aclose(close_code)

    def _end_requests(self, nursery: trio.Nursery) -> None:
        self._ending = True
        for scope in self._sending:
            scope.cancel()
        nursery.cancel_scope.cancel()

    async def _emit(self, frame: Frame) -> None:
        """Send a request's frame whole: only the end of the session may interrupt it."""
        await self._whole(self.conn.send, frame)

    async def _whole(self, send: Callable[..., Awaitable[None]], *args: Any) -> None:
        with trio.CancelScope(shield=not self._ending) as scope:
            self._sending.add(scope)
            try:
                await send(*args)
            finally:
                self._sending.discard(scope)

    async def _flush(self) -> None:
        """Finish a chunks frame that a push wrote in part (see "Live pushes")."""
        try:
            await self._whole(self.conn.flush)
        except (ConnectionBroken, ConnectionClosed):
            pass  # the connection is gone; the read loop ends the session

    # --- handshake ---------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        limits = self.door.limits
        hello_by = self._hello_by
        if hello_by is None:
            hello_by = trio.current_time() + limits.handshake_timeout
        with trio.move_on_at(hello_by):
            try:
                frame = await self.conn.receive()
            except RemoteProtocolError as exc:
                await self._refuse(exc.code, str(exc), exc.close_code or CLOSE_UNAUTHORIZED)
                return False
            assert isinstance(frame, Hello)
            try:
                self._caller = self.door.authenticate(frame.token)
            except UnauthorizedError as exc:
                await self._refuse("unauthorized", exc.message, CLOSE_UNAUTHORIZED)
                return False
            grant = self._caller.grant
            if not grant.admin:
                cap = limits.max_connections_per_credential
                if not self.door.take_slot(("session", grant.key), cap):
                    await self._refuse("rate_limited", f"too many connections with this access "
                                       f"token (at most {cap}); try again later",
                                       CLOSE_TRY_AGAIN)
                    return False
                self._credential = grant.key
            self.conn.set_max_message_size(limits.max_message_bytes)  # before welcome
            await self.conn.send(Welcome(protocol=PROTOCOL_VERSION, engine="runwire",
                                         max_message=self.door.limits.max_message_bytes))
            return True
        await self._refuse("unauthorized", "no hello within the handshake timeout",
                           CLOSE_UNAUTHORIZED)
        return False

    async def _refuse(self, code: str, message: str, close_code: int) -> None:
        with trio.move_on_after(REFUSE_TIMEOUT):
            try:
                await self.conn.send(Error(re=None, code=code, message=message))
            except Exception:  # the client may be gone already; we are closing anyway
                pass
        await self.conn.aclose(close_code, message[:120])

    # --- dead links and hostile peers (module docstring) ------------------------------------

    async def _keepalive(self) -> None:
        """While a request is open, ping every ``ping_interval`` (up to 4 x that while only
        pongs come back); drop the connection if a pong is late."""
        limits, conn = self.door.limits, self.conn
        interval = limits.ping_interval
        if interval is None:
            return
        spacing = interval
        try:
            while True:
                if not self._requests:
                    self._busy = trio.Event()
                    await self._busy.wait()
                    spacing = interval
                pinged = trio.current_time()
                await trio.sleep(spacing)
                if not self._requests:
                    continue
                if conn.received_at > pinged:  # the client spoke meanwhile
                    spacing = interval
                with trio.move_on_after(limits.ping_timeout) as wait:
                    await conn.ping()
                if wait.cancelled_caught:
                    log.info("a client answered no ping within %g s; dropping its connection",
                             limits.ping_timeout)
                    await conn.abort()
                    return
                spacing = min(spacing * 2, 4 * interval)
        except (ConnectionBroken, ConnectionClosed):
            return  # the read loop sees it too and ends the session

    async def _watchdog(self) -> None:
        """Close the connection when it idles too long or leaves a message half-sent."""
        limits, conn = self.door.limits, self.conn
        while True:
            now = trio.current_time()
            started = conn.message_started
            if started is not None and now - started >= limits.message_timeout:
                log.info("a client left a message half-sent for %g s; closing its connection",
                         limits.message_timeout)
                await conn.aclose(CLOSE_POLICY, f"a message stayed unfinished for "
                                                f"{limits.message_timeout:g} s")
                return
            wake = (started if started is not None else now) + limits.message_timeout
            idle = limits.idle_timeout
            if idle is not None:
                since = max(conn.received_at, self._last_end)
                if self._requests:
                    wake = min(wake, now + idle)
                elif now - since >= idle:
                    await conn.aclose(CLOSE_GOING_AWAY, f"idle for {idle:g} s")
                    return
                else:
                    wake = min(wake, since + idle)
            await trio.sleep_until(wake)

    # --- the request loop --------------------------------------------------------------------

    async def _loop(self, nursery: trio.Nursery) -> None:
        try:
            await self._read_frames(nursery)
        except (ConnectionBroken, ConnectionClosed):
            pass  # the client went away; the session ends and cancels its requests

    async def _read_frames(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                frame = await self.conn.receive()
            except RemoteProtocolError as exc:
                await self.conn.send(Error(re=exc.re, code=exc.code, message=str(exc)))
                if exc.close_code is not None:
                    await self.conn.aclose(exc.close_code, str(exc)[:120])
                    return
                continue
            if isinstance(frame, Cancel):
                scope = self._requests.get(frame.id)
                if scope is not None:
                    scope.cancel()
                continue
            await self._start(nursery, frame)

    async def _start(self, nursery: trio.Nursery, frame: Any) -> None:
        rid = frame.id
        if rid in self._requests:
            await self.conn.send(Error(re=rid, code="bad_frame",
                                       message=f"request id {rid} is already in use"))
            return
        limit = self.door.limits.max_requests_per_connection
        if len(self._requests) >= limit:
            await self.conn.send(Error(
                re=rid, code="rate_limited",
                message=f"too many open requests on this connection (at most {limit}); "
                        f"cancel or finish some first"))
            return
        scope = self._requests[rid] = trio.CancelScope()
        self.door.open_requests += 1
        if self._busy is not None:
            self._busy.set()
        nursery.start_soon(self._run_request, rid, scope, self._handlers[type(frame)], frame)

    async def _run_request(self, rid: int, scope: trio.CancelScope, handler: Handler,
                           frame: Any) -> None:
        try:
            with scope:
                try:
                    await handler(frame)
                except RunwireError as exc:
                    await self._emit(Error(re=rid, code=exc.code, message=exc.message))
                except (ConnectionBroken, ConnectionClosed):
                    raise
                except Exception as exc:
                    log.exception("request %r failed", type(frame).__name__)
                    await self._emit(Error(re=rid, code="internal", message=client_message(
                        exc) or "internal error; see the engine log"))
            if scope.cancelled_caught:
                await self._emit(End(re=rid, reason="canceled"))
        except (ConnectionBroken, ConnectionClosed):
            pass  # the connection is gone; the read loop ends the session
        finally:
            del self._requests[rid]
            self.door.open_requests -= 1
            self._last_end = trio.current_time()

    # --- requests ----------------------------------------------------------------------------

    @property
    def caller(self) -> Caller:
        assert self._caller is not None, "requests run only after the handshake"
        return self._caller

    async def _read(self, frame: Read) -> None:
        with self.door.read_slot(self.caller.grant, self.address):
            await self._read_slotted(frame)

    async def _read_slotted(self, frame: Read) -> None:
        reader = await self.caller.open_read(frame.run, frame.stream, frame.from_,
                                             frame.timeout_s)
        push = self._pusher(frame, reader)
        held = False

        async def gate() -> None:  # before the reader takes a batch: the connection's budget
            nonlocal held
            if not held:
                await self._batches.acquire()
                held = True

        reader.gate = gate
        reader.stream.add_pusher(push)
        try:
            with self.caller.expiry_scope():  # a read ends when its token does
                while True:
                    try:
                        try:
                            batch = await reader.next_batch(frame.timeout_s)
                        except ReadTimeout:
                            await self._emit(End(re=frame.id, reason="timeout",
                                                 next=reader.next))
                            return
                        if batch is None:
                            await self._emit(End(re=frame.id, reason="complete",
                                                 next=reader.next))
                            return
                        start = reader.next - len(batch)  # (pushes may have moved it)
                        await self._emit(Chunks(re=frame.id, stream=frame.stream, start=start,
                                                items=batch))  # stored JSON, joined by codec
                    finally:
                        if held:  # the batch is written (or dropped): its budget is free
                            held = False
                            self._batches.release()
        finally:
            reader.stream.remove_pusher(push)
        raise UnauthorizedError(f"the access token has expired; the read ended at index "
                                f"{reader.next} (read again from there with a new token)")

    def _pusher(self, frame: Read, reader: Reader) -> Callable[[], None]:
        """The read's pusher: new chunks straight from the commit cycle ("Live pushes")."""
        scope = self._requests[frame.id]  # the read runs as a request

        def push() -> None:
            if not reader.waiting or self._ending or scope.cancel_called or \
                    self.caller.expired():
                return
            items = reader.tail()
            if not items:
                return
            try:
                sent = self.conn.send_nowait(Chunks(re=frame.id, stream=frame.stream,
                                                    start=reader.next, items=items))
            except Exception:  # noqa: BLE001 - never into the commit cycle: the read's own
                return         # send (woken next) meets the same error and reports it
            if sent:
                reader.next += len(items)
                if self.conn.unflushed:
                    assert self._nursery is not None  # the read runs in it
                    self._nursery.start_soon(self._flush)

        return push

    async def _append(self, frame: Append) -> None:
        nxt = await self.caller.append(frame.run, frame.stream, frame.producer, frame.seq,
                                       frame.items)
        await self._emit(Ack(re=frame.id, next_seq=nxt))

    async def _send(self, frame: Send) -> None:
        index = await self.caller.send(frame.run, frame.stream, frame.data, frame.key)
        await self._emit(Ack(re=frame.id, index=index))

    async def _trigger(self, frame: Trigger) -> None:
        record, token = await self.caller.trigger(frame.task, frame.payload, frame.options)
        await self._emit(Triggered(re=frame.id, run=record.id, token=token))

    async def _subscribe(self, frame: Subscribe) -> None:
        # a subscription ends when its token does
        with self.door.read_slot(self.caller.grant, self.address), self.caller.expiry_scope():
            async with contextlib.aclosing(self.caller.subscribe(frame.run)) as snapshots:
                async for snapshot in snapshots:
                    await self._emit(RunInfo(re=frame.id, run=snapshot))
            await self._emit(End(re=frame.id, reason="complete"))
            return
        raise UnauthorizedError("the access token has expired; the subscription ended "
                                "(subscribe again with a new token)")

    async def _retrieve(self, frame: Retrieve) -> None:
        await self._emit(RunInfo(re=frame.id, run=await self.caller.retrieve(frame.run)))

    async def _cancel_run(self, frame: CancelRun) -> None:
        await self.caller.cancel_run(frame.run)
        await self._emit(Ack(re=frame.id))

    async def _create_token(self, frame: CreateToken) -> None:
        token, expires_at = self.caller.create_token(frame.scopes, frame.expires_in)
        await self._emit(Token(re=frame.id, token=token, expires_at=expires_at))

    async def _list_runs(self, frame: ListRuns) -> None:
        runs, cursor = await self.caller.list_runs(
            task=frame.task, status=frame.status, tags=frame.tags,
            created_after=frame.created_after, created_before=frame.created_before,
            limit=frame.limit, cursor=frame.cursor)
        await self._emit(RunList(re=frame.id, runs=runs, cursor=cursor))

    async def _create_waitpoint(self, frame: CreateWaitpoint) -> None:
        token = await self.caller.create_waitpoint(frame.timeout_s, frame.idempotency_key,
                                                   frame.tags)
        await self._emit(WaitpointInfo(re=frame.id, waitpoint=token))

    async def _complete_waitpoint(self, frame: CompleteWaitpoint) -> None:
        token, completed = await self.caller.complete_waitpoint(frame.waitpoint, frame.data)
        await self._emit(WaitpointInfo(re=frame.id, waitpoint=token, completed=completed))

    async def _retrieve_waitpoint(self, frame: RetrieveWaitpoint) -> None:
        token = await self.caller.retrieve_waitpoint(frame.waitpoint)
        await self._emit(WaitpointInfo(re=frame.id, waitpoint=token))
