"""``EngineThread`` given bad input or used out of order: a clear error, and nothing lost.

Each test starts engines in threads of their own (``start_timeout`` bounds every start, and
``stop`` joins the thread with a timeout); the client calls run under ``anyio.run`` with
``fail_after``, on both backends where the client is involved.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

from runwire import connect, task
from runwire.engine import EngineThread
from runwire.engine.store import MemoryStore, StoreConfigError, StoreError

TIME_LIMIT = 20


@task(id="thread-echo")
async def echo(payload: Any) -> Any:
    return payload


async def undecorated(payload: Any) -> Any:
    return payload


def call_echo(thread: EngineThread, value: Any, backend: str = "asyncio") -> Any:
    async def body() -> Any:
        with anyio.fail_after(TIME_LIMIT):
            async with thread.connect() as client:
                return (await echo.trigger_and_wait(value, client=client)).output

    return anyio.run(body, backend=backend)


def test_url_port_and_connect_before_start_and_after_stop():
    thread = EngineThread([echo], start_timeout=TIME_LIMIT)
    for what in (lambda: thread.url, lambda: thread.port, thread.connect):
        with pytest.raises(RuntimeError, match="not running; call start"):
            what()
    assert not thread.running
    thread.stop()  # before start: nothing to stop, no error
    with thread:
        assert thread.running and thread.url.startswith("ws://127.0.0.1:")
        assert call_echo(thread, "up") == "up"
    assert not thread.running
    for what in (lambda: thread.url, lambda: thread.port, thread.connect):
        with pytest.raises(RuntimeError, match="not running; call start"):
            what()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_client_of_a_stopped_engine_gets_a_connection_error(backend):
    with EngineThread([echo], start_timeout=TIME_LIMIT) as thread:
        url, key = thread.url, thread.api_key

    async def body() -> None:
        with anyio.fail_after(TIME_LIMIT):
            with pytest.raises(ConnectionError):
                async with connect(url, api_key=key, connect_timeout=2, reconnect_timeout=0):
                    pass

    anyio.run(body, backend=backend)


def test_start_twice_stop_twice_and_start_again():
    thread = EngineThread([echo], start_timeout=TIME_LIMIT)
    thread.start()
    try:
        first = thread.url
        with pytest.raises(RuntimeError, match="already started"):
            thread.start()
        assert thread.url == first and call_echo(thread, 1) == 1  # the running one is intact
    finally:
        thread.stop()
    thread.stop()  # twice: nothing left to stop, no error
    assert not thread.running
    thread.start()  # a stopped thread starts again (a new engine, a new port if port=0)
    try:
        assert call_echo(thread, 2, backend="trio") == 2
    finally:
        thread.stop()


def test_a_task_that_is_not_a_task_is_refused_at_construction():
    with pytest.raises(TypeError, match="Task objects made with @task.*'not a task'"):
        EngineThread([echo, "not a task"])
    with pytest.raises(TypeError, match="Task objects made with @task"):
        EngineThread([undecorated])  # the function without @task
    with pytest.raises(TypeError):
        EngineThread(None)  # type: ignore[arg-type]


def test_a_bad_store_is_refused_and_the_thread_can_start_afterwards():
    with pytest.raises(TypeError, match="store must be a URL"):
        EngineThread([echo], store=42)
    thread = EngineThread([echo], store="postgres://nowhere/db", start_timeout=TIME_LIMIT)
    with pytest.raises(StoreConfigError, match="unsupported store URL"):
        thread.start()
    assert not thread.running
    thread.stop()  # nothing running: no error
    with pytest.raises(StoreConfigError):  # the failed start left nothing behind
        thread.start()
    bad_path = EngineThread([echo], store="sqlite:////no/such/folder/x.db",
                            start_timeout=TIME_LIMIT)
    with pytest.raises(StoreError):
        bad_path.start()
    assert not bad_path.running
    with EngineThread([echo], store=MemoryStore(), start_timeout=TIME_LIMIT) as ok:
        assert call_echo(ok, "a Store object") == "a Store object"


def test_a_port_in_use_is_reported_by_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        thread = EngineThread([echo], port=taken.getsockname()[1], start_timeout=TIME_LIMIT)
        with pytest.raises(OSError):
            thread.start()
        assert not thread.running


def test_async_with_from_asyncio():
    async def body() -> Any:
        with anyio.fail_after(TIME_LIMIT):
            async with EngineThread([echo], start_timeout=TIME_LIMIT) as thread:
                async with thread.connect() as client:
                    out = (await echo.trigger_and_wait("lifespan", client=client)).output
            assert not thread.running
            return out

    assert anyio.run(body, backend="asyncio") == "lifespan"
