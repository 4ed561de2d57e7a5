"""Recovery serves at once and restores runs in the background (issue 19, part 7); a send
to a run handed back by a graceful stop is kept for the next engine.

The engine lists the runs to restore and reports ready; the runs are restored by background
workers. A request about a run not restored yet restores that run first (ahead of the rest)
and is then answered as usual. Here a store holds back the restoring of every run but the one
a request asks for: the engine still serves, that run is restored and completes, and the
rest follow once the store lets them. Figures for 10,000 waiting runs:
``python -m tests.bench.bench_recovery`` (``docs/operations.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from runwire import InternalError, NotFoundError, RunStatus, runs, streams, task
from runwire.engine.store import Batch, SqliteStore, StreamState

from .helpers import bounded, serve

answer = streams.input(id="answer", type=dict)


@task(id="lazy.asker")
async def asker(payload: Any) -> Any:
    return (await answer.wait(timeout="1h")).unwrap()


@task(id="lazy.done")
async def done(payload: Any) -> str:
    return "done"


class HeldStore(SqliteStore):
    """Restoring a run reads its streams first: held back for the runs in ``held``."""

    def __init__(self, path: str, held: set[str]) -> None:
        super().__init__(path)
        self.held = held
        self.release = trio.Event()

    async def streams(self, run_id: str) -> dict[str, StreamState]:
        if run_id in self.held:
            await self.release.wait()
        return await super().streams(run_id)


@bounded(60)
async def test_the_engine_serves_before_its_runs_are_restored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lazy.db'}"
    async with serve([asker, done], store=url):
        finished = (await done.trigger({})).id
        ids = [(await asker.trigger({})).id for _ in range(12)]
        for run_id in ids:
            while (await runs.retrieve(run_id)).status is not RunStatus.WAITING:
                await trio.sleep(0.01)
    # a graceful stop handed them back; the next engine restores them
    store = HeldStore(str(tmp_path / "lazy.db"), held=set(ids[:5] + ids[6:]))
    async with serve([asker, done], store=store) as eng:
        recovery = eng.service.recovery
        assert len(recovery.pending) + len(recovery.running) >= 11  # none restored yet
        assert (await runs.retrieve(finished)).status is RunStatus.COMPLETED  # served now
        # a send to a run not restored yet restores it first, ahead of the rest
        assert ids[5] in recovery.pending or ids[5] in recovery.running
        await answer.send(ids[5], {"n": 5})
        while not (await runs.retrieve(ids[5])).is_finished:
            await trio.sleep(0.01)
        run = await runs.retrieve(ids[5])
        assert (run.status, run.output, run.attempt) == (RunStatus.COMPLETED, {"n": 5}, 1)
        assert not recovery.done.is_set() and recovery.restored == 1
        store.release.set()
        await recovery.done.wait()
        assert recovery.restored == 12
        for i, run_id in enumerate(ids):
            if i != 5:
                assert (await runs.retrieve(run_id)).status is RunStatus.WAITING
                await answer.send(run_id, {"n": i})
        for i, run_id in enumerate(ids):
            while not (await runs.retrieve(run_id)).is_finished:
                await trio.sleep(0.01)
            assert (await runs.retrieve(run_id)).output == {"n": i}


@bounded(60)
async def test_a_retrieve_of_a_run_not_restored_yet_waits_for_its_rules(tmp_path: Path) -> None:
    """A run with no retries left is shown CRASHED (rule 5), never as the EXECUTING the store
    still says, even when recovery has not reached it."""
    url = f"sqlite:///{tmp_path / 'rules.db'}"
    async with serve([asker], store=url):
        run_id = (await asker.trigger({})).id
        while (await runs.retrieve(run_id)).status is not RunStatus.WAITING:
            await trio.sleep(0.01)
    raw_store = SqliteStore(str(tmp_path / "rules.db"))
    raw = await raw_store.get_run(run_id)
    assert raw is not None
    raw["status"] = "EXECUTING"  # as a kill -9 outside any wait leaves it
    await raw_store.commit(Batch(runs=[raw]))  # (opens the store's connections too)
    async with raw_store._turn:  # drop the journal: not resumable (no wait was journaled)
        raw_store._writing().execute("DELETE FROM waitpoints WHERE run_id = ?", (run_id,))
    await raw_store.aclose()
    store = HeldStore(str(tmp_path / "rules.db"), held=set())
    async with serve([asker], store=store) as eng:
        page = await runs.list(task="lazy.asker")
        assert [r.status for r in page.runs] == [RunStatus.CRASHED]
        run = await runs.retrieve(run_id)
        assert run.status is RunStatus.CRASHED and run.error is not None
        assert run.error.type == "EngineRestart"
        await eng.service.recovery.done.wait()


@bounded(60)
async def test_a_send_to_a_handed_back_run_is_kept_for_the_next_engine(tmp_path: Path) -> None:
    """During a graceful stop a waiting run is handed back; a send to it then is stored (not
    'has finished (WAITING)'), deduplicated by its key, and the resumed run gets it."""
    url = f"sqlite:///{tmp_path / 'handed.db'}"
    async with serve([asker, done], store=url) as eng:
        run_id = (await asker.trigger({})).id
        while (await runs.retrieve(run_id)).status is not RunStatus.WAITING:
            await trio.sleep(0.01)
        assert await eng.stop() == 1  # handed back; the engine still answers
        assert eng.broker.owner(run_id) is None
        await answer.send(run_id, {"n": 7}, idempotency_key="k1")
        await answer.send(run_id, {"n": 7}, idempotency_key="k1")  # a retry: the same record
        assert (await runs.retrieve(run_id)).status is RunStatus.WAITING
        queued = (await done.trigger({})).id  # stored QUEUED, for the next engine to start
        with pytest.raises(InternalError, match="not live on this engine"):
            await answer.send(queued, {"n": 0})
        with pytest.raises(NotFoundError):
            await answer.send("run_unknown", {"n": 0})
    store = SqliteStore(str(tmp_path / "handed.db"))
    assert [r.index for r in (await store.records(run_id))["answer"]] == [0]
    await store.aclose()
    async with serve([asker, done], store=url):
        run = await runs.retrieve(run_id)
        while not run.is_finished:
            await trio.sleep(0.01)
            run = await runs.retrieve(run_id)
        assert (run.status, run.output, run.attempt) == (RunStatus.COMPLETED, {"n": 7}, 1)
        while not (await runs.retrieve(queued)).is_finished:
            await trio.sleep(0.01)


@bounded(60)
async def test_a_stop_during_recovery_leaves_every_run_resumable(tmp_path: Path) -> None:
    """Runs being restored when a graceful stop begins are handed back with the rest; runs
    not reached stay as stored. The next engine resumes them all as attempt 1."""
    url = f"sqlite:///{tmp_path / 'midway.db'}"
    async with serve([asker], store=url):
        ids = [(await asker.trigger({})).id for _ in range(20)]
        for run_id in ids:
            while (await runs.retrieve(run_id)).status is not RunStatus.WAITING:
                await trio.sleep(0.01)
    store = HeldStore(str(tmp_path / "midway.db"), held=set(ids[3:]))
    async with serve([asker], store=store) as eng:
        recovery = eng.service.recovery
        while len(recovery.running) < 8:  # workers are stuck in held runs
            await trio.sleep(0.01)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(eng.stop)
            await trio.sleep(0.2)
            store.release.set()  # the runs being restored finish; the stop hands them back
        assert recovery.pending  # never reached: left as stored
    async with serve([asker], store=url):
        for i, run_id in enumerate(ids):
            run = await runs.retrieve(run_id)
            assert (run.status, run.attempt) == (RunStatus.WAITING, 1), run_id
            await answer.send(run_id, {"n": i})
        for i, run_id in enumerate(ids):
            while not (run := await runs.retrieve(run_id)).is_finished:
                await trio.sleep(0.01)
            assert (run.status, run.output) == (RunStatus.COMPLETED, {"n": i})


notes = streams.define(id="notes", type=str)


@task(id="lazy.writer")
async def writer(payload: Any) -> str:
    """Writes to another run's stream (``target=``)."""
    await notes.append("from the writer", target=payload["to"])
    return "written"


@bounded(60)
async def test_a_target_producer_to_a_run_not_restored_yet_restores_it_first(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'target.db'}"
    async with serve([asker, writer], store=url):
        run_id = (await asker.trigger({})).id
        while (await runs.retrieve(run_id)).status is not RunStatus.WAITING:
            await trio.sleep(0.01)
    store = HeldStore(str(tmp_path / "target.db"), held={run_id})
    async with serve([asker, writer], store=store) as eng:
        assert run_id in eng.service.recovery.pending or run_id in eng.service.recovery.running
        wrote = (await writer.trigger({"to": run_id})).id
        with trio.fail_after(5):
            while run_id not in eng.service.recovery.running:  # the append asked for it
                await trio.sleep(0.01)
        store.release.set()
        while not (await runs.retrieve(wrote)).is_finished:
            await trio.sleep(0.01)
        assert (await runs.retrieve(wrote)).output == "written"
        await answer.send(run_id, {"n": 1})  # (so its streams end)
        assert await (await notes.read(run_id, timeout_in_seconds=5)).collect() == [
            "from the writer"]
