"""The trio adapters: a frame Connection over an in-memory pair and over a real websocket."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket

from runwire.transport import (
    PROTOCOL_VERSION, Ack, Chunks, Connection, ConnectionBroken, ConnectionClosed, Hello,
    LocalProtocolError, Read, RemoteProtocolError, Role, State, Welcome, connect_websocket,
    memory_connection_pair, memory_pipe_pair,
)
from runwire.transport._connection import _wire_lock

HELLO = Hello(protocol=PROTOCOL_VERSION, token="k")


@asynccontextmanager
async def memory_pair() -> AsyncIterator[tuple[Connection, Connection, object, object]]:
    client_pipe, engine_pipe = memory_pipe_pair()
    yield (Connection(client_pipe, Role.CLIENT), Connection(engine_pipe, Role.ENGINE),
           client_pipe, engine_pipe)


@asynccontextmanager
async def websocket_pair() -> AsyncIterator[tuple[Connection, Connection, object, object]]:
    """A client Connection and the engine-side Connection of a real trio-websocket link."""
    accepted: list[tuple[Connection, trio_websocket.WebSocketConnection]] = []
    ready = trio.Event()
    done = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        accepted.append((Connection(ws, Role.ENGINE), ws))
        ready.set()
        await done.wait()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0,
                                     None)
        client = await connect_websocket(nursery, f"ws://127.0.0.1:{server.port}/v1")
        await ready.wait()
        engine, engine_ws = accepted[0]
        try:
            yield client, engine, client._pipe, engine_ws
        finally:
            done.set()
            await client.aclose()
            nursery.cancel_scope.cancel()


PAIRS = {"memory": memory_pair, "websocket": websocket_pair}


@pytest.fixture(params=sorted(PAIRS))
def pair(request):
    return PAIRS[request.param]


async def greet(client: Connection, engine: Connection) -> None:
    await client.send(HELLO)
    assert await engine.receive() == HELLO
    await engine.send(Welcome(protocol=PROTOCOL_VERSION))
    assert isinstance(await client.receive(), Welcome)


async def test_frames_flow_both_ways(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, _, _):
            await greet(client, engine)
            await client.send(Read(id=1, run="r", from_=3))
            assert await engine.receive() == Read(id=1, run="r", from_=3)
            await engine.send(Ack(re=1, index=0))
            assert await client.receive() == Ack(re=1, index=0)
            assert client.protocol.state is engine.protocol.state is State.OPEN


async def test_a_peer_close_is_broken_with_its_code(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, _, _):
            await client.send(HELLO)
            await engine.receive()
            await engine.aclose(4401, "go away")
            with pytest.raises(ConnectionBroken) as info:
                await client.receive()
            assert info.value.code == 4401
            assert not client.closed


async def test_websocket_close_reason_is_kept():
    with trio.fail_after(10):
        async with websocket_pair() as (client, engine, _, _):
            await engine.aclose(4401, "no hello")
            with pytest.raises(ConnectionBroken) as info:
                await client.receive()
            assert (info.value.code, info.value.reason) == (4401, "no hello")


async def test_a_gone_peer_breaks_receive_and_send(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, _, _):
            await greet(client, engine)
            await engine.aclose()
            with pytest.raises(ConnectionBroken):
                await client.receive()
            with pytest.raises(ConnectionBroken):
                await client.send(Read(id=1, run="r"))


async def test_aclose_twice_and_use_after_close(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, _, _):
            await greet(client, engine)
            await client.aclose()
            await client.aclose()
            assert client.closed
            with pytest.raises(ConnectionClosed):
                await client.send(Read(id=1, run="r"))
            with pytest.raises(ConnectionClosed):
                await client.receive()


async def test_a_binary_message_is_a_remote_error_with_close_1003(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, client_pipe, _):
            await greet(client, engine)
            await client_pipe.send_message(b'{"type":"cancel","id":1}')
            with pytest.raises(RemoteProtocolError) as info:
                await engine.receive()
            assert info.value.close_code == 1003
            assert info.value.code == "bad_frame"


async def test_a_bad_text_message_leaves_the_connection_working(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, client_pipe, _):
            await greet(client, engine)
            await client_pipe.send_message('{"type":"read","id":9}')
            with pytest.raises(RemoteProtocolError) as info:
                await engine.receive()
            assert (info.value.re, info.value.close_code) == (9, None)
            await client.send(Read(id=10, run="r"))
            assert (await engine.receive()).id == 10


async def test_a_local_protocol_misuse_is_raised_before_anything_is_sent():
    with trio.fail_after(10):
        client, engine = memory_connection_pair()
        with pytest.raises(LocalProtocolError):
            await client.send(Read(id=1, run="r"))
        await client.send(HELLO)
        assert await engine.receive() == HELLO


async def test_sends_are_serialized(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, _, _):
            await greet(client, engine)
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(client.send, Read(id=i, run="r" * 1000))
                got = {(await engine.receive()).id for _ in range(50)}
            assert got == set(range(50))


async def test_connecting_to_nothing_is_broken():
    with trio.fail_after(10):
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConnectionBroken, match="cannot connect"):
                await connect_websocket(nursery, f"ws://127.0.0.1:{port}/v1")


async def test_a_send_cancelled_mid_message_aborts_the_websocket():
    with trio.fail_after(10):
        async with websocket_pair() as (client, engine, _, _):
            await greet(client, engine)
            big = Read(id=1, run="r" * 1_000_000)
            sent = 0
            with trio.move_on_after(0.5) as scope:
                while True:  # nobody reads on the engine side: the socket fills up
                    await client.send(big)
                    sent += 1
            assert scope.cancelled_caught
            with pytest.raises(ConnectionBroken, match="cut short"):
                await client.send(Read(id=2, run="r"))
            # the engine gets whole frames, then the end of the link: never a torn one
            received = 0
            with pytest.raises(ConnectionBroken):
                while True:
                    assert await engine.receive() == big
                    received += 1
            assert received <= sent


async def test_a_send_cancelled_before_it_starts_leaves_the_websocket_working():
    with trio.fail_after(10):
        async with websocket_pair() as (client, engine, _, _):
            await greet(client, engine)
            with trio.CancelScope() as scope:
                scope.cancel()
                await client.send(Read(id=1, run="r"))  # e.g. cleanup code after a cancel
            assert scope.cancelled_caught
            await client.send(Read(id=2, run="r"))
            assert (await engine.receive()).id == 2


async def test_a_cancelled_memory_send_is_harmless():
    with trio.fail_after(10):
        client_pipe, engine_pipe = memory_pipe_pair(buffer=1)
        client, engine = Connection(client_pipe, Role.CLIENT), Connection(engine_pipe, Role.ENGINE)
        await greet(client, engine)
        await client.send(Read(id=1, run="r"))
        with trio.move_on_after(0.1):
            await client.send(Read(id=2, run="r"))  # the buffer is full: never sent
        assert (await engine.receive()).id == 1
        await client.send(Read(id=3, run="r"))
        assert (await engine.receive()).id == 3


# --- send_nowait: the engine's live pushes ----------------------------------------------------

BIG = Chunks(re=1, stream="s", start=0, items=[b'"' + b"x" * 200_000 + b'"'])
BIG_RECEIVED = Chunks(re=1, stream="s", start=0, items=["x" * 200_000])  # items decoded


async def test_send_nowait_sends_a_whole_frame_at_once(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, _, _):
            await greet(client, engine)
            assert engine.send_nowait(Ack(re=1, index=0)) is True
            assert not engine.unflushed
            assert await client.receive() == Ack(re=1, index=0)
            await engine.flush()  # nothing to flush: returns at once


async def test_send_nowait_checks_the_protocol_like_send(pair):
    with trio.fail_after(10):
        async with pair() as (_, engine, _, _):
            with pytest.raises(LocalProtocolError):  # before the handshake
                engine.send_nowait(Ack(re=1, index=0))
            assert engine.protocol.state is State.AWAIT_HELLO


async def test_send_nowait_refuses_when_closed_or_while_a_send_holds_the_lock(pair):
    with trio.fail_after(10):
        async with pair() as (client, engine, _, _):
            await greet(client, engine)
            async with engine._send_lock:  # an ordinary send is under way
                assert engine.send_nowait(Ack(re=1, index=0)) is False
            await engine.aclose()
            assert engine.send_nowait(Ack(re=1, index=0)) is False


async def test_send_nowait_on_a_full_memory_pipe_sends_nothing():
    with trio.fail_after(10):
        client_pipe, engine_pipe = memory_pipe_pair(buffer=1)
        client, engine = Connection(client_pipe, Role.CLIENT), Connection(engine_pipe, Role.ENGINE)
        await greet(client, engine)
        assert engine.send_nowait(Ack(re=1, index=0)) is True
        assert engine.send_nowait(Ack(re=2, index=0)) is False  # full: not sent, no state kept
        assert engine.protocol.state is State.OPEN
        assert await client.receive() == Ack(re=1, index=0)
        await engine.send(Ack(re=3, index=0))
        assert await client.receive() == Ack(re=3, index=0)


def small_buffers(client_ws, engine_ws) -> None:
    """32 KiB socket buffers on the link, so a few big frames fill it."""
    client_ws._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    engine_ws._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)


@asynccontextmanager
async def half_written() -> AsyncIterator[tuple[Connection, Connection, object, int]]:
    """A greeted websocket pair whose engine end pushed BIG frames at a client that does
    not read, until one went out only in part: (client, engine, client_ws, frames pushed)."""
    with trio.fail_after(20):
        async with websocket_pair() as (client, engine, client_ws, engine_ws):
            await greet(client, engine)
            small_buffers(client_ws, engine_ws)
            for pushed in range(1, 1000):
                assert engine.send_nowait(BIG) is True  # a full socket takes part of it
                if engine.unflushed:
                    break
            else:
                raise AssertionError("the socket never filled up")
            yield client, engine, client_ws, pushed


async def test_a_half_written_push_is_finished_before_any_other_bytes():
    async with half_written() as (client, engine, client_ws, pushed):
        assert engine.send_nowait(Ack(re=9, index=0)) is False  # the wire is taken
        received: list[object] = []

        async def read(n: int) -> None:
            for _ in range(n):
                received.append(await client.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, pushed + 1)
            # trio-websocket's own writes (a pong) wait for the rest too
            nursery.start_soon(client_ws.ping, b"p")
            await engine.send(Ack(re=9, index=0))  # finishes the rest, then sends
        assert received == [BIG_RECEIVED] * pushed + [Ack(re=9, index=0)]
        assert not engine.unflushed


async def test_flush_and_aclose_finish_a_half_written_push():
    async with half_written() as (client, engine, _, pushed):
        received: list[object] = []

        async def read() -> None:
            with contextlib.suppress(ConnectionBroken):
                while True:
                    received.append(await client.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await engine.flush()
            assert not engine.unflushed
            assert engine.send_nowait(BIG) is True
            await engine.aclose(1000)  # whatever is half-written goes first
        assert received == [BIG_RECEIVED] * (pushed + 1)


async def cancel_when_parked(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once every other task waits (without a timer: no real time)."""
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


