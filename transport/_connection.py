"""Thin trio adapters: a frame connection over a websocket or over an in-memory pair.

A :class:`Connection` owns a :class:`Protocol` and a message pipe (anything with
``send_message``/``get_message``/``aclose``). Sends are serialized by one lock; receiving is
done by one task (the owner's reader loop). Foreign exceptions (trio-websocket's, trio's) are
translated here, where they enter, into :class:`ConnectionBroken`.

A send cancelled while the pipe was writing may have put part of a message on the wire
(trio-websocket writes a message with ``send_all``, which a cancel can cut short). Nothing
may follow such a fragment, so the connection is then aborted: the TCP stream is closed
without a close frame and every later send raises :class:`ConnectionBroken`. In-memory
pipes send whole messages or nothing, so for them a cancelled send is harmless. Callers
that must be able to cancel a request without losing the connection send under a shield
(see ``engine/_session.py``).

**Sending without waiting** (:meth:`Connection.send_nowait`): the engine pushes live chunks
to readers from its commit cycle, synchronously, when that needs no waiting: the send lock
is free and the pipe takes the message now. Over a memory pipe that is the channel's
``send_nowait``. Over trio-websocket it is one non-blocking ``write`` of the encoded message
to the TCP socket; if the kernel takes only part of it, the rest is kept and the
connection's wire lock stays held until :meth:`Connection.flush` (or the next
:meth:`Connection.send`) writes it, so no other bytes -- not even trio-websocket's own pongs
or close frame -- can come between. That wire lock (:func:`_wire_lock`, a one-slot
``trio.Semaphore``) replaces trio-websocket's private ``_stream_lock``, because a
``trio.Lock`` may only be released by the task that took it. The fast path uses
trio-websocket's private ``_wsproto``, ``_stream`` and ``_stream_lock`` (checked when the
connection is made; without them, ``send_nowait`` returns ``False`` and everything goes
through :meth:`Connection.send`).
Only engine-side connections set this up; a client's trio-websocket is left as it is.

**Liveness** (issue 19, "dead links are noticed"): :meth:`Connection.ping` sends a websocket
ping and waits for its pong, :attr:`Connection.received_at` is when the last frame came, and
:meth:`Connection.abort` drops the TCP link without a close handshake (a link that does not
answer pings would not answer one either). Memory pipes cannot ping (:attr:`can_ping`).

**Server websockets** (:func:`wrap_server_stream`) are trio-websocket's, with three changes
(:class:`ServerWebSocket`): a malformed frame (a text message that is not UTF-8, a protocol
error) is answered with a close frame carrying wsproto's code (1007, 1002) before the TCP
close, where trio-websocket only drops the link (the peer would see 1006); message sizes are
counted in UTF-8 *bytes* (trio-websocket counts the characters of text messages, so a limit
of 16 MiB let 64 MiB of 4-byte characters in), and the time the first part of an unfinished
message arrived is kept (:attr:`ServerWebSocket.message_started`), so the engine can drop a
peer that leaves a message half-sent. The message limit can be changed after the connection
is open (:meth:`Connection.set_max_message_size`): small before ``hello``, larger after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any
from typing import Protocol as TypingProtocol

import trio
import trio_websocket
import wsproto
import wsproto.events
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage

from ._close import CLOSE_INTERNAL, CLOSE_UNSUPPORTED
from ._errors import ConnectionBroken, ConnectionClosed, LocalProtocolError, RemoteProtocolError
from ._frames import Frame
from ._protocol import Protocol, Role



class MessagePipe(TypingProtocol):
    """What a :class:`Connection` needs from the layer below: whole messages."""

    async def send_message(self, message: str) -> None: ...
    async def get_message(self) -> str | bytes: ...
    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class Connection:
    """Frames over a message pipe.

    Args:
        pipe: the message layer (a trio-websocket connection or one end of a memory pair).
        role: which side of the protocol this end speaks.
    """

    def __init__(self, pipe: MessagePipe, role: Role) -> None:
        self.protocol = Protocol(role)
        self._pipe = pipe
        self._send_lock = trio.Lock()
        self._closed = False
        self._torn = False
        #: trio time the last frame (or bad message) was received; the start until then
        self.received_at = _now()
        # only the engine pushes; a client's trio-websocket keeps its own lock
        self._direct = _DirectWrite.attach(pipe) if role is Role.ENGINE else None

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
        try:  # a free lock is taken without yielding: the send itself is the checkpoint
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            self._check_open()
            await self._finish_rest()
            # already cancelled: leave before a byte is written, and the connection works on
            # (a send cancelled part-way through the message must tear it down, below)
            await trio.lowlevel.checkpoint_if_cancelled()
            data = self.protocol.send(frame).decode()
            try:
                await self._send_raw(data)
            except trio.Cancelled:
                if not getattr(self._pipe, "atomic_sends", False):
                    await self._abort()
                raise
        finally:
            self._send_lock.release()

    def send_nowait(self, frame: Frame) -> bool:
        """Send ``frame`` now if that needs no waiting (see the module docstring).

        Returns ``True`` if the frame went out, or is committed to go out before anything
        else (its rest is written by :meth:`flush` or the next :meth:`send`); ``False`` if
        nothing was sent: the send lock is taken, the pipe is full or closed, or the pipe
        has no way to send without waiting. Then send it with :meth:`send`.

        Raises:
            LocalProtocolError: the frame may not be sent in the current state.
        """
        if self._closed or self._torn or self._send_lock.locked():
            return False
        write = self._direct.write if self._direct is not None else getattr(
            self._pipe, "send_nowait", None)
        if write is None:
            return False
        state = self.protocol.state
        data = self.protocol.send(frame)
        if write(data.decode()):
            return True
        self.protocol.state = state  # not sent: as if never asked
        return False

    @property
    def unflushed(self) -> bool:
        """A message :meth:`send_nowait` wrote in part waits for :meth:`flush`."""
        return self._direct is not None and bool(self._direct.rest)

    async def flush(self) -> None:
        """Write the rest of a message :meth:`send_nowait` wrote in part (if any).

        Raises:
            ConnectionBroken: the peer went away (or the flush was cancelled midway, which
                aborts the connection).
            ConnectionClosed: this side closed the connection.
        """
        if not self.unflushed:
            return
        async with self._send_lock:
            self._check_open()
            await self._finish_rest()

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosed("connection closed")
        if self._torn:
            raise ConnectionBroken("an earlier send was cut short; the connection was "
                                   "aborted")

    async def _finish_rest(self) -> None:
        """Under the send lock: write what ``send_nowait`` left unwritten."""
        if not self.unflushed:
            return
        assert self._direct is not None
        try:
            await self._direct.flush()
        except trio.Cancelled:
            await self._abort()
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._torn = True
            raise self._lost(exc) from exc

    async def _abort(self) -> None:
        """Drop the link without another byte: a close frame after a fragment could be
        read by the peer as the rest of the cut message."""
        self._torn = True
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                if not await _close_tcp(self._pipe):
                    await self._pipe.aclose(CLOSE_INTERNAL, "a message was cut short")
            except Exception:  # best effort: the peer sees the connection end either way
                pass
        _drop_parts(self._pipe)

    async def _send_raw(self, data: str) -> None:
        try:
            await self._pipe.send_message(data)
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            raise self._lost(exc) from exc

    async def receive(self) -> Frame:
        """Wait for the next frame.

        Raises:
            RemoteProtocolError: the peer sent a bad message; the connection still works
                unless the error carries a ``close_code``.
            ConnectionBroken: the peer closed the connection or the link broke.
            ConnectionClosed: this side closed the connection.
        """
        if self._closed:
            raise ConnectionClosed("connection closed")
        try:
            message = await self._pipe.get_message()
        except (trio_websocket.ConnectionClosed, trio.EndOfChannel, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            raise self._lost(exc) from exc
        self.received_at = trio.current_time()
        if isinstance(message, bytes):
            raise RemoteProtocolError("frames are text messages, not binary",
                                      close_code=CLOSE_UNSUPPORTED)
        try:
            return self.protocol.receive(message)
        except LocalProtocolError as exc:
            raise ConnectionClosed(str(exc)) from exc

    # --- liveness and limits (module docstring, "Liveness") ----------------------------------

    @property
    def can_ping(self) -> bool:
        """Whether :meth:`ping` works on this pipe (a websocket; not a memory pipe)."""
        return isinstance(self._pipe, trio_websocket.WebSocketConnection)

    async def ping(self) -> None:
        """Send a websocket ping and wait for its pong (bound it with a timeout).

        Raises:
            ConnectionBroken: the link broke (or the pipe cannot ping).
            ConnectionClosed: this side closed the connection.
        """
        if not isinstance(self._pipe, trio_websocket.WebSocketConnection):
            raise ConnectionBroken("this connection cannot ping")
        self._check_open()
        try:
            await self._pipe.ping()
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            raise self._lost(exc) from exc

    async def abort(self) -> None:
        """Drop the link at once, without a close handshake (a dead or hostile peer): the
        receiving task sees :class:`ConnectionBroken`, later sends raise it."""
        if self._closed or self._torn:
            return
        await self._abort()

    @property
    def message_started(self) -> float | None:
        """trio time the first part of a still unfinished incoming message arrived."""
        return getattr(self._pipe, "message_started", None)

    def set_max_message_size(self, size: int) -> None:
        """Largest message (in bytes) accepted from now on; larger ones close with 1009.
        Only server websockets (:class:`ServerWebSocket`) have a limit to change."""
        if isinstance(self._pipe, ServerWebSocket):
            self._pipe._max_message_size = size

    def _lost(self, exc: BaseException) -> ConnectionBroken | ConnectionClosed:
        """Closed by us (we closed it while the call waited), or broken by the peer."""
        if self._closed or isinstance(exc, trio.ClosedResourceError):
            return ConnectionClosed("connection closed")
        if isinstance(exc, trio_websocket.ConnectionClosed):
            return _broken(exc)
        return ConnectionBroken("connection lost")

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.protocol.close()
        with trio.move_on_after(2) as scope:
            scope.shield = True
            try:
                if self.unflushed and not self._torn:  # the close frame must follow it
                    assert self._direct is not None
                    await self._direct.flush()
                await self._pipe.aclose(code, reason)
            except Exception:  # the peer may already be gone; closing is best effort
                pass
            finally:
                # trio-websocket (0.12) returns early from aclose() on a connection the
                # peer reset, leaving its TCP socket open until garbage collection; and
                # a failed flush or close must not leave it open either
                with contextlib.suppress(Exception):
                    await _close_tcp(self._pipe)
                _drop_parts(self._pipe)


async def _pong_unless_closing(ws: trio_websocket.WebSocketConnection,
                               event: wsproto.events.Ping) -> None:
    """Answer a ping, unless this side has begun closing.

    trio-websocket (0.12) answers every ping, even one that arrives after it sent its close
    frame; wsproto then refuses the pong (``LocalProtocolError``) and the exception ends the
    connection's reader task and its nursery -- on the engine, the whole server. A pong is
    not owed once the close is under way (RFC 6455, 5.5.1), so it is simply not sent.
    """
    if ws._wsproto.state is not ConnectionState.OPEN:
        return
    await ws._send(event.response())


def _guard_pings(ws: object) -> None:
    """Make a client's trio-websocket connection answer pings as :class:`ServerWebSocket`
    does (before its reader task starts: the task looks its handlers up once)."""
    if isinstance(ws, trio_websocket.WebSocketConnection) and hasattr(ws, "_wsproto"):
        async def handle(event: wsproto.events.Ping) -> None:
            await _pong_unless_closing(ws, event)

        ws._handle_ping_event = handle  # type: ignore[method-assign]


def _drop_parts(pipe: object) -> None:
    """Let go of the parts of a message a closed trio-websocket connection was receiving.

    A connection object ends up in reference cycles (its reader task, exceptions and their
    tracebacks), so it is freed only by a full garbage collection, which comes rarely when
    little else is allocated (strings do not count towards it): measured on an engine
    process, 40 connections dropped with 15 MiB of a message each kept about 230 MB until
    then. Its buffers are not kept waiting for that.
    """
    if isinstance(pipe, trio_websocket.WebSocketConnection) and hasattr(pipe, "_message_parts"):
        pipe._message_parts = []
        pipe._message_size = 0


def _now() -> float:
    """trio's clock, or 0 outside a trio run (a connection made ahead, in sync code)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


