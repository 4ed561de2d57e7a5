"""The service: every run operation, whichever door a request came through.

Theory of operation: doors (the websocket session, later HTTP) authorize a request and call
one method here; so does a task's SDK call made inside a run (through
:class:`~runwire.engine.run.RunServices`, which this class implements). The service keeps no
table of live runs of its own: the :class:`~runwire.engine.broker.Broker` says which actor
owns a run, and the :class:`~runwire.engine.store.Store` answers for runs that are not live.
It owns the nursery its actors run in (:meth:`RunService.run`), and restores the runs that
were live when the engine last stopped, in the background once it reports ready; a request
about one of them restores it first (``_recovery``).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import orjson
import trio

import runwire
from runwire import (
    BadFrameError, InternalError,
    InvalidPayloadError, NotFoundError, PayloadTooLargeError, RunFinishedError, RunStatus, Task,
    UnknownTaskError, WaitpointTimeoutError,
)
from runwire.runtime import TIMED_OUT, ProducerSink
from runwire.transport import json_bytes

from .._limits import Limits
from ..broker import Broker, NotLiveError, RemoteError
from ..run import (
    ExternalAppend, MissingRunProducer, MovedWhileStoringError, OutputStream, Reader,
    RunActor, RunEnv, RunRecord, RunUnreachableError, SendInput, new_run_id, resume_key,
)
from ..store import (
    Batch, DuplicateRunError, RecordAppend, Store, StoredToken, StoreUnavailableError, Waitpoint,
)
from ._auth import Auth
from ._recovery import Recovery

log = logging.getLogger("runwire.engine")

#: Seconds a graceful stop waits for the live runs to be handed back (each is one commit).
HAND_BACK_TIMEOUT = 10.0
#: Seconds between looks at a run another engine executes, besides the broker's wake-ups
#: (a safety net for a lost pub/sub message; see ``broker/_redis.py``).
REMOTE_REFRESH = 2.0


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
        #: waitpoint token id -> set when it is completed (runs waiting in for_token)
        self._token_waiters: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        #: run id -> the scope that ends its actor without a word (another engine owns it)
        self._abandon: dict[str, trio.CancelScope] = {}
        #: a graceful stop has begun: new runs are stored but not started (the next engine
        #: starts them)
        self.stopping = False
        self._grace: trio.CancelScope | None = None
        self._hurried = False
        #: the runs live when the engine last stopped, restored in the background
        self.recovery = Recovery(self)
        #: run id -> held while a send stores a record for a handed-back run
        self._stored_sends: dict[str, trio.Lock] = {}

    async def _restored(self, run_id: Any) -> None:
        """A request about ``run_id``: restore it first if recovery has not yet."""
        if isinstance(run_id, str) and (self.recovery.pending or self.recovery.running):
            await self.recovery.ensure(run_id)

    # --- lifetime ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the actors' nursery until cancelled; ready once the runs to recover are
        listed (they are restored in the background, ``_recovery``)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await nursery.start(self.broker.run, self.handle_routed)
                await self.recovery.load()
                if self.broker.shared:
                    nursery.start_soon(self._takeover_loop)
                task_status.started()  # serving now; the runs are restored meanwhile
                nursery.start_soon(self.recovery.run)
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _takeover_loop(self) -> None:
        """Take over the runs of engines that died (their leases expired)."""
        while True:
            await trio.sleep(self.broker.lease_ttl / 2)
            if self.stopping:
                return
            try:
                for run_id in await self.broker.orphans():
                    if self.stopping:  # a stop began: the next engine takes them
                        return
                    await self.recovery.take_over(run_id)
            except Exception:  # Redis away: the next round tries again
                log.exception("could not look for runs to take over")

    async def handle_routed(self, request: dict[str, Any]) -> Any:
        """A request another engine routed here, for a run this engine executes."""
        op, run_id = request.get("op"), request["run_id"]
        if op == "token":
            self._token_completed(str(request["token_id"]))
            return None
        if op == "abandon":  # from this engine's broker: another engine holds the run now
            actor = self.broker.owner(run_id)
            if actor is not None:  # nothing more is written; waiting requests try again
                actor.lose("its lease was taken by another engine")
            scope = self._abandon.get(run_id)
            if scope is not None:
                scope.cancel()
            return None
        await self._restored(run_id)
        actor = self.broker.owner(run_id)
        if actor is None:
            error = await self.missing_run_error(run_id)
            if isinstance(error, InternalError):  # not finished: the asker finds its engine
                raise NotLiveError(run_id)
            raise error
        try:
            if op == "send":
                return await actor.submit(SendInput(request["key"], request["data"],
                                                    request["ikey"]))
            if op == "append":
                return await actor.submit(ExternalAppend(request["key"], request["producer"],
                                                         request["seq"], request["items"]))
            if op == "cancel":
                await self._cancel_actor(actor)
                return None
        except (RunFinishedError, InternalError):
            if not (actor.handing_back or actor.lost):
                raise
            # a graceful stop hands the run back (or another engine took it): the asking
            # engine waits for the engine that resumes it (a hand-back releases the lease
            # as it ends)
            await actor.ended.wait()
            raise NotLiveError(run_id) from None
        raise BadFrameError(f"unknown routed request {op!r}")

    async def _routed(self, run_id: str, request: dict[str, Any]) -> Any:
        """Send a request for a run this engine does not execute to the engine that does.
        A run whose engine died is waited for until another engine takes it over.

        Raises:
            NotFoundError, RunFinishedError; what the owner raised, as the same error.
        """
        if not self.broker.shared:
            raise await self.missing_run_error(run_id)
        # only the wait for an owner is bounded, not the owner's answer
        deadline = trio.current_time() + self.broker.lease_ttl * 3
        while True:
            try:
                return await self.broker.route(run_id, request)
            except NotLiveError:
                record = await self.get_record(run_id)  # NotFoundError
                if record.status.is_final:
                    raise RunFinishedError(f"run {run_id} has finished "
                                           f"({record.status.value})") from None
                if trio.current_time() > deadline:  # not finished: say so, and try again
                    raise RunUnreachableError(
                        f"run {run_id} is {record.status.value} but not executing on any "
                        f"engine now (its engine stopped and no engine has taken it over "
                        f"yet); try again") from None
            except RemoteError as exc:
                if exc.kind in (RunUnreachableError.__name__,
                                MovedWhileStoringError.__name__):  # (engine-internal names)
                    raise RunUnreachableError(str(exc)) from None
                kind = getattr(runwire, exc.kind, None)
                if isinstance(kind, type) and issubclass(kind, runwire.RunwireError):
                    raise kind(str(exc)) from None
                raise
            await trio.sleep(0.2)  # between the old engine's lease and the new one's

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
        actor = RunActor(self.env, record, task, slots, self.broker.lease(record.id))
        if restore is not None:
            restore(actor)
        self.broker.attach(actor)
        if self.broker.shared:  # it may have to be abandoned (its lease lost)
            await self._nursery.start(self._run_abandonable, actor)
        else:
            await self._nursery.start(actor.run)
        return actor

    async def _run_abandonable(self, actor: RunActor, *,
                               task_status: trio.TaskStatus[Any]) -> None:
        with trio.CancelScope() as scope:
            self._abandon[actor.id] = scope
            try:
                await actor.run(task_status=task_status)
            finally:
                if self._abandon.get(actor.id) is scope:
                    del self._abandon[actor.id]
        if actor.lost:  # its readers here read on from the engine that has the run now
            for key, stream in list(actor.streams.items()):
                await self.broker.follow(actor.id, key, stream)

    async def stop(self, grace_period: float) -> int:
        """A graceful stop: no new run starts; executing runs get ``grace_period`` seconds
        to finish (waiting runs need none: their waits are durable); then every run still
        live is handed back to the store, so the next engine resumes it as the same
        attempt. Returns how many runs were handed back.
        """
        self.stopping = True
        # recovery starts no more runs; those it is restoring now are handed back below too
        while self.recovery.running:
            await next(iter(self.recovery.running.values())).wait()
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
                # the lease first: no other engine may take the stored run over
                mine = not self.stopping and await self.broker.claim(record.id)
                lease = self.broker.lease(record.id) if mine else None
                try:
                    await self.store.commit(Batch(runs=[record.to_store()], leases=[
                        (record.id, lease)] if lease is not None else []))
                except DuplicateRunError as exc:  # another engine's trigger with the key won
                    if mine:
                        await self.broker.release(record.id)
                    return await self.get_record(exc.run_id)
                except StoreUnavailableError as exc:
                    if mine:
                        await self.broker.release(record.id)
                    raise InternalError(f"the store could not write ({exc}); the run was "
                                        "not created") from exc
                if mine and not self.stopping:  # (a stop may have begun during the commit)
                    await self.start_actor(record, task)
                elif mine:  # stored QUEUED: another (or the next) engine starts it
                    await self.broker.release(record.id)
            log.info("run %s triggered (task %s%s)", record.id, task_id,
                     f", parent {record.parent_id}" if record.parent_id else "")
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
        await self._restored(run_id)
        actor = self.broker.owner(run_id) if isinstance(run_id, str) else None
        if actor is not None:
            return actor.record
        raw = await self.store.get_run(run_id) if isinstance(run_id, str) else None
        if raw is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return RunRecord.from_wire(raw)

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
        """The error for a run that is not live here: finished, unknown, or (during a
        graceful stop) handed back for the next engine."""
        try:
            record = await self.get_record(run_id)
        except NotFoundError as exc:
            return exc
        if not record.status.is_final:
            return self._not_live_error(record)
        return RunFinishedError(f"run {run_id} has finished ({record.status.value})")

    def _not_live_error(self, record: RunRecord) -> InternalError:
        why = ("the engine is stopping; the next engine to start resumes it" if self.stopping
               else "it could not be recovered; see the engine log")
        return InternalError(f"run {record.id} is {record.status.value} but not live on this "
                             f"engine ({why}); try again then")

    async def _actor_here(self, run_id: str) -> RunActor | None:
        """The run's actor if this engine executes it (once restored), else ``None``."""
        await self._restored(run_id)
        return self.broker.owner(run_id) if isinstance(run_id, str) else None

    async def send_input(self, run_id: str, key: str, data: Any, ikey: str | None) -> int:
        """Store one input record and deliver it; returns its index.

        A run a graceful stop handed back (not live, not finished, resumable) gets the
        record stored for the next engine, which delivers it when the run resumes.
        """
        try:
            actor = await self._actor_here(run_id)
            if actor is None and not self.broker.shared:
                stored = await self._send_to_stored(run_id, key, data, ikey)
                if stored is not None:
                    return stored
            if actor is None:  # on another engine, or the error that says why not
                routed: int = await self._routed(run_id, {"op": "send", "key": key,
                                                          "data": data, "ikey": ikey})
                return routed
            try:
                index: int = await actor.submit(SendInput(key, data, ikey))
            except InternalError as exc:
                if isinstance(exc, MovedWhileStoringError) and ikey is None:
                    raise  # (maybe stored here: sent on, it could be stored twice)
                routed = await self._after_lost(actor, exc, {"op": "send", "key": key,
                                                             "data": data, "ikey": ikey})
                return routed
            except RunFinishedError:
                if not actor.handing_back:
                    raise
                await actor.ended.wait()  # handed back: stored for the next engine
                if self.broker.shared:  # another engine resumes it now
                    routed = await self._routed(run_id, {"op": "send", "key": key,
                                                         "data": data, "ikey": ikey})
                    return routed
                stored = await self._send_to_stored(run_id, key, data, ikey)
                if stored is None:
                    raise
                return stored
            return index
        except RunFinishedError:
            # a retried send whose first attempt was stored (maybe it is what ended the
            # run) gets that record's index, as it would from the live actor
            stored = await self._stored_input(run_id, key, ikey) if ikey else None
            if stored is None:
                raise
            return stored

    async def _send_to_stored(self, run_id: str, key: str, data: Any,
                              ikey: str | None) -> int | None:
        """A record for a run handed back to the store (see :meth:`send_input`): stored with
        its resume point updated so the resumed run gets it; its index. ``None`` if the run
        is not such a run (finished, unknown, live again).

        Raises:
            InternalError: the run is not finished but cannot take it (it never started:
                its first attempt starts on the next engine, send then).
            InvalidPayloadError, PayloadTooLargeError: as a live run's send.
        """
        lock = self._stored_sends.setdefault(run_id, trio.Lock())
        try:
            async with lock:  # one at a time per run: each takes the next index
                raw = await self.store.get_run(run_id)
                if raw is None or self.broker.owner(run_id) is not None:
                    return None
                record = RunRecord.from_wire(raw)
                if record.status.is_final:
                    return None
                point_key = resume_key(record.attempt)
                stored_point = await self.store.waitpoint(run_id, point_key, -math.inf)
                point = orjson.loads(stored_point) if stored_point is not None else None
                if not isinstance(point, dict):
                    raise self._not_live_error(record)
                records = (await self.store.records(run_id)).get(key, [])
                for rec in records:
                    if ikey is not None and rec.idempotency_key == ikey:
                        return rec.index
                try:
                    encoded = json_bytes(data)
                except TypeError as exc:
                    raise InvalidPayloadError(f"input record for {key!r} is not JSON: "
                                              f"{exc}") from None
                if len(encoded) > self.limits.max_record_bytes:
                    raise PayloadTooLargeError(
                        f"input record of {len(encoded)} bytes is over the "
                        f"{self.limits.max_record_bytes}-byte limit")
                index = len(records)
                inputs = point.setdefault("inputs", {})
                if not isinstance(inputs.get(key), int):  # unread from here on
                    inputs[key] = index
                await self.store.commit(Batch(
                    records=[RecordAppend(run_id, key, index, encoded, ikey)],
                    waitpoints=[Waitpoint(run_id, point_key, json_bytes(point), None)]))
                log.info("run %s is handed back: input record %s#%d stored for the next "
                         "engine", run_id, key, index)
                return index
        finally:
            if not lock.statistics().tasks_waiting and not lock.locked():
                self._stored_sends.pop(run_id, None)

    async def _stored_input(self, run_id: str, key: str, ikey: str) -> int | None:
        for record in (await self.store.records(run_id)).get(key, []):
            if record.idempotency_key == ikey:
                return record.index
        return None

    async def append(self, run_id: str, key: str, producer: str, seq: int,
                     items: list[Any]) -> int:
        """Append a client producer's batch; returns the producer's next sequence number."""
        actor = await self._actor_here(run_id)
        if actor is None:
            routed: int = await self._routed(run_id, {"op": "append", "key": key,
                                                      "producer": producer, "seq": seq,
                                                      "items": items})
            return routed
        try:
            nxt: int = await actor.submit(ExternalAppend(key, producer, seq, items))
        except InternalError as exc:
            nxt = await self._after_lost(actor, exc, {"op": "append", "key": key,
                                                      "producer": producer, "seq": seq,
                                                      "items": items})
        return nxt

    async def _after_lost(self, actor: RunActor, error: InternalError,
                          request: dict[str, Any]) -> Any:
        """``request`` again, at the engine that has the run now, after ``actor`` answered
        it with ``error``: only if the actor was lost meanwhile (else ``error`` is raised).
        Not stored here, or recognised there if it was (an idempotency key, a producer
        sequence number): it counts once."""
        if not actor.lost:
            raise error
        await actor.ended.wait()
        return await self._routed(actor.id, request)

    def open_producer(self, run_id: str, key: str) -> ProducerSink:
        """A producer inside the engine for stream ``key`` of ``run_id`` (``target=``)."""
        actor = self.broker.owner(run_id)
        if actor is None:
            recovery = self.recovery
            if self.broker.shared or run_id in recovery.pending or run_id in recovery.running:
                # it may execute on another engine, or here once restored: each batch goes
                # through append, which restores the run first and finds where it executes
                return RoutedProducer(self, run_id, key)
            return MissingRunProducer(lambda: self.missing_run_error(run_id))
        return actor.producer(key)

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a live run; a finished run answers ``run_finished``."""
        actor = await self._actor_here(run_id)
        if actor is None:
            await self._routed(run_id, {"op": "cancel"})
            return
        await self._cancel_actor(actor)

    async def _cancel_actor(self, actor: RunActor) -> None:
        """Cancel a live run here and wait for its end.

        Raises:
            InternalError: a graceful stop handed the run back meanwhile (it is not
                canceled: the engine that resumes it takes the next cancel).
        """
        actor.cancel()
        await actor.ended.wait()
        if actor.lost:  # another engine has the run now: it takes the cancel
            await self._routed(actor.id, {"op": "cancel"})
        elif not actor.finished.is_set():
            raise self._not_live_error(actor.record)

    async def wait_finished(self, run_id: str) -> RunRecord:
        """Wait until the run has finished; its final record."""
        await self._restored(run_id)
        actor = self.broker.owner(run_id)
        if actor is not None:
            while not actor.finished.is_set() and not actor.lost:
                await actor.wait_change(actor.version)
            if not actor.lost:
                return actor.record
            await actor.ended.wait()  # another engine has the run now: wait for it there
            return await self.wait_finished(run_id)
        record = await self.get_record(run_id)
        if record.status.is_final or not self.broker.shared:
            return record
        async with self.broker.watch(run_id) as watch:  # executing on another engine
            while True:
                seen = watch.version
                record = await self.get_record(run_id)
                if record.status.is_final:
                    return record
                if self.broker.owner(run_id) is not None:  # taken over by this engine
                    return await self.wait_finished(run_id)
                await watch.wait_change(seen, REMOTE_REFRESH)

    async def subscribe(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """Snapshots of the run's record on every change, ending with the final one."""
        await self._restored(run_id)
        actor = self.broker.owner(run_id) if isinstance(run_id, str) else None
        if actor is None:
            record = await self.get_record(run_id)
            if record.status.is_final:
                yield record.to_wire()
                return
            if not self.broker.shared:  # stored live, owned by nobody here: say so
                raise InternalError(
                    f"run {run_id} is {record.status.value} but not live on this engine "
                    f"({'it is stopping; ' if self.stopping else ''}the next engine to "
                    "start resumes it); subscribe again then")
            async for snapshot in self._subscribe_remote(run_id):
                yield snapshot
            return
        seen = -1
        while True:
            await actor.wait_change(seen)
            if actor.lost:  # another engine has the run now: follow it there
                await actor.ended.wait()
                async for snapshot in self._subscribe_remote(run_id):
                    yield snapshot
                return
            seen = actor.version
            final = actor.finished.is_set()  # of this snapshot: it may finish while we yield
            yield actor.record.to_wire()
            if final:
                return

    async def _subscribe_remote(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """Snapshots of a run another engine executes, as its record is stored."""
        last: dict[str, Any] | None = None
        async with self.broker.watch(run_id) as watch:
            seen = watch.version
            stored = [await self.store.get_run(run_id)]
            while True:
                for raw in stored:  # as each commit stored it, in order
                    if raw is None:
                        raise NotFoundError(f"no run with id {run_id!r}")
                    wire = RunRecord.from_wire(raw).to_wire()
                    if wire != last:
                        last = wire
                        yield wire
                    if RunStatus(wire["status"]).is_final:
                        return
                await watch.wait_change(seen, REMOTE_REFRESH)
                stored = list(watch.records_after(seen))
                if not stored:  # no record came with the word (or no word): look ourselves
                    stored = [await self.store.get_run(run_id)]
                seen = watch.version

    async def open_reader(self, run_id: str, key: str, start: int) -> Reader:
        """A reader of stream ``key`` of ``run_id`` from index ``start``.

        Raises:
            NotFoundError: no such run.
        """
        await self._restored(run_id)
        actor = self.broker.owner(run_id) if isinstance(run_id, str) else None
        if actor is not None:
            return Reader(self.store, self.limits, run_id, key, start, actor.stream(key))
        record = await self.get_record(run_id)
        state = (await self.store.streams(run_id)).get(key)
        stream = OutputStream(key, length=state.length if state else 0,
                              nbytes=state.nbytes if state else 0,
                              ended=record.status.is_final or bool(state and state.ended),
                              tail_limit=0)
        if not stream.ended and self.broker.shared:  # executing on another engine
            stream = await self.broker.follow(run_id, key, stream)
        return Reader(self.store, self.limits, run_id, key, start, stream)


    # --- listing runs ----------------------------------------------------------------------

    async def list_runs(self, *, task: str | None = None, status: Any = None,
                        tags: Any = None, created_after: float | None = None,
                        created_before: float | None = None, limit: int = 20,
                        cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of runs (wire form), newest first, and the next page's cursor (``None``
        when this page is not full).

        Live runs are reported as they are now (the store holds their last committed state).

        Raises:
            BadFrameError: an unknown status, a limit outside 1-100, tags that are not
                strings, a time that is not epoch seconds, a malformed cursor.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= 100:
            raise BadFrameError("'limit' must be an integer in 1-100")
        known = {s.value for s in RunStatus}
        statuses = [] if status is None else status
        if not isinstance(statuses, (list, tuple)) or not set(statuses) <= known:
            raise BadFrameError(f"'status' must be a list of {sorted(known)}")
        tags = [] if tags is None else tags
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise BadFrameError("'tags' must be a list of strings")
        if task is not None and not isinstance(task, str):
            raise BadFrameError("'task' must be a task id")
        for name, when in (("created_after", created_after), ("created_before", created_before)):
            if when is not None and (isinstance(when, bool) or not isinstance(when, (int, float))
                                     or not math.isfinite(when)):
                raise BadFrameError(f"'{name}' must be epoch seconds or null")
        try:
            raws, nxt = await self.store.list_runs(
                task=task, status=list(statuses), tags=list(tags), created_after=created_after,
                created_before=created_before, limit=limit, cursor=cursor)
        except ValueError as exc:
            raise BadFrameError(str(exc)) from None
        runs = []
        for raw in raws:
            if raw["id"] in self.recovery.pending or raw["id"] in self.recovery.running:
                await self.recovery.ensure(raw["id"])  # its status as recovery makes it
                raw = await self.store.get_run(raw["id"]) or raw
            actor = self.broker.owner(raw["id"])  # a live run's record is the newest
            runs.append(actor.record.to_wire() if actor is not None
                        else RunRecord.from_wire(raw).to_wire())
        return runs, nxt

    # --- waitpoint tokens ----------------------------------------------------------------

    async def create_waitpoint(self, *, timeout: float | None = None,
                               idempotency_key: str | None = None, tags: Any = (),
                               run_id: str | None = None) -> StoredToken:
        """A new waitpoint token (or the one ``idempotency_key`` already made).

        Raises:
            BadFrameError: a timeout that is not a positive number of seconds, a key or a
                tag that is not a string of 1-``max_key_chars`` characters, over 32 tags.
        """
        limit = self.limits.max_key_chars
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0):
            raise BadFrameError("'timeout_s' must be a positive number of seconds or null")
        if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                            or not 0 < len(idempotency_key) <= limit):
            raise BadFrameError(f"'idempotency_key' must be a string of 1-{limit} characters")
        if not isinstance(tags, (list, tuple)) or len(tags) > 32 or not all(
                isinstance(t, str) and 0 < len(t) <= limit for t in tags):
            raise BadFrameError(f"'tags' must be at most 32 strings of 1-{limit} characters")
        now = self.clock()
        token = StoredToken(id="waitpoint_" + uuid.uuid4().hex[:24], created_at=now,
                            expires_at=None if timeout is None else now + timeout,
                            run_id=run_id, idempotency_key=idempotency_key, tags=tuple(tags))
        return await self.store.create_token(token)

    def waitpoint_token(self, token: StoredToken) -> str:
        """The public access token that may complete (and read) ``token``."""
        lifetime = self.limits.max_token_lifetime
        if token.expires_at is not None:  # a little longer than the token can be completed
            lifetime = min(lifetime, max(token.expires_at - self.clock(), 0.0) + 60.0)
        return self.auth.issue([f"write:waitpoints:{token.id}", f"read:waitpoints:{token.id}"],
                               lifetime)[0]

    async def get_waitpoint(self, token_id: str) -> StoredToken:
        """Raises: NotFoundError: no such token (or it was deleted with its run)."""
        token = await self.store.get_token(token_id) if isinstance(token_id, str) else None
        if token is None:
            raise NotFoundError(f"no waitpoint token with id {token_id!r}")
        return token

    async def complete_waitpoint(self, token_id: str, data: Any) -> tuple[StoredToken, bool]:
        """Complete a token with ``data``; whether this call completed it (the first
        completion wins; later ones change nothing and answer ``False``).

        Raises:
            NotFoundError: no such token. WaitpointTimeoutError: it timed out first.
            InvalidPayloadError: ``data`` is not JSON. PayloadTooLargeError: over
            ``max_record_bytes``.
        """
        try:
            raw = json_bytes(data)
        except TypeError as exc:
            raise InvalidPayloadError(f"waitpoint data is not JSON: {exc}") from None
        if len(raw) > self.limits.max_record_bytes:
            raise PayloadTooLargeError(f"waitpoint data of {len(raw)} bytes is over the "
                                       f"{self.limits.max_record_bytes}-byte limit")
        now = self.clock()
        token, completed = await self.store.complete_token(token_id, raw, now) \
            if isinstance(token_id, str) else (None, False)
        if token is None:
            raise NotFoundError(f"no waitpoint token with id {token_id!r}")
        if not completed and token.status != "COMPLETED":
            raise WaitpointTimeoutError(f"waitpoint token {token_id} timed out; it can no "
                                        f"longer be completed")
        if completed:
            log.info("waitpoint %s completed", token_id)
            self._token_completed(token_id)
            if (self.broker.shared and token.run_id is not None
                    and self.broker.owner(token.run_id) is None):
                try:  # the run waiting for it executes on another engine
                    await self.broker.route(token.run_id, {"op": "token", "token_id": token_id})
                except Exception as exc:  # it looks again by itself (REMOTE_REFRESH)
                    log.info("could not tell run %s's engine: %r", token.run_id, exc)
        return token, completed

    def _token_completed(self, token_id: str) -> None:
        event = self._token_waiters.pop(token_id, None)
        if event is not None:
            event.set()

    async def wait_waitpoint(self, token_id: str) -> Any:
        """The data ``token_id`` is completed with, once it is; ``TIMED_OUT`` if it times
        out first. Returns at once for a token completed earlier (also before a restart).

        Raises:
            NotFoundError: no such token.
        """
        while True:
            # registered before the read: a completion stored after the read sets it
            event = self._token_waiters.setdefault(token_id, trio.Event())
            try:
                token = await self.get_waitpoint(token_id)
            except NotFoundError:
                self._forget_waiter(token_id, event)
                raise
            if token.status == "COMPLETED":
                return orjson.loads(token.data) if token.data is not None else None
            now = self.clock()
            if token.timed_out(now):
                self._forget_waiter(token_id, event)
                return TIMED_OUT
            wait = math.inf if token.expires_at is None else token.expires_at - now
            if self.broker.shared:  # completed on another engine, and its word was lost
                wait = min(wait, REMOTE_REFRESH)
            with trio.move_on_after(wait):
                await event.wait()

    def _forget_waiter(self, token_id: str, event: trio.Event) -> None:
        if self._token_waiters.get(token_id) is event and not event.is_set():
            del self._token_waiters[token_id]


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


