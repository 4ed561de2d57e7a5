"""Storage faults tell the truth (issue 19, part 3).

Against a real engine process (``python -m runwire.engine serve``, as in ``test_restart``):

* another process holds the SQLite write lock (``BEGIN IMMEDIATE``) for seconds: the engine
  keeps serving (a ``retrieve`` of a finished run answers while the lock is still held), the
  send caught behind the lock is answered once it is released, and the run completes;
* a full disk (a loop-free small ``tmpfs`` mounted for the test; skipped where ``mount`` is
  not allowed, the in-process tests below inject the same SQLite error instead);
* a database made read-only under the engine (``chattr +i`` on the file and its WAL);
* a fault that outlasts the store's retry budget (``?retry=SECONDS``): the send gets an error
  answer (no hang), the run is ``CRASHED`` at once, and the crash is stored as soon as the
  disk has room again (never a false ``WAITING`` in the store).

In process, with an injected SQLite error (real time: SQLite works in threads): every request of a failed
batch is answered, the crash is stored once the store is back, ``trigger_and_wait`` gets the
crashed run (no bare ``AssertionError``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from runwire import InternalError, RunFinishedError, RunStatus, connect, runs, streams, task
from runwire.engine.store import SqliteStore

from . import crash_tasks as ct
from .helpers import API_KEY, bounded, serve
from .test_restart import engine_processes

unix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs flock, chattr, mount")


def _stored_status(db: Path, run_id: str) -> str | None:
    """The run's status as the file holds it (read-only, beside the engine)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


async def _until_stored(db: Path, run_id: str, status: str) -> None:
    while await trio.to_thread.run_sync(_stored_status, db, run_id) != status:
        await trio.sleep(0.05)


async def _until_logged(engine: Any, text: str) -> None:
    while text not in engine.output:
        await trio.sleep(0.02)


async def _finished_run() -> str:
    run_id = (await ct.finished.trigger({"n": 3})).id
    while not (await runs.retrieve(run_id)).is_finished:
        await trio.sleep(0.02)
    return run_id


async def _waiting_sink() -> str:
    run_id = (await ct.sink.trigger({})).id
    while (await runs.retrieve(run_id)).status is not RunStatus.WAITING:
        await trio.sleep(0.02)
    return run_id


# --- another process holds the write lock --------------------------------------------------

_HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()  # until the test says so
conn.execute("COMMIT")
"""


class LockHolder:
    """A python process holding ``BEGIN IMMEDIATE`` on the database until released."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process

    async def release(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")
        assert await self.process.wait() == 0

    @property
    def holding(self) -> bool:
        return self.process.returncode is None


@contextlib.asynccontextmanager
async def write_lock_held(db: Path) -> Any:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            assert (await process.stdout.receive_some()).startswith(b"held")
        yield LockHolder(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@unix_only
@bounded(60)
async def test_a_lock_held_by_another_process_freezes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    async with engine_processes() as start:
        engine = await start(db, 0)
        async with connect(engine.url, api_key=API_KEY, reconnect_timeout=20):
            done = await _finished_run()
            sink = await _waiting_sink()
            async with write_lock_held(db) as lock, trio.open_nursery() as nursery:
                answers: list[int] = []

                async def send() -> None:
                    await ct.done.send(sink, {"ok": True})
                    answers.append(0)

                nursery.start_soon(send)
                await _until_logged(engine, "retrying for up to")  # the send's commit met it
                # the engine serves meanwhile: a stored run, a live one, a new trigger's read
                for _ in range(5):
                    assert (await runs.retrieve(done)).status is RunStatus.COMPLETED
                    assert (await runs.retrieve(sink)).status is RunStatus.WAITING
                assert lock.holding and answers == []  # all that while the lock was held
                await lock.release()
            assert answers == [0]
            run = await runs.retrieve(sink)
            while not run.is_finished:
                run = await runs.retrieve(sink)
                await trio.sleep(0.02)
            assert (run.status, run.output) == (RunStatus.COMPLETED, {"attempt": 1})
            await _until_stored(db, sink, "COMPLETED")
        await engine.stop()


# --- a database file made read-only under the engine ------------------------------------------


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i``: even root cannot write through the open file (EPERM -> SQLITE_IOERR)."""
    done: list[Path] = []
    try:
        for path in paths:
            result = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            if result.returncode != 0:
                pytest.skip(f"chattr +i is not allowed here: {result.stderr.decode().strip()}")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


@unix_only
@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs)")
@bounded(60)
async def test_a_read_only_database_holds_writes_until_it_is_writable_again(
        tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    async with engine_processes() as start:
        engine = await start(db, 0)
        async with connect(engine.url, api_key=API_KEY, reconnect_timeout=20):
            done = await _finished_run()
            sink = await _waiting_sink()
            answers: list[int] = []
            async with trio.open_nursery() as nursery:
                with immutable(db, Path(f"{db}-wal")):

                    async def send() -> None:
                        await ct.done.send(sink, {"ok": True})
                        answers.append(0)

                    nursery.start_soon(send)
                    await _until_logged(engine, "retrying for up to")
                    assert (await runs.retrieve(done)).status is RunStatus.COMPLETED
                    assert answers == []
            assert answers == [0]
            while not (await runs.retrieve(sink)).is_finished:
                await trio.sleep(0.02)
            assert (await runs.retrieve(sink)).status is RunStatus.COMPLETED
            await _until_stored(db, sink, "COMPLETED")
        await engine.stop()


# --- a full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A ``tmpfs`` of ``size`` mounted at ``where`` (root only; else the test is skipped)."""
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem up to its last byte; the file that did it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


@unix_only
@bounded(90)
async def test_a_full_disk_holds_writes_then_the_run_goes_on(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "4m") as small:
        db = small / "full.db"
        async with engine_processes() as start:
            engine = await start(db, 0)
            async with connect(engine.url, api_key=API_KEY, reconnect_timeout=20):
                done = await _finished_run()
                sink = await _waiting_sink()
                filler = await trio.to_thread.run_sync(fill, small)
                answers: list[int] = []
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        await ct.done.send(sink, {"ok": True})
                        answers.append(0)

                    nursery.start_soon(send)
                    await _until_logged(engine, "retrying for up to")
                    assert "database or disk is full" in engine.output
                    assert (await runs.retrieve(done)).status is RunStatus.COMPLETED
                    assert answers == []
                    filler.unlink()  # room again: the retried write goes through
                assert answers == [0]
                while not (await runs.retrieve(sink)).is_finished:
                    await trio.sleep(0.02)
                assert (await runs.retrieve(sink)).status is RunStatus.COMPLETED
            await engine.stop()


@unix_only
@bounded(90)
async def test_a_fault_past_the_retry_budget_answers_crashes_and_stores_the_truth(
        tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "4m") as small:
        db = small / "full.db"
        async with engine_processes() as start:
            engine = await start(f"{db}?retry=1", 0)  # type: ignore[arg-type]
            async with connect(engine.url, api_key=API_KEY, reconnect_timeout=20):
                done = await _finished_run()
                sink = await _waiting_sink()
                filler = await trio.to_thread.run_sync(fill, small)
                with pytest.raises(InternalError, match="could not write"):
                    await ct.done.send(sink, {"ok": True})  # answered, not left hanging
                run = await runs.retrieve(sink)  # the truth at once, from the live actor
                assert run.status is RunStatus.CRASHED
                assert run.error is not None and "StoreUnavailableError" in run.error.type
                with pytest.raises(RunFinishedError):
                    await ct.done.send(sink, {"ok": True})
                assert (await runs.retrieve(done)).status is RunStatus.COMPLETED
                assert _stored_status(db, sink) == "WAITING"  # not stored yet: the disk is full
                filler.unlink()
                await _until_stored(db, sink, "CRASHED")  # stored once there is room
            await engine.stop()


# --- in process: an injected fault, mock clock -----------------------------------------------


def _fault(code: int, message: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    exc.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    return exc


class FaultyStore(SqliteStore):
    """A SQLite store whose group writes fail with ``fault`` while ``failing`` is set."""

    failing = False

    def _write(self, group: list[Any]) -> None:
        if self.failing:
            raise _fault(13, "database or disk is full")
        super()._write(group)


inbox = streams.input(id="inbox", type=dict)
out = streams.define(id="out", type=str)


@task(id="faults.listener")
async def listener(payload: Any) -> dict[str, Any]:
    await out.append("ready")
    got = (await inbox.wait(timeout="1h")).unwrap()
    return {"got": got}


@bounded(30)  # real seconds: SQLite works in threads, which the mock clock cannot bound
async def test_every_request_of_a_failed_batch_is_answered_and_the_crash_is_stored(
        tmp_path: Path) -> None:
    store = FaultyStore(str(tmp_path / "f.db"), retry_seconds=1)
    async with serve([listener], store=store), trio.open_nursery() as nursery:
        results: list[Any] = []

        async def trigger_and_wait() -> None:
            results.append(await listener.trigger_and_wait({}))

        nursery.start_soon(trigger_and_wait)
        page = await runs.list(task="faults.listener")
        while not page.runs or page.runs[0].status is not RunStatus.WAITING:
            await trio.sleep(0.01)
            page = await runs.list(task="faults.listener")
        run_id = page.runs[0].id
        store.failing = True
        async with trio.open_nursery() as senders:
            errors: list[BaseException] = []

            async def send(i: int) -> None:
                try:
                    await inbox.send(run_id, {"i": i})
                except (InternalError, RunFinishedError) as exc:
                    errors.append(exc)

            for i in range(3):  # ride in one batch (or in two): each one is answered
                senders.start_soon(send, i)
        assert len(errors) == 3
        assert any(isinstance(e, InternalError) and "not stored" in str(e) for e in errors)
        assert store.write_faults > 1 and store.failed_writes >= 1
        run = await runs.retrieve(run_id)
        assert run.status is RunStatus.CRASHED and run.error is not None
        assert run.error.type == "StoreUnavailableError"
        with pytest.raises(InternalError, match="the run was not created"):
            await listener.trigger({})
        store.failing = False
        while (await store.get_run(run_id) or {}).get("status") != "CRASHED":
            await trio.sleep(0.5)  # the crash is stored once the store is back
    [result] = results  # trigger_and_wait got the crashed run, not a bare AssertionError
    assert (result.id, result.ok, result.status) == (run_id, False, RunStatus.CRASHED)


@bounded(30)
async def test_a_short_fault_delays_writes_and_loses_nothing(tmp_path: Path) -> None:
    store = FaultyStore(str(tmp_path / "s.db"), retry_seconds=30)
    async with serve([listener], store=store):
        run_id = (await listener.trigger({})).id
        while (await runs.retrieve(run_id)).status is not RunStatus.WAITING:
            await trio.sleep(0.01)
        store.failing = True
        async with trio.open_nursery() as nursery:
            sent: list[int] = []

            async def send() -> None:
                await inbox.send(run_id, {"n": 1})
                sent.append(0)

            nursery.start_soon(send)
            await trio.sleep(1.5)
            assert sent == [] and store.write_faults > 1
            store.failing = False
        assert sent == [0]
        while not (await runs.retrieve(run_id)).is_finished:
            await trio.sleep(0.01)
        run = await runs.retrieve(run_id)
        assert (run.status, run.output) == (RunStatus.COMPLETED, {"got": {"n": 1}})
        assert store.failed_writes == 0


def test_the_retry_option_is_checked(tmp_path: Path) -> None:
    from runwire.engine.store import StoreConfigError, open_store
    assert open_store(f"sqlite:///{tmp_path}/a.db?retry=2.5").retry_seconds == 2.5  # type: ignore[attr-defined]
    for bad in ("-1", "x", "nan", "1e9"):
        with pytest.raises(StoreConfigError, match="retry"):
            open_store(f"sqlite:///{tmp_path}/a.db?retry={bad}")


def test_transient_faults_are_told_from_refusals() -> None:
    from runwire.engine.store._sqlite import _transient
    assert _transient(_fault(13, "database or disk is full"))
    assert _transient(_fault(5, "database is locked"))
    assert _transient(_fault(778, "disk I/O error"))  # SQLITE_IOERR_WRITE
    assert not _transient(_fault(19, "UNIQUE constraint failed"))
    assert not _transient(ValueError("not compact"))
