"""A run's streams in memory: output streams (live tail), producers, input mailboxes.

Theory of operation:

* :class:`OutputStream` is the in-memory face of one output stream: its length, size, ended
  flag, and a bounded *live tail* of its last chunks (JSON bytes). Readers near the head are
  fed from the tail; a reader further behind is fed from the Store. Memory stays flat however
  long the stream grows.
* :class:`Producer` is one writer inside the engine. ``put`` only appends to a buffer and tells
  the actor's :class:`Mailbox` it is dirty; the actor takes every dirty buffer at once and
  writes it as one batch. ``put`` waits only when the buffer is over its high-water mark.
* :class:`Mailbox` is how everything reaches an actor: a bounded FIFO of control messages
  (senders wait when it is full) plus the set of dirty producers.
* :class:`InputMailbox` hands input records to a run's listeners with the SPEC's rules.
"""

from __future__ import annotations

import collections
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from runwire.runtime import TIMED_OUT

if TYPE_CHECKING:
    from ._actor import RunActor

log = logging.getLogger("runwire.engine")

#: A producer yields to the scheduler every this many puts, so a source that never
#: blocks cannot starve the run.
PRODUCER_YIELD_EVERY = 256


def cap_bytes(items: list[bytes], max_bytes: int) -> list[bytes]:
    """The longest prefix of ``items`` within ``max_bytes`` (never empty if ``items`` is not)."""
    if sum(map(len, items)) <= max_bytes:  # the usual case, summed in C
        return items
    size = 0
    for i, item in enumerate(items):
        size += len(item)
        if size > max_bytes and i > 0:
            return items[:i]
    return items


@attrs.frozen
class StreamStatistics:
    """What an output stream holds in memory now.

    Attributes:
        length: chunks stored (the next chunk's index).
        nbytes: bytes stored.
        ended: no chunk will follow.
        tail_chunks: chunks kept in the live tail (at most twice the tail limit).
        pushers: reads parked at the live tail that get chunks pushed.
    """

    length: int
    nbytes: int
    ended: bool
    tail_chunks: int
    pushers: int


class OutputStream:
    """One output stream of a live run: length, size, ended flag and the live tail."""

    def __init__(self, key: str, *, length: int = 0, nbytes: int = 0, ended: bool = False,
                 tail_limit: int = 4096) -> None:
        self.key = key
        self.length = length
        self.nbytes = nbytes
        self.ended = ended
        self._tail: list[bytes] = []
        self._tail_start = length
        self._tail_limit = tail_limit
        self._changed = trio.Event()
        self._pushers: tuple[Callable[[], None], ...] = ()

    def extend(self, items: list[bytes], nbytes: int) -> None:
        """Chunks just committed to the Store: keep them in the tail and wake readers."""
        self._tail.extend(items)
        self.length += len(items)
        self.nbytes += nbytes
        excess = len(self._tail) - 2 * self._tail_limit
        if excess > 0:  # trim in bulk so trimming stays amortized O(1) per chunk
            cut = len(self._tail) - self._tail_limit
            del self._tail[:cut]
            self._tail_start += cut
        for push in self._pushers:
            push()
        self._wake()

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(length=self.length, nbytes=self.nbytes, ended=self.ended,
                                tail_chunks=len(self._tail), pushers=len(self._pushers))

    def add_pusher(self, push: Callable[[], None]) -> None:
        """Call ``push()`` on every :meth:`extend`, before readers are woken.

        A pusher hands the new chunks to a reader that waits at the live tail, at once and
        without blocking (``Session._read``), or does nothing; it must not raise.
        """
        self._pushers = (*self._pushers, push)  # a new tuple: extend may be iterating

    def remove_pusher(self, push: Callable[[], None]) -> None:
        self._pushers = tuple(p for p in self._pushers if p is not push)

    def follow(self, length: int, nbytes: int, ended: bool) -> None:
        """A stream another engine writes: the store holds it up to ``length`` (this
        engine keeps no tail of it, so readers read those chunks from the store)."""
        changed = False
        if length > self.length:
            self.length, self.nbytes = length, nbytes
            self._tail.clear()
            self._tail_start = length
            changed = True
        if ended and not self.ended:
            self.ended = changed = True
        if changed:
            self._wake()

    def end(self) -> None:
        """No chunk will ever follow; readers finish once they have read to ``length``."""
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def tail(self, start: int, limit: int, max_bytes: int) -> list[bytes] | None:
        """Chunks from ``start`` if the tail still holds them (``None`` if it does not)."""
        if start < self._tail_start:
            return None
        begin = start - self._tail_start
        return cap_bytes(self._tail[begin:begin + limit], max_bytes)

    async def wait_beyond(self, index: int) -> None:
        """Return once chunk ``index`` exists or the stream has ended."""
        while self.length <= index and not self.ended:
            await self._changed.wait()


