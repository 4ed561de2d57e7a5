"""Defining tasks (``@task``, ``@schema_task``) and triggering them (``tasks.*``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, Union, cast, overload

import anyio

from ._convert import check_json, from_json, to_json
from ._errors import AsyncioInTaskError
from ._models import Queue, RetryPolicy, RunContext, RunHandle, TaskRunResult
from .runtime import Backend, current_backend

if TYPE_CHECKING:
    from typing import TypeAlias

#: The payload a task takes; contravariant, as a task only ever consumes it (a task taking
#: ``dict | None`` is a task that may be triggered without a payload).
P = TypeVar("P", contravariant=True)
#: What a task returns.
R = TypeVar("R")
#: The same, for functions and protocols (where variance has no meaning, or must be inferred).
Payload = TypeVar("Payload")
Output = TypeVar("Output")

#: ``async def fn(payload, ctx)`` or ``async def fn(payload)``.
TaskFunction: TypeAlias = Union[Callable[[Payload, RunContext], Awaitable[Output]],
                                Callable[[Payload], Awaitable[Output]]]


class Task(Generic[P, R]):
    """A registered async function. Call ``trigger``/``trigger_and_wait`` to run it.

    ``Task[P, R]``: the function takes a payload ``P`` and returns ``R``.

    Args:
        id: the task id runs are triggered by.
        fn: ``async def fn(payload)`` or ``async def fn(payload, ctx)``.
        retry: how failed attempts are retried (default: no retry).
        queue: the queue whose concurrency limit applies (default: none).
        max_duration: seconds an attempt may run before the run is ``TIMED_OUT``.
        schema: a type the payload is structured into (``schema_task``).
    """

    def __init__(self, id: str, fn: TaskFunction[P, R], *, retry: RetryPolicy | None = None,
                 queue: Queue | None = None, max_duration: float | None = None,
                 schema: object = None) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError("task id must be a non-empty string")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"task {id!r}: the function must be 'async def'")
        if max_duration is not None and not (isinstance(max_duration, (int, float))
                                             and max_duration > 0):
            raise ValueError("max_duration must be a positive number of seconds")
        self.id = id
        self.fn: TaskFunction[P, R] = fn
        self.retry = retry or RetryPolicy()
        self.queue = queue
        self.max_duration = max_duration
        self.schema = schema
        self._takes_ctx = _positional_count(fn) >= 2
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", id)

    def __repr__(self) -> str:
        return f"<Task {self.id!r}>"

    def validate(self, payload: Any) -> Any:
        """The payload structured into the schema (engine use at trigger time).

        Raises:
            InvalidPayloadError: with the path of the offending field.
        """
        return from_json(payload, self.schema, "payload")

    async def invoke(self, payload: Any, ctx: RunContext) -> Any:
        """Run the function once and return its JSON-ready output (engine use)."""
        value = self.validate(payload)
        fn: Callable[..., Awaitable[R]] = self.fn  # its arity was counted in __init__
        try:
            result = await (fn(value, ctx) if self._takes_ctx else fn(value))
        except RuntimeError as exc:
            if "no running event loop" not in str(exc):
                raise
            raise AsyncioInTaskError(
                f"task {self.id!r} called asyncio-only code ({exc}): runwire runs tasks on "
                "trio, where asyncio has no event loop. Use anyio instead (anyio.sleep, "
                "httpx, the OpenAI and Anthropic async clients all run on trio), or run the "
                "asyncio code with 'await runwire.run_asyncio(fn, *args)'") from exc
        return to_json(result)

    # Without a payload (it is None) only where the task accepts None, or is untyped.
    @overload
    async def trigger(self, payload: P, *, client: Backend | None = None, **options: Any) -> RunHandle: ...
    @overload
    async def trigger(self: Task[None, Any], *, client: Backend | None = None,
                      **options: Any) -> RunHandle: ...

    async def trigger(self, payload: Any = None, *, client: Backend | None = None,
                      **options: Any) -> RunHandle:
        """Start a run and return at once (a child run when called inside a task).

        ``client`` sends it through that client instead of the one ``connect()`` bound.

        Raises:
            InvalidPayloadError: a ``schema_task``'s payload does not fit its schema
                (checked here, before anything is sent; the engine checks again).
        """
        return await current_backend(client).trigger(self.id, self._payload(payload), options)

    def _payload(self, payload: Any) -> Any:
        """The JSON of ``payload``, checked against the schema when there is one."""
        return check_json(payload, self.schema, "payload")

    @overload
    async def trigger_and_wait(self, payload: P, *, client: Backend | None = None,
                               **options: Any) -> TaskRunResult[R]: ...
    @overload
    async def trigger_and_wait(self: Task[None, R], *, client: Backend | None = None,
                               **options: Any) -> TaskRunResult[R]: ...

    async def trigger_and_wait(self, payload: Any = None, *, client: Backend | None = None,
                               **options: Any) -> TaskRunResult[R]:
        """Start a run and wait for its result.

        ``result.output`` is the task's output as it travels, JSON: the same value for
        JSON-like outputs (``dict``, ``list``, ``str`` ...), the unstructured form of an
        attrs class, dataclass, enum or datetime.
        """
        return await current_backend(client).trigger_and_wait(
            self.id, self._payload(payload), options)

    async def batch_trigger_and_wait(self, payloads: list[P] | tuple[P, ...] | list[BatchItem],
                                     *, client: Backend | None = None,
                                     **options: Any) -> list[TaskRunResult[R]]:
        """Start one run per item; results in item order.

        Each item is a bare payload, or ``{"payload": P, "options": {...}}`` (see
        :func:`batch_items` for the rule). ``options`` given here apply to every item; an
        item's own options override them; an ``idempotency_key`` given here becomes
        ``"<key>:<index>"`` per item.
        """
        items = batch_items(payloads, options)
        return await current_backend(client).batch_trigger_and_wait(
            self.id, [(self._payload(p), o) for p, o in items])


#: A batch item with its own options: ``{"payload": P, "options": {...}}``.
BatchItem = dict[str, Any]

_ITEM_KEYS = (frozenset({"payload"}), frozenset({"payload", "options"}))


def batch_items(items: Any, options: dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """``(payload, options)`` per batch item.

    The rule: a ``dict`` whose keys are exactly ``payload`` and ``options`` (or ``payload``
    alone), with ``options`` a dict, is an item; anything else is a bare payload. A payload
    that itself is a dict with exactly those keys must be wrapped: ``{"payload": it}``.

    Raises:
        TypeError: ``items`` is not a list or tuple, or an item's options are not a dict.
    """
    if not isinstance(items, (list, tuple)):
        raise TypeError("batch_trigger_and_wait takes a list of payloads or "
                        "{'payload': ..., 'options': {...}} items")
    key = options.get("idempotency_key")
    found = []
    for index, item in enumerate(items):
        payload, own = item, cast(dict[str, Any], {})
        if isinstance(item, dict) and frozenset(item) in _ITEM_KEYS:
            payload, own = item["payload"], item.get("options") or {}
            if not isinstance(own, dict):
                raise TypeError(f"batch item {index}: 'options' must be a dict")
        merged = {**options, **own}
        if key is not None and "idempotency_key" not in own:
            merged["idempotency_key"] = f"{key}:{index}"
        found.append((payload, merged))
    return found


async def run_asyncio(fn: Callable[..., Awaitable[Output]], *args: Any) -> Output:
    """``await fn(*args)`` on an asyncio event loop, from a task (which runs on trio).

    For asyncio-only libraries (aiohttp, ``asyncio.sleep`` ...): the coroutine runs on an
    event loop of its own in a worker thread, and its result (or exception) comes back.
    Cancelling the caller cancels the asyncio task (``asyncio.CancelledError`` inside
    ``fn``); cancelled before that loop is up, ``fn`` is never called. Values cross threads: pass and return
    plain data, not objects bound to either loop.

    Raises:
        TypeError: ``fn`` is not an async function.
        Exception: what ``fn`` raised.
    """
    if not callable(fn):
        raise TypeError(f"run_asyncio needs an async function, not {type(fn).__name__}")
    # the caller may be cancelled before the worker's loop is up: the lock orders that with
    # the loop's start, so fn then never runs (an abandoned thread would run it unseen)
    lock = threading.Lock()
    state: dict[str, Any] = {"cancelled": False}

    async def main() -> Output:
        with lock:
            if state["cancelled"]:
                raise asyncio.CancelledError
            state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
        coro = fn(*args)
        if not inspect.isawaitable(coro):
            raise TypeError(f"run_asyncio needs an async function; {fn!r} returned "
                            f"{type(coro).__name__}")
        return await coro

    def worker() -> Output:
        return asyncio.run(main())  # main() made here: never an un-awaited coroutine

    try:
        return await anyio.to_thread.run_sync(worker, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        with lock:
            state["cancelled"] = True
            loop, task = state.get("loop"), state.get("task")
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: fn is over anyway
                loop.call_soon_threadsafe(task.cancel)
        raise


def _positional_count(fn: Callable[..., Any]) -> int:
    params = inspect.signature(fn).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds)


class TaskDecorator(Protocol):
    """What ``task(...)`` returns: applied to ``async def fn(payload: P[, ctx]) -> R``, a
    ``Task[P, R]``."""

    @overload
    def __call__(self, fn: Callable[[Payload, RunContext], Awaitable[Output]], /
                 ) -> Task[Payload, Output]: ...
    @overload
    def __call__(self, fn: Callable[[Payload], Awaitable[Output]], /
                 ) -> Task[Payload, Output]: ...


class SchemaTaskDecorator(Protocol[Payload]):
    """What ``schema_task(..., schema=S)`` returns: applied to a function whose payload is
    an ``S``, a ``Task[S, R]``."""

    @overload
    def __call__(self, fn: Callable[[Payload, RunContext], Awaitable[Output]], /
                 ) -> Task[Payload, Output]: ...
    @overload
    def __call__(self, fn: Callable[[Payload], Awaitable[Output]], /
                 ) -> Task[Payload, Output]: ...


def task(id: str, *, retry: RetryPolicy | None = None, queue: Queue | None = None,
         max_duration: float | None = None) -> TaskDecorator:
    """Decorator: register an async function as a task (see :class:`Task`)."""

    def decorate(fn: TaskFunction[Any, Any]) -> Task[Any, Any]:
        return Task(id, fn, retry=retry, queue=queue, max_duration=max_duration)

    return decorate


@overload
def schema_task(id: str, *, schema: type[Payload], retry: RetryPolicy | None = None,
                queue: Queue | None = None,
                max_duration: float | None = None) -> SchemaTaskDecorator[Payload]: ...
@overload
def schema_task(id: str, *, schema: object, retry: RetryPolicy | None = None,
                queue: Queue | None = None,
                max_duration: float | None = None) -> SchemaTaskDecorator[Any]: ...


def schema_task(id: str, *, schema: object, retry: RetryPolicy | None = None,
                queue: Queue | None = None,
                max_duration: float | None = None) -> SchemaTaskDecorator[Any]:
    """Like :func:`task`, but the payload is structured into ``schema`` with cattrs.

    A payload that does not fit fails the trigger with ``InvalidPayloadError`` naming the field.
    With a class as ``schema`` the task's payload is typed as an instance of it (other type
    forms, such as ``Item | None``, type it ``Any``).
    """

    def decorate(fn: TaskFunction[Any, Any]) -> Task[Any, Any]:
        return Task(id, fn, retry=retry, queue=queue, max_duration=max_duration, schema=schema)

    return decorate


class _Tasks:
    """``tasks``: trigger any task by id."""

    async def trigger(self, task_id: str, payload: Any = None, *, client: Backend | None = None,
                      **options: Any) -> RunHandle:
        return await current_backend(client).trigger(task_id, to_json(payload), options)

    async def trigger_and_wait(self, task_id: str, payload: Any = None, *,
                               client: Backend | None = None, **options: Any) -> TaskRunResult[Any]:
        return await current_backend(client).trigger_and_wait(task_id, to_json(payload),
                                                              options)

    async def batch_trigger_and_wait(self, task_id: str, payloads: list[Any], *,
                                     client: Backend | None = None,
                                     **options: Any) -> list[TaskRunResult[Any]]:
        """Items as for :meth:`Task.batch_trigger_and_wait`."""
        return await current_backend(client).batch_trigger_and_wait(
            task_id, [(to_json(p), o) for p, o in batch_items(payloads, options)])


tasks = _Tasks()


def tasks_in(module: Any) -> list[Task[Any, Any]]:
    """Every :class:`Task` defined at the top level of ``module``."""
    return [v for v in vars(module).values() if isinstance(v, Task)]
