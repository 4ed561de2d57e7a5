"""A retention sweep of a big backlog stops between steps when it is cancelled."""

import trio

from runwire.engine.run import RunRecord
from runwire.engine.store._sqlite import DELETE_STEP, SqliteStore
from runwire.engine.store import Batch
from runwire import RunStatus


async def test_a_cancelled_sweep_stops_after_the_step_in_flight(tmp_path):
    store = SqliteStore.from_url(f"sqlite:///{tmp_path}/sweep.db")
    try:
        runs = [RunRecord(id=f"run_{i}", task_id="t", status=RunStatus.COMPLETED,
                          finished_at=1.0).to_store() for i in range(DELETE_STEP * 4)]
        await store.commit(Batch(runs=runs))
        steps = []
        original = store._delete_some

        def step(cutoff):
            steps.append(cutoff)
            if len(steps) == 1:
                trio.from_thread.run_sync(scope.cancel)
            return original(cutoff)

        store._delete_some = step
        with trio.fail_after(30), trio.CancelScope() as scope:
            await store.delete_finished_before(10.0)
        assert scope.cancelled_caught
        assert len(steps) == 1  # the step in flight finished; no further step started
        left = [i for i in range(DELETE_STEP * 4) if await store.get_run(f"run_{i}")]
        assert len(left) == DELETE_STEP * 3
    finally:
        await store.aclose()
