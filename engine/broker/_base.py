"""The Broker: who is where. Beside the Store, it says which engine owns a live run and hands
out a task queue's slots.

Theory of operation: the service never keeps its own table of live runs. When it starts an
actor it *attaches* it here, and the actor *detaches* itself when it ends (through the
``on_done`` callback the service gives it). Sends, appends, cancels and live reads go to the
run's :meth:`Broker.owner`; a run with no owner is finished or unknown, which the store says.
A task queue's concurrency limit is a :class:`~runwire.engine.run.QueueSlots` the broker
gives out, one per queue name, so the limit holds for every run that draws from it.

Readers are woken by the owner's output streams (``OutputStream.extend``): in one process
that is the whole story. A broker shared by many engines (Redis) must also carry those
wake-ups and route sends and cancels to the owning engine; :class:`LocalBroker` is the one
implementation today.
"""

from __future__ import annotations

import abc

import attrs
import trio

from ..run import QueueSlots, RunActor


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
