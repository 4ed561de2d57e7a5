"""The HTTP door: SSE against the websocket on the same engine, and durable-stream appends
against the reference Durable Streams server, each in the same run.

Three workloads, every client in a process of its own:

* **SSE read throughput**: one task pipes short string chunks (``bench_throughput``'s
  ``bench-pipe``); one reader triggers it and reads the stream to its end, either over the
  websocket (``runwire.connect`` + ``read``, ``bench_throughput``'s reader) or over HTTP
  (``POST /v1/api/tasks/bench-pipe/trigger``, then ``GET /v1/runs/{id}/streams/ai-output
  ?offset=-1&live=sse``). Chunks per second from trigger to the last chunk. Target: SSE at
  least 0.7x the websocket.
* **Live latency**: ``bench_latency``'s paced task (1,000 chunks/s, each ``[i, time_ns]``), read
  over the websocket and over SSE; p99 of the time from the writer's stamp to the reader.
  Target: SSE's p99 at most 2x the websocket's.
* **Append and read**: producers POST appends (one JSON item ``[i, time_ns]`` each) to a
  free-standing durable stream, then close it; a reader process tails it live with SSE from
  ``offset=-1``. Against runwire (``/v1/stream/...``, memory and SQLite stores) and the
  reference ``@durable-streams/server`` 0.3.7 (pinned in ``tests/conformance/package.json``,
  started from it with its defaults, in memory, on loopback by
  ``tests/conformance/reference_server.mjs``). Three writers (``Params.writers``), each its
  own process: ``h11``, a Python client (:class:`H11Client`), one request at a time on a
  keep-alive connection; ``wrk``, the C load generator wrk (Debian's ``wrk``) with
  ``tests/bench/ds_append.lua``, one request at a time on one connection; ``wrk x8``, wrk
  with eight connections on the same stream (eight appends in flight). The Python writer
  costs about as much CPU per append as the engine does (docs/performance.md), so with it
  the figure is largely the writer's; wrk's is a sixth of it (docs/performance.md). With
  ``wrk x8``, the connections that are free once the last append is sent send ``HEAD``
  requests to the stream until it is answered (wrk always sends): a little load the others
  do not have, counted in its server CPU. Throughput: items
  per second from the first item's stamp to the last item's arrival; latency: stamp to
  arrival. Target: runwire at least 2x the reference's throughput at a p99 no worse,
  checked for each writer on the pairs that keep the same promise: runwire's memory store
  against the reference's (both lose everything on a restart), and (``"durable"`` in
  ``parts``) runwire's SQLite store with ``?synchronous=full`` against the reference's
  file-backed store (``--data-dir``: each append fdatasync'ed), both durable through a power
  loss, with ``Params.durable_appends`` appends and the wrk writers. runwire's default SQLite
  store (``synchronous=normal``: survives a killed process, not a power loss) is measured and
  compared with the reference's memory store too, with the same target.

* **Floor** (``parts=("floor",)``, not in the default run): the append workload against
  :class:`_Floor`, the door's ``HttpConnection`` with a handler that only keeps each item,
  answers and forwards it to the SSE reader (no engine): what these clients on this machine
  allow a server, to read runwire's ratio against (docs/performance.md).

* **HTTP layer** (why the door's own, docs/architecture.md): the door's ``HttpConnection``
  (``engine/door/_http.py``, llhttp through httptools) and hypercorn's trio worker with an ASGI app, each answering
  the same small JSON to ``GET /ping`` on trio; one client sends sequential keep-alive
  requests. Requests per second and server CPU per request; no target. Skipped when hypercorn
  (a dev extra) is not installed.

The HTTP clients are h11 on trio sockets (:class:`H11Client`), the same for every server,
so the client costs the same on either side; the append workload's wrk writers are the same
for every server too.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import orjson
import trio

from ._baselines import chunk, latency_summary
from ._harness import (
    API_KEY,
    REPO,
    Report,
    Worker,
    emit,
    read_commands,
    serving,
    spawn,
    spawn_engine,
    store_url,
    temp_db,
    temp_dir,
    trio_worker,
    worker_main,
)

NAME = "http"
CONFORMANCE = REPO / "tests" / "conformance"
AUTH = [("authorization", f"Bearer {API_KEY}")]


@attrs.frozen
class Params:
    chunks: int = 200_000
    latency_chunks: int = 5_000
    rate: float = 1_000.0
    appends: int = 10_000
    pings: int = 10_000
    repeat: int = 5
    #: runwire's stores in the append workload (the reference keeps its streams in memory)
    stores: tuple[str, ...] = ("memory", "sqlite")
    #: which workloads run (these five by default; ``parts=("append",)`` for the append
    #: workload alone, e.g. ``bench_http.run(attrs.evolve(bench_http.QUICK,
    #: parts=("append",)))``; ``"durable"``: the durable stores' pair, ``"floor"`` adds the
    #: append workload on :class:`_Floor`)
    parts: tuple[str, ...] = ("read", "live", "append", "durable", "layer")
    #: the append workload's writers: ``"h11"`` (Python), ``"wrk"`` (one connection),
    #: ``"wrk x8"`` (eight connections); the wrk ones are skipped, with a note, without wrk
    writers: tuple[str, ...] = ("h11", "wrk", "wrk x8")
    #: appends per run of the durable pair (the reference's file-backed store does ~250/s)
    durable_appends: int = 3_000


FULL = Params()
QUICK = Params(chunks=50_000, latency_chunks=2_000, appends=3_000, pings=3_000, repeat=3,
               durable_appends=1_000)
SMOKE = Params(chunks=2_000, latency_chunks=100, appends=100, pings=100, repeat=1,
               stores=("memory",), durable_appends=50)
#: eight connections for the ``"wrk x8"`` writer
WRK_CONNECTIONS = {"wrk": 1, "wrk x8": 8}
WRK_SCRIPT = REPO / "tests" / "bench" / "ds_append.lua"


# --- an HTTP/1.1 client on h11 ---------------------------------------------------------------


class H11Client:
    """One keep-alive HTTP/1.1 connection: whole requests, or a response read as it comes."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def _connect(self) -> trio.SocketStream:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        return self.stream

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def _next(self) -> Any:
        assert self.stream is not None
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def _send(self, method: str, target: str, headers: list[tuple[str, str]],
                    body: bytes) -> h11.Response:
        stream = await self._connect()
        head = [("host", f"{self.host}:{self.port}"), *headers]
        if body or method in ("POST", "PUT"):
            head.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=head)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                return event

    async def _done(self) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            await self.aclose()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        response = await self._send(method, target, headers, body)
        out = bytearray()
        while not isinstance(event := await self._next(), h11.EndOfMessage):
            out += event.data
        await self._done()
        return response.status_code, _headers(response), bytes(out)

    async def chunks(self, target: str, headers: list[tuple[str, str]]
                     ) -> AsyncIterator[bytes]:
        """``GET target``: the body's parts as they arrive (raises on a status but 200)."""
        response = await self._send("GET", target, headers, b"")
        if response.status_code != 200:
            raise AssertionError(f"GET {target}: {response.status_code}")
        while not isinstance(event := await self._next(), h11.EndOfMessage):
            yield bytes(event.data)
        await self._done()


