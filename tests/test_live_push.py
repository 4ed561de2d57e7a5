"""Live pushes: chunks sent to readers at the live tail straight from the commit cycle.

See "Live pushes" in ``engine/_session.py``. A push must send exactly what the read task
would have sent next; whenever it cannot (the socket is full, the lock is taken, the read is
cancelled, the push fails), the read task sends it instead, and readers see no difference.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from runwire.engine.run import OutputStream
from runwire import streams, task
from runwire.transport import Connection

from .helpers import final, serve

ticks = streams.define(id="ticks", type=int)


@task(id="ticker")
async def ticker(payload: dict[str, Any]) -> int:
    for i in range(payload["n"]):
        await trio.sleep(payload.get("every", 0.01))
        await ticks.append(i)
    return payload["n"]


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every ``Connection.send_nowait`` outcome, in order."""
    outcomes: list[bool] = []
    send_nowait = Connection.send_nowait

    def spy(self: Connection, frame: Any) -> bool:
        sent = send_nowait(self, frame)
        outcomes.append(sent)
        return sent

    monkeypatch.setattr(Connection, "send_nowait", spy)
    return outcomes


async def test_a_reader_at_the_tail_gets_pushed_chunks_exactly_once(
        transport, autojump_clock, pushes):
    async with serve([ticker], transport):
        handle = await ticker.trigger({"n": 200})
        got = await (await ticks.read(handle.id)).collect()
        assert got == list(range(200))
        assert (await final(handle.id)).output == 200
    assert pushes.count(True) >= 150  # nearly every chunk: the reader waits at the tail


async def test_many_readers_on_one_connection_each_get_everything(
        transport, autojump_clock, pushes):
    async with serve([ticker], transport):
        handle = await ticker.trigger({"n": 100})
        results: list[list[int]] = [[] for _ in range(5)]

        async def read(i: int, start: int) -> None:
            results[i] = await (await ticks.read(handle.id, start_index=start)).collect()

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(read, i, i * 10)
        for i, got in enumerate(results):
            assert got == list(range(i * 10, 100))
    assert pushes.count(True) > 0


async def test_when_a_push_cannot_go_the_read_task_sends_instead(
        transport, autojump_clock, monkeypatch):
    calls: list[Any] = []

    def refused(self: Connection, frame: Any) -> bool:
        calls.append(frame)
        return False

    monkeypatch.setattr(Connection, "send_nowait", refused)
    async with serve([ticker], transport):
        handle = await ticker.trigger({"n": 50})
        assert await (await ticks.read(handle.id)).collect() == list(range(50))
        assert calls  # pushes were tried (and refused): the read task sent everything


async def test_a_failing_push_never_breaks_the_run_or_the_read(
        transport, autojump_clock, monkeypatch):
    calls: list[Any] = []

    def broken(self: Connection, frame: Any) -> bool:
        calls.append(frame)
        raise RuntimeError("push failed")

    monkeypatch.setattr(Connection, "send_nowait", broken)
    async with serve([ticker], transport):
        handle = await ticker.trigger({"n": 50})
        assert await (await ticks.read(handle.id)).collect() == list(range(50))
        assert calls  # pushes were tried (and failed)
        assert (await final(handle.id)).output == 50


async def test_the_pusher_is_gone_once_the_read_ends(transport, autojump_clock, monkeypatch):
    removed = trio.Event()
    remove_pusher = OutputStream.remove_pusher

    def noted(self: OutputStream, push: Any) -> None:
        remove_pusher(self, push)
        removed.set()

    monkeypatch.setattr(OutputStream, "remove_pusher", noted)
    async with serve([ticker], transport) as eng:
        handle = await ticker.trigger({"n": 1000, "every": 1})
        async for value in await ticks.read(handle.id):
            assert _pushers(eng, handle.id) == 1
            if value == 3:
                break
        with trio.fail_after(5):  # the engine sees the cancel and ends the read
            await removed.wait()
        assert _pushers(eng, handle.id) == 0
        await ticks.read(handle.id)  # the client still works


def _pushers(eng, run_id: str) -> int:
    run = eng.run_statistics(run_id)
    assert run is not None, "the run is live"
    return run.streams["ticks"].pushers