class Producer:
    """A writer of one output stream inside the engine (``pipe``, ``writer``, ``append``).

    Args:
        actor: the actor that owns the stream (may be another run's, for ``target=``).
        key: the stream key.
    """

    def __init__(self, actor: RunActor, key: str, own: bool = False) -> None:
        self.actor = actor
        self.key = key
        #: written by the run's own task: counted for its journal (``_journal``)
        self.own = own
        self._high_water = actor.env.limits.producer_buffer
        self.buffer: list[Any] = []
        self.error: BaseException | None = None
        self._put = 0
        self._done = 0
        self._progress = trio.Event()
        self.closed = False

    def put_nowait(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.actor.check_writable()
        if self.own and self.actor.journal.drop(self.key, 1):
            return  # a replay puts it again: it was stored before the restart
        self.buffer.append(item)
        self._put += 1
        self.actor.mailbox.mark_dirty(self)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)
        await self._below_high_water()
        if self._put % PRODUCER_YIELD_EVERY == 0:
            await trio.lowlevel.checkpoint()

    async def put_many(self, items: list[Any]) -> None:
        """Queue several chunks at once (a pipe reads sync sources in slices)."""
        if self.error is not None:
            raise self.error
        self.actor.check_writable()
        if self.own:
            items = items[self.actor.journal.drop(self.key, len(items)):]
        self.buffer.extend(items)
        self._put += len(items)
        self.actor.mailbox.mark_dirty(self)
        await self._below_high_water()
        await trio.lowlevel.checkpoint()

    def take(self) -> list[Any]:
        """The actor takes the whole buffer."""
        items, self.buffer = self.buffer, []
        return items

    def settled(self, count: int, error: BaseException | None = None) -> None:
        """The actor stored (or refused) ``count`` taken items."""
        self._done += count
        if error is not None and self.error is None:
            self.error = error
        self._progress.set()  # wakes every waiter (a writer's merges share one producer)
        self._progress = trio.Event()

    async def _below_high_water(self) -> None:
        while len(self.buffer) >= self._high_water and self.error is None:
            await self._progress.wait()

    async def flush(self) -> None:
        while self._done < self._put and self.error is None:
            await self._progress.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


class Mailbox:
    """An actor's inbox: bounded control messages plus dirty producers; one consumer.

    ``on_work`` is called whenever work arrives, so the actor can start its commit loop only
    when there is something to commit (an idle run costs no parked task). Policy when full:
    ``put`` waits (backpressure to the sender). Producers never wait here; their own buffers
    are bounded by their high-water mark.
    """

    __slots__ = ("_closed", "_dirty", "_limit", "_messages", "_on_work", "_poked", "_space")

    def __init__(self, limit: int, on_work: Callable[[], None]) -> None:
        self._messages: list[Any] = []  # taken all at once, so a list is enough
        self._dirty: dict[Producer, None] = {}
        self._limit = limit
        self._on_work = on_work
        self._space: trio.Event | None = None  # only while a sender waits
        self._poked = False
        self._closed: BaseException | None = None

    async def put(self, message: Any) -> None:
        """Queue a message (it has a ``reply``); waits while the mailbox is full.

        Raises:
            the mailbox's close error, if the actor has stopped.
        """
        while len(self._messages) >= self._limit and self._closed is None:
            if self._space is None:
                self._space = trio.Event()
            await self._space.wait()
        if self._closed is not None:
            raise self._closed
        self._messages.append(message)
        self._on_work()

    def close(self, error: BaseException) -> None:
        """The actor stopped: answer what is queued with ``error`` and refuse new messages."""
        self._closed = error
        for message in self._messages:
            message.reply.set(error=error)
        self._messages.clear()
        for producer in self._dirty:
            producer.settled(len(producer.take()), error)
        self._dirty.clear()
        if self._space is not None:
            self._space.set()

    def mark_dirty(self, producer: Producer) -> None:
        self._dirty[producer] = None
        self._on_work()

    def poke(self) -> None:
        """Ask for a commit with no message (the run record changed)."""
        self._poked = True
        self._on_work()

    def queued_chunks(self) -> int:
        """Chunks waiting in the dirty producers' buffers."""
        return sum(len(producer.buffer) for producer in self._dirty)

    def has_work(self) -> bool:
        return bool(self._messages or self._dirty or self._poked)

    def take(self) -> tuple[list[Any], list[Producer]]:
        """Take all the work (how much waits to be taken is ``RunActor._commit_loop``'s
        business: it lets producers refill after a busy cycle)."""
        self._poked = False
        messages, self._messages = self._messages, []
        producers = list(self._dirty)
        self._dirty.clear()
        if self._space is not None:
            self._space.set()
            self._space = None
        return messages, producers


