"""``sse_events`` and ``sse_response`` given bad input (issue 15, part 2): wrong types are
refused at the call, before a web framework sends headers; an unknown run, a refused or
expired token and a malformed ``Last-Event-ID`` are answered, not crashed on; a finished
run's stream is served whole, and a resume neither repeats nor skips a chunk."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import orjson
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from runwire import (
    Client,
    OutsideRunError,
    auth,
    sse_event,
    sse_events,
    sse_response,
    streams,
    task,
)
from runwire.engine import EngineThread, open_engine

from .helpers import API_KEY

TIME_LIMIT = 20
N = 10

words = streams.define(id="words", type=str)
go = streams.input(id="go")


@task(id="sse-story")
async def story(payload: Any) -> None:
    await words.pipe([f"w{i}" for i in range(N)]).wait_until_complete()


@task(id="sse-held")
async def held(payload: Any) -> None:
    (await go.once()).unwrap()


def parse(body: bytes) -> list[tuple[str | None, str, Any]]:
    """(id, event, data) of each event of an SSE body."""
    found = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        found.append((fields.get("id"), fields["event"], orjson.loads(fields["data"])))
    return found


async def collect(events: Any) -> list[tuple[str | None, str, Any]]:
    return parse(b"".join([event async for event in events]))


def chunks(start: int = 0) -> list[tuple[str | None, str, Any]]:
    return [(str(i), "chunk", f"w{i}") for i in range(start, N)] + [(None, "end", {"chunks": N})]


@pytest.fixture(scope="module")
def engine():
    with EngineThread([story, held], start_timeout=TIME_LIMIT) as thread:
        yield thread


@pytest.fixture(params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def run(backend: str, body: Any) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(TIME_LIMIT):
            return await body()

    return anyio.run(bounded, backend=backend)


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((42,), {}, TypeError, "run_id must be a non-empty string"),
    (("",), {}, TypeError, "run_id must be a non-empty string"),
    (("run_x", ""), {}, ValueError, "stream key"),
    (("run_x", 7), {}, ValueError, "stream key"),
    (("run_x", "k" * 257), {}, ValueError, "stream key"),
    (("run_x",), {"start_index": -1}, ValueError, "start_index"),
    (("run_x",), {"start_index": True}, ValueError, "start_index"),
    (("run_x",), {"start_index": "3"}, ValueError, "start_index"),
    (("run_x",), {"timeout_in_seconds": 0}, ValueError, "timeout_in_seconds"),
    (("run_x",), {"timeout_in_seconds": "5"}, ValueError, "timeout_in_seconds"),
    (("run_x",), {"timeout_in_seconds": float("nan")}, ValueError, "timeout_in_seconds"),
    (("run_x",), {"client": "not a client"}, TypeError, "runwire Client"),
    (("run_x",), {}, OutsideRunError, "no runwire run or client"),
])
def test_wrong_arguments_are_refused_at_the_call(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        sse_events(*args, **kwargs)
    if "start_index" not in kwargs:  # sse_response takes the index from Last-Event-ID
        with pytest.raises(error, match=match):
            sse_response(*args, **kwargs)


def test_a_finished_run_is_served_whole_and_from_an_index(engine, backend):
    async def body():
        async with engine.connect() as client:
            handle = await story.trigger(None, client=client)
            await client.wait_for_run(handle.id)
            whole = await collect(sse_events(handle.id, "words", client=client))
            tail = await collect(sse_events(handle.id, "words", client=client, start_index=7))
            past = await collect(sse_events(handle.id, "words", client=client,
                                            start_index=N + 5))
            return whole, tail, past

    whole, tail, past = run(backend, body)
    assert whole == chunks()
    assert tail == chunks(7)
    assert [event for _, event, _ in past] == ["end"]  # past the end: nothing, then the end


def test_an_unknown_run_and_a_refused_token_are_error_events(engine, backend):
    async def body():
        async with engine.connect() as client:
            mine = await story.trigger(None, client=client)
            other = await story.trigger(None, client=client)
            await client.wait_for_run(mine.id)
            unknown = await collect(sse_events("run_does_not_exist", "words", client=client))
        async with engine.connect(access_token=mine.public_access_token) as public:
            allowed = await collect(sse_events(mine.id, "words", client=public))
            refused = await collect(sse_events(other.id, "words", client=public))
        return unknown, allowed, refused

    unknown, allowed, refused = run(backend, body)
    assert [(event, data["code"]) for _, event, data in unknown] == [("error", "not_found")]
    assert allowed == chunks()
    assert [(event, data["code"]) for _, event, data in refused] == [("error", "forbidden")]


async def test_an_expired_token_is_an_error_event(autojump_clock):
    with trio.fail_after(7200):
        async with open_engine([story], api_key=API_KEY) as eng:
            async with eng.connect() as client:
                handle = await story.trigger(None, client=client)
                await client.wait_for_run(handle.id)
                token = await auth.create_public_token(scopes=[f"read:runs:{handle.id}"],
                                                       expiration=60, client=client)
            async with eng.connect(token) as public:
                assert await collect(sse_events(handle.id, "words", client=public)) == chunks()
                await trio.sleep(61)
                got = await collect(sse_events(handle.id, "words", client=public))
    assert [(event, data["code"]) for _, event, data in got] == [("error", "unauthorized")]
    assert "expired" in got[0][2]["message"]


def test_an_error_mid_stream_comes_after_the_chunks_before_it(engine, backend):
    """A held run's stream times out: the chunks written so far, then ``error``."""
    async def body():
        async with engine.connect() as client:
            handle = await held.trigger(None, client=client)
            await words.pipe(["a", "b"], target=handle.id, client=client).wait_until_complete()
            got = await collect(sse_events(handle.id, "words", client=client,
                                           timeout_in_seconds=0.3))
            await go.send(handle.id, True, client=client)
            return got

    got = run(backend, body)
    assert got[:2] == [("0", "chunk", "a"), ("1", "chunk", "b")]
    assert [(event, data["code"]) for _, event, data in got[2:]] == [("error", "timeout")]


