"""A run's journal is made at its first durable call (or its first write to its own
streams), not with the run: a run parked in ``once()`` holds none (docs/performance.md, the
memory per waiting run). What the journal is for still works when it is made late: a
replay drops what the run wrote before the stop, durable waits resume, and each attempt
journals under its own number."""

from __future__ import annotations

import math
from typing import Any

import trio
import trio.testing

from runwire import RetryPolicy, RunStatus, step, streams, task
from runwire.engine import Engine
from runwire.engine.store import MemoryStore

from .helpers import final, serve

out = streams.define(id="out", type=str)
notes = streams.input(id="notes", type=dict)
PICKS: list[int] = []


@task(id="lazy.idle")
async def idle(payload: Any) -> dict[str, Any]:
    """No durable call and no write before it parks: no journal."""
    got = (await notes.once()).unwrap()
    return {"got": got["n"]}


@task(id="lazy.writer")
async def writer(payload: Any) -> dict[str, Any]:
    """Writes its own stream (the journal counts it), then parks in a plain ``once()``."""
    await out.append("a")
    await out.append("b")
    got = (await notes.once()).unwrap()
    await out.append(f"got {got['n']}")
    return {"got": got["n"]}


@task(id="lazy.waiting")
async def waiting(payload: Any) -> dict[str, Any]:
    """Writes, then parks in a durable ``wait()``."""
    await out.append("w")
    got = (await notes.wait(timeout="1h")).unwrap()
    await out.append(f"got {got['n']}")
    return {"got": got["n"]}


async def pick() -> int:
    PICKS.append(len(PICKS))
    return PICKS[-1]


@task(id="lazy.retried", retry=RetryPolicy(max_attempts=2, min_timeout=0.5))
async def retried(payload: Any, ctx: Any) -> dict[str, Any]:
    """A step in each attempt; the first attempt fails after its step."""
    value = await step("pick", pick)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"picked": value}


@task(id="lazy.retried-slow", retry=RetryPolicy(max_attempts=3, min_timeout=100))
async def retried_slow(payload: Any, ctx: Any) -> dict[str, Any]:
    """Fails its first attempt (after a step when ``payload["step"]``); 100 s until the
    second."""
    if payload["step"]:
        await step("pick", pick)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}


TASKS = [idle, writer, waiting, retried, retried_slow]


async def read_out(run_id: str) -> list[str]:
    """The run's ``out`` stream, to its end (the run has finished)."""
    return list(await (await out.read(run_id)).collect())


async def parked(eng: Engine, run_id: str) -> bool:
    """Whether the run is parked: every task blocked; its ``journaled`` statistic."""
    await trio.testing.wait_all_tasks_blocked()
    stats = eng.run_statistics(run_id)
    assert stats is not None
    return stats.journaled


async def test_only_a_run_that_makes_a_durable_call_or_writes_has_a_journal(
        autojump_clock: Any) -> None:
    async with serve(TASKS) as eng:
        idle_id = (await idle.trigger(None)).id
        writer_id = (await writer.trigger(None)).id
        waiting_id = (await waiting.trigger(None)).id
        assert await parked(eng, idle_id) is False
        assert await parked(eng, writer_id) is True  # its writes are counted for a replay
        assert await parked(eng, waiting_id) is True
        assert (await eng.get_record(idle_id)).status is RunStatus.EXECUTING
        for number, run_id in enumerate((idle_id, writer_id, waiting_id)):
            await notes.send(run_id, {"n": number})
            run = await final(run_id)
            assert (run.status, run.output) == (RunStatus.COMPLETED, {"got": number})


async def test_runs_journaled_late_resume_after_a_stop_without_writing_twice(
        autojump_clock: Any) -> None:
    """Each run is handed back where it parked; the next engine replays it as the same
    attempt: what it wrote before the stop is dropped when written again."""
    store = MemoryStore()
    async with serve(TASKS, store=store) as eng:
        ids = {t.id: (await t.trigger(None)).id for t in (idle, writer, waiting)}
        for run_id in ids.values():
            await parked(eng, run_id)
    async with serve(TASKS, store=store) as eng:
        await trio.testing.wait_all_tasks_blocked()
        assert (await eng.get_record(ids["lazy.waiting"])).status is RunStatus.WAITING
        for number, run_id in enumerate(ids.values()):
            await notes.send(run_id, {"n": number})
            run = await final(run_id)
            assert (run.status, run.attempt, run.output) == (
                RunStatus.COMPLETED, 1, {"got": number})
        assert await read_out(ids["lazy.idle"]) == []
        assert await read_out(ids["lazy.writer"]) == ["a", "b", "got 1"]
        assert await read_out(ids["lazy.waiting"]) == ["w", "got 2"]


async def test_each_attempt_journals_under_its_own_number(autojump_clock: Any) -> None:
    """The retry's journal is made fresh for attempt 2: its step runs again (it does not
    replay attempt 1's) and is stored under attempt 2's key."""
    PICKS.clear()
    store = MemoryStore()
    async with serve(TASKS, store=store):
        run = await final((await retried.trigger(None)).id)
    assert (run.status, run.attempt, run.output) == (RunStatus.COMPLETED, 2, {"picked": 1})
    assert PICKS == [0, 1]
    first = await store.waitpoint(run.id, "~1:step:pick#0", -math.inf)
    second = await store.waitpoint(run.id, "~2:step:pick#0", -math.inf)
    assert first is not None and second is not None
    assert (b'"value":0' in first, b'"value":1' in second) == (True, True)


async def test_a_lazy_event_is_an_event_made_for_its_first_waiter(
        autojump_clock: Any) -> None:
    """``finished``/``ended`` of every run: set before anyone waits, set with waiters."""
    from runwire.engine.run._event import LazyEvent

    early = LazyEvent()
    early.set()
    assert early.is_set()
    with trio.fail_after(1):
        await early.wait()  # at once
    late, woken = LazyEvent(), []

    async def waiter(name: str) -> None:
        await late.wait()
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.sleep(5)
        assert woken == [] and not late.is_set()
        late.set()
        late.set()  # idempotent
    assert sorted(woken) == ["a", "b"]


async def test_a_stop_during_the_retry_delay_resumes_at_the_next_attempt(
        autojump_clock: Any) -> None:
    """Handed back while it waits to retry, a run resumes at the attempt it was waiting
    for, whether or not the failed attempt had journaled (a step): not one further on."""
    store = MemoryStore()
    async with serve(TASKS, store=store) as eng:
        ids = [(await retried_slow.trigger({"step": with_step})).id
               for with_step in (False, True)]
        for run_id in ids:
            with trio.fail_after(50):  # (the retry delay is 100 s)
                while (record := await eng.get_record(run_id)).attempt < 2:
                    await trio.testing.wait_all_tasks_blocked()
            assert record.status is RunStatus.QUEUED
    async with serve(TASKS, store=store):
        for run_id in ids:
            run = await final(run_id)
            assert (run.status, run.attempt, run.output) == (
                RunStatus.COMPLETED, 2, {"attempt": 2})

