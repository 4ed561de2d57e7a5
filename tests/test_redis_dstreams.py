"""Free-standing durable streams (``/v1/stream/...``) on three engines sharing one real
redis-server: created on one, appended on another, read live on a third (woken through
Redis pub/sub); producer retries deduplicated across engines; a close and a delete seen
everywhere; concurrent appends from every engine at exact offsets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runwire.engine import open_engine
from runwire.engine.service import _dstreams

from .helpers import API_KEY, bounded
from .redisserver import RedisServer, redis_url

AUTH = {"authorization": f"Bearer {API_KEY}"}


@contextlib.asynccontextmanager
async def engines(count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``count`` engines on one Redis store (a fresh key prefix), an HTTP client for each."""
    url = redis_url()
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            eng = await stack.enter_async_context(open_engine([], store=url, api_key=API_KEY,
                                                              port=0))
            assert eng.streams.shared
            clients.append(await stack.enter_async_context(httpx.AsyncClient(
                base_url=eng.http_url, timeout=15, headers=AUTH)))
        yield clients


def offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


@bounded(40)
async def test_create_on_a_append_on_b_read_live_on_c(monkeypatch: pytest.MonkeyPatch) -> None:
    # no safety-net look within the test: the readers on C are woken through pub/sub
    monkeypatch.setattr(_dstreams, "SHARED_REFRESH", 3600.0)
    async with engines(3) as (a, b, c):
        r = await a.put("/v1/stream/chat", headers={"content-type": "text/plain"},
                        content=b"hello ")
        assert r.status_code == 201, r.text
        # B and C know it although A made it
        r = await c.head("/v1/stream/chat")
        assert r.status_code == 200 and r.headers["stream-next-offset"] == offset(6)
        got: dict[str, Any] = {}

        async def long_poll() -> None:
            got["poll"] = await c.get("/v1/stream/chat", params={
                "offset": offset(6), "live": "long-poll"})

        async def sse() -> None:
            body = b""
            async with c.stream("GET", "/v1/stream/chat",
                                params={"offset": offset(0), "live": "sse"}) as response:
                async for data in response.aiter_bytes():
                    body += data
                    if b"streamClosed" in body:
                        break
            got["sse"] = body

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            nursery.start_soon(sse)
            await trio.sleep(0.5)  # both wait at the tail on C
            r = await b.post("/v1/stream/chat", headers={"content-type": "text/plain"},
                             content=b"world")
            assert r.status_code == 204, r.text
            assert r.headers["stream-next-offset"] == offset(11)
            with trio.fail_after(5):  # woken through Redis, long before a safety-net look
                while "poll" not in got:
                    await trio.sleep(0.01)
            # A appends after B's append: at B's tail, not over it
            r = await a.post("/v1/stream/chat", headers={"content-type": "text/plain"},
                             content=b"!")
            assert r.headers["stream-next-offset"] == offset(12)
            # closed on A: the SSE reader on C sees the close and ends
            r = await a.post("/v1/stream/chat", headers={"stream-closed": "true"})
            assert r.status_code == 204 and r.headers["stream-closed"] == "true"
        poll = got["poll"]
        assert poll.status_code == 200 and poll.content == b"world"
        assert poll.headers["stream-next-offset"] == offset(11)
        events = [event.split(b"\n") for event in got["sse"].split(b"\n\n") if event]
        text = b"".join(b"".join(line[5:] for line in lines[1:])
                        for lines in events if lines[0] == b"event: data")
        assert text == b"hello world!", got["sse"]
        for client in (a, b, c):
            r = await client.get("/v1/stream/chat", params={"offset": "-1"})
            assert r.content == b"hello world!" and r.headers["stream-closed"] == "true"
        # an append to the closed stream, on another engine, is refused as closed
        r = await b.post("/v1/stream/chat", headers={"content-type": "text/plain"},
                         content=b"late")
        assert r.status_code == 409 and r.headers["stream-closed"] == "true"


