"""Retention: the engine's sweeper deletes finished runs ``Limits.retention`` seconds after
they finished, with all their data; live runs are never deleted.

Time is trio's mock clock, which the engine's clock follows, so days pass in milliseconds.
The clock jumps only after the run loop has been idle for a few real milliseconds (not at
once, as ``autojump_clock`` does): the SQLite store works in a worker thread, and a clock
that jumped whenever the loop waits for that thread would let time pass in mid-commit.
For the same reason the test is bounded in real time, not with a virtual deadline.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from runwire.engine import Engine, Limits, open_engine
from runwire import NotFoundError, RunStatus, runs, streams, task

from .helpers import API_KEY

RETENTION = 3600.0
SWEEP_INTERVAL = 300.0
ai = streams.define(id="ai", type=str)


@task(id="retention.quick")
async def quick(payload: dict[str, Any]) -> dict[str, Any]:
    ai.pipe(f"{payload['name']}-{i}" for i in range(3))
    return {"name": payload["name"]}


@task(id="retention.forever")
async def forever(payload: dict[str, Any]) -> None:
    await ai.append("still here")
    await trio.sleep_forever()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.01)


@pytest.fixture(params=["memory", "sqlite", "sqlite-in-memory"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'r.db'}",
            "sqlite-in-memory": "sqlite:///:memory:"}[request.param]


def test_the_sqlite_store_knows_every_final_status() -> None:
    from runwire.engine.store._sqlite import _FINAL
    from runwire._models import FINAL_STATUSES

    assert set(_FINAL.strip("()").replace("'", "").split(", ")) == {
        status.value for status in FINAL_STATUSES}


class Sweeps:
    """Watches the store's deletions that the engine's sweeper makes: when and how many."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.log: list[tuple[float, int]] = []
        self._changed = trio.Event()
        delete = engine.store.delete_finished_before

        async def watched(cutoff: float) -> int:
            removed = await delete(cutoff)
            self.log.append((engine.clock(), removed))
            self._changed.set()
            self._changed = trio.Event()
            return removed

        engine.store.delete_finished_before = watched  # type: ignore[method-assign]

    async def until_deleted(self) -> float:
        """Wait for the next sweep that deletes something; the engine time it happened."""
        seen = len(self.log)
        while True:
            await self._changed.wait()
            for when, removed in self.log[seen:]:
                if removed:
                    return when
            seen = len(self.log)


async def finished_run(engine: Engine, name: str) -> Any:
    handle = await quick.trigger({"name": name})
    await engine.wait_finished(handle.id)
    return await runs.retrieve(handle.id)


@contextlib.contextmanager
def real_time_limit(seconds: float) -> Iterator[None]:
    """Like ``trio.fail_after``, but in real seconds, from a watchdog thread.

    Under a mock clock a virtual deadline is a place to jump to: while the store's worker
    thread opens the file, the clock would leap to it and fail a healthy test.
    """
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:
        timer = threading.Timer(seconds, lambda: trio.from_thread.run_sync(
            scope.cancel, trio_token=token))
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        raise trio.TooSlowError(f"the test took more than {seconds} real seconds")


async def test_sweeper_deletes_finished_runs_after_retention(store_url: str,
                                                              clock: Any) -> None:
    limits = Limits(retention=RETENTION, sweep_interval=SWEEP_INTERVAL)
    with real_time_limit(10):
        async with open_engine([quick, forever], store=store_url, api_key=API_KEY,
                               limits=limits) as engine, engine.connect():
            await check_retention(engine)


async def check_retention(engine: Engine) -> None:
    sweeps = Sweeps(engine)
    old = await finished_run(engine, "old")
    live = await forever.trigger({})
    await trio.sleep(RETENTION / 2)
    new = await finished_run(engine, "new")
    assert old.status is RunStatus.COMPLETED and old.finished_at is not None
    assert await (await ai.read(old.id)).collect() == ["old-0", "old-1", "old-2"]

    when = await sweeps.until_deleted()  # nobody calls sweep(): the engine's sweeper does
    assert old.finished_at + RETENTION <= when < old.finished_at + RETENTION \
        + 2 * SWEEP_INTERVAL
    # it swept on its own all along (how often exactly depends on how the mock clock
    # jumped while the store's thread worked)
    assert len(sweeps.log) >= 2 and all(n == 0 for _, n in sweeps.log[:-1])
    with pytest.raises(NotFoundError):
        await runs.retrieve(old.id)
    with pytest.raises(NotFoundError):
        await (await ai.read(old.id)).collect()
    assert await engine.store.streams(old.id) == {}
    assert await engine.store.read_chunks(old.id, "ai", 0, 10) == []
    assert (await runs.retrieve(new.id)).output == {"name": "new"}
    assert await (await ai.read(new.id)).collect() == ["new-0", "new-1", "new-2"]

    when = await sweeps.until_deleted()
    assert new.finished_at is not None and new.finished_at + RETENTION <= when
    with pytest.raises(NotFoundError):
        await runs.retrieve(new.id)
    # a live run is never deleted, however old it is
    assert (await runs.retrieve(live.id)).status is RunStatus.EXECUTING
    assert await engine.store.get_run(live.id) is not None
