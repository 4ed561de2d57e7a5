"""One client connection on the engine side: handshake, then one task per request.

Theory of operation: the session reads frames in one loop. ``hello`` must come first (within
``handshake_timeout``); a bad or missing credential is answered with an ``error`` and close
code 4401. After ``welcome``, every request runs as its own task in the session's nursery,
inside a cancel scope that ``cancel`` (or the end of the connection) cancels. A bad frame is
answered with an ``error`` frame and the loop goes on; nothing a client sends can take down
the engine or another client. Every request is checked against the connection's grant.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import trio

from sdk import ForbiddenError, RunwireError, UnauthorizedError
from transport import (
    Ack, Append, Cancel, CancelRun, Chunks, Connection, ConnectionBroken, ConnectionClosed, End,
    Error, Frame, Hello, PROTOCOL_VERSION, Read, RemoteProtocolError, Retrieve, RunInfo, Send,
    Subscribe, Trigger, Triggered, Welcome,
)
from transport._protocol import CLOSE_UNAUTHORIZED

from ._auth import Grant
from ._engine import ReadTimeout

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("runwire.engine")

Handler = Callable[[Any], Awaitable[None]]


class Session:
    """The engine's half of one connection."""

    def __init__(self, engine: Engine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self.grant = Grant()
        self._requests: dict[int, trio.CancelScope] = {}
        self._handlers: dict[type[Frame], Handler] = {
            Read: self._read, Append: self._append, Send: self._send, Trigger: self._trigger,
            Subscribe: self._subscribe, Retrieve: self._retrieve, CancelRun: self._cancel_run,
        }

    async def serve(self) -> None:
        self.engine.connections += 1
        try:
            if await self._handshake():
                async with trio.open_nursery() as nursery:
                    await self._loop(nursery)
                    nursery.cancel_scope.cancel()
        except (ConnectionBroken, ConnectionClosed):
            pass
        finally:
            self.engine.connections -= 1
            await self.conn.aclose()

    # --- handshake ---------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        with trio.move_on_after(self.engine.limits.handshake_timeout):
            try:
                frame = await self.conn.receive()
            except RemoteProtocolError as exc:
                await self._refuse(exc.code, str(exc), exc.close_code or CLOSE_UNAUTHORIZED)
                return False
            assert isinstance(frame, Hello)
            try:
                self.grant = self.engine.auth.authenticate(frame.token)
            except UnauthorizedError as exc:
                await self._refuse("unauthorized", exc.message, CLOSE_UNAUTHORIZED)
                return False
            await self.conn.send(Welcome(protocol=PROTOCOL_VERSION, engine="runwire",
                                         max_message=self.engine.limits.max_message_bytes))
            return True
        await self._refuse("unauthorized", "no hello within the handshake timeout",
                           CLOSE_UNAUTHORIZED)
        return False

    async def _refuse(self, code: str, message: str, close_code: int) -> None:
        try:
            await self.conn.send(Error(re=None, code=code, message=message))
        except Exception:  # the client may be gone already; we are closing anyway
            pass
        await self.conn.aclose(close_code, message[:120])

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
            if isinstance(frame, Hello):
                await self.conn.send(Error(re=None, code="bad_frame",
                                           message="hello was already received"))
                continue
            await self._start(nursery, frame)

    async def _start(self, nursery: trio.Nursery, frame: Any) -> None:
        rid = frame.id
        if rid in self._requests:
            await self.conn.send(Error(re=rid, code="bad_frame",
                                       message=f"request id {rid} is already in use"))
            return
        if len(self._requests) >= self.engine.limits.max_requests_per_connection:
            await self.conn.send(Error(re=rid, code="rate_limited",
                                       message="too many open requests on this connection"))
            return
        scope = self._requests[rid] = trio.CancelScope()
        nursery.start_soon(self._run_request, rid, scope, self._handlers[type(frame)], frame)

    async def _run_request(self, rid: int, scope: trio.CancelScope, handler: Handler,
                           frame: Any) -> None:
        try:
            with scope:
                try:
                    await handler(frame)
                except RunwireError as exc:
                    await self.conn.send(Error(re=rid, code=exc.code, message=exc.message))
                except (ConnectionBroken, ConnectionClosed):
                    raise
                except Exception:
                    log.exception("request %r failed", type(frame).__name__)
                    await self.conn.send(Error(re=rid, code="internal",
                                               message="internal error; see the engine log"))
            if scope.cancelled_caught:
                await self.conn.send(End(re=rid, reason="canceled"))
        except (ConnectionBroken, ConnectionClosed):
            pass  # the connection is gone; the read loop ends the session
        finally:
            self._requests.pop(rid, None)

    # --- authorization -----------------------------------------------------------------------

    async def _allow(self, action: str, resource: str, ident: str) -> None:
        grant = self.grant
        if grant.admin or grant.allows(action, resource, ident):
            return
        task_id = None
        if resource == "runs" and any(s.startswith("read:tasks:") for s in grant.scopes):
            try:
                task_id = (await self.engine.get_record(ident)).task_id
            except RunwireError:
                task_id = None
        if not grant.allows(action, resource, ident, task_id=task_id):
            raise ForbiddenError(f"this credential may not {action} {resource} {ident!r}")

    # --- requests ----------------------------------------------------------------------------

    async def _read(self, frame: Read) -> None:
        await self._allow("read", "runs", frame.run)
        if frame.from_ < 0:
            raise _bad("'from' must be >= 0")
        if frame.timeout_s is not None and frame.timeout_s <= 0:
            raise _bad("'timeout_s' must be > 0 or null")
        reader = await self.engine.open_reader(frame.run, frame.stream, frame.from_)
        while True:
            start = reader.next
            try:
                batch = await reader.next_batch(frame.timeout_s)
            except ReadTimeout:
                await self.conn.send(End(re=frame.id, reason="timeout", next=reader.next))
                return
            if batch is None:
                await self.conn.send(End(re=frame.id, reason="complete", next=reader.next))
                return
            await self.conn.send(Chunks(re=frame.id, stream=frame.stream, start=start,
                                        items=[orjson.Fragment(item) for item in batch]))

    async def _append(self, frame: Append) -> None:
        await self._allow("write", "streams", frame.run)
        if frame.seq < 0 or not frame.producer:
            raise _bad("append needs a producer id and a 'seq' >= 0")
        nxt = await self.engine.append(frame.run, frame.stream, frame.producer, frame.seq,
                                       frame.items)
        await self.conn.send(Ack(re=frame.id, next_seq=nxt))

    async def _send(self, frame: Send) -> None:
        await self._allow("write", "inputStreams", frame.run)
        index = await self.engine.send_input(frame.run, frame.stream, frame.data, frame.key)
        await self.conn.send(Ack(re=frame.id, index=index))

    async def _trigger(self, frame: Trigger) -> None:
        await self._allow("trigger", "tasks", frame.task)
        record = await self.engine.trigger(frame.task, frame.payload, frame.options)
        await self.conn.send(Triggered(re=frame.id, run=record.id,
                                       token=self.engine.auth.run_token(record.id)))

    async def _subscribe(self, frame: Subscribe) -> None:
        await self._allow("read", "runs", frame.run)
        async for snapshot in self.engine.subscribe(frame.run):
            await self.conn.send(RunInfo(re=frame.id, run=snapshot))
        await self.conn.send(End(re=frame.id, reason="complete"))

    async def _retrieve(self, frame: Retrieve) -> None:
        await self._allow("read", "runs", frame.run)
        record = await self.engine.get_record(frame.run)
        await self.conn.send(RunInfo(re=frame.id, run=record.to_wire()))

    async def _cancel_run(self, frame: CancelRun) -> None:
        await self._allow("write", "runs", frame.run)
        await self.engine.cancel_run(frame.run)
        await self.conn.send(Ack(re=frame.id))


def _bad(message: str) -> RunwireError:
    from sdk import BadFrameError

    return BadFrameError(message)
