"""Dead links are noticed (issue 19, part 5).

A link that goes silent -- a proxy that stops forwarding but keeps both sockets open
(``FaultProxy.stall``), or a SIGSTOPped engine process -- used to hold every call forever: no
pings, no client-side timers. Now:

- the client pings a quiet link and drops it when the pong is late, then reconnects, and
  reads resume at the next index (both client backends: trio-websocket and ``websockets``);
- a read with ``timeout_in_seconds`` raises at that time on the client's own clock;
- a call waits at most ``request_timeout`` when one is set, and without one a dead engine
  makes it fail after ``reconnect_timeout`` instead of never;
- the engine pings its clients and drops one that does not pong.

The tests with real links run in real time with tight bounds; the timer tests run on trio's
mock clock against an engine that greets and then never answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

import runwire
from runwire import StreamTimeoutError, connect
from runwire.engine import EngineThread, Limits, open_engine
from runwire.runtime import open_client
from runwire.transport import (
    PROTOCOL_VERSION, Connection, ConnectionBroken, Role, Welcome, memory_pipe_pair,
)

from . import crash_tasks as ct
from .helpers import API_KEY
from .rawclient import wait_for_connections
from .test_asyncio_reconnect import ProxyThread, sink, ticks
from .test_restart import engine_processes

#: The client's pings in the link tests: a dead link is noticed within about a second.
FAST_PINGS = {"ping_interval": 0.5, "ping_timeout": 0.5}


@pytest.fixture(params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def run(backend: str, body: Any, limit: float = 30) -> None:
    async def bounded() -> None:
        with anyio.fail_after(limit):
            await body()

    anyio.run(bounded, backend=backend)


async def _proxy(proxy_thread: ProxyThread, fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(proxy_thread.call, fn, *args)


# --- a proxy that stops forwarding ---------------------------------------------------------


def test_a_silent_link_is_noticed_and_the_read_resumes(backend):
    """The link stalls mid-read (sockets open, nothing forwarded): the client notices within
    ping_interval + ping_timeout, reconnects through the proxy, and the read resumes at the
    next index; every chunk arrives once."""
    with EngineThread([sink], start_timeout=30) as engine, \
            (proxy_thread := ProxyThread(engine.port, seed=5)).running() as proxy:
        got: list[int] = []
        noticed: list[float] = []

        async def body() -> None:
            async with connect(proxy.url, api_key=engine.api_key, **FAST_PINGS):
                handle = await sink.trigger(None)
                await ticks.pipe(range(100), target=handle.id).wait_until_complete()
                first_hundred = anyio.Event()

                async def reader() -> None:
                    async for chunk in await ticks.read(handle.id, timeout_in_seconds=None):
                        got.append(chunk)
                        if len(got) == 100:
                            first_hundred.set()
                        if len(got) == 200:
                            return

                async with anyio.create_task_group() as group:
                    group.start_soon(reader)
                    await first_hundred.wait()
                    accepted = proxy.accepted
                    assert await _proxy(proxy_thread, proxy.stall) == 1
                    began = anyio.current_time()
                    while proxy.accepted == accepted:  # the client's next connection
                        await anyio.sleep(0.02)
                    noticed.append(anyio.current_time() - began)
                    await ticks.pipe(range(100, 200), target=handle.id).wait_until_complete()
                await runwire.streams.input(id="done").send(handle.id, "finish")

        run(backend, body)
        print(f"{backend}: a new connection {noticed[0]:.2f} s after the stall")
        assert got == list(range(200))
        # 0.5 s of quiet, then 0.5 s for the pong: about 1 s; bounded loosely for a busy box
        assert 0.4 <= noticed[0] <= 4.0, noticed


def test_a_read_times_out_on_time_over_a_silent_link(backend):
    """Everything stalls, new connections too (the engine looks alive to TCP and says
    nothing): a read with timeout_in_seconds=3 raises StreamTimeoutError at 3 s."""
    with EngineThread([sink], start_timeout=30) as engine, \
            (proxy_thread := ProxyThread(engine.port, seed=6)).running() as proxy:
        waited: list[float] = []

        async def body() -> None:
            async with connect(proxy.url, api_key=engine.api_key, connect_timeout=2):
                handle = await sink.trigger(None)
                await ticks.pipe(range(10), target=handle.id).wait_until_complete()
                reader = await ticks.read(handle.id, timeout_in_seconds=3)
                got = []
                with pytest.raises(StreamTimeoutError, match="for 3 s"):
                    async for chunk in reader:
                        got.append(chunk)
                        if len(got) == 10:
                            await _proxy(proxy_thread, lambda: proxy.stall(new_links=True))
                            began = anyio.current_time()
                waited.append(anyio.current_time() - began)
                assert got == list(range(10))
                await _proxy(proxy_thread, proxy.unstall)

        run(backend, body)
        print(f"{backend}: the read raised {waited[0]:.2f} s after the stall")
        assert 2.9 <= waited[0] <= 4.5, waited


def test_calls_on_a_silent_link_end(backend):
    """On a link that went silent for good: with request_timeout a retrieve raises
    TimeoutError at that time; without one it waits out reconnect_timeout (the pings tell
    the client the link is dead) and raises ConnectionError, instead of never returning."""
    with EngineThread([sink], start_timeout=30) as engine, \
            (proxy_thread := ProxyThread(engine.port, seed=7)).running() as proxy:
        times: dict[str, float] = {}

        async def body() -> None:
            async with connect(proxy.url, api_key=engine.api_key, request_timeout=2,
                               reconnect_timeout=2, connect_timeout=1, **FAST_PINGS) as client:
                handle = await sink.trigger(None)
                await _proxy(proxy_thread, lambda: proxy.stall(new_links=True))
                began = anyio.current_time()
                with pytest.raises(TimeoutError, match="request_timeout"):
                    await client.retrieve(handle.id)
                times["request_timeout"] = anyio.current_time() - began
                client.request_timeout = None
                began = anyio.current_time()
                with pytest.raises(ConnectionError, match="unreachable"):
                    await client.retrieve(handle.id)
                times["reconnect_timeout"] = anyio.current_time() - began
                await _proxy(proxy_thread, proxy.unstall)

        run(backend, body)
        print(f"{backend}: {times}")
        assert 1.9 <= times["request_timeout"] <= 3.5, times
        # the link was already found dead during the first call; the reconnect_timeout
        # counts from then, so the second call fails within about 2 s of it
        assert times["reconnect_timeout"] <= 4.0, times


# --- a stopped engine process -------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGSTOP")
async def test_a_sigstopped_engine_is_noticed(tmp_path: Path, caplog) -> None:
    """SIGSTOP the engine process mid-read: a read with timeout_in_seconds=3 raises at 3 s,
    the client finds the link dead within about a second (and keeps trying), and after
    SIGCONT the other read resumes where it was: every chunk once."""
    caplog.set_level(logging.INFO, logger="runwire.client")
    with trio.fail_after(60):
        async with engine_processes() as start:
            eng = await start(tmp_path / "stop.db", 0)
            async with connect(eng.url, api_key=API_KEY, reconnect_timeout=60,
                               **FAST_PINGS) as client:
                handle = await ct.sink.trigger({})
                await ct.ext.pipe([f"c{i}" for i in range(50)],
                                  target=handle.id).wait_until_complete()
                got: list[str] = []
                fifty = trio.Event()

                async def reader() -> None:
                    async for chunk in await ct.ext.read(handle.id, timeout_in_seconds=None):
                        got.append(chunk)
                        if len(got) == 50:
                            fifty.set()
                        if len(got) == 100:
                            return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    await fifty.wait()
                    os.kill(eng.process.pid, signal.SIGSTOP)
                    try:
                        began = trio.current_time()
                        with pytest.raises(StreamTimeoutError):
                            async for _ in await ct.ext.read(handle.id, start_index=50,
                                                             timeout_in_seconds=3):
                                pass
                        assert 2.9 <= trio.current_time() - began <= 4.5
                        assert "no pong from the engine" in caplog.text
                    finally:
                        os.kill(eng.process.pid, signal.SIGCONT)
                    await ct.ext.pipe([f"c{i}" for i in range(50, 100)],
                                      target=handle.id).wait_until_complete()
                assert got == [f"c{i}" for i in range(100)]
                await ct.done.send(handle.id, {})
                assert (await client.wait_for_run(handle.id)).ok


# --- the client's timers, on the mock clock --------------------------------------------------


async def _silent_engine(pipe: Any) -> None:
    """Greets, then reads and never answers (a hung engine behind a live link)."""
    conn = Connection(pipe, Role.ENGINE)
    await conn.receive()  # hello
    await conn.send(Welcome(protocol=PROTOCOL_VERSION, engine="silent", max_message=1 << 20))
    try:
        while True:
            await conn.receive()
    except ConnectionBroken:  # the client left
        pass


async def test_a_read_timer_runs_on_the_client(autojump_clock):
    async with trio.open_nursery() as nursery:

        async def connector(_: object) -> Connection:
            client_end, engine_end = memory_pipe_pair()
            nursery.start_soon(_silent_engine, engine_end)
            return Connection(client_end, Role.CLIENT)

        async with open_client(connector, API_KEY, request_timeout=5) as client:
            began = trio.current_time()
            with pytest.raises(StreamTimeoutError, match="for 3 s"):
                async for _ in await runwire.streams.read("run_x", "s", timeout_in_seconds=3,
                                                          client=client):
                    pass
            assert trio.current_time() - began == pytest.approx(3.0)
            began = trio.current_time()
            with pytest.raises(TimeoutError, match="within 5 s"):
                await client.retrieve("run_x")
            assert trio.current_time() - began == pytest.approx(5.0)
            # the abandoned requests were cancelled on the engine side too, none is left open
            assert client.statistics().open_requests == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), "3", True])
def test_bad_ping_and_request_timeouts_are_refused(value):
    for name in ("ping_interval", "ping_timeout", "request_timeout"):
        with pytest.raises(ValueError, match=name):
            runwire.Client(lambda _: None, API_KEY, **{name: value})  # type: ignore


# --- the engine pings its clients -----------------------------------------------------------


async def _open_raw_websocket(port: int, run: str,
                              ) -> tuple[trio.SocketStream, wsproto.WSConnection]:
    """A websocket by hand that opens a read of ``run`` after its hello, then answers
    nothing, not even pings."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/v1")))
    while True:
        ws.receive_data(await stream.receive_some(4096))
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            break
    hello = f'{{"type":"hello","protocol":{PROTOCOL_VERSION},"token":"{API_KEY}"}}'
    read = f'{{"type":"read","id":1,"run":"{run}","stream":"ticks","timeout_s":null}}'
    await stream.send_all(ws.send(TextMessage(data=hello)) + ws.send(TextMessage(data=read)))
    return stream, ws


