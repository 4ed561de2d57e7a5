"""Three engine processes on one real redis-server (``redis://``): any engine answers any
request. Cross-engine reads, sends (to a run suspended in ``wait()``), cancels and
subscriptions; an engine killed with SIGKILL mid-stream, its runs taken over by another
engine while readers elsewhere read on to the stream's end; an external producer that
reconnects to another engine (through a proxy standing in for the load balancer) and is
deduplicated exactly once; a free-standing durable stream made on one engine, appended on
another and read live on the third (more of those in ``test_redis_dstreams.py``)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from runwire import InternalError, RunFinishedError, RunStatus, connect, runs

from . import redis_tasks as rt
from .faultproxy import open_fault_proxy
from .helpers import API_KEY, bounded
from .redisserver import RedisServer, redis_url

REPO = Path(__file__).resolve().parents[1]
#: Short leases so a killed engine's runs are taken over within seconds.
LEASE = 1.5


class Node:
    """``python -m runwire.engine serve`` on a Redis store, in a subprocess."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url: str | None = None
        self.ready = trio.Event()

    async def read_output(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for data in self.process.stdout:
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    self.lines.append(text)
                    found = re.search(r"serving (ws://\S+)", text)
                    if found and self.url is None:
                        self.url = found.group(1)
                        self.ready.set()
        finally:
            self.ready.set()

    @property
    def port(self) -> int:
        assert self.url is not None
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    async def kill(self) -> None:
        self.process.kill()
        await self.process.wait()


@contextlib.asynccontextmanager
async def cluster(count: int, base: str | None = None) -> AsyncIterator[tuple[str, list[Node]]]:
    """``count`` engines on one Redis store (a fresh key prefix), started in parallel."""
    url = (base or redis_url()) + f"&lease_ttl={LEASE}"
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "runwire.engine", "serve", "--tasks", "tests.redis_tasks",
                 "--store", url, "--port", "0", "--api-key", API_KEY, "--drain-timeout", "1",
                 "--log-level", "WARNING"],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            node = Node(process)
            nodes.append(node)
            nursery.start_soon(node.read_output)
        try:
            with trio.fail_after(30):
                for node in nodes:
                    await node.ready.wait()
                    assert node.url is not None, "engine did not start:\n" + "\n".join(node.lines)
            try:
                yield url, nodes
            except BaseException:
                for i, node in enumerate(nodes):  # what the engines said, for the report
                    print(f"--- engine {i} ---\n" + "\n".join(node.lines[-40:]))
                raise
        finally:
            with trio.CancelScope(shield=True):
                for node in nodes:
                    if node.process.returncode is None:
                        node.process.kill()
                        await node.process.wait()
            nursery.cancel_scope.cancel()


async def read_all(stream: Any, run_id: str, client: Any) -> list[Any]:
    return [chunk async for chunk in await stream.read(run_id, client=client)]


