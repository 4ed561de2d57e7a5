"""A run's life, SPEC §2-§4: queues and suspension, retries, max_duration, cancel, the end
order and the drain, metadata (and the legacy ``metadata.stream``), run subscriptions, and
the status table of ``engine/_status.py``.

Everything about time runs on the mock clock: a 60 s drain or a 7 day wait take milliseconds.
"""

from __future__ import annotations


import pytest
import trio

from runwire.engine import open_engine
from runwire.engine.run import TRANSITIONS
from runwire.engine.run import RunRecord
from runwire import (
    NotFoundError,
    OutsideRunError,
    Queue,
    RetryPolicy,
    RunFinishedError,
    RunStatus,
    metadata,
    runs,
    streams,
    task,
)

from .helpers import API_KEY, final, finish, go, serve, until_go

Q, X, W = RunStatus.QUEUED, RunStatus.EXECUTING, RunStatus.WAITING
DONE, FAILED, CANCELED, TIMED_OUT = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED,
                                     RunStatus.TIMED_OUT)


@pytest.fixture
def transitions(monkeypatch):
    """Every status change of every run, as ``{run_id: [(old, new), ...]}``."""
    seen: dict[str, list[tuple[RunStatus, RunStatus]]] = {}
    original = RunRecord.set_status

    def recording(self, new, now):
        old = self.status
        original(self, new, now)
        seen.setdefault(self.id, []).append((old, new))

    monkeypatch.setattr(RunRecord, "set_status", recording)
    return seen  # the table itself is enforced by set_status: a bad change crashes the run


async def statuses(ids) -> list[RunStatus]:
    return [(await runs.retrieve(run_id)).status for run_id in ids]


approval = streams.input(id="approval")
out = streams.define(id="out")


# --- queues --------------------------------------------------------------------------------------


@task(id="holder", queue=Queue("pair", concurrency_limit=2))
async def holder(payload):
    await until_go()  # go.once() does not suspend: the run keeps its slot
    return payload


async def test_runs_beyond_the_concurrency_limit_stay_queued(transport, autojump_clock,
                                                             transitions):
    async with serve([holder], transport):
        ids = [(await holder.trigger(i)).id for i in range(5)]
        await trio.sleep(3600)
        assert await statuses(ids) == [X, X, Q, Q, Q]
        assert (await runs.retrieve(ids[4])).started_at is None
        await finish(ids[0])
        assert (await final(ids[0])).status is DONE
        await trio.sleep(1)
        assert await statuses(ids) == [DONE, X, X, Q, Q]  # first come, first served
        for run_id in ids[1:]:
            await finish(run_id)
        assert [(await final(run_id)).output for run_id in ids] == [0, 1, 2, 3, 4]
    assert transitions[ids[0]] == [(Q, X), (X, DONE)]
    assert transitions[ids[4]] == [(Q, X), (X, DONE)]


@task(id="gate", queue=Queue("single", concurrency_limit=1))
async def gate(payload):
    answer = (await approval.wait(timeout="7d")).unwrap()
    return {"n": payload, "answer": answer}


@task(id="worker", queue=Queue("single", concurrency_limit=1))
async def worker(payload):
    await until_go()
    return "worked"


async def test_a_queue_of_one_holds_many_waiting_runs(transport, autojump_clock, transitions):
    async with serve([gate, worker], transport):
        gates = [(await gate.trigger(i)).id for i in range(20)]
        await trio.sleep(60)
        # each gate took the only slot in turn, and gave it back when it began to wait
        assert await statuses(gates) == [W] * 20
        busy = (await worker.trigger()).id
        queued = (await worker.trigger()).id
        await trio.sleep(60)
        assert await statuses([busy, queued]) == [X, Q]  # the slot is free for real work
        for i, run_id in enumerate(gates):
            await approval.send(run_id, f"yes {i}")
        await trio.sleep(60)
        # approved, but the slot is taken: they wait for it in the queue
        assert set(await statuses(gates)) == {Q}
        await finish(busy)
        await finish(queued)
        results = [await final(run_id) for run_id in gates]
        assert (await final(queued)).status is DONE
    assert [r.output for r in results] == [{"n": i, "answer": f"yes {i}"} for i in range(20)]
    assert transitions[gates[5]] == [(Q, X), (X, W), (W, Q), (Q, X), (X, DONE)]


