"""A loopback TCP proxy that breaks connections on purpose, for the resumption tests.

Theory of operation: :class:`FaultProxy` listens on ``127.0.0.1:0``. For each client it
accepts it opens a connection to the target port and forwards bytes both ways with two pump
tasks (a *link*). Faults come in three kinds, all of them abrupt: both sockets of a link are
closed with ``SO_LINGER`` 0, so each peer gets a TCP reset, never a clean goodbye.

* Random cuts: a cutter task waits until a link exists, sleeps a gap drawn from a seeded
  :class:`random.Random`, then cuts every live link. Because it waits for a link before it
  draws the gap, every connection lives at least ``min_gap`` seconds, so the peers make
  progress between cuts. It stops after ``max_cuts`` cuts or at :meth:`stop_cutting`.
* Pattern cuts (:meth:`cut_when`): a link is cut when a byte pattern passes engine -> client,
  *before* the bytes holding it are forwarded. That is how a test loses exactly one
  acknowledgement. Only that direction is readable: clients mask their websocket frames.
* Outages (:meth:`go_down` / :meth:`come_up`): while down, live links are cut and new
  connections are reset as soon as they are accepted, so the engine looks unreachable.

:meth:`hold` stops forwarding engine -> client (the client looks stalled) until
:meth:`release`. :meth:`stall` is a *silent link*: the live links stop forwarding in both
directions but their sockets stay open (no FIN, no reset), as when a NAT or a middlebox
loses its state or a cable is pulled; with ``new_links=True`` new connections are accepted
but stalled too (an engine that accepts and never answers). :meth:`unstall` lets them flow. the proxy's own sockets get small kernel buffers so a hold pushes back on
the engine quickly. The proxy never buffers more than one read (64 KiB) per direction.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

#: Bytes one pump reads at a time (and so the most the proxy holds per direction).
READ_SIZE = 65536
#: Kernel buffer size asked for on the proxy's sockets.
SOCKET_BUFFER = 65536


def _reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` so the peer gets a TCP reset (RST), not a FIN."""
    sock = stream.socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # already closed
        pass
    sock.close()


@attrs.define(eq=False)
class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    client: trio.SocketStream
    upstream: trio.SocketStream
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    flowing: trio.Event = attrs.field(factory=trio.Event)

    def cut(self) -> None:
        _reset(self.client)
        _reset(self.upstream)
        self.scope.cancel()


@attrs.define(eq=False)
class _PatternCut:
    pattern: bytes
    times: int
    every: int
    seen: int = 0

    def hit(self, window: bytes, fresh: int) -> bool:
        """Count occurrences in ``window`` that end at or after ``fresh`` (new bytes);
        ``True`` when one of them is an occurrence to cut on."""
        start = max(0, fresh - len(self.pattern) + 1)
        while self.times > 0 and (found := window.find(self.pattern, start)) >= 0:
            start = found + 1
            self.seen += 1
            if self.seen % self.every == 0:
                self.times -= 1
                return True
        return False


class FaultProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target_port``, cutting links on purpose.

    Args:
        target_port: the port to forward to (the engine's).
        seed: seeds the random gaps between cuts.
        max_cuts: how many random cuts to make in all (0: none).
        min_gap, max_gap: bounds, in seconds, of the gap before each random cut.
    """

    def __init__(self, target_port: int, *, seed: int, max_cuts: int = 0,
                 min_gap: float = 0.02, max_gap: float = 0.1) -> None:
        if not 0 < min_gap <= max_gap:
            raise ValueError("need 0 < min_gap <= max_gap")
        self.target_port = target_port
        self.port = 0
        self.max_cuts = max_cuts
        self.min_gap = min_gap
        self.max_gap = max_gap
        self.random_cuts = 0
        self.pattern_cuts = 0
        self.accepted = 0
        self.bytes_down = 0
        self._rng = random.Random(seed)
        self._links: set[_Link] = set()
        self._patterns: list[_PatternCut] = []
        self._down = False
        self._cutting = trio.CancelScope()
        self._changed = trio.Event()
        self._released = trio.Event()
        self._released.set()
        self._stall_new = False

    @property
    def url(self) -> str:
        """The websocket URL of the engine, through the proxy."""
        return f"ws://127.0.0.1:{self.port}/v1"

    @property
    def cuts(self) -> int:
        """Links cut so far, by any kind of fault except outages."""
        return self.random_cuts + self.pattern_cuts

    @property
    def live_links(self) -> int:
        return len(self._links)

    # --- controls ------------------------------------------------------------------------

    def stop_cutting(self) -> None:
        """No more random cuts (pattern cuts and outages still apply)."""
        self._cutting.cancel()

    def cut_when(self, pattern: bytes, *, times: int = 1, every: int = 1) -> None:
        """Cut the link ``times`` times when ``pattern`` passes engine -> client.

        With ``every=n`` only every n-th occurrence is cut, so the peers see the pattern
        pass between cuts (a retried request gets its answer).
        """
        self._patterns.append(_PatternCut(pattern, times, every))

    def cut_all(self) -> int:
        """Cut every live link now; how many were cut."""
        links = list(self._links)
        for link in links:
            link.cut()
        return len(links)

    def go_down(self) -> None:
        """Make the target unreachable: cut every link and reset new connections."""
        self._down = True
        self.cut_all()

    def come_up(self) -> None:
        """Forward new connections again."""
        self._down = False

    def hold(self) -> None:
        """Stop forwarding engine -> client until :meth:`release`."""
        self._released = trio.Event()

    def release(self) -> None:
        self._released.set()

    def stall(self, *, new_links: bool = False) -> int:
        """Stop forwarding on every live link, both ways, sockets left open; with
        ``new_links``, connections accepted from now on are stalled too. How many links
        were stalled."""
        self._stall_new = new_links
        links = list(self._links)
        for link in links:
            link.flowing = trio.Event()
        return len(links)

    def unstall(self) -> None:
        """Forward again on every link, and on new ones."""
        self._stall_new = False
        for link in self._links:
            link.flowing.set()

    async def wait_cuts(self, count: int) -> None:
        """Return once at least ``count`` links were cut."""
        while self.cuts < count:
            await self._wait_change()

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward until cancelled; reports the port it listens on."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        for listener in listeners:
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cutter)
            task_status.started(self.port)
            await trio.serve_listeners(self._serve, listeners, handler_nursery=nursery)

    async def _serve(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        if self._down:
            _reset(client)
            return
        try:
            upstream = await self._open_upstream()
        except OSError:
            _reset(client)
            return
        link = _Link(client, upstream)
        if not self._stall_new:
            link.flowing.set()
        self._links.add(link)
        self._notify()
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, client, upstream, False)
                    nursery.start_soon(self._pump, link, upstream, client, True)
        finally:
            self._links.discard(link)
            client.socket.close()
            upstream.socket.close()

    async def _open_upstream(self) -> trio.SocketStream:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        try:
            await sock.connect(("127.0.0.1", self.target_port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def _pump(self, link: _Link, src: trio.SocketStream, dst: trio.SocketStream,
                    down: bool) -> None:
        """Forward ``src`` to ``dst`` until EOF; ``down`` is engine -> client."""
        tail = b""  # the last bytes forwarded, so a pattern split across reads is found
        try:
            while True:
                if down:
                    await self._released.wait()
                await link.flowing.wait()
                data = await src.receive_some(READ_SIZE)
                await link.flowing.wait()  # (stalled meanwhile: these bytes wait too)
                if not data:
                    await dst.send_eof()
                    return
                if down and self._patterns:
                    window = tail + data
                    tail = window[-64:]
                    if self._matches(window, len(window) - len(data)):
                        self.pattern_cuts += 1
                        link.cut()
                        self._notify()
                        return
                if down:
                    self.bytes_down += len(data)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            link.cut()

    def _matches(self, window: bytes, fresh: int) -> bool:
        # a list, not a generator: every rule must count what passed, even after a hit
        return any([rule.hit(window, fresh) for rule in self._patterns])  # noqa: C419

    async def _cutter(self) -> None:
        with self._cutting:
            while self.random_cuts < self.max_cuts:
                while not self._links:
                    await self._wait_change()
                await trio.sleep(self._rng.uniform(self.min_gap, self.max_gap))
                if self.cut_all():
                    self.random_cuts += 1
                    self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()


@asynccontextmanager
async def open_fault_proxy(target_port: int, *, seed: int, max_cuts: int = 0,
                           min_gap: float = 0.02,
                           max_gap: float = 0.1) -> AsyncIterator[FaultProxy]:
    """Run a :class:`FaultProxy` for the duration of the block (see its arguments)."""
    proxy = FaultProxy(target_port, seed=seed, max_cuts=max_cuts, min_gap=min_gap,
                       max_gap=max_gap)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