async def _close_tcp(pipe: object) -> bool:
    """Close a trio-websocket connection's TCP stream; ``False`` for other pipes.

    trio-websocket has no public way to drop the socket without a close handshake; this is
    the one place that relies on its private ``_close_stream``.
    """
    close_stream = getattr(pipe, "_close_stream", None)
    if close_stream is None:
        return False
    await close_stream()
    return True


def _wire_lock() -> trio.Semaphore:
    """The lock that stands in for trio-websocket's ``_stream_lock``: a message
    :meth:`_DirectWrite.write` left half-written holds it (taken by no task in particular)
    until some task writes the rest. A one-slot semaphore: any task may release it, and
    ``release`` hands it straight to the longest waiter."""
    return trio.Semaphore(1, max_value=1)


class _DirectWrite:
    """Non-blocking writes of whole websocket messages to a trio-websocket's TCP socket."""

    def __init__(self, ws: trio_websocket.WebSocketConnection,
                 stream: trio.SocketStream) -> None:
        self.ws = ws
        self.stream = stream  # ws._stream, checked to be plain TCP by attach()
        self.baton = _wire_lock()
        # our semaphore stands in for trio-websocket's StrictFIFOLock (module docstring);
        # both have the async-with and acquire/release that trio-websocket uses
        ws._stream_lock = self.baton  # type: ignore[assignment]
        self.rest = b""

    @classmethod
    def attach(cls, pipe: object) -> _DirectWrite | None:
        """The fast path for ``pipe``, or ``None`` if it is not a plain-TCP trio-websocket
        connection with the private attributes this relies on (see the module docstring)."""
        if os.name != "posix" or not isinstance(pipe, trio_websocket.WebSocketConnection):
            return None
        stream = getattr(pipe, "_stream", None)
        if not (isinstance(stream, trio.SocketStream)
                and isinstance(getattr(pipe, "_stream_lock", None), trio.StrictFIFOLock)
                and hasattr(getattr(pipe, "_wsproto", None), "send")):
            return None
        return cls(pipe, stream)

    def write(self, message: str) -> bool:
        """Write one text message if the socket takes at least part of it now."""
        ws = self.ws
        if self.baton.value == 0 or ws.closed is not None:
            return False
        if ws._wsproto.state is not ConnectionState.OPEN:
            return False
        fd = self.stream.socket.fileno()
        if fd < 0:  # closed under us (the connection is being dropped)
            return False
        data = ws._wsproto.send(TextMessage(data=message))
        try:
            sent = os.write(fd, data)
        except OSError:  # full (EAGAIN) or broken: the caller's async send finds out which
            return False
        if sent < len(data):
            self.rest = data[sent:]
            self.baton.acquire_nowait()
        return True

    async def flush(self) -> None:
        """Write the rest of a half-written message, then let other writers go."""
        if not self.rest:  # (the rest was already taken by another flush)
            return
        rest, self.rest = self.rest, b""
        try:
            await self.stream.send_all(rest)
        finally:
            self.baton.release()


