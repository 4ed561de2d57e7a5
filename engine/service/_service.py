"""The service: every run operation, whichever door a request came through.

Theory of operation: doors (the websocket session, later HTTP) authorize a request and call
one method here; so does a task's SDK call made inside a run (through
:class:`~runwire.engine.run.RunServices`, which this class implements). The service keeps no
table of live runs of its own: the :class:`~runwire.engine.broker.Broker` says which actor
owns a run, and the :class:`~runwire.engine.store.Store` answers for runs that are not live.
It owns the nursery its actors run in (:meth:`RunService.run`), and restores the runs that
were live when the engine last stopped before it reports ready (``_recovery``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import orjson
import trio

from runwire import (
    BadFrameError, RunStatus,
    InvalidPayloadError, NotFoundError, PayloadTooLargeError, RunFinishedError, Task,
    UnknownTaskError,
)
from runwire.runtime import ProducerSink

from .._limits import Limits
from ..broker import Broker
from ..run import (
    ExternalAppend, MissingRunProducer, OutputStream, Reader, RunActor, RunEnv, RunRecord,
    SendInput, new_run_id,
)
from ..store import Batch, Store
from ._auth import Auth
from ._recovery import recover

log = logging.getLogger("runwire.engine")

#: Seconds a graceful stop waits for the live runs to be handed back (each is one commit).
HAND_BACK_TIMEOUT = 10.0


@attrs.frozen
class ServiceStatistics:
    """What the service holds now (for tests and operators).

    Attributes:
        live_runs: runs executing (or waiting) on this engine.
        tasks: registered task ids.
    """

    live_runs: int
    tasks: int


class RunService:
    """Run operations over a store and a broker.

    Args:
        tasks: the tasks this engine can run.
        store: where runs and their streams are kept.
        broker: who owns which live run; queue slots.
        auth: signs public access tokens.
        limits: sizes the service and its actors enforce.
        clock: wall-clock seconds (the engine's, so a mock clock moves it in tests).
        drain_timeout: seconds a finished task's producers get.
    """

    def __init__(self, tasks: Iterable[Task[Any, Any]], store: Store, broker: Broker,
                 auth: Auth, limits: Limits, clock: Callable[[], float], *,
                 drain_timeout: float = 60.0) -> None:
        self.tasks: dict[str, Task[Any, Any]] = {}
        for task in tasks:
            if not isinstance(task, Task):
                raise TypeError(f"tasks must be Task objects made with @task, not {task!r}")
            if task.id in self.tasks and self.tasks[task.id] is not task:
                raise ValueError(f"two different tasks share the id {task.id!r}")
            self.tasks[task.id] = task
        if (isinstance(drain_timeout, bool) or not isinstance(drain_timeout, (int, float))
                or not drain_timeout >= 0):
            raise ValueError("drain_timeout must be a number of seconds >= 0")
        self.store = store
        self.broker = broker
        self.auth = auth
        self.limits = limits
        self.clock = clock
        self.env = RunEnv(store=store, limits=limits, clock=clock,
                          drain_timeout=float(drain_timeout), services=self,
                          on_done=broker.detach)
        self._triggering: dict[tuple[str, str], trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        #: a graceful stop has begun: new runs are stored but not started (the next engine
        #: starts them)
        self.stopping = False
        self._grace: trio.CancelScope | None = None
        self._hurried = False

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(live_runs=self.broker.statistics().live_runs,
                                 tasks=len(self.tasks))

    # --- lifetime ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the actors' nursery until cancelled; ready once stored runs are recovered."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await recover(self)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def start_actor(self, record: RunRecord, task: Task[Any, Any],
                          restore: Callable[[RunActor], None] | None = None) -> RunActor:
        """Start an actor for ``record``; returns once it takes messages.

        ``restore`` prepares the actor from what the store kept (recovery) before it runs.
        """
        if self._nursery is None:
            raise RuntimeError("the engine is not running")
        queue = task.queue
        slots = (self.broker.queue_slots(queue.name, queue.concurrency_limit)
                 if queue is not None and queue.concurrency_limit is not None else None)
        actor = RunActor(self.env, record, task, slots)
        if restore is not None:
            restore(actor)
        self.broker.attach(actor)
        await self._nursery.start(actor.run)
        return actor

    async def stop(self, grace_period: float) -> int:
        """A graceful stop: no new run starts; executing runs get ``grace_period`` seconds
        to finish (waiting runs need none: their waits are durable); then every run still
        live is handed back to the store, so the next engine resumes it as the same
        attempt. Returns how many runs were handed back.
        """
        self.stopping = True
        with trio.move_on_after(0 if self._hurried else grace_period) as self._grace:
            while any(not actor.finished.is_set() and actor.record.status is not RunStatus.WAITING
                      for actor in self.broker.actors()):
                await trio.sleep(0.05)
        live = [actor for actor in self.broker.actors() if not actor.finished.is_set()]
        for actor in live:
            actor.hand_back()
        with trio.move_on_after(HAND_BACK_TIMEOUT):  # each one is one store commit
            for actor in live:
                await actor.ended.wait()
        if live:
            log.info("graceful stop: %d live runs handed back", len(live))
        return len(live)

    def hurry(self) -> None:
        """End the grace period of a graceful stop under way now."""
        self.stopping = self._hurried = True
        if self._grace is not None:
            self._grace.cancel()

    async def sweep(self) -> int:
        """Delete runs that finished more than ``retention`` seconds ago; how many."""
        removed = await self.store.delete_finished_before(self.clock() - self.limits.retention)
        if removed:
            log.info("retention: deleted %d finished runs", removed)
        return removed

    # --- runs ------------------------------------------------------------------------------

    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any] | None = None,
                      parent: RunActor | None = None) -> RunRecord:
        """Start a run of ``task_id``; returns once its actor is running.

        Raises:
            UnknownTaskError, InvalidPayloadError, PayloadTooLargeError.
        """
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise UnknownTaskError(f"no task is registered with id {task_id!r}")
        opts = TriggerOptions.parse(options or {})
        try:
            size = len(orjson.dumps(payload))
        except TypeError as exc:
            raise InvalidPayloadError(f"payload is not JSON: {exc}") from None
        if size > self.limits.max_payload_bytes:
            raise PayloadTooLargeError(f"payload of {size} bytes is over the "
                                       f"{self.limits.max_payload_bytes}-byte limit")
        task.validate(payload)
        ikey = (task_id, opts.idempotency_key) if opts.idempotency_key else None
        if ikey:  # claim the key before any await, so two triggers with it never both start
            while ikey in self._triggering:
                await self._triggering[ikey].wait()
            self._triggering[ikey] = trio.Event()
        try:
            if ikey:
                existing = await self._existing_run(*ikey)
                if existing is not None:
                    return existing
            record = RunRecord(
                id=new_run_id(), task_id=task_id, payload=payload, tags=list(opts.tags),
                metadata=dict(opts.metadata), created_at=self.clock(),
                parent_id=parent.id if parent else None,
                root_id=(parent.record.root_id or parent.id) if parent else None,
                idempotency_key=opts.idempotency_key)
            # a run is stored and started, or neither: cancelled in between (a client gone),
            # it would stay QUEUED forever, and a retry with its key would get that dead run
            with trio.CancelScope(shield=True):
                await self.store.commit(Batch(runs=[record.to_store()]))
                if not self.stopping:  # else stored QUEUED: the next engine starts it
                    await self.start_actor(record, task)
            return record
        finally:
            if ikey:
                self._triggering.pop(ikey).set()

    async def _existing_run(self, task_id: str, key: str) -> RunRecord | None:
        run_id = await self.store.find_run(task_id, key)
        return await self.get_record(run_id) if run_id else None

    async def get_record(self, run_id: str) -> RunRecord:
        """The run, live or stored.

        Raises:
            NotFoundError: no such run (or it expired).
        """
        actor = self.broker.owner(run_id) if isinstance(run_id, str) else None
        if actor is not None:
            return actor.record
        raw = await self.store.get_run(run_id) if isinstance(run_id, str) else None
        if raw is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return RunRecord.from_wire(raw)

    async def list_runs(self, *, task: str | None, status: list[str] | None,
                        tags: list[str] | None, created_after: float | None,
                        created_before: float | None, limit: int,
                        cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of runs (wire form, newest first) and the next page's cursor.

        Raises:
            BadFrameError: a malformed cursor.
        """
        try:
            raws, nxt = await self.store.list_runs(
                task=task, status=status, tags=tags, created_after=created_after,
                created_before=created_before, limit=limit, cursor=cursor)
        except ValueError as exc:
            raise BadFrameError(str(exc)) from None
        page = []
        for raw in raws:
            actor = self.broker.owner(raw["id"])  # a live run's record is the newest
            page.append((actor.record if actor else RunRecord.from_wire(raw)).to_wire())
        return page, nxt

    def issue_token(self, scopes: Any, expires_in: float) -> tuple[str, float]:
        """A public access token for ``scopes``, valid ``expires_in`` seconds; and its expiry.

        Raises:
            BadFrameError: a malformed scope, or a lifetime outside ``(0, max_token_lifetime]``.
        """
        limit = self.limits.max_token_lifetime
        if not (isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool)
                and math.isfinite(expires_in) and 0 < expires_in <= limit):
            raise BadFrameError(f"'expires_in' must be a number of seconds in (0, {limit:g}]")
        if not isinstance(scopes, list):  # create_token would accept any iterable
            raise BadFrameError("scopes must be a list such as ['read:runs:<run id>']")
        try:
            return self.auth.issue(scopes, expires_in)
        except ValueError as exc:  # a malformed scope
            raise BadFrameError(str(exc)) from None

    def run_token(self, run_id: str) -> str:
        """The token ``trigger`` answers with: read the run, send to its input streams."""
        return self.auth.run_token(run_id)

    async def missing_run_error(self, run_id: str) -> Exception:
        """The error for a run that is not live here: finished, or unknown."""
        try:
            record = await self.get_record(run_id)
        except NotFoundError as exc:
            return exc
        return RunFinishedError(f"run {run_id} has finished ({record.status.value})")

    async def _live_actor(self, run_id: str) -> RunActor:
        actor = self.broker.owner(run_id) if isinstance(run_id, str) else None
        if actor is None:
            raise await self.missing_run_error(run_id)
        return actor

    async def send_input(self, run_id: str, key: str, data: Any, ikey: str | None) -> int:
        """Store one input record and deliver it; returns its index."""
        try:
            actor = await self._live_actor(run_id)
            index: int = await actor.submit(SendInput(key, data, ikey))
            return index
        except RunFinishedError:
            # a retried send whose first attempt was stored (maybe it is what ended the
            # run) gets that record's index, as it would from the live actor
            stored = await self._stored_input(run_id, key, ikey) if ikey else None
            if stored is None:
                raise
            return stored

    async def _stored_input(self, run_id: str, key: str, ikey: str) -> int | None:
        for record in (await self.store.records(run_id)).get(key, []):
            if record.idempotency_key == ikey:
                return record.index
        return None

    async def append(self, run_id: str, key: str, producer: str, seq: int,
                     items: list[Any]) -> int:
        """Append a client producer's batch; returns the producer's next sequence number."""
        actor = await self._live_actor(run_id)
        nxt: int = await actor.submit(ExternalAppend(key, producer, seq, items))
        return nxt

    def open_producer(self, run_id: str, key: str) -> ProducerSink:
        """A producer inside the engine for stream ``key`` of ``run_id`` (``target=``)."""
        actor = self.broker.owner(run_id)
        if actor is None:
            return MissingRunProducer(lambda: self.missing_run_error(run_id))
        return actor.producer(key)

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a live run; a finished run answers ``run_finished``."""
        actor = await self._live_actor(run_id)
        actor.cancel()
        await actor.finished.wait()

    async def wait_finished(self, run_id: str) -> RunRecord:
        """Wait until the run has finished; its final record."""
        actor = self.broker.owner(run_id)
        if actor is not None:
            await actor.finished.wait()
            return actor.record
        return await self.get_record(run_id)

    async def subscribe(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """Snapshots of the run's record on every change, ending with the final one."""
        actor = self.broker.owner(run_id) if isinstance(run_id, str) else None
        if actor is None:
            yield (await self.get_record(run_id)).to_wire()
            return
        seen = -1
        while True:
            await actor.wait_change(seen)
            seen = actor.version
            final = actor.finished.is_set()  # of this snapshot: it may finish while we yield
            yield actor.record.to_wire()
            if final:
                return

    async def open_reader(self, run_id: str, key: str, start: int) -> Reader:
        """A reader of stream ``key`` of ``run_id`` from index ``start``.

        Raises:
            NotFoundError: no such run.
        """
        actor = self.broker.owner(run_id) if isinstance(run_id, str) else None
        if actor is not None:
            return Reader(self.store, self.limits, run_id, key, start, actor.stream(key))
        record = await self.get_record(run_id)
        state = (await self.store.streams(run_id)).get(key)
        stream = OutputStream(key, length=state.length if state else 0,
                              nbytes=state.nbytes if state else 0,
                              ended=record.status.is_final or bool(state and state.ended),
                              tail_limit=0)
        return Reader(self.store, self.limits, run_id, key, start, stream)


@attrs.frozen
class TriggerOptions:
    """The ``options`` of a trigger, checked."""

    tags: tuple[str, ...] = ()
    idempotency_key: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, options: Any) -> TriggerOptions:
        """Raises: InvalidPayloadError: an unknown option or one of the wrong type."""
        if not isinstance(options, dict):
            raise InvalidPayloadError("trigger options must be an object")
        known = {"tags", "idempotency_key", "metadata"}
        unknown = set(options) - known
        if unknown:
            raise InvalidPayloadError(f"unknown trigger options: {sorted(unknown)}")
        tags = options.get("tags") or []
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidPayloadError("options.tags must be a list of strings")
        key = options.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not key or len(key) > 256):
            raise InvalidPayloadError("options.idempotency_key must be a string of 1-256 chars")
        meta = options.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InvalidPayloadError("options.metadata must be an object")
        return cls(tuple(tags), key, meta)
