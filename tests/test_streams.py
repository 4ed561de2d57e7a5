"""Output streams, SPEC §2 (inside a run) and §3 (from a backend).

Every test runs against the in-process client and a real websocket (``transport``), under the
mock clock: timeouts of a minute take no real time.
"""

from __future__ import annotations

import itertools

import attrs
import orjson
import pytest
import trio
import trio.testing

from runwire.engine import Limits
from runwire import (
    InvalidPayloadError,
    NotFoundError,
    OutsideRunError,
    PayloadTooLargeError,
    RunFinishedError,
    RunStatus,
    StreamTimeoutError,
    StreamTooLargeError,
    runs,
    streams,
    task,
)

from .helpers import final, finish, serve, until_go


@attrs.frozen
class Progress:
    step: int
    label: str


ai = streams.define(id="ai", type=str)
progress = streams.define(id="progress", type=Progress)


async def read_all(run_id: str, key: str = "default", **kw) -> list:
    return await (await streams.read(run_id, key, **kw)).collect()


# --- define: str and attrs types -----------------------------------------------------------


@task(id="typed")
async def typed(payload):
    await ai.append("hello")
    await progress.append(Progress(1, "load"))
    await progress.append(Progress(2, "think"))
    return "ok"


async def test_define_with_str_and_attrs_type(transport, autojump_clock):
    async with serve([typed], transport):
        handle = await typed.trigger()
        assert await (await ai.read(handle.id)).collect() == ["hello"]
        structured = await (await progress.read(handle.id)).collect()
        assert structured == [Progress(1, "load"), Progress(2, "think")]
        # On the wire (untyped read) the attrs chunks are plain JSON objects.
        assert await read_all(handle.id, "progress") == [
            {"step": 1, "label": "load"}, {"step": 2, "label": "think"}]


def test_define_rejects_bad_ids():
    for bad in (3, "", None, "x" * 257):
        with pytest.raises(ValueError, match="stream key"):
            streams.define(id=bad, type=str)


# --- pipe ----------------------------------------------------------------------------------


@task(id="pipe-at-once")
async def pipe_at_once(payload):
    async def source():
        for i in range(5):
            yield f"a{i}"

    result = ai.pipe(source())  # pipe() is sync: it returns before the source is started
    seen = [chunk async for chunk in result.stream]
    await result.wait_until_complete()
    consumed = []

    def sync_source():  # a sync iterable: pipe must not iterate it before returning
        consumed.append("started")
        yield from (f"s{i}" for i in range(3))

    sync_result = ai.pipe(sync_source())
    not_yet = list(consumed)
    sync_seen = [chunk async for chunk in sync_result.stream]
    await sync_result.wait_until_complete()
    return {"async": seen, "sync": sync_seen, "consumed_before_return": not_yet}


async def test_pipe_returns_at_once_and_tee_yields_the_same_chunks(transport, autojump_clock):
    async with serve([pipe_at_once], transport):
        handle = await pipe_at_once.trigger()
        chunks = await (await ai.read(handle.id)).collect()
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"async": [f"a{i}" for i in range(5)], "sync": ["s0", "s1", "s2"],
                          "consumed_before_return": []}
    assert chunks == [f"a{i}" for i in range(5)] + ["s0", "s1", "s2"]


async def test_wait_until_complete_means_every_chunk_is_stored(transport, autojump_clock):
    lengths = []
    engine = []

    @task(id="wuc")
    async def wuc(payload, ctx):
        async def source():
            for i in range(3000):
                if i % 500 == 0:
                    await trio.sleep(1)
                yield i

        result = streams.pipe("numbers", source())
        await result.wait_until_complete()
        lengths.append(engine[0].run_statistics(ctx.run.id).streams["numbers"].length)
        return "done"

    async with serve([wuc], transport) as eng:
        engine.append(eng)
        handle = await wuc.trigger()
        assert await read_all(handle.id, "numbers") == list(range(3000))
    assert lengths == [3000]


@task(id="failing-source")
async def failing_source(payload):
    def source():
        yield "one"
        yield "two"
        raise ValueError("source broke")

    result = ai.pipe(source())
    try:
        await result.wait_until_complete()
    except ValueError as exc:
        return f"caught {exc}"
    return "not raised"


