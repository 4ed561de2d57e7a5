"""Door-neutral request handling: authorize, rate-limit, validate, call the service.

Theory of operation: every door (the websocket session today, HTTP next) authenticates a
credential once with :meth:`Door.authenticate` and gets a :class:`Caller` for it. Each
request is one method of the caller, which checks the grant (and its expiry), draws from the
credential's rate bucket where the request is rate-limited, checks the sizes and shapes the
service does not, and calls the service. Errors are the SDK's :class:`runwire.RunwireError`
family, each with the wire ``code`` a door turns into its own answer (an ``error`` frame, an
HTTP status). So every door has the same auth, limits and errors.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncGenerator, Hashable, Iterator
from typing import Any

import trio

from runwire import (
    BadFrameError, ForbiddenError, RateLimitedError, RunwireError, UnauthorizedError,
)

from .._limits import Limits
from ..run import Reader, RunRecord
from ..service import Auth, Grant, RunService
from ._rates import RateLimiter


class Door:
    """What every door of one engine shares: the service, auth, rate buckets, the count of
    open connections."""

    def __init__(self, service: RunService, auth: Auth, limits: Limits) -> None:
        self.service = service
        self.auth = auth
        self.limits = limits
        self.rates = RateLimiter()
        #: open connections over every door (websocket, HTTP and in-process)
        self.connections = 0
        #: requests under way on them (an HTTP request from its head to its answer's end)
        self.open_requests = 0
        #: what the per-address and per-credential caps count (``Limits.max_*_per_*``):
        #: keys such as ``("conn", address)``, ``("session", credential)``,
        #: ``("reads", address)``; a key is removed when its count is back to 0
        self.counts: collections.Counter[Hashable] = collections.Counter()

    def take_slot(self, key: Hashable, cap: int | None) -> bool:
        """Count one more of ``key`` unless it is at ``cap`` (``None``: no cap)."""
        if cap is not None and self.counts[key] >= cap:
            return False
        self.counts[key] += 1
        return True

    def free_slot(self, key: Hashable) -> None:
        """Count one fewer of ``key`` (taken with :meth:`take_slot`)."""
        left = self.counts[key] - 1
        if left > 0:
            self.counts[key] = left
        else:
            del self.counts[key]

    @contextlib.contextmanager
    def read_slot(self, grant: Grant, address: str | None) -> Iterator[None]:
        """Count an open read or subscription (over any door: a websocket read, an HTTP
        long-poll or SSE response) against the caps of its credential and its client's
        address (``Limits.max_reads_per_*``) while it is open.

        Raises:
            RateLimitedError: one of them is at its cap.
        """
        limits = self.limits
        keys = []
        try:
            if not grant.admin:
                key = ("reads", grant.key)
                if not self.take_slot(key, limits.max_reads_per_credential):
                    raise RateLimitedError(
                        f"too many open reads and subscriptions with this access token (at "
                        f"most {limits.max_reads_per_credential}); end some first")
                keys.append(key)
            if address is not None:
                key = ("reads@", address)
                if not self.take_slot(key, limits.max_reads_per_address):
                    raise RateLimitedError(
                        f"too many open reads and subscriptions from this address (at most "
                        f"{limits.max_reads_per_address}); end some first")
                keys.append(key)
            yield
        finally:
            for key in keys:
                self.free_slot(key)

    def authenticate(self, credential: Any) -> Caller:
        """The caller for a credential.

        Raises:
            UnauthorizedError: unknown, malformed, tampered or expired.
        """
        return Caller(self, self.auth.authenticate(credential))


class Caller:
    """The requests of one authenticated credential."""

    def __init__(self, door: Door, grant: Grant) -> None:
        self.door = door
        self.grant = grant
        self.service = door.service
        self.limits = door.limits

    # --- checks ------------------------------------------------------------------------------

    def expiry_scope(self) -> trio.CancelScope:
        """A cancel scope that ends what it holds when the caller's token expires (never for
        a credential without expiry): an open read or subscription must not outlive it."""
        expires = self.grant.expires_at
        if expires is None:
            return trio.CancelScope()
        left = expires - self.door.auth.clock()
        return trio.CancelScope(deadline=trio.current_time() + left)

    def expired(self) -> bool:
        """Whether the caller's token has expired by now."""
        return self.grant.expired(self.door.auth.clock())

    def check_unexpired(self) -> None:
        """Raises: UnauthorizedError: the caller's token has expired."""
        if self.expired():
            raise UnauthorizedError("the access token has expired; reconnect with a new one")

    async def allow(self, action: str, resource: str, ident: str) -> None:
        """Raises: UnauthorizedError (expired), ForbiddenError (not in the grant's scopes)."""
        grant = self.grant
        self.check_unexpired()
        if grant.allows(action, resource, ident):
            return
        task_id = None  # only a read of a run can be allowed by its task's scope
        if (action, resource) == ("read", "runs") and any(
                s.startswith("read:tasks:") for s in grant.scopes):
            try:
                task_id = (await self.service.get_record(ident)).task_id
            except RunwireError:
                task_id = None
        if not grant.allows(action, resource, ident, task_id=task_id):
            raise ForbiddenError(f"this credential may not {action} {resource} {_short(ident)}")

    def take(self, action: str, rate: float | None, burst: int) -> None:
        """Raises: RateLimitedError: the credential's bucket for ``action`` is empty."""
        if self.grant.admin and not self.limits.rate_limit_api_key:
            return  # the backend's own key is trusted; public tokens are what the rates bound
        if not self.door.rates.take((self.grant.key, action), rate, burst):
            raise RateLimitedError(f"too many {action} requests for this credential (at most "
                                   f"{rate:g} a second, bursts of {burst}); try again later")

    def check_keys(self, **keys: str | None) -> None:
        """Stream keys, producer ids and idempotency keys are stored: keep them short."""
        limit = self.limits.max_key_chars
        for name, value in keys.items():
            if value is not None and not 0 < len(value) <= limit:
                raise BadFrameError(f"'{name}' must be 1-{limit} characters")

    # --- requests ----------------------------------------------------------------------------

    async def open_read(self, run_id: str, stream: str, start: int,
                        timeout: float | None) -> Reader:
        """A reader of stream ``stream`` of ``run_id`` from index ``start``."""
        await self.allow("read", "runs", run_id)
        self.check_keys(stream=stream)
        if start < 0:
            raise BadFrameError("'from' must be >= 0")
        if timeout is not None and not timeout > 0:
            raise BadFrameError("'timeout_s' must be > 0 or null")
        return await self.service.open_reader(run_id, stream, start)

    async def append(self, run_id: str, stream: str, producer: str, seq: int,
                     items: list[Any]) -> int:
        """A client producer's batch; the producer's next sequence number."""
        await self.allow("write", "streams", run_id)
        self.check_keys(stream=stream, producer=producer)
        if seq < 0:
            raise BadFrameError("append needs a 'seq' >= 0")
        return await self.service.append(run_id, stream, producer, seq, items)

    async def send(self, run_id: str, stream: str, data: Any, key: str | None) -> int:
        """One input record; its index."""
        await self.allow("write", "inputStreams", run_id)
        self.check_keys(stream=stream, key=key)
        self.take("send", self.limits.send_rate, self.limits.send_burst)
        return await self.service.send_input(run_id, stream, data, key)

    async def trigger(self, task_id: str, payload: Any,
                      options: dict[str, Any] | None) -> tuple[RunRecord, str]:
        """A new run (or the one its idempotency key names) and its public access token."""
        await self.allow("trigger", "tasks", task_id)
        self.take("trigger", self.limits.trigger_rate, self.limits.trigger_burst)
        record = await self.service.trigger(task_id, payload, options)
        return record, self.service.run_token(record.id)

    async def subscribe(self, run_id: str) -> AsyncGenerator[dict[str, Any], None]:
        """The run's record on every change, ending with the final one."""
        await self.allow("read", "runs", run_id)
        async for snapshot in self.service.subscribe(run_id):
            yield snapshot

    async def retrieve(self, run_id: str) -> dict[str, Any]:
        """The run's record (its wire form)."""
        await self.allow("read", "runs", run_id)
        return (await self.service.get_record(run_id)).to_wire()

    async def list_runs(self, *, task: str | None, status: list[str] | None,
                        tags: list[str] | None, created_after: float | None,
                        created_before: float | None, limit: int,
                        cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of runs, newest first, and the next page's cursor.

        Needs ``read:runs`` (every run), or ``read:tasks:<task>`` with ``task`` given.
        """
        grant = self.grant
        if grant.expired(self.door.auth.clock()):
            raise UnauthorizedError("the access token has expired; reconnect with a new one")
        if not (grant.allows("read", "runs", "*")
                or (task is not None and grant.allows("read", "tasks", task))):
            raise ForbiddenError("listing runs needs read:runs (or read:tasks:<task> with a "
                                 "task filter)")
        self.check_keys(task=task, cursor=cursor)
        return await self.service.list_runs(
            task=task, status=status, tags=tags, created_after=created_after,
            created_before=created_before, limit=limit, cursor=cursor)

    async def cancel_run(self, run_id: str) -> None:
        await self.allow("write", "runs", run_id)
        await self.service.cancel_run(run_id)

    async def create_waitpoint(self, timeout: Any, idempotency_key: Any,
                               tags: Any) -> dict[str, Any]:
        """A new waitpoint token with its public access token; only the API key may."""
        if not self.grant.admin:
            raise ForbiddenError("only the engine's API key may create waitpoint tokens")
        token = await self.service.create_waitpoint(timeout=timeout,
                                                    idempotency_key=idempotency_key, tags=tags)
        return {**token.to_wire(self.service.clock()),
                "public_access_token": self.service.waitpoint_token(token)}

    async def complete_waitpoint(self, token_id: str, data: Any) -> tuple[dict[str, Any], bool]:
        """Complete a token (``write:waitpoints:<id>``); whether this request did."""
        await self.allow("write", "waitpoints", token_id)
        self.check_keys(waitpoint=token_id)
        self.take("send", self.limits.send_rate, self.limits.send_burst)
        token, completed = await self.service.complete_waitpoint(token_id, data)
        return token.to_wire(self.service.clock()), completed

    async def retrieve_waitpoint(self, token_id: str) -> dict[str, Any]:
        await self.allow("read", "waitpoints", token_id)
        self.check_keys(waitpoint=token_id)
        return (await self.service.get_waitpoint(token_id)).to_wire(self.service.clock())

    def create_token(self, scopes: Any, expires_in: Any) -> tuple[str, float]:
        """A public access token and its expiry; only the API key may make one.

        Raises:
            UnauthorizedError: the caller's own token has expired (before any scope check:
                an expired credential is unauthorized, whatever it could once do).
            ForbiddenError: the caller is not the API key.
        """
        self.check_unexpired()
        if not self.grant.admin:
            raise ForbiddenError("only the engine's API key may create access tokens")
        return self.service.issue_token(scopes, expires_in)


def _short(ident: Any) -> str:
    text = repr(ident)
    return text if len(text) <= 64 else text[:61] + "..."
