"""A store that is away is a 503 with ``Retry-After`` on every HTTP route, never a 500 and
never a hang (``docs/http.md``, *Errors*; ``docs/operations.md``, *When the store is away*).

Over real HTTP to a real engine:

* SQLite whose writes fail past the store's retries (``FaultyStore`` of
  ``test_storage_faults``: the injected ``SQLITE_FULL`` goes through the real retry path):
  an append, a create, a trigger and an input send are 503 ``internal`` with
  ``Retry-After`` and "nothing of this request was stored"; reads still answer; once the
  store writes again the same requests succeed and nothing refused shows up in the stream.
* A real redis-server killed mid-test: an append, a create, a read, a long-poll, a trigger
  and a list are each answered 503 within a bounded time; an SSE read on a store that fails
  mid-response ends cleanly with an ``error`` event. Redis restarted (AOF, same port): the
  same requests work again and everything acknowledged before is still there.
* A redis-server frozen (``SIGSTOP``: reachable, answers nothing): every request is answered
  503 within the Redis store's timeouts (shortened for the test), and works again after
  ``SIGCONT``.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runwire.engine import open_engine
from runwire.engine.door._outage import STORE_RETRY_AFTER
from runwire.engine.store import StoreUnavailableError, _redis

from . import redis_tasks as rt
from .helpers import API_KEY, bounded
from .redisserver import RedisServer
from .test_storage_faults import FaultyStore, listener

AUTH = {"authorization": f"Bearer {API_KEY}"}
TEXT = {"content-type": "text/plain"}
#: No answer here may take longer (real seconds): Redis refuses at once when it is gone.
ANSWER_WITHIN = 10


def offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


def assert_unavailable(r: httpx.Response, *, write: bool) -> None:
    """A 503 for a store that is away, as docs/http.md says."""
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["retry-after"] == str(STORE_RETRY_AFTER)
    if r.request.method == "HEAD":
        return
    body = r.json()
    assert body["code"] == "internal"  # the websocket's code for the same failure
    assert "store is unavailable" in body["message"]
    assert ("nothing of this request was stored" in body["message"]) is write
    assert "redis://" not in body["message"] and ".db" not in body["message"]


async def answered(request: Any) -> httpx.Response:
    with trio.fail_after(ANSWER_WITHIN):
        response: httpx.Response = await request
        return response


@contextlib.asynccontextmanager
async def http_engine(tasks: list[Any], store: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with open_engine(tasks, store=store, api_key=API_KEY, port=0) as eng, \
            httpx.AsyncClient(base_url=eng.http_url, timeout=30, headers=AUTH) as client:
        yield client


# --- SQLite: writes that fail past the retries ----------------------------------------------


@bounded(60)  # real seconds: SQLite retries in threads, which the mock clock cannot bound
async def test_sqlite_writes_that_fail_past_the_retries_are_503_then_work_again(
        tmp_path: Path) -> None:
    store = FaultyStore(str(tmp_path / "f.db"), retry_seconds=0.3)
    async with http_engine([listener], store) as c:
        r = await c.put("/v1/stream/s", headers=TEXT, content=b"a")
        assert r.status_code == 201
        r = await c.post("/v1/api/tasks/faults.listener/trigger", json={"payload": {}})
        assert r.status_code == 201
        run_id = r.json()["id"]
        with trio.fail_after(10):  # WAITING stored, not only reported: nothing of the
            # run's own is left to commit, so the failing writes below are the requests'
            while ((await store.get_run(run_id)) or {}).get("status") != "WAITING":
                await trio.sleep(0.02)
        store.failing = True
        assert_unavailable(await answered(c.post("/v1/stream/s", headers=TEXT, content=b"b")),
                           write=True)
        assert_unavailable(await answered(c.put("/v1/stream/new", headers=TEXT)), write=True)
        assert_unavailable(await answered(c.post("/v1/api/tasks/faults.listener/trigger",
                                                 json={"payload": {}})), write=True)
        assert_unavailable(await answered(c.post(f"/v1/api/runs/{run_id}/inputs/inbox",
                                                 json={"n": 1})), write=True)
        # reads need no write: they answer meanwhile
        r = await answered(c.get("/v1/stream/s", params={"offset": "-1"}))
        assert (r.status_code, r.content) == (200, b"a")
        assert store.failed_writes >= 4
        store.failing = False
        r = await c.post("/v1/stream/s", headers=TEXT, content=b"c")
        assert r.status_code == 204 and r.headers["stream-next-offset"] == offset(2)
        assert (await c.put("/v1/stream/new", headers=TEXT)).status_code == 201
        r = await c.post("/v1/api/tasks/faults.listener/trigger", json={"payload": {}})
        assert r.status_code == 201
        r = await c.get("/v1/stream/s", params={"offset": "-1"})
        assert r.content == b"ac"  # the refused append was not stored; the rest was


# --- Redis: the server killed mid-test ------------------------------------------------------


@bounded(90)
async def test_redis_gone_is_503_at_once_then_everything_acknowledged_is_there(
        tmp_path: Path) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always", directory=tmp_path)
    try:
        async with http_engine([rt.chat], server.url) as c:
            assert (await c.put("/v1/stream/s", headers=TEXT, content=b"a")).status_code == 201
            r = await c.post("/v1/stream/s", headers=TEXT, content=b"b")
            assert r.status_code == 204
            r = await c.post("/v1/api/tasks/multi.chat/trigger", json={"payload": {"n": 1}})
            assert r.status_code == 201
            run_id = r.json()["id"]
            server.kill()
            for _ in range(2):  # the first finds the pooled connection dead, the next none
                assert_unavailable(await answered(c.post("/v1/stream/s", headers=TEXT,
                                                         content=b"x")), write=True)
                assert_unavailable(await answered(c.put("/v1/stream/other", headers=TEXT)),
                                   write=True)
                assert_unavailable(await answered(c.get("/v1/stream/s",
                                                        params={"offset": "-1"})), write=False)
                assert_unavailable(await answered(c.head("/v1/stream/s")), write=False)
                assert_unavailable(await answered(c.get("/v1/stream/s", params={
                    "offset": offset(2), "live": "long-poll"})), write=False)
                assert_unavailable(await answered(c.post(
                    "/v1/api/tasks/multi.chat/trigger", json={"payload": {"n": 1}})),
                    write=True)
                assert_unavailable(await answered(c.get("/v1/api/runs")), write=False)
            server.start()  # same port and directory: the AOF brings everything back
            with trio.fail_after(20):  # the engine reconnects by itself
                while (r := await c.post("/v1/stream/s", headers=TEXT,
                                         content=b"c")).status_code == 503:
                    await trio.sleep(0.2)
            assert r.status_code == 204 and r.headers["stream-next-offset"] == offset(3)
            assert (await c.put("/v1/stream/other", headers=TEXT)).status_code == 201
            r = await c.get("/v1/stream/s", params={"offset": "-1"})
            assert (r.status_code, r.content) == (200, b"abc")  # acknowledged: all there
            r = await c.post("/v1/api/tasks/multi.chat/trigger", json={"payload": {"n": 1}})
            assert r.status_code == 201
            listed = (await c.get("/v1/api/runs", params={"limit": 100})).json()["runs"]
            ids = [run["id"] for run in listed]
            assert run_id in ids and r.json()["id"] in ids and len(ids) == 2
    finally:
        server.kill()


@bounded(90)
async def test_a_frozen_redis_is_503_within_the_store_timeouts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # real waits: the engine waits on a real socket to a stopped process, which the mock
    # clock cannot stand in for; the store's timeouts (5 s, 30 s) are shortened to 1 s
    monkeypatch.setattr(_redis, "CONNECT_TIMEOUT", 1.0)
    monkeypatch.setattr(_redis, "STREAM_TIMEOUT", 1.0)
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always", directory=tmp_path)
    assert server.proc is not None
    try:
        async with http_engine([rt.chat], server.url) as c:
            assert (await c.put("/v1/stream/s", headers=TEXT, content=b"a")).status_code == 201
            server.proc.send_signal(signal.SIGSTOP)  # reachable, answers nothing
            for _ in range(2):  # the pooled connection's call times out, then connecting does
                r = await answered(c.post("/v1/stream/s", headers=TEXT, content=b"x"))
                assert r.status_code == 503 and r.headers["retry-after"] == "2"
                message = r.json()["message"]  # sent: Redis may have run it (told so)
                assert ("may or may not have been stored" in message
                        or "nothing of this request was stored" in message)
                assert_unavailable(await answered(c.get("/v1/stream/s",
                                                        params={"offset": "-1"})), write=False)
                assert_unavailable(await answered(c.post(
                    "/v1/api/tasks/multi.chat/trigger", json={"payload": {"n": 1}})),
                    write=True)
            server.proc.send_signal(signal.SIGCONT)
            with trio.fail_after(20):
                while (r := await c.post("/v1/stream/s", headers=TEXT,
                                         content=b"c")).status_code == 503:
                    await trio.sleep(0.2)
            assert r.status_code == 204
            body = (await c.get("/v1/stream/s", params={"offset": "-1"})).content
            assert body.startswith(b"a") and body.endswith(b"c")  # an "x" Redis ran may sit between
            r = await c.post("/v1/api/tasks/multi.chat/trigger", json={"payload": {"n": 1}})
            assert r.status_code == 201
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.kill()


class FailingReads:
    """Make an engine's durable stream reads fail as a store that is away does, while
    ``failing`` is set (a live reader's newest items come from memory, not the store: the
    read is failed where the service reads)."""

    def __init__(self, streams: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = False
        real = streams.read

        async def read(*args: Any) -> Any:
            if self.failing:
                raise StoreUnavailableError("the test's store is away").refused_whole()
            return await real(*args)

        monkeypatch.setattr(streams, "read", read)


@bounded(30)
async def test_an_sse_read_the_store_cuts_short_ends_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_engine([], store=f"sqlite:///{tmp_path}/r.db", api_key=API_KEY,
                           port=0) as eng, \
            httpx.AsyncClient(base_url=eng.http_url, timeout=30, headers=AUTH) as c:
        reads = FailingReads(eng.streams, monkeypatch)
        assert (await c.put("/v1/stream/s", headers=TEXT, content=b"a")).status_code == 201
        body = bytearray()
        async with c.stream("GET", "/v1/stream/s",
                            params={"offset": "-1", "live": "sse"}) as response:
            assert response.status_code == 200
            async for data in response.aiter_bytes():
                body.extend(data)
                if b"upToDate" in body and not reads.failing:
                    reads.failing = True  # the next read (after this append) fails
                    r = await c.post("/v1/stream/s", headers=TEXT, content=b"b")
                    assert r.status_code == 204
            # the loop ended: the response ended cleanly (a torn one raises in httpx)
        assert b"data:a\n" in body and b"data:b" not in body
        assert body.endswith(b"\n\n") and b"event: error\n" in body
        assert b'"code":"internal"' in body and b"store is unavailable" in body
        assert b"retry: %d\n" % (STORE_RETRY_AFTER * 1000) in body
        reads.failing = False
        r = await c.get("/v1/stream/s", params={"offset": "-1"})
        assert r.content == b"ab"


async def test_an_outage_is_logged_once_every_few_seconds_not_per_request(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Every request meets an outage: the door warns at once, then at most once in
    ``LOG_EVERY`` seconds, counting the requests in between."""
    from runwire.engine.door._outage import LOG_EVERY, OutageLog

    outages, outage = OutageLog(), StoreUnavailableError("redis://... is gone")
    for _ in range(5):
        outages.warn("HTTP POST /v1/stream/s: 503", outage)
    await trio.sleep(LOG_EVERY)
    outages.warn("HTTP GET /v1/stream/s: 503", outage)
    lines = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert lines == [
        "HTTP POST /v1/stream/s: 503: the store is unavailable: redis://... is gone",
        "HTTP GET /v1/stream/s: 503: the store is unavailable: redis://... is gone (and 4 "
        "more since the last warning)"]
