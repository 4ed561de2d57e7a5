"""What happens to runs that were live when the engine stopped (crash, ``kill -9``, restart).

Theory of operation: at startup, before it serves anyone, the engine reads every stored run
whose status is not final (``QUEUED``, ``EXECUTING``, ``WAITING``) and applies these rules.
Finished runs are not touched: their status, output and streams stay as they were.

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
   attempt: it was suspended in a durable wait (input ``wait()``, ``wait.for_``) that had
   not completed, or a graceful stop handed it back. Then it is *resumed*, whatever its
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

from runwire import RunStatus, Task
from runwire.transport import json_bytes

from ..run import RunActor, RunRecord, resume_key
from ..store import Batch, Waitpoint

if TYPE_CHECKING:
    from ._service import RunService

log = logging.getLogger("runwire.engine")


async def recover(service: RunService) -> None:
    """Apply the module's rules to every stored run that is not finished and that no other
    engine holds (engines sharing a Redis store each claim a run before recovering it)."""
    for raw in await service.store.unfinished_runs():
        claimed = False
        try:
            claimed = await service.broker.claim(raw["id"])
            if claimed:
                await _recover_one(service, raw)
        except Exception:  # one unreadable run must not keep the engine from starting
            log.exception("could not recover run %s; it is left as stored", raw.get("id"))
            if claimed and service.broker.owner(raw["id"]) is None:
                await service.broker.release(raw["id"])  # not held by an engine that failed it


async def take_over(service: RunService, run_id: str) -> bool:
    """Recover one run whose engine died (its lease expired), if this engine claims it
    first; whether it did. The same rules as a restart: a new attempt, or a durable wait
    resumed where it waited."""
    if not await service.broker.claim(run_id):
        return False
    try:
        raw = await service.store.get_run(run_id)
        if raw is None or RunRecord.from_wire(raw).status.is_final:
            await service.broker.release(run_id)  # finished just before the claim
            return False
        log.warning("taking over run %s: the engine that executed it stopped renewing its "
                    "lease", run_id)
        await _recover_one(service, raw)
        return True
    except Exception:
        log.exception("could not take over run %s; another engine may try", run_id)
        await service.broker.release(run_id)
        return False


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
            record.id, resume_key(record.attempt), json_bytes(again), None)]))
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
                                     ended=[(record.id, k) for k in sorted(keys)]))
    log.warning("run %s marked CRASHED: %s", record.id, why)
