"""The front door: a trio-websocket server at ``ws://HOST:PORT/v1``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
import trio_websocket

from transport import Connection, Role

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("runwire.engine")

PATH = "/v1"


async def serve(engine: Engine, host: str, port: int, *,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accept websocket connections until cancelled; sets ``engine.url`` once listening."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        if request.path.split("?", 1)[0] != PATH:
            await request.reject(404, body=b"runwire speaks at /v1\n")
            return
        if engine.connections >= engine.limits.max_connections:
            await request.reject(503, body=b"too many connections\n")
            return
        ws = await request.accept()
        await engine.serve_connection(Connection(ws, Role.ENGINE))

    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: trio_websocket.serve_websocket(
            handler, host, port, ssl_context=None, handler_nursery=nursery,
            max_message_size=engine.limits.max_message_bytes, task_status=task_status))
        engine.port = server.port
        shown = f"[{host}]" if ":" in host else host
        engine.url = f"ws://{shown}:{server.port}{PATH}"
        log.info("runwire engine listening on %s", engine.url)
        task_status.started(engine.url)