@bounded(45)
async def test_any_engine_answers_any_request() -> None:
    async with cluster(3) as (_, (a, b, c)), \
            connect(a.url, api_key=API_KEY) as on_a, \
            connect(b.url, api_key=API_KEY) as on_b, \
            connect(c.url, api_key=API_KEY) as on_c, \
            trio.open_nursery() as nursery:
        # a run triggered on A executes there; B reads it live, C answers its wait()
        chat = await rt.chat.trigger({"n": 50}, client=on_a)
        seen: list[str] = []

        async def read_on_b() -> None:
            async for chunk in await rt.ai.read(chat.id, client=on_b):
                seen.append(chunk)

        nursery.start_soon(read_on_b)
        statuses: list[str] = []

        async def subscribe_on_c() -> None:
            async for run in runs.subscribe_to_run(chat.id, client=on_c):
                statuses.append(run.status.value)

        nursery.start_soon(subscribe_on_c)
        with trio.fail_after(15):
            while (await runs.retrieve(chat.id, client=on_c)).status is not RunStatus.WAITING:
                await trio.sleep(0.05)
        await rt.answer.send(chat.id, "from C", client=on_c)  # reaches the wait() on A
        with trio.fail_after(15):
            while not statuses or statuses[-1] != "COMPLETED":
                await trio.sleep(0.05)
        assert (await runs.retrieve(chat.id, client=on_b)).output == "from C"
        with trio.fail_after(10):
            while len(seen) < 51:
                await trio.sleep(0.05)
        assert seen == [f"c{i}" for i in range(50)] + ["got from C"]
        assert "WAITING" in statuses

        # a cancel on B reaches a run suspended in wait() on C; a reader on A ends
        waiting = await rt.chat.trigger({"n": 1}, client=on_c)
        with trio.fail_after(15):
            while (await runs.retrieve(waiting.id, client=on_a)).status is not RunStatus.WAITING:
                await trio.sleep(0.05)
        await runs.cancel(waiting.id, client=on_b)
        assert (await runs.retrieve(waiting.id, client=on_a)).status is RunStatus.CANCELED
        with trio.fail_after(10):
            assert await read_all(rt.ai, waiting.id, on_a) == ["c0"]
        # and a finished run answers run_finished on every engine
        from runwire import RunFinishedError
        for client in (on_a, on_b, on_c):
            with pytest.raises(RunFinishedError):
                await rt.answer.send(waiting.id, "late", client=client)
        nursery.cancel_scope.cancel()


@bounded(55)
async def test_an_engine_killed_mid_stream_and_a_producer_that_moves_to_another_engine(
        ) -> None:
    ext_items = [f"e{i}" for i in range(12)]
    moved = trio.Event()

    async def external() -> AsyncIterator[str]:
        for item in ext_items[:6]:
            yield item
        await moved.wait()  # the engine is killed and the "load balancer" moves meanwhile
        for item in ext_items[6:]:
            yield item

    async with cluster(3) as (_, (a, b, c)), \
            open_fault_proxy(a.port, seed=18) as balancer, \
            connect(balancer.url, api_key=API_KEY, reconnect_timeout=30) as via_lb, \
            connect(b.url, api_key=API_KEY) as on_b, \
            connect(c.url, api_key=API_KEY) as on_c, \
            trio.open_nursery() as nursery:
        ticker = await rt.ticker.trigger({"n": 40, "every": 0.05}, client=via_lb)  # on A
        sink = await rt.sink.trigger({}, client=via_lb)  # on A
        ticks: list[str] = []
        ext_seen: list[str] = []

        async def read_ticks_on_b() -> None:
            async for chunk in await rt.ai.read(ticker.id, client=on_b):
                ticks.append(chunk)

        async def read_ext_on_c() -> None:
            async for chunk in await rt.ext.read(sink.id, client=on_c):
                ext_seen.append(chunk)
                if len(ext_seen) == len(ext_items):
                    return

        nursery.start_soon(read_ticks_on_b)
        nursery.start_soon(read_ext_on_c)
        piped = rt.ext.pipe(external(), target=sink.id, client=via_lb)
        with trio.fail_after(15):
            while len(ticks) < 5 or len(ext_seen) < 6:
                await trio.sleep(0.02)

        await a.kill()  # SIGKILL, mid-stream
        balancer.target_port = b.port  # the load balancer sends new connections to B
        balancer.cut_all()
        moved.set()

        await piped.wait_until_complete()  # resent through B, deduplicated, routed on
        with trio.fail_after(20):
            while len(ext_seen) < len(ext_items):
                await trio.sleep(0.05)
        await rt.done.send(sink.id, {}, client=on_b)
        with trio.fail_after(25):
            while not (await runs.retrieve(ticker.id, client=on_c)).is_finished:
                await trio.sleep(0.1)
        final_ticker = await runs.retrieve(ticker.id, client=on_c)
        assert final_ticker.status is RunStatus.COMPLETED and final_ticker.attempt == 2
        with trio.fail_after(10):
            while not (await runs.retrieve(sink.id, client=on_c)).is_finished:
                await trio.sleep(0.1)
        assert (await runs.retrieve(sink.id, client=on_b)).status is RunStatus.COMPLETED
        stored = await read_all(rt.ai, ticker.id, on_c)
        with trio.fail_after(10):
            while len(ticks) < len(stored):
                await trio.sleep(0.05)
        # the reader on B saw every stored chunk of both attempts, in order, then the end
        assert ticks == stored
        first = [t for t in stored if t.startswith("a1-")]
        assert first == [f"a1-{i}" for i in range(len(first))] and 5 <= len(first) < 40
        assert [t for t in stored if t.startswith("a2-")] == [f"a2-{i}" for i in range(40)]
        # the producer that moved to B wrote each item exactly once
        assert ext_seen == ext_items
        assert await read_all(rt.ext, sink.id, on_b) == ext_items
        nursery.cancel_scope.cancel()