def _broken(exc: trio_websocket.ConnectionClosed) -> ConnectionBroken:
    reason = exc.reason
    code = getattr(reason, "code", None)
    text = getattr(reason, "reason", None)
    return ConnectionBroken(f"connection closed by peer (code {code}: {text})", code=code,
                            reason=text)


class ServerWebSocket(trio_websocket.WebSocketConnection):
    """trio-websocket's server connection, counting message sizes in bytes and noting when
    an unfinished message began (see the module docstring).

    Relies on trio-websocket's private ``_handle_message_event``, ``_message_size`` and
    ``_max_message_size`` (0.12); :func:`wrap_server_stream` checks they exist.
    """

    #: trio time the first part of the message being received arrived (None: none is)
    message_started: float | None = None

    async def _handle_ping_event(self, event: wsproto.events.Ping) -> None:
        await _pong_unless_closing(self, event)

    async def _handle_close_connection_event(self, event: Any) -> None:
        # wsproto reports a frame it cannot parse (a text message that is not UTF-8: 1007,
        # a protocol error: 1002) as a CloseConnection event while the connection is still
        # open; trio-websocket then drops the TCP connection without a close frame, so the
        # peer would see 1006. The close frame with wsproto's code is sent first (RFC 6455,
        # 7.1.7: "_Fail the WebSocket Connection_" sends a close frame with a status code).
        if self._wsproto.state is ConnectionState.OPEN:  # not the peer's close: ours
            with contextlib.suppress(Exception):  # the peer may be gone already
                await self._send(event)
        await super()._handle_close_connection_event(event)

    async def _handle_message_event(
            self, event: wsproto.events.BytesMessage | wsproto.events.TextMessage) -> None:
        data = event.data
        if isinstance(data, str) and not data.isascii():  # ASCII: a character is a byte
            # trio-websocket adds len(data), in characters; top it up to the UTF-8 bytes
            self._message_size += len(data.encode("utf-8", "surrogatepass")) - len(data)
        if self.message_started is None:
            self.message_started = trio.current_time()
        if event.message_finished:
            self.message_started = None
        await super()._handle_message_event(event)


