"""The client side under asyncio and under trio, with the same calls (issue 15, part 1).

Every test here runs twice, its body under ``anyio.run(..., backend="trio")`` and under
``anyio.run(..., backend="asyncio")``, against one engine on trio in a thread of its own
(:class:`runwire.engine.EngineThread`): the engine's side is the same for both, only the
client's event loop (and its websocket: trio-websocket or websockets) differs.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import pytest

from runwire import (
    Client,
    BadFrameError,
    ForbiddenError,
    InvalidPayloadError,
    NotFoundError,
    OutsideRunError,
    RunFinishedError,
    RunStatus,
    StreamTimeoutError,
    auth,
    connect,
    runs,
    streams,
    task,
    tasks,
    tool_task,
    wait,
)
from runwire.engine import EngineThread

TIME_LIMIT = 20

ai = streams.define(id="ai", type=str)
stop = streams.input(id="stop", type=str)
go = streams.input(id="go")


@task(id="echo")
async def echo(payload):
    return payload


@task(id="chat")
async def chat(payload):
    """Streams ``n`` tokens, then waits for ``stop`` (its value is the output)."""
    await ai.pipe([f"t{i} " for i in range(payload["n"])]).wait_until_complete()
    return (await stop.once()).unwrap()


@task(id="sink")
async def sink(payload):
    """Holds a run open for chunks written to it from outside, until ``go``."""
    (await go.once()).unwrap()
    return "done"


@task(id="gate")
async def gate(token_id: str) -> Any:
    """Waits for the waitpoint token ``token_id``; its data is the output."""
    return await wait.for_token(token_id).unwrap()


@attrs.frozen
class Sum:
    a: int
    b: int


@tool_task(id="add", parameters=Sum)
async def add(payload: Sum) -> int:
    """Adds two integers."""
    return payload.a + payload.b


TASKS = [echo, chat, sink, gate, add]


@pytest.fixture(scope="module")
def engine():
    with EngineThread(TASKS) as thread:
        yield thread


@pytest.fixture(params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def run(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    """``body`` under ``backend``, bounded in time."""
    async def bounded() -> None:
        with anyio.fail_after(TIME_LIMIT):
            await body()

    anyio.run(bounded, backend=backend)


def test_trigger_and_wait_and_retrieve(engine, backend):
    async def body():
        async with engine.connect():
            handle = await echo.trigger({"a": 1})
            assert handle.public_access_token
            assert (await echo.trigger_and_wait({"b": 2})).output == {"b": 2}
            results = await echo.batch_trigger_and_wait([1, 2, 3])
            assert [r.output for r in results] == [1, 2, 3]
            assert (await tasks.trigger_and_wait("echo", "x")).output == "x"
            run_ = await runs.retrieve(handle.id)
            assert run_.task_id == "echo"
            with pytest.raises(NotFoundError):
                await runs.retrieve("run_does_not_exist")

    run(backend, body)


def test_read_send_and_subscribe_with_streams(engine, backend):
    async def body():
        async with engine.connect():
            handle = await chat.trigger({"n": 50})
            chunks = []
            async for chunk in await ai.read(handle.id):
                chunks.append(chunk)
                if len(chunks) == 50:
                    break
            assert chunks == [f"t{i} " for i in range(50)]
            await stop.send(handle.id, "bye")
            parts = [part async for part in runs.subscribe_to_run(handle.id).with_streams()]
            assert [p.chunk for p in parts if p.type == "ai"] == chunks
            final = [p.run for p in parts if p.type == "run"][-1]
            assert final.status is RunStatus.COMPLETED and final.output == "bye"
            with pytest.raises(RunFinishedError):
                await stop.send(handle.id, "again")

    run(backend, body)


def test_read_timeout_and_unknown_run(engine, backend):
    async def body():
        async with engine.connect():
            handle = await sink.trigger()
            with pytest.raises(StreamTimeoutError):
                await (await ai.read(handle.id, timeout_in_seconds=0.2)).collect()
            await go.send(handle.id, True)
            with pytest.raises(NotFoundError):
                await (await ai.read("run_does_not_exist")).collect()

    run(backend, body)


def test_cancel(engine, backend):
    async def body():
        async with engine.connect():
            handle = await sink.trigger()
            await runs.cancel(handle.id)
            last = None
            async for snapshot in runs.subscribe_to_run(handle.id):
                last = snapshot
            assert last is not None and last.status is RunStatus.CANCELED
            with pytest.raises(RunFinishedError):
                await runs.cancel(handle.id)

    run(backend, body)


def test_pipe_append_writer_with_target(engine, backend):
    async def body():
        async with engine.connect():
            handle = await sink.trigger()
            await ai.pipe((f"p{i}" for i in range(1000)), target=handle.id).wait_until_complete()
            await ai.append("a", target=handle.id)

            def execute(w):
                w.write("w1")
                w.merge(["m1", "m2"])

            await ai.writer(execute, target=handle.id).wait_until_complete()
            with pytest.raises(OutsideRunError):
                await ai.append("x")  # target="self" means nothing outside a run
            with pytest.raises(InvalidPayloadError, match="stream 'ai'"):
                await ai.append(object(), target=handle.id)  # typed: strictly checked
            with pytest.raises(TypeError, match="stream 'ai'"):
                await streams.append("ai", object(), target=handle.id)  # untyped: not JSON
            await go.send(handle.id, True)
            got = await (await ai.read(handle.id)).collect()
            assert got[:1001] == [f"p{i}" for i in range(1000)] + ["a"]
            assert sorted(got[1001:]) == ["m1", "m2", "w1"]

    run(backend, body)


def test_tokens(engine, backend):
    async def body():
        async with engine.connect():
            handle = await echo.trigger("tok")
            token = await auth.create_public_token(scopes=[f"read:runs:{handle.id}"])
        async with connect(engine.url, access_token=token):
            assert (await runs.retrieve(handle.id)).id == handle.id
            with pytest.raises(ForbiddenError):
                await echo.trigger("not allowed")

    run(backend, body)


def test_an_explicit_client_needs_no_context(engine, backend):
    """Handlers started from another task group or thread get no contextvar: they pass the
    client itself."""
    async def body():
        results: list[Any] = []

        async def handler(client: Client) -> None:
            handle = await chat.trigger({"n": 3}, client=client)
            async with await ai.read(handle.id, client=client) as reader:
                async for chunk in reader:
                    if chunk == "t2 ":
                        break
            await stop.send(handle.id, "done", client=client)
            results.append(await (await ai.read(handle.id, client=client)).collect())
            results.append((await runs.retrieve(handle.id, client=client)).task_id)
            token = await auth.create_public_token(scopes=["read:runs"], client=client)
            results.append(bool(token))

        holder: list[Client] = []
        ready = anyio.Event()

        async def owner(task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            async with engine.connect() as client:
                holder.append(client)
                task_status.started()
                await ready.wait()

        async with anyio.create_task_group() as group:
            await group.start(owner)
            # a task group of its own: connect()'s contextvar is not set here
            async with anyio.create_task_group() as other:
                with pytest.raises(OutsideRunError):
                    await echo.trigger(1)
                other.start_soon(handler, holder[0])
            ready.set()
        assert results == [["t0 ", "t1 ", "t2 "], "chat", True]

    run(backend, body)


#: Every client-side call that takes ``client=``, with valid arguments otherwise.
CLIENT_CALLS: dict[str, Callable[[Any], Awaitable[Any]]] = {
    "Task.trigger": lambda c: echo.trigger(1, client=c),
    "Task.trigger_and_wait": lambda c: echo.trigger_and_wait(1, client=c),
    "Task.batch_trigger_and_wait": lambda c: echo.batch_trigger_and_wait([1], client=c),
    "tasks.trigger": lambda c: tasks.trigger("echo", 1, client=c),
    "tasks.trigger_and_wait": lambda c: tasks.trigger_and_wait("echo", 1, client=c),
    "tasks.batch_trigger_and_wait": lambda c: tasks.batch_trigger_and_wait("echo", [1],
                                                                          client=c),
    "StreamDef.read": lambda c: ai.read("run_x", client=c),
    "streams.read": lambda c: streams.read("run_x", "ai", client=c),
    "StreamDef.append": lambda c: ai.append("x", target="run_x", client=c),
    "streams.append": lambda c: streams.append("ai", "x", target="run_x", client=c),
    "StreamDef.pipe": lambda c: _now(lambda: ai.pipe(["x"], target="run_x", client=c)),
    "streams.pipe": lambda c: _now(lambda: streams.pipe("ai", ["x"], target="run_x",
                                                        client=c)),
    "StreamDef.writer": lambda c: _now(lambda: ai.writer(print, target="run_x", client=c)),
    "streams.writer": lambda c: _now(lambda: streams.writer("ai", execute=print,
                                                            target="run_x", client=c)),
    "InputStream.send": lambda c: stop.send("run_x", "s", client=c),
    "runs.retrieve": lambda c: runs.retrieve("run_x", client=c),
    "runs.cancel": lambda c: runs.cancel("run_x", client=c),
    "runs.subscribe_to_run": lambda c: _now(lambda: runs.subscribe_to_run("run_x", client=c)),
    "auth.create_public_token": lambda c: auth.create_public_token(scopes=["read:runs"],
                                                                   client=c),
}


async def _now(fn: Callable[[], Any]) -> Any:
    return fn()


@pytest.mark.parametrize("call", sorted(CLIENT_CALLS))
@pytest.mark.parametrize("wrong", ["not a client", 42, object(), Client])
def test_a_wrong_client_argument(engine, backend, call, wrong):
    """Refused at the call with a TypeError naming what is expected; a connected client in
    the same context is not used instead, and nothing reaches the engine."""
    async def body():
        async with engine.connect() as client:
            before = client.statistics()
            with pytest.raises(TypeError, match="client must be a runwire Client"):
                await CLIENT_CALLS[call](wrong)
            assert client.statistics() == before

    run(backend, body)


def test_a_client_from_another_thread(engine, backend):
    """An asyncio (or trio) client in a thread of its own, next to the engine's."""
    outputs: list[Any] = []

    def worker() -> None:
        async def body():
            async with engine.connect() as client:
                outputs.append((await echo.trigger_and_wait("t", client=client)).output)

        run(backend, body)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(TIME_LIMIT)
    assert outputs == ["t"]


