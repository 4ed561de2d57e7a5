"""What happens to runs that were live when the engine stopped (crash, ``kill -9``, restart).

Theory of operation: at startup the engine reads the list of stored runs whose status is not
final (``QUEUED``, ``EXECUTING``, ``WAITING``: one query) and starts serving at once; the
runs are then restored in the background, several at a time (:class:`Recovery`), each by
these rules. A request about a run that is not restored yet (retrieve, send, read,
subscribe, cancel, a page of ``runs.list``) restores that run first, ahead of the rest, and
then is served as usual, so nobody sees a run before its rules were applied. Finished runs
are not touched: their status, output and streams stay as they were. A graceful stop that
begins before every run is restored leaves the rest as stored, for the next engine.

1. **Unknown task.** Its task is not registered on this engine: it becomes ``CRASHED``
   (error type ``EngineRestart``) and every one of its streams is ended.
2. **Never started.** It is ``QUEUED`` and never began executing (``started_at`` is unset,
   e.g. it waited for a queue slot): it is started again as it was, with the same attempt
   number. Nothing of it ran, so it uses up no attempt.
3. **Attempts left.** Otherwise, if ``attempt < retry.max_attempts``, it is retried at once
   (no backoff): the attempt number goes up by one, and

   * its output streams continue at the next index: every committed (acknowledged) chunk
     stays, chunks a producer had buffered but the store had not committed are gone;
   * producer sequence numbers are kept, so a client retrying a batch is deduplicated;
   * input records stay stored and their idempotency keys are kept (a retried ``send``
     gets the original index); records that arrived before the stop are **not** delivered
     again, to ``once``/``wait``/``on`` handlers alike (``peek()`` starts at ``None``);
   * ``wait(idempotency_key=...)`` returns the record stored for that key (until its TTL);
   * payload, tags, metadata, parent and root are kept.
4. **Resumable.** Its journal (``engine/run/_journal.py``) says it can go on as the same
   attempt: it was suspended in a durable wait (input ``wait()``, ``wait.for_``,
   ``wait.for_token``, a ``trigger_and_wait``'s wait for its children) that had not
   completed, or a graceful stop handed it back. Then it is *resumed*, whatever its
   retry policy: the attempt number stays, the task is replayed from the top (stored steps
   and completed waits return their stored results, chunks it had written are not written
   again), a run that was waiting stays ``WAITING`` without a queue slot until the replay is
   back in its wait, which keeps its absolute deadline; input records its waits had not
   taken yet are delivered again. (This rule comes before rule 3: a restart is never an
   attempt.) A handed-back run is marked so that only one restart resumes it this way: if
   the engine crashes again before the run reaches a new wait, rule 3 or 5 applies.
5. **No attempts left.** It becomes ``CRASHED`` with error type ``EngineRestart``, and
   every one of its streams (each stored stream and each key in ``run.streams``) is ended,
   so readers finish.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import orjson
import trio

from runwire import RunStatus, Task
from runwire.transport import json_bytes

from ..run import RunActor, RunRecord, resume_key
from ..store import Batch, Waitpoint

if TYPE_CHECKING:
    from ._service import RunService

log = logging.getLogger("runwire.engine")


#: Runs restored at once in the background (each mostly waits for store reads).
RECOVERY_WORKERS = 8


class Recovery:
    """The stored runs that were live when the engine stopped, restored in the background;
    :meth:`ensure` restores one at once when a request needs it.

    Runs of a queue with a concurrency limit are restored in the order the store lists
    them, one after the other (a *lane* per queue): they take the queue's slots in that
    order, as they did before the restart. A request for one of them restores the runs
    ahead of it in its lane first. Every other run is restored by any of the workers.
    """

    def __init__(self, service: RunService) -> None:
        self.service = service
        #: run id -> stored record, not restored yet (in the order the store lists them)
        self.pending: dict[str, dict[str, Any]] = {}
        #: queue name (``None``: no limited queue) -> its pending runs, in order
        self.lanes: dict[str | None, dict[str, dict[str, Any]]] = {None: {}}
        self._lane_locks: dict[str, trio.Lock] = {}
        #: run id -> set once its restoring ends
        self.running: dict[str, trio.Event] = {}
        self.restored = 0
        #: set once every run listed at startup is restored (or the engine began stopping)
        self.done = trio.Event()

    def _lane(self, raw: dict[str, Any]) -> str | None:
        task = self.service.tasks.get(raw.get("task_id"))  # type: ignore[arg-type]
        queue = task.queue if task is not None else None
        if queue is None or queue.concurrency_limit is None:
            return None
        return queue.name

    async def load(self) -> int:
        """List the runs to restore (one store query); how many."""
        for raw in await self.service.store.unfinished_runs():
            if isinstance(raw.get("id"), str):
                self.pending[raw["id"]] = raw
                lane = self._lane(raw)
                if lane is not None and lane not in self._lane_locks:
                    self._lane_locks[lane] = trio.Lock()
                self.lanes.setdefault(lane, {})[raw["id"]] = raw
        return len(self.pending)

    async def run(self, workers: int = RECOVERY_WORKERS) -> None:
        """Restore every listed run: ``workers`` at a time, and each queue's lane in order."""
        total = len(self.pending)
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(self._worker, None)
                for lane in self._lane_locks:
                    nursery.start_soon(self._worker, lane)
        finally:
            self.done.set()
        if total:
            log.info("recovery: %d runs restored in %.2fs", self.restored,
                     trio.current_time() - began)

    async def _worker(self, lane: str | None) -> None:
        runs = self.lanes[lane]
        while runs and not self.service.stopping:
            if lane is None:
                await self._restore(next(iter(runs)))
            else:
                async with self._lane_locks[lane]:
                    if runs:
                        await self._restore(next(iter(runs)))

    async def _restore(self, run_id: str) -> None:
        raw = self.pending.pop(run_id)
        self.lanes[self._lane(raw)].pop(run_id, None)
        done = self.running[run_id] = trio.Event()
        try:
            with trio.CancelScope(shield=True):  # begun, a run is restored whole
                if await recover_claimed(self.service, run_id, raw):
                    self.restored += 1
        except Exception:  # one unreadable run must not keep the others from recovering
            log.exception("could not recover run %s; it is left as stored", run_id)
        finally:
            del self.running[run_id]
            done.set()

    async def take_over(self, run_id: str) -> bool:
        """Recover one run whose engine died (its lease expired), if this engine claims it
        first; whether it did. The same rules as a restart: a new attempt, or a durable wait
        resumed where it waited. Counted with the runs being restored, so a request about
        the run and a graceful stop wait for it."""
        if self.service.stopping or run_id in self.running:
            return False
        if run_id in self.pending:  # listed at startup: restored as the others are
            await self.ensure(run_id)
            return self.service.broker.owner(run_id) is not None
        done = self.running[run_id] = trio.Event()
        try:
            with trio.CancelScope(shield=True):
                taken = await recover_claimed(self.service, run_id)
            if taken:
                log.warning("took over run %s: the engine that executed it stopped renewing "
                            "its lease", run_id)
            return taken
        except Exception:
            log.exception("could not take over run %s; another engine may try", run_id)
            return False
        finally:
            del self.running[run_id]
            done.set()

    async def ensure(self, run_id: str) -> None:
        """Return once ``run_id`` is not waiting to be restored (restoring it now if so;
        not once a graceful stop has begun: it stays as stored, for the next engine)."""
        raw = self.pending.get(run_id)
        if raw is not None and not self.service.stopping:
            lane = self._lane(raw)
            if lane is None:
                await self._restore(run_id)
            else:  # the runs ahead of it in its queue first
                async with self._lane_locks[lane]:
                    runs = self.lanes[lane]
                    while run_id in runs and not self.service.stopping:
                        await self._restore(next(iter(runs)))
        if (done := self.running.get(run_id)) is not None:
            await done.wait()