_SERVER_PRIVATES = ("_handle_message_event", "_handle_close_connection_event", "_get_request",
                    "_reader_task")


async def wrap_server_stream(nursery: trio.Nursery, stream: trio.abc.Stream, *,
                             max_message_size: int) -> trio_websocket.WebSocketRequest:
    """``trio_websocket.wrap_server_stream`` with a :class:`ServerWebSocket`.

    Args:
        nursery: where the connection's reader task runs.
        stream: the accepted TCP stream.
        max_message_size: the message limit in bytes until
            :meth:`Connection.set_max_message_size` changes it.

    Raises:
        trio_websocket.ConnectionClosed: the peer left during the handshake.
    """
    if not all(hasattr(trio_websocket.WebSocketConnection, name) for name in _SERVER_PRIVATES):
        return await trio_websocket.wrap_server_stream(  # an unknown trio-websocket: as is
            nursery, stream, max_message_size=max_message_size)
    ws = ServerWebSocket(stream, wsproto.WSConnection(wsproto.ConnectionType.SERVER),
                         max_message_size=max_message_size)
    nursery.start_soon(ws._reader_task)
    return await ws._get_request()


# --- in-memory pair ------------------------------------------------------------------------


class MemoryPipe:
    """One end of an in-memory message pipe; the peer sees our close as a broken link."""

    #: A message is sent whole or not at all, even when the send is cancelled.
    atomic_sends = True

    def __init__(self, send: trio.MemorySendChannel[str],
                 receive: trio.MemoryReceiveChannel[str]) -> None:
        self._send = send
        self._receive = receive
        self.close_code: int | None = None
        self.peer: MemoryPipe | None = None

    async def send_message(self, message: str) -> None:
        await self._send.send(message)

    def send_nowait(self, message: str) -> bool:
        """Send ``message`` if the channel has room now (``False``: it was not sent)."""
        try:
            self._send.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def get_message(self) -> str | bytes:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            code = self.peer.close_code if self.peer else None
            raise ConnectionBroken(f"connection closed by peer (code {code})",
                                   code=code) from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.close_code = code
        await self._send.aclose()
        await self._receive.aclose()