def _headers(response: h11.Response) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in response.headers}


async def sse_items(client: H11Client, path: str, headers: list[tuple[str, str]]
                    ) -> AsyncIterator[tuple[int, list[Any]]]:
    """A JSON durable stream's items, read live with SSE from the start to its close, as
    ``(arrival time_ns, items of one data event)``; reconnects from the last control
    event's offset when the server ends a response early (its SSE interval)."""
    offset = "-1"
    while True:
        buffer = b""
        async for part in client.chunks(f"{path}?offset={offset}&live=sse", headers):
            buffer += part
            *events, buffer = buffer.split(b"\n\n")
            now = time.time_ns()
            for event in events:
                kind, data = _sse_event(event)
                if kind == "data":
                    yield now, orjson.loads(data)
                elif kind == "control":
                    control = orjson.loads(data)
                    offset = control["streamNextOffset"]
                    if control.get("streamClosed"):
                        return


def _sse_event(block: bytes) -> tuple[str, bytes]:
    kind, data = "message", []
    for line in block.split(b"\n"):
        name, _, value = line.partition(b":")
        if name == b"event":
            kind = value.strip().decode()
        elif name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
    return kind, b"\n".join(data)


# --- client processes ----------------------------------------------------------------------


async def _trigger(client: H11Client, task_id: str, payload: dict[str, Any]) -> str:
    status, _, body = await client.request(
        "POST", f"/v1/api/tasks/{task_id}/trigger", [*AUTH, ("content-type",
                                                              "application/json")],
        orjson.dumps({"payload": payload}))
    if status != 201:
        raise AssertionError(f"trigger: {status} {body[:200]!r}")
    return str(orjson.loads(body)["id"])


