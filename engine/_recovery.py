"""What happens to runs that were live when the engine stopped (crash, ``kill -9``, restart).

Rules, applied at startup to every stored run whose status is not final:

* If its task is registered here and its retry policy has attempts left, it is retried: the
  attempt number goes up by one, its output streams continue at the next index, producer
  sequence numbers and input-record idempotency keys are kept (a client retrying a batch or a
  record is still deduplicated), and ``wait(idempotency_key=...)`` returns the stored record.
  Records that arrived before the stop are not delivered again.
* Otherwise it becomes ``CRASHED`` with error type ``EngineRestart``, and every one of its
  streams is ended, so readers finish.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sdk import RunStatus

from ._records import RunRecord
from ._store import Batch
from ._streams import OutputStream

if TYPE_CHECKING:
    from ._actor import RunActor
    from ._engine import Engine

log = logging.getLogger("runwire.engine")


async def recover(engine: Engine) -> None:
    for raw in await engine.store.unfinished_runs():
        record = RunRecord.from_wire(raw)
        task = engine.tasks.get(record.task_id)
        if task is not None and record.attempt < task.retry.max_attempts:
            await _retry(engine, record)
        else:
            await _crash(engine, record, task is None)


async def _retry(engine: Engine, record: RunRecord) -> None:
    store = engine.store
    states = await store.streams(record.id)
    seqs = await store.producer_seqs(record.id)
    records = await store.records(record.id)
    record.attempt += 1
    if record.status is not RunStatus.QUEUED:
        record.set_status(RunStatus.QUEUED, engine.clock())
    log.info("recovering run %s: attempt %d", record.id, record.attempt)

    def prepare(actor: RunActor) -> None:
        for key, state in states.items():
            actor.streams[key] = OutputStream(key, length=state.length, nbytes=state.nbytes,
                                              tail_limit=engine.limits.live_tail)
        actor.seqs.update(seqs)
        for key, stored in records.items():
            box = actor.input(key)
            box.count = len(stored)
            box.keys.update({r.idempotency_key: r.index for r in stored if r.idempotency_key})
        actor.touch()

    await engine._start_actor(record, engine.tasks[record.task_id], prepare)


async def _crash(engine: Engine, record: RunRecord, unknown_task: bool) -> None:
    states = await engine.store.streams(record.id)
    record.set_status(RunStatus.CRASHED, engine.clock())
    why = (f"task {record.task_id!r} is not registered on this engine" if unknown_task
           else "the engine stopped while the run was live and it has no retries left")
    record.error = {"type": "EngineRestart", "message": why}
    keys = set(states) | set(record.streams)
    await engine.store.commit(Batch(runs=[record.to_store()],
                                    ended=[(record.id, k) for k in sorted(keys)]))
    log.warning("run %s marked CRASHED: %s", record.id, why)