async def test_a_cancelled_flush_aborts_the_connection():
    with trio.fail_after(20):
        async with websocket_pair() as (client, engine, client_ws, engine_ws):
            await greet(client, engine)
            small_buffers(client_ws, engine_ws)
            for i in range(20):  # the client's message queue (16) fills; its reader stops
                await engine.send(Ack(re=i, index=0))
            huge = Chunks(re=1, stream="s", start=0, items=[b'"' + b"x" * 5_000_000 + b'"'])
            assert engine.send_nowait(huge) is True
            assert engine.unflushed
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as scope:
                    nursery.start_soon(cancel_when_parked, scope)
                    await engine.flush()  # nobody reads: the rest never fits
            assert scope.cancelled_caught  # the flush was cut short, not finished
            with pytest.raises(ConnectionBroken, match="cut short"):
                await engine.send(Ack(re=1, index=0))
            assert engine.send_nowait(Ack(re=1, index=0)) is False
            # the client gets the whole frames, then the end of the link: never a torn one
            for i in range(20):
                assert await client.receive() == Ack(re=i, index=0)
            with pytest.raises(ConnectionBroken):
                await client.receive()


async def test_the_wire_lock_is_fifo_and_released_by_any_task():
    baton = _wire_lock()
    order: list[int] = []
    baton.acquire_nowait()
    with pytest.raises(trio.WouldBlock):
        baton.acquire_nowait()

    async def take(i: int) -> None:
        async with baton:
            order.append(i)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(take, i)
            await trio.testing.wait_all_tasks_blocked()
        baton.release()  # by this task, which never "took" it in trio's sense
    assert order == [0, 1, 2]
    assert baton.value == 1
    with pytest.raises(ValueError):
        baton.release()
