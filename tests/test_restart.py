"""Restart recovery on the SQLite store: every rule of ``engine/_recovery.py``.

Two ways to stop an engine mid-run, one scenario (the tasks in ``tests/crash_tasks.py``):

* in process: the ``open_engine`` block is left (its nursery is cancelled) and a new engine
  opens the same file (once with the same tasks, once without one of them and with a stored
  run it cannot read);
* a real crash: ``python -m runwire.engine serve`` in a subprocess gets ``SIGKILL`` and is started
  again on the same file and port, while an SDK client (readers, a producer) stays connected
  through it all.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from runwire.engine.store._sqlite import SqliteStore
from runwire.engine.store import Batch
from runwire import RunStatus, StreamDef, connect, runs

from . import crash_tasks as ct
from .helpers import API_KEY, bounded, final, serve

REPO = Path(__file__).resolve().parents[1]
TASKS = [ct.finished, ct.retried, ct.fragile, ct.queued, ct.sink]
FINISHED = [f"f{i}" for i in range(5)]
RETRIED = ["a1-0", "a1-1", "a1-2", "a1:got:yes", ct.PARKED, "a2:got:yes", "a2:notes:none"]
SIDE = [f"s{i}" for i in range(50)]
EXT = [f"e{i}" for i in range(10)]
SINK = ["sink attempt 1"]  # resumed in its wait: the same attempt, written once


class Collector:
    """Reads one stream in the background; the test waits for chunks to show up."""

    def __init__(self, stream: StreamDef[Any], run_id: str) -> None:
        self.stream = stream
        self.run_id = run_id
        self.items: list[Any] = []
        self.ended = False
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            async for item in await self.stream.read(self.run_id, timeout_in_seconds=30):
                self.items.append(item)
                self._wake()
            self.ended = True
        finally:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def seen(self, item: Any) -> None:
        while item not in self.items:
            assert not self.ended, f"{self.stream.id} of {self.run_id} ended without {item!r}"
            await self._changed.wait()

    async def finished(self) -> list[Any]:
        while not self.ended:
            await self._changed.wait()
        return self.items


def collect(nursery: trio.Nursery, stream: StreamDef[Any], run_id: str) -> Collector:
    collector = Collector(stream, run_id)
    nursery.start_soon(collector.run)
    return collector


async def read_all(stream: StreamDef[Any], run_id: str, start: int = 0) -> list[Any]:
    return await (await stream.read(run_id, start_index=start, timeout_in_seconds=10)).collect()


@attrs.define
class Scenario:
    """The runs parked before the stop, and what readers had seen of them."""

    ids: dict[str, str] = attrs.field(factory=dict)
    readers: dict[str, Collector] = attrs.field(factory=dict)
    seen: dict[str, list[Any]] = attrs.field(factory=dict)


async def park_everything(nursery: trio.Nursery) -> Scenario:
    """Start one run of each kind and wait until each is parked (needs a current client)."""
    scenario = Scenario()
    ids = scenario.ids
    ids["finished"] = (await ct.finished.trigger({"n": len(FINISHED)})).id
    ids["retried"] = (await ct.retried.trigger({})).id
    ids["fragile"] = (await ct.fragile.trigger({"n": len(SIDE)})).id
    ids["hog"] = (await ct.queued.trigger({"hog": True})).id
    ids["waiting"] = (await ct.queued.trigger({})).id
    ids["sink"] = (await ct.sink.trigger({})).id
    readers = scenario.readers
    readers.update({name: collect(nursery, ct.ai, run_id) for name, run_id in ids.items()})
    assert await readers["finished"].finished() == FINISHED
    await readers["retried"].seen("a1-2")
    await ct.approval.send(ids["retried"], {"answer": "yes"})
    await ct.notes.send(ids["retried"], {"sent": "before the stop"})
    for name in ("retried", "fragile", "hog"):
        await readers[name].seen(ct.PARKED)
    await readers["sink"].seen("sink attempt 1")
    await ct.notes.send(ids["sink"], {"n": 1}, idempotency_key="note-1")
    assert (await runs.retrieve(ids["waiting"])).status is RunStatus.QUEUED
    scenario.seen = {name: list(reader.items) for name, reader in readers.items()}
    return scenario


async def check_recovered(scenario: Scenario) -> None:
    """Every rule of ``engine/_recovery.py``, from a client of the restarted engine."""
    ids = scenario.ids
    # Finished before the stop: untouched; its stream reads from 0 and ends.
    run = await runs.retrieve(ids["finished"])
    assert (run.status, run.output, run.attempt) == (RunStatus.COMPLETED, {"n": 5}, 1)
    assert await read_all(ct.ai, ids["finished"]) == FINISHED
    # Attempts left: retried at once; its stream continues at the next index; the stored
    # waitpoint answers attempt 2; the record sent to attempt 1 is not delivered again.
    run = await final(ids["retried"])
    assert (run.status, run.attempt, run.output) == (RunStatus.COMPLETED, 2, {"attempt": 2})
    assert await read_all(ct.ai, ids["retried"]) == RETRIED
    # No attempts left: CRASHED (EngineRestart); every stream ended, with all its chunks.
    run = await runs.retrieve(ids["fragile"])
    assert run.status is RunStatus.CRASHED and run.error is not None
    assert run.error.type == "EngineRestart" and run.finished_at is not None
    assert await read_all(ct.ai, ids["fragile"]) == [ct.PARKED]
    assert await read_all(ct.side, ids["fragile"]) == SIDE
    assert await read_all(ct.side, ids["fragile"], start=len(SIDE)) == []
    # The queue's hog crashed; the run that never started runs, as attempt 1.
    assert (await runs.retrieve(ids["hog"])).status is RunStatus.CRASHED
    run = await final(ids["waiting"])
    assert (run.status, run.attempt, run.output) == (RunStatus.COMPLETED, 1, {"attempt": 1})
    # Every chunk a reader had seen (so the store had acknowledged it) is still there.
    for name in ("finished", "retried", "fragile", "hog", "waiting"):
        stream = await read_all(ct.ai, ids[name])
        assert stream[:len(scenario.seen[name])] == scenario.seen[name], name


async def finish_sink(scenario: Scenario) -> None:
    """The sink was WAITING: resumed in its wait as the same attempt (a restart is not an
    attempt); a re-sent record is deduplicated; then it completes."""
    sink_id = scenario.ids["sink"]
    assert (await runs.retrieve(sink_id)).status is RunStatus.WAITING
    await ct.notes.send(sink_id, {"n": 1}, idempotency_key="note-1")
    await ct.done.send(sink_id, {})
    run = await final(sink_id)
    assert (run.status, run.attempt, run.output) == (RunStatus.COMPLETED, 1, {"attempt": 1})
    assert await read_all(ct.ai, sink_id) == SINK
    assert await read_all(ct.ext, sink_id) == EXT


async def check_store(path: Path, scenario: Scenario) -> None:
    """What only the store can tell: acknowledged records survived, none was duplicated."""
    store = SqliteStore(str(path))
    try:
        sink = await store.records(scenario.ids["sink"])
        assert [r.idempotency_key for r in sink["notes"]] == ["note-1"]
        assert len(sink["done"]) == 1
        retried = await store.records(scenario.ids["retried"])
        assert len(retried["approval"]) == 1 and len(retried["notes"]) == 1
        assert await store.waitpoint(scenario.ids["retried"], "approval:approval-1", 0.0)
        assert [key for key, _ in await store.producer_seqs(scenario.ids["sink"])] == ["ext"]
        assert await store.unfinished_runs() == []
    finally:
        await store.aclose()


# --- (a) in process --------------------------------------------------------------------------


async def check_handed_back(eng: Any, scenario: Scenario) -> None:
    """After a graceful stop every live run was resumed as the same attempt; the replay of
    each wrote nothing a second time (its own puts are dropped until it catches up)."""
    ids = scenario.ids
    run = await runs.retrieve(ids["finished"])
    assert (run.status, run.output, run.attempt) == (RunStatus.COMPLETED, {"n": 5}, 1)
    replayed = {"retried": 5, "fragile": 1, "hog": 1}  # chunks each re-puts to ai
    for name, count in replayed.items():
        run = await runs.retrieve(ids[name])
        assert (run.status, run.attempt) == (RunStatus.EXECUTING, 1), name
        actor = eng.broker.owner(ids[name])
        while actor.journal.writes.get("ai", 0) < count:  # the replay has caught up
            await trio.sleep(0.01)
    assert (await runs.retrieve(ids["waiting"])).status is RunStatus.QUEUED  # behind hog
    for name in replayed:
        await runs.cancel(ids[name])
        assert (await runs.retrieve(ids[name])).status is RunStatus.CANCELED
        assert await read_all(ct.ai, ids[name]) == scenario.seen[name], name
    assert await read_all(ct.side, ids["fragile"]) == SIDE
    run = await final(ids["waiting"])  # the hog's slot is free: it runs, as attempt 1
    assert (run.status, run.attempt, run.output) == (RunStatus.COMPLETED, 1, {"attempt": 1})


@bounded(30)
async def test_graceful_stop_in_process_hands_every_run_back(tmp_path: Path) -> None:
    """Leaving ``open_engine``'s block is a graceful stop (grace period 0): every live run
    is handed back and the next engine resumes it as the same attempt (rule 4); the crash
    rules (2, 3, 5) are what the ``kill -9`` test below checks."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with serve(TASKS, store=url) as eng, trio.open_nursery() as readers:
        scenario = await park_everything(readers)
        sink_id = scenario.ids["sink"]
        assert await eng.append(sink_id, "ext", "prod-1", 0, EXT[:4]) == 4
        readers.cancel_scope.cancel()  # in-process clients die with their engine

    async with serve(TASKS, store=url) as eng:
        await check_handed_back(eng, scenario)
        # the producer retries its whole batch after the restart: cut to what is new
        assert await eng.append(sink_id, "ext", "prod-1", 0, EXT[:6]) == 6
        assert await eng.append(sink_id, "ext", "prod-1", 6, EXT[6:]) == 10
        await finish_sink(scenario)
    await check_store(tmp_path / "runs.db", scenario)


