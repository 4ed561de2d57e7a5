"""Defining and triggering tasks, SPEC §2 and §3: ``task``, ``schema_task``, ``trigger*``,
``tasks.*``, ``runs.retrieve``; failures stay inside their run."""

from __future__ import annotations


import attrs
import pytest
import trio

from runwire import (
    InvalidPayloadError,
    Queue,
    RetryPolicy,
    Run,
    RunError,
    RunStatus,
    TaskRunError,
    TaskRunResult,
    UnknownTaskError,
    metadata,
    runs,
    schema_task,
    streams,
    task,
    tasks,
)

from .helpers import final, serve


def ctx_info(ctx) -> dict:
    return {"id": ctx.run.id, "task_id": ctx.run.task_id, "parent_id": ctx.run.parent_id,
            "root_id": ctx.run.root_id, "attempt": ctx.attempt}


# --- task functions ---------------------------------------------------------------------------


@task(id="one-arg")
async def one_arg(payload):
    return {"doubled": payload["n"] * 2}


@task(id="two-args")
async def two_args(payload, ctx):
    return {**ctx_info(ctx), "payload": payload, "ctx_payload": ctx.payload}


async def test_one_and_two_argument_task_functions(transport, autojump_clock):
    async with serve([one_arg, two_args], transport):
        handle = await one_arg.trigger({"n": 21})
        assert (await final(handle.id)).output == {"doubled": 42}
        handle = await two_args.trigger({"x": 1})
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"id": handle.id, "task_id": "two-args", "parent_id": None,
                          "root_id": handle.id, "attempt": 1, "payload": {"x": 1},
                          "ctx_payload": {"x": 1}}


def test_task_definitions_are_checked():
    def not_async(payload):
        return payload

    with pytest.raises(TypeError, match="async def"):
        task(id="sync")(not_async)
    with pytest.raises(ValueError, match="max_duration"):
        task(id="neg", max_duration=-1)(one_arg.fn)
    with pytest.raises(ValueError, match="task id"):
        task(id="")(one_arg.fn)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        Queue("q", concurrency_limit=0)


# --- schema_task ---------------------------------------------------------------------------------


@attrs.frozen
class SummariseInput:
    text: str
    max_words: int = 3


@attrs.frozen
class Summary:
    words: list[str]
    truncated: bool


@schema_task(id="summarise", schema=SummariseInput)
async def summarise(payload, ctx):
    assert isinstance(payload, SummariseInput)
    words = payload.text.split()
    return Summary(words=words[:payload.max_words], truncated=len(words) > payload.max_words)


@task(id="summarise-parent")
async def summarise_parent(payload):
    try:
        await summarise.trigger({"text": "fine", "max_words": "many"})
    except InvalidPayloadError as exc:
        return str(exc)
    return "accepted"


async def test_schema_task_structures_the_payload(transport, autojump_clock):
    async with serve([summarise, summarise_parent], transport):
        handle = await summarise.trigger({"text": "one two three four"})
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED
        # the attrs output is unstructured to JSON
        assert run.output == {"words": ["one", "two", "three"], "truncated": True}
        # an attrs instance as the payload is unstructured on the way in
        handle = await summarise.trigger(SummariseInput("a b", max_words=5))
        assert (await final(handle.id)).output == {"words": ["a", "b"], "truncated": False}


async def test_schema_task_bad_payload_fails_the_trigger_naming_the_field(
        transport, autojump_clock):
    async with serve([summarise, summarise_parent], transport) as eng:
        with pytest.raises(InvalidPayloadError, match="max_words"):
            await summarise.trigger({"text": "hi", "max_words": "lots"})
        with pytest.raises(InvalidPayloadError, match="text"):
            await tasks.trigger("summarise", {"max_words": 2})
        with pytest.raises(InvalidPayloadError):
            await summarise.trigger_and_wait("not an object")
        assert eng.statistics().live_runs == 0  # no run was started
        # inside a task, the same error reaches the caller
        handle = await summarise_parent.trigger()
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert "max_words" in run.output


# --- trigger, trigger_and_wait, batch -------------------------------------------------------------


@task(id="echo")
async def echo(payload, ctx):
    await trio.sleep(payload.get("sleep", 0))
    if payload.get("fail"):
        raise ValueError(f"failing on purpose: {payload['n']}")
    return {"n": payload["n"], **ctx_info(ctx)}