@bounded(40)
async def test_producer_retries_are_deduplicated_across_engines() -> None:
    async with engines(3) as clients:
        a, b, c = clients
        r = await a.put("/v1/stream/log", headers={"content-type": "application/json"})
        assert r.status_code == 201

        def producer(epoch: int, seq: int) -> dict[str, str]:
            return {"content-type": "application/json", "producer-id": "p1",
                    "producer-epoch": str(epoch), "producer-seq": str(seq)}

        r = await a.post("/v1/stream/log", headers=producer(0, 0), content=b'{"n": 0}')
        assert r.status_code == 200
        # the same batch again, to another engine (the client reconnected elsewhere)
        r = await b.post("/v1/stream/log", headers=producer(0, 0), content=b'{"n": 0}')
        assert r.status_code == 204 and r.headers["producer-seq"] == "0"
        r = await c.post("/v1/stream/log", headers=producer(0, 1), content=b'[{"n": 1}]')
        assert r.status_code == 200
        # a gap is seen on any engine
        r = await a.post("/v1/stream/log", headers=producer(0, 3), content=b'{"n": 3}')
        assert r.status_code == 409 and r.headers["producer-expected-seq"] == "2"
        # a new epoch on B fences the old one on A
        r = await b.post("/v1/stream/log", headers=producer(1, 0), content=b'{"n": 2}')
        assert r.status_code == 200
        r = await a.post("/v1/stream/log", headers=producer(0, 2), content=b'{"n": 9}')
        assert r.status_code == 403 and r.headers["producer-epoch"] == "1"
        # the same seq raced to all three engines at once: stored once
        statuses: list[int] = []

        async def send(client: httpx.AsyncClient) -> None:
            got = await client.post("/v1/stream/log", headers=producer(1, 1),
                                    content=b'{"n": 3}')
            statuses.append(got.status_code)

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(send, client)
        assert sorted(statuses) == [200, 204, 204]
        for client in clients:
            r = await client.get("/v1/stream/log", params={"offset": "-1"})
            assert r.json() == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
            assert r.headers["stream-next-offset"] == offset(4)


@bounded(60)
async def test_concurrent_appends_from_every_engine_land_at_exact_offsets() -> None:
    async with engines(3) as clients:
        r = await clients[0].put("/v1/stream/many", headers={"content-type": "application/json"})
        assert r.status_code == 201

        async def writer(index: int, client: httpx.AsyncClient) -> None:
            for n in range(20):
                got = await client.post("/v1/stream/many",
                                        headers={"content-type": "application/json"},
                                        content=b'{"w": %d, "n": %d}' % (index, n))
                assert got.status_code == 204, got.text

        async with trio.open_nursery() as nursery:
            for index, client in enumerate(clients):
                nursery.start_soon(writer, index, client)
        r = await clients[1].get("/v1/stream/many", params={"offset": "-1"})
        items = r.json()
        assert len(items) == 60 and r.headers["stream-next-offset"] == offset(60)
        for index in range(3):  # each writer's items in its order, none lost or doubled
            assert [i["n"] for i in items if i["w"] == index] == list(range(20))