class _Waiter:
    """One ``once``/``wait`` call waiting for a record.

    Its task is parked with ``wait_task_rescheduled`` and rescheduled by :meth:`give`, as
    ``trio.Event`` does, without an event's task set and its ``wait`` frame and closure: a run
    parked in a wait holds ~650 B less.
    """

    __slots__ = ("done", "task", "value")

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.value: Any = TIMED_OUT
        #: it has its record, or it is gone (timed out, cancelled): ``deliver`` skips it
        self.done = False

    def give(self, value: Any) -> None:
        self.value = value
        self.done = True
        trio.lowlevel.reschedule(self.task)

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        """Its task is cancelled while parked: it is gone, with no record."""
        self.done = True
        return trio.lowlevel.Abort.SUCCEEDED


class _Handler:
    """One ``on`` subscription: its own queue and task (``RunActor.spawn_handler``)."""

    def __init__(self, fn: Callable[[Any], Any], fail_run: bool) -> None:
        self.fn = fn
        self.fail_run = fail_run
        self.queue: collections.deque[Any] = collections.deque()
        self.ready = trio.Event()
        self.scope = trio.CancelScope()

    def push(self, value: Any) -> None:
        self.queue.append(value)
        self.ready.set()

    async def run(self, on_error: Callable[[BaseException], None]) -> None:
        with self.scope:
            while True:
                while not self.queue:
                    self.ready = trio.Event()
                    await self.ready.wait()
                value = self.queue.popleft()
                try:
                    result = self.fn(value)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    if self.fail_run:
                        on_error(exc)
                        return
                    log.exception("input stream handler raised; the run goes on")


class InputMailbox:
    """The records of one input stream of a live run and who listens for them.

    Rules (SPEC §2): records sent while nobody listens are kept and handed to the first
    listener; every record reaches every ``on`` handler and at most one ``once``/``wait``
    waiter, the oldest.
    """

    # slotted, as every object a run parked in a wait holds (a few hundred bytes a run)
    __slots__ = ("_handlers", "_pending", "_waiters", "count", "key", "keys", "last")

    def __init__(self, key: str) -> None:
        self.key = key
        self.count = 0
        self.keys: dict[str, int] = {}
        self.last: Any = None
        # made on first use: a run waiting on one input stream should cost little memory
        self._pending: collections.deque[Any] | None = None
        self._handlers: list[_Handler] = []
        self._waiters: list[_Waiter] = []  # usually one; a deque costs 600 B more

    def restore(self, count: int, keys: dict[str, int]) -> None:
        """Records stored before a restart: counted, their idempotency keys kept, never
        delivered again."""
        self.count = count
        self.keys.update(keys)

    def deliver(self, value: Any) -> None:
        """A stored record arrives."""
        self.last = value
        for handler in self._handlers:
            handler.push(value)
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done:
                waiter.give(value)
                return
        if not self._handlers:
            if self._pending is None:
                self._pending = collections.deque()
            self._pending.append(value)

    def add_handler(self, handler: _Handler) -> None:
        while self._pending:
            handler.push(self._pending.popleft())
        self._handlers.append(handler)

    def remove_handler(self, handler: _Handler) -> None:
        if handler in self._handlers:
            self._handlers.remove(handler)
        handler.scope.cancel()

    def unconsumed(self) -> int:
        """The index of the oldest record no listener has taken yet."""
        return self.count - (len(self._pending) if self._pending else 0)

    def take_pending(self) -> Any:
        """The oldest kept record, or ``TIMED_OUT`` if none is kept."""
        return self._pending.popleft() if self._pending else TIMED_OUT

    async def next_record(self, timeout: float | None) -> Any:
        """The next record for a ``once``/``wait`` waiter, or ``TIMED_OUT``."""
        kept = self.take_pending()
        if kept is not TIMED_OUT:
            await trio.lowlevel.checkpoint()
            return kept
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            if timeout is None:
                await trio.lowlevel.wait_task_rescheduled(waiter.abort)
            else:
                with trio.move_on_after(timeout):
                    await trio.lowlevel.wait_task_rescheduled(waiter.abort)
        finally:
            waiter.done = True  # (gone, if it had no record: deliver() skips it)
        return waiter.value


class MissingRunProducer:
    """A producer for a run that is not live here: every call says why (finished or unknown).

    Args:
        why: makes the error to raise (it may ask the store whether the run exists).
    """

    def __init__(self, why: Callable[[], Awaitable[Exception]]) -> None:
        self._why = why

    def put_nowait(self, item: Any) -> None:
        pass  # flush() raises the right error once it asked

    async def put(self, item: Any) -> None:
        raise await self._why()

    async def put_many(self, items: list[Any]) -> None:
        raise await self._why()

    async def flush(self) -> None:
        raise await self._why()

    def close(self) -> None:
        pass
