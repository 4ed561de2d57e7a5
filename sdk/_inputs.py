"""Input streams: data sent into a running run (cancel buttons, approvals, follow-ups).

Inside the run: ``on`` (every record, in the run's nursery), ``once`` (the next record),
``wait`` (like ``once`` but the run is suspended and leaves its queue slot) and ``peek``.
Anywhere: ``send(run_id, data)``. Records sent before any listener exists are kept for the
first listener; every record reaches every ``on`` handler and at most one ``once``/``wait``
waiter, the oldest.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from ._convert import check_json, from_json
from ._duration import parse_duration
from ._errors import InputStreamTimeoutError, InvalidPayloadError
from ._models import InputResult, PendingResult
from ._streams import _check_key
from .runtime import TIMED_OUT, Backend, InputChannel, current_backend, require_run

T = TypeVar("T")


class Subscription:
    """What ``on`` returns; ``off()`` stops the handler (safe to call twice)."""

    def __init__(self, off: Callable[[], None]) -> None:
        self._off = off

    def off(self) -> None:
        self._off()


class InputStreamDef(Generic[T]):
    """A typed input stream, made by ``streams.input(id=..., type=...)``.

    ``type`` is a class (records are typed as its instances: ``InputStreamDef[Approval]``),
    any other type cattrs understands (typed ``Any``), or ``None`` for records taken as they
    are (``InputStreamDef[Any]``).
    """

    @overload
    def __init__(self: InputStreamDef[Any], id: str, type: None = None) -> None: ...
    @overload
    def __init__(self, id: str, type: type[T]) -> None: ...
    @overload
    def __init__(self: InputStreamDef[Any], id: str, type: object) -> None: ...

    def __init__(self, id: str, type: Any = None) -> None:
        self.id = _check_key(id)
        self.type: builtins.type[T] | None = type
        self._what = f"record of input stream {self.id!r}"

    def __repr__(self) -> str:
        return f"<InputStreamDef {self.id!r}>"

    def _decode(self, value: Any) -> T:
        return from_json(value, self.type, self._what)

    def _channel(self, what: str) -> Any:
        """The run's channel for this stream, told the record type: the engine then refuses
        a record that does not fit (``invalid_payload`` to its sender) before it is stored
        or reaches a waiter, whoever sent it."""
        channel = require_run(f"{self.id}.{what}()").input(self.id)
        if self.type is not None:
            channel.declare(self._decode)
        return channel

    def on(self, handler: Callable[[T], object], *, fail_run: bool = False) -> Subscription:
        """Call ``handler`` (sync or async) for every record, in order, in the run's nursery.

        A handler that raises is logged and skipped; with ``fail_run=True`` it fails the run.
        The handler is cancelled when the run ends.
        """
        if not callable(handler):
            raise TypeError("on() needs a callable handler")
        decode = self._decode
        channel = self._channel("on")
        return Subscription(channel.on(lambda raw: handler(decode(raw)), fail_run))

    def once(self, timeout_ms: float | None = None) -> PendingResult[T]:
        """The next record, or ``ok=False`` with :class:`InputStreamTimeoutError`.

        Await it for the :class:`InputResult`, or ``await ....unwrap()`` for the record.
        """
        if timeout_ms is not None and (isinstance(timeout_ms, bool)
                                       or not isinstance(timeout_ms, (int, float))
                                       or timeout_ms < 0):
            raise ValueError("timeout_ms must be a number >= 0 or None")
        channel = self._channel("once")
        timeout = None if timeout_ms is None else timeout_ms / 1000.0
        return PendingResult(self._once, channel, timeout, timeout_ms)

    async def _once(self, channel: InputChannel, timeout: float | None,
                    timeout_ms: float | None) -> InputResult[T]:
        """What an awaited :meth:`once` does."""
        return self._result(await channel.once(timeout), timeout_ms, "ms")

    def wait(self, timeout: float | str | None = "7d", idempotency_key: str | None = None,
             idempotency_key_ttl: float | str | None = None,
             tags: list[str] | None = None) -> PendingResult[T]:
        """Like :meth:`once`, but the run is ``WAITING`` and gives its queue slot back.

        With ``idempotency_key``, a retried attempt gets the record the first attempt got.
        Await it for the :class:`InputResult`, or ``await approval.wait(...).unwrap()``.
        """
        seconds = parse_duration(timeout, "timeout")
        ttl = parse_duration(idempotency_key_ttl, "idempotency_key_ttl")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise TypeError("idempotency_key must be a string")
        channel = self._channel("wait")
        return PendingResult(self._wait, channel, seconds, idempotency_key, ttl, timeout)

    async def _wait(self, channel: InputChannel, seconds: float | None,
                    idempotency_key: str | None, ttl: float | None,
                    timeout: float | str | None) -> InputResult[T]:
        """What an awaited :meth:`wait` does."""
        raw = await channel.wait(seconds, idempotency_key, ttl)
        return self._result(raw, timeout, "")

    def _result(self, raw: Any, timeout: float | str | None, unit: str) -> InputResult[T]:
        if raw is TIMED_OUT:
            err = InputStreamTimeoutError(
                f"no record on input stream {self.id!r} within {timeout}{unit}")
            return InputResult(ok=False, error=err)
        try:
            return InputResult(ok=True, output=self._decode(raw))
        except InvalidPayloadError as exc:  # the only error from_json raises
            return InputResult(ok=False, error=exc)

    def peek(self) -> T | None:
        """The most recent record received, or ``None``; never waits."""
        raw = self._channel("peek").peek()
        return None if raw is None else self._decode(raw)

    async def send(self, run_id: str, data: T, *, idempotency_key: str | None = None,
                   client: Backend | None = None) -> None:
        """Send one record to this input stream of ``run_id``; returns once it is stored.

        Raises:
            InvalidPayloadError: ``data`` does not fit the stream's type (checked here,
                strictly; nothing is sent, a waiting ``wait()`` is untouched).
        """
        if not isinstance(run_id, str) or not run_id:
            raise TypeError("run_id must be a non-empty string")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise TypeError("idempotency_key must be a string")
        data_json = check_json(data, self.type, self._what)
        await current_backend(client).send(run_id, self.id, data_json, idempotency_key)