def memory_pipe_pair(buffer: int = 64) -> tuple[MemoryPipe, MemoryPipe]:
    """Two connected in-memory pipes (client end, engine end)."""
    a_send, b_receive = trio.open_memory_channel[str](buffer)
    b_send, a_receive = trio.open_memory_channel[str](buffer)
    a, b = MemoryPipe(a_send, a_receive), MemoryPipe(b_send, b_receive)
    a.peer, b.peer = b, a
    return a, b


def memory_connection_pair(buffer: int = 64) -> tuple[Connection, Connection]:
    """A client connection and an engine connection joined in memory (tests, in-process)."""
    client, engine = memory_pipe_pair(buffer)
    return Connection(client, Role.CLIENT), Connection(engine, Role.ENGINE)


# --- websocket ------------------------------------------------------------------------------


async def connect_websocket(nursery: trio.Nursery, url: str, *,
                            max_message_size: int = 64 * 1024 * 1024,
                            connect_timeout: float = 10.0) -> Connection:
    """Open a websocket to ``url`` and wrap it as a client :class:`Connection`.

    Args:
        nursery: where trio-websocket runs the connection's background reader; it must
            outlive the connection.
        url: ``ws://host:port/v1``.
        max_message_size: largest message accepted from the engine.
        connect_timeout: seconds to wait for the TCP and websocket handshakes.

    Raises:
        ConnectionBroken: the engine could not be reached.
    """
    try:
        with trio.fail_after(connect_timeout):
            ws = await nursery.start(_run_websocket, url, max_message_size)
    except trio.TooSlowError as exc:
        raise ConnectionBroken(f"cannot connect to {url}: timed out") from exc
    return Connection(ws, Role.CLIENT)


