"""The HTTP door's routes: the JSON API, run streams as durable streams, a run's events, and
free-standing durable streams (``docs/http.md`` lists every route with a curl example).

Theory of operation: every request is authenticated from ``Authorization: Bearer <API key or
public token>`` into the same :class:`~._requests.Caller` the websocket session uses, so the
grants, scopes, rate limits, size limits and error codes are the same; a
:class:`runwire.RunwireError` becomes its HTTP status (:data:`STATUS`) and a JSON
``{"code", "message"}`` body; a store that is away (``StoreUnavailableError``, also behind
the service's ``InternalError``) becomes ``503`` with ``Retry-After`` (``._outage``).
Free-standing streams (``/v1/stream/...``) need the API key, unless the engine runs with
``anonymous_streams`` (what the published conformance suite needs, since it sends no
credentials).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson
import trio

from runwire import BadFrameError, RunwireError, UnauthorizedError

from ..run import Reader, RunUnreachableError
from ..service import DurableStreams, ReadResult, StreamError, format_offset, parse_offset
from ._http import Exchange, HttpError
from ._outage import OutageLog, outage_error, outage_event, store_outage, unavailable
from ._reads import serve_read
from ._requests import Caller, Door
from ._static import is_static, serve_static

#: A RunwireError's wire code -> its HTTP status.
STATUS = {
    "unauthorized": 401, "forbidden": 403, "not_found": 404, "unknown_task": 404,
    "run_finished": 409, "payload_too_large": 413, "stream_too_large": 413,
    "bad_frame": 422, "invalid_payload": 422, "rate_limited": 429, "timeout": 408,
    "waitpoint_timed_out": 409,
}
#: Seconds a client is told to wait after a 429.
RETRY_AFTER = 1
_CORS_PREFLIGHT = [
    ("access-control-allow-methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    ("access-control-allow-headers", "*, authorization, content-type"),
    ("access-control-max-age", "86400"),
]
_INT = re.compile(r"(0|[1-9]\d*)\Z")
MAX_SAFE = 2 ** 53 - 1
DS_PREFIX = "/v1/stream/"


def _http_error(exc: RunwireError) -> HttpError:
    status = STATUS.get(exc.code, 500)
    headers = [("retry-after", str(RETRY_AFTER))] if status == 429 else []
    if status == 401:
        headers.append(("www-authenticate", "Bearer"))
    return HttpError(status, exc.code, exc.message, headers)


def _stream_error(exc: StreamError) -> HttpError:
    return HttpError(exc.status, exc.code, exc.message, exc.headers,
                     body=exc.status not in (409,) or not any(
                         name == "stream-closed" for name, _ in exc.headers))


class HttpDoor:
    """The HTTP door's request handler (one per engine)."""

    def __init__(self, door: Door, streams: DurableStreams, clock: Callable[[], float], *,
                 anonymous_streams: bool = False) -> None:
        self.door = door
        self.streams = streams
        self.clock = clock
        self.anonymous_streams = anonymous_streams
        self.limits = door.limits
        self._outages = OutageLog()

    async def __call__(self, exchange: Exchange) -> None:
        self.door.open_requests += 1  # Engine.statistics() counts both doors' requests
        try:
            await self._route(exchange)
        finally:
            self.door.open_requests -= 1

    async def _route(self, exchange: Exchange) -> None:
        request = exchange.request
        try:
            if request.method == "OPTIONS":
                await exchange.respond(204, _CORS_PREFLIGHT)
                return
            path = request.path
            if path.startswith(DS_PREFIX):
                await self._durable_stream(exchange, path[len(DS_PREFIX):])
            elif path.startswith("/v1/api/"):
                await self._api(exchange, path[len("/v1/api/"):].split("/"))
            elif path.startswith("/v1/runs/"):
                await self._run_route(exchange, path[len("/v1/runs/"):].split("/"))
            elif is_static(path):  # the browser's modules and the dashboard (no credential)
                await serve_static(exchange)
            else:
                raise HttpError(404, "not_found", f"no route {request.raw_path[:200]!r}; see "
                                                  f"docs/http.md")
        except StreamError as exc:
            raise _stream_error(exc) from None
        except (HttpError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:
            outage = store_outage(exc)
            if outage is not None:  # the store is away: 503, not a bug's 500
                self._outages.warn(f"HTTP {request.method} {request.raw_path[:200]}: 503",
                                   outage)
                raise outage_error(outage, request.method) from None
            if isinstance(exc, RunUnreachableError):  # between engines: try again soon
                raise unavailable(str(exc)) from None
            if isinstance(exc, RunwireError):
                raise _http_error(exc) from None
            raise

    # --- credentials -----------------------------------------------------------------------

    def caller(self, exchange: Exchange) -> Caller:
        header = exchange.request.header("authorization")
        if header is None:
            raise UnauthorizedError("send Authorization: Bearer <API key or access token>")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
        return self.door.authenticate(token.strip())

    # --- the JSON API ----------------------------------------------------------------------

    async def _api(self, exchange: Exchange, parts: list[str]) -> None:
        method = exchange.request.method
        route = self._api_route(method, parts)
        if route is None:
            known = self._api_route_methods(parts)
            if known:
                raise HttpError(405, "method_not_allowed", f"use {' or '.join(known)} here",
                                [("allow", ", ".join(known))])
            raise HttpError(404, "not_found", "no such API route; see docs/http.md")
        caller = self.caller(exchange)
        status, answer = await route(caller, exchange)
        await exchange.respond(status, [("content-type", "application/json"),
                                        ("cache-control", "no-store")], orjson.dumps(answer))

    def _api_route(self, method: str, parts: list[str]) -> Any:
        match (method, parts):
            case ("POST", ["tasks", task_id, "trigger"]) if task_id:
                return lambda c, e: self._trigger(c, e, task_id)
            case ("GET", ["runs", run_id]) if run_id:
                return lambda c, e: self._retrieve(c, run_id)
            case ("GET", ["runs"]):
                return self._list_runs
            case ("POST", ["runs", run_id, "cancel"]) if run_id:
                return lambda c, e: self._cancel(c, run_id)
            case ("POST", ["runs", run_id, "inputs", key]) if run_id and key:
                return lambda c, e: self._send(c, e, run_id, key)
            case ("POST", ["waitpoints", token_id, "complete"]) if token_id:
                return lambda c, e: self._complete_waitpoint(c, e, token_id)
            case ("POST", ["tokens"]):
                return self._token
        return None

    def _api_route_methods(self, parts: list[str]) -> list[str]:
        return [m for m in ("GET", "POST") if self._api_route(m, parts) is not None]

    @staticmethod
    def _json_body(exchange: Exchange, *, required: bool = True) -> Any:
        body = exchange.request.body
        if not body.strip():
            if required:
                raise BadFrameError("the request needs a JSON body")
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadFrameError(f"the body is not JSON: {exc}") from None

    async def _trigger(self, caller: Caller, exchange: Exchange,
                       task_id: str) -> tuple[int, Any]:
        body = self._json_body(exchange, required=False) or {}
        if not isinstance(body, dict) or set(body) - {"payload", "options"}:
            raise BadFrameError('the body must be {"payload": ..., "options": {...}}')
        options = body.get("options")
        key = exchange.request.header("idempotency-key")
        if key is not None:  # the header is the HTTP way to give it
            options = {**(options if isinstance(options, dict) else {}),
                       "idempotency_key": key}
        record, token = await caller.trigger(task_id, body.get("payload"), options)
        return 201, {"id": record.id, "public_access_token": token}

    async def _retrieve(self, caller: Caller, run_id: str) -> tuple[int, Any]:
        return 200, await caller.retrieve(run_id)

    async def _list_runs(self, caller: Caller, exchange: Exchange) -> tuple[int, Any]:
        request = exchange.request
        limit_text = request.param("limit") or "20"
        if not _INT.match(limit_text) or not 1 <= int(limit_text) <= 100:
            raise BadFrameError("limit must be a whole number from 1 to 100")
        runs, cursor = await caller.list_runs(
            task=request.param("task"), status=_listed(request.query.get("status")),
            tags=_listed(request.query.get("tag")) or _listed(request.query.get("tags")),
            created_after=_time_param(request.param("created_after"), "created_after"),
            created_before=_time_param(request.param("created_before"), "created_before"),
            limit=int(limit_text), cursor=request.param("cursor"))
        return 200, {"runs": runs, "next_cursor": cursor}

    async def _cancel(self, caller: Caller, run_id: str) -> tuple[int, Any]:
        await caller.cancel_run(run_id)
        return 200, {"id": run_id, "canceled": True}

    async def _send(self, caller: Caller, exchange: Exchange, run_id: str,
                    key: str) -> tuple[int, Any]:
        data = self._json_body(exchange)
        ikey = exchange.request.header("idempotency-key")
        index = await caller.send(run_id, key, data, ikey)
        return 200, {"index": index}

    async def _complete_waitpoint(self, caller: Caller, exchange: Exchange,
                                  token_id: str) -> tuple[int, Any]:
        """The body is the data (JSON; none is ``null``). The first completion wins: a
        later one answers ``completed: false`` and the token as the first left it."""
        data = self._json_body(exchange, required=False)
        token, completed = await caller.complete_waitpoint(token_id, data)
        return 200, {"completed": completed, "waitpoint": token}

    async def _token(self, caller: Caller, exchange: Exchange) -> tuple[int, Any]:
        body = self._json_body(exchange)
        if not isinstance(body, dict) or set(body) - {"scopes", "expires_in"}:
            raise BadFrameError('the body must be {"scopes": [...], "expires_in": seconds}')
        token, expires_at = caller.create_token(body.get("scopes"), body.get("expires_in", 900))
        return 201, {"token": token, "expires_at": expires_at}

    # --- runs: streams and events ----------------------------------------------------------

    async def _run_route(self, exchange: Exchange, parts: list[str]) -> None:
        match parts:
            case [run_id, "streams", key] if run_id and key:
                self._read_only(exchange)
                caller = self.caller(exchange)
                with self.door.read_slot(caller.grant, exchange.conn.address):
                    await self._run_stream(exchange, caller, run_id, key)
            case [run_id, "events"] if run_id:
                self._read_only(exchange)
                caller = self.caller(exchange)
                with self.door.read_slot(caller.grant, exchange.conn.address):
                    await self._events(exchange, caller, run_id)
            case _:
                raise HttpError(404, "not_found", "no such run route; see docs/http.md")

    @staticmethod
    def _read_only(exchange: Exchange) -> None:
        if exchange.request.method not in ("GET", "HEAD"):
            raise HttpError(405, "method_not_allowed", "run streams are read-only: use GET",
                            [("allow", "GET, HEAD")])

    async def _run_stream(self, exchange: Exchange, caller: Caller, run_id: str,
                          key: str) -> None:
        reader = await caller.open_read(run_id, key, 0, None)
        source = RunStreamSource(reader)
        if exchange.request.method == "HEAD":
            headers = [("content-type", "application/json"),
                       ("stream-next-offset", format_offset(source.tail())),
                       ("cache-control", "no-store")]
            if source.closed():
                headers.append(("stream-closed", "true"))
            await exchange.respond(200, headers)
            return
        await serve_read(exchange, source, clock=self.clock(),
                         long_poll_timeout=self.limits.long_poll_timeout,
                         sse_interval=self.limits.sse_interval, expiry=caller.expiry_scope)

    async def _events(self, exchange: Exchange, caller: Caller, run_id: str) -> None:
        """One SSE response: the run's record on every change and every stream's chunks
        (event ``chunks``: ``{"stream", "offset", "items"}``), ending when the run is finished
        and every stream has ended (event ``end``).

        Every event's ``id`` is where the response stands after it (:func:`events_id`): a
        client that reconnects with ``Last-Event-ID`` gets the run's record again, then only
        the chunks after that point, and no ``stream_end`` it already had.
        """
        await caller.allow("read", "runs", run_id)
        await caller.retrieve(run_id)  # 404 before the response starts
        resume = parse_events_id(exchange.request.header("last-event-id"))
        await exchange.start(200, [("content-type", "text/event-stream"),
                                   ("cache-control", "no-cache")])
        lock = trio.Lock()
        positions, ended = dict(resume[0]), set(resume[1])

        async def emit(event: str, data: Any) -> None:
            async with lock:
                if event == "chunks":
                    positions[data["stream"]] = data["next"]
                    data = {k: v for k, v in data.items() if k != "next"}
                elif event == "stream_end":
                    ended.add(data["stream"])
                await exchange.write(b"event: " + event.encode() + b"\nid: "
                                     + events_id(positions, ended) + b"\ndata:"
                                     + orjson.dumps(data) + b"\n\n")

        async def follow(key: str) -> None:
            reader = await caller.open_read(run_id, key, positions.get(key, 0), None)
            while (batch := await reader.next_batch(None)) is not None:
                start = reader.next - len(batch)
                await emit("chunks", {"stream": key, "offset": format_offset(start),
                                      "items": orjson.Fragment(b"[" + b",".join(batch) + b"]"),
                                      "next": reader.next})
            await emit("stream_end", {"stream": key, "offset": format_offset(reader.next)})

        with caller.expiry_scope() as expiry:  # the response ends when its token does
            with trio.move_on_after(self.limits.sse_interval):
                try:
                    async with trio.open_nursery() as nursery:
                        followed = set(ended)
                        async for snapshot in caller.subscribe(run_id):
                            await emit("run", snapshot)
                            for key in snapshot.get("streams") or []:
                                if key not in followed:
                                    followed.add(key)
                                    nursery.start_soon(follow, key)
                except Exception as exc:
                    outage = store_outage(exc)
                    if outage is None:
                        raise
                    # the store went away: say so, end cleanly; Last-Event-ID resumes it
                    self._outages.warn(f"HTTP events of run {run_id} ended", outage)
                    async with lock:
                        await exchange.write(outage_event(outage))
                    return
                await emit("end", {"id": run_id})
        if expiry.cancelled_caught:
            await emit("error", {"code": "unauthorized", "message": "the access token has "
                                 "expired; reconnect with a new token and Last-Event-ID"})

    # --- free-standing durable streams -----------------------------------------------------

    async def _durable_stream(self, exchange: Exchange, path: str) -> None:
        request = exchange.request
        if not path or len(path) > 1024 or path.startswith("__ds"):
            raise HttpError(404, "not_found", "no such stream path")
        if not self.anonymous_streams or request.header("authorization") is not None:
            caller = self.caller(exchange)
            if not caller.grant.admin:
                raise HttpError(403, "forbidden", "durable streams need the engine's API key")
        method = request.method
        handlers = {"PUT": self._ds_put, "POST": self._ds_post, "GET": self._ds_get,
                    "HEAD": self._ds_head, "DELETE": self._ds_delete}
        handler = handlers.get(method)
        if handler is None:
            raise HttpError(405, "method_not_allowed", f"{method} is not a stream operation",
                            [("allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS")])
        await handler(exchange, path)

    async def _ds_put(self, exchange: Exchange, path: str) -> None:
        request = exchange.request
        ttl_text = request.header("stream-ttl")
        expires_text = request.header("stream-expires-at")
        if ttl_text is not None and expires_text is not None:
            raise HttpError(400, "bad_request", "give Stream-TTL or Stream-Expires-At, not both")
        ttl = None
        if ttl_text is not None:
            if not _INT.match(ttl_text.strip()) or int(ttl_text) > MAX_SAFE:
                raise HttpError(400, "bad_request", "Stream-TTL must be whole seconds")
            ttl = int(ttl_text)
        expires_at = _rfc3339(expires_text) if expires_text is not None else None
        fork = None
        source = request.header("stream-forked-from")
        if source is not None:
            source = source.strip()
            if source.startswith(DS_PREFIX):
                source = source[len(DS_PREFIX):]
            source = source.lstrip("/") if not self.streams.exists(source) else source
            offset_text = request.header("stream-fork-offset")
            offset = None
            if offset_text is not None:
                try:
                    offset = parse_offset(offset_text.strip())
                except StreamError as exc:
                    raise HttpError(400, "bad_request", exc.message) from None
            sub_text = request.header("stream-fork-sub-offset")
            sub = 0
            if sub_text is not None:
                if not _INT.match(sub_text.strip()) or int(sub_text) > MAX_SAFE:
                    raise HttpError(400, "bad_request", "Stream-Fork-Sub-Offset must be a "
                                                        "whole number")
                sub = int(sub_text)
            fork = (source, offset, sub)
        elif request.header("stream-fork-offset") or request.header("stream-fork-sub-offset"):
            raise HttpError(400, "bad_request", "a fork offset needs Stream-Forked-From")
        closed = _is_true(request.header("stream-closed"))
        created, meta = await self.streams.create(
            path, content_type=request.header("content-type"), ttl=ttl, expires_at=expires_at,
            closed=closed, body=request.body, fork=fork)
        headers = [("content-type", meta.content_type),
                   ("stream-next-offset", format_offset(meta.tail))]
        if meta.closed:
            headers.append(("stream-closed", "true"))
        if created:
            host = request.header("host") or "localhost"
            headers.append(("location", f"http://{host}{request.raw_path}"))
        await exchange.respond(201 if created else 200, headers)

    async def _ds_post(self, exchange: Exchange, path: str) -> None:
        request = exchange.request
        closing = _is_true(request.header("stream-closed"))
        body = request.body
        content_type = request.header("content-type")
        names = ("producer-id", "producer-epoch", "producer-seq")
        given = [request.header(name) for name in names]
        producer = None
        if any(value is not None for value in given):
            pid, epoch, seq = given
            if pid is None or epoch is None or seq is None or not pid.strip():
                raise HttpError(400, "bad_request", "Producer-Id, Producer-Epoch and "
                                                    "Producer-Seq go together")
            for name, value in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
                if not _INT.match(value.strip()) or int(value) > MAX_SAFE:
                    raise HttpError(400, "bad_request", f"{name} must be a whole number "
                                                        f"from 0 to 2^53-1")
            producer = (pid, int(epoch), int(seq))
        if not body and not closing:
            raise HttpError(400, "bad_request", "an empty append; send Stream-Closed: true "
                                                "to close")
        if body and content_type is None:
            if self.streams.exists(path):
                await self.streams.head(path)  # 404/410 first
            raise HttpError(400, "bad_request", "an append needs a Content-Type")
        result = await self.streams.append(
            path, content_type=content_type, body=body, closing=closing,
            seq=request.header("stream-seq"), producer=producer)
        headers = [("stream-next-offset", format_offset(result.meta.tail))]
        if result.meta.closed:
            headers.append(("stream-closed", "true"))
        if result.producer is not None:
            headers += [("producer-epoch", str(result.producer[0])),
                        ("producer-seq", str(result.producer[1]))]
        await exchange.respond(result.status, headers)

    async def _ds_head(self, exchange: Exchange, path: str) -> None:
        meta = await self.streams.head(path)
        headers = [("content-type", meta.content_type),
                   ("stream-next-offset", format_offset(meta.tail)),
                   ("cache-control", "no-store")]
        if meta.ttl is not None:
            headers.append(("stream-ttl", str(meta.ttl)))
        if meta.expires_at is not None:
            headers.append(("stream-expires-at", _format_time(meta.expires_at)))
        if meta.closed:
            headers.append(("stream-closed", "true"))
        await exchange.respond(200, headers)

    async def _ds_delete(self, exchange: Exchange, path: str) -> None:
        await self.streams.delete(path)
        await exchange.respond(204)

    async def _ds_get(self, exchange: Exchange, path: str) -> None:
        live = await self.streams.open_read(path)
        source = FreeStreamSource(self.streams, live, public=self.anonymous_streams)
        await serve_read(exchange, source, clock=self.clock(),
                         long_poll_timeout=self.limits.long_poll_timeout,
                         sse_interval=self.limits.sse_interval)


class RunStreamSource:
    """A run's output stream as a read-only JSON durable stream (position = chunk index)."""

    content_type = "application/json"
    cache = "private"

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.ident = f"{reader.run_id}/{reader.key}"

    def tail(self) -> int:
        return self.reader.stream.length

    def closed(self) -> bool:
        return self.reader.stream.ended

    async def read(self, start: int) -> ReadResult:
        reader = self.reader
        reader.next = start
        stream = reader.stream
        items: list[bytes] = []
        if start < stream.length:
            items = await reader.next_batch(None) or []
        done = reader.next >= stream.length
        return ReadResult(items, reader.next, done, done and stream.ended)

    async def wait(self, position: int, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self.reader.stream.wait_beyond(position)
            return True
        return False


class FreeStreamSource:
    """A free-standing durable stream, read."""

    def __init__(self, streams: DurableStreams, live: Any, *, public: bool) -> None:
        self.streams = streams
        self.live = live
        self.content_type = live.meta.content_type
        self.ident = live.meta.path + f"@{live.meta.created_at!r}"
        self.cache = "public" if public else "private"

    def tail(self) -> int:
        return int(self.live.meta.tail)

    def closed(self) -> bool:
        return bool(self.live.meta.closed)

    async def read(self, start: int) -> ReadResult:
        return await self.streams.read(self.live, start)

    async def wait(self, position: int, timeout: float) -> bool:
        return await self.streams.wait(self.live, position, timeout)


def events_id(positions: dict[str, int], ended: set[str]) -> bytes:
    """An events response's position: each stream's next chunk index and the streams that
    have ended, as base64url JSON ``{"o": {key: next}, "e": [key, ...]}`` (an SSE ``id``
    may hold no newline; keys may hold anything else)."""
    return base64.urlsafe_b64encode(orjson.dumps(
        {"o": positions, "e": sorted(ended)})).rstrip(b"=")


def parse_events_id(text: str | None) -> tuple[dict[str, int], set[str]]:
    """What :func:`events_id` made (nothing: the start).

    Raises:
        HttpError: 400, it is not one.
    """
    if text is None or not text.strip():
        return {}, set()
    try:
        raw = text.strip()
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        positions, ended = value["o"], value["e"]
        if (isinstance(positions, dict) and isinstance(ended, list)
                and all(isinstance(k, str) and type(v) is int and 0 <= v <= MAX_SAFE
                        for k, v in positions.items())
                and all(isinstance(k, str) for k in ended)):
            return positions, set(ended)
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        pass
    raise HttpError(400, "bad_request", "Last-Event-ID is not an id this engine sent")


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _listed(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [item for value in values for item in value.split(",") if item]


def _time_param(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return _rfc3339(text)
    except HttpError:
        raise BadFrameError(f"{name} must be seconds since the epoch or an RFC 3339 "
                            f"time") from None


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


def _rfc3339(text: str) -> float:
    text = text.strip()
    if not _RFC3339.match(text):
        raise HttpError(400, "bad_request", "Stream-Expires-At must be an RFC 3339 time")
    try:
        value = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise HttpError(400, "bad_request", "Stream-Expires-At must be an RFC 3339 "
                                            "time") from None
    return value.timestamp()


def _format_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")

