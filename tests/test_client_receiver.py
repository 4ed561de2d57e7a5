"""The client's receiver: a consumer with an empty inbox receives its own frames (no task
switch), frames stay in order whoever receives them, and nothing is lost or stuck when the
consumer is cancelled or the connection breaks (``sdk._client._Receiver``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.testing

from runwire._client import _Inbox, _Receiver
from runwire.transport import ConnectionBroken

from .helpers import bounded


class FakeConn:
    """``receive()`` from a memory channel, as trio-websocket's ``get_message`` does; it
    counts the tasks inside ``receive()`` at once (``most_receiving``: the most ever)."""

    def __init__(self) -> None:
        self.send, self._receive = trio.open_memory_channel[Any](16)
        self.broken: Exception | None = None
        self.receiving = 0
        self.most_receiving = 0

    async def receive(self) -> Any:
        self.receiving += 1
        self.most_receiving = max(self.most_receiving, self.receiving)
        try:
            if self.broken is not None:
                await trio.lowlevel.checkpoint()
                raise self.broken
            try:
                return await self._receive.receive()
            except trio.EndOfChannel:
                raise ConnectionBroken("the peer closed the connection") from None
        finally:
            self.receiving -= 1


class Setup:
    """A receiver, its serve task, and two inboxes that frames ``(name, n)`` are routed to."""

    def __init__(self) -> None:
        self.conn = FakeConn()
        self.receiver = _Receiver(self.conn)  # type: ignore[arg-type]
        self.inboxes = {"a": _Inbox(), "b": _Inbox()}
        self.routed: list[tuple[Any, trio.lowlevel.Task]] = []
        self.serve_error: BaseException | None = None
        for inbox in self.inboxes.values():
            inbox.lead = lambda inbox: self.receiver.lead(inbox, self.route)

    def route(self, frame: Any) -> None:
        self.routed.append((frame, trio.lowlevel.current_task()))
        self.inboxes[frame[0]].put(frame)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[trio.lowlevel.Task]:
        """Run the serve task (and whatever the test starts in ``self.nursery``)."""
        async with trio.open_nursery() as self.nursery:
            yield await self.nursery.start(self.serve)
            self.nursery.cancel_scope.cancel()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(trio.lowlevel.current_task())
        try:
            while True:
                frame = await self.receiver.serve_receive()
                if frame is not None:
                    self.route(frame)
        except ConnectionBroken as exc:
            self.serve_error = exc
        finally:
            self.receiver.close()


@bounded(5)
async def test_a_waiting_consumer_receives_its_own_frames_in_order() -> None:
    s = Setup()
    got: list[Any] = []
    async with s.serving() as serve_task:

        async def consume() -> None:
            for _ in range(20):
                got.append(await s.inboxes["a"].get())

        s.nursery.start_soon(consume)
        for i in range(20):
            await trio.testing.wait_all_tasks_blocked()  # the consumer waits: it leads
            s.conn.send.send_nowait(("b", i))  # not its own: routed, it keeps receiving
            s.conn.send.send_nowait(("a", i))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [("a", i) for i in range(20)]
        # every frame was received by the consumer's task, none by the serve task
        assert len(s.routed) == 40
        assert all(task is not serve_task for _, task in s.routed)
        assert [s.inboxes["b"]._items.popleft() for _ in range(20)] == [
            ("b", i) for i in range(20)]
        # the consumer is done: the serve task receives again
        s.conn.send.send_nowait(("b", 99))
        await trio.testing.wait_all_tasks_blocked()
        assert s.routed[-1] == (("b", 99), serve_task)


@bounded(5)
async def test_a_frame_the_serve_task_already_got_is_routed_first() -> None:
    for _ in range(20):  # trio runs a pass's tasks in either order: try both, many times
        s = Setup()
        async with s.serving() as serve_task:
            await trio.testing.wait_all_tasks_blocked()
            # the serve task is handed ("a", 0) but has not run yet; the consumer asks to
            # lead in the same pass and ("a", 1) is already waiting behind it
            s.conn.send.send_nowait(("a", 0))
            s.conn.send.send_nowait(("a", 1))
            first = await s.inboxes["a"].get()
            second = await s.inboxes["a"].get()
            assert (first, second) == (("a", 0), ("a", 1))
            assert s.routed[0] == (("a", 0), serve_task)


@bounded(5)
async def test_a_cancelled_consumer_gives_the_connection_back() -> None:
    s = Setup()
    async with s.serving() as serve_task:
        scope = trio.CancelScope()

        async def consume() -> None:
            with scope:
                await s.inboxes["a"].get()  # leads, nothing comes

        s.nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert s.receiver.leader is s.inboxes["a"]
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert scope.cancelled_caught
        assert s.receiver.leader is None
        s.conn.send.send_nowait(("a", 0))  # nothing was lost: the serve task routes it
        await trio.testing.wait_all_tasks_blocked()
        assert s.routed == [(("a", 0), serve_task)]
        assert await s.inboxes["a"].get() == ("a", 0)


@bounded(5)
async def test_a_break_seen_by_the_consumer_reaches_the_serve_task() -> None:
    s = Setup()
    async with s.serving():

        # the consumer leads; the break is not its to handle: it waits on (the client tells
        # every inbox once the serve task has detached the link)
        s.nursery.start_soon(s.inboxes["a"].get)
        await trio.testing.wait_all_tasks_blocked()
        assert s.receiver.leader is s.inboxes["a"]
        await s.conn.send.aclose()  # the connection breaks under the consumer
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(s.serve_error, ConnectionBroken)
        assert s.receiver.closed and s.receiver.leader is None
        assert not await s.receiver.lead(s.inboxes["b"], s.route)  # a gone link: wait instead


@bounded(5)
async def test_only_one_task_receives_at_a_time() -> None:
    s = Setup()
    got: dict[str, list[Any]] = {"a": [], "b": []}
    async with s.serving():

        async def consume(name: str) -> None:
            while len(got[name]) < 50:
                got[name].append(await s.inboxes[name].get())

        s.nursery.start_soon(consume, "a")
        s.nursery.start_soon(consume, "b")
        for i in range(50):
            for name in ("a", "b"):
                await s.conn.send.send((name, i))
            if i % 7 == 0:
                await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        assert got == {name: [(name, i) for i in range(50)] for name in ("a", "b")}
        assert [frame for frame, _ in s.routed] == [
            (name, i) for i in range(50) for name in ("a", "b")]
        # the connection changed hands (consumers and the serve task received), but never
        # had two tasks inside receive() at once
        assert len({task for _, task in s.routed}) > 1
        assert s.conn.most_receiving == 1
