"""The errors a Store raises: one family, so a caller can tell the store's refusals apart."""

from __future__ import annotations

import trio


class StoreError(Exception):
    """Base of every error a store raises on purpose."""


class StoreConfigError(StoreError, ValueError):
    """A store URL or option that cannot work (unknown scheme, no path, unknown option)."""


class StoreUnavailableError(StoreError, OSError):
    """The store cannot be opened or reached now: a file that cannot be created, read or
    written (past the SQLite store's retries), a database that another engine holds, a
    schema written by a newer runwire, a Redis that is gone or cannot take writes.

    ``nothing_stored`` is true when the store knows that nothing of the call that failed
    was stored (it was refused whole, or never sent); false when it cannot know (a
    connection lost while a write was under way may have stored it)."""

    nothing_stored = False

    def refused_whole(self) -> StoreUnavailableError:
        """This error, marked ``nothing_stored`` (for ``raise ... .refused_whole()``)."""
        self.nothing_stored = True
        return self


class StoreFullError(StoreUnavailableError):
    """The store refused a write for lack of space (a Redis at ``maxmemory``): nothing of
    the write was stored, and what was stored before is intact."""

    nothing_stored = True


class StoreClosedError(StoreError, trio.ClosedResourceError):
    """The store was closed (``aclose``) and takes no more calls."""


class IndexGapError(StoreError):
    """A batch does not continue its stream where the store has it: chunks would be lost or
    stored twice. Only a bug in the writer causes it; the batch is refused whole."""


class DuplicateRunError(StoreError):
    """A new run's (task, idempotency key) is already another run's: a store shared by
    many engines refuses the batch whole; ``run_id`` is the run that has the key."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"the idempotency key belongs to run {run_id}")
        self.run_id = run_id


class LeaseLostError(StoreError):
    """A batch written for a run whose lease its writer no longer holds (another engine
    claimed the run since: this engine was paused, cut off, or away longer than the lease):
    a store shared by many engines refuses the batch whole. ``run_id`` is that run; the
    writer must stop acting on it, the engine holding the lease goes on with it."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class NotCompactError(StoreError, ValueError):
    """A chunk that is not compact JSON (it holds a raw newline byte); the batch is refused."""


def client_message(exc: BaseException) -> str | None:
    """What a client is told of a store failure (no addresses), or ``None`` if ``exc`` is
    not one."""
    if isinstance(exc, StoreFullError):
        return "the engine's store is full (out of memory); this request was not stored"
    if isinstance(exc, StoreUnavailableError):
        if exc.nothing_stored:
            return "the engine's store cannot be reached now; this request was not stored"
        return "the engine's store cannot be reached now; try again"
    return None
