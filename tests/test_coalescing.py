"""How the commit loop groups chunks into store commits: big under load, at once when sparse."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from runwire.engine.store import MemoryStore
from runwire.engine.store._sqlite import SqliteStore
from runwire.engine.run._actor import BUSY_CYCLE_CHUNKS, MAX_CYCLE_CHUNKS
from runwire.engine.store import Batch
from runwire import streams, task, tasks
from runwire._streams import PIPE_SLICE

from .helpers import final, serve

TOTAL = 30_000


class Counting:
    """A store that notes how many chunks each commit carried (per stream), and when."""

    sizes: list[int]
    times: list[float]  # trio time of each commit, beside its size

    async def commit_staged(self, stage: Callable[[], Batch]) -> None:
        sizes: list[int] = []

        def counted() -> Batch:
            batch = stage()
            sizes.extend(len(app.items) for app in batch.chunks if app.key == "default")
            return batch

        await super().commit_staged(counted)  # type: ignore[misc]
        self.sizes.extend(sizes)
        self.times.extend(trio.current_time() for _ in sizes)


class CountingMemory(Counting, MemoryStore):
    """Commits without waiting for a turn."""


class CountingSqlite(Counting, SqliteStore):
    """Group commit: a cycle is staged when its turn comes, after a yield."""


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest) -> Counting:
    # an in-memory SQLite database: the same group commit, and after it was opened (here,
    # before any deadline exists) no worker threads, which the mock clock would jump past
    made = CountingMemory() if request.param == "memory" else CountingSqlite(":memory:")
    made.sizes, made.times = [], []
    await made.get_run("warm-up")  # type: ignore[attr-defined]
    return made


@task(id="busy-pipe")
async def busy_pipe(payload: Any) -> int:
    await streams.pipe(f"t{i}" for i in range(TOTAL)).wait_until_complete()
    return TOTAL


SPARSE = 20
put_at: list[float] = []


async def burst_then_sparse() -> Any:
    for i in range(2 * BUSY_CYCLE_CHUNKS):  # a busy cycle first: the loop starts coalescing
        yield i
    for i in range(SPARSE):
        await trio.sleep(0.5)
        put_at.append(trio.current_time())
        yield -i


@task(id="burst-then-sparse")
async def burst_then_sparse_pipe(payload: Any) -> int:
    await streams.pipe(burst_then_sparse()).wait_until_complete()  # never waits per chunk
    return SPARSE


async def test_a_busy_pipe_commits_in_big_batches_with_every_chunk_in_order(store: Counting):
    async with serve([busy_pipe], store=store, time_limit=60) as eng:  # real seconds
        handle = await tasks.trigger("busy-pipe", None)
        assert (await final(handle.id)).output == TOTAL
        chunks = await eng.store.read_chunks(handle.id, "default", 0, TOTAL + 1)
    assert chunks == [f'"t{i}"'.encode() for i in range(TOTAL)]
    assert sum(store.sizes) == TOTAL
    # one commit per slice without the busy rule; batches grow to MAX_CYCLE_CHUNKS with it
    assert statistics.median(store.sizes) >= MAX_CYCLE_CHUNKS // 2
    # the loop stops waiting once it saw MAX_CYCLE_CHUNKS queued; the producer may have put
    # a slice after it looked in that pass, and a store that stages at its turn (SQLite)
    # takes what one more pass put
    assert max(store.sizes) <= MAX_CYCLE_CHUNKS + 2 * PIPE_SLICE
    assert len(store.sizes) <= TOTAL // (2 * BUSY_CYCLE_CHUNKS)


async def test_sparse_chunks_after_a_burst_are_committed_alone_and_at_once(
        store: Counting, autojump_clock: trio.testing.MockClock):
    put_at.clear()
    async with serve([burst_then_sparse_pipe], store=store):
        handle = await tasks.trigger("burst-then-sparse", None)
        assert (await final(handle.id)).output == SPARSE
    assert sum(store.sizes) == 2 * BUSY_CYCLE_CHUNKS + SPARSE
    assert store.sizes[-SPARSE:] == [1] * SPARSE
    # committed in the same (mock) instant it was put: no batching by time
    assert store.times[-SPARSE:] == put_at
