"""The Engine: composes the store, the broker, the service and the doors, and owns the nursery.

Theory of operation: ``open_engine`` opens one nursery. In it run the service (which owns
its run actors and recovers stored runs in the background once it reports ready), the
retention sweeper, and the websocket server when a host or port is given. Requests flow one
way through the layers (``docs/architecture.md``): door -> service -> run -> store, with the
broker beside the store saying who owns which live run. This module builds them and wires them together; it holds
no run state of its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, overload

import attrs
import trio

from runwire import Client, Task
from runwire.runtime import collapse_exception_groups, open_client
from runwire.transport import Connection, memory_connection_pair

from ._limits import Limits
from .broker import open_broker
from .door import Door, EngineServer, HttpDoor, Session
from .run import RunRecord, RunStatistics
from .service import Auth, DurableStreams, RunService, SharedDurableStreams, generate_api_key
from .store import Store, open_store

log = logging.getLogger("runwire.engine")


@attrs.frozen
class EngineStatistics:
    """What an engine holds now (for tests and operators).

    Attributes:
        connections: open client connections (websocket, HTTP and in-process).
        open_requests: requests under way on them (reads and subscriptions included; an HTTP
            request counts from its head to the end of its answer, an SSE response included).
        live_runs: runs executing or waiting on this engine.
        tasks: registered tasks.
    """

    connections: int
    open_requests: int
    live_runs: int
    tasks: int


def check_grace_period(value: Any) -> None:
    """Raises: ValueError: not a finite number of seconds >= 0."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"grace_period must be a finite number of seconds >= 0, not {value!r}")


