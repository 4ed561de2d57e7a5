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

from ._convert import from_json, to_json
from ._duration import parse_duration
from ._errors import InvalidPayloadError, WaitpointTimeoutError
from ._models import InputResult, PendingResult, WaitpointToken
from .runtime import TIMED_OUT, Backend, current_backend, require_run


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

    # --- waitpoint tokens ----------------------------------------------------------------

    async def create_token(self, timeout: float | str | None = None, *,
                           idempotency_key: str | None = None,
                           tags: list[str] | None = None,
                           client: Backend | None = None) -> WaitpointToken:
        """A waitpoint token: a run waits for it with :meth:`for_token`; it is completed
        with :meth:`complete_token` (from a task, a backend, or anyone holding its
        ``public_access_token``, whose scope is ``write:waitpoints:<id>``).

        Args:
            timeout: how long it may wait ("10s", "1h", "7d" or seconds); ``None``: no limit.
            idempotency_key: the same key gives the same token (a retried attempt, or a run
                resumed after a restart, waits for the token its first attempt made).
            tags: labels kept with the token.

        Inside a task the token belongs to the run (deleted with it by retention); from a
        backend it needs the API key. ``client`` (here, in :meth:`complete_token` and
        :meth:`retrieve_token`) makes the call through that client rather than the run or
        the client ``connect()`` bound to this context.
        """
        seconds = parse_duration(timeout, "timeout")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise TypeError("idempotency_key must be a string")
        if tags is not None and (not isinstance(tags, list)
                                 or not all(isinstance(t, str) for t in tags)):
            raise TypeError("tags must be a list of strings")
        raw = await current_backend(client).create_waitpoint(seconds, idempotency_key, tags or [])
        return WaitpointToken.from_wire(raw)

    def for_token(self, token: WaitpointToken | str, type: Any = None) -> PendingResult[Any]:
        """Wait until ``token`` is completed: the run is suspended as in an input stream's
        ``wait()`` (``WAITING``, its queue slot given back).

        Await it for an :class:`InputResult` (``ok=False`` with
        :class:`WaitpointTimeoutError` if the token times out first), or ``await
        wait.for_token(token).unwrap()`` for the data. ``type`` structures the data
        strictly (a mismatch gives ``ok=False`` with :class:`InvalidPayloadError`). A token
        completed earlier (even before an engine restart) answers at once.

        Raises:
            NotFoundError: no such token (when awaited).
        """
        token_id = _token_id(token)
        backend = require_run("wait.for_token()")

        async def result() -> InputResult[Any]:
            raw = await backend.wait_waitpoint(token_id)
            if raw is TIMED_OUT:
                return InputResult(ok=False, error=WaitpointTimeoutError(
                    f"waitpoint token {token_id} timed out"))
            try:
                return InputResult(ok=True, output=from_json(raw, type, "waitpoint data"))
            except InvalidPayloadError as exc:
                return InputResult(ok=False, error=exc)

        return PendingResult(result)

    async def complete_token(self, token: WaitpointToken | str, data: Any = None, *,
                             client: Backend | None = None) -> bool:
        """Complete ``token`` with ``data`` (JSON, or an attrs class/dataclass); whether
        this call completed it. The first completion wins: completing it again changes
        nothing and returns ``False``.

        Raises:
            NotFoundError: no such token. WaitpointTimeoutError: it timed out first.
            ForbiddenError: the credential may not complete it.
        """
        _, completed = await current_backend(client).complete_waitpoint(_token_id(token),
                                                                        to_json(data))
        return completed

    async def retrieve_token(self, token: WaitpointToken | str, *,
                             client: Backend | None = None) -> WaitpointToken:
        """The token's current state (``status``, ``output`` once completed)."""
        return WaitpointToken.from_wire(
            await current_backend(client).retrieve_waitpoint(_token_id(token)))


def _token_id(token: Any) -> str:
    token_id = token.id if isinstance(token, WaitpointToken) else token
    if not isinstance(token_id, str) or not token_id:
        raise TypeError("a waitpoint token is a WaitpointToken or its id (a non-empty string)")
    return token_id


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