async def _sse_read_once(base: str, n: int) -> dict[str, Any]:
    api, reader = H11Client(base), H11Client(base)
    cpu0, t0 = time.process_time(), time.perf_counter()
    run_id = await _trigger(api, "bench-pipe", {"n": n})
    count, first, last = 0, 0.0, None
    async for _, items in sse_items(reader, f"/v1/runs/{run_id}/streams/ai-output", AUTH):
        if not count:
            first = time.perf_counter()
        count += len(items)
        last = items[-1] if items else last
    seconds = time.perf_counter() - t0
    await api.aclose()
    await reader.aclose()
    if count != n or last != chunk(n - 1):
        raise AssertionError(f"read {count} chunks, last {last!r}; expected {n}")
    return {"chunks": count, "seconds": seconds, "rate": count / seconds,
            "first_chunk_ms": (first - t0) * 1e3, "cpu_s": time.process_time() - cpu0}


async def _sse_reader(args: dict[str, Any]) -> dict[str, Any]:
    await _sse_read_once(args["url"], 100)  # warm up, as the websocket reader does
    emit("WARM")
    return await _sse_read_once(args["url"], args["n"])


async def _sse_latency(args: dict[str, Any]) -> dict[str, Any]:
    api, reader = H11Client(args["url"]), H11Client(args["url"])
    run_id = await _trigger(api, "bench-paced-pipe", {"n": args["n"], "rate": args["rate"]})
    latencies = [(now - sent) / 1e6
                 async for now, items in sse_items(reader, f"/v1/runs/{run_id}/streams/stamps",
                                                   AUTH)
                 for _, sent in items]
    if len(latencies) != args["n"]:
        raise AssertionError(f"read {len(latencies)} chunks of {args['n']}")
    return latency_summary(latencies)


