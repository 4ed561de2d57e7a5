"""Automatic resumption in the SDK, proven through a proxy that cuts connections on purpose.

Every test talks to a real engine websocket through :class:`~tests.faultproxy.FaultProxy`,
with fixed seeds and bounded loops; each one is bounded in time by ``trio.fail_after``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import runwire
from runwire.engine import open_engine
from runwire import streams, task

from .helpers import API_KEY
from .faultproxy import FaultProxy, open_fault_proxy

done = streams.input(id="done")
records = streams.input(id="records")

#: Payloads of every run of ``counted`` that started, in start order.
STARTED: list[int] = []


@task(id="resume-sink")
async def sink(payload: dict) -> str:
    """Lives until a record arrives on ``done``: external producers write into it meanwhile."""
    result = await done.once()
    result.unwrap()
    return "ok"


@task(id="resume-counter")
async def counter(payload: dict) -> list:
    """Every record of ``records``, in order, until the record ``"finish"``."""
    seen: list = []
    while (record := (await records.once()).unwrap()) != "finish":
        seen.append(record)
    return seen


@task(id="resume-counted")
async def counted(payload: dict) -> int:
    STARTED.append(payload["i"])
    return payload["i"]


TASKS = [sink, counter, counted]


@asynccontextmanager
async def engine_behind_proxy(*, seed: int, max_cuts: int = 0, min_gap: float = 0.02,
                              max_gap: float = 0.1) -> AsyncIterator[FaultProxy]:
    """A websocket engine running :data:`TASKS`, and a fault proxy in front of it."""
    async with open_engine(TASKS, api_key=API_KEY, port=0) as eng:
        assert eng.port is not None
        async with open_fault_proxy(eng.port, seed=seed, max_cuts=max_cuts, min_gap=min_gap,
                                    max_gap=max_gap) as proxy:
            yield proxy


# --- the proxy itself ------------------------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _echo, 0)
        try:
            yield listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


async def _roundtrip(stream: trio.SocketStream, data: bytes) -> bytes:
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        got += await stream.receive_some(65536)
    return got


async def test_proxy_forwards_and_cuts_abruptly() -> None:
    with trio.fail_after(5):
        async with echo_server() as port, open_fault_proxy(port, seed=1) as proxy:
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
                assert await _roundtrip(stream, b"hello" * 1000) == b"hello" * 1000
                assert proxy.cut_all() == 1
                with pytest.raises(trio.BrokenResourceError):  # a reset, not a clean EOF
                    await stream.receive_some(10)


async def test_proxy_cuts_at_seeded_intervals_and_stops() -> None:
    with trio.fail_after(5):
        async with echo_server() as port, \
                open_fault_proxy(port, seed=7, max_cuts=3, min_gap=0.01, max_gap=0.03) as proxy:
            for _ in range(20):  # reconnect after each cut, as a client would
                if proxy.random_cuts == 3:
                    break
                async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
                    with pytest.raises(trio.BrokenResourceError):
                        while True:
                            await _roundtrip(stream, b"x")
            assert proxy.random_cuts == 3
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
                with trio.move_on_after(0.2):  # longer than max_gap: no more cuts
                    while True:
                        assert await _roundtrip(stream, b"y") == b"y"
            assert proxy.random_cuts == 3


async def test_proxy_pattern_cut_and_outage() -> None:
    with trio.fail_after(5):
        async with echo_server() as port, open_fault_proxy(port, seed=2) as proxy:
            proxy.cut_when(b"ACK", times=1, every=2)
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
                assert await _roundtrip(stream, b"first ACK") == b"first ACK"
                with pytest.raises(trio.BrokenResourceError):
                    await _roundtrip(stream, b"second A")
                    await _roundtrip(stream, b"CK")  # split across reads, still found
            assert proxy.pattern_cuts == 1
            proxy.go_down()
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as refused:
                with pytest.raises(trio.BrokenResourceError):
                    await _roundtrip(refused, b"z")
            proxy.come_up()
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as again:
                assert await _roundtrip(again, b"third ACK") == b"third ACK"


# --- resumption ------------------------------------------------------------------------------

N_CHUNKS = 20_000


async def test_external_producer_and_reader_survive_cuts() -> None:
    """A producer outside the run pipes 20,000 chunks in; a reader gets each exactly once."""
    with trio.fail_after(20):
        async with engine_behind_proxy(seed=11, max_cuts=12) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                handle = await sink.trigger({})
                got: list[int] = []

                async def source() -> AsyncIterator[int]:
                    for i in range(N_CHUNKS):
                        if i % 2000 == 1000:  # a cut lands in every stretch of the transfer
                            await proxy.wait_cuts(i // 2000 + 1)
                        yield i

                async def reader() -> None:
                    stream = await streams.read(handle.id, "k", timeout_in_seconds=10)
                    async for chunk in stream:
                        got.append(chunk)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    pipe = streams.pipe("k", source(), target=handle.id)
                    await pipe.wait_until_complete()
                    await done.send(handle.id, "finish")
                proxy.stop_cutting()
                result = await client.wait_for_run(handle.id)
            assert got == list(range(N_CHUNKS))
            assert result.ok
            assert proxy.cuts >= 10


async def test_input_records_arrive_once_when_acks_are_lost() -> None:
    """``send`` is retried after a lost ack; its idempotency key makes the retry harmless."""
    n = 200
    with trio.fail_after(15):
        async with engine_behind_proxy(seed=12, max_cuts=8) as proxy:
            proxy.cut_when(b'"type":"ack"', times=10, every=3)
            async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                handle = await counter.trigger({})
                for i in range(n):
                    await records.send(handle.id, i)
                proxy.stop_cutting()
                await records.send(handle.id, "finish")
                result = await client.wait_for_run(handle.id)
            assert proxy.pattern_cuts == 10
            assert result.output == list(range(n))


async def test_a_send_that_ends_the_run_is_not_refused_when_retried() -> None:
    """The ack of the record that lets the run finish is lost: the retry finds the run
    finished, and must still get the stored record's answer, not ``run_finished``."""
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=24) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                handle = await counter.trigger({})
                await records.send(handle.id, "only")
                proxy.cut_when(b'"type":"ack"')
                await records.send(handle.id, "finish")
                result = await client.wait_for_run(handle.id)
            assert proxy.pattern_cuts == 1
            assert result.output == ["only"]


