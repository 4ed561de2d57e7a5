"""The real OpenAI and Anthropic async SDKs inside tasks, streaming from fake servers on
loopback (issue 15, part 3), and asyncio-only code inside a task."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import trio
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from runwire import AsyncioInTaskError, RunStatus, metadata, run_asyncio, streams, task

from .fake_llm import TOOL_ARGS, WORDS, fake_llm_server
from .helpers import bounded, final, serve

TEXT = "".join(WORDS)
MESSAGES = [{"role": "user", "content": "What is structured concurrency?"}]


@pytest.fixture
def llm():
    with fake_llm_server() as (base, requests):
        yield base, requests


def openai_client(base: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-fake", max_retries=0, timeout=10)


def anthropic_client(base: str) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=base, api_key="sk-fake", max_retries=0, timeout=10)


async def read_all(run_id: str, key: str) -> list:
    return await (await streams.read(run_id, key, timeout_in_seconds=10)).collect()


def openai_tasks(base: str):
    @task(id="seed")
    async def seed(payload):
        """The seed's first example, as written."""
        completion = await openai_client(base).chat.completions.create(
            model=payload["model"], messages=MESSAGES, stream=True)
        text = ""
        async for chunk in await metadata.stream("openai", completion):
            text += chunk.choices[0].delta.content or ""
        return text

    @task(id="deltas")
    async def deltas(payload):
        """Text deltas piped as strings; tool-call parts piped as dicts of their own."""
        completion = await openai_client(base).chat.completions.create(
            model="gpt-fake-tools", messages=MESSAGES, stream=True,
            tools=[{"type": "function", "function": {"name": "get_weather",
                                                     "parameters": {"type": "object"}}}])
        tools = streams.define(id="tools")
        calls = []

        async def text():
            async for chunk in completion:
                delta = chunk.choices[0].delta
                if delta.content:
                    yield delta.content
                for call in delta.tool_calls or ():
                    calls.append(call)  # a pydantic model: stored as its JSON
        await streams.pipe("text", text()).wait_until_complete()
        await tools.pipe(calls).wait_until_complete()
        return "".join(call.function.arguments or "" for call in calls)

    return [seed, deltas]


@bounded(20)
async def test_the_seeds_openai_example_as_written(llm, transport):
    base, requests = llm
    async with serve(openai_tasks(base), transport):
        handle = await openai_tasks(base)[0].trigger({"model": "gpt-fake"})
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.output == TEXT
        stored = await read_all(handle.id, "openai")
        assert len(stored) == len(WORDS) + 2  # the role chunk, the words, the finish chunk
        assert all(chunk["object"] == "chat.completion.chunk" for chunk in stored)
        assert "".join(c["choices"][0]["delta"]["content"] or "" for c in stored) == TEXT
        assert requests[0][1]["stream"] is True


@bounded(20)
async def test_a_broken_openai_stream_fails_the_run_after_the_chunks_before(llm, transport):
    base, _ = llm
    async with serve(openai_tasks(base), transport):
        handle = await openai_tasks(base)[0].trigger({"model": "gpt-fake-broken"})
        run = await final(handle.id)
        assert run.status is RunStatus.FAILED
        assert run.error.type == "APIConnectionError"
        stored = await read_all(handle.id, "openai")
        assert [c["choices"][0]["delta"]["content"] for c in stored] == ["", *WORDS[:2]]


@bounded(20)
async def test_openai_text_deltas_and_tool_call_parts(llm, transport):
    base, _ = llm
    async with serve(openai_tasks(base), transport):
        handle = await openai_tasks(base)[1].trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.output == '{"city": "Paris", "unit": "C"}'
        assert "".join(await read_all(handle.id, "text")) == TEXT
        tools = await read_all(handle.id, "tools")
        assert tools[0]["function"]["name"] == "get_weather" and tools[0]["id"] == "call_1"
        assert [t["function"]["arguments"] for t in tools[1:]] == TOOL_ARGS


