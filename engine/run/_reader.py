"""One read of one output stream: from the live tail while it holds the chunks, else the store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from .._limits import Limits
from ..store import Store
from ._streams import OutputStream, cap_bytes


class ReadTimeout(Exception):
    """No chunk arrived within the read's timeout."""


class Reader:
    """Batches of a stream's JSON chunks from ``next``, until the stream ends.

    Args:
        store: where chunks behind the live tail are read from.
        limits: a batch holds at most ``frame_items`` chunks and ``frame_bytes`` bytes.
        run_id, key: the stream.
        start: the index of the first chunk to read.
        stream: the stream's in-memory face: the live one of a run executing here, or a
            still one (no tail) for a run that is not.
    """

    def __init__(self, store: Store, limits: Limits, run_id: str, key: str, start: int,
                 stream: OutputStream) -> None:
        self.store = store
        self.limits = limits
        self.run_id = run_id
        self.key = key
        self.next = start
        self.stream = stream
        #: parked at the live tail, waiting for chunks (a pusher may hand them over meanwhile)
        self.waiting = False
        #: awaited before a batch is taken, once there is one to take (never while waiting at
        #: the live tail): a door bounds how many batches its reads hold at once with it
        self.gate: Callable[[], Awaitable[None]] | None = None

    async def next_batch(self, timeout: float | None) -> list[bytes] | None:
        """The next chunks (at least one), ``None`` once the stream has ended.

        Raises:
            ReadTimeout: nothing new for ``timeout`` seconds.
        """
        limits = self.limits
        while True:
            stream = self.stream
            if self.next < stream.length:
                if self.gate is not None:
                    await self.gate()  # (no pusher moves ``next`` meanwhile: not waiting)
                items = self.tail()
                if items is None:  # behind the live tail: the store has it
                    items = cap_bytes(await self.store.read_chunks(
                        self.run_id, self.key, self.next, limits.frame_items), limits.frame_bytes)
                if items:
                    self.next += len(items)
                    return items
            if stream.ended:
                return None
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                self.waiting = True
                try:
                    await stream.wait_beyond(self.next)
                finally:
                    self.waiting = False
                continue  # woken (chunks, maybe already pushed, or the end): the timer restarts
            raise ReadTimeout()

    def tail(self) -> list[bytes] | None:
        """A frame's worth of chunks from ``next``, if the live tail still holds them."""
        return self.stream.tail(self.next, self.limits.frame_items, self.limits.frame_bytes)