def _stream_target(args: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """Where the append workload's stream is on this server, and the credentials it needs."""
    if args["server"] == "runwire":
        return f"/v1/stream/{args['path']}", AUTH
    return f"/{args['path']}", []


async def _ds_reader(args: dict[str, Any]) -> dict[str, Any]:
    """Create the stream, tail it with SSE (``READY`` once connected), until it closes."""
    target, auth = _stream_target(args)
    client = H11Client(args["url"])
    status, _, body = await client.request("PUT", target,
                                           [*auth, ("content-type", "application/json")])
    if status != 201:
        raise AssertionError(f"PUT {target}: {status} {body[:200]!r}")
    emit("READY")
    cpu0 = time.process_time()
    latencies: list[float] = []
    first_sent = last_at = 0
    seen: set[int] = set()
    ordered = args.get("writers", 1) == 1  # several writers' items interleave
    async for now, items in sse_items(client, target, auth):
        for i, sent in items:
            if ordered and i != len(latencies):
                raise AssertionError(f"item {i} where {len(latencies)} was due")
            seen.add(i)
            first_sent = min(first_sent or sent, sent)
            latencies.append((now - sent) / 1e6)
        last_at = now
    count = len(latencies)
    if count != args["n"] or seen != set(range(count)):
        raise AssertionError(f"read {count} items ({len(seen)} distinct) of {args['n']}")
    seconds = (last_at - first_sent) / 1e9
    return {**latency_summary(latencies), "items": count, "seconds": seconds,
            "rate": count / seconds, "cpu_s": time.process_time() - cpu0}


async def _ds_writer(args: dict[str, Any]) -> dict[str, Any]:
    """POST ``n`` appends of one item each, one at a time, then close the stream."""
    target, auth = _stream_target(args)
    client = H11Client(args["url"])
    headers = [*auth, ("content-type", "application/json")]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(args["n"]):
        status, _, _ = await client.request(
            "POST", target, headers, b"[" + orjson.dumps([i, time.time_ns()]) + b"]")
        if status not in (200, 204):
            raise AssertionError(f"append {i}: {status}")
    seconds = time.perf_counter() - t0
    status, _, _ = await client.request("POST", target, [*auth, ("stream-closed", "true")])
    if status not in (200, 204):
        raise AssertionError(f"close: {status}")
    return {"appends": args["n"], "seconds": seconds, "rate": args["n"] / seconds,
            "cpu_s": time.process_time() - cpu0}


async def _ds_writer_wrk(args: dict[str, Any]) -> dict[str, Any]:
    """``n`` appends by wrk (``ds_append.lua``) on ``connections`` connections, then close
    the stream (one request of :class:`H11Client`); wrk's own CPU time is the writer's."""
    target, auth = _stream_target(args)
    wrk = shutil.which("wrk")
    assert wrk, "wrk is needed for this writer"
    command = [wrk, "-t1", f"-c{args['connections']}", "-d600s", "-s", str(WRK_SCRIPT),
               args["url"] + target, "--", str(args["n"]), target,
               *[value for _, value in auth]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with trio.fail_after(900):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                      check=False)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out, err = done.stdout.decode(), done.stderr.decode()
    if done.returncode != 0 or "answered" in err:  # (the reader checks every item came)
        raise AssertionError(f"wrk: exit {done.returncode}: {err[-500:]}{out[-500:]}")
    client = H11Client(args["url"])
    status, _, _ = await client.request("POST", target, [*auth, ("stream-closed", "true")])
    if status not in (200, 204):
        raise AssertionError(f"close: {status}")
    return {"appends": args["n"], "seconds": seconds, "rate": args["n"] / seconds,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


PING = b'{"ok":true}'


class _Floor:
    """The least a server can do for the append workload, on the door's ``HttpConnection``:
    keep each stream's items in a list, answer each append, and send each new item to the SSE
    readers (no store, no auth, no checks, the body's one item taken as is). What the append
    workload costs on this machine, its clients and their wake-ups included, with the
    engine's own work taken out: the floor under runwire's figure."""

    def __init__(self) -> None:
        self.items: dict[str, list[bytes]] = {}
        self.closed: set[str] = set()
        self.changed = trio.Event()

    async def __call__(self, exchange: Any) -> None:
        request = exchange.request
        path = request.path
        if request.method == "PUT":
            self.items.setdefault(path, [])
            await exchange.respond(201, [("content-type", "application/json"),
                                         ("stream-next-offset", _offset(0))])
        elif request.method == "POST":
            items = self.items[path]
            if request.body:
                items.append(request.body[1:-1])  # "[item]": the writer's one item
            if request.header("stream-closed"):
                self.closed.add(path)
            self.changed.set()
            self.changed = trio.Event()
            await exchange.respond(204, [("stream-next-offset", _offset(len(items)))])
        elif request.method == "HEAD":  # (wrk x8's connections after the last append)
            await exchange.respond(200, [("stream-next-offset",
                                          _offset(len(self.items[path])))])
        else:  # GET ...?offset=-1&live=sse
            await exchange.start(200, [("content-type", "text/event-stream")])
            position = 0
            while True:
                changed = self.changed  # (set by an append while the write below waits)
                items = self.items[path]
                new = items[position:]
                position = len(items)
                closed = path in self.closed
                control = {"streamNextOffset": _offset(position)}
                control.update({"streamClosed": True} if closed else {"upToDate": True})
                out = b"event: control\ndata:" + orjson.dumps(control) + b"\n\n"
                if new:
                    out = b"event: data\ndata:[" + b",".join(new) + b"]\n\n" + out
                await exchange.write(out)
                if closed:
                    return
                await changed.wait()


def _offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


async def _layer_server(args: dict[str, Any]) -> None:
    """``GET /ping`` on the door's ``HttpConnection`` or on hypercorn (ASGI), on trio; or
    (``floor``) :class:`_Floor` on the door's ``HttpConnection``."""
    async with trio.open_nursery() as nursery:
        if args["kind"] in ("door", "floor"):
            from runwire.engine.door._http import Exchange, HttpConnection

            floor = _Floor()

            async def ping(exchange: Exchange) -> None:
                if args["kind"] == "floor":
                    await floor(exchange)
                    return
                await exchange.respond(200, [("content-type", "application/json")], PING)

            async def connection(stream: trio.SocketStream) -> None:
                await HttpConnection(stream, ping, max_body=1 << 20, read_timeout=30).serve()

            listeners = await nursery.start(functools.partial(
                trio.serve_tcp, connection, 0, host="127.0.0.1"))
            url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        else:
            from hypercorn.config import Config
            from hypercorn.trio import serve

            async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
                if scope["type"] == "lifespan":
                    while (message := await receive())["type"] != "lifespan.shutdown":
                        await send({"type": "lifespan.startup.complete"})
                    await send({"type": "lifespan.shutdown.complete"})
                    return
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(PING)).encode())]})
                await send({"type": "http.response.body", "body": PING})

            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = config.errorlog = None
            bound = await nursery.start(lambda task_status: serve(
                app, config, task_status=task_status))
            url = bound[0]
        emit("READY", {"url": url})
        while await trio.to_thread.run_sync(read_commands, abandon_on_cancel=True) != "stop":
            pass
        emit("RESULT")
        nursery.cancel_scope.cancel()


