"""Durable waits, ``step()`` and the graceful stop (issue 19, parts 1 and 2).

Against a real engine process (``python -m runwire.engine serve``, as in ``test_restart``):
a run suspended in ``wait()`` survives ``kill -9`` and ``SIGTERM`` under the default retry
policy, keeps its absolute deadline, and on resume neither re-runs its step (the fake LLM's
draft carries a nonce: a second call would change it) nor writes its stream twice. The
graceful stop gives executing runs their grace period and hands back the rest. In process:
``step()``'s argument checks and its memo across a restart, and a durable ``wait.for_``.
"""

from __future__ import annotations

import signal
import time
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from runwire import (
    InputStreamTimeoutError, OutsideRunError, PayloadTooLargeError, RunStatus, connect, runs, step, task, wait,
)

from . import crash_tasks as ct
from .helpers import API_KEY, bounded, final, serve
from .test_restart import engine_processes, read_all

unix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL/SIGTERM")


async def read_n(run_id: str, count: int) -> list[Any]:
    """The first ``count`` chunks of the run's ``ai`` stream (it has not ended yet)."""
    items: list[Any] = []
    async for item in await ct.ai.read(run_id, timeout_in_seconds=10):
        items.append(item)
        if len(items) == count:
            break
    return items


async def until_status(run_id: str, status: RunStatus) -> None:
    while (await runs.retrieve(run_id)).status is not status:
        await trio.sleep(0.02)


# --- against a real engine process ------------------------------------------------------------


@unix_only
@bounded(45)
async def test_a_wait_survives_kill_9_with_its_draft_streamed_once(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    async with engine_processes() as start:
        first = await start(db, 0)
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20):
            run_id = (await ct.draft.trigger({"topic": "tides"})).id
            await until_status(run_id, RunStatus.WAITING)
            before = await read_n(run_id, 5)
            assert len(before) == 5 and before[-1] == "awaiting approval"
            await first.kill()
            second = await start(db, first.port)
            run = await runs.retrieve(run_id)  # not CRASHED, not a new attempt
            assert (run.status, run.attempt) == (RunStatus.WAITING, 1)
            await ct.approval.send(run_id, {"by": "ada"})
            run = await final(run_id)
            assert run.status is RunStatus.COMPLETED, run.error
            # the step's draft, not a second LLM call's (its nonce would differ)
            assert run.output == {"draft": "".join(before[:4]), "approved_by": "ada"}
            assert await read_all(ct.ai, run_id) == [*before, "approved by ada"]
        await second.stop()


@unix_only
@bounded(45)
async def test_sigterm_during_a_wait_exits_0_at_once_and_the_run_resumes(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    async with engine_processes() as start:
        first = await start(db, 0, "--grace-period", "20")
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20):
            run_id = (await ct.draft.trigger({"topic": "sails"})).id
            await until_status(run_id, RunStatus.WAITING)
            before = await read_n(run_id, 5)
            took = await first.stop(signal.SIGTERM)
            assert took < 10, "a waiting run does not hold the stop for its grace period"
            assert "handed back 1 live runs" in first.output
            second = await start(db, first.port)
            assert (await runs.retrieve(run_id)).status is RunStatus.WAITING
            await ct.approval.send(run_id, {"by": "bo"})
            run = await final(run_id)
            assert (run.status, run.attempt) == (RunStatus.COMPLETED, 1)
            assert run.output == {"draft": "".join(before[:4]), "approved_by": "bo"}
            assert await read_all(ct.ai, run_id) == [*before, "approved by bo"]
        await second.stop()


@unix_only
@bounded(60)
async def test_trigger_and_wait_in_a_task_survives_kill_9(tmp_path: Path) -> None:
    """The parent stays WAITING on the same child across the crash (no second child, no
    second "parent started"), and completes with the child's output."""
    db = tmp_path / "durable.db"
    async with engine_processes() as start:
        first = await start(db, 0)
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20):
            parent_id = (await ct.parent.trigger({})).id
            await until_status(parent_id, RunStatus.WAITING)
            page = await runs.list(task=ct.child.id)
            while not page.runs or page.runs[0].status is not RunStatus.WAITING:
                await trio.sleep(0.02)
                page = await runs.list(task=ct.child.id)
            [child] = page.runs
            assert child.parent_id == parent_id
            await first.kill()
            second = await start(db, first.port)
            run = await runs.retrieve(parent_id)  # not CRASHED, not a new attempt
            assert (run.status, run.attempt) == (RunStatus.WAITING, 1)
            await ct.approval.send(child.id, {"by": "ada"})
            run = await final(parent_id)
            assert run.status is RunStatus.COMPLETED, run.error
            assert run.output == {"child": child.id, "by": "ada"}
            assert [r.id for r in (await runs.list(task=ct.child.id)).runs] == [child.id]
            assert await read_all(ct.ai, parent_id) == ["parent started",
                                                        "child approved by ada"]
        await second.stop()


