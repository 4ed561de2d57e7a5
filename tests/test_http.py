"""The HTTP door (SPEC §6): the JSON API, run streams as durable streams, a run's events over
SSE, free-standing durable streams, and what bad input gets. Real sockets on loopback."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio

from runwire import streams, task, wait
from runwire.engine import Engine, Limits, open_engine
from runwire.engine.store import StoredToken

from .helpers import API_KEY, bounded, go, until_go

ai = streams.define(id="ai", type=str)
AUTH = {"authorization": f"Bearer {API_KEY}"}


@task(id="echo")
async def echo(payload: Any) -> Any:
    return payload


@task(id="talker")
async def talker(payload: Any) -> str:
    await ai.append("hello")
    await ai.append("world")
    await until_go()
    await ai.append("bye")
    return "done"


@task(id="gate")
async def gate(token_id: str) -> Any:
    """Waits for the waitpoint token ``token_id``; its data is the output."""
    return await wait.for_token(token_id).unwrap()


@asynccontextmanager
async def http(**options: Any) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    async with open_engine([echo, talker, gate], api_key=API_KEY, port=0, **options) as eng:
        async with httpx.AsyncClient(base_url=eng.http_url, timeout=10) as client:
            yield eng, client


async def trigger(client: httpx.AsyncClient, task_id: str, payload: Any = None,
                  **options: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/api/tasks/{task_id}/trigger", headers=AUTH,
                          json={"payload": payload, "options": options})
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == code and r.json()["message"]


# --- the JSON API ------------------------------------------------------------------------------


@bounded(20)
async def test_trigger_retrieve_list_cancel():
    async with http() as (eng, client):
        made = await trigger(client, "echo", {"x": 1}, tags=["a"])
        assert made["id"].startswith("run_") and made["public_access_token"]
        run = (await eng.wait_finished(made["id"])).to_wire()
        r = await client.get(f"/v1/api/runs/{made['id']}", headers=AUTH)
        assert r.status_code == 200 and r.json()["output"] == {"x": 1} == run["output"]
        # the run's own token reads it; it may not list runs
        own = {"authorization": f"Bearer {made['public_access_token']}"}
        assert (await client.get(f"/v1/api/runs/{made['id']}", headers=own)).status_code == 200
        assert_error(await client.get("/v1/api/runs", headers=own), 403, "forbidden")
        # idempotency key: the same run twice
        first = await trigger(client, "echo", 1, idempotency_key="k1")
        again = await client.post("/v1/api/tasks/echo/trigger", headers={**AUTH,
                                  "idempotency-key": "k1"}, json={"payload": 2})
        assert again.json()["id"] == first["id"]
        for _ in range(3):
            await trigger(client, "echo", 0, tags=["b"])
        # list: newest first, filters, pagination
        page = (await client.get("/v1/api/runs", headers=AUTH, params={"limit": 2})).json()
        assert len(page["runs"]) == 2 and page["next_cursor"]
        rest = (await client.get("/v1/api/runs", headers=AUTH,
                                 params={"limit": 100, "cursor": page["next_cursor"]})).json()
        ids = [r["id"] for r in page["runs"] + rest["runs"]]
        assert len(ids) == len(set(ids)) == 5 and rest["next_cursor"] is None
        created = [r["created_at"] for r in page["runs"] + rest["runs"]]
        assert created == sorted(created, reverse=True)
        tagged = (await client.get("/v1/api/runs?tag=b", headers=AUTH)).json()["runs"]
        assert len(tagged) == 3
        assert (await client.get("/v1/api/runs?task=nope", headers=AUTH)).json()["runs"] == []
        done = (await client.get("/v1/api/runs?status=COMPLETED", headers=AUTH)).json()
        assert len(done["runs"]) >= 1
        assert_error(await client.get("/v1/api/runs?cursor=zzz", headers=AUTH), 422,
                     "bad_frame")
        assert_error(await client.get("/v1/api/runs?limit=0", headers=AUTH), 422, "bad_frame")
        assert_error(await client.get("/v1/api/runs?created_after=soon", headers=AUTH), 422,
                     "bad_frame")
        # cancel: a live run, then the finished one (409)
        live = await trigger(client, "talker")
        r = await client.post(f"/v1/api/runs/{live['id']}/cancel", headers=AUTH)
        assert r.status_code == 200
        assert (await eng.get_record(live["id"])).status.value == "CANCELED"
        assert_error(await client.post(f"/v1/api/runs/{live['id']}/cancel", headers=AUTH),
                     409, "run_finished")


@bounded(20)
async def test_send_and_tokens():
    async with http() as (eng, client):
        made = await trigger(client, "talker")
        run_id = made["id"]
        token = {"authorization": f"Bearer {made['public_access_token']}"}
        r = await client.post(f"/v1/api/runs/{run_id}/inputs/{go.id}", headers=token,
                              content=b"true")
        assert r.status_code == 200 and r.json() == {"index": 0}
        assert (await eng.wait_finished(run_id)).output == "done"
        assert_error(await client.post(f"/v1/api/runs/{run_id}/inputs/{go.id}", headers=token,
                                       content=b"true"), 409, "run_finished")
        assert_error(await client.post(f"/v1/api/runs/run_nope/inputs/go", headers=AUTH,
                                       content=b"1"), 404, "not_found")
        assert_error(await client.post(f"/v1/api/runs/{run_id}/inputs/go", headers=AUTH,
                                       content=b"{nope"), 422, "bad_frame")
        # tokens: the API key makes them; a token may not
        r = await client.post("/v1/api/tokens", headers=AUTH,
                              json={"scopes": [f"read:runs:{run_id}"], "expires_in": 60})
        assert r.status_code == 201
        reader = {"authorization": f"Bearer {r.json()['token']}"}
        assert (await client.get(f"/v1/api/runs/{run_id}", headers=reader)).status_code == 200
        assert_error(await client.post("/v1/api/tokens", headers=reader,
                                       json={"scopes": ["read:runs"], "expires_in": 60}),
                     403, "forbidden")
        assert_error(await client.post("/v1/api/tokens", headers=AUTH,
                                       json={"scopes": "read:runs", "expires_in": 60}),
                     422, "bad_frame")
        assert_error(await client.post("/v1/api/tokens", headers=AUTH,
                                       json={"scopes": ["read:runs"], "expires_in": -1}),
                     422, "bad_frame")
        assert_error(await client.post("/v1/api/tasks/echo/trigger", headers=reader, json={}),
                     403, "forbidden")


@bounded(20)
async def test_complete_a_waitpoint_token():
    async with http(limits=Limits(max_record_bytes=1000)) as (eng, client):
        token = await eng.service.create_waitpoint(timeout=3600, tags=["http"])
        own = {"authorization": f"Bearer {eng.service.waitpoint_token(token)}"}
        run_id = (await trigger(client, "gate", token.id))["id"]
        while (await eng.service.get_record(run_id)).status.value != "WAITING":
            await trio.sleep(0.01)
        url = f"/v1/api/waitpoints/{token.id}/complete"
        # refused, and nothing completed: no credential, a run's token, not JSON, too big
        assert_error(await client.post(url, json=1), 401, "unauthorized")
        other = {"authorization": f"Bearer {eng.service.run_token(run_id)}"}
        assert_error(await client.post(url, headers=other, json=1), 403, "forbidden")
        assert_error(await client.post(url, headers=own, content=b"{nope"), 422, "bad_frame")
        assert_error(await client.post(url, headers=own, json="x" * 2000), 413,
                     "payload_too_large")
        assert (await eng.service.get_waitpoint(token.id)).status == "WAITING"
        # the token's own public access token completes it; the waiting run gets the data
        r = await client.post(url, headers=own, json={"approved": True})
        assert r.status_code == 200 and r.json()["completed"] is True
        waitpoint = r.json()["waitpoint"]
        assert waitpoint["id"] == token.id and waitpoint["status"] == "COMPLETED"
        assert waitpoint["output"] == {"approved": True} and waitpoint["tags"] == ["http"]
        assert (await eng.wait_finished(run_id)).output == {"approved": True}
        # the first completion wins: the API key's later one changes nothing
        again = await client.post(url, headers=AUTH, json={"approved": False})
        assert again.status_code == 200 and again.json()["completed"] is False
        assert again.json()["waitpoint"]["output"] == {"approved": True}
        # an empty body is null; unknown and timed-out tokens; a wrong method
        bare = await eng.service.create_waitpoint()
        r = await client.post(f"/v1/api/waitpoints/{bare.id}/complete", headers=AUTH)
        assert r.status_code == 200 and r.json()["waitpoint"]["output"] is None
        assert_error(await client.post("/v1/api/waitpoints/waitpoint_nope/complete",
                                       headers=AUTH, json=1), 404, "not_found")
        await eng.service.store.create_token(StoredToken(id="waitpoint_old", created_at=0.0,
                                                         expires_at=1.0))
        assert_error(await client.post("/v1/api/waitpoints/waitpoint_old/complete",
                                       headers=AUTH, json=1), 409, "waitpoint_timed_out")
        r = await client.get(url, headers=AUTH)
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"


@bounded(20)
async def test_api_errors():
    async with http(limits=Limits(trigger_rate=0.001, trigger_burst=1,
                                  rate_limit_api_key=True)) as (_, client):
        await trigger(client, "echo", 1)  # the one token of the bucket
        r = await client.post("/v1/api/tasks/echo/trigger", headers=AUTH, json={})
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
    async with http(limits=Limits(max_payload_bytes=1000, max_http_body=10_000)) as (_, client):
        assert_error(await client.get("/v1/api/runs/run_x"), 401, "unauthorized")
        assert_error(await client.get("/v1/api/runs/run_x",
                                      headers={"authorization": "Basic abc"}), 401,
                     "unauthorized")
        assert_error(await client.get("/v1/api/runs/run_x",
                                      headers={"authorization": "Bearer wrong"}), 401,
                     "unauthorized")
        assert_error(await client.get("/v1/api/runs/run_x", headers=AUTH), 404, "not_found")
        assert_error(await client.post("/v1/api/tasks/nope/trigger", headers=AUTH, json={}),
                     404, "unknown_task")
        assert_error(await client.post("/v1/api/tasks/echo/trigger", headers=AUTH,
                                       json={"payload": "x" * 2000}), 413, "payload_too_large")
        assert_error(await client.post("/v1/api/tasks/echo/trigger", headers=AUTH,
                                       json={"payload": 1, "options": {"bogus": 1}}), 422,
                     "invalid_payload")
        assert_error(await client.post("/v1/api/tasks/echo/trigger", headers=AUTH,
                                       json=[1]), 422, "bad_frame")
        # the door's own: an oversized body, unknown routes, wrong methods
        r = await client.post("/v1/api/tasks/echo/trigger", headers=AUTH,
                              content=b"[" + b"1," * 10_000 + b"1]")
        assert_error(r, 413, "payload_too_large")
        assert_error(await client.get("/nowhere"), 404, "not_found")
        assert_error(await client.get("/v1/api/nowhere", headers=AUTH), 404, "not_found")
        r = await client.delete("/v1/api/runs/run_x", headers=AUTH)
        assert_error(r, 405, "method_not_allowed")
        assert "GET" in r.headers["allow"]
        r = await client.options("/v1/api/runs")  # a browser's preflight
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"


@bounded(20)
async def test_malformed_http_is_answered_and_closed():
    async with http() as (eng, _):
        for raw in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
                    b"GET /v1/api/runs HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 100_000
                    + b"\r\n\r\n"):
            stream = await trio.open_tcp_stream("127.0.0.1", eng.port)
            await stream.send_all(raw)
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
            assert b"Traceback" not in answer
            await stream.aclose()


@bounded(20)
async def test_websocket_and_http_share_the_port():
    async with http() as (eng, client):
        from runwire import connect, runs

        async with connect(eng.url, api_key=API_KEY):
            run = await echo.trigger(7)
            assert (await runs.retrieve(run.id)).id == run.id
            r = await client.get(f"/v1/api/runs/{run.id}", headers=AUTH)
            assert r.status_code == 200
        # a GET of /v1 that is not a websocket handshake is still the websocket's: refused
        r = await client.get("/v1")
        assert r.status_code >= 400


# --- run streams as durable streams ------------------------------------------------------------


@bounded(20)
async def test_run_stream_reads():
    async with http(limits=Limits(long_poll_timeout=0.3)) as (eng, client):
        made = await trigger(client, "talker")
        run_id = made["id"]
        token = {"authorization": f"Bearer {made['public_access_token']}"}
        url = f"/v1/runs/{run_id}/streams/ai"
        r = await client.get(url, headers=token, params={"offset": "-1"})
        while r.json() != ["hello", "world"]:  # the task may not have written both yet
            await trio.sleep(0.01)
            r = await client.get(url, headers=token, params={"offset": "-1"})
        assert r.headers["content-type"] == "application/json"
        tail = r.headers["stream-next-offset"]
        assert r.headers["stream-up-to-date"] == "true" and "stream-closed" not in r.headers
        # offsets sort like the chunk index; a partial read resumes
        r1 = await client.get(url, headers=token, params={"offset": "-1"})
        etag = r1.headers["etag"]
        assert (await client.get(url, headers={**token, "if-none-match": etag},
                                 params={"offset": "-1"})).status_code == 304
        # long-poll at the tail: 204 after the timeout, with a cursor
        r = await client.get(url, headers=token, params={"offset": tail, "live": "long-poll"})
        assert r.status_code == 204 and r.headers["stream-cursor"]
        assert r.headers["stream-next-offset"] == tail

        async def release() -> None:
            await trio.sleep(0.1)
            await eng.send_input(run_id, go.id, True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release)
            r = await client.get(url, headers=token, params={"offset": tail,
                                                             "live": "long-poll"})
        assert r.status_code == 200 and r.json() == ["bye"]
        await eng.wait_finished(run_id)
        end = r.headers["stream-next-offset"]
        assert end > tail
        r = await client.get(url, headers=token, params={"offset": end})
        assert r.json() == [] and r.headers["stream-closed"] == "true"
        r = await client.get(url, headers=token, params={"offset": end, "live": "long-poll"})
        assert r.status_code == 204 and r.headers["stream-closed"] == "true"
        # SSE from the start: data, control, closed
        r = await client.get(url, headers=token, params={"offset": "-1", "live": "sse"})
        assert r.headers["content-type"] == "text/event-stream"
        assert 'data:["hello","world","bye"]' in r.text and '"streamClosed":true' in r.text
        # bad input
        for params in ({"offset": "nope"}, {"offset": ""}, {"offset": "-1", "live": "x"},
                       {"live": "sse"}, {"offset": "0000000000000000_0000000000009999"}):
            assert_error(await client.get(url, headers=token, params=params), 400,
                         "bad_request")
        assert_error(await client.post(url, headers=token, content=b"[1]"), 405,
                     "method_not_allowed")
        assert_error(await client.get(url, params={"offset": "-1"}), 401, "unauthorized")
        other = await trigger(client, "echo", 1)
        assert_error(await client.get(f"/v1/runs/{other['id']}/streams/ai", headers=token),
                     403, "forbidden")
        assert_error(await client.get("/v1/runs/run_nope/streams/ai", headers=AUTH), 404,
                     "not_found")


@bounded(20)
async def test_run_events():
    async with http() as (eng, client):
        made = await trigger(client, "talker")
        run_id = made["id"]
        token = {"authorization": f"Bearer {made['public_access_token']}"}
        events: list[tuple[str, Any]] = []
        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=token) as r:
            assert r.headers["content-type"] == "text/event-stream"
            kind = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data:"):
                    events.append((kind, orjson.loads(line[5:])))
                    if kind == "chunks" and events[-1][1]["items"][-1:] == ["world"]:
                        await eng.send_input(run_id, go.id, True)
        kinds = [k for k, _ in events]
        assert kinds[0] == "run" and kinds[-1] == "end"
        items = [i for k, e in events if k == "chunks" for i in e["items"]]
        assert items == ["hello", "world", "bye"]
        assert [e for k, e in events if k == "run"][-1]["status"] == "COMPLETED"
        assert ("stream_end", {"stream": "ai", "offset": "0000000000000000_0000000000000003"}) \
            in events
        assert_error(await client.get("/v1/runs/run_nope/events", headers=AUTH), 404,
                     "not_found")


# --- free-standing durable streams -------------------------------------------------------------


@bounded(20)
async def test_durable_streams_need_the_api_key_unless_anonymous():
    async with http() as (_, client):
        assert_error(await client.put("/v1/stream/a"), 401, "unauthorized")
        r = await client.put("/v1/stream/a", headers={**AUTH, "content-type": "text/plain"},
                             content=b"hi")
        assert r.status_code == 201
        assert (await client.get("/v1/stream/a", headers=AUTH)).text == "hi"
    async with http(anonymous_streams=True) as (_, client):
        assert (await client.put("/v1/stream/a")).status_code == 201


@pytest.mark.parametrize("store", ["memory://", "sqlite:///:memory:", "redis"])
@bounded(20)
async def test_durable_stream_lifecycle(store):
    if store == "redis":
        from .redisserver import redis_url
        store = redis_url()
    async with http(anonymous_streams=True, store=store,
                    limits=Limits(long_poll_timeout=0.2)) as (_, client):
        ct = {"content-type": "application/json"}
        assert (await client.put("/v1/stream/j", headers=ct, content=b"[1]")).status_code == 201
        assert (await client.put("/v1/stream/j", headers=ct)).status_code == 200
        assert (await client.put("/v1/stream/j", headers={
            "content-type": "text/plain"})).status_code == 409
        r = await client.post("/v1/stream/j", headers=ct, content=b'[{"a":2},[3]]')
        assert r.status_code == 204
        assert (await client.get("/v1/stream/j?offset=-1")).json() == [1, {"a": 2}, [3]]
        producer = {**ct, "producer-id": "p", "producer-epoch": "0", "producer-seq": "0"}
        assert (await client.post("/v1/stream/j", headers=producer,
                                  content=b"4")).status_code == 200
        assert (await client.post("/v1/stream/j", headers=producer,
                                  content=b"4")).status_code == 204  # deduplicated
        assert (await client.post("/v1/stream/j", headers={**producer, "producer-seq": "5"},
                                  content=b"4")).status_code == 409
        assert (await client.post("/v1/stream/j", headers={**producer, "producer-epoch": "1",
                                                            "producer-seq": "0"},
                                  content=b"5")).status_code == 200
        r = await client.post("/v1/stream/j", headers=producer, content=b"6")
        assert r.status_code == 403 and r.headers["producer-epoch"] == "1"
        assert (await client.get("/v1/stream/j")).json() == [1, {"a": 2}, [3], 4, 5]
        # fork at message 2, then close the source
        r = await client.put("/v1/stream/f", headers={"stream-forked-from": "/v1/stream/j",
                                                     "stream-fork-offset":
                                                     "0000000000000000_0000000000000002"})
        assert r.status_code == 201
        await client.post("/v1/stream/f", headers=ct, content=b'"fork"')
        assert (await client.get("/v1/stream/f")).json() == [1, {"a": 2}, "fork"]
        r = await client.post("/v1/stream/j", headers={"stream-closed": "true"})
        assert r.status_code == 204 and r.headers["stream-closed"] == "true"
        r = await client.post("/v1/stream/j", headers=ct, content=b"7")
        assert r.status_code == 409 and r.headers["stream-closed"] == "true"
        r = await client.head("/v1/stream/j")
        assert r.headers["stream-closed"] == "true" and r.headers["cache-control"] == "no-store"
        # delete the source: soft (the fork reads it), gone for direct use
        assert (await client.delete("/v1/stream/j")).status_code == 204
        assert (await client.get("/v1/stream/j")).status_code == 410
        assert (await client.put("/v1/stream/j", headers=ct)).status_code == 409
        assert (await client.get("/v1/stream/f")).json() == [1, {"a": 2}, "fork"]
        assert (await client.delete("/v1/stream/f")).status_code == 204
        assert (await client.get("/v1/stream/f")).status_code == 404
        # bad input
        assert (await client.get("/v1/stream/nope")).status_code == 404
        assert (await client.post("/v1/stream/nope", headers=ct, content=b"1")).status_code \
            == 404
        assert (await client.patch("/v1/stream/x")).status_code == 405
        await client.put("/v1/stream/b", headers={"content-type": "application/octet-stream"})
        assert (await client.post("/v1/stream/b", content=b"x")).status_code == 400
        assert (await client.post("/v1/stream/b", headers={
            "content-type": "application/octet-stream"})).status_code == 400
        assert (await client.put("/v1/stream/t", headers={"stream-ttl": "1.5"})).status_code \
            == 400
        assert (await client.put("/v1/stream/t", headers={
            "stream-ttl": "5", "stream-expires-at": "2030-01-01T00:00:00Z"})).status_code == 400
        assert (await client.get("/v1/stream/b?offset=a&offset=b")).status_code == 400
        r = await client.post("/v1/stream/b", headers={"producer-id": "p"}, content=b"x")
        assert r.status_code == 400


@bounded(20)
async def test_durable_streams_survive_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'ds.db'}"
    async with http(anonymous_streams=True, store=url) as (_, client):
        await client.put("/v1/stream/s", headers={"content-type": "text/plain"}, content=b"ab")
        await client.post("/v1/stream/s", headers={
            "content-type": "text/plain", "producer-id": "p", "producer-epoch": "2",
            "producer-seq": "0"}, content=b"cd")
    async with http(anonymous_streams=True, store=url) as (_, client):
        r = await client.get("/v1/stream/s?offset=0000000000000000_0000000000000001")
        assert r.text == "bcd"
        r = await client.post("/v1/stream/s", headers={
            "content-type": "text/plain", "producer-id": "p", "producer-epoch": "2",
            "producer-seq": "0"}, content=b"cd")
        assert r.status_code == 204  # the producer's state was kept with the data


@bounded(20)
async def test_slow_sse_reader_does_not_block_others():
    async with http(anonymous_streams=True) as (eng, client):
        await client.put("/v1/stream/big", headers={"content-type": "text/plain"})
        stalled = await trio.open_tcp_stream("127.0.0.1", eng.port)
        await stalled.send_all(b"GET /v1/stream/big?offset=-1&live=sse HTTP/1.1\r\n"
                               b"Host: x\r\n\r\n")  # and never read
        payload = b"x" * 60_000
        for _ in range(100):  # far more than the socket buffers take
            r = await client.post("/v1/stream/big", headers={"content-type": "text/plain"},
                                  content=payload)
            assert r.status_code == 204
        r = await client.get("/v1/stream/big?offset=-1")
        assert r.status_code == 200 and len(r.content) > 0
        await stalled.aclose()


# --- the published client (@durable-streams/client) reads run streams --------------------------


@pytest.mark.parametrize("live", ["sse", "long-poll", "false"])
@bounded(60)
async def test_durable_streams_client_reads_a_run_stream(live):
    from .test_conformance import HERE, npm_packages

    node = shutil.which("node")
    assert node, "node is needed for the published client's test"
    npm_packages()
    async with http(limits=Limits(long_poll_timeout=1)) as (eng, client):
        made = await trigger(client, "talker")
        url = f"{eng.http_url}/v1/runs/{made['id']}/streams/ai"

        async def release() -> None:
            await trio.sleep(0.5)  # the client is reading live by now (or has read and left)
            await eng.send_input(made["id"], go.id, True)

        async with trio.open_nursery() as nursery:
            if live != "false":
                nursery.start_soon(release)
            else:
                await eng.send_input(made["id"], go.id, True)
                await eng.wait_finished(made["id"])
            done = await trio.run_process(
                [node, str(HERE / "read_run_stream.mjs"), url, made["public_access_token"],
                 live], capture_stdout=True, capture_stderr=True)
        assert orjson.loads(done.stdout) == ["hello", "world", "bye"], done.stderr


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
@bounded(30)
async def test_reads_of_the_newest_items_from_memory_match_the_store(store, tmp_path):
    """While a live reader waits on a stream, its newest items are kept in memory
    (``_dstreams._Live``, at most 256 items or about 64 KiB); reads that start there, before
    it and across where it begins all give what was written."""
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'r.db'}"
    if store == "redis":
        from .redisserver import redis_url
        url = redis_url()

    async def read_from(client: httpx.AsyncClient, path: str, offset: str) -> bytes:
        got = b""
        while True:
            r = await client.get(path, headers=AUTH, params={"offset": offset})
            assert r.status_code == 200, r.text
            got += r.content if "json" not in r.headers["content-type"] else (
                b"," if got and r.content != b"[]" else b"") + r.content[1:-1]
            offset = r.headers["stream-next-offset"]
            if r.headers.get("stream-up-to-date") == "true":
                return got

    def at(i: int) -> str:
        return f"0000000000000000_{i:016d}"

    async def tailed(client: httpx.AsyncClient, path: str, ctype: str,
                     bodies: list[bytes]) -> None:
        """Append each body while a live SSE reader waits at the tail."""
        async with client.stream("GET", path, headers=AUTH,
                                 params={"offset": "now", "live": "sse"}) as r:
            lines = r.aiter_lines()
            async for line in lines:  # the first control event: the reader is at the tail
                if line.startswith("data:{"):
                    break
            for body in bodies:
                p = await client.post(path, headers={**AUTH, "content-type": ctype},
                                      content=body)
                assert p.status_code == 204
                async for line in lines:  # its data, then its control event
                    if line.startswith("data:{"):
                        break

    async with http(store=url) as (eng, client):
        # JSON: 1,100 items in one append (more than the 256 kept), then one more
        await client.put("/v1/stream/j", headers={**AUTH, "content-type": "application/json"})
        await tailed(client, "/v1/stream/j", "application/json",
                     [orjson.dumps(list(range(1100))), b"[1100]"])
        for start in (0, 50, 843, 844, 845, 846, 1090, 1100, 1101):
            got = await read_from(client, "/v1/stream/j", at(start))
            assert orjson.loads(b"[" + got + b"]") == list(range(start, 1101)), start
        # bytes: three 60 KB appends (more than the 64 KiB kept)
        await client.put("/v1/stream/t", headers={**AUTH, "content-type": "text/plain"})
        parts = [bytes([ord("a") + i]) * 60_000 for i in range(3)]
        await tailed(client, "/v1/stream/t", "text/plain", parts)
        whole = b"".join(parts)
        for start in (0, 59_999, 60_005, 119_990, 120_000, 130_000, 180_000):
            assert await read_from(client, "/v1/stream/t", at(start)) == whole[start:], start