#: A stored run the engine cannot read (its status is no status at all).
UNREADABLE = {"id": "run_unreadable", "task_id": ct.sink.id, "status": "MISLAID",
              "payload": {"kept": True}}


@bounded(30)
async def test_restart_without_a_task_and_with_an_unreadable_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    store = SqliteStore(str(path))
    try:  # stored first, so the restarted engine tries it before the others
        await store.commit(Batch(runs=[UNREADABLE]))
    finally:
        await store.aclose()
    async with serve(TASKS, store=url), trio.open_nursery() as readers:
        retried_id = (await ct.retried.trigger({})).id
        sink_id = (await ct.sink.trigger({})).id
        await collect(readers, ct.ai, retried_id).seen("a1-2")  # then WAITING, attempts left
        await collect(readers, ct.ai, sink_id).seen("sink attempt 1")
        readers.cancel_scope.cancel()

    caplog.clear()
    # crash.retried is gone: its run is not retried but CRASHED (rule 1)
    async with serve([t for t in TASKS if t is not ct.retried], store=url):
        run = await runs.retrieve(retried_id)
        assert (run.status, run.attempt) == (RunStatus.CRASHED, 1)
        assert run.error is not None and run.error.type == "EngineRestart"
        assert "not registered" in run.error.message and run.finished_at is not None
        assert await read_all(ct.ai, retried_id) == ["a1-0", "a1-1", "a1-2"]  # it ends
        # the unreadable run did not keep the others from recovering
        await ct.done.send(sink_id, {})
        run = await final(sink_id)
        assert (run.status, run.attempt, run.output) == (RunStatus.COMPLETED, 1, {"attempt": 1})
    assert f"could not recover run {UNREADABLE['id']}; it is left as stored" in caplog.text

    store = SqliteStore(str(path))
    try:
        states = await store.streams(retried_id)
        assert "ai" in states and all(state.ended for state in states.values())
        assert await store.get_run(UNREADABLE["id"]) == UNREADABLE
        assert await store.unfinished_runs() == [UNREADABLE]
    finally:
        await store.aclose()


