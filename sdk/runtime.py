"""The seam between the SDK and whatever executes it.

Theory of operation: every SDK call (``streams.append``, ``tasks.trigger``, ``cancel.send`` ...)
asks :func:`current_backend` for the object that carries it out. Inside a run that is the
engine's per-run backend (bound with :func:`bind_run` by the engine); outside a run it is the
:class:`~sdk.Client` bound by ``connect()``. Both implement :class:`Backend`; a run backend also
implements :class:`RunBackend`. This module is public so an engine can implement it without
the SDK ever importing the engine.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._duration import parse_duration as parse_duration
from ._errors import OutsideRunError
from ._models import Run, RunContext, RunHandle, TaskRunResult

if TYPE_CHECKING:  # both import this module
    from ._client import Client, Connector
    from ._task import Task


class ProducerSink(Protocol):
    """One producer's writing end of one output stream."""

    async def put(self, item: Any) -> None:
        """Queue one JSON-ready chunk; waits only when the producer's buffer is full."""

    async def put_many(self, items: list[Any]) -> None:
        """Queue several chunks; always a checkpoint."""

    def put_nowait(self, item: Any) -> None:
        """Queue one chunk without ever waiting (the buffer may grow past its mark)."""

    async def flush(self) -> None:
        """Wait until everything put so far is stored; raise what the engine refused."""

    def close(self) -> None:
        """No more puts; the stream is not ended by this (the run ends it)."""


class Backend(Protocol):
    """What the SDK needs from the thing that carries its calls out."""

    def resolve_target(self, target: str) -> str: ...
    def open_producer(self, run_id: str, key: str) -> ProducerSink: ...
    def spawn_producer(self, fn: Callable[[], Awaitable[None]]) -> Completion: ...
    def spawn_background(self, fn: Callable[[], Awaitable[None]]) -> None: ...
    # batches of JSON chunks from ``start``; an async generator, whose aclose() stops the read
    def read(self, run_id: str, key: str, start: int,
             timeout: float | None) -> AsyncGenerator[list[Any], None]: ...
    async def send(self, run_id: str, key: str, data: Any, idempotency_key: str | None) -> int: ...
    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any]) -> RunHandle: ...
    async def trigger_and_wait(self, task_id: str, payload: Any,
                               options: dict[str, Any]) -> TaskRunResult[Any]: ...
    # one (JSON payload, options) per item; options are per item (see _task.batch_items)
    async def batch_trigger_and_wait(self, task_id: str, items: list[tuple[Any, dict[str, Any]]],
                                     ) -> list[TaskRunResult[Any]]: ...
    async def retrieve(self, run_id: str) -> Run: ...
    async def cancel_run(self, run_id: str) -> None: ...
    def subscribe(self, run_id: str) -> AsyncIterator[Run]: ...
    # filters: task, status, tags, created_after, created_before, limit, cursor (the keywords
    # of the engine's RunService.list_runs)
    async def list_runs(self, filters: dict[str, Any]) -> tuple[list[Run], str | None]: ...
    # waitpoint tokens, as the wire's ``waitpoint`` objects
    async def create_waitpoint(self, timeout: float | None, idempotency_key: str | None,
                               tags: list[str]) -> dict[str, Any]: ...
    async def complete_waitpoint(self, token_id: str,
                                 data: Any) -> tuple[dict[str, Any], bool]: ...
    async def retrieve_waitpoint(self, token_id: str) -> dict[str, Any]: ...


class InputChannel(Protocol):
    """A run's view of one input stream (engine side)."""

    def on(self, handler: Callable[[Any], Any], fail_run: bool) -> Callable[[], None]: ...
    async def once(self, timeout: float | None) -> Any: ...
    async def wait(self, timeout: float | None, idempotency_key: str | None,
                   idempotency_key_ttl: float | None) -> Any: ...
    def peek(self) -> Any: ...
    # the record type: the run refuses records that ``check`` raises InvalidPayloadError for
    def declare(self, check: Callable[[Any], Any]) -> None: ...


