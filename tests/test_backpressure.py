"""Backpressure: a slow reader costs neither the engine nor the client unbounded memory.

Two ways to be slow. A consumer whose ``async for`` body is slow makes the SDK pause that
read (its inbox is bounded) and read again from the next index, which the engine serves from
its store once the live tail has moved on. A client that stops reading the socket at all
makes the engine's session wait on the websocket send (TCP pushes back), so the engine stops
reading the stream for it.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runwire
from runwire.engine import open_engine
from runwire.engine import Limits
from runwire.engine.store import MemoryStore
from runwire import streams, task
from runwire._client import READ_BUFFER

from .helpers import API_KEY
from .faultproxy import open_fault_proxy

done = streams.input(id="done")
LIVE_TAIL = 256


@task(id="bp-firehose")
async def firehose(payload: dict) -> str:
    """Pipe ``n`` chunks as fast as it can, then live until told to finish."""
    await streams.pipe("k", range(payload["n"])).wait_until_complete()
    (await done.once()).unwrap()
    return "ok"


@task(id="bp-blob")
async def blob(payload: dict) -> str:
    """Pipe ``n`` chunks of about 1 KiB each (their index first), then finish."""
    pad = "x" * 1000
    await streams.pipe("k", (f"{i:08d}{pad}" for i in range(payload["n"]))) \
        .wait_until_complete()
    return "ok"


class CountingStore(MemoryStore):
    """The memory store, counting how far readers were fed from it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.read_end = 0

    async def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[bytes]:
        items = await super().read_chunks(run_id, key, start, limit)
        self.reads += 1
        self.read_end = max(self.read_end, start + len(items))
        return items


def _buffered(client: Any) -> int:
    """Chunks waiting in the client's inboxes for a consumer."""
    return client.statistics().buffered_chunks


async def test_a_slow_consumer_pauses_its_read_and_is_fed_from_the_store(autojump_clock):
    n = 60_000
    store = CountingStore()
    with trio.fail_after(600):  # mock clock: the slow reader takes minutes that cost nothing
        async with open_engine([firehose], store=store, api_key=API_KEY,
                               limits=Limits(live_tail=LIVE_TAIL)) as eng:
            async with eng.connect() as client:
                handle = await firehose.trigger({"n": n})
                stream = await streams.read(handle.id, "k")
                got: list[int] = []
                most_buffered = longest_tail = 0
                async for chunk in stream:
                    got.append(chunk)
                    if len(got) % 500 == 0:
                        await trio.sleep(1)  # the consumer is slow; the producer is not
                        most_buffered = max(most_buffered, _buffered(client))
                        run = eng.run_statistics(handle.id)
                        if run is not None:
                            longest_tail = max(longest_tail, run.streams["k"].tail_chunks)
                    if len(got) == n:
                        await done.send(handle.id, "finish")
    assert got == list(range(n))
    assert 0 < most_buffered <= READ_BUFFER
    assert 0 < longest_tail <= 2 * LIVE_TAIL
    assert store.reads > 0  # behind the live tail, the reader was fed from the store


async def test_a_stalled_client_stalls_only_its_session():
    n = 20_000  # about 20 MB: far more than the socket buffers between engine and client
    store = CountingStore()
    with trio.fail_after(15):
        async with open_engine([blob], store=store, api_key=API_KEY, port=0,
                               limits=Limits(live_tail=LIVE_TAIL)) as eng:
            assert eng.port is not None
            async with open_fault_proxy(eng.port, seed=3) as proxy:
                async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                    handle = await blob.trigger({"n": n})
                    assert (await client.wait_for_run(handle.id)).ok
                    proxy.hold()  # the client stops taking bytes
                    got: list[str] = []

                    async def reader() -> None:
                        stream = await streams.read(handle.id, "k")
                        async for chunk in stream:
                            got.append(chunk[:8])

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(reader)
                        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                        stalled_at = store.read_end
                        proxy.release()
    # the session stopped reading the store once the socket was full: a few MB, not 20
    assert 0 < stalled_at <= n // 2
    assert got == [f"{i:08d}" for i in range(n)]
