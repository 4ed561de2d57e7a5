"""LazyEvent: a flag that makes its ``trio.Event`` only for someone who waits.

A ``trio.Event`` costs ~270 bytes (its set of waiting tasks is made with it). Every live run
has flags that most runs never wait on (finished, ended: the engine waits on them for few
runs), and a run parked in a wait holds them for as long as it waits.
"""

from __future__ import annotations

import trio


class LazyEvent:
    """``is_set``/``set``/``wait`` like ``trio.Event``; the event exists only while someone
    waits on a flag that is not set yet."""

    __slots__ = ("_flag", "_event")

    def __init__(self) -> None:
        self._flag = False
        self._event: trio.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        """Set the flag and wake everyone waiting (idempotent)."""
        self._flag = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Return once the flag is set (a checkpoint either way, as ``trio.Event.wait``)."""
        if self._flag:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()