class RunBackend(Backend, Protocol):
    """A :class:`Backend` that is also inside a run."""

    @property
    def context(self) -> RunContext:
        """The current attempt's context."""

    def input(self, key: str) -> InputChannel: ...
    def metadata_get(self, key: str) -> Any: ...
    def metadata_set(self, key: str, value: Any) -> None: ...
    def metadata_all(self) -> dict[str, Any]: ...
    async def suspend_for(self, seconds: float) -> None: ...
    # the data the token was completed with, or TIMED_OUT; suspended meanwhile
    async def wait_waitpoint(self, token_id: str) -> Any: ...
    async def step(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any: ...
    async def create_token(self, scopes: list[str], expires_in: float) -> str: ...
    async def legacy_stream(self, key: str, source: Any) -> AsyncIterator[Any]: ...


class Completion:
    """The end of a background job (a pipe, a writer): success or the error it raised.

    ``observed`` tells whether the error reached the task (through :meth:`wait` or a pipe's
    ``.stream``); an engine fails a run whose producer failed unobserved, so a failed pipe
    never leaves a run ``COMPLETED`` with part of its data unless the task caught the error.
    """

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._error: BaseException | None = None
        self.observed = False

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def error(self) -> BaseException | None:
        """The error the job ended with (``None`` while it runs, or if it succeeded)."""
        return self._error

    def set_result(self) -> None:
        self._done.set()

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> None:
        """Wait for the job; raise the error it ended with, if any."""
        await self._done.wait()
        if self._error is not None:
            self.observed = True
            raise self._error


class _TimedOut:
    def __repr__(self) -> str:
        return "TIMED_OUT"


#: What a run backend's ``once``/``wait`` returns when the timeout passed without a record.
TIMED_OUT: Any = _TimedOut()

_current_run: contextvars.ContextVar[RunBackend | None] = contextvars.ContextVar(
    "runwire_run", default=None)
_current_client: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "runwire_client", default=None)


def bind_run(backend: RunBackend | None) -> contextvars.Token[RunBackend | None]:
    """Make ``backend`` the current run for this task (and tasks it starts). Engine use."""
    _current_client.set(None)
    return _current_run.set(backend)


def bind_client(client: Backend | None) -> contextvars.Token[Backend | None]:
    """Make ``client`` the backend for SDK calls made outside a run."""
    return _current_client.set(client)


def unbind_client(token: contextvars.Token[Backend | None]) -> None:
    _current_client.reset(token)


def current_run() -> RunBackend | None:
    """The run this code executes in, or ``None`` outside a run."""
    return _current_run.get()


def current_backend(client: Backend | None = None) -> Backend:
    """``client`` if given (an explicit client, no context needed); else the run backend
    inside a run, else the client bound by ``connect()``.

    Raises:
        OutsideRunError: neither a run nor a ``connect()`` is active here.
    """
    if client is not None:
        if isinstance(client, type) or not callable(getattr(client, "open_producer", None)):
            raise TypeError(f"client must be a runwire Client (from connect(...)), "
                            f"not {type(client).__name__}")
        return client
    backend = _current_run.get() or _current_client.get()
    if backend is None:
        raise OutsideRunError(
            "no runwire run or client here: call this inside a task, or inside "
            "'async with connect(...)' / 'async with engine.connect()'")
    return backend


def require_run(what: str) -> RunBackend:
    """The current run backend; raise a clear error for calls that only work inside a run."""
    backend = _current_run.get()
    if backend is None:
        raise OutsideRunError(f"{what} can only be called inside a running task")
    return backend


@contextlib.contextmanager
def collapse_exception_groups() -> Iterator[None]:
    """At a public boundary: re-raise a group holding one exception as that exception.

    Inside, nurseries stay strict (every error is an ExceptionGroup); users of ``connect`` and
    ``open_engine`` get the error itself.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        context = inner.__context__  # keep the error's own cause and context, not the group
        try:
            raise inner
        finally:
            inner.__context__ = context
            del inner, context


def open_client(connector: Connector, token: str, *, reconnect_timeout: float = 60.0,
                connect_timeout: float = 10.0, producer_buffer: int = 8192,
                ping_interval: float | None = 3.0, ping_timeout: float = 3.0,
                request_timeout: float | None = None,
                ) -> contextlib.AbstractAsyncContextManager[Client]:
    """A :class:`~runwire.Client` over ``connector`` for an ``async with`` block.

    For an engine's in-process clients: ``connector(nursery)`` returns a connected
    :class:`runwire.transport.Connection` (for example one end of
    :func:`runwire.transport.memory_connection_pair`). The options are those of
    :func:`runwire.connect`.
    """
    from ._client import open_client as _open_client  # the client imports this module

    return _open_client(connector, token, reconnect_timeout=reconnect_timeout,
                        connect_timeout=connect_timeout, producer_buffer=producer_buffer,
                        ping_interval=ping_interval, ping_timeout=ping_timeout,
                        request_timeout=request_timeout)


def tasks_in(module: object) -> list[Task[Any, Any]]:
    """Every task defined in ``module`` (what ``runwire serve --tasks MODULE`` registers)."""
    from ._task import tasks_in as _tasks_in

    return _tasks_in(module)