async def test_the_engine_drops_a_client_that_does_not_pong():
    """A client with a read open that stops answering pings is dropped after ping_interval
    + ping_timeout: its slot and its read are given back."""
    with trio.fail_after(20):
        async with open_engine([sink], api_key=API_KEY, port=0,
                               limits=Limits(ping_interval=0.3, ping_timeout=0.3)) as eng:
            async with eng.connect():
                run = (await sink.trigger(None)).id
            stream, _ = await _open_raw_websocket(eng.port, run)
            async with stream:
                await wait_for_connections(eng, 1)
                began = trio.current_time()
                await wait_for_connections(eng, 0, timeout=10)
                assert 0.5 <= trio.current_time() - began <= 3.0
                assert eng.statistics().open_requests == 0
            # a real client answers the engine's pings and stays, read and all
            async with connect(eng.url, api_key=API_KEY, ping_interval=None) as client:
                async with trio.open_nursery() as nursery:
                    async def read() -> None:
                        async for _ in await ticks.read(run, timeout_in_seconds=None):
                            pass

                    nursery.start_soon(read)
                    await trio.sleep(1.5)
                    assert eng.statistics().connections == 1
                    assert client.statistics().open_requests == 1
                    nursery.cancel_scope.cancel()


async def test_an_idle_client_is_not_pinged_and_reconnects_when_needed(autojump_clock):
    """With nothing open the client does not ping; the engine closes the idle connection at
    idle_timeout (1001), and the client connects again only for its next call."""
    async with open_engine([sink], api_key=API_KEY, port=0,
                           limits=Limits(idle_timeout=600)) as eng:
        async with connect(eng.url, api_key=API_KEY) as client:
            run = (await sink.trigger(None)).id
            await trio.sleep(30 * 86400)  # a month of mock time: no pings, one idle close
            assert eng.statistics().connections == 0 and client._link is None
            assert (await client.retrieve(run)).id == run
            assert eng.statistics().connections == 1


