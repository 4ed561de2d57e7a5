"""Durable Streams reads over HTTP, for any stream: catch-up, ``live=long-poll``, ``live=sse``.

A :class:`ReadSource` is one stream as the protocol sees it (a run's output stream, or a
free-standing durable stream); :func:`serve_read` answers a ``GET`` on it exactly as the
protocol's sections 5.6-5.8, 8 and 10 say: offsets, ``Stream-Next-Offset``,
``Stream-Up-To-Date``, ``Stream-Closed``, ``Stream-Cursor``, ``ETag`` and ``304``,
``Cache-Control``. An SSE response is closed after ``Limits.sse_interval`` seconds (the
protocol's ~60 s) and the client resumes from the last control event's offset. Every write
waits for the socket: a stalled reader holds only its own response, never the stream.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable
from typing import Protocol

import orjson
import trio

from ..service import ReadResult, StreamError, cursor_for, format_offset, is_json, media_type
from ._http import Exchange, HttpError
from ._outage import outage_event, store_outage


class ReadSource(Protocol):
    """One stream, as a durable stream reader sees it."""

    content_type: str
    #: what makes ETags of this stream unique (its path, or run and key)
    ident: str
    #: ``public`` for streams anyone may read, ``private`` for ones behind a credential
    cache: str

    def tail(self) -> int: ...

    def closed(self) -> bool: ...

    async def read(self, start: int) -> ReadResult: ...

    async def wait(self, position: int, timeout: float) -> bool: ...


def encode_body(content_type: str, pieces: list[bytes]) -> bytes:
    if is_json(content_type):
        return b"[" + b",".join(pieces) + b"]"
    return b"".join(pieces)


def etag_of(source: ReadSource, start: int, end: int, closed: bool) -> str:
    ident = hashlib.blake2s(source.ident.encode(), digest_size=8).hexdigest()
    return f'"{ident}:{format_offset(start)}:{format_offset(end)}{":c" if closed else ""}"'


def _offset(source: ReadSource, text: str | None) -> tuple[int, bool]:
    """The position a read starts at, and whether it was ``now``."""
    if text == "now":
        return source.tail(), True
    if text is None:
        return 0, False
    try:
        from ..service import parse_offset

        return parse_offset(text), False
    except StreamError as exc:
        raise HttpError(400, "bad_request", exc.message) from None


#: What an SSE response that ends because its token expired sends last.
EXPIRED_EVENT = (b'event: error\ndata:{"code":"unauthorized","message":"the access token has '
                 b'expired; read again from the last offset with a new token"}\n\n')


def _no_expiry() -> trio.CancelScope:
    return trio.CancelScope()


def _expired() -> HttpError:
    return HttpError(401, "unauthorized", "the access token expired while the read waited; "
                     "read again with a new token", [("www-authenticate", "Bearer")])


async def serve_read(exchange: Exchange, source: ReadSource, *, clock: float,
                     long_poll_timeout: float, sse_interval: float,
                     expiry: Callable[[], trio.CancelScope] = _no_expiry) -> None:
    """Answer a ``GET`` of ``source`` (``clock``: wall-clock seconds now, for cursors).

    ``expiry`` makes a scope that is cancelled when the reader's token expires: a long-poll
    waiting then is answered ``401``; an SSE response sends :data:`EXPIRED_EVENT` and ends.
    """
    request = exchange.request
    text = request.param("offset")
    live = request.param("live")
    cursor = request.param("cursor")
    if text == "":
        raise HttpError(400, "bad_request", "an empty offset; use -1 for the start")
    if live not in (None, "long-poll", "sse"):
        raise HttpError(400, "bad_request", "live must be long-poll or sse")
    if live is not None and text is None:
        raise HttpError(400, "bad_request", f"live={live} needs an offset (-1 for the start)")
    start, now = _offset(source, text)
    if start > source.tail():
        raise HttpError(400, "bad_request", "the offset is beyond the stream's tail")
    if live == "sse":
        with expiry() as scope:
            try:
                await _sse(exchange, source, start, cursor, clock, sse_interval)
            except Exception as exc:
                outage = store_outage(exc)
                if outage is None or not exchange.started:
                    raise
                # the store went away mid-response: say so and end it cleanly; the client
                # reads again from the last control event's offset
                await exchange.write(outage_event(outage))
                return
        if scope.cancelled_caught:  # the token expired: say so, then end the response
            await exchange.write(EXPIRED_EVENT)
        return
    result = await source.read(start)
    if now and live is None:
        result = ReadResult([], start, True, source.closed())
    if not result.pieces and live == "long-poll" and not result.closed:
        exchange.watch()  # a client that gives up on the wait frees it at once
        with expiry() as scope:
            arrived = await source.wait(start, long_poll_timeout)
        if scope.cancelled_caught:
            raise _expired()
        if arrived:
            result = await source.read(start)
    headers = [("content-type", source.content_type),
               ("stream-next-offset", format_offset(result.next))]
    if result.up_to_date:
        headers.append(("stream-up-to-date", "true"))
    if result.closed:
        headers.append(("stream-closed", "true"))
    if live is not None and not result.closed:
        headers.append(("stream-cursor", cursor_for(clock, cursor)))
    if not result.pieces and live == "long-poll":
        headers.append(("cache-control", "no-store"))
        await exchange.respond(204, headers)
        return
    if now:
        headers.append(("cache-control", "no-store"))
    else:
        etag = etag_of(source, start, result.next, result.closed)
        headers.append(("etag", etag))
        headers.append(("cache-control",
                        f"{source.cache}, max-age=60, stale-while-revalidate=300"))
        if request.header("if-none-match") == etag:
            await exchange.respond(304, headers)
            return
    await exchange.respond(200, headers, encode_body(source.content_type, result.pieces))


def sse_data(content_type: str, pieces: list[bytes]) -> bytes:
    """One ``data`` event: JSON as an array, text as its lines, anything else base64."""
    if is_json(content_type):
        lines = [b"[" + b",".join(pieces) + b"]"]
    elif media_type(content_type).startswith("text/"):
        lines = b"".join(pieces).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    else:
        lines = [base64.b64encode(b"".join(pieces))]
    return b"event: data\n" + b"".join(b"data:" + line + b"\n" for line in lines) + b"\n"


def sse_control(fields: dict[str, object]) -> bytes:
    return b"event: control\ndata:" + orjson.dumps(fields) + b"\n\n"


async def _sse(exchange: Exchange, source: ReadSource, start: int, cursor: str | None,
               clock: float, interval: float) -> None:
    headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
               ("x-accel-buffering", "no")]
    ctype = media_type(source.content_type)
    if not (ctype == "application/json" or ctype.startswith("text/")):
        headers.append(("stream-sse-data-encoding", "base64"))
    await exchange.start(200, headers)
    position = start
    first = True
    with trio.move_on_after(interval):
        while True:
            result = await source.read(position)
            out = sse_data(source.content_type, result.pieces) if result.pieces else b""
            if result.pieces or first or result.closed:
                control: dict[str, object] = {"streamNextOffset": format_offset(result.next)}
                if result.closed:
                    control["streamClosed"] = True
                    control["upToDate"] = True
                else:
                    control["streamCursor"] = cursor_for(clock, cursor)
                    if result.up_to_date:
                        control["upToDate"] = True
                out += sse_control(control)
            # an event and its control in one chunk; at the tail, the wait below is this
            # task's pause (see HttpConnection.send)
            await exchange.write(out, pause=not result.up_to_date)
            first = False
            position = result.next
            if result.closed:
                return
            if result.up_to_date:
                await source.wait(position, math.inf)  # (the response's scope ends it)
