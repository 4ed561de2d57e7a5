"""Several tasks writing through one producer (a writer and its merges) all make progress."""

from runwire import RunStatus, streams, task
from runwire.engine import Limits

from .helpers import final, finish, serve, until_go

out = streams.define(id="out", type=int)


def _write_and_merge(w):
    w.merge(range(0, 500))
    w.merge(range(500, 1000))
    for i in range(1000, 1500):
        w.write(i)


@task(id="merging-writer")
async def merging_writer(payload):
    await out.writer(execute=_write_and_merge).wait_until_complete()


async def test_merges_into_one_engine_producer_all_finish(autojump_clock):
    limits = Limits(producer_buffer=10)  # every put waits
    async with serve([merging_writer], time_limit=600, limits=limits):
        handle = await merging_writer.trigger({})
        run = await final(handle.id)
        chunks = await (await out.read(handle.id)).collect()
    assert run.status == RunStatus.COMPLETED, run.error
    assert sorted(chunks) == list(range(1500))


@task(id="holder")
async def holder(payload):
    await until_go()


async def test_merges_into_one_client_producer_all_finish(autojump_clock):
    async with serve([holder], "ws", time_limit=600, producer_buffer=10):  # every put waits
        handle = await holder.trigger({})
        await out.writer(execute=_write_and_merge,
                         target=handle.id).wait_until_complete()
        await finish(handle.id)
        run = await final(handle.id)
        chunks = await (await out.read(handle.id)).collect()
    assert run.status == RunStatus.COMPLETED, run.error
    assert sorted(chunks) == list(range(1500))