@task(id="fan-out")
async def fan_out(payload, ctx):
    # later payloads finish first: the results must still come back in payload order
    results = await echo.batch_trigger_and_wait(
        [{"n": i, "sleep": 10 - i, "fail": i == 2} for i in range(5)])
    one = await echo.trigger_and_wait({"n": 99})
    by_id = await tasks.trigger_and_wait("echo", {"n": 100})
    batch_by_id = await tasks.batch_trigger_and_wait("echo", [{"n": 101}, {"n": 102}])
    handle = await tasks.trigger("echo", {"n": 103})
    return {
        "me": ctx_info(ctx),
        "batch": [[r.id, r.ok, r.output, None if r.ok else str(r.error)] for r in results],
        "one": one.unwrap(),
        "by_id": by_id.unwrap(),
        "batch_by_id": [r.unwrap()["n"] for r in batch_by_id],
        "handle": handle.id,
    }


@task(id="nest")
async def nest(payload, ctx):
    return {"me": ctx_info(ctx), "child": (await fan_out.trigger_and_wait({})).unwrap()}


async def test_trigger_and_wait_and_batch_from_inside_a_task(transport, autojump_clock):
    async with serve([echo, fan_out, nest], transport):
        handle = await nest.trigger()
        start = trio.current_time()
        run = await final(handle.id)
        elapsed = trio.current_time() - start
        child_handle_run = await final(run.output["child"]["handle"])
    assert run.status is RunStatus.COMPLETED, run.error
    out = run.output["child"]
    me = out["me"]
    assert me["parent_id"] == handle.id and me["root_id"] == handle.id
    batch = out["batch"]
    assert [row[2]["n"] if row[1] else None for row in batch] == [0, 1, None, 3, 4]
    assert batch[2][1] is False and "failing on purpose: 2" in batch[2][3]
    for row in batch:
        if row[1]:
            assert row[2]["id"] == row[0]
            assert row[2]["parent_id"] == me["id"]
            assert row[2]["root_id"] == handle.id  # the root of the whole tree
    assert out["one"]["n"] == 99 and out["one"]["parent_id"] == me["id"]
    assert out["by_id"]["n"] == 100
    assert out["batch_by_id"] == [101, 102]
    assert child_handle_run.parent_id == me["id"] and child_handle_run.root_id == handle.id
    assert elapsed == pytest.approx(10)  # the batch ran concurrently: the slowest is 10 s


async def test_trigger_and_wait_and_batch_from_a_backend(transport, autojump_clock):
    async with serve([echo], transport):
        handle = await echo.trigger({"n": 1})
        assert handle.id.startswith("run_") and handle.public_access_token
        handle2 = await tasks.trigger("echo", {"n": 2})
        assert handle2.id != handle.id
        result = await echo.trigger_and_wait({"n": 3})
        assert isinstance(result, TaskRunResult)
        assert result.ok and result.unwrap()["n"] == 3 and result.output["id"] == result.id
        assert result.output["parent_id"] is None and result.output["root_id"] == result.id
        failed = await tasks.trigger_and_wait("echo", {"n": 4, "fail": True})
        assert not failed.ok and failed.output is None
        assert isinstance(failed.error, TaskRunError)
        assert failed.error.remote_type == "ValueError"
        assert "failing on purpose: 4" in str(failed.error)
        with pytest.raises(TaskRunError, match="failing on purpose"):
            failed.unwrap()
        results = await echo.batch_trigger_and_wait(
            [{"n": i, "sleep": 5 - i} for i in range(5)])
        assert [r.unwrap()["n"] for r in results] == list(range(5))
        assert len({r.id for r in results}) == 5
        results = await tasks.batch_trigger_and_wait("echo", [{"n": 7}, {"n": 8, "fail": True}])
        assert [r.ok for r in results] == [True, False]


# --- runs.retrieve -----------------------------------------------------------------------------


@task(id="described", retry=RetryPolicy(max_attempts=2, min_timeout=1))
async def described(payload, ctx):
    metadata.set("progress", 0.5)
    await streams.append("log", "a line")
    await streams.append("answer", "42")
    await trio.sleep(7)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"answer": 42}


