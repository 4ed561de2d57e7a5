"""The HTTP door's limits (SPEC §6, docs/security.md): a request that stalls gets 408, a
connection over ``max_connections`` gets 503 with ``Retry-After``, HTTP requests count in
``Engine.statistics().open_requests``, and a run's events resume from ``Last-Event-ID``."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import trio

from runwire.engine import Limits

from .helpers import API_KEY, bounded, go
from .test_http import AUTH, assert_error, http, trigger


async def raw(port: int, data: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    return stream


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything until the engine closes the connection."""
    answer = b""
    while part := await stream.receive_some(65536):
        answer += part
    await stream.aclose()
    return answer


def status_and_body(answer: bytes) -> tuple[int, dict[bytes, bytes], Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, orjson.loads(body) if body else None


POST = (b"POST /v1/api/tasks/echo/trigger HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + API_KEY.encode() + b"\r\nContent-Type: application/json\r\n")


# --- stalls ------------------------------------------------------------------------------------


@bounded(60)
async def test_a_body_that_stalls_gets_408_and_the_connection_closes(autojump_clock):
    async with http(limits=Limits(http_read_timeout=5)) as (eng, _):
        start = trio.current_time()
        stalled = await raw(eng.port, POST + b"Content-Length: 100\r\n\r\n" + b'{"payload": ')
        status, headers, body = status_and_body(await read_all(stalled))
        assert status == 408 and body["code"] == "timeout" and body["message"]
        assert headers[b"connection"] == b"close"
        assert 5 <= trio.current_time() - start < 6
        while eng.statistics().connections:  # the engine's side of the close, just after
            await trio.sleep(0.01)


@bounded(60)
async def test_a_head_that_stalls_gets_408(autojump_clock):
    async with http(limits=Limits(http_read_timeout=5)) as (eng, _):
        stalled = await raw(eng.port, b"GET /v1/api/runs HTTP/1.1\r\nHost: x\r\nAuthor")
        status, _, body = status_and_body(await read_all(stalled))
        assert status == 408 and body["code"] == "timeout"


@bounded(300)
async def test_a_slow_body_that_keeps_coming_is_served(autojump_clock):
    """The timeout is between two reads, not for the whole body (a slow upload is fine)."""
    async with http(limits=Limits(http_read_timeout=5)) as (eng, _):
        body = b'{"payload": "' + b"x" * 20 + b'"}'
        stream = await raw(eng.port, POST + b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(len(body)):  # a byte every 4 s: 100 s in all
            await trio.sleep(4)
            await stream.send_all(body[i:i + 1])
        answer = await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        await stream.aclose()


@bounded(300)
async def test_an_idle_keep_alive_connection_is_closed_quietly(autojump_clock):
    async with http(limits=Limits(http_read_timeout=5)) as (eng, _):
        stream = await raw(eng.port, b"GET /v1/api/runs/run_x HTTP/1.1\r\nHost: x\r\n"
                                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\n\r\n")
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 404"), first[:200]
        start = trio.current_time()
        assert await read_all(stream) == b""  # no answer to a request that never came
        assert trio.current_time() - start >= 75  # the keep-alive idle time, not 5 s


# --- the connection limit ----------------------------------------------------------------------


@bounded(30)
async def test_an_http_connection_over_the_limit_gets_503_with_retry_after():
    async with http(limits=Limits(max_connections=1)) as (eng, client):
        # one keep-alive connection holds the only place
        r = await client.get("/v1/api/runs", headers=AUTH)
        assert r.status_code == 200 and eng.statistics().connections == 1
        refused = await raw(eng.port, b"GET /v1/api/runs HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = status_and_body(await read_all(refused))
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert body["code"] == "rate_limited" and "too many connections" in body["message"]
        assert eng.statistics().connections == 1
        # the kept connection still works; once it is gone, a new one is served
        assert (await client.get("/v1/api/runs", headers=AUTH)).status_code == 200
        await client.aclose()
        async with httpx.AsyncClient(base_url=eng.http_url, timeout=10) as fresh:
            for _ in range(100):  # the server notices the close within a moment
                r = await fresh.get("/v1/api/runs", headers=AUTH)
                if r.status_code != 503:
                    break
                await trio.sleep(0.02)
            assert r.status_code == 200


# --- open requests ------------------------------------------------------------------------------


@bounded(30)
async def test_http_requests_count_in_open_requests():
    async with http(limits=Limits(long_poll_timeout=30)) as (eng, client):
        assert eng.statistics().open_requests == 0
        await client.put("/v1/stream/s", headers={**AUTH, "content-type": "text/plain"})
        assert eng.statistics().open_requests == 0  # answered: no longer open
        async with trio.open_nursery() as nursery:

            async def long_poll() -> None:
                r = await client.get("/v1/stream/s", headers=AUTH,
                                     params={"offset": "-1", "live": "long-poll"})
                assert r.text == "hi"

            async def sse() -> None:
                async with client.stream("GET", "/v1/stream/s", headers=AUTH,
                                         params={"offset": "-1", "live": "sse"}) as r:
                    async for line in r.aiter_lines():
                        if line == "data:hi":
                            return

            nursery.start_soon(long_poll)
            nursery.start_soon(sse)
            while eng.statistics().open_requests < 2:
                await trio.sleep(0.01)
            assert eng.statistics().open_requests == 2
            r = await client.post("/v1/stream/s", headers={**AUTH, "content-type": "text/plain"},
                                  content=b"hi")
            assert r.status_code == 204
        # the SSE response ends as soon as its reader leaves (not at its next write)
        while eng.statistics().open_requests:
            await trio.sleep(0.01)
        # a long-poll its client gives up on is freed at once, not after its 30 s
        with trio.move_on_after(0.3):
            await client.get("/v1/stream/s", headers=AUTH,
                             params={"offset": "0000000000000000_0000000000000002",
                                     "live": "long-poll"})
        with trio.fail_after(5):
            while eng.statistics().open_requests:
                await trio.sleep(0.01)


# --- a run's events resume from Last-Event-ID ---------------------------------------------------


async def events(client: httpx.AsyncClient, run_id: str, headers: dict[str, str],
                 stop: Any = None) -> list[tuple[str, str, Any]]:
    """``(event, id, data)`` of a run's events until the response ends or ``stop`` says."""
    got: list[tuple[str, str, Any]] = []
    async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        kind = ident = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data:"):
                got.append((kind, ident, orjson.loads(line[5:])))
                if stop is not None and stop(got):
                    break
    return got


def items(got: list[tuple[str, str, Any]]) -> list[Any]:
    return [i for kind, _, data in got if kind == "chunks" for i in data["items"]]


@bounded(30)
async def test_run_events_resume_from_last_event_id():
    async with http() as (eng, client):
        made = await trigger(client, "talker")
        run_id = made["id"]
        token = {"authorization": f"Bearer {made['public_access_token']}"}
        first = await events(client, run_id, token, lambda got: items(got) == ["hello", "world"])
        assert all(ident for _, ident, _ in first)  # every event has an id
        last = first[-1][1]
        await eng.send_input(run_id, go.id, True)
        await eng.wait_finished(run_id)
        # reconnect where we were: the run again, then only what came after
        second = await events(client, run_id, {**token, "last-event-id": last})
        kinds = [kind for kind, _, _ in second]
        assert kinds[0] == "run" and kinds[-1] == "end"
        assert second[0][2]["status"] == "COMPLETED"
        assert items(second) == ["bye"]
        assert [d for k, _, d in second if k == "chunks"][0]["offset"] == \
            "0000000000000000_0000000000000002"
        assert kinds.count("stream_end") == 1
        # from the last id of that one: the run and the end, nothing repeated
        third = await events(client, run_id, {**token, "last-event-id": second[-2][1]})
        assert [kind for kind, _, _ in third] == ["run", "end"]
        # without the header: everything from the start
        assert items(await events(client, run_id, token)) == ["hello", "world", "bye"]


@bounded(30)
async def test_a_bad_last_event_id_is_400():
    async with http() as (eng, client):
        made = await trigger(client, "echo", 1)
        url = f"/v1/runs/{made['id']}/events"
        for bad in ("nope", "e30", "eyJvIjogeyJhaSI6IC0xfSwgImUiOiBbXX0",  # {} / a negative
                    "eyJvIjp7ImFpIjoiMSJ9LCJlIjpbXX0"):  # an index that is not a number
            assert_error(await client.get(url, headers={**AUTH, "last-event-id": bad}), 400,
                         "bad_request")
        assert_error(await client.get("/v1/runs/run_nope/events",
                                      headers={**AUTH, "last-event-id": "nope"}), 404,
                     "not_found")