@unix_only
@bounded(60)
async def test_wait_for_token_survives_kill_9_with_the_same_token(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    async with engine_processes() as start:
        first = await start(db, 0)
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20):
            run_id = (await ct.token_waiter.trigger({})).id
            await until_status(run_id, RunStatus.WAITING)
            [token_id] = await read_n(run_id, 1)
            await first.kill()
            second = await start(db, first.port)
            run = await runs.retrieve(run_id)
            assert (run.status, run.attempt) == (RunStatus.WAITING, 1)
            assert await wait.complete_token(token_id, {"ok": True})
            run = await final(run_id)
            assert run.status is RunStatus.COMPLETED, run.error
            assert run.output == {"token": token_id, "data": {"ok": True}}
            assert await read_all(ct.ai, run_id) == [token_id, "completed"]  # one token
        await second.stop()


@unix_only
@bounded(60)
async def test_a_token_completed_while_the_engine_was_down_is_seen_at_once(
        tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    async with engine_processes() as start:
        first = await start(db, 0)
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20):
            run_id = (await ct.token_waiter.trigger({})).id
            await until_status(run_id, RunStatus.WAITING)
            [token_id] = await read_n(run_id, 1)
            await first.kill()
        # completed in the file while no engine runs (as another engine's HTTP door would)
        from runwire.engine.store import SqliteStore
        store = SqliteStore(str(db))
        _, completed = await store.complete_token(token_id, b'{"late":true}', time.time())
        await store.aclose()
        assert completed
        second = await start(db, first.port)
        async with connect(second.url, api_key=API_KEY, reconnect_timeout=20):
            run = await final(run_id)
            assert (run.status, run.attempt) == (RunStatus.COMPLETED, 1), run.error
            assert run.output == {"token": token_id, "data": {"late": True}}
        await second.stop()


@unix_only
@bounded(45)
async def test_the_deadline_of_a_wait_is_absolute_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    async with engine_processes() as start:
        first = await start(db, 0)
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20):
            run_id = (await ct.draft.trigger({"topic": "time", "timeout": 4})).id
            await until_status(run_id, RunStatus.WAITING)
            began = trio.current_time()
            await trio.sleep(1.0)
            await first.kill()
            second = await start(db, first.port)
            run = await final(run_id)
            elapsed = trio.current_time() - began
            assert run.status is RunStatus.COMPLETED and run.output is not None
            assert run.output["timed_out"] is True
            # a restarted deadline would end at >= 1 + restart + 4 s
            assert 3.8 <= elapsed < 5.0, elapsed
            assert (await read_all(ct.ai, run_id))[-2:] == ["awaiting approval", "timed out"]
        await second.stop()


@unix_only
@bounded(45)
async def test_graceful_stop_gives_the_grace_period_then_hands_back(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    async with engine_processes() as start:
        first = await start(db, 0, "--grace-period", "3")
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20):
            quick = (await ct.slow.trigger({"seconds": 1.0})).id
            await until_status(quick, RunStatus.EXECUTING)
            took = await first.stop(signal.SIGTERM)
            assert took < 3 + 3
            second = await start(db, first.port, "--grace-period", "0.3")
            run = await runs.retrieve(quick)  # it finished within its grace period
            assert (run.status, run.output) == (RunStatus.COMPLETED, {"chunks": 20})
            assert await read_all(ct.side, quick) == [f"t{i}" for i in range(20)]

            long = (await ct.slow.trigger({"seconds": 2.0})).id
            await until_status(long, RunStatus.EXECUTING)
            await trio.sleep(0.5)
            took = await second.stop(signal.SIGTERM)
            assert took < 0.3 + 3
            assert (await _stored_status(db, long)) is RunStatus.EXECUTING  # not CRASHED
            third = await start(db, first.port)
            run = await final(long)  # resumed as the same attempt; no chunk twice
            assert (run.status, run.attempt) == (RunStatus.COMPLETED, 1)
            assert await read_all(ct.side, long) == [f"t{i}" for i in range(40)]
        await third.stop()


