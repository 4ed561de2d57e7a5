"""A run's stream as Server-Sent Events, for web backends that forward it to a browser.

Theory of operation: :func:`sse_events` reads the stream (through the given client, or the
one ``connect()`` bound) and yields one SSE event per chunk, as bytes: ``id`` is the chunk's
index, so a browser's ``EventSource`` that reconnects sends ``Last-Event-ID`` and the read
resumes after it (:func:`sse_response` does that from the request's header). The stream's
end is an ``end`` event; an error (no such run, a timeout, a refused token) an ``error``
event with the wire code. Leaving the iteration early (the HTTP client went away: the ASGI
server cancels the response) stops the read on the engine at once.

Starlette (and FastAPI) are optional (``runwire[fastapi]``): only :func:`sse_response`
imports it, when called.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from ._errors import RunwireError
from ._streams import DEFAULT_KEY, _check_key, streams
from .runtime import Backend, current_backend

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

#: Headers an SSE response needs through proxies (no buffering, no caching).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: Any, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """One SSE event: ``data`` as JSON on one ``data:`` line (JSON has no raw newlines)."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}\n".encode())
    if event is not None:
        lines.append(f"event: {event}\n".encode())
    lines.append(b"data: " + orjson.dumps(data) + b"\n\n")
    return b"".join(lines)


def sse_events(run_id: str, key: str = DEFAULT_KEY, *, client: Backend | None = None,
               start_index: int = 0, timeout_in_seconds: float | None = None,
               ) -> AsyncIterator[bytes]:
    """Stream ``key`` of ``run_id`` as SSE events (bytes), from ``start_index``.

    Events: ``chunk`` (data: the chunk as JSON, id: its index), then ``end`` once the stream
    has ended, or ``error`` (data: ``{"code": ..., "message": ...}``).

    The arguments are checked, and the client found, at the call (not when the first event
    is asked for, which a web framework does after it has sent the response's headers).

    Raises:
        TypeError: ``run_id`` is not a non-empty string, or ``client`` is not a client.
        ValueError: a malformed key, ``start_index`` or ``timeout_in_seconds``.
        OutsideRunError: no ``client`` given and none bound here.
    """
    _check_read(run_id, key, start_index, timeout_in_seconds)
    return _events(run_id, key, current_backend(client), start_index, timeout_in_seconds)


def _check_read(run_id: Any, key: Any, start_index: Any, timeout: Any) -> None:
    if not isinstance(run_id, str) or not run_id:
        raise TypeError(f"run_id must be a non-empty string, not {run_id!r}")
    _check_key(key)
    if not isinstance(start_index, int) or isinstance(start_index, bool) or start_index < 0:
        raise ValueError(f"start_index must be an integer >= 0, not {start_index!r}")
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ValueError(f"timeout_in_seconds must be a positive number or None, "
                         f"not {timeout!r}")


async def _events(run_id: str, key: str, client: Backend, start_index: int,
                  timeout_in_seconds: float | None) -> AsyncIterator[bytes]:
    index = start_index
    try:
        reader = await streams.read(run_id, key, client=client, start_index=start_index,
                                    timeout_in_seconds=timeout_in_seconds)
        async with reader:
            async for chunk in reader:
                yield sse_event(chunk, event="chunk", id=index)
                index += 1
    except RunwireError as exc:
        yield sse_event({"code": exc.code, "message": exc.message}, event="error")
        return
    yield sse_event({"chunks": index}, event="end")


def last_event_id(value: str | None) -> int | None:
    """The chunk index a ``Last-Event-ID`` header names (``None``: no header).

    Raises:
        ValueError: it is not an index this helper sends (ASCII digits, at most 18).
    """
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ValueError(f"Last-Event-ID must be a chunk index (an integer >= 0), "
                         f"not {value[:40]!r}")
    return int(text)


def sse_response(run_id: str, key: str = DEFAULT_KEY, *, client: Backend | None = None,
                 request: Request | None = None,
                 timeout_in_seconds: float | None = None) -> StreamingResponse:
    """A Starlette/FastAPI ``StreamingResponse`` of :func:`sse_events`.

    With ``request``, a ``Last-Event-ID`` header (a reconnecting ``EventSource``) resumes
    after that chunk. A header that is not a chunk index is answered with status 400 and
    one ``error`` event (code ``bad_request``): an ``EventSource`` then stops instead of
    reconnecting with the same header, and nothing is read twice or skipped.

    Raises:
        ImportError: starlette is not installed (``pip install runwire[fastapi]``).
        TypeError, ValueError, OutsideRunError: as :func:`sse_events`.
    """
    try:
        from starlette.responses import StreamingResponse
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("sse_response needs starlette: pip install 'runwire[fastapi]'") \
            from exc
    start = 0
    if request is not None:
        try:
            last = last_event_id(request.headers.get("last-event-id"))
        except ValueError as exc:
            error = sse_event({"code": "bad_request", "message": str(exc)}, event="error")
            return StreamingResponse(iter((error,)), status_code=400,
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        if last is not None:
            start = last + 1
    return StreamingResponse(
        sse_events(run_id, key, client=client, start_index=start,
                   timeout_in_seconds=timeout_in_seconds),
        media_type="text/event-stream", headers=SSE_HEADERS)
