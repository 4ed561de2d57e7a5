"""The types users get from the SDK, pinned for mypy; type-checked, never run.

``mypy --strict`` checks this file together with the package (``tests/test_static_checks.py``
does, from a tree of symlinks: mypy cannot follow the editable install's import hook). First
the README's "In 20 lines" example, annotated as a ``--strict`` project writes it, then
SPEC sections 2 and 3, each promise pinned with ``assert_type``. A line ending in
``# type: ignore[...]`` is a call the types must refuse: under ``--strict``
(``warn_unused_ignores``) mypy fails once it stops being an error. pytest does not collect
this file (no ``test_`` prefix) and nothing imports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, assert_type

import attrs
import trio

from runwire import (
    Client,
    InputResult,
    InputStreamDef,
    PipeResult,
    Run,
    RunContext,
    RunHandle,
    RunPart,
    StreamDef,
    StreamReader,
    StreamWriter,
    Subscription,
    Task,
    TaskRunResult,
    WriterResult,
    connect,
    runs,
    schema_task,
    streams,
    task,
    tasks,
)
from runwire.engine import open_engine

# --- README.md, "In 20 lines" ------------------------------------------------------------

ai = streams.define(id="ai-output", type=str)


@task(id="generate")
async def generate(payload: dict[str, Any], ctx: RunContext) -> dict[str, int]:
    words = payload["prompt"].split()
    await ai.pipe(w.upper() for w in words).wait_until_complete()
    return {"words": len(words)}


async def main() -> None:
    async with open_engine([generate], store="sqlite:///runwire.db", api_key="secret-key",
                           port=0) as eng:
        async with connect(eng.url, api_key="secret-key"):
            handle = await generate.trigger({"prompt": "hello streaming world"})
            async for chunk in await ai.read(handle.id):
                print(chunk)          # HELLO, STREAMING, WORLD — then the stream ends


if __name__ == "__main__":
    trio.run(main)

assert_type(ai, StreamDef[str])
assert_type(generate, Task[dict[str, Any], dict[str, int]])


# --- 1. output streams ---------------------------------------------------------------------


@attrs.frozen
class Progress:
    step: int
    label: str


progress = streams.define(id="progress", type=Progress)
assert_type(progress, StreamDef[Progress])
assert_type(streams.define(id="raw"), StreamDef[Any])
assert_type(streams.define(id="raw", type=None), StreamDef[Any])
assert_type(streams.define(id="pairs", type=list[int]), StreamDef[list[int]])
assert_type(streams.define(id="maybe", type=int | None), StreamDef[Any])  # not a class
assert_type(StreamDef("direct", str), StreamDef[str])
assert_type(StreamDef("direct"), StreamDef[Any])


async def read_streams(run_id: str) -> None:
    reader = await ai.read(run_id, timeout_in_seconds=120, start_index=0)
    assert_type(reader, StreamReader[str])
    async for token in reader:
        assert_type(token, str)
    async with await progress.read(run_id) as chunks:
        async for step in chunks:
            assert_type(step, Progress)
    assert_type(await (await progress.read(run_id)).collect(), list[Progress])
    untyped = await streams.read(run_id, "ai-output")
    assert_type(untyped, StreamReader[Any])
    assert_type(await streams.read(run_id), StreamReader[Any])


async def tokens() -> AsyncIterator[str]:
    yield "streamed"


def write_progress(w: StreamWriter[Progress]) -> None:
    w.write(Progress(1, "load"))
    w.merge([Progress(2, "think")])
    w.write("not progress")  # type: ignore[arg-type]


async def write_progress_async(w: StreamWriter[Progress]) -> None:
    w.write(Progress(3, "done"))


async def write_streams(run_id: str) -> None:
    await ai.append("token")
    await ai.append("token", target=run_id)
    await progress.append(Progress(1, "load"))
    await ai.append(1)  # type: ignore[arg-type]
    await progress.append({"step": 1})  # type: ignore[arg-type]

    piped = ai.pipe(["a", "b"])
    assert_type(piped, PipeResult[str])
    async for again in piped.stream:
        assert_type(again, str)
    await piped.wait_until_complete()
    assert_type(ai.pipe(tokens()), PipeResult[str])
    assert_type(ai.pipe(tokens(), target="parent"), PipeResult[str])
    progress.pipe(["not progress"])  # type: ignore[list-item]

    assert_type(progress.writer(write_progress), WriterResult)
    assert_type(progress.writer(write_progress_async), WriterResult)
    ai.writer(write_progress)  # type: ignore[arg-type]

    assert_type(streams.pipe([1, 2]), PipeResult[int])
    assert_type(streams.pipe("numbers", tokens()), PipeResult[str])
    await streams.append("default-key chunk")
    await streams.append("numbers", 3)
    assert_type(streams.writer("numbers", execute=write_progress), WriterResult)


# --- 2. input streams ----------------------------------------------------------------------


@attrs.frozen
class Approval:
    approved: bool
    by: str


@attrs.frozen
class CancelSignal:
    reason: str


approval = streams.input(id="approval", type=Approval)
cancel = streams.input(id="cancel", type=CancelSignal)
assert_type(approval, InputStreamDef[Approval])
assert_type(cancel, InputStreamDef[CancelSignal])
assert_type(streams.input(id="anything"), InputStreamDef[Any])
assert_type(InputStreamDef("direct", Approval), InputStreamDef[Approval])


def on_cancel(signal: CancelSignal) -> None:
    print(signal.reason)


async def on_cancel_async(signal: CancelSignal) -> None:
    print(signal.reason)


def on_approval(record: Approval) -> None:
    print(record.by)


async def inside_a_run() -> None:
    waited = await approval.wait(timeout="7d", idempotency_key="order-42", tags=["review"])
    assert_type(waited, InputResult[Approval])
    assert_type(waited.unwrap(), Approval)
    assert_type(waited.output, Approval | None)
    assert_type(waited.ok, bool)
    once = await cancel.once(timeout_ms=5000)
    assert_type(once, InputResult[CancelSignal])
    assert_type(once.unwrap(), CancelSignal)
    assert_type(await approval.wait(timeout=30), InputResult[Approval])
    assert_type(approval.peek(), Approval | None)
    sub = cancel.on(on_cancel)
    assert_type(sub, Subscription)
    sub.off()
    cancel.on(on_cancel_async, fail_run=True)
    cancel.on(on_approval)  # type: ignore[arg-type]


async def send_inputs(run_id: str) -> None:
    await cancel.send(run_id, CancelSignal("stop"))
    await approval.send(run_id, Approval(True, "me"), idempotency_key="k")
    await cancel.send(run_id, Approval(True, "me"))  # type: ignore[arg-type]


# --- 3. tasks ------------------------------------------------------------------------------


@task(id="ping")
async def ping(payload: str) -> str:  # one argument is fine too
    return payload


@task(id="maybe")
async def maybe(payload: dict[str, Any] | None, ctx: RunContext) -> None:
    print(ctx.run.id, ctx.attempt)


@task(id="untyped")
async def untyped(payload: Any) -> Any:
    return payload


@attrs.define
class SummariseInput:
    text: str
    max_words: int = 50


@attrs.frozen
class Summary:
    text: str


@schema_task(id="summarise", schema=SummariseInput)
async def summarise(payload: SummariseInput, ctx: RunContext) -> Summary:
    return Summary(payload.text[:payload.max_words])


@schema_task(id="summarise-one", schema=SummariseInput)
async def summarise_one(payload: SummariseInput) -> str:
    return payload.text


assert_type(ping, Task[str, str])
assert_type(maybe, Task[dict[str, Any] | None, None])
assert_type(untyped, Task[Any, Any])
assert_type(summarise, Task[SummariseInput, Summary])
assert_type(summarise_one, Task[SummariseInput, str])


async def wrong_schema(payload: int) -> int:
    return payload


schema_task(id="wrong", schema=SummariseInput)(wrong_schema)  # type: ignore[arg-type]


async def trigger_tasks() -> None:
    handle = await generate.trigger({"prompt": "hi"}, tags=["beta"], idempotency_key="k")
    assert_type(handle, RunHandle)
    assert_type(handle.id, str)
    result = await generate.trigger_and_wait({"prompt": "hi"})
    assert_type(result, TaskRunResult[dict[str, int]])
    assert_type(result.unwrap(), dict[str, int])
    assert_type(result.output, dict[str, int] | None)
    results = await generate.batch_trigger_and_wait([{"prompt": "a"}, {"prompt": "b"}])
    assert_type(results, list[TaskRunResult[dict[str, int]]])
    assert_type(await ping.trigger_and_wait("hi"), TaskRunResult[str])
    assert_type(await summarise.trigger_and_wait(SummariseInput("long text")),
                TaskRunResult[Summary])
    assert_type(await summarise.batch_trigger_and_wait((SummariseInput("a"),)),
                list[TaskRunResult[Summary]])

    # no payload: only for a task that takes None (or is untyped)
    assert_type(await maybe.trigger(), RunHandle)
    assert_type(await maybe.trigger_and_wait(), TaskRunResult[None])
    assert_type(await untyped.trigger(), RunHandle)
    await generate.trigger()  # type: ignore[call-arg]
    await generate.trigger("not a dict")  # type: ignore[arg-type]
    await ping.trigger_and_wait(1)  # type: ignore[arg-type]

    # by id: untyped
    assert_type(await tasks.trigger("generate", {"prompt": "hi"}), RunHandle)
    assert_type(await tasks.trigger_and_wait("generate", {}), TaskRunResult[Any])


# --- from a backend ------------------------------------------------------------------------


async def backend(url: str) -> None:
    async with connect(url, api_key="secret-key") as client:
        assert_type(client, Client)
        handle = await generate.trigger({"prompt": "hi"})
        async for chunk in await ai.read(handle.id):
            assert_type(chunk, str)
        await cancel.send(handle.id, CancelSignal("stop"))
        async for part in runs.subscribe_to_run(handle.id).with_streams():
            assert_type(part, RunPart)
        async for snapshot in runs.subscribe_to_run(handle.id):
            assert_type(snapshot, Run)
        assert_type(await runs.retrieve(handle.id), Run)
        await runs.cancel(handle.id)
        assert_type(ai.pipe(tokens(), target=handle.id), PipeResult[str])
    async with connect(url, access_token="token"):
        pass
