"""``wait``: pause a run for a while without holding its queue slot."""

from __future__ import annotations

import datetime as _dt
from typing import Any

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
