"""A raw wire client for tests: JSON messages (or any bytes) straight onto a live engine.

It bypasses the SDK and the transport's own client-side checks so tests can send what a
hostile or buggy client would. Two ways in: an in-memory pipe served by
``engine.serve_connection`` (what ``engine.connect()`` uses), or a real websocket to
``engine.url`` with trio-websocket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
import trio_websocket

from runwire.engine import Engine
from runwire.transport import PROTOCOL_VERSION, Connection, ConnectionBroken, Role, memory_pipe_pair

TRANSPORTS = ("memory", "ws")


class Closed(Exception):
    """The engine closed the connection; ``code`` is its close code."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


class RawClient:
    """Messages in and out, nothing checked."""

    def __init__(self, pipe: Any, kind: str) -> None:
        self.pipe = pipe
        self.kind = kind

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a dict as JSON text, a str as text, bytes as a binary message."""
        if isinstance(message, dict):
            message = orjson.dumps(message).decode()
        await self.pipe.send_message(message)

    async def recv(self) -> dict[str, Any]:
        """The next message, parsed.

        Raises:
            Closed: the engine closed the connection.
        """
        try:
            message = await self.pipe.get_message()
        except ConnectionBroken as exc:
            raise Closed(exc.code) from None
        except trio_websocket.ConnectionClosed as exc:
            raise Closed(exc.reason.code) from None
        return orjson.loads(message)

    async def hello(self, token: str) -> dict[str, Any]:
        await self.send({"type": "hello", "protocol": PROTOCOL_VERSION, "token": token})
        return await self.recv()

    async def ask(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send one frame and return the next message."""
        await self.send(frame)
        return await self.recv()

    async def closed_with(self) -> int | None:
        """Read until the engine closes; its close code."""
        while True:
            try:
                await self.recv()
            except Closed as exc:
                return exc.code

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.pipe.aclose()
            except Exception:
                pass


@asynccontextmanager
async def raw_client(eng: Engine, kind: str, token: str | None = None,
                     ) -> AsyncIterator[RawClient]:
    """A raw client on ``eng`` over ``kind`` (``memory`` or ``ws``), greeted if ``token``."""
    async with trio.open_nursery() as nursery:
        if kind == "memory":
            client_pipe, engine_pipe = memory_pipe_pair()
            nursery.start_soon(eng.serve_connection, Connection(engine_pipe, Role.ENGINE))
        else:
            assert eng.url is not None, "open the engine with port=0 for websocket tests"
            client_pipe = await trio_websocket.connect_websocket_url(
                nursery, eng.url, max_message_size=64 * 1024 * 1024)
        client = RawClient(client_pipe, kind)
        try:
            if token is not None:
                welcome = await client.hello(token)
                assert welcome["type"] == "welcome", welcome
            yield client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


async def wait_for_connections(eng: Engine, count: int, timeout: float = 5.0) -> None:
    """Wait until the engine has exactly ``count`` sessions (sessions end asynchronously)."""
    with trio.fail_after(timeout):
        while eng.statistics().connections != count:
            await trio.sleep(0.01)
