"""HTTP/1.1 on a trio stream, with h11: read a request, hand it to a handler, write the answer.

Theory of operation: one task per connection reads requests one at a time (keep-alive, no
pipelining in parallel). A request's body is read whole before its handler runs, refused with
413 once it passes the door's ``max_body`` (by ``Content-Length`` before a byte of it is
read, or while a chunked body arrives), so no more than the limit is ever buffered. The
handler answers through the :class:`Exchange`: a whole response (:meth:`Exchange.respond`)
or a streamed one (:meth:`Exchange.start`, :meth:`Exchange.write`), each write waiting for
the socket, so a slow reader stalls only its own response (TCP pushes back; nothing queues).

Every answer carries the headers the Durable Streams protocol asks of a server on every
response (``X-Content-Type-Options: nosniff``, ``Cross-Origin-Resource-Policy``) and CORS
headers, so browsers may read it. A handler's :class:`HttpError` becomes its status with a JSON
``{"code", "message"}`` body; any other exception is logged and answered with 500 (never a
stack trace on the wire). Malformed HTTP is answered by h11's status (400, 413, 431) and the
connection is closed.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11
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
        for name, value in parse_qsl(query, keep_blank_values=True):
            self.query.setdefault(name, []).append(value)
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in headers:
            key = raw_name.decode("latin-1")  # h11 lowercases names
            text = raw_value.decode("latin-1")
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

    def __init__(self, conn: HttpConnection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.started = False
        self.finished = False
        #: the handler runs in it; cancelled when the client leaves while it is watched
        self.scope = trio.CancelScope()
        self.peer_gone = False
        self._watch: tuple[trio.CancelScope, trio.Event] | None = None

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
                if data:  # the next request, early: h11 keeps it for the next cycle
                    self.conn.h11.receive_data(bytes(data))
                else:
                    self.peer_gone = True
                    self.scope.cancel()
        finally:
            done.set()

    async def unwatch(self) -> None:
        """Stop watching (the answer is done); returns once the socket is free to read."""
        if self._watch is not None:
            scope, done = self._watch
            scope.cancel()
            await done.wait()

    async def respond(self, status: int, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"") -> None:
        """A whole response, in one write."""
        self.started = self.finished = True
        head = self.conn.head(status, headers)
        if self.request.method == "HEAD":
            head.append((b"content-length", str(len(body)).encode()))
            await self.conn.send(h11.Response(status_code=status, headers=head, reason=reason(status)),
                                 h11.EndOfMessage())
            return
        if status not in (204, 304):
            head.append((b"content-length", str(len(body)).encode()))
        events: list[Any] = [h11.Response(status_code=status, headers=head, reason=reason(status))]
        if body and status not in (204, 304):
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await self.conn.send(*events)

    async def start(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Start a streamed response (chunked); :meth:`write` its parts."""
        self.started = True
        self.watch()
        await self.conn.send(h11.Response(status_code=status, reason=reason(status),
                                          headers=self.conn.head(status, headers)))

    async def write(self, data: bytes) -> None:
        if data:
            await self.conn.send(h11.Data(data=data))

    async def end(self) -> None:
        if not self.finished:
            self.finished = True
            await self.conn.send(h11.EndOfMessage())


Handler = Callable[[Exchange], Awaitable[None]]


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


class HttpConnection:
    """One HTTP/1.1 connection on a stream, serving requests until either side closes it."""

    def __init__(self, stream: trio.abc.Stream, handler: Handler, *, max_body: int,
                 read_timeout: float) -> None:
        self.stream = stream
        self.handler = handler
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.nursery: trio.Nursery  # while serve() runs
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)

    def head(self, status: int, headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        out = list(BASE_HEADERS)
        out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
        return out

    async def send(self, *events: Any) -> None:
        data = b"".join(self.h11.send(event) or b"" for event in events)
        await self.stream.send_all(data)

    async def _next_event(self, first_wait: float | None = None) -> Any:
        """The next h11 event. The first read waits ``first_wait`` seconds if given (the
        idle time between requests: ``None`` on timeout), every other one ``read_timeout``.

        Raises:
            _Stalled: a read after the first brought nothing for ``read_timeout`` seconds.
        """
        wait = first_wait
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.h11.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[]))
            data = None
            with trio.move_on_after(self.read_timeout if wait is None else wait):
                data = await self.stream.receive_some(RECEIVE_BYTES)
            if data is None:
                if wait is not None:
                    return None  # idle between requests
                raise _Stalled
            wait = None
            self.h11.receive_data(bytes(data))

    async def serve(self) -> None:
        """Serve requests until the connection closes; never raises for the peer's doing."""
        async with trio.open_nursery() as self.nursery:  # for Exchange.watch
            try:
                while await self._serve_one():
                    self.h11.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except h11.RemoteProtocolError as exc:  # malformed HTTP: answer it if we can
                await self._refuse(exc.error_status_hint, "bad_request", str(exc))
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
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            body = error_body(code, message)
            await self.send(h11.Response(status_code=status, reason=reason(status), headers=self.head(status, [
                *headers, ("content-type", "application/json"),
                ("content-length", str(len(body))), ("connection", "close")])),
                h11.Data(data=body), h11.EndOfMessage())
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _serve_one(self) -> bool:
        event = await self._next_event(IDLE_TIMEOUT)
        if event is None or isinstance(event, h11.ConnectionClosed):
            return False  # idle too long, or the client left
        assert isinstance(event, h11.Request), event
        length = _content_length(event.headers)
        if length is not None and length > self.max_body:
            await self._refuse(413, "payload_too_large",
                               f"a request body may be at most {self.max_body} bytes")
            await self._linger()
            return False
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.max_body:
                    await self._refuse(413, "payload_too_large",
                                       f"a request body may be at most {self.max_body} bytes")
                    await self._linger()
                    return False
            elif isinstance(part, h11.EndOfMessage):
                break
            else:  # ConnectionClosed mid-body
                return False
        request = Request(event.method.decode("ascii", "replace").upper(), event.target,
                          event.headers, bytes(body))
        exchange = Exchange(self, request)
        await self._handle(exchange)
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _handle(self, exchange: Exchange) -> None:
        try:
            with exchange.scope:
                await self._answer(exchange)
        finally:
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


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
