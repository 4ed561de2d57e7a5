"""The engine's one port: websockets at ``ws://HOST:PORT/v1``, HTTP on every other path.

Theory of operation: one trio TCP listener accepts every connection. Before reading a byte of
it, the server *peeks* (``MSG_PEEK``: the bytes stay in the socket) at the request line. A
``GET /v1`` goes to trio-websocket on the untouched socket stream, so the websocket path has
no wrapper and no extra copy between it and the socket (a websocket that stays open pays the
peek once). Everything else goes to the HTTP door (``_http``, ``_routes``). Either way the
handshake (the peek, or the websocket's) must finish within the engine's
``handshake_timeout``.

What it bounds before a session exists: one client address may hold at most
``max_connections_per_address`` TCP connections (websocket and HTTP; one more is closed as
soon as it is accepted, before a byte is read), and ``handshake_timeout`` counts from the
TCP accept to the websocket's ``hello`` (the peek, the upgrade and the hello share it), so a
socket that never says hello holds its slot for that long at most. Before ``hello`` a
websocket message may be at most ``max_hello_bytes``, after it ``max_message_bytes``
(counted in bytes; larger ones close the connection with 1009; trio-websocket checks while
it reads, so no more than the limit is ever buffered); at ``max_connections`` open sessions,
new websockets are refused with HTTP 503 before they are accepted (the session checks again,
exactly, after accepting). HTTP connections count against ``max_connections`` too; one over
it is answered ``503`` with ``Retry-After`` (code ``rate_limited``, as the websocket's refusal)
and closed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import trio
import trio_websocket

from runwire.transport import Connection, Role, wrap_server_stream

from ._http import HttpConnection
from ._requests import Door
from ._session import Session

log = logging.getLogger("runwire.engine")

PATH = "/v1"
#: The longest request line the peek waits for before it gives up on finding ``GET /v1``.
MAX_PEEK = 8192
#: Seconds between peeks while a request line is arriving in pieces.
PEEK_PAUSE = 0.002
#: Seconds an HTTP client refused at ``max_connections`` is told to wait (``Retry-After``).
BUSY_RETRY_AFTER = 1
#: trio-websocket's defaults, kept.
WS_DISCONNECT_TIMEOUT = 60.0

HttpHandlerFactory = Callable[[], Callable[..., Awaitable[None]]]


class EngineServer:
    """Serves websocket :class:`Session` s and HTTP on one port; knows where once it listens.

    Args:
        door: what every door of the engine shares (the service, auth, connection count).
        host, port: where to listen (``port=0`` picks a free port).
        http: the HTTP door's request handler (``None``: HTTP requests get 404).
    """

    def __init__(self, door: Door, host: str, port: int,
                 http: Callable[..., Awaitable[None]] | None = None) -> None:
        self.door = door
        self.host = host
        self.port = port
        self.http = http
        self.url: str | None = None  # once listening
        self.http_url: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Accept connections until cancelled; reports the websocket URL once listening."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        async with trio.open_nursery() as nursery:
            port = listeners[0].socket.getsockname()[1]
            self.port = port
            shown = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"ws://{shown}:{port}{PATH}"
            self.http_url = f"http://{shown}:{port}"
            log.info("runwire engine listening on %s (HTTP on %s)", self.url, self.http_url)
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.url)

    async def _connection(self, stream: trio.SocketStream) -> None:
        door = self.door
        address = _peer_address(stream)
        slot = ("conn", address)
        if address is not None and not door.take_slot(
                slot, door.limits.max_connections_per_address):
            await _close(stream)  # over the address's cap: not a byte read
            return
        try:
            await self._serve(stream, address)
        except BaseException as exc:  # a bug on one connection must end it, never the engine
            if _only_cancelled(exc):
                raise
            # (an error from a nursery comes in a group, often with a Cancelled; cancelling
            # is level-triggered in trio, so one swallowed here is raised again where due)
            log.exception("connection failed; closing it")
            await _close(stream)
        finally:
            if address is not None:
                door.free_slot(slot)

    async def _serve(self, stream: trio.SocketStream, address: str | None) -> None:
        websocket = False
        hello_by = trio.current_time() + self.door.limits.handshake_timeout
        try:
            with trio.move_on_at(hello_by) as peek:
                websocket = await self._wants_websocket(stream)
            if peek.cancelled_caught:  # no request line in time
                await _close(stream)
                return
        except OSError:
            await _close(stream)
            return
        if websocket:
            await self._websocket(stream, address, hello_by)
        else:
            await self._http(stream, address)

    @staticmethod
    async def _wants_websocket(stream: trio.SocketStream) -> bool:
        """Whether the request line (peeked, not read) is ``GET /v1`` (with a query or not)."""
        sock = stream.socket
        while True:
            head = await sock.recv(MAX_PEEK, socket.MSG_PEEK)
            if not head:
                return False  # closed: the HTTP side sees the end and leaves
            line, newline, _ = head.partition(b"\n")
            if newline or len(head) >= MAX_PEEK:
                parts = line.split(b" ")
                return (len(parts) >= 2 and parts[0] == b"GET"
                        and parts[1].split(b"?", 1)[0] == PATH.encode())
            await trio.sleep(PEEK_PAUSE)  # more of the line is on its way

    async def _http(self, stream: trio.SocketStream, address: str | None) -> None:
        door = self.door
        if self.http is None:
            await _close(stream)
            return
        conn = HttpConnection(stream, self.http, max_body=door.limits.max_http_body,
                              read_timeout=door.limits.http_read_timeout, address=address)
        if door.connections >= door.limits.max_connections:
            await conn.refuse(503, "rate_limited", "too many connections; try again later",
                              [("retry-after", str(BUSY_RETRY_AFTER))])
            return
        door.connections += 1
        try:
            await conn.serve()
        finally:
            door.connections -= 1

    async def _websocket(self, stream: trio.SocketStream, address: str | None,
                         hello_by: float) -> None:
        limits = self.door.limits
        async with trio.open_nursery() as nursery:
            request = None
            with trio.move_on_at(hello_by):
                try:
                    request = await wrap_server_stream(  # malformed frames: a close frame
                        nursery, stream, max_message_size=limits.max_hello_bytes)
                except trio_websocket.ConnectionClosed:
                    request = None
            try:
                if request is not None:
                    await self._handler(request, address, hello_by)
            finally:
                with trio.move_on_after(WS_DISCONNECT_TIMEOUT):
                    await _close(stream)
                nursery.cancel_scope.cancel()

    async def _handler(self, request: trio_websocket.WebSocketRequest, address: str | None,
                       hello_by: float) -> None:
        try:
            if self.door.connections >= self.door.limits.max_connections:
                await request.reject(503, body=b"too many connections\n")
                return
            ws = await request.accept()
        except trio_websocket.ConnectionClosed:
            return  # the client left (or reset) during the handshake: nobody to serve
        await Session(self.door, Connection(ws, Role.ENGINE), address=address,
                      hello_by=hello_by).serve()


def _only_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation (or a group of nothing else)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _peer_address(stream: trio.SocketStream) -> str | None:
    """The client's IP address (what the per-address caps count), if the socket has one."""
    try:
        peer = stream.socket.getpeername()
    except OSError:  # already reset
        return None
    return peer[0] if isinstance(peer, tuple) and peer else None


async def _close(stream: trio.abc.Stream) -> None:
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
