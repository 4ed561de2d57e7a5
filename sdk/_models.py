"""Plain data the SDK hands out: run statuses, the Run record, results and handles."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar, cast

import attrs

from ._errors import RunwireError, TaskRunError

T = TypeVar("T")


class RunStatus(str, enum.Enum):
    """Where a run is in its life; the last five are final."""

    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    CRASHED = "CRASHED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED,
                            RunStatus.CRASHED, RunStatus.TIMED_OUT})


@attrs.frozen
class RunError:
    """Why a run failed: the exception's type name and message."""

    type: str
    message: str


@attrs.frozen
class Run:
    """A snapshot of one run, as the engine reports it.

    Times are seconds since the epoch (``None`` until they happen).
    """

    id: str
    task_id: str
    status: RunStatus
    payload: Any = None
    output: Any = None
    error: RunError | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    tags: tuple[str, ...] = ()
    attempt: int = 1
    parent_id: str | None = None
    root_id: str | None = None
    streams: tuple[str, ...] = ()
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def is_finished(self) -> bool:
        return self.status.is_final

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Run:
        """Build a Run from the ``run`` object of a ``run`` frame."""
        err = raw.get("error")
        return cls(
            id=raw["id"], task_id=raw["task_id"], status=RunStatus(raw["status"]),
            payload=raw.get("payload"), output=raw.get("output"),
            error=RunError(err.get("type", "Error"), err.get("message", "")) if err else None,
            metadata=dict(raw.get("metadata") or {}), tags=tuple(raw.get("tags") or ()),
            attempt=raw.get("attempt", 1), parent_id=raw.get("parent_id"),
            root_id=raw.get("root_id"), streams=tuple(raw.get("streams") or ()),
            created_at=raw.get("created_at"), started_at=raw.get("started_at"),
            finished_at=raw.get("finished_at"),
        )


@attrs.frozen
class TaskRunResult(Generic[T]):
    """The outcome of a run started with ``trigger_and_wait``."""

    id: str
    ok: bool
    output: T | None = None
    error: RunwireError | None = None
    status: RunStatus = RunStatus.COMPLETED

    def unwrap(self) -> T:
        """The output, or raise the run's error."""
        if not self.ok:
            assert self.error is not None
            raise self.error
        return cast(T, self.output)  # ok: ``output`` is the T (which may itself be None)

    @classmethod
    def from_run(cls, run: Run) -> TaskRunResult[Any]:
        if run.status is RunStatus.COMPLETED:
            return cls(id=run.id, ok=True, output=run.output, status=run.status)
        err = run.error or RunError(run.status.value, f"run ended {run.status.value}")
        return cls(id=run.id, ok=False, status=run.status,
                   error=TaskRunError(err.message, remote_type=err.type, run_id=run.id))


@attrs.frozen
class RunList:
    """A page of ``runs.list``: runs, newest first, and ``cursor`` for the next page
    (``None`` on the last page)."""

    runs: tuple[Run, ...]
    cursor: str | None = None


@attrs.frozen
class WaitpointToken:
    """A waitpoint token (``wait.create_token``): a run waits for it with
    ``wait.for_token``; anyone holding ``public_access_token`` (or the API key) completes
    it with ``wait.complete_token``.

    ``status`` is ``WAITING``, ``COMPLETED`` (``output`` holds the data) or ``TIMED_OUT``;
    times are epoch seconds. ``public_access_token`` is only known to whoever created it.
    """

    id: str
    status: str = "WAITING"
    public_access_token: str | None = None
    created_at: float | None = None
    expires_at: float | None = None
    completed_at: float | None = None
    tags: tuple[str, ...] = ()
    idempotency_key: str | None = None
    run_id: str | None = None
    output: Any = None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> WaitpointToken:
        return cls(id=raw["id"], status=raw.get("status", "WAITING"),
                   public_access_token=raw.get("public_access_token"),
                   created_at=raw.get("created_at"), expires_at=raw.get("expires_at"),
                   completed_at=raw.get("completed_at"), tags=tuple(raw.get("tags") or ()),
                   idempotency_key=raw.get("idempotency_key"), run_id=raw.get("run_id"),
                   output=raw.get("output"))


@attrs.frozen
class RunHandle:
    """What ``trigger`` returns: the run id and a public token scoped to that run."""

    id: str
    public_access_token: str


@attrs.frozen
class InputResult(Generic[T]):
    """The outcome of ``once``/``wait`` on an input stream."""

    ok: bool
    output: T | None = None
    error: RunwireError | None = None

    def unwrap(self) -> T:
        """The record, or raise the error (for example :class:`InputStreamTimeoutError`)."""
        if not self.ok:
            assert self.error is not None
            raise self.error
        return cast(T, self.output)  # ok: ``output`` is the T (which may itself be None)


class PendingResult(Generic[T]):
    """What ``wait``/``once``/``wait.for_token`` return: await it for the
    :class:`InputResult`, or await ``.unwrap()`` for the value itself::

        result = await approval.wait(timeout="1h")        # InputResult[Approval]
        decision = await approval.wait(timeout="1h").unwrap()   # Approval, or raises

    Nothing happens until it is awaited (arguments are checked at the call); it may be
    awaited once.

    Args:
        make: called with ``args`` when it is awaited: the coroutine of the wait.
        args: ``make``'s arguments (kept in a tuple, not in a closure's cells: a run
            parked in a wait holds them for as long as it waits).
    """

    __slots__ = ("_args", "_make", "_used")

    def __init__(self, make: Callable[..., Awaitable[InputResult[T]]], *args: Any) -> None:
        self._make = make
        self._args = args
        self._used = False

    def _start(self) -> Awaitable[InputResult[T]]:
        if self._used:
            raise RuntimeError("this wait was awaited already; call wait() again")
        self._used = True
        return self._make(*self._args)

    def __await__(self) -> Generator[Any, None, InputResult[T]]:
        # the wait's own coroutine, with no frame of this object's around it
        return self._start().__await__()

    async def unwrap(self) -> T:
        """The value, or raise the error (for example :class:`InputStreamTimeoutError`)."""
        return (await self._start()).unwrap()


@attrs.frozen
class RetryPolicy:
    """How often and how soon a failed attempt is retried.

    The delay before attempt ``n + 1`` is ``min_timeout * factor ** (n - 1)``, capped at
    ``max_timeout``, scaled by a random factor in ``[1, 2)`` when ``randomize`` is set.
    """

    max_attempts: int = 1
    factor: float = 2.0
    min_timeout: float = 1.0
    max_timeout: float = 60.0
    randomize: bool = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError("max_attempts must be an integer >= 1")

    def delay(self, attempt: int, rand: float = 0.0) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        base = min(self.max_timeout, self.min_timeout * self.factor ** (attempt - 1))
        return base * (1.0 + rand) if self.randomize else base


@attrs.frozen
class Queue:
    """A named queue; at most ``concurrency_limit`` of its runs execute at once."""

    name: str
    concurrency_limit: int | None = None

    def __attrs_post_init__(self) -> None:
        limit = self.concurrency_limit
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError("concurrency_limit must be a positive integer or None")


@attrs.frozen
class RunInfo:
    """``ctx.run``: the identity of the current run."""

    id: str
    task_id: str
    parent_id: str | None
    root_id: str
    tags: tuple[str, ...] = ()


@attrs.frozen
class RunContext:
    """The second argument of a task function."""

    run: RunInfo
    attempt: int
    payload: Any = None