# --- retries -----------------------------------------------------------------------------------


@task(id="flaky", retry=RetryPolicy(max_attempts=3, min_timeout=1, factor=2))
async def flaky(payload, ctx):
    await out.append(f"attempt {ctx.attempt}")
    if ctx.attempt < payload["succeed_on"]:
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt}


async def test_retry_appends_to_the_same_streams_and_indices_continue(
        transport, autojump_clock, transitions):
    async with serve([flaky], transport):
        start = trio.current_time()
        handle = await flaky.trigger({"succeed_on": 3})
        parts = [part async for part in runs.subscribe_to_run(handle.id).with_streams()]
        elapsed = trio.current_time() - start
        run = await runs.retrieve(handle.id)
        chunks = await (await out.read(handle.id)).collect()
    assert run.status is DONE and run.attempt == 3 and run.output == {"attempt": 3}
    assert chunks == ["attempt 1", "attempt 2", "attempt 3"]
    assert [(p.index, p.chunk) for p in parts if p.type == "out"] == [
        (0, "attempt 1"), (1, "attempt 2"), (2, "attempt 3")]
    assert elapsed == pytest.approx(1 + 2)  # back-off: min_timeout, then doubled
    assert transitions[handle.id] == [(Q, X), (X, Q), (Q, X), (X, Q), (Q, X), (X, DONE)]


async def test_retries_run_out_and_the_run_fails(transport, autojump_clock):
    async with serve([flaky], transport):
        handle = await flaky.trigger({"succeed_on": 99})
        run = await final(handle.id)
        chunks = await (await out.read(handle.id)).collect()
    assert run.status is FAILED and run.attempt == 3
    assert run.error.type == "RuntimeError" and run.error.message == "attempt 3 failed"
    assert chunks == ["attempt 1", "attempt 2", "attempt 3"]


# --- max_duration --------------------------------------------------------------------------------


async def endless(period: float = 1.0):
    i = 0
    while True:
        yield i
        i += 1
        await trio.sleep(period)


@task(id="too-slow", max_duration=5)
async def too_slow(payload):
    out.pipe(endless())
    await trio.sleep_forever()


async def test_max_duration_times_the_run_out(transport, autojump_clock, transitions):
    async with serve([too_slow], transport):
        handle = await too_slow.trigger()
        chunks = await (await out.read(handle.id)).collect()  # ends: the stream ends
        run = await runs.retrieve(handle.id)
    assert run.status is TIMED_OUT
    assert run.error.type == "MaxDurationExceededError"
    assert run.finished_at - run.started_at == pytest.approx(5)
    assert chunks == [0, 1, 2, 3, 4] or chunks == [0, 1, 2, 3, 4, 5]
    assert transitions[handle.id] == [(Q, X), (X, TIMED_OUT)]


# --- cancel --------------------------------------------------------------------------------------


cancel_log: list = []


@task(id="cancellable")
async def cancellable(payload):
    async def background():
        try:
            await trio.sleep_forever()
        finally:
            cancel_log.append(("background cancelled", trio.current_time()))

    out.pipe(endless())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(background)
        try:
            await trio.sleep_forever()
        finally:
            cancel_log.append(("task cancelled", trio.current_time()))


async def test_cancel_stops_the_task_its_nursery_and_its_streams(transport, autojump_clock,
                                                                 transitions):
    cancel_log.clear()
    async with serve([cancellable], transport):
        handle = await cancellable.trigger()
        chunks = []
        ended = trio.Event()

        async def reader():
            chunks.extend(await (await out.read(handle.id)).collect())
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(9.5)
            cancelled_at = trio.current_time()
            await runs.cancel(handle.id)
            with trio.fail_after(1):
                await ended.wait()
            assert trio.current_time() == pytest.approx(cancelled_at)  # no drain
        run = await runs.retrieve(handle.id)
        with pytest.raises(RunFinishedError):
            await runs.cancel(handle.id)
        with pytest.raises(NotFoundError):
            await runs.cancel("run_doesnotexist")
    assert run.status is CANCELED and run.finished_at is not None
    assert chunks == list(range(10))
    assert sorted(name for name, _ in cancel_log) == ["background cancelled", "task cancelled"]
    assert all(when == pytest.approx(cancelled_at) for _, when in cancel_log)
    assert transitions[handle.id] == [(Q, X), (X, CANCELED)]