async def test_wait_until_complete_raises_what_the_source_raised(transport, autojump_clock):
    async with serve([failing_source], transport):
        handle = await failing_source.trigger()
        assert await (await ai.read(handle.id)).collect() == ["one", "two"]
        run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "caught source broke"


# --- append, writer, direct forms ------------------------------------------------------------


@task(id="writers")
async def writers(payload):
    await ai.append("first")

    def sync_fn(w):
        w.write("w1")
        w.merge(["m1", "m2"])
        w.write("w2")

    async def more():
        for i in range(3):
            await trio.sleep(1)
            yield f"am{i}"

    async def async_fn(w):
        w.write("x1")
        w.merge(more())
        await trio.sleep(0.5)
        w.write("x2")

    await ai.writer(execute=sync_fn).wait_until_complete()
    await streams.writer("other", execute=async_fn).wait_until_complete()
    await ai.append("last")
    return "ok"


async def test_append_and_writer_with_sync_and_async_execute(transport, autojump_clock):
    async with serve([writers], transport):
        handle = await writers.trigger()
        main = await (await ai.read(handle.id)).collect()
        other = await read_all(handle.id, "other")
    assert main[0] == "first" and main[-1] == "last"
    assert sorted(main[1:-1]) == ["m1", "m2", "w1", "w2"]
    assert main.index("w1") < main.index("w2") and main.index("m1") < main.index("m2")
    # the async writer: x1 at once, x2 after 0.5 s, merged chunks at 1, 2, 3 s
    assert other == ["x1", "x2", "am0", "am1", "am2"]


@task(id="direct")
async def direct(payload):
    await streams.pipe(["d0", "d1"]).wait_until_complete()
    await streams.pipe("keyed", iter(["k0", "k1"])).wait_until_complete()
    await streams.append("d2")
    await streams.append("keyed", {"k": 2})
    await streams.writer(execute=lambda w: w.write("d3")).wait_until_complete()
    await streams.writer("keyed", execute=lambda w: w.write(3)).wait_until_complete()
    return "ok"


async def test_direct_forms_and_the_default_key(transport, autojump_clock):
    async with serve([direct], transport):
        handle = await direct.trigger()
        default = await (await streams.read(handle.id)).collect()
        keyed = await read_all(handle.id, "keyed")
        run = await final(handle.id)
    assert default == ["d0", "d1", "d2", "d3"]
    assert keyed == ["k0", "k1", {"k": 2}, 3]
    assert set(run.streams) == {"default", "keyed"}


# --- targets ---------------------------------------------------------------------------------


@task(id="grandchild")
async def grandchild(payload, ctx):
    await ai.append("gc->parent", target="parent")
    await ai.append("gc->root", target="root")
    await ai.append("gc->self")
    await ai.append("gc->by-id", target=payload["root"])
    return ctx.run.id


@task(id="child")
async def child(payload, ctx):
    await ai.append("child->parent", target="parent")
    result = await grandchild.trigger_and_wait({"root": ctx.run.root_id})
    return {"me": ctx.run.id, "grandchild": result.unwrap()}


@task(id="root")
async def root(payload, ctx):
    await ai.append("root->parent (self)", target="parent")
    await ai.append("root->root (self)", target="root")
    result = await child.trigger_and_wait({})
    await ai.append("root done", target="self")
    return result.unwrap()


async def test_targets_self_parent_root_and_run_id(transport, autojump_clock):
    async with serve([root, child, grandchild], transport):
        handle = await root.trigger()
        root_chunks = await (await ai.read(handle.id)).collect()
        ids = (await final(handle.id)).output
        child_chunks = await (await ai.read(ids["me"])).collect()
        gc_chunks = await (await ai.read(ids["grandchild"])).collect()
    assert root_chunks == ["root->parent (self)", "root->root (self)", "child->parent",
                           "gc->root", "gc->by-id", "root done"]
    assert child_chunks == ["gc->parent"]
    assert gc_chunks == ["gc->self"]


@task(id="late-child")
async def late_child(payload):
    await until_go()  # the parent has finished by now
    try:
        await ai.append("too late", target="parent")
    except RunFinishedError:
        return "refused"
    return "accepted"


@task(id="short-parent")
async def short_parent(payload):
    handle = await late_child.trigger()
    return handle.id


