"""The HTTP door's answer to a store that is away: ``503`` with ``Retry-After``.

A request that meets :class:`~runwire.engine.store.StoreUnavailableError` (a SQLite write that
failed past its retries, a Redis that is gone, out of memory or cannot take writes now) is
not a bug: it is answered ``503 Service Unavailable`` with ``Retry-After:``
:data:`STORE_RETRY_AFTER` and the JSON body ``{"code": "internal", "message": ...}`` (the
websocket answers the same failure with an ``internal`` error: the code is the same; no
other code of the contract fits). The message says whether anything of the request was
stored: nothing, when the store says so (``StoreUnavailableError.nothing_stored``); when it
cannot know (a Redis connection lost, or a reply late, while a write was under way), the
client is told to repeat the request idempotently. A streamed read that has started ends
cleanly instead (:func:`outage_event`). Any other exception stays a ``500``.
"""

from __future__ import annotations

import logging
import math

import orjson
import trio

from ..store import StoreFullError, StoreUnavailableError
from ._http import HttpError

#: Seconds a client is told to wait (``Retry-After``) when the store is away: long enough
#: for a Redis restart or a failover to begin to answer, short enough not to stall a client
#: that retries at once after a blip.
STORE_RETRY_AFTER = 2
#: Requests that store nothing (nothing of them can have been stored).
READS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEPTH = 16  # how far down causes and groups are searched
#: At most one outage warning in this many seconds; the requests met meanwhile are counted in
#: the next one (an outage meets every request: a line each would flood the log).
LOG_EVERY = 10.0
log = logging.getLogger("runwire.engine")


class OutageLog:
    """The warnings of a door about a store that is away: the first at once, then at most
    one every :data:`LOG_EVERY` seconds, saying how many more requests met it since."""

    def __init__(self) -> None:
        self._next = -math.inf
        self._quiet = 0

    def warn(self, what: str, outage: StoreUnavailableError) -> None:
        now = trio.current_time()
        if now < self._next:
            self._quiet += 1
            return
        more = f" (and {self._quiet} more since the last warning)" if self._quiet else ""
        log.warning("%s: the store is unavailable: %s%s", what, outage, more)
        self._next, self._quiet = now + LOG_EVERY, 0


def store_outage(exc: BaseException) -> StoreUnavailableError | None:
    """The store outage behind ``exc``, or ``None``: ``exc`` itself, the error it was raised
    from (the service's ``InternalError("the store could not write ...")``), or the error
    of an exception group whose every error is one."""
    for _ in range(_DEPTH):
        if isinstance(exc, StoreUnavailableError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = [store_outage(inner) for inner in exc.exceptions]
            return found[0] if found and all(found) else None
        if exc.__cause__ is None:
            return None
        exc = exc.__cause__
    return None


def outage_message(outage: StoreUnavailableError, method: str) -> str:
    """What the client is told (no addresses, no paths)."""
    if isinstance(outage, StoreFullError):
        what = "the engine's store is full"
    else:
        what = "the engine's store is unavailable (it cannot be reached or written now)"
    if method in READS:
        return f"{what}; try again in {STORE_RETRY_AFTER} s"
    if outage.nothing_stored:
        return f"{what}; nothing of this request was stored; try again in {STORE_RETRY_AFTER} s"
    return (f"{what}; the store's connection was lost or stopped answering while this "
            f"request was under way, so it may or may not have been stored: repeat it in "
            f"{STORE_RETRY_AFTER} s with the same Idempotency-Key or producer headers to be "
            f"safe")


def unavailable(message: str) -> HttpError:
    """A ``503`` with ``Retry-After``, code ``internal`` (the websocket's for the same
    failures): for a store that is away, or a run its engine cannot take now."""
    return HttpError(503, "internal", message, [("retry-after", str(STORE_RETRY_AFTER))])


def outage_error(outage: StoreUnavailableError, method: str) -> HttpError:
    """The ``503`` a request that met ``outage`` before its answer began gets."""
    return unavailable(outage_message(outage, method))


def outage_event(outage: StoreUnavailableError) -> bytes:
    """The last event of an SSE response the outage cut short: an ``error`` event (as an
    expired token's) and a ``retry`` hint in milliseconds; the response then ends and the
    client reads again from the last offset (or ``Last-Event-ID``) it had."""
    message = (f"{outage_message(outage, 'GET')}: read again from the last offset you "
               f"were given")
    return (b"retry: %d\nevent: error\ndata:" % (STORE_RETRY_AFTER * 1000)
            + orjson.dumps({"code": "internal", "message": message}) + b"\n\n")