@task(id="queued-one", queue=Queue("cancel-q", concurrency_limit=1))
async def queued_one(payload):
    if payload == "wait":
        (await approval.wait()).unwrap()
    else:
        await until_go()
    return payload


async def test_cancel_a_queued_and_a_waiting_run(transport, autojump_clock, transitions):
    async with serve([queued_one], transport):
        waiting = (await queued_one.trigger("wait")).id
        busy = (await queued_one.trigger("hold")).id
        queued = (await queued_one.trigger("hold")).id
        await trio.sleep(10)
        assert await statuses([waiting, busy, queued]) == [W, X, Q]
        await runs.cancel(queued)
        await runs.cancel(waiting)
        assert await statuses([waiting, busy, queued]) == [CANCELED, X, CANCELED]
        assert (await runs.retrieve(queued)).started_at is None
        # the waiting run did not take the slot on its way out
        await finish(busy)
        assert (await final(busy)).status is DONE
    assert transitions[queued] == [(Q, CANCELED)]
    assert transitions[waiting] == [(Q, X), (X, W), (W, CANCELED)]


# --- the end of a run: order and drain ---------------------------------------------------------


order_log: list = []


@task(id="ordered")
async def ordered(payload):
    async def handler(record):
        try:
            await trio.sleep_forever()
        finally:
            order_log.append(("handler cancelled", trio.current_time()))

    async def finite():
        for i in range(3):
            await trio.sleep(10)
            yield i
        order_log.append(("producer done", trio.current_time()))

    go.on(handler)
    out.pipe(finite())
    await trio.sleep(1)
    order_log.append(("task returned", trio.current_time()))
    return "returned"


async def test_run_end_order_task_handlers_drain_streams_status(transport, autojump_clock):
    order_log.clear()
    async with serve([ordered], transport):
        handle = await ordered.trigger()
        await go.send(handle.id, "start the handler")

        async def reader():
            await (await out.read(handle.id)).collect()
            order_log.append(("stream ended", trio.current_time()))

        async def watcher():
            await final(handle.id)
            order_log.append(("final status", trio.current_time()))
            with trio.fail_after(0.001):  # once the status is final, every stream has ended
                assert await (await out.read(handle.id)).collect() == [0, 1, 2]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(watcher)
            await trio.sleep(15)  # the task has returned; its producer is draining
            during = await runs.retrieve(handle.id)
        chunks = await (await out.read(handle.id)).collect()
    assert during.status is X and during.finished_at is None
    names = [name for name, _ in order_log]
    assert names[:3] == ["task returned", "handler cancelled", "producer done"]
    # the end markers and the final status are stored in one batch: two independent
    # observers may see them in either order, but at the same instant
    assert sorted(names[3:]) == ["final status", "stream ended"]
    times = dict(order_log)
    assert times["handler cancelled"] == times["task returned"] == pytest.approx(1)
    assert times["producer done"] == times["stream ended"] == pytest.approx(30)
    assert times["final status"] == pytest.approx(30)
    assert chunks == [0, 1, 2]


returned_at: list = []


@task(id="endless-pipe")
async def endless_pipe(payload):
    out.pipe(endless(0.7))  # nobody consumes it, nobody reads it
    returned_at.append(trio.current_time())
    return "finished early"


@pytest.mark.parametrize("drain_timeout", [None, 5.0, 0.0])
async def test_an_endless_stream_ends_at_exactly_the_drain_timeout(
        transport, autojump_clock, drain_timeout):
    returned_at.clear()
    options = {} if drain_timeout is None else {"drain_timeout": drain_timeout}
    expected = 60.0 if drain_timeout is None else drain_timeout
    async with serve([endless_pipe], transport, **options):
        handle = await endless_pipe.trigger()
        run = await final(handle.id)
        ended = trio.current_time()
        chunks = await (await out.read(handle.id)).collect()
    assert run.status is DONE and run.output == "finished early"
    assert ended - returned_at[0] == pytest.approx(expected, abs=1e-9)
    assert run.finished_at - run.started_at == pytest.approx(expected, abs=1e-6)
    # a chunk every 0.7 s from 0: everything produced before the deadline is kept
    assert chunks == list(range(int(expected / 0.7) + 1))


