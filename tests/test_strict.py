"""Issue 20 parts 1, 2 and 5: strict types at every writer, batches with failed children and
``{payload, options}`` items, the pipe's tee, un-awaited appends, ``wait().unwrap()``,
``logger.log``."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest
import trio

from runwire import (
    InputResult, InvalidPayloadError, RunStatus, TaskRunError, TaskRunResult, TeeOverflowError,
    logger, schema_task, streams, task, tasks,
)
from runwire._convert import from_json, to_json
from runwire._streams import TEE_BUFFER

from .helpers import final, finish, serve, until_go


@attrs.define
class Model:
    model: str
    n: int = 0
    ratio: float = 0.0
    flag: bool = False


@schema_task(id="strict-schema", schema=Model)
async def strict_schema(payload: Model) -> dict[str, Any]:
    return attrs.asdict(payload)


@pytest.mark.parametrize("bad, field", [
    ({"model": 42}, "payload.model"), ({"model": None}, "payload.model"),
    ({"model": {"a": 1}}, "payload.model"), ({"model": "m", "n": 1.9}, "payload.n"),
    ({"model": "m", "n": True}, "payload.n"), ({"model": "m", "n": "1"}, "payload.n"),
    ({"model": "m", "ratio": True}, "payload.ratio"), ({"model": "m", "flag": 1}, "payload.flag"),
    ({"model": "m", "extra": 1}, "extra fields found"), ({}, "payload.model"),
])
def test_structuring_never_coerces(bad, field):
    with pytest.raises(InvalidPayloadError, match=field.replace(".", r"\.")):
        from_json(bad, Model, "payload")


def test_the_right_values_pass_and_an_int_is_a_float():
    assert from_json({"model": "m", "n": 2, "ratio": 1, "flag": True}, Model) == \
        Model("m", 2, 1.0, True)


async def test_a_schema_task_refuses_a_bad_payload_in_the_sdk_and_in_the_engine(
        transport, autojump_clock):
    async with serve([strict_schema], transport) as eng:
        with pytest.raises(InvalidPayloadError, match=r"payload\.model"):
            await strict_schema.trigger({"model": 42})  # the SDK checks: nothing sent
        with pytest.raises(InvalidPayloadError, match=r"payload\.n"):
            await tasks.trigger("strict-schema", {"model": "m", "n": 1.9})  # the engine does
        assert eng.statistics().live_runs == 0
        result = await strict_schema.trigger_and_wait({"model": "m", "n": 3})
    assert result.output == {"model": "m", "n": 3, "ratio": 0.0, "flag": False}


@attrs.define
class Progress:
    step: str
    percent: int


progress = streams.define(id="progress", type=Progress)
words = streams.define(id="words", type=str)


@task(id="typed-writers")
async def typed_writers(payload: Any) -> dict[str, Any]:
    refused = []
    try:
        await progress.append({"step": "a", "percent": "10"})  # type: ignore[arg-type]
    except InvalidPayloadError as exc:
        refused.append(str(exc))
    await progress.append(Progress("b", 20))
    await progress.append({"step": "c", "percent": 30})  # type: ignore[arg-type]
    pipe = words.pipe(["one", 2, "three"])  # type: ignore[list-item]
    try:
        await pipe.wait_until_complete()
    except InvalidPayloadError as exc:
        refused.append(str(exc))

    def execute(w: Any) -> None:
        w.write("w1")
        w.write(None)

    try:
        await words.writer(execute).wait_until_complete()
    except InvalidPayloadError as exc:
        refused.append(str(exc))
    return {"refused": refused}


async def test_typed_writers_refuse_what_does_not_fit_and_store_nothing_of_it(
        transport, autojump_clock):
    async with serve([typed_writers], transport):
        handle = await typed_writers.trigger()
        with pytest.raises(InvalidPayloadError, match="percent"):  # from a backend too
            await progress.append({"step": "x", "percent": 1.5}, target=handle.id)  # type: ignore[arg-type]
        run = await final(handle.id)
        stored = await (await progress.read(handle.id)).collect()
        said = await (await words.read(handle.id)).collect()
    assert run.status is RunStatus.COMPLETED
    refused = run.output["refused"]
    assert len(refused) == 3
    assert "percent" in refused[0] and "expected int" in refused[0]
    assert "words" in refused[1] and "words" in refused[2]
    assert stored == [Progress("b", 20), Progress("c", 30)]
    assert said == ["one", "w1"]  # what came before each refused chunk is stored


@task(id="child")
async def child(payload: dict[str, Any]) -> int:
    if payload.get("fail"):
        raise ValueError(f"child {payload['n']} failed")
    return int(payload["n"]) * 10


@task(id="orchestrator")
async def orchestrator(payload: Any) -> Any:
    results = await child.batch_trigger_and_wait([
        {"n": 1},
        {"payload": {"n": 2, "fail": True}, "options": {"tags": ["second"]}},
        {"payload": {"n": 3}},
    ])
    return results  # TaskRunResults, one of them failed: they travel as JSON


async def test_a_batch_with_a_failed_child_serializes(transport, autojump_clock):
    async with serve([child, orchestrator], transport):
        run = await final((await orchestrator.trigger()).id)
    assert run.status is RunStatus.COMPLETED, run.error
    first, second, third = run.output
    assert first["ok"] and first["output"] == 10 and first["error"] is None
    assert not second["ok"] and second["status"] == "FAILED"
    assert second["error"]["type"] == "ValueError"
    assert second["error"]["message"] == "child 2 failed"
    assert third["output"] == 30
    back = from_json(run.output, list[TaskRunResult[Any]])
    assert isinstance(back[1].error, TaskRunError)
    with pytest.raises(TaskRunError, match="child 2 failed"):
        back[1].unwrap()
    assert back[2].unwrap() == 30


async def test_batch_items_take_their_own_options(transport, autojump_clock):
    async with serve([child], transport):
        results = await child.batch_trigger_and_wait(
            [{"payload": {"n": 1}, "options": {"tags": ["a"]}}, {"n": 2}], tags=["batch"])
        tagged = [(await final(r.id)).tags for r in results]
        assert [r.output for r in results] == [10, 20]
        assert tagged == [("a",), ("batch",)]
        # by id, and with a batch idempotency key: one key per item
        again = await tasks.batch_trigger_and_wait("child", [{"n": 4}, {"n": 5}],
                                                   idempotency_key="b1")
        same = await tasks.batch_trigger_and_wait("child", [{"n": 4}, {"n": 5}],
                                                  idempotency_key="b1")
        assert [r.id for r in again] == [r.id for r in same] and again[0].id != again[1].id
        with pytest.raises(TypeError, match="options"):
            await child.batch_trigger_and_wait([{"payload": {"n": 1}, "options": 5}])
        with pytest.raises(TypeError, match="list"):
            await child.batch_trigger_and_wait({"n": 1})  # type: ignore[arg-type]
        with pytest.raises(InvalidPayloadError):  # an unknown option is refused
            await child.batch_trigger_and_wait([{"payload": {"n": 1}, "options": {"nope": 1}}])


@task(id="payload-echo")
async def payload_echo(payload: Any) -> Any:
    return payload


async def test_a_payload_shaped_like_an_item_is_wrapped(transport, autojump_clock):
    async with serve([payload_echo], transport):
        odd = {"payload": 1, "options": {}}
        results = await payload_echo.batch_trigger_and_wait([{"payload": odd}])
    assert results[0].output == odd


@task(id="late-tee")
async def late_tee(payload: Any) -> list[str]:
    result = words.pipe(["a", "b", "c"])
    await result.wait_until_complete()  # the task awaits before it iterates
    await trio.sleep(1)
    return [w async for w in result.stream]


@task(id="overflowing-tee")
async def overflowing_tee(payload: Any) -> dict[str, Any]:
    result = streams.pipe("many", range(TEE_BUFFER + 5))
    await result.wait_until_complete()
    try:
        async for _ in result.stream:
            pass
    except TeeOverflowError as exc:
        return {"error": str(exc)}
    return {"error": None}


async def test_the_tee_keeps_chunks_from_the_start_and_is_bounded(transport, autojump_clock):
    async with serve([late_tee, overflowing_tee], transport):
        assert (await late_tee.trigger_and_wait()).output == ["a", "b", "c"]
        run = await final((await overflowing_tee.trigger()).id)
        count = len(await (await streams.read(run.id, "many")).collect())
    assert "5 chunks behind" in run.output["error"]
    assert count == TEE_BUFFER + 5  # the stream stored every chunk


@task(id="unawaited-appends")
async def unawaited_appends(payload: Any) -> str:
    for i in range(5):
        words.append(f"w{i}")  # never awaited: each lands, in order
    streams.append("raw", {"i": 1})
    await until_go()
    return "done"


async def test_an_unawaited_append_lands_in_order(transport, autojump_clock):
    async with serve([unawaited_appends], transport):
        handle = await unawaited_appends.trigger()
        await trio.sleep(1)
        words.append("outside", target=handle.id)  # from a backend: the same
        await trio.sleep(1)
        await finish(handle.id)
        said = await (await words.read(handle.id)).collect()
        raw = await (await streams.read(handle.id, "raw")).collect()
    assert said == ["w0", "w1", "w2", "w3", "w4", "outside"]
    assert raw == [{"i": 1}]


approval = streams.input(id="approval", type=Progress)


@task(id="unwrap-chain")
async def unwrap_chain(payload: Any) -> dict[str, Any]:
    got = await approval.wait(timeout="1h").unwrap()
    once = await approval.once(timeout_ms=10).unwrap() if False else None
    timed_out = approval.wait(timeout=5)
    result = await timed_out
    try:
        await timed_out  # a pending wait is awaited once
    except RuntimeError as exc:
        again = str(exc)
    try:
        await approval.wait(timeout=5).unwrap()
    except Exception as exc:
        raised = type(exc).__name__
    return {"step": got.step, "ok": result.ok, "again": again, "raised": raised,
            "once": once}


async def test_wait_unwrap_chains(transport, autojump_clock):
    async with serve([unwrap_chain], transport):
        handle = await unwrap_chain.trigger()
        await trio.sleep(1)
        await approval.send(handle.id, Progress("approved", 100))
        run = await final(handle.id)
    assert run.output == {"step": "approved", "ok": False, "again":
                          "this wait was awaited already; call wait() again",
                          "raised": "InputStreamTimeoutError", "once": None}


@task(id="logs")
async def logs(payload: Any) -> str:
    logger.log("hello from log", answer=42)
    return "ok"


async def test_logger_log(caplog, autojump_clock):
    caplog.set_level(logging.INFO, logger="runwire.task")
    async with serve([logs]):
        run = await final((await logs.trigger()).id)
    assert run.status is RunStatus.COMPLETED
    record = next(r for r in caplog.records if "hello from log" in r.getMessage())
    assert record.levelno == logging.INFO and "answer=42" in record.getMessage()
    assert record.runwire["run_id"] == run.id


def test_results_round_trip_as_json():
    result: InputResult[int] = InputResult(ok=True, output=3)
    assert to_json(result) == {"ok": True, "output": 3, "error": None}


@task(id="short-lived")
async def short_lived(payload: Any) -> str:
    return "done"


async def test_an_awaited_append_raises_what_was_refused_and_the_next_one_starts_afresh(
        transport, autojump_clock):
    from runwire import NotFoundError, RunFinishedError

    async with serve([short_lived, unawaited_appends], transport):
        finished = (await short_lived.trigger()).id
        await final(finished)
        with pytest.raises(RunFinishedError):
            await words.append("late", target=finished)
        with pytest.raises(NotFoundError):
            await words.append("nowhere", target="run_nope")
        live = await unawaited_appends.trigger()
        await words.append("fine", target=live.id)  # a fresh producer, not the failed one
        with pytest.raises(InvalidPayloadError):
            words.append(5, target=live.id)  # type: ignore[arg-type]  # refused at the call
        await finish(live.id)
        said = await (await words.read(live.id)).collect()
    assert "fine" in said and 5 not in said
