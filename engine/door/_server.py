"""The websocket door: a trio-websocket server at ``ws://HOST:PORT/v1``.

What it bounds before a session exists: a websocket handshake must finish within the
engine's ``handshake_timeout``; a message may be at most ``max_message_bytes`` (larger ones
close the connection with 1009; trio-websocket checks while it reads, so no more than the
limit is ever buffered); at ``max_connections`` open sessions, new websockets are refused with
HTTP 503 before they are accepted (the session checks again, exactly, after accepting).
"""

from __future__ import annotations

import logging

import trio
import trio_websocket

from runwire.transport import Connection, Role

from ._requests import Door
from ._session import Session

log = logging.getLogger("runwire.engine")

PATH = "/v1"


class WebsocketServer:
    """Serves :class:`Session` s over websockets; knows where it listens once it does.

    Args:
        door: what every door of the engine shares (the service, auth, connection count).
        host, port: where to listen (``port=0`` picks a free port).
    """

    def __init__(self, door: Door, host: str, port: int) -> None:
        self.door = door
        self.host = host
        self.port = port
        self.url: str | None = None  # once listening

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Accept websocket connections until cancelled; reports the URL once listening."""
        limits = self.door.limits
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: trio_websocket.serve_websocket(
                self._handler, self.host, self.port, ssl_context=None,
                handler_nursery=nursery, max_message_size=limits.max_message_bytes,
                connect_timeout=limits.handshake_timeout, task_status=task_status))
            self.port = server.port
            shown = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"ws://{shown}:{server.port}{PATH}"
            log.info("runwire engine listening on %s", self.url)
            task_status.started(self.url)

    async def _handler(self, request: trio_websocket.WebSocketRequest) -> None:
        try:
            if request.path.split("?", 1)[0] != PATH:
                await request.reject(404, body=b"runwire speaks at /v1\n")
                return
            if self.door.connections >= self.door.limits.max_connections:
                await request.reject(503, body=b"too many connections\n")
                return
            ws = await request.accept()
        except trio_websocket.ConnectionClosed:
            return  # the client left (or reset) during the handshake: nobody to serve
        await Session(self.door, Connection(ws, Role.ENGINE)).serve()