class RoutedProducer:
    """A producer inside this engine for a stream of a run that executes on another engine
    (``target=``): its chunks go there as numbered batches (:meth:`RunService.append`, routed),
    so a batch sent again after a failure is deduplicated like a client producer's."""

    #: chunks buffered before a put sends them
    BATCH = 256

    def __init__(self, service: RunService, run_id: str, key: str) -> None:
        self._service = service
        self._run_id = run_id
        self._key = key
        self._producer = "routed-" + uuid.uuid4().hex[:16]
        self._seq = 0
        self._buffer: list[Any] = []
        self._lock = trio.Lock()

    def put_nowait(self, item: Any) -> None:
        self._buffer.append(item)

    async def put(self, item: Any) -> None:
        self._buffer.append(item)
        await self._send_if_full()

    async def put_many(self, items: list[Any]) -> None:
        self._buffer.extend(items)
        await self._send_if_full()

    async def _send_if_full(self) -> None:
        if len(self._buffer) >= self.BATCH:
            await self.flush()
        else:
            await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        async with self._lock:
            while self._buffer:
                batch = self._buffer[:self._service.limits.frame_items]
                self._seq = await self._service.append(self._run_id, self._key,
                                                       self._producer, self._seq, batch)
                del self._buffer[:len(batch)]

    def close(self) -> None:
        pass  # what is buffered goes with the next flush; the run ends the stream
