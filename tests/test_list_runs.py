"""Issue 20 part 6: ``runs.list`` with filters and stable pages, over both transports."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import trio

from runwire import BadFrameError, ForbiddenError, RunStatus, auth, connect, runs, task

from .helpers import final, finish, serve, until_go


@task(id="list-a")
async def list_a(payload: Any) -> Any:
    if payload == "fail":
        raise ValueError("no")
    if payload == "wait":
        await until_go()
    return payload


@task(id="list-b")
async def list_b(payload: Any) -> Any:
    return payload


async def test_runs_list_filters_and_pages(transport, autojump_clock):
    async with serve([list_a, list_b], transport) as eng:
        made = []
        for task_, payload, tags in [(list_a, 1, ["x"]), (list_b, 2, []),
                                     (list_a, "fail", ["x", "y"]), (list_a, "wait", ["y"])]:
            made.append((await task_.trigger(payload, tags=tags)).id)
            await trio.sleep(1)  # distinct creation times
        for run_id in made[:3]:
            await final(run_id)
        everything = await runs.list()
        assert [r.id for r in everything.runs] == made[::-1] and everything.cursor is None
        assert everything.runs[0].status is RunStatus.EXECUTING  # live runs as they are now
        assert [r.id for r in (await runs.list(task="list-a")).runs] == \
            [made[3], made[2], made[0]]
        assert [r.id for r in (await runs.list(status="FAILED")).runs] == [made[2]]
        assert [r.id for r in (await runs.list(
            status=[RunStatus.COMPLETED, RunStatus.FAILED])).runs] == [made[2], made[1], made[0]]
        assert [r.id for r in (await runs.list(tags=["x", "y"])).runs] == [made[2]]
        middle = everything.runs[2].created_at
        assert [r.id for r in (await runs.list(created_after=middle)).runs] == made[:1:-1]
        when = datetime.datetime.fromtimestamp(middle - 0.5, datetime.timezone.utc)
        assert [r.id for r in (await runs.list(created_before=when)).runs] == [made[0]]
        first = await runs.list(limit=2)
        assert [r.id for r in first.runs] == [made[3], made[2]]
        newer = (await list_b.trigger(9)).id  # a new run does not shift the next page
        second = await runs.list(limit=2, cursor=first.cursor)
        assert [r.id for r in second.runs] == [made[1], made[0]]
        assert (await runs.list(limit=2, cursor=second.cursor)).runs == ()
        assert (await runs.list(limit=1)).runs[0].id == newer
        await finish(made[3])
        # bad input: a clear error, nothing changes
        for bad in [{"limit": 0}, {"limit": 101}, {"cursor": "nope"}]:
            with pytest.raises(BadFrameError):
                await runs.list(**bad)
        with pytest.raises(ValueError):
            await runs.list(status="DONE")
        with pytest.raises(TypeError):
            await runs.list(created_after="yesterday")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await runs.list(status=5)  # type: ignore[arg-type]
        assert eng.statistics().live_runs == 0


async def test_listing_runs_needs_the_api_key_or_a_read_runs_scope(autojump_clock):
    async with serve([list_b], "ws") as eng:
        handle = await list_b.trigger(1)
        await final(handle.id)
        one_run = await auth.create_public_token(scopes=[f"read:runs:{handle.id}"])
        every_run = await auth.create_public_token(scopes=["read:runs"])
        async with connect(eng.url, access_token=handle.public_access_token):
            with pytest.raises(ForbiddenError):
                await runs.list()
        async with connect(eng.url, access_token=one_run):
            with pytest.raises(ForbiddenError):
                await runs.list()
        async with connect(eng.url, access_token=every_run):
            assert [r.id for r in (await runs.list()).runs] == [handle.id]


@task(id="lister")
async def lister(payload: Any) -> list[str]:
    return [r.task_id for r in (await runs.list(task="list-b")).runs]


async def test_runs_list_inside_a_task(autojump_clock):
    async with serve([list_b, lister]):
        await final((await list_b.trigger(1)).id)
        assert (await final((await lister.trigger()).id)).output == ["list-b"]
