from runwire import streams, task

from .helpers import serve

ai = streams.define(id="ai", type=str)


@task(id="smoke")
async def smoke(payload):
    ai.pipe(f"t{i}" for i in range(payload["n"]))
    return "ok"


async def test_smoke(autojump_clock):
    async with serve([smoke]):
        handle = await smoke.trigger({"n": 10})
        chunks = await (await ai.read(handle.id)).collect()
    assert chunks == [f"t{i}" for i in range(10)]
