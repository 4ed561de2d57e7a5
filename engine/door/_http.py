"""HTTP/1.1 on a trio stream, with httptools (llhttp): read a request, hand it to a handler,
write the answer.

Theory of operation: one task per connection reads requests one at a time (keep-alive, no
pipelining in parallel). Bytes from the socket go to llhttp (``httptools``, C), whose callbacks
collect a request's target, headers and body; complete requests queue up in order. A request's
body is read whole before its handler runs, refused with 413 once it passes the door's
``max_body`` (by ``Content-Length`` before a byte of it is read, or while a chunked body
arrives), so no more than the limit is ever buffered; a request head may be at most
``MAX_HEAD_BYTES`` (431 beyond). The handler answers through the :class:`Exchange`: a whole
response (:meth:`Exchange.respond`, written as bytes in one send) or a streamed one
(:meth:`Exchange.start`, :meth:`Exchange.write`: chunked), each write waiting for the socket,
so a slow reader stalls only its own response (TCP pushes back; nothing queues).

Responses are framed as h11 (which this module used before llhttp, for a third of the CPU an
append cost) frames them: ``Content-Length`` on whole answers, ``Transfer-Encoding: chunked``
on streamed ones to HTTP/1.1 clients (an HTTP/1.0 client's ends with the connection), no body
for ``HEAD``, 204 and 304, ``Connection: close`` when the connection ends after the answer.

Every answer carries the headers the Durable Streams protocol asks of a server on every
response (``X-Content-Type-Options: nosniff``, ``Cross-Origin-Resource-Policy``) and CORS
headers, so browsers may read it. A handler's :class:`HttpError` becomes its status with a JSON
``{"code", "message"}`` body; any other exception is logged and answered with 500 (never a
stack trace on the wire). Malformed HTTP is answered with 400 (431, 413 for oversized heads
and bodies) and the connection is closed.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from http import HTTPStatus
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import parse_qsl, unquote

import httptools
import orjson
import trio

from ..store import client_message

log = logging.getLogger("runwire.engine")

#: Bytes read from the socket at a time.
RECEIVE_BYTES = 65536
#: A request head (request line and headers) may be at most this big (431 beyond).
MAX_HEAD_BYTES = 16 * 1024
#: After refusing malformed HTTP: read for at most this long, this many times, then close.
LINGER_SECONDS = 1.0
LINGER_READS = 16
#: Seconds an idle keep-alive connection is kept open.
IDLE_TIMEOUT = 75.0

#: Headers every response carries (the protocol's security headers, and CORS).
BASE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"cross-origin"),
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers",
     b"stream-next-offset, stream-cursor, stream-up-to-date, stream-closed, etag, "
     b"stream-ttl, stream-expires-at, producer-epoch, producer-seq, producer-expected-seq, "
     b"producer-received-seq, stream-sse-data-encoding, location, retry-after, content-type"),
]
_BASE = b"".join(name + b": " + value + b"\r\n" for name, value in BASE_HEADERS)
_STATUS_LINES: dict[int, bytes] = {}


class HttpError(Exception):
    """An answer other than success: a status, a wire ``code``, a message, extra headers."""

    def __init__(self, status: int, code: str, message: str = "",
                 headers: Iterable[tuple[str, str]] = (), *, body: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)
        self.body = body  # False: an empty body (the protocol's bare 409s, HEAD)


class _Stalled(Exception):
    """A request stopped arriving for ``read_timeout`` seconds."""


class _BadRequest(Exception):
    """Malformed or oversized HTTP: the status to answer it with, a wire code, why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Request:
    """One HTTP request: method, path (percent-decoded), query, headers, body."""

    __slots__ = ("body", "headers", "method", "path", "query", "raw_path")

    def __init__(self, method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]],
                 body: bytes) -> None:
        self.method = method
        raw, _, query = target.decode("latin-1").partition("?")
        self.raw_path = raw
        self.path = unquote(raw)
        self.query: dict[str, list[str]] = {}
        if query:
            for name, value in parse_qsl(query, keep_blank_values=True):
                self.query.setdefault(name, []).append(value)
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in headers:
            key = raw_name.decode("latin-1").lower()
            text = raw_value.decode("latin-1").strip(" \t")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        """A query parameter given at most once.

        Raises:
            HttpError: 400, it is given more than once.
        """
        values = self.query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise HttpError(400, "bad_request", f"the '{name}' parameter is given twice")
        return values[0]


