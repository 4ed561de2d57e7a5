"""Reconnects under asyncio as under trio (issue 15, part 1): a link cut again and again by
:class:`~tests.faultproxy.FaultProxy`, and an engine stopped and started again on the same
store and port, while a read is under way; the read resumes with no chunk lost or repeated.

The engine runs on trio in a thread of its own (``EngineThread``), and so does the fault
proxy (:class:`ProxyThread`); the client runs under ``anyio.run`` with either backend, so the
asyncio client (``websockets``) goes through exactly the faults the trio tests use.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
import trio

from runwire import RetryPolicy, RunStatus, connect, streams, task
from runwire.engine import EngineThread

from .faultproxy import FaultProxy, open_fault_proxy

TIME_LIMIT = 30

done = streams.input(id="done")
ticks = streams.define(id="ticks", type=int)


@task(id="reconnect-sink", retry=RetryPolicy(max_attempts=2))
async def sink(payload: Any) -> str:
    """Lives until ``done``: chunks are written into it from outside meanwhile. Retried once
    if an engine stops under it (the next engine takes it up again)."""
    (await done.once()).unwrap()
    return "ok"


class ProxyThread:
    """A :class:`FaultProxy` in front of ``target_port``, on trio in a thread of its own."""

    def __init__(self, target_port: int, **options: Any) -> None:
        self._options = dict(target_port=target_port, **options)
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.proxy: FaultProxy | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token, self._stop = trio.lowlevel.current_trio_token(), trio.Event()
        async with open_fault_proxy(**self._options) as proxy:
            self.proxy = proxy
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the proxy's thread."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        self._thread.start()
        assert self._ready.wait(TIME_LIMIT), "the fault proxy did not start"
        assert self.proxy is not None
        try:
            yield self.proxy
        finally:
            assert self._stop is not None
            self.call(self._stop.set)
            self._thread.join(TIME_LIMIT)


@pytest.fixture(params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def run(backend: str, body: Any) -> None:
    async def bounded() -> None:
        with anyio.fail_after(TIME_LIMIT):
            await body()

    anyio.run(bounded, backend=backend)


N_CHUNKS = 20_000


def test_a_producer_and_a_reader_survive_cuts(backend):
    """A producer outside the run pipes 20,000 chunks in through a link cut once in every
    stretch of 2,000 chunks; a reader on the same client gets each exactly once, in
    order. (The cuts are made by the source, not by the proxy's random cutter: that one may
    cut the first connection in its handshake on a busy machine, and a first connection is
    not retried.)"""
    with EngineThread([sink], start_timeout=TIME_LIMIT) as engine, \
            (proxy_thread := ProxyThread(engine.port, seed=21)).running() as proxy:
        got: list[int] = []

        async def source() -> AsyncIterator[int]:
            for i in range(N_CHUNKS):
                if i % 2000 == 1000:  # a cut lands in every stretch of the transfer
                    while not await anyio.to_thread.run_sync(proxy_thread.call, proxy.cut_all):
                        await anyio.sleep(0.005)  # reconnecting (the producer buffers ahead)
                yield i

        async def body() -> None:
            async with connect(proxy.url, api_key=engine.api_key) as client:
                handle = await sink.trigger(None)

                async def reader() -> None:
                    async for chunk in await ticks.read(handle.id, timeout_in_seconds=20):
                        got.append(chunk)

                async with anyio.create_task_group() as group:
                    group.start_soon(reader)
                    await ticks.pipe(source(), target=handle.id).wait_until_complete()
                    await done.send(handle.id, "finish")
                result = await client.wait_for_run(handle.id)
                assert result.ok and result.output == "ok"

        run(backend, body)
        assert got == list(range(N_CHUNKS))
        # a cut can land on a link already cut whose pumps have not ended yet, so not every
        # cut costs a connection; the read went across several either way
        assert proxy.accepted >= 3


def test_a_read_resumes_across_an_engine_restart(backend, tmp_path):
    """The engine stops while a reader is 1,000 chunks into 20,000 stored ones (and the
    client holds more, unread); the next engine on the same store and port takes the run up
    again, more chunks are written through it, and the reader gets every chunk once."""
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    first = EngineThread([sink], store=store, start_timeout=TIME_LIMIT)
    first.start()
    port, key = first.port, first.api_key
    engines = [first]
    try:
        got: list[int] = []

        async def body() -> None:
            async with connect(first.url, api_key=key, reconnect_timeout=TIME_LIMIT) as client:
                handle = await sink.trigger(None)
                await ticks.pipe(range(N_CHUNKS), target=handle.id).wait_until_complete()
                paused, resume = anyio.Event(), anyio.Event()

                async def reader() -> None:
                    async for chunk in await ticks.read(handle.id, timeout_in_seconds=20):
                        got.append(chunk)
                        if chunk == 999:  # a consumer mid-read, well behind the engine
                            paused.set()
                            await resume.wait()

                async with anyio.create_task_group() as group:
                    group.start_soon(reader)
                    await paused.wait()
                    await anyio.to_thread.run_sync(first.stop)
                    second = EngineThread([sink], store=store, port=port, api_key=key,
                                          start_timeout=TIME_LIMIT)
                    engines.append(second)
                    await anyio.to_thread.run_sync(second.start)
                    resume.set()
                    # through the new connection, to the run the new engine took up
                    more = range(N_CHUNKS, N_CHUNKS + 500)
                    await ticks.pipe(more, target=handle.id).wait_until_complete()
                    await done.send(handle.id, "finish")
                result = await client.wait_for_run(handle.id)
                assert result.ok and result.output == "ok"
                run_ = await client.retrieve(handle.id)
                # stopped gracefully, the run was handed back: the same attempt resumed
                assert run_.status is RunStatus.COMPLETED and run_.attempt == 1

        run(backend, body)
        assert got == list(range(N_CHUNKS + 500))
    finally:
        for engine in engines:
            engine.stop()