# --- metadata ------------------------------------------------------------------------------------


@task(id="meta")
async def meta(payload):
    seen = [metadata.get("progress"), metadata.get("missing", "fallback"),
            metadata.get("from_trigger")]
    for step in range(4):
        metadata.set("progress", step / 4)
        seen.append(metadata.get("progress"))
        await trio.sleep(1)
    try:
        metadata.set("bad", object())
    except TypeError:
        seen.append("refused non-JSON")
    return {"seen": seen, "current": metadata.current()}


async def test_metadata_set_get_and_subscribers_see_every_change(transport, autojump_clock):
    with pytest.raises(OutsideRunError):
        metadata.set("x", 1)
    async with serve([meta], transport):
        handle = await meta.trigger(None, metadata={"from_trigger": "yes"})
        progress = []
        async for run in runs.subscribe_to_run(handle.id):
            value = run.metadata.get("progress")
            if not progress or progress[-1] != value:
                progress.append(value)
        run = await runs.retrieve(handle.id)
    assert run.output["seen"] == [None, "fallback", "yes", 0.0, 0.25, 0.5, 0.75,
                                  "refused non-JSON"]
    assert run.output["current"] == {"from_trigger": "yes", "progress": 0.75}
    assert run.metadata == {"from_trigger": "yes", "progress": 0.75}
    assert [p for p in progress if p is not None] == [0.0, 0.25, 0.5, 0.75]


legacy_log: list = []


@task(id="legacy")
async def legacy(payload):
    async def source():
        for i in range(payload["n"]):
            await trio.sleep(2)
            yield f"v1-{i}"

    iterator = await metadata.stream("legacy", source())
    if payload["consume"]:
        return [chunk async for chunk in iterator]
    legacy_log.append(trio.current_time())
    return "left it unconsumed"


async def test_legacy_metadata_stream_drains_before_the_run_finishes(
        transport, autojump_clock):
    legacy_log.clear()
    async with serve([legacy], transport):
        handle = await legacy.trigger({"n": 5, "consume": False})
        run = await final(handle.id)
        finished = trio.current_time()
        chunks = await (await streams.read(handle.id, "legacy")).collect()
        consumed = await final((await legacy.trigger({"n": 3, "consume": True})).id)
    assert run.output == "left it unconsumed"
    assert finished - legacy_log[0] == pytest.approx(10)  # not before the source is done
    assert chunks == [f"v1-{i}" for i in range(5)]
    assert consumed.output == ["v1-0", "v1-1", "v1-2"]


@task(id="legacy-endless")
async def legacy_endless(payload):
    await metadata.stream("legacy", endless())
    returned_at.append(trio.current_time())
    return "ok"


async def test_legacy_metadata_stream_is_bounded_by_the_drain(transport, autojump_clock):
    returned_at.clear()
    async with serve([legacy_endless], transport):
        handle = await legacy_endless.trigger()
        run = await final(handle.id)
        assert trio.current_time() - returned_at[0] == pytest.approx(60)
    assert run.status is DONE


# --- run subscriptions with streams -------------------------------------------------------------


@task(id="story")
async def story(payload):
    metadata.set("phase", "start")
    for i in range(3):
        await streams.append("a", f"a{i}")
    await trio.sleep(5)
    await streams.append("late", "l0")  # a stream that appears later
    await streams.append("late", "l1")
    metadata.set("phase", "end")

    async def slow():
        for i in range(3):
            await trio.sleep(10)
            yield i

    streams.pipe("drain", slow())  # still producing after the task returns
    returned_at.append(trio.current_time())
    return "told"


