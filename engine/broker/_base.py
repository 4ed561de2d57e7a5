"""The Broker: who is where. Beside the Store, it says which engine owns a live run and hands
out a task queue's slots.

Theory of operation: the service never keeps its own table of live runs. When it starts an
actor it *attaches* it here, and the actor *detaches* itself when it ends (through the
``on_done`` callback the service gives it). Sends, appends, cancels and live reads go to the
run's :meth:`Broker.owner`; a run with no owner is finished or unknown, which the store says.
A task queue's concurrency limit is a :class:`~runwire.engine.run.QueueSlots` the broker
gives out, one per queue name, so the limit holds for every run that draws from it.

Readers are woken by the owner's output streams (``OutputStream.extend``): in one process
that is the whole story. A broker shared by many engines (:attr:`Broker.shared`, the Redis
one in ``_redis``) also says which *engine* owns a run that is not live here: the service
then sends the request there (:meth:`Broker.route`), follows the run's streams and record
through the broker (:meth:`Broker.follow`, :meth:`Broker.watch`), claims a run before it
executes it (:meth:`Broker.claim`: a lease the engine keeps renewing) and takes over runs
whose engine died (:meth:`Broker.orphans`).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ..run import OutputStream, QueueSlots, RunActor

#: What an engine does with a request another engine routed to it (``Broker.route``): the
#: service's handler, given the request's fields; it returns the answer or raises.
RequestHandler = Callable[[dict[str, Any]], Awaitable[Any]]


class NotLiveError(Exception):
    """No engine owns the run (it is finished, unknown, or waiting to be taken over)."""


class RemoteError(Exception):
    """What another engine's handler raised for a routed request: ``kind`` is the error's
    type name (the service raises the public error of that name again)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class RunWatch:
    """Changes of a run that another engine executes: ``version`` goes up on each, and
    ``records`` holds the newest records as they were stored, in order, each with the
    version it came with (a subscription yields them so it misses no status)."""

    #: records kept for subscriptions that fall behind
    KEEP = 64

    def __init__(self) -> None:
        self.version = 0
        self.records: list[tuple[int, dict[str, Any]]] = []
        self._changed = trio.Event()

    def poke(self, record: dict[str, Any] | None = None) -> None:
        self.version += 1
        if record is not None:
            self.records.append((self.version, record))
            del self.records[:-self.KEEP]
        self._changed.set()
        self._changed = trio.Event()

    def records_after(self, version: int) -> list[dict[str, Any]]:
        return [record for seen, record in self.records if seen > version]

    async def wait_change(self, seen: int, timeout: float) -> None:
        """Return once ``version`` is past ``seen``, or after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while self.version == seen:
                await self._changed.wait()


@attrs.frozen
class BrokerStatistics:
    """What a broker holds now.

    Attributes:
        live_runs: runs whose actor is attached here.
        queues: per queue name, ``(limit, slots in use)``.
    """

    live_runs: int
    queues: dict[str, tuple[int, int]]


class Broker(abc.ABC):
    """Who owns which live run, and the slots of each task queue."""

    @abc.abstractmethod
    def attach(self, actor: RunActor) -> None:
        """This engine executes the run now: route its requests to ``actor``."""

    @abc.abstractmethod
    def detach(self, actor: RunActor) -> None:
        """The actor has ended (a newer actor of the same run stays attached)."""

    @abc.abstractmethod
    def owner(self, run_id: str) -> RunActor | None:
        """The live run's actor, or ``None`` if the run is not live."""

    @abc.abstractmethod
    def actors(self) -> list[RunActor]:
        """The live runs this engine executes."""

    @abc.abstractmethod
    def queue_slots(self, name: str, limit: int) -> QueueSlots:
        """The slots of queue ``name``: at most ``limit`` of its runs execute at once."""

    @abc.abstractmethod
    def statistics(self) -> BrokerStatistics:
        """Counts for tests and operators."""

    #: Other engines share the runs (the methods below do something).
    shared: bool = False
    #: Seconds a claim lasts without renewal (an engine that died loses its runs then).
    lease_ttl: float = 10.0

    async def run(self, handler: RequestHandler, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests routed here with ``handler`` until cancelled (shared brokers)."""
        task_status.started()

    async def claim(self, run_id: str) -> bool:
        """Take the run for this engine; ``False`` if another engine holds it."""
        await trio.lowlevel.checkpoint()
        return True

    def lease(self, run_id: str) -> str | None:
        """The token of the lease this engine holds on the run (its claim), which every
        write of the run's data carries (``Batch.leases``: the store refuses it once another
        engine has claimed the run); ``None`` if it holds none, or nobody else could claim
        the run (a one-engine broker)."""
        return None

    async def release(self, run_id: str) -> None:
        """Give up a claim this engine holds without an actor (a run found finished)."""
        await trio.lowlevel.checkpoint()

    async def orphans(self) -> list[str]:
        """Unfinished runs that no engine holds (their engine died): to take over."""
        await trio.lowlevel.checkpoint()
        return []

    async def route(self, run_id: str, request: dict[str, Any]) -> Any:
        """Send ``request`` to the engine that owns ``run_id``; its answer.

        Raises:
            NotLiveError: no engine owns the run.
            Exception: what the owner's handler raised.
        """
        raise NotLiveError(run_id)

    async def follow(self, run_id: str, key: str, stream: OutputStream) -> OutputStream:
        """The stream of a run another engine executes, kept up to date here (``stream``
        has its stored state); a one-engine broker has no such run and returns it as is."""
        await trio.lowlevel.checkpoint()
        return stream

    @asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[RunWatch]:
        """Be told when a run another engine executes changes."""
        await trio.lowlevel.checkpoint()
        yield RunWatch()

    @asynccontextmanager
    async def watch_durable_stream(self, path: str) -> AsyncIterator[RunWatch]:
        """Be told when any engine writes or removes the free-standing durable stream at
        ``path`` (shared brokers; in one engine the stream's own event says it)."""
        await trio.lowlevel.checkpoint()
        yield RunWatch()


class LocalBroker(Broker):
    """One engine, one process: live runs in a dict, queue slots as trio semaphores."""

    def __init__(self) -> None:
        self._actors: dict[str, RunActor] = {}
        self._queues: dict[str, trio.Semaphore] = {}

    def attach(self, actor: RunActor) -> None:
        self._actors[actor.id] = actor

    def detach(self, actor: RunActor) -> None:
        if self._actors.get(actor.id) is actor:
            del self._actors[actor.id]

    def owner(self, run_id: str) -> RunActor | None:
        return self._actors.get(run_id)

    def actors(self) -> list[RunActor]:
        return list(self._actors.values())

    def queue_slots(self, name: str, limit: int) -> QueueSlots:
        slots = self._queues.get(name)
        if slots is None:
            slots = self._queues[name] = trio.Semaphore(limit, max_value=limit)
        return slots

    def statistics(self) -> BrokerStatistics:
        queues = {}
        for name, slots in self._queues.items():
            assert slots.max_value is not None  # made with one
            queues[name] = (slots.max_value, slots.max_value - slots.value)
        return BrokerStatistics(live_runs=len(self._actors), queues=queues)
