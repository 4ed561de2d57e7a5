"""A failing producer never truncates silently (issue 15, part 5), and a chunk that is not
JSON is refused at the writer's call ("Bad input")."""

from __future__ import annotations

import pytest

from runwire import RunStatus, metadata, streams, task
from runwire.engine import Limits

from .helpers import final, serve


class NotJson:
    pass


async def failing_source(n: int, error: Exception):
    for i in range(n):
        yield f"c{i}"
    raise error


async def read_all(run_id: str, key: str) -> list:
    return await (await streams.read(run_id, key)).collect()


@task(id="iterates")
async def iterates(payload):
    seen = []
    async for chunk in await metadata.stream("out", failing_source(2, ValueError("boom"))):
        seen.append(chunk)
    return seen  # never reached: the loop raises


@task(id="catches")
async def catches(payload):
    seen = []
    try:
        async for chunk in streams.pipe("out", failing_source(2, ValueError("boom"))).stream:
            seen.append(chunk)
    except ValueError as exc:
        return {"seen": seen, "error": str(exc)}
    return "not reached"


@task(id="ignores")
async def ignores(payload):
    streams.pipe("out", failing_source(2, ValueError("boom")))
    return "done"


@task(id="refused")
async def refused(payload):
    async def source():
        yield {"a": 1}
        yield {"a": 2}
        yield {"bad": NotJson()}
        yield {"a": 3}

    seen = []
    try:
        async for chunk in (await metadata.stream("out", source())):
            seen.append(chunk)
    except TypeError as exc:
        return {"seen": seen, "error": str(exc)}
    return "not reached"


@task(id="sync-refused")
async def sync_refused(payload):
    result = streams.pipe("out", ["a", "b", NotJson(), "c"])
    seen = []
    with pytest.raises(TypeError, match=r"stream 'out' \(a NotJson\)") as info:
        async for chunk in result.stream:
            seen.append(chunk)
    with pytest.raises(TypeError):
        await result.wait_until_complete()
    return {"seen": seen, "error": str(info.value)}


async def test_iteration_raises_after_the_chunks_before_and_the_run_fails(transport,
                                                                            autojump_clock):
    async with serve([iterates], transport):
        handle = await iterates.trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.FAILED
        assert run.error is not None and "boom" in run.error.message
        assert await read_all(handle.id, "out") == ["c0", "c1"]


async def test_a_task_that_catches_the_error_completes(transport, autojump_clock):
    async with serve([catches], transport):
        handle = await catches.trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED
        assert run.output == {"seen": ["c0", "c1"], "error": "boom"}
        assert await read_all(handle.id, "out") == ["c0", "c1"]


async def test_an_unobserved_failed_pipe_fails_the_run(transport, autojump_clock):
    async with serve([ignores], transport):
        handle = await ignores.trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.FAILED
        assert "boom" in run.error.message
        assert await read_all(handle.id, "out") == ["c0", "c1"]


async def test_a_refused_chunk_raises_in_the_loop_after_the_stored_ones(transport,
                                                                          autojump_clock):
    async with serve([refused], transport):
        handle = await refused.trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED
        assert run.output["seen"] == [{"a": 1}, {"a": 2}]
        assert "stream 'out'" in run.output["error"]
        assert "NotJson" in run.output["error"]
        assert await read_all(handle.id, "out") == [{"a": 1}, {"a": 2}]


async def test_a_refused_chunk_of_a_sync_source(transport, autojump_clock):
    async with serve([sync_refused], transport):
        handle = await sync_refused.trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.output["seen"] == ["a", "b"]
        assert await read_all(handle.id, "out") == ["a", "b"]


@task(id="writes")
async def writes(payload):
    other = streams.pipe("other", ["x", "y"])
    errors = []

    def execute(w):
        w.write("one")
        try:
            w.write(NotJson())
        except TypeError as exc:
            errors.append(str(exc))
        w.write("two")

    await streams.writer("out", execute=execute).wait_until_complete()
    try:
        await streams.append("out", {"nested": [NotJson()]})
    except TypeError as exc:
        errors.append(str(exc))
    await other.wait_until_complete()
    return errors


async def test_bad_input_the_writer_gets_a_type_error_at_the_call(transport, autojump_clock):
    async with serve([writes], transport):
        handle = await writes.trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED, run.error
        assert len(run.output) == 2
        for message in run.output:
            assert "stream 'out'" in message and "NotJson" in message
        assert await read_all(handle.id, "out") == ["one", "two"]
        assert await read_all(handle.id, "other") == ["x", "y"]


@task(id="too-big")
async def too_big(payload):
    seen = []
    async for chunk in streams.pipe("out", ["a", "b" * 5000, "c"]).stream:
        seen.append(chunk)
    return seen


async def test_a_chunk_the_engine_refuses_fails_the_loop(transport, autojump_clock):
    async with serve([too_big], transport, limits=Limits(max_chunk_bytes=1000)):
        handle = await too_big.trigger()
        run = await final(handle.id)
        assert run.status is RunStatus.FAILED
        assert "1000-byte limit" in run.error.message