async def recover_claimed(service: RunService, run_id: str,
                          raw: dict[str, Any] | None = None) -> bool:
    """Claim the run's lease and apply the module's rules to it; whether it was recovered
    here. A run another engine holds is that engine's. On a shared store the record is read
    again once claimed: the one listed at startup may be stale (its engine may have
    finished the run since, and a stale record must never be written back over it). A lease
    left without an actor (the run finished, crashed at once, or failed) is released."""
    broker = service.broker
    if not await broker.claim(run_id):
        return False
    try:
        if raw is None or broker.shared:
            raw = await service.store.get_run(run_id)
        if raw is None or RunRecord.from_wire(raw).status.is_final:
            return False
        await _recover_one(service, raw)
        return True
    finally:
        if broker.owner(run_id) is None:
            with trio.CancelScope(shield=True):
                await broker.release(run_id)


async def _recover_one(service: RunService, raw: dict[str, Any]) -> None:
    record = RunRecord.from_wire(raw)
    task = service.tasks.get(record.task_id)
    if task is None:
        await _crash(service, record, f"task {record.task_id!r} is not registered on this "
                                      "engine")
    elif record.status is RunStatus.QUEUED and record.started_at is None:
        await _resume(service, record, task, next_attempt=False)
    elif (point := await _resume_point(service, record)) is not None:
        await _resume(service, record, task, next_attempt=False, point=point)
    elif record.attempt < task.retry.max_attempts:
        await _resume(service, record, task, next_attempt=True)
    else:
        await _crash(service, record, "the engine stopped while the run was live and it has "
                                      "no retries left")