class Exchange:
    """A request and the means to answer it."""

    def __init__(self, conn: HttpConnection, request: Request, keep_alive: bool = True) -> None:
        self.conn = conn
        self.request = request
        #: the connection stays open after this answer (HTTP/1.1, no ``Connection: close``)
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.peer_gone = False  # (then the connection's scope is cancelled)
        self._watch: tuple[trio.CancelScope, trio.Event] | None = None
        self._framing = b""  # a streamed answer's: b"chunked", b"close" or b"none" (HEAD)

    def watch(self) -> None:
        """Notice the client leaving from now on (before a long wait or a streamed answer):
        the handler is cancelled and the connection closed, instead of waiting for its next
        write (an SSE response idle for a minute, a long-poll) to find out."""
        if self._watch is None:
            self._watch = (trio.CancelScope(), trio.Event())
            self.conn.nursery.start_soon(self._watch_peer, *self._watch)

    async def _watch_peer(self, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                try:
                    data = await self.conn.stream.receive_some(RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if data:  # the next request, early: kept for the next cycle
                    self.conn.pending.append(bytes(data))
                else:
                    self.peer_gone = True
                    self.conn.scope.cancel()
        finally:
            done.set()

    async def unwatch(self) -> None:
        """Stop watching (the answer is done); returns once the socket is free to read."""
        if self._watch is not None:
            scope, done = self._watch
            scope.cancel()
            with trio.CancelScope(shield=True):  # (the connection's scope may be cancelled)
                await done.wait()

    async def respond(self, status: int, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"") -> None:
        """A whole response, in one write."""
        self.started = self.finished = True
        close = not self.keep_alive
        if self.request.method == "HEAD":
            data = response_head(status, headers, len(body), close)
        elif status in (204, 304):
            data = response_head(status, headers, None, close)
        else:
            data = response_head(status, headers, len(body), close) + body
        # the connection's next step is a read (which waits, or has waited), unless a
        # request is queued already: then this write takes its turn as send_all does
        await self.conn.send(data, pause=self.conn.queued())

    async def start(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Start a streamed response (chunked); :meth:`write` its parts."""
        self.started = True
        self.watch()
        headers = list(headers)
        if self.request.method == "HEAD":
            self._framing = b"none"
        elif self.conn.http10:  # no chunked encoding: the body ends with the connection
            self._framing = b"close"
            self.keep_alive = False
        else:
            self._framing = b"chunked"
        if not self.conn.http10:  # (HEAD: the header a GET would have, and no body)
            headers.append(("transfer-encoding", "chunked"))
        await self.conn.send(response_head(status, headers, None, not self.keep_alive))

    async def write(self, data: bytes, *, pause: bool = True) -> None:
        """A part of a streamed response (``pause``: see :meth:`HttpConnection.send`)."""
        if not data:
            return
        if self._framing == b"chunked":
            await self.conn.send(b"%x\r\n%b\r\n" % (len(data), data), pause=pause)
        elif self._framing == b"close":
            await self.conn.send(data, pause=pause)

    async def end(self) -> None:
        if not self.finished:
            self.finished = True
            if self._framing == b"chunked":
                await self.conn.send(b"0\r\n\r\n")


Handler = Callable[[Exchange], Awaitable[None]]


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %b\r\n" % (status, reason(status))
    return line


def response_head(status: int, headers: Iterable[tuple[str, str]], length: int | None,
                  close: bool) -> bytes:
    """A response's status line and headers: :data:`BASE_HEADERS`, ``headers``, then
    ``Content-Length`` (``length`` not ``None``) and ``Connection: close`` (``close``).

    Raises:
        ValueError: a header name or value holds a line break (never sent).
    """
    lines = []
    has_connection = False
    for name, value in headers:
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"a line break in the {name[:40]!r} response header")
        lines.append(f"{name}: {value}\r\n")
        has_connection = has_connection or name == "connection"
    if length is not None:
        lines.append(f"content-length: {length}\r\n")
    if close and not has_connection:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return status_line(status) + _BASE + "".join(lines).encode("latin-1")


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


class HttpConnection:
    """One HTTP/1.1 connection on a stream, serving requests until either side closes it.

    Its ``on_*`` methods are llhttp's callbacks (``httptools.HttpRequestParser``): they
    collect the request being read and queue it once complete.
    """

    def __init__(self, stream: trio.abc.Stream, handler: Handler, *, max_body: int,
                 read_timeout: float, address: str | None = None) -> None:
        self.stream = stream
        #: the client's IP address (``None``: unknown), for the per-address caps
        self.address = address
        self.handler = handler
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.nursery: trio.Nursery  # while serve() runs
        #: bytes read early (by :meth:`Exchange.watch`), parsed before the socket is read
        self.pending: list[bytes] = []
        #: the client speaks HTTP/1.0 (its last request did)
        self.http10 = False
        #: what every request of the connection runs in: its deadline is the read timeout
        #: while a read waits; cancelled when a watched client leaves (Exchange.watch)
        self.scope = trio.CancelScope()
        self._idle = True  # the last read waited between requests
        self._peer_gone = False
        #: the socket's descriptor, written to directly by :meth:`send` (-1: not a socket)
        self._fileno = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        #: a write was cut off partway: the connection can only be closed
        self._torn = False
        self._parser = httptools.HttpRequestParser(self)
        self._ready: deque[tuple[Request, bool]] = deque()
        self._broken: _BadRequest | None = None  # found after requests still to serve
        self._ended = False  # no request after the queued ones (an upgrade)
        self._in_message = False  # a request has begun and is not complete
        self._in_head = False
        self._head_bytes = 0  # the request head's size so far (its target and headers)
        self._head_fed = 0  # bytes fed while its head arrives
        self._continue = False  # the request waits for "100 Continue"
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()

    async def send(self, data: bytes, *, pause: bool = True) -> None:
        """Send all of ``data``, waiting for the socket as long as it takes.

        ``pause=False`` is for a write after which the task waits anyway (the connection's
        next read, an SSE response at its stream's tail): when the socket takes the whole
        of ``data`` at once (the usual case), return without the scheduling round trip
        that trio's ``send_all`` makes after every send (a pass of the event loop, about a
        tenth of the engine's work per durable stream append). Still a cancellation point;
        a socket that takes only part of it (a slow reader) gets the rest by ``send_all``.
        """
        if self._torn:
            raise trio.BrokenResourceError("an earlier write on this connection was cut off")
        fileno = self._fileno
        if not pause and fileno >= 0:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = os.write(fileno, data)  # (trio's sockets are non-blocking)
            except OSError:  # full (BlockingIOError), or broken: send_all says which
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        try:
            await self.stream.send_all(data)
        except BaseException:
            # cut off partway (cancelled: a token's expiry, a stop), the answer's framing is
            # broken: nothing more may follow it on this connection, which is closed
            self._torn = True
            raise

    def queued(self) -> bool:
        """Whether a whole request is waiting to be served (pipelined)."""
        return bool(self._ready)

    # --- llhttp's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        self._head_bytes = 0
        self._continue = False
        self._url = b""
        self._headers = []
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._grow_head(len(name) + len(value) + 4)

    def _grow_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _BadRequest(431, "bad_request", "the request head is too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        version = self._parser.get_http_version()
        self.http10 = version != "1.1"
        host = False
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _BadRequest(400, "bad_request", "a bad Content-Length") from None
                if length > self.max_body:
                    raise _BadRequest(413, "payload_too_large", f"a request body may be at "
                                                                f"most {self.max_body} bytes")
            elif name == b"host":
                host = True
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                self._continue = True
        if version == "1.1" and not host:
            raise _BadRequest(400, "bad_request", "Missing mandatory Host: header")

    def on_body(self, data: bytes) -> None:
        self._continue = False
        self._body += data
        if len(self._body) > self.max_body:
            raise _BadRequest(413, "payload_too_large",
                              f"a request body may be at most {self.max_body} bytes")

    def on_message_complete(self) -> None:
        self._in_message = self._in_head = self._continue = False
        keep_alive = not self.http10
        for name, value in self._headers:
            if name == b"connection" and b"close" in [
                    token.strip().lower() for token in value.split(b",")]:
                keep_alive = False
        method = self._parser.get_method().decode("ascii", "replace").upper()
        self._ready.append((Request(method, self._url, self._headers, bytes(self._body)),
                            keep_alive))

    # --- reading -------------------------------------------------------------------------------

    def _feed(self, data: bytes | bytearray) -> None:
        if self._broken is not None or self._ended:
            return
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # an Upgrade (or CONNECT) request: answered as any other, then the connection
            # closes (llhttp does not parse HTTP after one)
            self._ended = True
            if self._ready:
                request, _ = self._ready.pop()
                self._ready.append((request, False))
        except httptools.HttpParserCallbackError as exc:
            found = exc.__context__
            self._broken = found if isinstance(found, _BadRequest) else _BadRequest(
                400, "bad_request", str(exc))
        except httptools.HttpParserError as exc:
            self._broken = _BadRequest(400, "bad_request", str(exc) or "malformed HTTP")
        if self._in_head and self._broken is None:
            # bytes since the head began (at most one read's worth over: the read it began
            # in is counted whole, as h11 counted its buffer); llhttp keeps a header that
            # has not ended, so this bounds what it buffers
            self._head_fed = (self._head_fed if in_head else 0) + len(data)
            if self._head_fed > MAX_HEAD_BYTES:
                self._broken = _BadRequest(431, "bad_request", "the request head is too large")

    async def _receive(self, idle: bool) -> bytes | bytearray:
        """What the socket has, waiting at most ``IDLE_TIMEOUT`` (``idle``: between
        requests) or ``read_timeout`` seconds: the connection's scope has that deadline
        while it waits (and no other: a handler may take as long as it needs)."""
        scope = self.scope
        self._idle = idle
        scope.deadline = trio.current_time() + (IDLE_TIMEOUT if idle else self.read_timeout)
        try:
            return await self.stream.receive_some(RECEIVE_BYTES)
        finally:
            scope.deadline = math.inf

    async def _next_request(self) -> tuple[Request, bool] | None:
        """The next whole request and whether the connection stays open after it; ``None``
        when the client left, or idled between requests for ``IDLE_TIMEOUT`` seconds.

        Raises:
            _BadRequest: malformed or oversized HTTP.
            trio.Cancelled: the connection's scope's deadline struck (:meth:`_receive`).
        """
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._broken is not None:
                raise self._broken
            if self._ended:
                return None
            if self.pending:
                self._feed(self.pending.pop(0))
                continue
            if self._continue:
                self._continue = False
                await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            data = await self._receive(not self._in_message)
            if not data:
                return None  # the client left (mid-request or not)
            self._feed(data)

    async def serve(self) -> None:
        """Serve requests until the connection closes; never raises for the peer's doing."""
        async with trio.open_nursery() as self.nursery:  # for Exchange.watch
            try:
                with self.scope:
                    while (item := await self._next_request()) is not None:
                        exchange = Exchange(self, *item)
                        await self._handle(exchange)
                        if not (exchange.finished and exchange.keep_alive):
                            break
                if self.scope.cancelled_caught and not self._idle and not self._peer_gone:
                    raise _Stalled  # (idle between requests: closed quietly)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except _BadRequest as exc:  # malformed HTTP: answer it if we can
                await self._refuse(exc.status, exc.code, exc.message)
                await self._linger()
            except _Stalled:
                await self._refuse(408, "timeout", f"the request stopped arriving for "
                                                   f"{self.read_timeout:g} s")
            finally:
                await self._close()

    async def refuse(self, status: int, code: str, message: str,
                     headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer whatever request comes with this error, then close (the connection limit:
        the answer goes out at once, the request is read and dropped while we linger)."""
        try:
            await self._refuse(status, code, message, headers)
            await self._linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _linger(self) -> None:
        """Read (and drop) what the client still sends, briefly, before closing: closing
        with unread bytes resets the connection, and the client might lose our answer."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                for _ in range(LINGER_READS):
                    if not await self.stream.receive_some(RECEIVE_BYTES):
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _refuse(self, status: int, code: str, message: str,
                      headers: Iterable[tuple[str, str]] = ()) -> None:
        """An error answer and ``Connection: close`` (only ever between responses)."""
        try:
            body = error_body(code, message)
            await self.stream.send_all(response_head(status, [
                *headers, ("content-type", "application/json"), ("connection", "close")],
                len(body), True) + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _handle(self, exchange: Exchange) -> None:
        try:
            await self._answer(exchange)
        finally:
            if exchange.peer_gone:
                self._peer_gone = True
            await exchange.unwatch()
        if exchange.peer_gone:
            raise trio.ClosedResourceError("the client left")

    async def _answer(self, exchange: Exchange) -> None:
        try:
            await self.handler(exchange)
        except HttpError as exc:
            if exchange.started:
                return  # a streamed answer failed midway: close it below
            headers = [*exc.headers]
            body = b""
            if exc.body:
                headers.append(("content-type", "application/json"))
                body = error_body(exc.code, exc.message)
            await exchange.respond(exc.status, headers, body)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # a bug must answer 500 on this request, never end the engine
            log.exception("HTTP %s %s failed", exchange.request.method,
                          exchange.request.raw_path[:200])
            if not exchange.started:
                await exchange.respond(500, [("content-type", "application/json")],
                                       error_body("internal", client_message(exc) or
                                                  "internal error; see the engine log"))
            return
        if exchange.started and not exchange.finished:
            await exchange.end()
