"""A record sent from inside a task skips the wire codec; a bad one must fail the sender only."""

import pytest

from runwire import RunStatus, streams, task
from runwire.transport._codec import _ORJSON_WRITE_DEPTH

from .helpers import final, serve

note = streams.input(id="note")


@task(id="listener")
async def listener(payload):
    result = await note.once(timeout_ms=60_000)
    return result.output if result.ok else "timeout"


@task(id="bad-sender")
async def bad_sender(payload):
    try:
        # too deep for orjson to write (the wire codec's MAX_DEPTH does not apply here)
        bad = object() if payload["kind"] == "object" else _deep(_ORJSON_WRITE_DEPTH)
        await note.send(payload["run"], bad)
    except TypeError as exc:
        assert "not JSON" in str(exc)
        await note.send(payload["run"], "fine")
        return "refused"
    return "sent"


def _deep(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("kind", ["object", "deep"])
async def test_a_non_json_record_from_a_task_fails_the_sender_not_the_target(
        autojump_clock, kind):
    async with serve([listener, bad_sender]):
        handle = await listener.trigger({})
        result = await bad_sender.trigger_and_wait({"run": handle.id, "kind": kind})
        assert result.output == "refused"
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.output == "fine"
