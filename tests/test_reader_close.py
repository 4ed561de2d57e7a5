"""Leaving a read early with ``async with``/``aclose()`` stops it on the engine at once."""

import gc
import warnings

import trio
import trio.testing

from runwire.engine import open_engine
from runwire import streams, task

KEY = "reader-close-key-0123456789"
ai = streams.define(id="ai", type=str)


@task(id="endless")
async def endless(payload):
    async def tokens():
        i = 0
        while True:
            yield f"t{i}"
            i += 1
            await trio.sleep(0.01)

    await ai.pipe(tokens()).wait_until_complete()


async def _open_reads(eng) -> int:
    # the client may have its answer before the engine's request task has finished
    # (a request is forgotten once its answer is sent): let the engine settle first
    await trio.testing.wait_all_tasks_blocked()
    return eng.statistics().open_requests


async def test_async_with_stops_the_read_without_warnings(autojump_clock):
    async with open_engine([endless], api_key=KEY, drain_timeout=1) as eng:
        async with eng.connect():
            handle = await endless.trigger({})
            gc.collect()  # garbage of earlier tests must not be judged here
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                async with await ai.read(handle.id) as chunks:
                    assert await _open_reads(eng) == 0  # lazily opened on first iteration
                    got = []
                    async for chunk in chunks:
                        got.append(chunk)
                        if len(got) == 5:
                            assert await _open_reads(eng) == 1
                            break
                assert got == [f"t{i}" for i in range(5)]
                assert await _open_reads(eng) == 0
                gc.collect()
            ours = [w for w in caught if "StreamReader" in str(w.message)]
            assert not ours, ours
            reader = await ai.read(handle.id)
            await reader.aclose()
            await reader.aclose()  # twice is fine