class Engine:
    """A run engine. Make one with :func:`open_engine`."""

    def __init__(self, tasks: Iterable[Task[Any, Any]], store: Store, api_key: str, *,
                 drain_timeout: float = 60.0, limits: Limits | None = None,
                 anonymous_streams: bool = False) -> None:
        self.limits = limits or Limits()
        self.store = store
        self.api_key = api_key
        self._wall0 = time.time()
        self._trio0 = 0.0
        self.auth = Auth(api_key, clock=self.clock)
        self.broker = open_broker(store)
        self.service = RunService(tasks, store, self.broker, self.auth, self.limits, self.clock,
                                  drain_timeout=drain_timeout)
        self.door = Door(self.service, self.auth, self.limits)
        self.streams = (SharedDurableStreams(store, self.limits, self.clock, self.broker)
                        if self.broker.shared else DurableStreams(store, self.limits,
                                                                  self.clock))
        self.http = HttpDoor(self.door, self.streams, self.clock,
                             anonymous_streams=anonymous_streams)
        self._server: EngineServer | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped = False

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks by id."""
        return self.service.tasks

    @property
    def url(self) -> str | None:
        """The websocket URL clients connect to; ``None`` without a host or port."""
        return self._server.url if self._server else None

    @property
    def http_url(self) -> str | None:
        """The HTTP door's base URL (same port as :attr:`url`); ``None`` without one."""
        return self._server.http_url if self._server else None

    @property
    def port(self) -> int | None:
        """The port it listens on (the one picked for ``port=0``); ``None`` without one."""
        return self._server.port if self._server else None

    def clock(self) -> float:
        """Wall-clock seconds, advanced by trio's clock (so a mock clock moves it in tests)."""
        return self._wall0 + (trio.current_time() - self._trio0)

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(connections=self.door.connections,
                                open_requests=self.door.open_requests,
                                live_runs=self.broker.statistics().live_runs,
                                tasks=len(self.service.tasks))

    def run_statistics(self, run_id: str) -> RunStatistics | None:
        """What a run executing here holds now; ``None`` if it is not live here."""
        actor = self.broker.owner(run_id)
        return actor.statistics() if actor is not None else None

    def live_run_statistics(self) -> list[RunStatistics]:
        """:meth:`run_statistics` of every run executing here."""
        return [actor.statistics() for actor in self.broker.actors()]

    # --- run operations, for the service that embeds the engine -----------------------------

    async def trigger(self, task_id: str, payload: Any,
                      options: dict[str, Any] | None = None) -> RunRecord:
        """Start a run of ``task_id`` (see :meth:`RunService.trigger`)."""
        return await self.service.trigger(task_id, payload, options)

    async def get_record(self, run_id: str) -> RunRecord:
        """The run, live or stored. Raises: NotFoundError."""
        return await self.service.get_record(run_id)

    async def wait_finished(self, run_id: str) -> RunRecord:
        """Wait until the run has finished; its final record."""
        return await self.service.wait_finished(run_id)

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a live run. Raises: RunFinishedError, NotFoundError."""
        await self.service.cancel_run(run_id)

    async def send_input(self, run_id: str, key: str, data: Any,
                         idempotency_key: str | None = None) -> int:
        """Send one record to input stream ``key`` of a live run; its index."""
        return await self.service.send_input(run_id, key, data, idempotency_key)

    async def append(self, run_id: str, key: str, producer: str, seq: int,
                     items: list[Any]) -> int:
        """Append a producer's numbered batch; the producer's next sequence number."""
        return await self.service.append(run_id, key, producer, seq, items)

    def issue_token(self, scopes: Any, expires_in: float) -> tuple[str, float]:
        """A public access token for ``scopes``; and its expiry (wall-clock seconds)."""
        return self.service.issue_token(scopes, expires_in)

    async def sweep(self) -> int:
        """Delete runs that finished more than ``limits.retention`` seconds ago, and durable
        streams expired or idle that long; how many runs."""
        await self.streams.sweep()
        return await self.service.sweep()

    # --- lifetime ------------------------------------------------------------------------

    async def run(self, *, host: str | None, port: int | None,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: the service (after recovery), the sweeper, and the websocket
        server if a host or port is given."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._trio0 = trio.current_time()
            await self.store.open()
            await self.streams.load()
            await nursery.start(self.service.run)
            nursery.start_soon(self._sweep_loop, name="sweep_loop")
            if host is not None or port is not None:
                server = EngineServer(self.door, host or "127.0.0.1", port or 0, self.http)
                await nursery.start(server.run)
                self._server = server
            task_status.started()

    async def stop(self, grace_period: float = 0.0) -> int:
        """Stop gracefully (also what leaving ``open_engine``'s block does).

        No new run starts (a trigger stores it ``QUEUED`` for the next engine); runs still
        executing get ``grace_period`` seconds to finish while the engine keeps serving
        reads, sends and subscriptions; then every live run is handed back to the store
        without a final status, and the next engine on the store resumes it as the same
        attempt (``engine/service/_recovery.py``, rule 4). Calling it again does nothing.
        Returns how many runs were handed back.
        """
        check_grace_period(grace_period)
        if self._stopped:
            return 0
        self._stopped = True
        try:
            return await self.service.stop(grace_period)
        except Exception:  # the stop must end; what was not handed back is recovered anyway
            log.exception("graceful stop failed; live runs are left as stored")
            return 0

    def hurry(self) -> None:
        """End a graceful stop's grace period now (a second SIGINT/SIGTERM)."""
        self.service.hurry()

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(self.limits.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # a full disk or a locked file must not stop the engine
                log.exception("retention sweep failed; it will be tried again")

    async def serve_connection(self, conn: Connection) -> None:
        """Run one session on a connection (websocket or in-process)."""
        await Session(self.door, conn).serve()

    @asynccontextmanager
    async def connect(self, token: str | None = None) -> AsyncIterator[Client]:
        """An in-process client: the same SDK calls, over an in-memory connection."""
        if self._nursery is None:
            raise RuntimeError("the engine is not running")
        nursery = self._nursery

        async def connector(_: object) -> Connection:
            client_end, engine_end = memory_connection_pair()
            nursery.start_soon(self.serve_connection, engine_end)
            return client_end

        async with open_client(connector, token or self.api_key) as client:
            yield client


class ServingEngine(Engine):
    """An :class:`Engine` opened with a host or port: :attr:`url` and :attr:`port` are set."""

    @property
    def url(self) -> str:
        url = super().url
        assert url is not None, "open_engine returns it once it listens"
        return url

    @property
    def http_url(self) -> str:
        url = super().http_url
        assert url is not None, "open_engine returns it once it listens"
        return url

    @property
    def port(self) -> int:
        port = super().port
        assert port is not None, "open_engine returns it once it listens"
        return port


@overload
def open_engine(tasks: Iterable[Task[Any, Any]] = (), *, store: str | Store = ...,
                api_key: str | None = ..., host: str | None = ..., port: int,
                drain_timeout: float = ..., limits: Limits | None = ...,
                anonymous_streams: bool = ..., grace_period: float = ...
                ) -> AbstractAsyncContextManager[ServingEngine]: ...
@overload
def open_engine(tasks: Iterable[Task[Any, Any]] = (), *, store: str | Store = ...,
                api_key: str | None = ..., host: str, port: int | None = ...,
                drain_timeout: float = ..., limits: Limits | None = ...,
                anonymous_streams: bool = ..., grace_period: float = ...
                ) -> AbstractAsyncContextManager[ServingEngine]: ...
@overload
def open_engine(tasks: Iterable[Task[Any, Any]] = (), *, store: str | Store = ...,
                api_key: str | None = ..., host: None = ..., port: None = ...,
                drain_timeout: float = ..., limits: Limits | None = ...,
                anonymous_streams: bool = ..., grace_period: float = ...
                ) -> AbstractAsyncContextManager[Engine]: ...
def open_engine(tasks: Iterable[Task[Any, Any]] = (), *, store: str | Store = "memory://",
                api_key: str | None = None, host: str | None = None,
                port: int | None = None, drain_timeout: float = 60.0,
                limits: Limits | None = None, anonymous_streams: bool = False,
                grace_period: float = 0.0) -> AbstractAsyncContextManager[Engine]:
    """Run an engine for the duration of the block.

    Args:
        tasks: the tasks it can run.
        store: ``memory://``, ``sqlite:///path``, or a :class:`~runwire.engine.store.Store`.
        api_key: the secret key; made (and logged once) when not given.
        host, port: serve websockets there (``port=0`` picks a free port; ``eng.url``);
            with neither, only in-process clients (``eng.connect()``) reach it.
        drain_timeout: seconds a finished task's producers get to finish.
        limits: sizes and counts the engine enforces.
        anonymous_streams: let HTTP requests without credentials use free-standing durable
            streams (``/v1/stream/...``); off by default.
        grace_period: when the block is left, a graceful stop (:meth:`Engine.stop`): runs
            still executing get this many seconds to finish, then every live run is handed
            back to the store for the next engine (0, the default: at once).

    Raises:
        StoreError: the store cannot be opened (a bad URL, a file in use by another engine).
    """
    return _open_engine(tasks, store=store, api_key=api_key, host=host, port=port,
                        drain_timeout=drain_timeout, limits=limits,
                        anonymous_streams=anonymous_streams, grace_period=grace_period)


@asynccontextmanager
async def _open_engine(tasks: Iterable[Task[Any, Any]], *, store: str | Store,
                       api_key: str | None, host: str | None, port: int | None,
                       drain_timeout: float, limits: Limits | None,
                       anonymous_streams: bool, grace_period: float) -> AsyncIterator[Engine]:
    check_grace_period(grace_period)
    if api_key is None:
        api_key = generate_api_key()
        log.warning("no API key given; generated one for this engine: %s", api_key)
    if not isinstance(store, (str, Store)):
        raise TypeError(f"store must be a URL such as 'memory://' or 'sqlite:///runwire.db', "
                        f"or a Store, not {type(store).__name__}")
    backing = open_store(store) if isinstance(store, str) else store
    serving = host is not None or port is not None
    kind = ServingEngine if serving else Engine
    engine = kind(tasks, backing, api_key, drain_timeout=drain_timeout, limits=limits,
                  anonymous_streams=anonymous_streams)
    try:
        with collapse_exception_groups():
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: engine.run(
                    host=host, port=port, task_status=task_status))
                try:
                    yield engine
                finally:
                    with trio.CancelScope(shield=True):
                        await engine.stop(grace_period)
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await backing.aclose()