async def _pinger(args: dict[str, Any]) -> dict[str, Any]:
    client = H11Client(args["url"])
    for _ in range(100):  # warm up
        await client.request("GET", "/ping", [])
    emit("WARM")
    t0 = time.perf_counter()
    for _ in range(args["n"]):
        status, _, body = await client.request("GET", "/ping", [])
        if status != 200 or body != PING:
            raise AssertionError(f"ping: {status} {body[:100]!r}")
    seconds = time.perf_counter() - t0
    return {"requests": args["n"], "seconds": seconds, "rate": args["n"] / seconds}


def _reference(args: dict[str, Any]) -> None:
    """Become the reference server (``exec``: the harness measures its process as is); with
    ``data_dir``, on its file-backed store in that folder."""
    node = shutil.which("node")
    assert node, "node is needed for the reference server"
    os.chdir(CONFORMANCE)
    data = ["--data-dir", args["data_dir"]] if args.get("data_dir") else []
    os.execv(node, [node, "reference_server.mjs", *data])


def worker(role: str, args: dict[str, Any]) -> None:
    roles = {"sse-read": _sse_reader, "sse-latency": _sse_latency, "ds-read": _ds_reader,
             "ds-write": _ds_writer, "ds-write-wrk": _ds_writer_wrk, "ping": _pinger}
    if role == "reference":
        _reference(args)
    elif role == "layer":
        trio.run(_layer_server, args)
    else:
        trio_worker(role, roles[role])(role, args)


# --- orchestration -------------------------------------------------------------------------


