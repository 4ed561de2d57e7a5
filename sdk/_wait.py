"""``wait``: pause a run for a while without holding its queue slot; ``step``: do
non-deterministic work once, durably.

Both are durable (docs/guide.md, "Durable waits and steps"): the engine journals them, so a
run suspended in a wait survives engine restarts, and a step's result is kept for the replay.
"""

from __future__ import annotations

import datetime as _dt
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from ._duration import parse_duration
from .runtime import require_run


class _Wait:
    """``wait.for_(seconds=..)``, ``wait.until(datetime)``: the run is ``WAITING`` meanwhile."""

    async def for_(self, *, seconds: float = 0, minutes: float = 0, hours: float = 0,
                   days: float = 0) -> None:
        total = seconds + 60 * minutes + 3600 * hours + 86400 * days
        if total < 0:
            raise ValueError("wait.for_ needs a duration >= 0")
        await require_run("wait.for_()").suspend_for(total)

    async def duration(self, value: Any) -> None:
        """Wait for ``value`` ("10s", "5m", "2h", "7d" or seconds)."""
        await require_run("wait.duration()").suspend_for(parse_duration(value) or 0.0)

    async def until(self, when: _dt.datetime) -> None:
        """Wait until ``when`` (an aware datetime, or naive in UTC)."""
        if not isinstance(when, _dt.datetime):
            raise TypeError("wait.until takes a datetime")
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        delta = (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds()
        await require_run("wait.until()").suspend_for(max(0.0, delta))

wait = _Wait()

P = ParamSpec("P")
T = TypeVar("T")


async def step(name: str, fn: Callable[P, Awaitable[T]], /, *args: P.args,
               **kwargs: P.kwargs) -> T:
    """Run ``await fn(*args, **kwargs)`` once for the run's attempt and keep its result.

    Use it for non-deterministic or costly work (an LLM call, a request, a random choice,
    the time): when an engine restart replays the task from the top, ``step`` returns the
    stored result instead of running ``fn`` again, and the chunks ``fn`` wrote to the run's
    streams are not written again. The result must be JSON (it is returned as JSON comes
    back: a tuple becomes a list); it is returned the same way the first time.

    Steps are told apart by ``name`` and by how many steps of that name came before in the
    attempt, so the task must call them in the same order each time it runs.

    Raises:
        OutsideRunError: not inside a running task.
        TypeError: ``name`` is not a non-empty string, ``fn`` is not an async function, or
            its result is not JSON.
        ValueError: ``name`` is longer than 256 characters.
        PayloadTooLargeError: the result's JSON is over the engine's input-record limit
            (1 MiB by default).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"step name must be a non-empty string, not {name!r}")
    if len(name) > 256:
        raise ValueError("step name must be at most 256 characters")
    if not callable(fn):
        raise TypeError(f"step needs an async function, not {type(fn).__name__}")
    backend = require_run("step()")

    async def call() -> Any:
        result = fn(*args, **kwargs)
        if not inspect.isawaitable(result):
            raise TypeError(f"step {name!r}: {getattr(fn, '__name__', fn)!r} is not an async "
                            "function (its result is not awaitable)")
        return await result

    value: T = await backend.step(name, call)
    return value
