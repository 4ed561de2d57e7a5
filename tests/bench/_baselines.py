"""Worker: the baselines every engine figure is compared with, measured in the same run.

Two servers and their clients, each in its own process:

* ``asyncio-server`` / ``asyncio-client``: a hand-rolled asyncio ``websockets`` server that
  sends each chunk as its own JSON message (what one writes without an engine). Compression
  is off on both sides and the JSON is orjson, so the baseline is as strong as it can be
  while staying one-message-per-chunk.
* ``trio-server`` / ``trio-client``: the raw limit of our stack: trio-websocket pushing the
  same chunks in 256-item orjson messages, with no engine, store or SDK in between.

A client opens one connection and sends one request (a JSON object with ``op``); the
asyncio server knows only ``push``, the trio server all three:

* ``push`` ``n``: the server sends chunks 0..n-1 as fast as it can, then ``{"end": n}``;
* ``paced`` ``n``, ``rate``: one chunk per message every ``1/rate`` s, each carrying the
  ``time.time_ns()`` at which it was sent;
* ``echo``: the server answers every message with itself (round trips, for triggering).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import trio
import trio_websocket

from ._harness import emit, percentile, read_commands, worker_main

BATCH = 256


def chunk(i: int) -> str:
    """The chunk every throughput benchmark sends: a short token-like string."""
    return f"tok{i:07d} "


# --- asyncio websockets ----------------------------------------------------------------------


async def _asyncio_handler(ws: Any) -> None:
    request = orjson.loads(await ws.recv())
    if request["op"] == "push":
        n = request["n"]
        for i in range(n):
            await ws.send(orjson.dumps({"i": i, "chunk": chunk(i)}).decode())
        await ws.send(orjson.dumps({"end": n}).decode())


async def _asyncio_serve() -> None:
    from websockets.asyncio.server import serve

    async with serve(_asyncio_handler, "127.0.0.1", 0, compression=None,
                     max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        emit("READY", {"url": f"ws://127.0.0.1:{port}"})
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, read_commands) != "stop":
            pass
        emit("RESULT")


async def _asyncio_push(url: str, n: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=None) as ws:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await ws.send(orjson.dumps({"op": "push", "n": n}).decode())
        count = 0
        async for message in ws:
            obj = orjson.loads(message)
            if "end" in obj:
                break
            count += 1
        seconds = time.perf_counter() - t0
        return {"chunks": count, "seconds": seconds, "rate": count / seconds,
                "cpu_s": time.process_time() - cpu0}


# --- trio-websocket ------------------------------------------------------------------------


async def _trio_handler(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        message = orjson.loads(await ws.get_message())
        if message["op"] == "push":
            n = message["n"]
            for start in range(0, n, BATCH):
                items = [chunk(i) for i in range(start, min(n, start + BATCH))]
                await ws.send_message(orjson.dumps(
                    {"type": "chunks", "start": start, "items": items}).decode())
            await ws.send_message(orjson.dumps({"type": "end", "next": n}).decode())
        elif message["op"] == "paced":
            await _trio_paced(ws, message["n"], message["rate"])
        elif message["op"] == "echo":
            while True:
                await ws.send_message(await ws.get_message())
    except trio_websocket.ConnectionClosed:
        pass


async def _trio_paced(ws: Any, n: int, rate: float) -> None:
    start = trio.current_time()
    for i in range(n):
        await trio.sleep_until(start + i / rate)
        await ws.send_message(orjson.dumps(
            {"type": "chunks", "start": i, "items": [[i, time.time_ns()]]}).decode())
    await ws.send_message(orjson.dumps({"type": "end", "next": n}).decode())


async def _trio_serve() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: trio_websocket.serve_websocket(
            _trio_handler, "127.0.0.1", 0, ssl_context=None, handler_nursery=nursery,
            task_status=task_status))
        emit("READY", {"url": f"ws://127.0.0.1:{server.port}"})
        while await trio.to_thread.run_sync(read_commands, abandon_on_cancel=True) != "stop":
            pass
        emit("RESULT")
        nursery.cancel_scope.cancel()


async def _trio_push(url: str, n: int) -> dict[str, Any]:
    async with trio_websocket.open_websocket_url(url) as ws:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await ws.send_message(orjson.dumps({"op": "push", "n": n}).decode())
        count = 0
        while True:
            frame = orjson.loads(await ws.get_message())
            if frame["type"] == "end":
                break
            for _item in frame["items"]:
                count += 1
        seconds = time.perf_counter() - t0
        return {"chunks": count, "seconds": seconds, "rate": count / seconds,
                "cpu_s": time.process_time() - cpu0}


async def _trio_paced_client(url: str, n: int, rate: float) -> dict[str, Any]:
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message(orjson.dumps({"op": "paced", "n": n, "rate": rate}).decode())
        latencies: list[float] = []
        while True:
            frame = orjson.loads(await ws.get_message())
            now = time.time_ns()
            if frame["type"] == "end":
                break
            latencies.extend((now - sent) / 1e6 for _, sent in frame["items"])
        return latency_summary(latencies)


async def _trio_echo(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """``n`` request/response round trips, ``concurrency`` connections at once."""
    per = max(1, n // concurrency)

    async def one() -> None:
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(orjson.dumps({"op": "echo"}).decode())
            for i in range(per):
                await ws.send_message(orjson.dumps({"type": "trigger", "id": i}).decode())
                orjson.loads(await ws.get_message())

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(one)
    seconds = time.perf_counter() - t0
    return {"calls": per * concurrency, "seconds": seconds,
            "rate": per * concurrency / seconds}


def latency_summary(latencies_ms: list[float]) -> dict[str, Any]:
    """p50/p99/max of one-way latencies in milliseconds."""
    return {"count": len(latencies_ms), "p50_ms": percentile(latencies_ms, 50),
            "p99_ms": percentile(latencies_ms, 99), "max_ms": max(latencies_ms, default=0.0)}


# --- dispatch ------------------------------------------------------------------------------


def worker(role: str, args: dict[str, Any]) -> None:
    if role == "asyncio-server":
        asyncio.run(_asyncio_serve())
    elif role == "asyncio-client":
        emit("RESULT", asyncio.run(_asyncio_push(args["url"], args["n"])))
    elif role == "trio-server":
        trio.run(_trio_serve)
    elif role == "trio-client":
        op = args["op"]
        if op == "push":
            result = trio.run(_trio_push, args["url"], args["n"])
        elif op == "paced":
            result = trio.run(_trio_paced_client, args["url"], args["n"], args["rate"])
        else:
            result = trio.run(_trio_echo, args["url"], args["n"], args.get("concurrency", 1))
        emit("RESULT", result)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    worker_main(worker)