@bounded(40)
async def test_delete_on_one_engine_is_seen_by_the_others_and_wakes_readers() -> None:
    async with engines(2) as (a, b):
        r = await a.put("/v1/stream/gone", headers={"content-type": "text/plain"},
                        content=b"x")
        assert r.status_code == 201
        got: dict[str, httpx.Response] = {}

        async def long_poll() -> None:
            got["poll"] = await b.get("/v1/stream/gone", params={
                "offset": offset(1), "live": "long-poll"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            r = await a.delete("/v1/stream/gone")
            assert r.status_code == 204
        assert got["poll"].status_code in (404, 410)
        for client in (a, b):
            assert (await client.head("/v1/stream/gone")).status_code == 404
            r = await client.post("/v1/stream/gone", headers={"content-type": "text/plain"},
                                  content=b"y")
            assert r.status_code == 404
        # the path can be made again, from another engine, with another configuration
        r = await b.put("/v1/stream/gone", headers={"content-type": "application/json"})
        assert r.status_code == 201
        r = await a.put("/v1/stream/gone", headers={"content-type": "text/plain"})
        assert r.status_code == 409


@bounded(40)
async def test_a_fork_made_on_one_engine_reads_its_source_on_another() -> None:
    async with engines(2) as (a, b):
        r = await a.put("/v1/stream/src", headers={"content-type": "text/plain"},
                        content=b"abcdef")
        assert r.status_code == 201
        r = await b.put("/v1/stream/fork", headers={
            "content-type": "text/plain", "stream-forked-from": "src",
            "stream-fork-offset": offset(3)})
        assert r.status_code == 201, r.text
        r = await a.post("/v1/stream/fork", headers={"content-type": "text/plain"},
                         content=b"XYZ")
        assert r.status_code == 204
        r = await a.get("/v1/stream/fork", params={"offset": "-1"})
        assert r.content == b"abcXYZ"
        # the source, deleted on B while the fork reads from it, is kept (soft) ...
        assert (await b.delete("/v1/stream/src")).status_code == 204
        assert (await a.head("/v1/stream/src")).status_code == 410
        assert (await a.get("/v1/stream/fork", params={"offset": "-1"})).content == b"abcXYZ"
        # ... and removed with the fork
        assert (await a.delete("/v1/stream/fork")).status_code == 204
        assert (await b.head("/v1/stream/src")).status_code == 404


@bounded(30)
async def test_a_write_that_keeps_losing_the_race_is_a_503_to_retry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with engines(1) as (a,):
        r = await a.put("/v1/stream/busy", headers={"content-type": "text/plain"})
        assert r.status_code == 201
        monkeypatch.setattr(_dstreams, "SHARED_RETRIES", 0)  # as if every try lost
        r = await a.post("/v1/stream/busy", headers={"content-type": "text/plain"},
                         content=b"x")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["code"] == "rate_limited"
        monkeypatch.setattr(_dstreams, "SHARED_RETRIES", 64)
        r = await a.post("/v1/stream/busy", headers={"content-type": "text/plain"},
                         content=b"x")
        assert r.status_code == 204 and r.headers["stream-next-offset"] == offset(1)


@bounded(40)
async def test_a_ttl_slides_with_reads_on_any_engine_and_expires_everywhere() -> None:
    async with engines(2) as (a, b):
        r = await a.put("/v1/stream/short", headers={"content-type": "text/plain",
                                                      "stream-ttl": "3"}, content=b"x")
        assert r.status_code == 201
        for _ in range(6):  # reads on B keep it alive past its TTL (stored, seen by A)
            await trio.sleep(0.7)
            assert (await b.get("/v1/stream/short", params={"offset": "-1"})).content == b"x"
        assert (await a.head("/v1/stream/short")).status_code == 200
        await trio.sleep(3.3)  # nobody reads it for longer than its TTL
        assert (await a.head("/v1/stream/short")).status_code == 404
        assert (await b.head("/v1/stream/short")).status_code == 404
        r = await b.put("/v1/stream/short", headers={"content-type": "text/plain"})
        assert r.status_code == 201  # gone from Redis: the path is free


@bounded(60)
async def test_a_live_reader_rides_out_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always", directory=tmp_path)
    try:
        async with open_engine([], store=server.url, api_key=API_KEY, port=0) as ea, \
                open_engine([], store=server.url, api_key=API_KEY, port=0) as eb, \
                httpx.AsyncClient(base_url=ea.http_url, timeout=30, headers=AUTH) as a, \
                httpx.AsyncClient(base_url=eb.http_url, timeout=30, headers=AUTH) as b:
            r = await a.put("/v1/stream/s", headers={"content-type": "text/plain"},
                            content=b"1")
            assert r.status_code == 201
            body = bytearray()

            async def sse() -> None:
                async with b.stream("GET", "/v1/stream/s",
                                    params={"offset": "-1", "live": "sse"}) as response:
                    async for data in response.aiter_bytes():
                        body.extend(data)
                        if b"streamClosed" in body:
                            return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sse)
                await trio.sleep(0.5)
                server.kill()
                r = await a.post("/v1/stream/s", headers={"content-type": "text/plain"},
                                 content=b"2")
                assert r.status_code == 503, r.text  # not stored, and said so
                assert r.headers["retry-after"] == "2"
                assert "nothing of this request was stored" in r.json()["message"]
                server.start()  # same port and directory: the AOF brings the stream back
                with trio.fail_after(20):
                    while True:
                        r = await a.post("/v1/stream/s", headers={
                            "content-type": "text/plain", "stream-closed": "true"},
                            content=b"3")
                        if r.status_code != 503:
                            break
                        await trio.sleep(0.2)
                assert r.status_code == 204 and r.headers["stream-next-offset"] == offset(2)
            # the reader on B, which waited through the restart, got the append and the close
            assert b"data:1\n" in body and b"data:3\n" in body and b"data:2" not in body
    finally:
        server.kill()
