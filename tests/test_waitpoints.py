"""Issue 20 part 4: waitpoint tokens (create, wait, complete) from tasks and backends, over
both transports, durable across an engine restart; and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from runwire import (
    ForbiddenError, InputStreamTimeoutError, InvalidPayloadError, NotFoundError,
    PayloadTooLargeError, RetryPolicy, RunStatus, UnauthorizedError, WaitpointTimeoutError, WaitpointToken,
    auth, connect, metadata, runs, task, wait,
)
from runwire.engine import Limits, open_engine

from .helpers import API_KEY, final, serve


@attrs.define
class Decision:
    approved: bool
    by: str


@task(id="token-waiter")
async def token_waiter(payload: dict[str, Any]) -> dict[str, Any]:
    token = await wait.create_token(timeout=payload.get("timeout", "1h"),
                                    idempotency_key=payload.get("key"), tags=["review"])
    metadata.set("token", {"id": token.id, "pat": token.public_access_token})
    result = await wait.for_token(token, type=Decision)
    if not result.ok:
        return {"ok": False, "error": type(result.error).__name__}
    assert result.output is not None
    return {"ok": True, "by": result.output.by, "approved": result.output.approved}


async def _token_of(run_id: str) -> dict[str, str]:
    with trio.fail_after(60):
        while True:
            run = await runs.retrieve(run_id)
            if "token" in run.metadata and run.status is RunStatus.WAITING:
                return run.metadata["token"]
            await trio.sleep(0.5)


async def test_a_backend_completes_a_token_a_run_waits_for(transport, autojump_clock):
    async with serve([token_waiter], transport):
        handle = await token_waiter.trigger({})
        token = await _token_of(handle.id)
        assert (await runs.retrieve(handle.id)).status is RunStatus.WAITING
        seen = await wait.retrieve_token(token["id"])
        assert seen.status == "WAITING" and seen.tags == ("review",)
        assert seen.run_id == handle.id and seen.public_access_token is None
        assert await wait.complete_token(token["id"], Decision(True, "alice")) is True
        # the first completion wins: a second one changes nothing
        assert await wait.complete_token(token["id"], {"approved": False, "by": "eve"}) is False
        run = await final(handle.id)
        done = await wait.retrieve_token(token["id"])
    assert run.output == {"ok": True, "by": "alice", "approved": True}
    assert done.status == "COMPLETED" and done.output == {"approved": True, "by": "alice"}


async def test_a_token_times_out_like_an_input_wait(transport, autojump_clock):
    async with serve([token_waiter], transport):
        handle = await token_waiter.trigger({"timeout": 30})
        token = await _token_of(handle.id)
        run = await final(handle.id)
        assert run.output == {"ok": False, "error": "WaitpointTimeoutError"}
        with pytest.raises(WaitpointTimeoutError, match="timed out"):
            await wait.complete_token(token["id"], {"approved": True, "by": "late"})
        assert (await wait.retrieve_token(token["id"])).status == "TIMED_OUT"


async def test_the_public_access_token_completes_that_token_only(autojump_clock):
    async with serve([token_waiter], "ws") as eng:
        first = await token_waiter.trigger({})
        second = await token_waiter.trigger({})
        one, two = await _token_of(first.id), await _token_of(second.id)
        async with connect(eng.url, access_token=one["pat"]):
            with pytest.raises(ForbiddenError):
                await wait.complete_token(two["id"], {"approved": True, "by": "x"})
            with pytest.raises(ForbiddenError):
                await runs.retrieve(first.id)
            with pytest.raises(ForbiddenError):  # only the API key creates tokens
                await wait.create_token()
            assert await wait.complete_token(one["id"], {"approved": True, "by": "bob"})
        assert (await final(first.id)).output["by"] == "bob"
        await wait.complete_token(two["id"], {"approved": False, "by": "ann"})
        assert (await final(second.id)).output["approved"] is False


async def test_bad_input_is_refused_and_changes_nothing(transport, autojump_clock):
    limits = Limits(max_record_bytes=1000)
    async with serve([token_waiter], transport, limits=limits):
        handle = await token_waiter.trigger({})
        token = await _token_of(handle.id)
        with pytest.raises(NotFoundError):
            await wait.complete_token("waitpoint_nope", 1)
        with pytest.raises(NotFoundError):
            await wait.retrieve_token("waitpoint_nope")
        with pytest.raises(TypeError):
            await wait.complete_token(42, 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await wait.complete_token(token["id"], object())
        with pytest.raises(PayloadTooLargeError):
            await wait.complete_token(token["id"], "x" * 5000)
        with pytest.raises(ValueError):
            await wait.create_token(timeout="soon")
        with pytest.raises(TypeError):
            await wait.create_token(tags="one")  # type: ignore[arg-type]
        # the wrong type is refused by the waiter's type, not stored as a win
        assert (await runs.retrieve(handle.id)).status is RunStatus.WAITING
        assert await wait.complete_token(token["id"], {"approved": "yes", "by": 1}) is True
        run = await final(handle.id)
    assert run.output == {"ok": False, "error": "InvalidPayloadError"}


async def test_backend_tokens_and_idempotency_keys(transport, autojump_clock):
    async with serve([token_waiter], transport):
        made = await wait.create_token(timeout="1h", idempotency_key="order-7", tags=["x"])
        again = await wait.create_token(timeout="1h", idempotency_key="order-7")
        assert isinstance(made, WaitpointToken) and again.id == made.id
        assert made.expires_at is not None and made.public_access_token
        handle = await token_waiter.trigger({"key": "order-7"})  # the run waits for it too
        await trio.sleep(5)
        assert (await runs.retrieve(handle.id)).status is RunStatus.WAITING
        assert await wait.complete_token(made, {"approved": True, "by": "api"})
        assert (await final(handle.id)).output["by"] == "api"
        free = await wait.create_token()
        assert free.expires_at is None and free.run_id is None
        with pytest.raises(Exception, match="inside a running task"):
            wait.for_token(free)


@task(id="restart-waiter", retry=RetryPolicy(max_attempts=3))
async def restart_waiter(payload: Any) -> Any:
    token = await wait.create_token(timeout="1d", idempotency_key="restart-1")
    metadata.set("token", {"id": token.id, "pat": token.public_access_token})
    return await wait.for_token(token).unwrap()


@pytest.mark.parametrize("complete_before_restart", [False, True])
async def test_tokens_survive_a_restart(tmp_path: Path, complete_before_restart: bool):
    store = f"sqlite:///{tmp_path / 'wp.db'}"
    with trio.fail_after(60):
        async with open_engine([restart_waiter], store=store, api_key=API_KEY) as eng:
            async with eng.connect():
                handle = await restart_waiter.trigger()
                token = await _token_of(handle.id)
                if complete_before_restart:  # completed, then the engine stops before the
                    eng.service._token_waiters.clear()  # run saw it (nobody wakes it)
                    assert await wait.complete_token(token["id"], "yes")
        async with open_engine([restart_waiter], store=store, api_key=API_KEY) as eng:
            async with eng.connect():
                if not complete_before_restart:
                    await _token_of(handle.id)
                    assert await wait.complete_token(token["id"], "yes")
                run = await final(handle.id)
    assert run.status is RunStatus.COMPLETED and run.output == "yes"
    # a graceful stop hands the run back (issue 19): the next engine resumes the same attempt,
    # whose replay makes the same token again (same key) and gets its data
    assert run.attempt == 1


async def test_oversized_and_malformed_token_options_are_refused(transport, autojump_clock):
    from runwire import BadFrameError

    async with serve([token_waiter], transport):
        with pytest.raises(BadFrameError, match="idempotency_key"):
            await wait.create_token(idempotency_key="k" * 300)
        with pytest.raises(BadFrameError, match="tags"):
            await wait.create_token(tags=[f"t{i}" for i in range(40)])
        with pytest.raises(BadFrameError, match="tags"):
            await wait.create_token(tags=["x" * 300])
        with pytest.raises(ValueError, match="negative"):  # checked in the SDK
            await wait.create_token(timeout=-1)
        with pytest.raises(BadFrameError, match="timeout"):  # and by the engine
            await wait.create_token(timeout=0)
        assert (await wait.create_token(tags=["ok"])).tags == ("ok",)  # nothing broke