async def _run_websocket(url: str, max_message_size: int, *,
                         task_status: trio.TaskStatus[trio_websocket.WebSocketConnection]
                         ) -> None:
    """Run trio-websocket's reader for one client websocket, in a nursery of its own.

    trio-websocket reports a refused handshake (an HTTP 503, say) from its background
    reader, not from ``connect_websocket_url``; running it here turns that, like every
    failure before the websocket is open, into :class:`ConnectionBroken` for the caller.
    """
    opened = False
    try:
        async with trio.open_nursery() as inner:
            watch = _ReaderWatch(inner)
            with watch.scope:
                # trio-websocket asks for a Nursery but only calls its start_soon, which
                # _ReaderWatch provides
                ws = await trio_websocket.connect_websocket_url(
                    watch, url,  # type: ignore[arg-type]
                    max_message_size=max_message_size, message_queue_size=16)
            if not watch.scope.cancelled_caught:
                opened = True
                task_status.started(ws)
    except BaseException as exc:
        cause = _single(exc)
        if isinstance(cause, (OSError, trio_websocket.HandshakeError)):
            raise ConnectionBroken(f"cannot connect to {url}: {cause!r}") from cause
        raise
    if not opened:
        raise ConnectionBroken(f"cannot connect to {url}: the connection was reset during "
                               f"the websocket handshake")


class _ReaderWatch:
    """A nursery stand-in for ``connect_websocket_url`` that notices its reader ending.

    trio-websocket 0.12 waits for the opening handshake forever (until our timeout) when the
    TCP stream is reset during it: its reader task ends without waking the waiter. Ending
    the wait when the reader ends turns that into an immediate :class:`ConnectionBroken`.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.scope = trio.CancelScope()

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object,
                   name: object = None) -> None:
        """``Nursery.start_soon``, with the reader watched."""
        _guard_pings(getattr(fn, "__self__", None))  # the reader is the connection's method
        async def watched() -> None:
            try:
                await fn(*args)
            finally:
                self.scope.cancel()  # a no-op once the handshake is over
                # the reader is over, so is the connection: close its TCP socket, which
                # trio-websocket leaves open when the reset came during the handshake
                with trio.CancelScope(shield=True):
                    await _close_tcp(getattr(fn, "__self__", None))

        self._nursery.start_soon(watched, name=name or fn)


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
