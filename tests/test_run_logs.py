"""Issue 20 part 6: each run's life at INFO (triggered, started, waiting, finished with
status and duration), with run ids and nothing secret."""

from __future__ import annotations

import logging
import re
from typing import Any

from runwire import streams, task

from .helpers import API_KEY, final, finish, serve, until_go


@task(id="logged")
async def logged(payload: Any) -> str:
    await streams.input(id="approval").wait(timeout="1h")
    await until_go()
    return "ok"


@task(id="logged-fail")
async def logged_fail(payload: Any) -> str:
    raise ValueError("nope")


async def test_a_runs_life_is_logged_at_info(caplog, autojump_clock):
    caplog.set_level(logging.INFO, logger="runwire")
    async with serve([logged, logged_fail]):
        handle = await logged.trigger({"secret": "payload-secret-value"})
        await streams.input(id="approval").send(handle.id, {"ok": True})
        await finish(handle.id)
        await final(handle.id)
        failed = await logged_fail.trigger()
        await final(failed.id)
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    rid = re.escape(handle.id)
    for pattern in (rf"run {rid} triggered \(task logged\)", rf"run {rid} started \(task "
                    rf"logged, attempt 1\)", rf"run {rid} waiting",
                    rf"run {rid} finished COMPLETED in \d+\.\d+s",
                    rf"run {re.escape(failed.id)} finished FAILED in \d+\.\d+s"):
        assert re.search(pattern, text), pattern
    assert API_KEY not in text and "payload-secret-value" not in text
    assert handle.public_access_token not in text