async def test_trigger_starts_one_run_per_call() -> None:
    n = 40
    STARTED.clear()
    with trio.fail_after(15):
        async with engine_behind_proxy(seed=13, max_cuts=6) as proxy:
            proxy.cut_when(b'"type":"triggered"', times=8, every=2)
            async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                handles = [await counted.trigger({"i": i}) for i in range(n)]
                proxy.stop_cutting()
                results = [await client.wait_for_run(h.id) for h in handles]
            assert proxy.pattern_cuts == 8
    assert len({h.id for h in handles}) == n
    assert [r.output for r in results] == list(range(n))
    assert sorted(STARTED) == list(range(n))


async def test_unreachable_engine_fails_calls_with_connection_error() -> None:
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=14) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY, reconnect_timeout=0.5) as client:
                handle = await sink.trigger({})
                failed_reads: list[ConnectionError] = []

                async def reader() -> None:
                    try:
                        async for _ in await streams.read(handle.id, "k"):
                            pass
                    except ConnectionError as exc:
                        failed_reads.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    await trio.testing.wait_all_tasks_blocked()  # the read is under way
                    proxy.go_down()
                    start = trio.current_time()
                    with pytest.raises(ConnectionError, match="unreachable for 0.5 s"):
                        await runwire.runs.retrieve(handle.id)
                    waited = trio.current_time() - start
                assert len(failed_reads) == 1
                assert 0.4 < waited < 3  # it waited for reconnect_timeout, not for ever
                with pytest.raises(ConnectionError):  # while down, new calls fail at once
                    await runwire.runs.retrieve(handle.id)
                proxy.come_up()  # the client kept trying: calls work again
                for _ in range(100):
                    try:
                        run = await runwire.runs.retrieve(handle.id)
                        break
                    except ConnectionError:
                        await trio.sleep(0.05)
                assert run.status is runwire.RunStatus.EXECUTING
                await done.send(handle.id, "finish")
                assert (await client.wait_for_run(handle.id)).ok


