"""What a run actor is given: values and callbacks in, nothing reaching back.

The actor never imports the engine, the service or a door. Everything it needs from outside
itself arrives in a :class:`RunEnv` (shared by every actor of one engine) and its queue slots;
what a task's SDK calls reach beyond the run (triggering children, reading other runs,
sending, tokens) goes through :class:`RunServices`, which the service implements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from runwire.runtime import ProducerSink

from .._limits import Limits
from ..store import Store, StoredToken

if TYPE_CHECKING:
    from ._actor import RunActor
    from ._reader import Reader
    from ._records import RunRecord


class QueueSlots(Protocol):
    """A queue's concurrency slots (a ``trio.Semaphore`` is one)."""

    def acquire_nowait(self) -> None:
        """Take a slot now, or raise ``trio.WouldBlock``."""

    async def acquire(self) -> None:
        """Take a slot, waiting for one."""

    def release(self) -> None:
        """Give a slot back."""


class RunServices(Protocol):
    """What SDK calls made inside a run reach beyond the run (the service implements it)."""

    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any] | None,
                      parent: RunActor | None = None) -> RunRecord: ...
    def run_token(self, run_id: str) -> str: ...
    async def wait_finished(self, run_id: str) -> RunRecord: ...
    async def get_record(self, run_id: str) -> RunRecord: ...
    async def cancel_run(self, run_id: str) -> None: ...
    def subscribe(self, run_id: str) -> AsyncIterator[dict[str, Any]]: ...
    def issue_token(self, scopes: Any, expires_in: float) -> tuple[str, float]: ...
    async def send_input(self, run_id: str, key: str, data: Any, ikey: str | None) -> int: ...
    async def open_reader(self, run_id: str, key: str, start: int) -> Reader: ...
    def open_producer(self, run_id: str, key: str) -> ProducerSink: ...
    async def list_runs(self, *, task: str | None = None, status: Any = None,
                        tags: Any = None, created_after: float | None = None,
                        created_before: float | None = None, limit: int = 20,
                        cursor: str | None = None
                        ) -> tuple[list[dict[str, Any]], str | None]: ...
    async def create_waitpoint(self, *, timeout: float | None = None,
                               idempotency_key: str | None = None, tags: Any = (),
                               run_id: str | None = None) -> StoredToken: ...
    def waitpoint_token(self, token: StoredToken) -> str: ...
    async def get_waitpoint(self, token_id: str) -> StoredToken: ...
    async def complete_waitpoint(self, token_id: str,
                                 data: Any) -> tuple[StoredToken, bool]: ...
    async def wait_waitpoint(self, token_id: str) -> Any: ...


@attrs.frozen
class RunEnv:
    """The environment every actor of one engine shares.

    Attributes:
        store: where the run's batches go.
        limits: sizes the actor enforces (chunks, records, streams, its mailbox, live tails).
        clock: wall-clock seconds for the run record's times (a mock clock moves it in tests).
        drain_timeout: seconds the run's producers get to finish after the task returns.
        services: what the run's SDK calls reach beyond the run.
        on_done: called once when the actor has ended (the service forgets it then).
    """

    store: Store
    limits: Limits
    clock: Callable[[], float]
    drain_timeout: float
    services: RunServices
    on_done: Callable[[RunActor], None]