def anthropic_tasks(base: str):
    @task(id="claude-text")
    async def claude_text(payload):
        async with anthropic_client(base).messages.stream(
                model=payload["model"], max_tokens=100, messages=MESSAGES) as stream:
            await streams.pipe("text", stream.text_stream).wait_until_complete()
            message = await stream.get_final_message()
        return [block.type for block in message.content]

    @task(id="claude-events")
    async def claude_events(payload):
        """Every raw event (pydantic models) as it comes, tool-use parts included."""
        events = await anthropic_client(base).messages.create(
            model="claude-fake-tools", max_tokens=100, messages=MESSAGES, stream=True,
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
        kinds = []
        async for event in await metadata.stream("events", events):
            kinds.append(event.type)
        return kinds

    return [claude_text, claude_events]


@bounded(20)
async def test_anthropic_text_stream_piped(llm, transport):
    base, _ = llm
    tasks = anthropic_tasks(base)
    async with serve(tasks, transport):
        handle = await tasks[0].trigger({"model": "claude-fake"})
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.output == ["text"]
        assert await read_all(handle.id, "text") == WORDS


@bounded(20)
async def test_anthropic_raw_events_with_tool_use_parts(llm, transport):
    base, _ = llm
    tasks = anthropic_tasks(base)
    async with serve(tasks, transport):
        handle = await tasks[1].trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED, run.error
        stored = await read_all(handle.id, "events")
        assert [e["type"] for e in stored] == run.output
        tool_start = [e for e in stored if e["type"] == "content_block_start"][1]
        assert tool_start["content_block"]["name"] == "get_weather"
        parts = [e["delta"]["partial_json"] for e in stored
                 if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
        assert parts == TOOL_ARGS


@bounded(20)
async def test_a_broken_anthropic_stream_fails_the_run(llm, transport):
    base, _ = llm
    tasks = anthropic_tasks(base)
    async with serve(tasks, transport):
        handle = await tasks[0].trigger({"model": "claude-fake-broken"})
        run = await final(handle.id)
        assert run.status is RunStatus.FAILED
        assert await read_all(handle.id, "text") == WORDS[:2]


# --- asyncio-only code inside a task -------------------------------------------------------


@task(id="asyncio-sleep")
async def asyncio_sleep(payload):
    await asyncio.sleep(0.01)
    return "slept"


async def asyncio_only(n: int) -> int:
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: n * 2)


@task(id="adapted")
async def adapted(payload):
    return await run_asyncio(asyncio_only, payload)


@task(id="adapted-fails")
async def adapted_fails(payload):
    async def boom():
        await asyncio.sleep(0)
        raise ValueError("from asyncio")
    try:
        await run_asyncio(boom)
    except ValueError as exc:
        return str(exc)


@task(id="adapted-cancel")
async def adapted_cancel(payload):
    await run_asyncio(asyncio.sleep, 3600)


@bounded(20)
async def test_asyncio_only_code_fails_with_the_cause_and_the_fix(transport):
    async with serve([asyncio_sleep], transport):
        run = await final((await asyncio_sleep.trigger()).id)
        assert run.status is RunStatus.FAILED
        assert run.error.type == "AsyncioInTaskError"
        assert "trio" in run.error.message and "run_asyncio" in run.error.message
        assert "anyio" in run.error.message


@bounded(20)
async def test_asyncio_only_code_runs_through_run_asyncio(transport):
    async with serve([adapted, adapted_fails, adapted_cancel], transport):
        assert (await adapted.trigger_and_wait(21)).output == 42
        assert (await adapted_fails.trigger_and_wait()).output == "from asyncio"
        from runwire import runs

        handle = await adapted_cancel.trigger()
        await runs.cancel(handle.id)
        assert (await final(handle.id)).status is RunStatus.CANCELED


async def test_run_asyncio_refuses_a_non_async_function():
    with pytest.raises(TypeError, match="async function"):
        await run_asyncio(lambda: 1)
    with pytest.raises(TypeError, match="async function"):
        await run_asyncio(42)
    with pytest.raises(TypeError, match="async function.*returned int"):
        await run_asyncio(len, "abc")  # callable, but not a coroutine function
    with pytest.raises(TypeError, match="async function.*returned generator"):
        await run_asyncio(lambda: (yield))


@bounded(20)
async def test_run_asyncio_gives_back_what_the_coroutine_raised():
    class Custom(Exception):
        pass

    async def fails(n):
        await asyncio.sleep(0)
        raise Custom(f"failed with {n}")

    with pytest.raises(Custom, match="failed with 7"):
        await run_asyncio(fails, 7)
    assert await run_asyncio(asyncio.sleep, 0, "after") == "after"  # still usable


@bounded(20)
async def test_cancelling_run_asyncio_cancels_the_coroutine():
    started, cancelled = threading.Event(), threading.Event()

    async def waits():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with trio.move_on_after(5) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_asyncio, waits)
            await trio.to_thread.run_sync(started.wait, 5)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert await trio.to_thread.run_sync(cancelled.wait, 5)


@bounded(30)
async def test_a_cancel_before_the_loop_is_up_never_starts_the_coroutine():
    """However early the cancel lands, the coroutine is either cancelled or never runs: no
    thread is left running it unseen."""
    for attempt in range(40):
        started, cancelled = threading.Event(), threading.Event()

        async def waits():
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with trio.move_on_after(attempt * 0.0001):
            await run_asyncio(waits)
        await trio.to_thread.run_sync(lambda: time.sleep(0.05))  # the worker thread's turn
        if started.is_set():
            assert await trio.to_thread.run_sync(cancelled.wait, 5), attempt


def test_the_error_is_a_runwire_error():
    from runwire import RunwireError

    assert issubclass(AsyncioInTaskError, RunwireError)