async def test_connection_error_leaves_connect_as_itself() -> None:
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=15) as proxy:
            with pytest.raises(ConnectionError):
                async with runwire.connect(proxy.url, api_key=API_KEY, reconnect_timeout=0.3):
                    proxy.go_down()
                    await runwire.tasks.trigger("resume-counted", {"i": 0})
            with pytest.raises(runwire.UnauthorizedError):
                proxy.come_up()
                async with runwire.connect(proxy.url, api_key="wrong-key"):
                    pass
            with pytest.raises(KeyError) as caught:
                async with runwire.connect(proxy.url, api_key=API_KEY):
                    try:
                        {}["missing"]
                    except LookupError as exc:
                        raise KeyError("mine") from exc
            assert caught.value.args == ("mine",)
            assert isinstance(caught.value.__cause__, LookupError)  # the group ate it before


async def test_unreachable_at_connect_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10), pytest.raises(ConnectionError):
        async with runwire.connect(f"ws://127.0.0.1:{port}", api_key=API_KEY):
            pass


# --- what else the tests found --------------------------------------------------------------


def _task_count() -> int:
    """Tasks in the whole trio run (system tasks included)."""
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def test_no_tasks_pile_up_across_reconnects_or_outlive_connect() -> None:
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=16) as proxy:
            before = _task_count()
            async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                handle = await sink.trigger({})
                baseline = client.statistics().background_tasks
                for _ in range(10):
                    proxy.cut_all()
                    await runwire.runs.retrieve(handle.id)
                assert client.statistics().background_tasks == baseline
                await done.send(handle.id, "finish")
            await trio.testing.wait_all_tasks_blocked()
            assert _task_count() <= before


async def test_connect_exits_promptly() -> None:
    with trio.fail_after(5):
        async with engine_behind_proxy(seed=17) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY):
                await sink.trigger({})
                start = trio.current_time()
            assert trio.current_time() - start < 0.5  # it took 2 s: a close raced its reader


async def test_a_connection_that_breaks_before_any_answer_is_retried_with_backoff() -> None:
    """Reconnecting at once is right after a blip, but not when something (a request?) keeps
    breaking the connection before it answers: then the pauses grow."""
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=23) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                client.random.seed(23)
                handle = await counter.trigger({})
                proxy.cut_when(b'"type":"ack"', times=4)
                start = trio.current_time()
                await records.send(handle.id, "once")
                elapsed = trio.current_time() - start
                await records.send(handle.id, "finish")
                result = await client.wait_for_run(handle.id)
            assert proxy.pattern_cuts == 4
            assert result.output == ["once"]
            assert elapsed >= 0.025 + 0.05 + 0.1  # at least half of each of the 3 pauses


async def test_reading_while_calling_the_same_client_does_not_deadlock() -> None:
    """A read whose consumer awaits another call must not stall the connection."""
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=18) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY):
                handle = await sink.trigger({})
                await streams.pipe("k", range(100_000), target=handle.id).wait_until_complete()
                stream = await streams.read(handle.id, "k")
                got = []
                async for chunk in stream:
                    got.append(chunk)
                    if len(got) == 1:
                        # let the engine push the other 99,999 chunks at the client, then
                        # ask for something whose answer queues up behind them
                        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                        await done.send(handle.id, "finish")
                        await runwire.runs.retrieve(handle.id)
            assert got == list(range(100_000))


