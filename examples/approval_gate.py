"""Approval gate: human-in-the-loop. The task drafts an announcement, then waits for approval.

While it waits (``await approval.wait(...)``) the run is ``WAITING`` and holds no queue slot;
the script (playing the human) reads the draft from the run's metadata, sends an approval with
an edit, and the run completes with the approved text.

    python -m examples.approval_gate
"""

from __future__ import annotations

import argparse
import attrs
import trio

from runwire.engine import open_engine
from runwire import Queue, RunStatus, connect, metadata, runs, streams, task

API_KEY = "approval-gate-example-key"


@attrs.frozen
class Approval:
    approved: bool
    by: str
    edited: str | None = None
    comment: str = ""


approval = streams.input(id="approval", type=Approval)
progress = streams.define(id="progress", type=str)


@task(id="publish", queue=Queue("publishing", concurrency_limit=1))
async def publish(payload: dict, ctx) -> dict:
    await progress.append("drafting")
    await trio.sleep(0.1)  # stands in for a model call
    draft = f"We are happy to announce {payload['topic']}!"
    metadata.set("draft", draft)
    await progress.append("waiting for approval")
    result = await approval.wait(timeout="1h")
    if not result.ok:
        return {"published": False, "reason": "nobody approved within an hour"}
    decision = result.output
    if not decision.approved:
        return {"published": False, "reason": decision.comment or "rejected"}
    await progress.append("publishing")
    return {"published": True, "text": decision.edited or draft, "approved_by": decision.by}


async def main() -> None:
    async with open_engine([publish], store="memory://", api_key=API_KEY, port=0) as eng:
        print(f"engine at {eng.url}")
        async with connect(eng.url, api_key=API_KEY):
            handle = await publish.trigger({"topic": "runwire 0.1"})
            async for run in runs.subscribe_to_run(handle.id):
                if run.status is RunStatus.WAITING:
                    break
            print(f"run {run.id} is {run.status.value}")
            print(f"draft: {run.metadata['draft']}")
            edited = run.metadata["draft"].replace("happy", "thrilled")
            await approval.send(handle.id, Approval(approved=True, by="alice", edited=edited))
            print("sent approval from alice")
            async for snapshot in runs.subscribe_to_run(handle.id):
                run = snapshot  # the last snapshot is the final one
            steps = await (await progress.read(handle.id)).collect()
            print(f"progress: {' -> '.join(steps)}")
            print(f"run {run.status.value}: {run.output}")
            if run.status is not RunStatus.COMPLETED or not run.output["published"]:
                raise SystemExit("the approved run did not complete")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.approval_gate",
                                     description=(__doc__ or "").split("\n\n")[0])
    return parser.parse_args()  # no options; --help describes the example


if __name__ == "__main__":
    _args()
    trio.run(main)
