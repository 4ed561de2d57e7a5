"""An engine on trio in a thread of its own, for asyncio services (FastAPI, Starlette, ...).

Theory of operation: the engine runs on trio; an asyncio service cannot run it in its own
event loop. :class:`EngineThread` runs ``open_engine(...)`` under ``trio.run`` in a daemon
thread, serving a websocket on a loopback port, and the service reaches it through the
asyncio client (``engine.connect()`` = ``runwire.connect(engine.url, api_key=...)``). Start
and stop it with the app's lifespan::

    engine = EngineThread([generate], store="sqlite:///runs.db")

    @asynccontextmanager
    async def lifespan(app):
        async with engine, engine.connect() as client:
            app.state.client = client
            yield

Stopping cancels the engine like any ``open_engine`` block that ends: runs still in flight
are not finished by it; they stay stored as they were (``EXECUTING``, ``QUEUED`` ...) and the
next engine opened on the same store takes them up by the recovery rules
(``engine/service/_recovery.py``: retried if attempts are left, else ``CRASHED``). With the
memory store they are lost with the process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import anyio
import trio

from runwire import Client, Task, connect

from ._engine import ServingEngine, open_engine
from ._limits import Limits
from .service import generate_api_key
from .store import Store


class EngineThread:
    """An engine serving on ``host:port`` from a thread of its own (see the module docstring).

    Args:
        tasks: the tasks the engine runs.
        store: ``"memory"``, ``"sqlite:///path.db"`` or a ``Store``.
        api_key: the engine's key (generated if not given: :attr:`api_key`).
        host: where it listens (loopback by default).
        port: the port (0: a free one, see :attr:`port` once started).
        drain_timeout: seconds a finishing run's producers may take to drain.
        limits: the engine's limits.
        start_timeout: seconds :meth:`start` waits for the engine to listen.

    Raises:
        TypeError: an item of ``tasks`` is not a :class:`~runwire.Task`, or ``store`` is
            neither a URL nor a ``Store`` (a malformed URL is refused by :meth:`start`).
    """

    def __init__(self, tasks: Iterable[Task[Any, Any]] = (), *, store: Any = "memory",
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 drain_timeout: float = 60.0, limits: Limits | None = None,
                 grace_period: float = 0.0, start_timeout: float = 30.0) -> None:
        self.api_key = api_key if api_key is not None else generate_api_key()
        self._tasks = list(tasks)
        for task in self._tasks:  # here, not in the engine's thread at start()
            if not isinstance(task, Task):
                raise TypeError(f"tasks must be Task objects made with @task, not {task!r}")
        if not isinstance(store, (str, Store)):
            raise TypeError(f"store must be a URL such as 'sqlite:///runs.db', or a Store, "
                            f"not {type(store).__name__}")
        self._options: dict[str, Any] = {"store": store, "host": host, "port": port,
                                         "drain_timeout": drain_timeout, "limits": limits,
                                         "grace_period": grace_period}
        self._start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self.engine: ServingEngine | None = None

    @property
    def url(self) -> str:
        """``ws://host:port/v1`` of the running engine."""
        if self.engine is None:
            raise RuntimeError("the engine thread is not running; call start() first")
        return self.engine.url

    @property
    def port(self) -> int:
        if self.engine is None:
            raise RuntimeError("the engine thread is not running; call start() first")
        return self.engine.port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.engine is not None

    def start(self) -> None:
        """Start the engine in its thread; returns once it listens.

        Raises:
            RuntimeError: already started.
            TimeoutError: it did not listen within ``start_timeout``.
            Exception: what opening the engine raised (a bad store URL, a port in use ...).
        """
        if self._thread is not None:
            raise RuntimeError("the engine thread was already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._main, name="runwire-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError(f"the engine did not start within {self._start_timeout} s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the engine and wait for its thread (safe to call twice, or before start).

        Runs in flight stay stored as they are; see the module docstring.
        """
        thread, token, stop = self._thread, self._token, self._stop
        if thread is None:
            return
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the engine thread did not stop within {timeout} s")
        self._thread = None
        self.engine = None

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to start(), or logged by the thread
            if not self._ready.is_set():
                self._error = exc
            else:
                raise
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_engine(self._tasks, api_key=self.api_key, **self._options) as engine:
            self.engine = engine
            self._ready.set()
            await self._stop.wait()

    def connect(self, access_token: str | None = None,
                **options: Any) -> contextlib.AbstractAsyncContextManager[Client]:
        """A client of this engine, asyncio or trio: ``runwire.connect(url, api_key=...)``,
        or with ``access_token`` a client with only that token's rights.

        Raises:
            RuntimeError: the engine thread is not running.
        """
        if access_token is not None:
            return connect(self.url, access_token=access_token, **options)
        return connect(self.url, api_key=self.api_key, **options)

    # an ``async with`` for lifespans: start and stop without blocking the event loop
    async def __aenter__(self) -> EngineThread:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await anyio.to_thread.run_sync(self.stop)

    def __enter__(self) -> EngineThread:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
