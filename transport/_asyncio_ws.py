"""The client's websocket under asyncio: frames over the ``websockets`` library.

Under trio the client uses trio-websocket (``_connection.py``), which measures best there.
Under asyncio it uses ``websockets``' asyncio implementation, a well-kept library whose frame
parsing and masking run in C; it fits the client's needs exactly:

- ``recv()`` may be cancelled without losing data (the client's receiver hands the
  connection between tasks by cancelling a waiting receive, see ``sdk/_client.py``);
- ``send()`` writes a whole message into the transport's buffer before it waits for it to
  drain, so a cancelled send never leaves part of a message on the wire (the reason
  :class:`~runwire.transport.Connection` aborts a trio-websocket connection after one).

:class:`AsyncioConnection` has the part of :class:`~runwire.transport.Connection`'s
interface that a client uses (``send``, ``receive``, ``aclose``, ``closed``, and for liveness
``ping``, ``abort``, ``received_at``), built on anyio's primitives. Only the client side is
offered: the engine runs on trio. ``websockets``' own keepalive is off: the client pings
itself (``sdk/_client.py``), the same way under both backends.
"""

from __future__ import annotations

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ._close import CLOSE_UNSUPPORTED
from ._errors import ConnectionBroken, ConnectionClosed as TransportClosed
from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import Frame
from ._protocol import Protocol, Role


class AsyncioConnection:
    """A client connection: frames over a ``websockets`` connection (asyncio only).

    Args:
        ws: an open ``websockets.asyncio.client.ClientConnection``.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.protocol = Protocol(Role.CLIENT)
        self._ws = ws
        self._send_lock = anyio.Lock()
        self._closed = False
        #: anyio time the last frame was received (the start until then)
        self.received_at = anyio.current_time()

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, frame: Frame) -> None:
        """Send one frame.

        Raises:
            ConnectionClosed: this side closed the connection.
            ConnectionBroken: the peer went away.
            LocalProtocolError: the frame may not be sent in the current state.
        """
        async with self._send_lock:
            if self._closed:
                raise TransportClosed("connection closed")
            await anyio.lowlevel.checkpoint_if_cancelled()
            data = self.protocol.send(frame).decode()
            try:
                await self._ws.send(data)
            except ConnectionClosed as exc:
                raise self._lost(exc) from exc

    async def receive(self) -> Frame:
        """Wait for the next frame (see :meth:`runwire.transport.Connection.receive`).

        Raises:
            RemoteProtocolError: the engine sent a bad message.
            ConnectionBroken: the engine closed the connection or the link broke.
            ConnectionClosed: this side closed the connection.
        """
        if self._closed:
            raise TransportClosed("connection closed")
        try:
            message = await self._ws.recv()
        except ConnectionClosed as exc:
            raise self._lost(exc) from exc
        self.received_at = anyio.current_time()
        if isinstance(message, bytes):
            raise RemoteProtocolError("frames are text messages, not binary",
                                      close_code=CLOSE_UNSUPPORTED)
        try:
            return self.protocol.receive(message)
        except LocalProtocolError as exc:
            raise TransportClosed(str(exc)) from exc

    #: a websocket: :meth:`ping` works
    can_ping = True

    async def ping(self) -> None:
        """Send a websocket ping and wait for its pong (bound it with a timeout).

        Raises:
            ConnectionBroken: the link broke.
            ConnectionClosed: this side closed the connection.
        """
        if self._closed:
            raise TransportClosed("connection closed")
        try:
            pong = await self._ws.ping()
            await pong
        except ConnectionClosed as exc:
            raise self._lost(exc) from exc

    async def abort(self) -> None:
        """Drop the link at once, without a close handshake (the engine stopped answering):
        the receiving task sees :class:`ConnectionBroken`."""
        self._ws.transport.abort()
        await anyio.lowlevel.checkpoint()

    def _lost(self, exc: ConnectionClosed) -> ConnectionBroken | TransportClosed:
        if self._closed:
            return TransportClosed("connection closed")
        close = exc.rcvd
        code = close.code if close is not None else None
        reason = close.reason if close is not None else None
        return ConnectionBroken(f"connection closed by peer (code {code}: {reason})",
                                code=code, reason=reason)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection (bounded, best effort); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.protocol.close()
        with anyio.move_on_after(2, shield=True):
            try:
                await self._ws.close(code, reason or "")
            except Exception:  # the peer may already be gone; closing is best effort
                pass
        self._ws.transport.abort()  # no-op once closed; drops it if the handshake timed out


async def connect_websocket_asyncio(url: str, *, max_message_size: int = 64 * 1024 * 1024,
                                    connect_timeout: float = 10.0) -> AsyncioConnection:
    """Open a websocket to ``url`` under asyncio and wrap it as a client connection.

    Args:
        url: ``ws://host:port/v1`` (or ``wss://``).
        max_message_size: largest message accepted from the engine.
        connect_timeout: seconds to wait for the TCP and websocket handshakes.

    Raises:
        ConnectionBroken: the engine could not be reached.
    """
    try:
        ws = await connect(url, max_size=max_message_size, open_timeout=connect_timeout,
                           compression=None, proxy=None, max_queue=16,
                           ping_interval=None)  # as over trio-websocket: no client pings
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed) as exc:
        raise ConnectionBroken(f"cannot connect to {url}: {exc!r}") from exc
    return AsyncioConnection(ws)
