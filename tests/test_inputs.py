"""Input streams, SPEC §2: ``streams.input``, ``send``, ``on``/``off``, ``once``, ``wait``,
``peek``; the delivery rules; and what a bad ``send`` does (nothing, to the run)."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio

from runwire import (
    InputResult,
    InputStreamDef,
    InputStreamTimeoutError,
    InvalidPayloadError,
    NotFoundError,
    OutsideRunError,
    PayloadTooLargeError,
    RetryPolicy,
    RunFinishedError,
    RunStatus,
    Subscription,
    metadata,
    runs,
    streams,
    task,
)

from .helpers import final, finish, serve, until_go


@attrs.frozen
class CancelSignal:
    reason: str


@attrs.frozen
class Approval:
    approved: bool
    by: str


cancel = streams.input(id="cancel", type=CancelSignal)
approval = streams.input(id="approval", type=Approval)
data = streams.input(id="data")


def test_input_definitions():
    assert isinstance(cancel, InputStreamDef)
    assert cancel.id == "cancel" and cancel.type is CancelSignal
    with pytest.raises(ValueError, match="stream key"):
        streams.input(id="")
    with pytest.raises(ValueError, match="stream key"):
        streams.input(id=7)


# --- send, once --------------------------------------------------------------------------------


@task(id="await-cancel")
async def await_cancel(payload):
    result = await cancel.once()
    assert isinstance(result, InputResult) and isinstance(result.output, CancelSignal)
    return {"ok": result.ok, "reason": result.unwrap().reason}


@task(id="sender")
async def sender(payload):
    await cancel.send(payload["target"], CancelSignal("from a task"))
    return "sent"


async def test_send_from_a_backend_and_from_another_task(transport, autojump_clock):
    async with serve([await_cancel, sender], transport):
        handle = await await_cancel.trigger()
        await cancel.send(handle.id, CancelSignal("from the backend"))
        assert (await final(handle.id)).output == {"ok": True, "reason": "from the backend"}
        handle = await await_cancel.trigger()
        other = await sender.trigger({"target": handle.id})
        assert (await final(other.id)).output == "sent"
        assert (await final(handle.id)).output == {"ok": True, "reason": "from a task"}
        # plain JSON is structured into the input type too
        handle = await await_cancel.trigger()
        await streams.input(id="cancel").send(handle.id, {"reason": "as a dict"})
        assert (await final(handle.id)).output == {"ok": True, "reason": "as a dict"}


@task(id="once-typed")
async def once_typed(payload):
    result = await cancel.once()
    return {"ok": result.ok, "error": type(result.error).__name__,
            "message": str(result.error)}


async def test_a_record_that_does_not_fit_a_declared_type_is_refused_at_the_sender(
        transport, autojump_clock):
    async with serve([once_typed], transport):
        handle = await once_typed.trigger()
        await trio.sleep(1)  # the run is in cancel.once(): the type is declared
        await data.send(handle.id, None)  # another stream: not delivered to cancel
        with pytest.raises(InvalidPayloadError, match="reason"):  # an untyped sender
            await streams.input(id="cancel").send(handle.id, {"why": "wrong field"})
        with pytest.raises(InvalidPayloadError, match="reason"):  # a typed one: in the SDK
            await cancel.send(handle.id, {"why": "wrong field"})
        await cancel.send(handle.id, CancelSignal("late but right"))
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output["ok"] is True  # the waiter got the right record, not the wrong ones
    assert run.output["error"] == "NoneType"


@task(id="once-typed-late")
async def once_typed_late(payload):
    await trio.sleep(5)  # the record arrives before the run declared its type
    result = await cancel.once()
    return {"ok": result.ok, "error": type(result.error).__name__,
            "message": str(result.error)}


async def test_a_record_stored_before_the_type_was_declared_gives_ok_false(
        transport, autojump_clock):
    async with serve([once_typed_late], transport):
        handle = await once_typed_late.trigger()
        await streams.input(id="cancel").send(handle.id, {"why": "wrong field"})
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output["ok"] is False
    assert run.output["error"] == InvalidPayloadError.__name__
    assert "reason" in run.output["message"]


@task(id="once-timeout")
async def once_timeout(payload):
    start = trio.current_time()
    result = await data.once(timeout_ms=1500)
    elapsed = trio.current_time() - start
    try:
        result.unwrap()
    except InputStreamTimeoutError as exc:
        unwrapped = type(exc).__name__
    else:
        unwrapped = "no error"
    got = await data.once(timeout_ms=10_000)
    return {"ok": result.ok, "output": result.output, "timeout": isinstance(
        result.error, InputStreamTimeoutError) and isinstance(result.error, TimeoutError),
        "elapsed": elapsed, "unwrapped": unwrapped, "second": got.unwrap()}


async def test_once_timeout_gives_ok_false_with_input_stream_timeout_error(
        transport, autojump_clock):
    async with serve([once_timeout], transport):
        handle = await once_timeout.trigger()
        await trio.sleep(5)
        await data.send(handle.id, "late but in time for the second once")
        run = await final(handle.id)
    assert run.output == {"ok": False, "output": None, "timeout": True,
                          "elapsed": pytest.approx(1.5), "unwrapped": "InputStreamTimeoutError",
                          "second": "late but in time for the second once"}


@task(id="once-bad-timeout")
async def once_bad_timeout(payload):
    errors = []
    for bad in (-1, "1s", True):
        try:
            await data.once(timeout_ms=bad)
        except ValueError:
            errors.append(repr(bad))
    for bad in ("7x", -5, "soon"):
        try:
            await data.wait(timeout=bad)
        except ValueError:
            errors.append(repr(bad))
    return errors


async def test_bad_timeouts_are_refused(transport, autojump_clock):
    async with serve([once_bad_timeout], transport):
        run = await final((await once_bad_timeout.trigger()).id)
    assert run.output == ["-1", "'1s'", "True", "'7x'", "-5", "'soon'"]


# --- on / off ----------------------------------------------------------------------------------


@task(id="listener")
async def listener(payload):
    sync_seen, async_seen = [], []

    async def async_handler(record):
        await trio.sleep(0.1)
        async_seen.append(record)

    sub = data.on(sync_seen.append)
    assert isinstance(sub, Subscription)
    data.on(async_handler)
    await until_go()  # the test sent 3 records, then go
    sub.off()
    sub.off()  # twice is fine
    metadata.set("off", True)
    await until_go()  # the test sent 2 more records, then go
    await trio.sleep(1)
    return {"sync": sync_seen, "async": async_seen}


async def test_on_handler_sees_every_record_until_off(transport, autojump_clock):
    async with serve([listener], transport):
        handle = await listener.trigger()
        await trio.sleep(1)
        for i in range(3):
            await data.send(handle.id, i)
        await trio.sleep(1)
        await finish(handle.id)  # the first go: the run turns its sync handler off
        async for run in runs.subscribe_to_run(handle.id):
            if run.metadata.get("off"):
                break
        for i in range(3, 5):
            await data.send(handle.id, i)
        await finish(handle.id)
        run = await final(handle.id)
    assert run.output == {"sync": [0, 1, 2], "async": [0, 1, 2, 3, 4]}


@task(id="fan-in")
async def fan_in(payload):
    h1, h2, waiters = [], [], {}
    data.on(h1.append)
    data.on(h2.append)

    async def waiter(name):
        waiters[name] = (await data.once()).unwrap()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "oldest")
        await trio.sleep(1)
        nursery.start_soon(waiter, "younger")
        await trio.sleep(1)
        await trio.sleep(20)  # the test sends one record at 10 s, another at 15 s
    return {"h1": h1, "h2": h2, "waiters": waiters}


async def test_every_record_reaches_every_handler_and_only_the_oldest_waiter(
        transport, autojump_clock):
    async with serve([fan_in], transport):
        handle = await fan_in.trigger()
        await trio.sleep(10)
        await data.send(handle.id, "first")
        await trio.sleep(5)
        await data.send(handle.id, "second")
        run = await final(handle.id)
    assert run.output == {"h1": ["first", "second"], "h2": ["first", "second"],
                          "waiters": {"oldest": "first", "younger": "second"}}


@task(id="late-listener")
async def late_listener(payload):
    await until_go()
    first = (await data.once()).unwrap()
    second = (await data.once(timeout_ms=0)).unwrap()
    seen = []
    data.on(seen.append)  # the first handler gets what is still kept
    await trio.sleep(1)
    return {"once": [first, second], "on": seen}


async def test_records_sent_before_any_listener_are_kept(transport, autojump_clock):
    async with serve([late_listener], transport):
        handle = await late_listener.trigger()
        for i in range(4):
            await data.send(handle.id, i)
        await finish(handle.id)
        run = await final(handle.id)
    assert run.output == {"once": [0, 1], "on": [2, 3]}


# --- peek --------------------------------------------------------------------------------------


@task(id="peeker")
async def peeker(payload):
    before = data.peek()
    await until_go()
    latest = data.peek()
    oldest = (await data.once()).unwrap()  # peek does not consume
    return {"before": before, "latest": latest, "once": oldest, "after": data.peek()}


async def test_peek_is_the_latest_record_and_never_waits(transport, autojump_clock):
    async with serve([peeker], transport):
        handle = await peeker.trigger()
        await data.send(handle.id, "a")
        await data.send(handle.id, "b")
        await finish(handle.id)
        run = await final(handle.id)
    assert run.output == {"before": None, "latest": "b", "once": "a", "after": "b"}


# --- wait --------------------------------------------------------------------------------------


@task(id="approve")
async def approve(payload):
    draft = "draft"
    result = await approval.wait(timeout="7d")
    answer = result.unwrap()
    return {"draft": draft, "approved": answer.approved, "by": answer.by}


async def test_wait_shows_waiting_until_the_record_arrives(transport, autojump_clock):
    async with serve([approve], transport, time_limit=8 * 86400):
        handle = await approve.trigger()
        await trio.sleep(6 * 86400)  # six days: still inside the 7 d timeout
        assert (await runs.retrieve(handle.id)).status is RunStatus.WAITING
        await approval.send(handle.id, Approval(approved=True, by="ops"))
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"draft": "draft", "approved": True, "by": "ops"}


@task(id="wait-timeout")
async def wait_timeout(payload):
    start = trio.current_time()
    result = await approval.wait(timeout=payload["timeout"])
    metadata.set("waited", trio.current_time() - start)
    metadata.set("timed_out", isinstance(result.error, InputStreamTimeoutError))
    await until_go()
    return result.ok


async def test_wait_times_out_after_hours_on_the_mock_clock(transport, autojump_clock):
    async with serve([wait_timeout], transport):
        handle = await wait_timeout.trigger({"timeout": "3h"})
        await trio.sleep(2 * 3600)
        assert (await runs.retrieve(handle.id)).status is RunStatus.WAITING
        await trio.sleep(3600 + 1)
        run = await runs.retrieve(handle.id)
        assert run.status is RunStatus.EXECUTING  # back from the wait, in until_go()
        assert run.metadata == {"waited": pytest.approx(3 * 3600), "timed_out": True}
        await finish(handle.id)
        assert (await final(handle.id)).output is False


@task(id="wait-twice", retry=RetryPolicy(max_attempts=2, min_timeout=1))
async def wait_twice(payload, ctx):
    start = trio.current_time()
    result = await approval.wait(idempotency_key="approve-1", idempotency_key_ttl="1h")
    if ctx.attempt == 1:
        raise RuntimeError("crash after the approval")
    return {"attempt": ctx.attempt, "by": result.unwrap().by,
            "waited": trio.current_time() - start}


async def test_wait_with_an_idempotency_key_returns_the_same_record_on_retry(
        transport, autojump_clock):
    async with serve([wait_twice], transport):
        handle = await wait_twice.trigger()
        await trio.sleep(10)
        await approval.send(handle.id, Approval(True, "alice"))
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"attempt": 2, "by": "alice", "waited": 0}


# --- send errors ---------------------------------------------------------------------------------


@task(id="collector")
async def collector(payload):
    await until_go()
    return {"first": (await data.once(timeout_ms=0)).output, "peek": data.peek()}


async def test_send_to_a_finished_run_is_refused_and_changes_nothing(
        transport, autojump_clock):
    async with serve([collector], transport):
        handle = await collector.trigger()
        await finish(handle.id)
        before = await final(handle.id)
        with pytest.raises(RunFinishedError) as info:
            await data.send(handle.id, "late")
        assert info.value.code == "run_finished"
        assert await runs.retrieve(handle.id) == before


async def test_send_to_an_unknown_run_is_not_found(transport, autojump_clock):
    async with serve([collector], transport):
        with pytest.raises(NotFoundError):
            await data.send("run_doesnotexist", "x")
        with pytest.raises(TypeError):
            await data.send(None, "x")


async def test_a_record_over_1_mib_is_refused_and_the_run_is_untouched(
        transport, autojump_clock):
    async with serve([collector], transport):
        handle = await collector.trigger()
        before = await runs.retrieve(handle.id)
        with pytest.raises(PayloadTooLargeError):
            await data.send(handle.id, "x" * (1024 * 1024))
        assert await runs.retrieve(handle.id) == before
        await data.send(handle.id, "small")  # a record that fits still gets through
        await finish(handle.id)
        run = await final(handle.id)
    assert run.output == {"first": "small", "peek": "small"}


async def test_send_with_an_idempotency_key_is_delivered_once(transport, autojump_clock):
    async with serve([collector], transport):
        handle = await collector.trigger()
        await data.send(handle.id, "once", idempotency_key="k1")
        await data.send(handle.id, "once", idempotency_key="k1")
        await data.send(handle.id, "twice", idempotency_key="k2")
        await finish(handle.id)
        run = await final(handle.id)
    assert run.output == {"first": "once", "peek": "twice"}


# --- handlers and the end of the run -----------------------------------------------------------


#: What ``slow_handler`` and its handler did, and when: (event, record, time).
slow_handler_log: list = []


@task(id="slow-handler")
async def slow_handler(payload):
    async def handler(record):
        metadata.set("handling", record)
        try:
            await trio.sleep_forever()
        finally:
            slow_handler_log.append(("cancelled", record, trio.current_time()))

    data.on(handler)
    await until_go()
    slow_handler_log.append(("returned", None, trio.current_time()))
    return "done"


async def test_on_handlers_are_cancelled_when_the_run_ends(transport, autojump_clock):
    slow_handler_log.clear()
    async with serve([slow_handler], transport):
        handle = await slow_handler.trigger()
        await data.send(handle.id, "r1")
        await trio.sleep(100)
        await finish(handle.id)
        run = await final(handle.id)
        ended = trio.current_time()
    assert run.status is RunStatus.COMPLETED
    assert [entry[:2] for entry in slow_handler_log] == [("returned", None), ("cancelled", "r1")]
    # no drain for handlers: cancelled at once, the run ends at the same instant
    assert slow_handler_log[1][2] == slow_handler_log[0][2] == pytest.approx(ended)


@task(id="raising-handler")
async def raising_handler(payload):
    seen = []

    def handler(record):
        if record == "bad":
            raise ValueError("handler broke")
        seen.append(record)

    data.on(handler, fail_run=payload["fail_run"])
    await until_go()
    return seen


async def test_a_raising_handler_is_logged_and_the_run_goes_on(
        transport, autojump_clock, caplog):
    caplog.set_level(logging.ERROR, logger="runwire")
    async with serve([raising_handler], transport):
        handle = await raising_handler.trigger({"fail_run": False})
        for record in ("a", "bad", "b"):
            await data.send(handle.id, record)
        await trio.sleep(1)
        await finish(handle.id)
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == ["a", "b"]
    assert any("handler" in r.getMessage() and r.exc_info and "handler broke" in str(
        r.exc_info[1]) for r in caplog.records)


async def test_a_raising_handler_with_fail_run_fails_the_run(transport, autojump_clock):
    async with serve([raising_handler], transport):
        handle = await raising_handler.trigger({"fail_run": True})
        await data.send(handle.id, "a")
        await data.send(handle.id, "bad")
        run = await final(handle.id)
    assert run.status is RunStatus.FAILED
    assert run.error.type == "ValueError" and run.error.message == "handler broke"


# --- cancellation is trio's --------------------------------------------------------------------


@task(id="give-up")
async def give_up(payload):
    with trio.move_on_after(5):
        await approval.wait(timeout="7d")
    metadata.set("gave_up_at", trio.current_time())
    with trio.move_on_after(5):
        await data.once()
    await until_go()
    # records sent after the waiters gave up were kept for the next listener
    return {"approval": (await approval.once(timeout_ms=0)).output,
            "data": (await data.once(timeout_ms=0)).output}


async def test_a_wait_in_a_cancel_scope_gives_up_cleanly(transport, autojump_clock):
    async with serve([give_up], transport):
        handle = await give_up.trigger()
        await trio.sleep(3)
        assert (await runs.retrieve(handle.id)).status is RunStatus.WAITING
        await trio.sleep(4)
        assert (await runs.retrieve(handle.id)).status is RunStatus.EXECUTING
        await trio.sleep(10)
        await approval.send(handle.id, Approval(True, "late"))
        await data.send(handle.id, "late data")
        await finish(handle.id)
        run = await final(handle.id)
    assert run.output == {"approval": {"approved": True, "by": "late"}, "data": "late data"}


retry_log: list = []


@task(id="retry-listener", retry=RetryPolicy(max_attempts=2, min_timeout=1))
async def retry_listener(payload, ctx):
    attempt = ctx.attempt
    data.on(lambda record: retry_log.append((attempt, record)))
    if attempt == 1:
        await trio.sleep(1)
        raise RuntimeError("the first attempt fails after registering its handler")
    await until_go()
    return "ok"


async def test_a_failed_attempts_handlers_do_not_fire_in_the_retry(transport, autojump_clock):
    retry_log.clear()
    async with serve([retry_listener], transport):
        handle = await retry_listener.trigger()
        await trio.sleep(10)  # attempt 2 is listening
        await data.send(handle.id, "x")
        await trio.sleep(1)
        await finish(handle.id)
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 2
    assert retry_log == [(2, "x")]


@task(id="wait-ttl", retry=RetryPolicy(max_attempts=2, min_timeout=10))
async def wait_ttl(payload, ctx):
    result = await approval.wait(idempotency_key="approve-1", idempotency_key_ttl="5s")
    if ctx.attempt == 1:
        raise RuntimeError("crash after the approval")
    return {"attempt": ctx.attempt, "by": result.unwrap().by}


async def test_an_expired_wait_idempotency_key_waits_again(transport, autojump_clock):
    async with serve([wait_ttl], transport):
        handle = await wait_ttl.trigger()
        await trio.sleep(1)
        await approval.send(handle.id, Approval(True, "alice"))
        await trio.sleep(20)  # attempt 2 started after the 5 s ttl: it waits for a new record
        assert (await runs.retrieve(handle.id)).status is RunStatus.WAITING
        await approval.send(handle.id, Approval(True, "bob"))
        run = await final(handle.id)
    assert run.output == {"attempt": 2, "by": "bob"}


async def test_listening_is_only_for_inside_a_run(transport, autojump_clock):
    async with serve([collector], transport):
        with pytest.raises(OutsideRunError):
            await data.once()
        with pytest.raises(OutsideRunError):
            await data.wait()
        with pytest.raises(OutsideRunError):
            data.on(print)
        with pytest.raises(OutsideRunError):
            data.peek()
    with pytest.raises(OutsideRunError):  # and sending needs a client
        await data.send("run_x", 1)
