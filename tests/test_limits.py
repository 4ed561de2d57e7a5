"""Resource limits (issue 5): connections, open requests, trigger/send rates per credential,
the handshake timeout, and slow readers that must not make the engine buffer."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket

import runwire
from runwire.engine import Limits, open_engine
from runwire.engine.door import RateLimiter
from runwire import RateLimitedError, auth, streams, task

from .helpers import API_KEY
from .rawclient import raw_client, wait_for_connections

done = streams.input(id="done")
note = streams.input(id="note")


@task(id="lim-waiter")
async def waiter(payload):
    (await done.once()).unwrap()
    return "done"


@task(id="lim-echo")
async def echo(payload):
    return payload


@task(id="lim-firehose")
async def firehose(payload):
    await streams.pipe("numbers", range(payload["n"])).wait_until_complete()
    return payload["n"]


@task(id="lim-bulk")
async def bulk(payload):
    await streams.pipe("bulk", ("x" * 1000 for _ in range(payload["n"]))).wait_until_complete()
    return payload["n"]


TASKS = [waiter, echo, firehose, bulk]


# --- connections ----------------------------------------------------------------------------


async def test_connections_over_the_limit_are_refused_over_websockets():
    with trio.fail_after(10):
        async with open_engine(TASKS, api_key=API_KEY, port=0,
                               limits=Limits(max_connections=2)) as eng:
            async with raw_client(eng, "ws", API_KEY), raw_client(eng, "ws", API_KEY):
                with pytest.raises(trio_websocket.ConnectionRejected) as info:
                    async with trio_websocket.open_websocket_url(eng.url):
                        pass
                assert info.value.status_code == 503
                assert b"too many connections" in info.value.body
                with pytest.raises(ConnectionError, match="503"):
                    async with runwire.connect(eng.url, api_key=API_KEY):
                        pass
            await wait_for_connections(eng, 0)
            async with runwire.connect(eng.url, api_key=API_KEY):  # room again
                assert (await runwire.tasks.trigger_and_wait("lim-echo", 1)).output == 1


async def test_connections_over_the_limit_are_refused_in_memory_too(autojump_clock):
    with trio.fail_after(60):
        async with open_engine(TASKS, api_key=API_KEY, limits=Limits(max_connections=2)) as eng:
            async with raw_client(eng, "memory", API_KEY), raw_client(eng, "memory", API_KEY):
                async with raw_client(eng, "memory") as third:
                    answer = await third.recv()
                    assert (answer["type"], answer["code"]) == ("error", "rate_limited")
                    assert "too many connections" in answer["message"]
                    assert await third.closed_with() == 1013
            await wait_for_connections(eng, 0)
            async with raw_client(eng, "memory", API_KEY):
                pass


# --- open requests per connection -------------------------------------------------------


async def test_open_requests_per_connection_are_limited(autojump_clock):
    with trio.fail_after(60):
        async with open_engine(TASKS, api_key=API_KEY,
                               limits=Limits(max_requests_per_connection=3)) as eng:
            async with raw_client(eng, "memory", API_KEY) as client:
                run = (await client.ask({"type": "trigger", "id": 1, "task": "lim-waiter"}))["run"]
                for rid in (2, 3, 4):
                    await client.send({"type": "read", "id": rid, "run": run, "timeout_s": None})
                answer = await client.ask({"type": "retrieve", "id": 5, "run": run})
                assert (answer["type"], answer["code"], answer["re"]) == (
                    "error", "rate_limited", 5)
                assert "at most 3" in answer["message"]
                assert await client.ask({"type": "cancel", "id": 2}) == {
                    "type": "end", "re": 2, "reason": "canceled", "next": None}
                assert (await client.ask({"type": "retrieve", "id": 6, "run": run}))["type"] \
                    == "run"
                await client.send({"type": "send", "id": 7, "run": run, "stream": "done",
                                   "data": 1})
                ends = [await client.recv() for _ in range(3)]
                assert sorted((f["type"], f["re"]) for f in ends) == [
                    ("ack", 7), ("end", 3), ("end", 4)]


# --- rates per credential ---------------------------------------------------------------


async def test_triggers_are_rate_limited_per_credential(autojump_clock):
    with trio.fail_after(60):
        limits = Limits(trigger_rate=1.0, trigger_burst=3, rate_limit_api_key=True)
        async with open_engine(TASKS, api_key=API_KEY, limits=limits) as eng:
            async with eng.connect():
                for i in range(3):
                    await echo.trigger(i)
                with pytest.raises(RateLimitedError, match="try again later"):
                    await echo.trigger(3)
                await trio.sleep(1.0)  # one token back
                await echo.trigger(4)
                with pytest.raises(RateLimitedError):
                    await echo.trigger(5)
                token = await auth.create_public_token(scopes=["trigger:tasks:lim-echo"])
            async with eng.connect(token):  # another credential, another bucket
                for i in range(3):
                    await echo.trigger(i)
                with pytest.raises(RateLimitedError):
                    await echo.trigger(3)


async def test_sends_are_rate_limited_per_credential(autojump_clock):
    with trio.fail_after(60):
        limits = Limits(send_rate=2.0, send_burst=2, rate_limit_api_key=True)
        async with open_engine(TASKS, api_key=API_KEY, limits=limits) as eng:
            async with eng.connect():
                handle = await waiter.trigger({})
                await note.send(handle.id, 1)
                await note.send(handle.id, 2)
                with pytest.raises(RateLimitedError, match="send"):
                    await note.send(handle.id, 3)
            async with eng.connect(handle.public_access_token):
                await note.send(handle.id, 4)
                await note.send(handle.id, 5)
                with pytest.raises(RateLimitedError):
                    await note.send(handle.id, 6)
            await trio.sleep(0.5)
            async with eng.connect():
                await done.send(handle.id, "ok")  # a token came back
                assert (await runwire.runs.retrieve(handle.id)).status.value in (
                    "COMPLETED", "EXECUTING")


async def test_the_api_key_is_not_rate_limited_by_default(autojump_clock):
    with trio.fail_after(60):
        limits = Limits(trigger_rate=1.0, trigger_burst=2)
        async with open_engine(TASKS, api_key=API_KEY, limits=limits) as eng:
            async with eng.connect():
                for i in range(10):
                    await echo.trigger(i)
                token = await auth.create_public_token(scopes=["trigger:tasks:lim-echo"])
            async with eng.connect(token):
                await echo.trigger(0)
                await echo.trigger(1)
                with pytest.raises(RateLimitedError):
                    await echo.trigger(2)


async def test_rates_can_be_turned_off(autojump_clock):
    with trio.fail_after(60):
        # rate_limit_api_key: the API key is exempt otherwise, and the test could not fail
        limits = Limits(trigger_rate=None, trigger_burst=1, rate_limit_api_key=True)
        async with open_engine(TASKS, api_key=API_KEY, limits=limits) as eng:
            async with eng.connect():
                for i in range(20):
                    await echo.trigger(i)


def test_the_rate_limiter_forgets_idle_buckets():
    async def main() -> None:
        limiter = RateLimiter()
        limiter.PRUNE_AT = 10
        for i in range(10):
            assert limiter.take((f"k{i}", "send"), 1.0, 2)
        await trio.sleep(5)  # every bucket is full again
        assert limiter.take(("new", "send"), 1.0, 2)
        assert len(limiter._buckets) == 1
        assert limiter.take(("new", "send"), 1.0, 2)
        assert not limiter.take(("new", "send"), 1.0, 2)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --- the handshake timeout ----------------------------------------------------------------


async def test_a_client_that_never_says_hello_is_dropped(autojump_clock):
    with trio.fail_after(60):
        async with open_engine(TASKS, api_key=API_KEY) as eng:
            async with raw_client(eng, "memory") as client:
                start = trio.current_time()
                answer = await client.recv()
                assert (answer["type"], answer["code"]) == ("error", "unauthorized")
                assert "handshake timeout" in answer["message"]
                assert await client.closed_with() == 4401
                assert trio.current_time() - start == pytest.approx(10.0)
            await wait_for_connections(eng, 0)


async def test_a_hello_just_in_time_is_fine(autojump_clock):
    with trio.fail_after(600):
        async with open_engine(TASKS, api_key=API_KEY,
                               limits=Limits(handshake_timeout=3.0)) as eng:
            async with raw_client(eng, "memory") as client:
                await trio.sleep(2.9)
                assert (await client.hello(API_KEY))["type"] == "welcome"
                await trio.sleep(60)
                answer = await client.ask({"type": "trigger", "id": 1, "task": "lim-echo"})
                assert answer["type"] == "triggered"


async def test_the_handshake_timeout_over_websockets():
    with trio.fail_after(10):
        async with open_engine(TASKS, api_key=API_KEY, port=0,
                               limits=Limits(handshake_timeout=0.2)) as eng:
            async with raw_client(eng, "ws") as client:
                assert (await client.recv())["code"] == "unauthorized"
                assert await client.closed_with() == 4401
            # a TCP connection that never even asks for a websocket is dropped too
            stream = await trio.open_tcp_stream("127.0.0.1", eng.port)
            async with stream:
                with trio.fail_after(3):
                    assert await stream.receive_some() == b""  # closed by the engine
            await wait_for_connections(eng, 0)


# --- slow readers -------------------------------------------------------------------------


async def test_a_slow_reader_makes_the_engine_wait_not_buffer(autojump_clock):
    n = 5000
    with trio.fail_after(600):
        async with open_engine(TASKS, api_key=API_KEY, limits=Limits(frame_items=10)) as eng:
            async with raw_client(eng, "memory", API_KEY) as slow:
                run = (await slow.ask({"type": "trigger", "id": 1, "task": "lim-firehose",
                                       "payload": {"n": n}}))["run"]
                await slow.send({"type": "read", "id": 2, "run": run, "stream": "numbers",
                                 "timeout_s": None})
                await eng.wait_finished(run)
                await trio.sleep(30)
                # the run is over and its 5000 chunks are stored, but the session sent only
                # what the pipe holds (64 frames of at most 10 chunks) and waits for the rest
                buffered = slow.pipe._receive.statistics()
                assert buffered.current_buffer_used == buffered.max_buffer_size == 64
                # meanwhile the engine serves everyone else
                async with raw_client(eng, "memory", API_KEY) as other:
                    answer = await other.ask({"type": "retrieve", "id": 1, "run": run})
                    assert answer["run"]["status"] == "COMPLETED"
                # once the reader reads, it gets every chunk, in order, exactly once
                got: list[int] = []
                while (frame := await slow.recv())["type"] == "chunks":
                    assert frame["start"] == len(got) and len(frame["items"]) <= 10
                    got += frame["items"]
                assert got == list(range(n))
                assert frame == {"type": "end", "re": 2, "reason": "complete", "next": n}


async def test_a_reader_that_never_reads_does_not_stop_the_engine_closing(autojump_clock):
    with trio.fail_after(60):
        async with open_engine(TASKS, api_key=API_KEY, limits=Limits(frame_items=1)) as eng:
            async with raw_client(eng, "memory", API_KEY) as slow:
                run = (await slow.ask({"type": "trigger", "id": 1, "task": "lim-firehose",
                                       "payload": {"n": 1000}}))["run"]
                await slow.send({"type": "read", "id": 2, "run": run, "stream": "numbers"})
                await eng.wait_finished(run)
                await slow.send({"type": "cancel", "id": 2})  # the cancel waits its turn
                await trio.sleep(1)
                # leaving the blocks closes the connection and the engine, blocked sends or not
        assert eng.statistics().connections == 0


async def test_a_websocket_reader_that_stalls_loses_nothing():
    n = 20000
    with trio.fail_after(30):
        async with open_engine(TASKS, api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, "ws", API_KEY) as slow:
                run = (await slow.ask({"type": "trigger", "id": 1, "task": "lim-firehose",
                                       "payload": {"n": n}}))["run"]
                await slow.send({"type": "read", "id": 2, "run": run, "stream": "numbers",
                                 "timeout_s": None})
                await eng.wait_finished(run)
                # not reading: the engine waits on the socket
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                async with runwire.connect(eng.url, api_key=API_KEY):
                    assert (await runwire.runs.retrieve(run)).output == n
                got: list[int] = []
                while (frame := await slow.recv())["type"] == "chunks":
                    assert frame["start"] == len(got)
                    got += frame["items"]
                assert got == list(range(n)) and frame["next"] == n


async def test_cancelling_a_read_blocked_on_a_websocket_never_tears_a_message():
    with trio.fail_after(30):
        async with open_engine(TASKS, api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, "ws", API_KEY) as slow:
                run = (await slow.ask({"type": "trigger", "id": 1, "task": "lim-bulk",
                                       "payload": {"n": 30000}}))["run"]
                await slow.send({"type": "read", "id": 2, "run": run, "stream": "bulk"})
                await eng.wait_finished(run)
                # 30 MB waiting: the engine is blocked mid-message
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                await slow.send({"type": "cancel", "id": 2})
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                nxt = 0
                while (frame := await slow.recv())["type"] == "chunks":  # all whole frames
                    assert frame["start"] == nxt
                    nxt += len(frame["items"])
                assert frame == {"type": "end", "re": 2, "reason": "canceled", "next": None}
                assert 0 < nxt < 30000
                answer = await slow.ask({"type": "retrieve", "id": 3, "run": run})
                assert answer["run"]["output"] == 30000  # the same connection goes on