async def test_retrieve_returns_every_run_field(transport, autojump_clock):
    async with serve([described], transport):
        t0 = trio.current_time()
        handle = await described.trigger({"q": "life"}, tags=["a", "b"], metadata={"m": 1})
        early = await runs.retrieve(handle.id)
        assert early.status is RunStatus.EXECUTING
        assert early.finished_at is None and early.output is None and early.error is None
        await final(handle.id)
        run = await runs.retrieve(handle.id)
        elapsed = trio.current_time() - t0
    assert isinstance(run, Run)
    assert run.id == handle.id
    assert run.task_id == "described"
    assert run.status is RunStatus.COMPLETED and run.is_finished
    assert run.payload == {"q": "life"}
    assert run.output == {"answer": 42}
    assert run.error is None
    assert run.metadata == {"m": 1, "progress": 0.5}
    assert run.tags == ("a", "b")
    assert run.attempt == 2
    assert run.parent_id is None and run.root_id == handle.id
    assert set(run.streams) == {"log", "answer"}
    assert run.created_at <= run.started_at < run.finished_at
    # two attempts of 7 s and a 1 s retry delay, on the engine's (mock-driven) clock
    assert run.finished_at - run.started_at == pytest.approx(15)
    assert elapsed == pytest.approx(15)


# --- failures stay in their run ----------------------------------------------------------------


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("cannot print me")


@task(id="bad")
async def bad(payload):
    kind = payload["kind"]
    if kind == "raise":
        raise KeyError("missing thing")
    if kind == "group":
        async with trio.open_nursery() as nursery:
            async def boom():
                raise OSError("child task failed")
            nursery.start_soon(boom)
            await trio.sleep_forever()
    if kind == "non-json":
        return object()
    if kind == "unprintable":
        raise Unprintable()
    return "ok"


async def test_a_failing_task_fails_its_run_and_the_engine_keeps_serving(
        transport, autojump_clock):
    async with serve([bad, echo], transport):
        raised = await final((await bad.trigger({"kind": "raise"})).id)
        group = await final((await bad.trigger({"kind": "group"})).id)
        non_json = await final((await bad.trigger({"kind": "non-json"})).id)
        unprintable = await final((await bad.trigger({"kind": "unprintable"})).id)
        # the engine still serves runs
        ok = await echo.trigger_and_wait({"n": 5})
        assert ok.unwrap()["n"] == 5
    assert raised.status is RunStatus.FAILED
    assert raised.error == RunError("KeyError", "'missing thing'")
    assert raised.output is None and raised.finished_at is not None
    assert group.status is RunStatus.FAILED
    assert group.error == RunError("OSError", "child task failed")  # not "ExceptionGroup"
    assert non_json.status is RunStatus.FAILED
    assert non_json.error.type == "TypeError"
    assert unprintable.status in (RunStatus.FAILED, RunStatus.CRASHED)
    assert unprintable.error is not None


async def test_unknown_task(transport, autojump_clock):
    @task(id="calls-unknown")
    async def calls_unknown(payload):
        try:
            await tasks.trigger_and_wait("nope", {})
        except UnknownTaskError as exc:
            return str(exc)
        return "accepted"

    async with serve([calls_unknown], transport) as eng:
        with pytest.raises(UnknownTaskError, match="nope"):
            await tasks.trigger("nope", {})
        with pytest.raises(UnknownTaskError):
            await tasks.batch_trigger_and_wait("nope", [{}])
        with pytest.raises(UnknownTaskError):
            await echo.trigger({"n": 1})  # defined, but not registered on this engine
        assert eng.statistics().live_runs == 0
        run = await final((await calls_unknown.trigger()).id)
    assert run.status is RunStatus.COMPLETED and "nope" in run.output


# --- idempotency ------------------------------------------------------------------------------


async def test_trigger_with_idempotency_key_returns_the_same_run(transport, autojump_clock):
    async with serve([echo, one_arg], transport):
        first = await echo.trigger({"n": 1, "sleep": 5}, idempotency_key="order-1")
        again = await tasks.trigger("echo", {"n": 1, "sleep": 5}, idempotency_key="order-1")
        other = await echo.trigger({"n": 1, "sleep": 5}, idempotency_key="order-2")
        assert again.id == first.id
        assert other.id != first.id
        # concurrent triggers with one key start one run
        ids = []

        async def one():
            ids.append((await echo.trigger({"n": 2}, idempotency_key="order-3")).id)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert len(set(ids)) == 1
        # after the run has finished, the key still names it
        done = await final(first.id)
        assert done.status is RunStatus.COMPLETED
        assert (await echo.trigger({"n": 1}, idempotency_key="order-1")).id == first.id
        result = await echo.trigger_and_wait({"n": 1}, idempotency_key="order-1")
        assert result.id == first.id and result.unwrap()["n"] == 1
        # the key belongs to one task: another task may use the same string
        assert (await one_arg.trigger({"n": 1}, idempotency_key="order-1")).id != first.id