def app_for(client: Client) -> Starlette:
    async def endpoint(request: Request) -> Any:
        return sse_response(request.path_params["run_id"], "words", client=client,
                            request=request)

    return Starlette(routes=[Route("/runs/{run_id}/stream", endpoint)])


@pytest.mark.parametrize("header", [
    "-1", "abc", "1.5", "", " ", "0x1", "+3", "1" * 19, "3, 4",
    "²".encode("latin-1"),  # str.isdigit() says yes, int() says no
])
def test_a_malformed_last_event_id_is_a_400(engine, header):
    async def body():
        async with engine.connect() as client:
            handle = await story.trigger(None, client=client)
            await client.wait_for_run(handle.id)
            transport = httpx.ASGITransport(app=app_for(client))
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                return await http.get(f"/runs/{handle.id}/stream",
                                      headers={"Last-Event-ID": header})

    response = run("asyncio", body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/event-stream")
    [(_, event, data)] = parse(response.content)
    assert event == "error" and data["code"] == "bad_request"
    assert "Last-Event-ID must be a chunk index" in data["message"]


def test_a_last_event_id_resumes_after_it(engine):
    async def body():
        async with engine.connect() as client:
            handle = await story.trigger(None, client=client)
            await client.wait_for_run(handle.id)
            transport = httpx.ASGITransport(app=app_for(client))
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                url = f"/runs/{handle.id}/stream"
                return [await http.get(url, headers=headers) for headers in (
                    {}, {"Last-Event-ID": "4"}, {"Last-Event-ID": f" {N - 1} "})]

    whole, resumed, at_end = run("asyncio", body)
    assert [r.status_code for r in (whole, resumed, at_end)] == [200, 200, 200]
    assert parse(whole.content) == chunks()
    assert parse(resumed.content) == chunks(5)
    assert parse(at_end.content) == chunks(N)


def test_sse_event_lines():
    assert sse_event({"a": "x\ny"}, event="chunk", id=3) == \
        b'id: 3\nevent: chunk\ndata: {"a":"x\\ny"}\n\n'
