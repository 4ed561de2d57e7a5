"""Tasks for the many-engines tests (``tests/test_redis_engines.py``), served by real engine
processes with ``python -m runwire.engine serve --tasks tests.redis_tasks``."""

from __future__ import annotations

from typing import Any

import trio

from runwire import RetryPolicy, streams, task

ai = streams.define(id="ai", type=str)
ext = streams.define(id="ext", type=str)  # written by clients, from outside the run
answer = streams.input(id="answer", type=str)
done = streams.input(id="done", type=dict)


@task(id="multi.chat")
async def chat(payload: dict[str, Any]) -> str:
    """Streams, then waits (suspended in ``wait()``) for an answer from any engine."""
    for i in range(payload["n"]):
        await ai.append(f"c{i}")
    got: str = (await answer.wait(timeout="1h")).unwrap()
    await ai.append(f"got {got}")
    return got


@task(id="multi.ticker", retry=RetryPolicy(max_attempts=2))
async def ticker(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A chunk every ``every`` seconds: killed mid-stream, the next attempt goes on."""
    for i in range(payload["n"]):
        await ai.append(f"a{ctx.attempt}-{i}")
        await trio.sleep(payload["every"])
    return {"attempt": ctx.attempt}


@task(id="multi.sink", retry=RetryPolicy(max_attempts=2))
async def sink(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Waits for ``done``; clients write into its ``ext`` stream meanwhile."""
    await ai.append(f"sink attempt {ctx.attempt}")
    (await done.wait(timeout="1h")).unwrap()
    return {"attempt": ctx.attempt}