async def test_writing_into_a_finished_parent_is_refused(transport, autojump_clock):
    async with serve([short_parent, late_child], transport):
        handle = await short_parent.trigger()
        child_id = (await final(handle.id)).output
        await finish(child_id)
        assert (await final(child_id)).output == "refused"
        assert await (await ai.read(handle.id)).collect() == []


# --- producing from outside a task -------------------------------------------------------------


@task(id="sink")
async def sink(payload):
    await until_go()
    return "ok"


async def test_pipe_append_and_writer_from_outside_a_run(transport, autojump_clock):
    async with serve([sink], transport):
        handle = await sink.trigger()

        async def source():
            for i in range(100):
                await trio.sleep(0.01)
                yield f"ext{i}"

        result = ai.pipe(source(), target=handle.id)
        await result.wait_until_complete()
        await ai.append("appended", target=handle.id)
        await ai.writer(lambda w: (w.write("w"), w.merge(["m"])),
                        target=handle.id).wait_until_complete()
        await streams.append("k", 1, target=handle.id)
        with pytest.raises(OutsideRunError):
            ai.pipe(["x"])  # target="self" means nothing outside a run
        await finish(handle.id)
        chunks = await (await ai.read(handle.id)).collect()
        assert await read_all(handle.id, "k") == [1]
    assert chunks[:101] == [f"ext{i}" for i in range(100)] + ["appended"]
    assert sorted(chunks[101:]) == ["m", "w"]


# --- reading -----------------------------------------------------------------------------------


@task(id="counter")
async def counter(payload):
    for i in range(payload["n"]):
        await ai.append(str(i))
        if payload.get("slow"):
            await trio.sleep(1)
    if payload.get("hold"):
        await until_go()
    return "ok"


async def test_start_index_first_chunk_is_chunk_k(transport, autojump_clock):
    async with serve([counter], transport):
        live = await counter.trigger({"n": 10, "slow": True})
        from_3 = await (await ai.read(live.id, start_index=3)).collect()
        assert from_3 == [str(i) for i in range(3, 10)]
        # on a finished stream too, and past its end it is simply empty
        assert await (await ai.read(live.id, start_index=9)).collect() == ["9"]
        assert await (await ai.read(live.id, start_index=10)).collect() == []
        assert await (await ai.read(live.id, start_index=50)).collect() == []


async def test_reading_a_finished_stream_from_zero_yields_all_then_ends(
        transport, autojump_clock):
    # a tiny live tail and small frames: a late reader is fed from the store, in many frames
    limits = Limits(live_tail=16, frame_items=100)
    async with serve([counter], transport, limits=limits) as eng:
        handle = await counter.trigger({"n": 2500})
        assert (await final(handle.id)).status is RunStatus.COMPLETED
        # the final status is published just before the actor goes: let the engine settle
        await trio.testing.wait_all_tasks_blocked()
        assert eng.run_statistics(handle.id) is None
        with trio.fail_after(5):
            chunks = await (await ai.read(handle.id, start_index=0)).collect()
        assert chunks == [str(i) for i in range(2500)]
        assert await (await ai.read(handle.id, start_index=1234)).collect() == [
            str(i) for i in range(1234, 2500)]


async def test_key_nobody_wrote_is_empty_and_ends_with_the_run(transport, autojump_clock):
    async with serve([counter], transport):
        handle = await counter.trigger({"n": 1, "hold": True})
        result = []
        done = trio.Event()

        async def reader():
            result.extend(await read_all(handle.id, "nobody", timeout_in_seconds=None))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(3600)
            assert not done.is_set()  # the run is still live: the stream may still appear
            await finish(handle.id)
            with trio.fail_after(1):
                await done.wait()
        assert result == []
        # after the run, too
        assert await read_all(handle.id, "nobody") == []


async def test_read_timeout_raises_stream_timeout_error(transport, autojump_clock):
    async with serve([counter], transport):
        handle = await counter.trigger({"n": 2, "hold": True})
        start = trio.current_time()
        got = []
        with pytest.raises(StreamTimeoutError) as info:
            async for chunk in await ai.read(handle.id, timeout_in_seconds=30):
                got.append(chunk)
        assert isinstance(info.value, TimeoutError)
        assert got == ["0", "1"]
        assert trio.current_time() - start == pytest.approx(30)
        # the default is 60 s
        start = trio.current_time()
        with pytest.raises(StreamTimeoutError):
            await (await ai.read(handle.id, start_index=2)).collect()
        assert trio.current_time() - start == pytest.approx(60)
        # the run itself is untouched by a reader timing out
        assert (await runs.retrieve(handle.id)).status is RunStatus.EXECUTING
        await finish(handle.id)