async def test_a_ping_after_the_engine_closed_does_not_take_it_down(caplog):
    """The engine closes an idle connection (1001) and the client pings before it answers
    the close: trio-websocket used to answer that ping, wsproto refused the pong in the
    closing state, and the exception ended the server's nursery -- the whole engine. Now the
    ping goes unanswered, nothing fails, and the engine serves on."""
    with trio.fail_after(20):
        async with open_engine([sink], api_key=API_KEY, port=0,
                               limits=Limits(idle_timeout=0.2)) as eng:
            for _ in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", eng.port)
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(ws.send(Request(host="127.0.0.1", target="/v1")))
                while not any(isinstance(e, AcceptConnection) for e in ws.events()):
                    ws.receive_data(await stream.receive_some(4096))
                hello = f'{{"type":"hello","protocol":{PROTOCOL_VERSION},"token":"{API_KEY}"}}'
                await stream.send_all(ws.send(TextMessage(data=hello)))
                closed = False
                while not closed:  # welcome, then (idle) the engine's close frame
                    ws.receive_data(await stream.receive_some(4096))
                    closed = any(isinstance(e, CloseConnection) for e in ws.events())
                ping = bytes([0x89, 0x80 | 4]) + b"\0\0\0\0" + b"ping"  # masked, mask 0
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(ping)
                await trio.sleep(0.2)
                await stream.aclose()
            async with connect(eng.url, api_key=API_KEY) as client:
                assert (await client.retrieve((await sink.trigger(None)).id)).id
    # nothing failed on the way (a failure on one connection is logged and ends only it)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
