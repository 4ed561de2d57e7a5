"""Fencing on Redis: a write of a run's data carries its engine's lease token, and the commit
script refuses the whole batch once another engine has claimed the run since.

An engine that was paused or cut off longer than its lease is played by a test engine whose
lease key is deleted (what Redis does when a lease expires) while it keeps running: its
renewals never run during the test (``lease_ttl=3600``), so it does not hear of the loss
before its next commit, and another engine takes the run over through its usual takeover
path (``Recovery.take_over``).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from runwire import RetryPolicy, metadata, streams, task
from runwire.engine import open_engine
from runwire.engine.broker import open_broker
from runwire.engine.store import (
    Batch, ChunkAppend, LeaseLostError, RecordAppend, open_store,
)

from .helpers import API_KEY, bounded
from .redisserver import redis_url, shared_redis

ai = streams.define(id="ai", type=str)
answer = streams.input(id="answer", type=str)

#: attempt -> set once that attempt's first chunk is stored
STARTED: dict[int, trio.Event] = {}
#: lets attempt 1 go on with its late writes (``late`` runs)
LATE: dict[str, trio.Event] = {}


@task(id="redis.fenced", retry=RetryPolicy(max_attempts=3))
async def fenced(payload: dict[str, Any], ctx: Any) -> str:
    """Attempt 1 runs on engine A, attempt 2 on engine B (which took the run over)."""
    who = "A" if ctx.attempt == 1 else "B"
    await ai.append(f"{who}-start")
    STARTED[ctx.attempt].set()
    if who == "A" and payload.get("late"):  # A, paused past its lease, goes on writing
        await LATE["go"].wait()
        metadata.set("who", "A")
        await ai.append("A-late")
        return "A"
    got = (await answer.once(timeout_ms=3_600_000)).unwrap()
    await ai.append(f"{who}:{got}")
    return f"{who}:{got}"


def _url() -> tuple[str, str]:
    prefix = "f" + uuid.uuid4().hex[:10]
    return redis_url(prefix) + "&lease_ttl=3600", prefix + ":"


def _expire(prefix: str, run_id: str) -> None:
    """A's lease on the run expires (A does not hear of it: it renews every 20 minutes)."""
    assert shared_redis().command("DEL", f"{prefix}lease:{{{run_id}}}") == b":1\r\n"


async def _take_over(a: Any, b: Any, run_id: str, prefix: str) -> Any:
    """A executes the run; its lease expires and B takes the run over (attempt 2)."""
    with trio.fail_after(10):
        await STARTED[1].wait()
    old = a.broker.owner(run_id)
    assert old is not None and a.run_statistics(run_id) is not None
    _expire(prefix, run_id)
    assert await b.service.recovery.take_over(run_id)
    with trio.fail_after(10):
        await STARTED[2].wait()
    assert b.run_statistics(run_id) is not None
    assert await b.broker.owner_engine(run_id) == b.broker.engine_id
    return old


@bounded(30)
async def test_a_late_write_of_the_engine_that_lost_the_run_is_refused_whole() -> None:
    STARTED.update({1: trio.Event(), 2: trio.Event()})
    LATE["go"] = trio.Event()
    url, prefix = _url()
    async with open_engine([fenced], store=url, api_key=API_KEY) as a, \
            open_engine([fenced], store=url, api_key=API_KEY) as b:
        run = await a.trigger("redis.fenced", {"late": True})
        reader = await a.service.open_reader(run.id, "ai", 0)  # a reader on A, at A's actor
        old = await _take_over(a, b, run.id, prefix)
        LATE["go"].set()  # A writes a chunk, its metadata, then its final status: refused
        with trio.fail_after(10):
            await old.ended.wait()
        assert old.lost and not old.finished.is_set()
        assert a.run_statistics(run.id) is None
        # nothing of A's late batch is stored: B's record and chunks are as B wrote them
        stored = await a.store.get_run(run.id)
        assert stored is not None
        assert (stored["status"], stored["attempt"], stored.get("output")) == \
            ("EXECUTING", 2, None)
        assert "who" not in (stored.get("metadata") or {})
        assert await a.store.read_chunks(run.id, "ai", 0, 10) == [b'"A-start"', b'"B-start"']
        # B goes on with the run; a send through A goes to B
        assert await a.send_input(run.id, "answer", "x", "k1") == 0
        with trio.fail_after(10):
            done = await a.wait_finished(run.id)
        assert (done.status.value, done.output, done.attempt) == ("COMPLETED", "B:x", 2)
        assert await b.store.read_chunks(run.id, "ai", 0, 10) == \
            [b'"A-start"', b'"B-start"', b'"B:x"']
        # the reader on A read on from B's writes: every index once, then the end
        seen: list[bytes] = []
        with trio.fail_after(10):
            while (got := await reader.next_batch(None)) is not None:
                seen.extend(got)
        assert seen == [b'"A-start"', b'"B-start"', b'"B:x"']