async def test_subscribe_with_streams_sees_everything_and_ends_last(transport, autojump_clock):
    returned_at.clear()
    async with serve([story], transport):
        handle = await story.trigger()
        parts = []
        async for part in runs.subscribe_to_run(handle.id).with_streams():
            parts.append((part, trio.current_time()))
        ended = trio.current_time()
        # a finished run: the final snapshot and every chunk, then the end
        again = [part async for part in runs.subscribe_to_run(handle.id).with_streams()]
    run_parts = [p.run for p, _ in parts if p.type == "run"]
    assert run_parts[-1].status is DONE and run_parts[-1].output == "told"
    assert all(not r.is_finished for r in run_parts[:-1])
    phases = [r.metadata.get("phase") for r in run_parts]
    assert "start" in phases and phases[-1] == "end"
    assert phases.index("start") < phases.index("end")
    by_key = {}
    for part, _ in parts:
        if part.type != "run":
            by_key.setdefault(part.type, []).append((part.index, part.chunk))
    assert by_key == {"a": [(0, "a0"), (1, "a1"), (2, "a2")], "late": [(0, "l0"), (1, "l1")],
                      "drain": [(0, 0), (1, 1), (2, 2)]}
    assert ended - returned_at[0] == pytest.approx(30)  # not before the drain stream ended
    assert [p.type for p in again if p.type == "run"] == ["run"]
    assert again[[p.type for p in again].index("run")].run.status is DONE
    assert sorted((p.type, p.index) for p in again if p.type != "run") == sorted(
        (key, index) for key, items in by_key.items() for index, _ in items)


# --- the status table ----------------------------------------------------------------------------


def test_the_status_table_only_leaves_final_states_for_nothing():
    finals = {DONE, FAILED, CANCELED, RunStatus.CRASHED, TIMED_OUT}
    assert set(TRANSITIONS) == set(RunStatus)
    for status in finals:
        assert TRANSITIONS[status] == frozenset() and status.is_final
    for status in (Q, X, W):
        assert not status.is_final and TRANSITIONS[status] & finals
    from runwire.engine.run import InvalidTransition, check_transition

    for old, new in [(DONE, X), (CANCELED, Q), (Q, W), (Q, DONE), (TIMED_OUT, FAILED)]:
        with pytest.raises(InvalidTransition):
            check_transition(old, new)
    record = RunRecord(id="run_x", task_id="t")
    record.set_status(X, 1.0)
    record.set_status(DONE, 2.0)
    assert (record.started_at, record.finished_at) == (1.0, 2.0)
    with pytest.raises(InvalidTransition):
        record.set_status(X, 3.0)


# --- suspension: wait.*, and a parent waiting on its children ------------------------------------


@task(id="sleeper", queue=Queue("naps", concurrency_limit=1))
async def sleeper(payload):
    from runwire import wait

    started = trio.current_time()
    if payload == "for":
        await wait.for_(hours=2)
    else:
        await wait.duration("2h")
    return trio.current_time() - started


@task(id="napper-worker", queue=Queue("naps", concurrency_limit=1))
async def napper_worker(payload):
    await trio.sleep(60)
    return "worked while the sleepers slept"


async def test_wait_for_suspends_the_run_and_frees_its_slot(transport, autojump_clock,
                                                            transitions):
    async with serve([sleeper, napper_worker], transport):
        sleepers = [(await sleeper.trigger(kind)).id for kind in ("for", "duration")]
        await trio.sleep(10)
        assert await statuses(sleepers) == [W, W]
        work = await napper_worker.trigger()
        assert (await final(work.id)).status is DONE  # ran while both held no slot
        assert trio.current_time() < 3600
        assert [(await final(run_id)).output for run_id in sleepers] == [7200, 7200]
    # both wake at 2 h; one takes the slot, the other queues for it an instant
    assert sorted(transitions[run_id] for run_id in sleepers) == sorted([
        [(Q, X), (X, W), (W, Q), (Q, X), (X, DONE)], [(Q, X), (X, W), (W, X), (X, DONE)]])


@task(id="kid", queue=Queue("family", concurrency_limit=1))
async def kid(payload):
    await trio.sleep(1)
    return payload * 10


@task(id="parent", queue=Queue("family", concurrency_limit=1))
async def parent(payload, ctx):
    one = await kid.trigger_and_wait(1)
    many = await kid.batch_trigger_and_wait([2, 3, 4])
    return [one.unwrap()] + [r.unwrap() for r in many]