def test_unreachable_engine_and_bad_credential(engine, backend):
    async def body():
        with pytest.raises(ConnectionError):
            async with connect("ws://127.0.0.1:1", api_key="k", connect_timeout=1,
                               reconnect_timeout=0):
                pass
        from runwire import UnauthorizedError

        with pytest.raises(UnauthorizedError):
            async with connect(engine.url, api_key="wrong-key"):
                pass

    run(backend, body)


def test_the_asyncio_client_benchmark_runs():
    from tests.bench.bench_asyncio_client import TINY, measure

    report = measure(TINY)["results"]
    assert report["trio"]["read_per_s"] > 0 and report["asyncio"]["read_per_s"] > 0
    assert report["ratio"]["trigger"] > 0


# --- issue 20's client-side calls, under both backends ---------------------------------------


def test_runs_list_pages_with_and_without_an_explicit_client(engine, backend):
    async def body():
        tag = f"list-{uuid.uuid4().hex[:8]}"
        async with engine.connect() as client:
            made = [(await echo.trigger(i, tags=[tag])).id for i in range(3)]
            first = await runs.list(task="echo", tags=[tag], limit=2)
            assert [r.id for r in first.runs] == made[::-1][:2] and first.cursor
            rest = await runs.list(task="echo", tags=[tag], limit=2, cursor=first.cursor,
                                   client=client)
            assert [r.id for r in rest.runs] == made[:1] and rest.cursor is None
            with pytest.raises(BadFrameError, match="cursor"):
                await runs.list(cursor="not-a-cursor", client=client)
            with pytest.raises(TypeError, match="status"):
                await runs.list(status=42, client=client)  # type: ignore[arg-type]
        async with anyio.create_task_group() as group:  # no connect() context here
            async def outside() -> None:
                with pytest.raises(OutsideRunError):
                    await runs.list(tags=[tag])
            group.start_soon(outside)

    run(backend, body)