@bounded(30)
async def test_a_send_to_the_engine_that_lost_the_run_goes_to_the_new_owner() -> None:
    STARTED.update({1: trio.Event(), 2: trio.Event()})
    url, prefix = _url()
    async with open_engine([fenced], store=url, api_key=API_KEY) as a, \
            open_engine([fenced], store=url, api_key=API_KEY) as b:
        run = await a.trigger("redis.fenced", {})
        snapshots: list[dict[str, Any]] = []
        finished: list[Any] = []

        async def subscribe_on_a() -> None:  # waiting on A's actor when it is lost
            async for snapshot in a.service.subscribe(run.id):
                snapshots.append(snapshot)

        async def wait_on_a() -> None:
            finished.append(await a.wait_finished(run.id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscribe_on_a)
            nursery.start_soon(wait_on_a)
            old = await _take_over(a, b, run.id, prefix)
            # A's actor still thinks it executes the run: its commit of the record is
            # refused, and the send is routed to B, which stores and delivers it (once)
            served = b.broker.served
            assert await a.send_input(run.id, "answer", "hi", "k1") == 0
            assert old.lost and b.broker.served == served + 1
            with trio.fail_after(10):
                done = await b.wait_finished(run.id)
        assert (done.status.value, done.output, done.attempt) == ("COMPLETED", "B:hi", 2)
        # what waited on A's actor followed the run to B
        assert [(r.status.value, r.output) for r in finished] == [("COMPLETED", "B:hi")]
        assert (snapshots[-1]["status"], snapshots[-1]["output"]) == ("COMPLETED", "B:hi")
        records = await b.store.records(run.id)
        assert [(r.index, r.data, r.idempotency_key) for r in records["answer"]] == \
            [(0, b'"hi"', "k1")]
        assert await b.store.read_chunks(run.id, "ai", 0, 10) == \
            [b'"A-start"', b'"B-start"', b'"B:hi"']
        assert (await a.get_record(run.id)).output == "B:hi"


def _run(run_id: str, status: str) -> dict[str, Any]:
    return {"id": run_id, "task_id": "t", "status": status, "created_at": 1.0}


@bounded(20)
async def test_the_commit_script_checks_the_lease_token_of_each_run() -> None:
    url, prefix = _url()
    store = open_store(url)
    a, b = open_broker(store), open_broker(store)
    try:
        assert await a.claim("r1")
        first = a.lease("r1")
        assert first is not None and a.lease("r2") is None
        # an ordinary commit under the lease
        await store.commit(Batch(runs=[_run("r1", "EXECUTING")], leases=[("r1", first)],
                                 chunks=[ChunkAppend("r1", "s", 0, [b"0"], 1)]))
        # the lease expired, nobody claimed the run since: still the holder's (its next
        # renewal takes the lease back)
        _expire(prefix, "r1")
        await store.commit(Batch(leases=[("r1", first)],
                                 chunks=[ChunkAppend("r1", "s", 1, [b"1"], 1)]))
        # another engine claims it: the first token writes nothing, however the batch looks
        assert await b.claim("r1") and not await a.claim("r1")
        second = b.lease("r1")
        assert second is not None and second != first
        with pytest.raises(LeaseLostError) as refused:
            await store.commit(Batch(
                runs=[_run("r1", "COMPLETED"), _run("r2", "QUEUED")], leases=[("r1", first)],
                chunks=[ChunkAppend("r1", "s", 2, [b"2"], 1)],
                records=[RecordAppend("r1", "in", 0, b'"x"')], ended=[("r1", "s")]))
        assert refused.value.run_id == "r1"
        assert (await store.get_run("r1"))["status"] == "EXECUTING"
        assert await store.get_run("r2") is None
        state = (await store.streams("r1"))["s"]
        assert (state.length, state.ended) == (2, False)
        assert await store.records("r1") == {}
        await store.commit(Batch(leases=[("r1", second)],
                                 chunks=[ChunkAppend("r1", "s", 2, [b"2"], 1)]))
        # released and claimed again by the same engine: only the new claim's token writes
        await b.release("r1")
        assert b.lease("r1") is None and await b.claim("r1")
        third = b.lease("r1")
        assert third is not None and third != second
        with pytest.raises(LeaseLostError):
            await store.commit(Batch(leases=[("r1", second)], ended=[("r1", "s")]))
        await store.commit(Batch(leases=[("r1", third)], ended=[("r1", "s")],
                                 runs=[_run("r1", "COMPLETED")]))
        assert (await store.streams("r1"))["s"].ended
        assert await b.owner_engine("r1") == b.engine_id  # the token names its engine
        # a batch without leases (a run no engine holds, a durable stream) is not fenced
        await store.commit(Batch(runs=[_run("r3", "QUEUED")]))
        assert (await store.get_run("r3"))["status"] == "QUEUED"
    finally:
        await store.aclose()
