"""Several tasks writing through one producer (a writer and its merges) all make progress."""

import trio

import engine._streams as engine_streams
import sdk._client as sdk_client
from sdk import streams, task

from .helpers import final, serve

out = streams.define(id="out", type=int)


def _write_and_merge(w):
    w.merge(range(0, 500))
    w.merge(range(500, 1000))
    for i in range(1000, 1500):
        w.write(i)


@task(id="merging-writer")
async def merging_writer(payload):
    await out.writer(execute=_write_and_merge).wait_until_complete()


async def test_merges_into_one_engine_producer_all_finish(monkeypatch, autojump_clock):
    monkeypatch.setattr(engine_streams, "PRODUCER_HIGH_WATER", 10)  # every put waits
    with trio.fail_after(600):
        async with serve([merging_writer]):
            handle = await merging_writer.trigger({})
            run = await final(handle.id)
            chunks = await (await out.read(handle.id)).collect()
    assert run.status.value == "COMPLETED", run.error
    assert sorted(chunks) == list(range(1500))


done = streams.input(id="done")


@task(id="holder")
async def holder(payload):
    await done.once()


async def test_merges_into_one_client_producer_all_finish(monkeypatch, autojump_clock):
    monkeypatch.setattr(sdk_client, "PRODUCER_HIGH_WATER", 10)  # every put waits
    with trio.fail_after(600):
        async with serve([holder], "ws"):
            handle = await holder.trigger({})
            await out.writer(execute=_write_and_merge,
                             target=handle.id).wait_until_complete()
            await done.send(handle.id, "go")
            await final(handle.id)
            chunks = await (await out.read(handle.id)).collect()
    assert sorted(chunks) == list(range(1500))