def test_waitpoint_tokens_from_a_client(engine, backend):
    async def body():
        async with engine.connect() as client:
            token = await wait.create_token(timeout="1h", tags=["both"], client=client)
            assert token.status == "WAITING" and token.public_access_token
            handle = await gate.trigger(token.id, client=client)
            assert await wait.complete_token(token, {"ok": True}, client=client) is True
            assert await wait.complete_token(token.id, {"ok": False}, client=client) is False
            done = await wait.retrieve_token(token.id, client=client)
            assert done.status == "COMPLETED" and done.output == {"ok": True}
            result = await gate.trigger_and_wait(token.id, client=client)  # completed: at once
            assert result.output == {"ok": True}
            while not (snapshot := await runs.retrieve(handle.id, client=client)).is_finished:
                await anyio.sleep(0.01)
            assert snapshot.output == {"ok": True}
            with pytest.raises(NotFoundError):
                await wait.complete_token("waitpoint_nope", 1, client=client)
        async with connect(engine.url, access_token=token.public_access_token) as holder:
            assert await wait.complete_token(token.id, 2, client=holder) is False

    run(backend, body)


def test_batch_items_appends_strict_sends_and_tools(engine, backend):
    async def body():
        async with engine.connect() as client:
            results = await echo.batch_trigger_and_wait(
                [1, {"payload": 2, "options": {"tags": ["item"]}}, {"payload": {"x": 3}}],
                client=client)
            assert [r.output for r in results] == [1, 2, {"x": 3}]
            assert (await runs.retrieve(results[1].id, client=client)).tags == ("item",)
            handle = await sink.trigger(client=client)
            pending = [ai.append(f"u{i}", target=handle.id, client=client) for i in range(5)]
            await ai.append("last", target=handle.id, client=client)  # after the 5 above
            del pending  # never awaited: they land anyway, in call order
            with pytest.raises(InvalidPayloadError, match="stream 'stop'"):
                await stop.send(handle.id, 42, client=client)  # type: ignore[arg-type]
            await go.send(handle.id, True, client=client)
            assert await (await ai.read(handle.id, client=client)).collect() == \
                [f"u{i}" for i in range(5)] + ["last"]
            assert await add.run_tool('{"a": 2, "b": 3}', client=client) == 5
            with pytest.raises(InvalidPayloadError, match="arguments"):
                await add.run_tool({"a": "2", "b": 3}, client=client)

    run(backend, body)

