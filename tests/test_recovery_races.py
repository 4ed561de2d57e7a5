"""Races between recovery, takeovers, triggers and a graceful stop (found in review after
lazy recovery and the Redis broker were merged): a run another engine finished is never
written back from a stale listing, a run triggered while a stop begins is left for the next
engine, and a cancel or a routed send during a hand-back gets a true answer, not a hang or
"has finished"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from runwire import InternalError, RetryPolicy, RunStatus, task
from runwire.engine import open_engine
from runwire.engine.service import _recovery

from .helpers import API_KEY, bounded, until_go
from .redisserver import redis_url

bodies: list[Any] = []


@task(id="races.waiter", retry=RetryPolicy(max_attempts=3))
async def waiter(payload: Any) -> str:
    bodies.append(payload)
    await until_go()
    return "done"


@task(id="races.sleeper")
async def sleeper(payload: Any) -> str:
    await trio.sleep(3600)
    return "done"


async def until(check: Any) -> None:
    """Return once ``check()`` is true (the test's bound ends a wait that never does)."""
    while not check():
        await trio.sleep(0.01)


@bounded(60)
async def test_a_run_another_engine_finished_is_not_restored_from_the_stale_listing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = redis_url()
    bodies.clear()
    async with open_engine([waiter], store=url, api_key=API_KEY) as a:
        run = await a.trigger("races.waiter", 1)
        await until(lambda: bodies == [1])  # the body runs, parked in until_go()
        background = _recovery.Recovery.run
        gate = trio.Event()

        async def behind(self: _recovery.Recovery, workers: int = 8) -> None:
            await gate.wait()  # B's background recovery has not got to the run yet
            await background(self, workers)

        monkeypatch.setattr(_recovery.Recovery, "run", behind)
        async with open_engine([waiter], store=url, api_key=API_KEY) as b:
            monkeypatch.setattr(_recovery.Recovery, "run", background)
            assert run.id in b.service.recovery.pending  # listed while A executed it
            await a.send_input(run.id, "go", True, None)
            assert (await a.wait_finished(run.id)).status is RunStatus.COMPLETED
            await until(lambda: run.id not in a.broker._held)  # A released its lease
            # a request on B restores the listed run first: it must read it again
            seen = await b.get_record(run.id)
            assert seen.status is RunStatus.COMPLETED and seen.attempt == 1
            gate.set()  # B's background recovery finds nothing left to do for it
            await b.service.recovery.done.wait()
            assert b.broker.owner(run.id) is None
            assert run.id not in b.broker._held  # no lease kept (and renewed) for nothing
        stored = await a.get_record(run.id)
        assert stored.status is RunStatus.COMPLETED and stored.attempt == 1
    assert bodies == [1]  # the task body ran once


@bounded(60)
async def test_a_run_triggered_as_a_stop_begins_is_left_for_the_next_engine(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runwire.db'}"
    async with open_engine([sleeper], store=url, api_key=API_KEY) as a:
        store: Any = a.service.store
        commit = store.commit

        in_commit, go_on = trio.Event(), trio.Event()

        async def slow_commit(batch: Any) -> Any:
            in_commit.set()  # a slow fsync: the stop begins during the trigger's commit
            await go_on.wait()
            return await commit(batch)

        store.commit = slow_commit
        got: dict[str, Any] = {}

        async def trigger() -> None:
            got["run"] = await a.trigger("races.sleeper", 1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trigger)
            await in_commit.wait()
            await a.stop(0)
            go_on.set()
        store.commit = commit
        run_id = got["run"].id
        assert a.broker.owner(run_id) is None  # not started after the stop took its list
        assert (await a.get_record(run_id)).status is RunStatus.QUEUED
    async with open_engine([sleeper], store=url, api_key=API_KEY) as b:
        with trio.fail_after(10):
            while (record := await b.get_record(run_id)).status is RunStatus.QUEUED:
                await trio.sleep(0.05)
        # started as its first attempt, not crashed as a run killed while executing
        assert record.status is RunStatus.EXECUTING and record.attempt == 1
        assert record.error is None
        await b.cancel_run(run_id)


@bounded(60)
async def test_a_cancel_during_a_hand_back_is_answered_not_hung(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runwire.db'}"
    async with open_engine([sleeper], store=url, api_key=API_KEY) as a:
        run = await a.trigger("races.sleeper", 1)
        actor = a.broker.owner(run.id)
        assert actor is not None
        answers: list[BaseException | None] = []

        async def cancel() -> None:
            try:
                await a.cancel_run(run.id)
                answers.append(None)
            except InternalError as exc:
                answers.append(exc)

        a.service.stopping = True
        actor.hand_back()  # as a graceful stop does, just before the cancel arrives
        with trio.fail_after(10):
            await cancel()
            await actor.ended.wait()
        assert not actor.finished.is_set()  # handed back, not canceled
        assert isinstance(answers[0], InternalError)
        assert "stopping" in str(answers[0])


@bounded(60)
async def test_a_send_to_a_run_a_stopping_engine_handed_back_reaches_its_next_engine() -> None:
    url = redis_url()
    bodies.clear()
    async with open_engine([waiter], store=url, api_key=API_KEY) as b:
        async with open_engine([waiter], store=url, api_key=API_KEY) as a:
            run = await a.trigger("races.waiter", 1)
            await until(lambda: bodies == [1])  # the body runs, parked in until_go()
            assert await a.service.stop(0) == 1  # handed back: B resumes it at once
            # the stopping engine routes the send to B (it said "has finished" before)
            await a.send_input(run.id, "go", True, "send-1")
            assert (await b.wait_finished(run.id)).status is RunStatus.COMPLETED
