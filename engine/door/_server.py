"""The front door: a trio-websocket server at ``ws://HOST:PORT/v1``.

What it bounds before a session exists: a websocket handshake must finish within the
engine's ``handshake_timeout``; a message may be at most ``max_message_bytes`` (larger ones
close the connection with 1009; trio-websocket checks while it reads, so no more than the
limit is ever buffered); at ``max_connections`` open sessions, new websockets are refused with
HTTP 503 before they are accepted (the session checks again, exactly, after accepting).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
import trio_websocket

from runwire.transport import Connection, Role

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("runwire.engine")

PATH = "/v1"


async def serve(engine: Engine, host: str, port: int, *,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accept websocket connections until cancelled; sets ``engine.url`` once listening."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        try:
            if request.path.split("?", 1)[0] != PATH:
                await request.reject(404, body=b"runwire speaks at /v1\n")
                return
            if engine.connections >= engine.limits.max_connections:
                await request.reject(503, body=b"too many connections\n")
                return
            ws = await request.accept()
        except trio_websocket.ConnectionClosed:
            return  # the client left (or reset) during the handshake: nobody to serve
        await engine.serve_connection(Connection(ws, Role.ENGINE))

    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: trio_websocket.serve_websocket(
            handler, host, port, ssl_context=None, handler_nursery=nursery,
            max_message_size=engine.limits.max_message_bytes,
            connect_timeout=engine.limits.handshake_timeout, task_status=task_status))
        engine.port = server.port
        shown = f"[{host}]" if ":" in host else host
        engine.url = f"ws://{shown}:{server.port}{PATH}"
        log.info("runwire engine listening on %s", engine.url)
        task_status.started(engine.url)