async def test_timeout_is_per_gap_not_for_the_whole_read(transport, autojump_clock):
    async with serve([counter], transport):
        handle = await counter.trigger({"n": 5, "slow": True})  # one chunk a second
        chunks = await (await ai.read(handle.id, timeout_in_seconds=1.5)).collect()
        assert chunks == [str(i) for i in range(5)]


async def test_breaking_out_of_a_read_early_leaves_the_client_working(
        transport, autojump_clock):
    async with serve([counter], transport):
        handle = await counter.trigger({"n": 50, "slow": True})
        async for chunk in await ai.read(handle.id):
            if chunk == "2":
                break
        assert await (await ai.read(handle.id, start_index=45)).collect() == [
            str(i) for i in range(45, 50)]


# --- several producers -------------------------------------------------------------------------


@task(id="many-producers")
async def many_producers(payload, ctx):
    async def source(name, n, pause):
        for i in range(n):
            if i % 7 == 0:
                await trio.sleep(pause)
            yield {"p": name, "i": i}

    results = [streams.pipe("mixed", source(f"pipe{j}", 400, 0.01 * (j + 1)))
               for j in range(4)]
    results.append(streams.pipe("mixed", ({"p": "sync", "i": i} for i in range(1000))))

    def write(w):
        for i in range(300):
            w.write({"p": "writer", "i": i})
        w.merge(source("merge", 200, 0.02))

    results.append(streams.writer("mixed", execute=write))
    for i in range(100):
        await streams.append("mixed", {"p": "append", "i": i})
    for result in results:
        await result.wait_until_complete()
    await until_go()
    return "ok"


async def test_concurrent_producers_get_exact_indices(transport, autojump_clock):
    expected = {"pipe0": 400, "pipe1": 400, "pipe2": 400, "pipe3": 400, "sync": 1000,
                "writer": 300, "merge": 200, "append": 100, "outside": 500}
    async with serve([many_producers], transport) as eng:
        handle = await many_producers.trigger()

        async def outside():
            for i in range(500):
                await streams.append("mixed", {"p": "outside", "i": i}, target=handle.id)
                if i % 50 == 0:
                    await trio.sleep(0.005)

        await outside()
        await finish(handle.id)
        chunks = await read_all(handle.id, "mixed")
        tail = await read_all(handle.id, "mixed", start_index=1777)
        stored = await eng.store.read_chunks(handle.id, "mixed", 0, 10**6)
    total = sum(expected.values())
    assert len(chunks) == total == len(stored)
    assert tail == chunks[1777:]
    by_producer = {}
    for chunk in chunks:
        by_producer.setdefault(chunk["p"], []).append(chunk["i"])
    # no gaps, no duplicates, each producer's chunks in the order it wrote them
    assert by_producer == {name: list(range(n)) for name, n in expected.items()}


# --- bad input ---------------------------------------------------------------------------------


async def test_bad_arguments_are_refused_at_the_call(transport, autojump_clock):
    async with serve([sink], transport):
        handle = await sink.trigger()
        for key in (5, "", None):
            with pytest.raises(ValueError, match="stream key"):
                await streams.read(handle.id, key)
            with pytest.raises(ValueError, match="stream key"):
                streams.pipe(key, ["x"], target=handle.id)
            with pytest.raises(ValueError, match="stream key"):
                await streams.append(key, "x", target=handle.id)
        for source in ("abc", b"abc", 5, {"a": 1}, None):
            with pytest.raises(TypeError, match="iterable"):
                ai.pipe(source, target=handle.id)
        with pytest.raises(TypeError):
            ai.writer(execute="not callable", target=handle.id)
        for start in (-1, "3", True, 1.5, None):
            with pytest.raises(ValueError, match="start_index"):
                await ai.read(handle.id, start_index=start)
        for run_id in (None, 5, ""):
            with pytest.raises(TypeError, match="run_id"):
                await ai.read(run_id)
        with pytest.raises(ValueError, match="timeout"):
            await ai.read(handle.id, timeout_in_seconds=0)
        with pytest.raises(TypeError, match="target"):
            ai.pipe(["x"], target=5)
        # nothing reached the run
        await finish(handle.id)
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED and run.streams == ()