async def test_a_lost_ack_of_cancel_run_is_not_an_error() -> None:
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=19) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY):
                handle = await sink.trigger({})
                proxy.cut_when(b'"type":"ack"')
                await runwire.runs.cancel(handle.id)
                run = await runwire.runs.retrieve(handle.id)
            assert proxy.pattern_cuts == 1
            assert run.status is runwire.RunStatus.CANCELED


async def test_a_request_without_a_key_is_not_issued_twice() -> None:
    from runwire.transport import Send

    with trio.fail_after(10):
        async with engine_behind_proxy(seed=20) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY) as client:
                handle = await counter.trigger({})
                proxy.cut_when(b'"type":"ack"')
                with pytest.raises(ConnectionError, match="may or may not"):
                    await client._call(lambda rid: Send(id=rid, run=handle.id,
                                                        stream="records", data=1))
                await records.send(handle.id, 2)
                await records.send(handle.id, "finish")
                result = await client.wait_for_run(handle.id)
            assert result.output == [1, 2]


async def test_a_chunk_that_is_not_json_fails_the_pipe_not_the_client() -> None:
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=21) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY):
                handle = await sink.trigger({})
                pipe = streams.pipe("k", [1, 2, object(), 3], target=handle.id)
                with pytest.raises(TypeError, match="not JSON"):
                    await pipe.wait_until_complete()
                await done.send(handle.id, "finish")
                run = await runwire.runs.retrieve(handle.id)
                stored = await (await streams.read(handle.id, "k")).collect()
            assert run.id == handle.id
            assert stored == [1, 2]  # the chunks before the bad one are kept, none after


async def test_batch_trigger_with_a_key_starts_one_run_per_payload() -> None:
    with trio.fail_after(10):
        async with engine_behind_proxy(seed=22) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY):
                results = await counted.batch_trigger_and_wait(
                    [{"i": 0}, {"i": 1}, {"i": 2}], idempotency_key="batch-1")
                again = await counted.batch_trigger_and_wait(
                    [{"i": 0}, {"i": 1}, {"i": 2}], idempotency_key="batch-1")
    assert [r.output for r in results] == [0, 1, 2]
    assert [r.id for r in again] == [r.id for r in results]


async def test_leaving_a_read_early_cancels_it_on_the_engine() -> None:
    from runwire.runtime import open_client
    from runwire.transport import Cancel, memory_connection_pair

    cancels: list[int] = []
    sent = trio.Event()
    with trio.fail_after(10):
        async with open_engine(TASKS, api_key=API_KEY) as eng:
            async def connector(nursery: trio.Nursery):
                client_end, engine_end = memory_connection_pair()
                nursery.start_soon(eng.serve_connection, engine_end)
                send = client_end.send

                async def spy(frame):
                    if isinstance(frame, Cancel):
                        cancels.append(frame.id)
                        sent.set()
                    await send(frame)

                client_end.send = spy
                return client_end

            async with open_client(connector, API_KEY):
                handle = await sink.trigger({})
                await streams.pipe("k", range(10), target=handle.id).wait_until_complete()
                stream = await streams.read(handle.id, "k")
                async for chunk in stream:
                    break
                await sent.wait()
                await done.send(handle.id, "finish")
    assert len(cancels) == 1


async def test_big_chunks_from_outside_are_batched_under_the_message_limit() -> None:
    """24 MB of 400 KB chunks: one ``append`` of them all would be refused (16 MiB limit),
    the connection closed, and the same frame sent again forever."""
    blob = "x" * 400_000
    with trio.fail_after(15):
        async with engine_behind_proxy(seed=25) as proxy:
            async with runwire.connect(proxy.url, api_key=API_KEY):
                handle = await sink.trigger({})
                source = [f"{i:04d}{blob}" for i in range(60)]
                await streams.pipe("k", source, target=handle.id).wait_until_complete()
                await done.send(handle.id, "finish")
                stream = await streams.read(handle.id, "k")
                got = [chunk[:4] async for chunk in stream]
    assert got == [f"{i:04d}" for i in range(60)]