async def _resume_point(service: RunService, record: RunRecord) -> dict[str, Any] | None:
    """Where the run's journal says its attempt can be resumed (rule 4), or ``None``."""
    store = service.store
    raw = await store.waitpoint(record.id, resume_key(record.attempt), -math.inf)
    point = orjson.loads(raw) if raw is not None else None
    if not isinstance(point, dict):
        return None
    wait = point.get("wait")
    if isinstance(wait, str):
        entry = await store.waitpoint(record.id, wait, -math.inf)
        if entry is not None and "deadline" in orjson.loads(entry):
            return point  # suspended in a wait that has not completed
    if point.get("handback") is True:
        # once: a crash before it reaches a new wait is a crash (rule 3 or 5)
        again = {**point, "handback": False}
        await store.commit(Batch(waitpoints=[Waitpoint(
            record.id, resume_key(record.attempt), json_bytes(again), None)],
            leases=_leases(service, record.id)))
        return point
    return None


async def _resume(service: RunService, record: RunRecord, task: Task[Any, Any], *,
                  next_attempt: bool, point: dict[str, Any] | None = None) -> None:
    """Start an actor for the run again, on top of what the store kept of it."""
    store = service.store
    states = await store.streams(record.id)
    seqs = await store.producer_seqs(record.id)
    records = await store.records(record.id)
    if next_attempt:
        record.attempt += 1
    waiting = point is not None and point.get("wait") is not None
    if waiting:
        if record.status is not RunStatus.WAITING:
            record.set_status(RunStatus.WAITING, service.clock())
    elif record.status is not RunStatus.QUEUED:
        record.set_status(RunStatus.QUEUED, service.clock())
    log.info("recovering run %s: attempt %d%s", record.id, record.attempt,
             " (resumed)" if point is not None else "")

    def restore(actor: RunActor) -> None:
        actor.restore(states, seqs, records, point)

    await service.start_actor(record, task, restore)


async def _crash(service: RunService, record: RunRecord, why: str) -> None:
    """Mark the run ``CRASHED`` and end every one of its streams, in one batch."""
    states = await service.store.streams(record.id)
    record.set_status(RunStatus.CRASHED, service.clock())
    record.error = {"type": "EngineRestart", "message": why}
    keys = set(states) | set(record.streams)
    await service.store.commit(Batch(runs=[record.to_store()],
                                     ended=[(record.id, k) for k in sorted(keys)],
                                     leases=_leases(service, record.id)))
    log.warning("run %s marked CRASHED: %s", record.id, why)


def _leases(service: RunService, run_id: str) -> list[tuple[str, str]]:
    """The run's lease, for a batch written under it (refused if another engine has
    claimed the run since this one did)."""
    token = service.broker.lease(run_id)
    return [(run_id, token)] if token is not None else []
