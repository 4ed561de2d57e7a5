"""Tasks for the restart tests (``tests/test_restart.py``).

Each one *parks* at a known point (it appends :data:`PARKED` to its ``ai`` stream, then
sleeps or waits) so a test can stop the engine there. The subprocess test serves them with
``python -m runwire.engine serve --tasks tests.crash_tasks``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio

from runwire import Queue, RetryPolicy, step, streams, task, wait

PARKED = "parked"

ai = streams.define(id="ai", type=str)
side = streams.define(id="side", type=str)
ext = streams.define(id="ext", type=str)  # written by clients, from outside the run
approval = streams.input(id="approval", type=dict)
notes = streams.input(id="notes", type=dict)
done = streams.input(id="done", type=dict)


@task(id="crash.finished")
async def finished(payload: dict[str, Any]) -> dict[str, Any]:
    """Finishes before any stop: must come back exactly as it was."""
    for i in range(payload["n"]):
        await ai.append(f"f{i}")
    return {"n": payload["n"]}


@task(id="crash.retried", retry=RetryPolicy(max_attempts=2))
async def retried(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Attempt 1 streams, waits for approval (idempotency key), parks; attempt 2 finishes.

    Attempt 2 gets the approval from the stored waitpoint, and checks that a ``notes`` record
    sent to attempt 1 is not delivered again.
    """
    if ctx.attempt == 1:
        for i in range(3):
            await ai.append(f"a1-{i}")
    got = (await approval.wait(timeout="1h", idempotency_key="approval-1")).unwrap()
    await ai.append(f"a{ctx.attempt}:got:{got['answer']}")
    if ctx.attempt == 1:
        await ai.append(PARKED)
        await trio.sleep_forever()
    late = await notes.once(timeout_ms=100)
    await ai.append("a2:notes:" + ("redelivered" if late.ok else "none"))
    return {"attempt": ctx.attempt}


@task(id="crash.fragile")
async def fragile(payload: dict[str, Any]) -> None:
    """No retries: a stop makes it ``CRASHED``; both its streams must end."""
    await side.pipe(f"s{i}" for i in range(payload["n"])).wait_until_complete()
    await ai.append(PARKED)
    await trio.sleep_forever()


@task(id="crash.queued", queue=Queue("crash-solo", concurrency_limit=1))
async def queued(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """With ``hog``, holds the queue's only slot forever; without, waits behind it."""
    if payload.get("hog"):
        await ai.append(PARKED)
        await trio.sleep_forever()
    return {"attempt": ctx.attempt}


@task(id="crash.sink", retry=RetryPolicy(max_attempts=2))
async def sink(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Parks ``WAITING`` for a ``done`` record; clients write into its ``ext`` stream."""
    await ai.append(f"sink attempt {ctx.attempt}")
    (await done.wait(timeout="1h")).unwrap()
    return {"attempt": ctx.attempt}


# --- durable waits (tests/test_durable.py) ---------------------------------------------------

#: Fake LLM calls made in this process (a replay that called it again would show here).
LLM_CALLS: list[str] = []


async def fake_llm(topic: str) -> AsyncIterator[str]:
    """A fake LLM: a draft that differs on every call (a nonce), streamed in tokens."""
    nonce = uuid.uuid4().hex[:8]
    LLM_CALLS.append(nonce)
    for word in ["Draft", f" about {topic}", f" ({nonce})", "."]:
        await trio.sleep(0)
        yield word


async def write_draft(topic: str) -> str:
    """Stream a draft into ``ai`` and return it (a step: done once per run)."""
    tokens: list[str] = []
    piped = ai.pipe(fake_llm(topic))
    async for token in piped.stream:
        tokens.append(token)
    await piped.wait_until_complete()  # stored before the step's result is
    return "".join(tokens)


@task(id="durable.draft")  # the default retry policy: one attempt
async def draft(payload: dict[str, Any]) -> dict[str, Any]:
    """Stream a draft, wait for approval (``timeout`` seconds), finish with the draft."""
    text = await step("draft", write_draft, payload["topic"])
    await ai.append("awaiting approval")
    got = await approval.wait(timeout=payload.get("timeout", "1h"))
    if not got.ok:
        await ai.append("timed out")
        return {"draft": text, "timed_out": True}
    await ai.append(f"approved by {got.unwrap()['by']}")
    return {"draft": text, "approved_by": got.unwrap()["by"]}


@task(id="durable.slow")
async def slow(payload: dict[str, Any]) -> dict[str, Any]:
    """Executes (not waiting) for ``seconds``, writing a chunk every 50 ms."""
    count = int(payload["seconds"] / 0.05)
    for i in range(count):
        await side.append(f"t{i}")
        await trio.sleep(0.05)
    return {"chunks": count}


@task(id="durable.child")
async def child(payload: dict[str, Any]) -> dict[str, Any]:
    """Waits for approval; its output is who approved."""
    got = (await approval.wait(timeout="1h")).unwrap()
    return {"by": got["by"]}


@task(id="durable.parent")  # the default retry policy: one attempt
async def parent(payload: dict[str, Any]) -> dict[str, Any]:
    """Triggers a child and waits for it (a durable wait); writes around the wait."""
    await ai.append("parent started")
    result = await child.trigger_and_wait({"n": 1})
    await ai.append(f"child approved by {result.unwrap()['by']}")
    return {"child": result.id, "by": result.unwrap()["by"]}


@task(id="durable.token")  # the default retry policy: one attempt
async def token_waiter(payload: dict[str, Any]) -> dict[str, Any]:
    """Makes a waitpoint token, says its id on ``ai``, waits for it (a durable wait)."""
    token = await wait.create_token(timeout=payload.get("timeout", "1h"))
    await ai.append(token.id)
    got = await wait.for_token(token)
    if not got.ok:
        await ai.append("timed out")
        return {"token": token.id, "timed_out": True}
    await ai.append("completed")
    return {"token": token.id, "data": got.unwrap()}