@bounded(50)
async def test_engines_ride_out_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always", directory=tmp_path)
    try:
        async with cluster(2, server.url + "?prefix=restart") as (_, (a, b)), \
                connect(a.url, api_key=API_KEY) as on_a, \
                connect(b.url, api_key=API_KEY) as on_b:
            chat = await rt.chat.trigger({"n": 3}, client=on_a)
            with trio.fail_after(15):
                while (await runs.retrieve(chat.id, client=on_b)).status \
                        is not RunStatus.WAITING:
                    await trio.sleep(0.05)
            server.kill()
            with pytest.raises(InternalError, match="store cannot be reached"):
                await runs.retrieve(chat.id, client=on_b)
            await trio.sleep(LEASE)  # longer than a lease: the renewals fail meanwhile
            server.start()  # same port and directory: the AOF brings everything back
            with trio.fail_after(20):  # the engines reconnect by themselves
                while True:
                    try:
                        await rt.answer.send(chat.id, "after", client=on_b)  # routed to A
                        break
                    except (InternalError, RunFinishedError):
                        await trio.sleep(0.2)
            with trio.fail_after(15):
                assert await read_all(rt.ai, chat.id, on_b) == ["c0", "c1", "c2", "got after"]
            run = await runs.retrieve(chat.id, client=on_b)
            assert run.status is RunStatus.COMPLETED and run.output == "after"
            # A kept it, or B took it over (A's lease expired with Redis away) and resumed
            # its durable wait: the same attempt either way
            assert run.attempt == 1
    finally:
        server.kill()


@bounded(45)
async def test_free_standing_durable_streams_across_engine_processes() -> None:
    import httpx

    auth = {"authorization": f"Bearer {API_KEY}"}
    async with cluster(3) as (_, nodes), contextlib.AsyncExitStack() as stack:
        a, b, c = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.port}", timeout=20, headers=auth))
            for node in nodes]
        r = await a.put("/v1/stream/p/log", headers={"content-type": "application/json"})
        assert r.status_code == 201
        got: dict[str, httpx.Response] = {}

        async def long_poll_on_c() -> None:
            got["c"] = await c.get("/v1/stream/p/log", params={
                "offset": "-1", "live": "long-poll"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll_on_c)
            await trio.sleep(0.5)
            producer = {"content-type": "application/json", "producer-id": "w",
                        "producer-epoch": "0", "producer-seq": "0"}
            r = await b.post("/v1/stream/p/log", headers=producer, content=b'[1, 2]')
            assert r.status_code == 200
        assert got["c"].status_code == 200 and got["c"].json() == [1, 2]
        # the producer's retry reaches A (the load balancer moved it): deduplicated
        r = await a.post("/v1/stream/p/log", headers=producer, content=b'[1, 2]')
        assert r.status_code == 204
        r = await c.post("/v1/stream/p/log", headers={**producer, "producer-seq": "1",
                                                      "stream-closed": "true"},
                         content=b'3')
        assert r.status_code == 200 and r.headers["stream-closed"] == "true"
        for client in (a, b, c):
            r = await client.get("/v1/stream/p/log", params={"offset": "-1"})
            assert r.json() == [1, 2, 3] and r.headers["stream-closed"] == "true"
        assert (await b.delete("/v1/stream/p/log")).status_code == 204
        for client in (a, b, c):
            assert (await client.head("/v1/stream/p/log")).status_code == 404