# --- (b) a real crash ------------------------------------------------------------------------


class EngineProcess:
    """``python -m runwire.engine serve`` in a subprocess; its output is kept for failure messages."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = trio.Event()

    @classmethod
    async def spawn(cls, nursery: trio.Nursery, db: Path, port: int,
                    *extra: str) -> EngineProcess:
        """Start the process (its output is read in ``nursery``); see :meth:`ready`."""
        command = [sys.executable, "-m", "runwire.engine", "serve", "--tasks", "tests.crash_tasks",
                   "--store", f"sqlite:///{db}", "--port", str(port), "--api-key", API_KEY,
                   "--drain-timeout", "1", "--log-level", "WARNING", *extra]
        process = await trio.lowlevel.open_process(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        engine = cls(process)
        nursery.start_soon(engine._read_output)
        return engine

    async def ready(self) -> None:
        """Wait until it prints the URL it serves."""
        with trio.fail_after(15):
            await self._ready.wait()
        assert self.url is not None, "engine did not start:\n" + self.output

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def _read_output(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for data in self.process.stdout:
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    self._line(line.decode(errors="replace"))
        finally:
            self._ready.set()

    def _line(self, line: str) -> None:
        self.lines.append(line)
        found = re.search(r"serving (ws://\S+)", line)
        if found and self.url is None:
            self.url = found.group(1)
            self._ready.set()

    @property
    def port(self) -> int:
        assert self.url is not None
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    async def kill(self) -> None:
        self.process.kill()  # SIGKILL: no cleanup of any kind
        assert await self.process.wait() == -signal.SIGKILL

    async def stop(self, signum: int = signal.SIGINT) -> float:
        """Stop it with ``signum``; it must exit 0. Returns how long it took (seconds)."""
        began = trio.current_time()
        self.process.send_signal(signum)
        assert await self.process.wait() == 0, self.output
        assert "stopped" in self.lines, self.output
        return trio.current_time() - began


@contextlib.asynccontextmanager
async def engine_processes() -> AsyncIterator[Callable[..., Awaitable[EngineProcess]]]:
    """Start engines with the function it yields; whatever still runs at the end is killed."""
    started: list[EngineProcess] = []
    async with trio.open_nursery() as nursery:

        async def start(db: Path, port: int, *extra: str) -> EngineProcess:
            engine = await EngineProcess.spawn(nursery, db, port, *extra)
            started.append(engine)
            await engine.ready()
            return engine

        try:
            yield start
        finally:
            with trio.CancelScope(shield=True):
                for engine in started:
                    if engine.process.returncode is None:
                        engine.process.kill()
                        await engine.process.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@bounded(45)
async def test_crash_with_sigkill_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    restarted = trio.Event()

    async def external_chunks() -> AsyncIterator[str]:
        for item in EXT[:5]:
            yield item
        await restarted.wait()  # the engine is killed and started again in between
        for item in EXT[5:]:
            yield item

    async with engine_processes() as start:
        first = await start(db, 0)
        assert first.port > 0 and first.url == f"ws://127.0.0.1:{first.port}/v1"
        async with connect(first.url, api_key=API_KEY, reconnect_timeout=20), \
                trio.open_nursery() as live:
            scenario = await park_everything(live)
            sink_id = scenario.ids["sink"]
            ext = collect(live, ct.ext, sink_id)
            piped = ct.ext.pipe(external_chunks(), target=sink_id)
            await ext.seen("e4")

            await first.kill()
            second = await start(db, first.port)
            assert second.url == first.url
            restarted.set()

            await check_recovered(scenario)
            await piped.wait_until_complete()  # resent after the reconnect, deduplicated
            await finish_sink(scenario)
            # readers connected through the crash saw every chunk exactly once
            full = {"finished": FINISHED, "retried": RETRIED, "fragile": [ct.PARKED],
                    "hog": [ct.PARKED], "waiting": [], "sink": SINK}
            for name, reader in scenario.readers.items():
                assert await reader.finished() == full[name], name
            assert await ext.finished() == EXT
        await second.stop()
    await check_store(db, scenario)