def reference_missing() -> str | None:
    """``None`` if the pinned reference server can be started, else why not."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (CONFORMANCE / "node_modules" / "@durable-streams" / "server").exists():
        return "tests/conformance/node_modules is not installed (npm ci --prefix tests/conformance)"
    return None


def wrk_missing() -> str | None:
    """``None`` if the wrk writers can run, else why not."""
    if shutil.which("wrk") is None:
        return "wrk is not on PATH (Debian: apt-get install wrk)"
    return None


def hypercorn_missing() -> str | None:
    try:
        import hypercorn.trio  # noqa: F401
    except ImportError as exc:
        return f"hypercorn is not installed ({exc}; pip install -e '.[dev]')"
    return None


def _http(url: str) -> str:
    return "http://" + url.removeprefix("ws://").removesuffix("/v1")


def run(params: Params = FULL) -> Report:
    report = Report(NAME)
    engine_tasks = ["tests.bench.bench_throughput", "tests.bench.bench_latency"]
    servers: dict[str, Worker] = {
        store: spawn_engine(store=store_url(store), tasks=engine_tasks)
        for store in dict.fromkeys(("memory", *params.stores))}
    missing = reference_missing()
    if missing:
        report.notes.append(f"reference server skipped: {missing}")
    else:
        servers["reference"] = spawn(__name__, "reference")
    writers = list(params.writers)
    if (missing := wrk_missing()) and any(w in WRK_CONNECTIONS for w in writers):
        report.notes.append(f"the wrk writers skipped: {missing}")
        writers = [w for w in writers if w not in WRK_CONNECTIONS]
    # (the durable pair runs with the wrk writers only)
    durable = "durable" in params.parts and "append" in params.parts and any(
        w in WRK_CONNECTIONS for w in writers)
    if durable:
        servers["sqlite-full"] = spawn_engine(store=temp_db() + "?synchronous=full",
                                              tasks=engine_tasks)
        if "reference" in servers:
            servers["reference-file"] = spawn(__name__, "reference", data_dir=temp_dir())
    layers = ["door"] if "layer" in params.parts else []
    if "floor" in params.parts:
        servers["floor"] = spawn(__name__, "layer", kind="floor")
    if not layers:
        pass
    elif missing := hypercorn_missing():
        report.notes.append(f"the HTTP layer comparison skipped: {missing}")
    else:
        layers.append("hypercorn")
    for kind in layers:
        servers[kind] = spawn(__name__, "layer", kind=kind)
    samples: dict[str, list[dict[str, Any]]] = {}
    with serving(servers) as urls:

        def measure(label: str, server: str, module: str, role: str, *, warm: bool = False,
                    **args: Any) -> None:
            with spawn(module, role, **args) as client:
                if warm:  # the engine's CPU for a reader's warm-up is not counted
                    client.expect("WARM", 600)
                cpu0 = servers[server].cpu_seconds()
                result = client.expect("RESULT", 600)
                client.wait()
            result["server_cpu_s"] = servers[server].cpu_seconds() - cpu0
            samples.setdefault(label, []).append(result)

        def append_and_read(server: str, writer: str, rep: int, n: int) -> None:
            url = urls[server] if server.startswith(("reference", "floor")) else _http(
                urls[server])
            connections = WRK_CONNECTIONS.get(writer, 1)
            args = {"url": url, "n": n, "writers": connections,
                    "server": "reference" if server.startswith("reference") else "runwire",
                    "path": f"bench/{server}-{writer.replace(' ', '')}-{rep}"}
            with spawn(__name__, "ds-read", **args) as reader:
                reader.expect("READY", 60)
                cpu0 = servers[server].cpu_seconds()
                role = "ds-write" if writer == "h11" else "ds-write-wrk"
                with spawn(__name__, role, connections=connections, **args) as producer:
                    wrote = producer.expect("RESULT", 900)
                    producer.wait()
                result = reader.expect("RESULT", 600)
                reader.wait()
            result["server_cpu_s"] = servers[server].cpu_seconds() - cpu0
            result["append_rate"] = wrote["rate"]
            result["writer_cpu_s"] = wrote["cpu_s"]
            samples.setdefault(_append_label(server, writer), []).append(result)

        memory = _http(urls["memory"])
        for rep in range(params.repeat):  # interleaved, so drift hits every variant alike
            if "read" in params.parts:
                measure("websocket read", "memory", "tests.bench.bench_throughput", "read",
                        warm=True, url=urls["memory"], task="bench-pipe", n=params.chunks)
                measure("SSE read", "memory", __name__, "sse-read", warm=True, url=memory,
                        n=params.chunks)
            if "live" in params.parts:
                measure("websocket live", "memory", "tests.bench.bench_latency", "read",
                        url=urls["memory"], task="bench-paced-pipe",
                        n=params.latency_chunks, rate=params.rate)
                measure("SSE live", "memory", __name__, "sse-latency", url=memory,
                        n=params.latency_chunks, rate=params.rate)
            for writer in writers if "append" in params.parts else ():
                for server in [*params.stores, "reference", "floor"]:
                    if server in urls:
                        append_and_read(server, writer, rep, params.appends)
                if writer == "h11":  # (the durable pair: wrk writers only, below)
                    continue
                for server in ("sqlite-full", "reference-file") if durable else ():
                    if server in urls:
                        append_and_read(server, writer, rep, params.durable_appends)
            for kind in layers:
                measure(f"GET /ping on {kind}", kind, __name__, "ping", warm=True,
                        url=urls[kind], n=params.pings)
    _summarise(report, samples, params, writers)
    return report


#: the append workload's servers, as its figures name them
SERVER_LABELS = {"memory": "runwire memory", "sqlite": "runwire sqlite",
                 "sqlite-full": "runwire sqlite synchronous=full", "reference": "reference",
                 "reference-file": "reference file-backed", "floor": "floor"}
#: (runwire, reference) pairs held to the target: the same promise on either side first
PAIRS = [("memory", "reference"), ("sqlite-full", "reference-file"), ("sqlite", "reference")]


def _append_label(server: str, writer: str) -> str:
    return f"append+read {SERVER_LABELS[server]}, {writer} writer"


def _summarise_appends(report: Report, samples: dict[str, list[dict[str, Any]]],
                       writer: str) -> None:
    """The append workload's figures with one writer, and its pairs' ratios and targets."""
    for server in SERVER_LABELS:
        label = _append_label(server, writer)
        if not (results := samples.get(label)):
            continue
        report.add(f"{label}: items/s", "items/s", [r["rate"] for r in results])
        report.add(f"{label}: server CPU/append", "us",
                   [r["server_cpu_s"] / r["items"] * 1e6 for r in results],
                   higher_is_better=False)
        report.add(f"{label}: writer CPU/append", "us",
                   [r["writer_cpu_s"] / r["items"] * 1e6 for r in results],
                   higher_is_better=False)
        report.add(f"{label}: reader CPU/item", "us",
                   [r["cpu_s"] / r["items"] * 1e6 for r in results], higher_is_better=False)
        for key in ("p50", "p99"):
            report.add(f"{label}: {key}", "ms", [r[f"{key}_ms"] for r in results],
                       higher_is_better=False)
    for ours, theirs in [*PAIRS, ("floor", "reference")]:
        mine, ref = _append_label(ours, writer), _append_label(theirs, writer)
        if mine not in samples or ref not in samples:
            continue
        # the same ratios taken within each repetition (the variants of a repetition run
        # back to back, so they share more of the machine's load), and the server CPU ratio
        # (steadier than wall-clock figures on a busy machine); figures, not checks
        pairs = list(zip(samples[mine], samples[ref], strict=True))
        name = f"append+read, {writer} writer: {SERVER_LABELS[ours]} / {SERVER_LABELS[theirs]}"
        report.add(f"{name} items/s, per repetition", "x",
                   [a["rate"] / b["rate"] for a, b in pairs])
        if ours == "floor":
            continue
        report.add(f"{name} server CPU per append, per repetition", "x",
                   [a["server_cpu_s"] / a["items"] / (b["server_cpu_s"] / b["items"])
                    for a, b in pairs], higher_is_better=False)
        name = f"append+read, {writer} writer: {SERVER_LABELS[ours]} vs {SERVER_LABELS[theirs]}"
        report.ratio(f"{name}: items/s", f"{mine}: items/s", f"{ref}: items/s", 2.0)
        report.ratio(f"{name}: p99", f"{mine}: p99", f"{ref}: p99", 1.0, at_least=False)


def _summarise(report: Report, samples: dict[str, list[dict[str, Any]]],
               params: Params, writers: list[str]) -> None:
    for label in ("websocket read", "SSE read"):
        if label not in samples:
            continue
        results = samples[label]
        report.add(f"{label}: chunks/s", "chunks/s", [r["rate"] for r in results])
        report.add(f"{label}: engine CPU/chunk", "us",
                   [r["server_cpu_s"] / r["chunks"] * 1e6 for r in results],
                   higher_is_better=False)
        report.add(f"{label}: reader CPU/chunk", "us",
                   [r["cpu_s"] / r["chunks"] * 1e6 for r in results], higher_is_better=False)
    if "read" in params.parts:
        report.ratio("SSE read vs websocket read", "SSE read: chunks/s",
                     "websocket read: chunks/s", 0.7)
    for label in ("websocket live", "SSE live"):
        for key in ("p50", "p99"):
            if label in samples:
                report.add(f"{label}: {key}", "ms", [r[f"{key}_ms"] for r in samples[label]],
                           higher_is_better=False)
    if "live" in params.parts:
        report.ratio("SSE live p99 vs websocket live p99", "SSE live: p99",
                     "websocket live: p99", 2.0, at_least=False)
    for writer in writers:
        _summarise_appends(report, samples, writer)
    for kind in ("door", "hypercorn"):
        if results := samples.get(f"GET /ping on {kind}"):
            report.add(f"GET /ping on {kind}: requests/s", "requests/s",
                       [r["rate"] for r in results])
            report.add(f"GET /ping on {kind}: server CPU/request", "us",
                       [r["server_cpu_s"] / r["requests"] * 1e6 for r in results],
                       higher_is_better=False)
    report.notes.append(
        f"read: {params.chunks} chunks; live: {params.latency_chunks} chunks at "
        f"{params.rate:g}/s; append+read: {params.appends} one-item appends "
        f"({params.durable_appends} for the durable pair), read live with SSE, writers "
        f"{', '.join(writers)}; reference: @durable-streams/server 0.3.7, in memory (its "
        "defaults) or file-backed (--data-dir)")


if __name__ == "__main__":
    worker_main(worker)