@task(id="non-json")
async def non_json(payload):
    await ai.append("before")
    try:
        await ai.append(object())
    except InvalidPayloadError:  # a typed stream checks at the writer
        pass
    else:
        return "accepted a non-JSON chunk"
    await ai.append("after")
    await until_go()
    return "ok"


async def test_a_non_json_chunk_is_refused_and_nothing_else_breaks(transport, autojump_clock):
    async with serve([non_json], transport):
        handle = await non_json.trigger()
        with pytest.raises(InvalidPayloadError):
            await ai.append(object(), target=handle.id)
        result = ai.pipe(["ok1", object(), "ok2"], target=handle.id)
        with pytest.raises(InvalidPayloadError):
            await result.wait_until_complete()
        # the client is still connected and the run still takes chunks
        await ai.append("outside", target=handle.id)
        await finish(handle.id)
        chunks = await (await ai.read(handle.id)).collect()
        run = await final(handle.id)
    assert run.output == "ok"
    assert chunks[:2] == ["before", "after"]
    assert "outside" in chunks and "ok1" in chunks and "ok2" not in chunks


@task(id="big-chunk")
async def big_chunk(payload):
    await ai.append("small")
    try:
        await ai.append("x" * 2000)
    except PayloadTooLargeError:
        pass
    else:
        return "accepted"
    await until_go()
    return "refused"


async def test_a_chunk_over_max_chunk_bytes_is_refused(transport, autojump_clock):
    async with serve([big_chunk], transport, limits=Limits(max_chunk_bytes=1000)):
        handle = await big_chunk.trigger()
        with pytest.raises(PayloadTooLargeError):
            await ai.append("y" * 2000, target=handle.id)
        await ai.append("y" * 900, target=handle.id)
        await finish(handle.id)
        chunks = await (await ai.read(handle.id)).collect()
        assert (await final(handle.id)).output == "refused"
    assert chunks == ["small", "y" * 900]


@task(id="too-long")
async def too_long(payload):
    written = 0
    try:
        for i in itertools.count():
            await ai.append(f"chunk-{i:04d}")  # 12 bytes as JSON
            written += 1
    except StreamTooLargeError:
        pass
    try:
        await ai.append("more")
    except StreamTooLargeError:
        return written
    return "accepted past the limit"


async def test_stream_over_max_stream_bytes_keeps_earlier_chunks(transport, autojump_clock):
    async with serve([too_long], transport, limits=Limits(max_stream_bytes=120)):
        handle = await too_long.trigger()
        chunks = await (await ai.read(handle.id)).collect()
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED
        assert run.output == 10
        assert chunks == [f"chunk-{i:04d}" for i in range(10)]
        assert await (await ai.read(handle.id, start_index=9)).collect() == ["chunk-0009"]


@task(id="too-long-pipe")
async def too_long_pipe(payload):
    result = ai.pipe(f"chunk-{i:04d}" for i in range(20))  # one batch, 240 bytes
    try:
        await result.wait_until_complete()
    except StreamTooLargeError:
        return "refused"
    return "accepted"


async def test_a_pipe_over_max_stream_bytes_stores_what_fits(transport, autojump_clock):
    async with serve([too_long_pipe], transport, limits=Limits(max_stream_bytes=120)):
        handle = await too_long_pipe.trigger()
        chunks = await (await ai.read(handle.id)).collect()
        assert (await final(handle.id)).output == "refused"
    assert chunks == [f"chunk-{i:04d}" for i in range(10)]


async def test_stream_too_large_from_outside(transport, autojump_clock):
    async with serve([sink], transport, limits=Limits(max_stream_bytes=100)):
        handle = await sink.trigger()
        for i in range(10):
            await ai.append(f"{i:08d}", target=handle.id)  # 10 bytes each: exactly 100
        with pytest.raises(StreamTooLargeError):
            await ai.append("x", target=handle.id)
        await streams.append("other", "a different stream is fine", target=handle.id)
        await finish(handle.id)
        assert await (await ai.read(handle.id)).collect() == [f"{i:08d}" for i in range(10)]