async def _stored_status(db: Path, run_id: str) -> RunStatus:
    from runwire.engine.store import SqliteStore

    store = SqliteStore(str(db))
    try:
        raw = await store.get_run(run_id)
        assert raw is not None
        return RunStatus(raw["status"])
    finally:
        await store.aclose()


# --- in process --------------------------------------------------------------------------------


@bounded(20)
async def test_step_runs_once_across_a_graceful_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    ct.LLM_CALLS.clear()
    async with serve([ct.draft], store=url):
        run_id = (await ct.draft.trigger({"topic": "kelp"})).id
        await until_status(run_id, RunStatus.WAITING)
        before = await read_n(run_id, 5)
    async with serve([ct.draft], store=url):
        assert (await runs.retrieve(run_id)).status is RunStatus.WAITING
        await ct.approval.send(run_id, {"by": "cy"})
        run = await final(run_id)
        assert run.output == {"draft": "".join(before[:4]), "approved_by": "cy"}
        assert await read_all(ct.ai, run_id) == [*before, "approved by cy"]
    assert len(ct.LLM_CALLS) == 1


@task(id="durable.napper")
async def napper(payload: Any) -> str:
    await wait.for_(seconds=1.5)
    return "rested"


@bounded(20)
async def test_wait_for_is_durable_with_its_deadline(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    began = trio.current_time()
    async with serve([napper], store=url):
        run_id = (await napper.trigger()).id
        await until_status(run_id, RunStatus.WAITING)
        await trio.sleep(0.5)
    async with serve([napper], store=url):
        run = await final(run_id)
        assert (run.status, run.attempt, run.output) == (RunStatus.COMPLETED, 1, "rested")
    assert 1.4 <= trio.current_time() - began < 2.5


async def _twice(n: int) -> tuple[int, int]:
    return (n, n)


async def _not_json() -> object:
    return object()


def _sync() -> int:
    return 1


@task(id="durable.steps")
async def steps(payload: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"pair": await step("pair", _twice, 3)}
    for name, fn in (("", _twice), (7, _twice), ("x" * 257, _twice), ("sync", _sync),
                     ("obj", object())):
        try:
            await step(name, fn)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            out[str(name)[:5] or "empty"] = type(exc).__name__
    try:
        await step("bad", _not_json)
    except TypeError as exc:
        out["bad"] = "not JSON" in str(exc)
    try:
        await step("big", _big)
    except PayloadTooLargeError as exc:
        out["big"] = "over the" in str(exc)
    return out


async def _big() -> str:
    return "x" * (1 << 20)


@bounded(10)
async def test_step_checks_its_arguments_and_returns_json() -> None:
    with pytest.raises(OutsideRunError):
        await step("outside", _twice, 1)
    async with serve([steps]):
        run = await final((await steps.trigger()).id)
        assert run.output == {"pair": [3, 3], "empty": "TypeError", "7": "TypeError",
                              "xxxxx": "ValueError", "sync": "TypeError", "obj": "TypeError",
                              "bad": True, "big": True}


@bounded(10)
async def test_a_trigger_during_a_graceful_stop_is_stored_for_the_next_engine(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with serve([napper], store=url) as eng:
        eng.service.stopping = True  # as during a stop's grace period
        run_id = (await napper.trigger()).id
        assert (await runs.retrieve(run_id)).status is RunStatus.QUEUED
        assert eng.statistics().live_runs == 0
    async with serve([napper], store=url):
        run = await final(run_id)
        assert (run.status, run.output) == (RunStatus.COMPLETED, "rested")


def test_grace_period_is_checked() -> None:
    from runwire.engine import open_engine

    for bad in (-1, float("nan"), float("inf"), "3", True):
        with pytest.raises(ValueError, match="grace_period"):
            trio.run(_open_with, open_engine, bad)


async def _open_with(open_engine: Any, grace: Any) -> None:
    async with open_engine(grace_period=grace):
        pass


assert InputStreamTimeoutError  # (the timed-out wait above returns it: ok=False)