async def test_a_parent_waiting_on_children_gives_its_slot_to_them(transport, autojump_clock,
                                                                   transitions):
    # parent and children share a queue of one: if the parent kept its slot, this deadlocks
    async with serve([parent, kid], transport, time_limit=3600):
        handle = await parent.trigger()
        await trio.sleep(0.5)
        assert (await runs.retrieve(handle.id)).status is W
        run = await final(handle.id)
    assert run.status is DONE and run.output == [10, 20, 30, 40]
    assert transitions[handle.id][:3] == [(Q, X), (X, W), (W, X)]


# --- engine options and limits (SPEC §4) --------------------------------------------------------


async def test_engine_without_key_or_port_makes_a_key_and_serves_no_socket(
        autojump_clock, caplog):
    caplog.set_level("WARNING", logger="runwire")
    async with open_engine([flaky]) as eng:
        assert eng.url is None and eng.port is None
        assert eng.api_key and eng.api_key in caplog.text  # logged once, for the operator
        async with eng.connect():
            handle = await flaky.trigger({"succeed_on": 1})
            assert (await final(handle.id)).status is DONE


def test_default_limits_are_the_spec_ones():
    from runwire.engine import Limits

    limits = Limits()
    assert limits.max_stream_bytes == 300 * 1024 * 1024
    assert limits.max_record_bytes == 1024 * 1024
    assert limits.retention == 28 * 86400


async def test_open_engine_refuses_bad_options(autojump_clock):
    with pytest.raises(ValueError, match="drain_timeout"):
        async with open_engine([], api_key=API_KEY, drain_timeout=-1):
            pass
    with pytest.raises(TypeError, match="Task"):
        async with open_engine([flaky.fn], api_key=API_KEY):
            pass
    with pytest.raises(ValueError, match="store"):
        async with open_engine([], api_key=API_KEY, store="postgres://nope"):
            pass


async def test_finished_runs_are_deleted_after_the_retention(transport, autojump_clock):
    async with serve([flaky], transport, time_limit=40 * 86400):
        handle = await flaky.trigger({"succeed_on": 1})
        await final(handle.id)
        await trio.sleep(27 * 86400)
        assert (await runs.retrieve(handle.id)).status is DONE
        assert await (await out.read(handle.id)).collect() == ["attempt 1"]
        await trio.sleep(2 * 86400)  # past 28 days, and past the hourly sweep
        with pytest.raises(NotFoundError):
            await runs.retrieve(handle.id)
        with pytest.raises(NotFoundError):
            await (await out.read(handle.id)).collect()


# --- a suspended run that must queue for its slot again can still end ---------------------------


@task(id="hog", queue=Queue("contended", concurrency_limit=1))
async def hog(payload):
    await trio.sleep(3600)
    return "hogged"


@task(id="deadline-waiter", queue=Queue("contended", concurrency_limit=1), max_duration=10)
async def deadline_waiter(payload):
    await approval.wait(timeout="7d")
    return "approved"


@task(id="patient", queue=Queue("contended", concurrency_limit=1))
async def patient(payload):
    with trio.move_on_after(5):
        await approval.wait(timeout="7d")
    return "gave up waiting"


async def test_max_duration_ends_a_waiting_run_even_when_its_queue_is_busy(
        transport, autojump_clock):
    async with serve([hog, deadline_waiter], transport):
        handle = await deadline_waiter.trigger()
        await trio.sleep(1)
        await hog.trigger()  # takes the slot the waiting run gave back
        run = await final(handle.id)
    assert run.status is TIMED_OUT
    assert run.finished_at - run.started_at == pytest.approx(10)


async def test_cancel_reaches_a_run_queued_for_its_slot_after_a_wait(
        transport, autojump_clock, transitions):
    async with serve([hog, patient], transport):
        handle = await patient.trigger()
        await trio.sleep(1)
        hogging = await hog.trigger()
        await trio.sleep(10)  # the wait gave up at 5 s; the run queues for its slot
        assert (await runs.retrieve(handle.id)).status is Q
        before = trio.current_time()
        await runs.cancel(handle.id)
        assert trio.current_time() == pytest.approx(before)
        assert (await runs.retrieve(handle.id)).status is CANCELED
        assert (await runs.retrieve(hogging.id)).status is X
        await runs.cancel(hogging.id)
    assert transitions[handle.id] == [(Q, X), (X, W), (W, Q), (Q, CANCELED)]