async def test_unknown_run_is_not_found(transport, autojump_clock):
    async with serve([sink], transport):
        with pytest.raises(NotFoundError):
            await (await ai.read("run_doesnotexist")).collect()
        with pytest.raises(NotFoundError):
            await ai.append("x", target="run_doesnotexist")
        with pytest.raises(NotFoundError):
            await ai.pipe(["x"], target="run_doesnotexist").wait_until_complete()
        with pytest.raises(NotFoundError):
            await runs.retrieve("run_doesnotexist")


async def test_appending_to_a_finished_run_is_refused(transport, autojump_clock):
    async with serve([counter], transport):
        handle = await counter.trigger({"n": 2})
        before = await final(handle.id)
        with pytest.raises(RunFinishedError):
            await ai.append("late", target=handle.id)
        with pytest.raises(RunFinishedError):
            await ai.pipe(["late"], target=handle.id).wait_until_complete()
        with pytest.raises(RunFinishedError):
            await ai.writer(lambda w: w.write("late"), target=handle.id).wait_until_complete()
        assert await (await ai.read(handle.id)).collect() == ["0", "1"]
        assert await runs.retrieve(handle.id) == before


@task(id="write-into")
async def write_into(payload):
    target = payload["target"]
    errors = []
    for attempt in (
        lambda: ai.append("late", target=target),
        lambda: ai.pipe(["late"], target=target).wait_until_complete(),
        lambda: ai.writer(lambda w: w.write("late"), target=target).wait_until_complete(),
    ):
        try:
            await attempt()
        except Exception as exc:
            errors.append(type(exc).__name__)
    return errors


async def test_writing_into_a_finished_or_unknown_run_from_a_task(transport, autojump_clock):
    async with serve([counter, write_into], transport):
        done = await counter.trigger({"n": 1})
        await final(done.id)
        handle = await write_into.trigger({"target": done.id})
        assert (await final(handle.id)).output == ["RunFinishedError"] * 3
        handle = await write_into.trigger({"target": "run_doesnotexist"})
        assert (await final(handle.id)).output == ["NotFoundError"] * 3
        assert await (await ai.read(done.id)).collect() == ["0"]


@task(id="held-open")
async def held_open(payload):
    await until_go()


async def test_a_backend_pipe_keeps_the_chunks_before_one_too_big_for_a_message(
        transport, autojump_clock):
    # the client refuses a chunk that could never fit in one of the engine's messages
    async with serve([held_open], transport, limits=Limits(max_message_bytes=8192)):
        handle = await held_open.trigger()
        with pytest.raises(PayloadTooLargeError):
            await streams.pipe("k", ["a", "b", "x" * 10_000, "c"],
                               target=handle.id).wait_until_complete()
        await finish(handle.id)
        assert await read_all(handle.id, "k") == ["a", "b"]


def stored_now(eng, run_id: str, key: str) -> list:
    """What the (memory) store holds, read without a checkpoint: nothing runs meanwhile."""
    return [orjson.loads(item) for item in eng.store.chunks_now(run_id, key)]


def breaks_after_two():
    yield "a"
    yield "b"
    raise ValueError("the source broke")


async def test_a_failed_pipe_reports_its_error_once_the_chunks_before_it_are_stored(
        transport, autojump_clock):
    async with serve([held_open], transport) as eng:
        handle = await held_open.trigger()
        with pytest.raises(ValueError, match="the source broke"):
            await streams.pipe("k", breaks_after_two(), target=handle.id).wait_until_complete()
        assert stored_now(eng, handle.id, "k") == ["a", "b"]
        await finish(handle.id)


async def test_a_failed_writer_reports_its_error_once_its_writes_are_stored(
        transport, autojump_clock):
    def execute(writer):
        writer.write("a")
        writer.write("b")
        raise ValueError("the writer broke")

    async with serve([held_open], transport) as eng:
        handle = await held_open.trigger()
        with pytest.raises(ValueError, match="the writer broke"):
            await streams.writer("k", execute=execute, target=handle.id).wait_until_complete()
        assert stored_now(eng, handle.id, "k") == ["a", "b"]
        await finish(handle.id)
