"""A run lost to another engine (its lease claimed: ``RunActor.lose``) while a request's
commit was under way: the store may have taken that commit, so the request is not sent on
to the new engine unless it can be recognised there (an idempotency key)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from runwire import InternalError
from runwire.engine.run import MovedWhileStoringError
from runwire.engine.store import MemoryStore

from .helpers import API_KEY, bounded, serve
from .test_lazy_journal import TASKS, idle, parked

AUTH = {"authorization": f"Bearer {API_KEY}"}


class _HeldStore(MemoryStore):
    """While ``held`` is set, a commit stages its batch and then never ends (a commit under
    way, as on a Redis that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.holding = trio.Event()

    async def commit_staged(self, stage: Any) -> None:
        if not self.held:
            return await super().commit_staged(stage)
        stage()  # taken: on its way to the store (an EVALSHA sent, say), never answered
        self.holding.set()
        await trio.sleep_forever()


async def test_a_send_whose_commit_was_under_way_when_the_run_was_lost_is_not_sent_on(
        autojump_clock: Any) -> None:
    """Lost (another engine claimed the run) while a send's commit was under way: the store
    may have taken it, so without an idempotency key it is not sent on to the new engine
    (it could be stored twice); the client is told it may or may not have been stored."""
    store = _HeldStore()
    async with serve(TASKS, store=store) as eng:
        run_id = (await idle.trigger(None)).id
        await parked(eng, run_id)
        actor = eng.service.broker.owner(run_id)
        assert actor is not None
        store.held = True
        errors: list[BaseException] = []

        async def send() -> None:
            try:
                await eng.service.send_input(run_id, "notes", {"n": 1}, None)
            except InternalError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await store.holding.wait()
            actor.lose("claimed by another engine (test)")
        assert len(errors) == 1 and isinstance(errors[0], MovedWhileStoringError), errors
        assert "may or may not have been stored" in str(errors[0])
        store.held = False


@bounded(30)  # real time: the request crosses a real socket
async def test_over_http_such_a_send_is_503_with_retry_after() -> None:
    """The HTTP door answers a run its engine cannot take now (``RunUnreachableError``:
    moved, between engines, not answering) with 503 and ``Retry-After``, code ``internal``
    as on the websocket; here a send whose commit was under way when the run was lost."""
    import httpx

    store = _HeldStore()
    async with serve(TASKS, "ws", store=store) as eng:
        run_id = (await idle.trigger(None)).id
        await parked(eng, run_id)
        actor = eng.service.broker.owner(run_id)
        assert actor is not None
        store.held = True
        answers: list[httpx.Response] = []

        async def send() -> None:
            async with httpx.AsyncClient(base_url=eng.http_url, headers=AUTH) as client:
                answers.append(await client.post(f"/v1/api/runs/{run_id}/inputs/notes",
                                                 json={"n": 1}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await store.holding.wait()
            actor.lose("claimed by another engine (test)")
        store.held = False
    [answer] = answers
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "2"
    assert answer.json()["code"] == "internal"
    assert "may or may not have been stored" in answer.json()["message"]
