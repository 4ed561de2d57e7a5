"""The engine's side of :mod:`runwire.runtime`: what SDK calls do when made inside a run."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import trio

from runwire import Run, RunContext, RunHandle, TaskRunResult, streams
from runwire.runtime import Completion, ProducerSink

if TYPE_CHECKING:
    from ._actor import RunActor
    from ._env import RunServices


class _InputChannel:
    """``runwire.runtime.InputChannel`` over an actor's :class:`InputMailbox`."""

    def __init__(self, actor: RunActor, key: str) -> None:
        self._actor = actor
        self._key = key

    def on(self, handler: Callable[[Any], Any], fail_run: bool) -> Callable[[], None]:
        return self._actor.add_handler(self._key, handler, fail_run)

    async def once(self, timeout: float | None) -> Any:
        return await self._actor.input(self._key).next_record(timeout)

    async def wait(self, timeout: float | None, idempotency_key: str | None,
                   idempotency_key_ttl: float | None) -> Any:
        return await self._actor.wait_input(self._key, timeout, idempotency_key,
                                            idempotency_key_ttl)

    def peek(self) -> Any:
        return self._actor.input(self._key).last

    def declare(self, check: Callable[[Any], Any]) -> None:
        self._actor.input_checks[self._key] = check


class RunBackend:
    """Bound to the run's context by the actor; the SDK finds it through ``runwire.runtime``.

    Calls about the run itself go to its actor; the rest (other runs, children, tokens) to
    the services the actor was given.
    """

    def __init__(self, actor: RunActor, services: RunServices) -> None:
        self.actor = actor
        self.services = services
        self._context: RunContext | None = None

    @property
    def context(self) -> RunContext:
        """The current attempt's context."""
        assert self._context is not None, "set by the actor before the task runs"
        return self._context

    @context.setter
    def context(self, context: RunContext) -> None:
        self._context = context

    # --- streams -------------------------------------------------------------------------

    def resolve_target(self, target: str) -> str:
        if not isinstance(target, str) or not target:
            raise TypeError("target must be 'self', 'parent', 'root' or a run id")
        record = self.actor.record
        if target == "self":
            return record.id
        if target == "parent":
            return record.parent_id or record.id
        if target == "root":
            return record.root_id or record.id
        return target

    def open_producer(self, run_id: str, key: str) -> ProducerSink:
        if run_id == self.actor.id:  # its own stream: counted for the journal
            return self.actor.producer(key, own=True)
        return self.services.open_producer(run_id, key)

    def spawn_producer(self, fn: Callable[[], Awaitable[None]]) -> Completion:
        done = Completion()
        self.actor.spawn_producer(fn, done)
        return done

    def spawn_background(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.actor.spawn_handler(fn)

    async def read(self, run_id: str, key: str, start: int,
                   timeout: float | None) -> AsyncGenerator[list[Any], None]:
        reader = await self.services.open_reader(run_id, key, start)
        while True:
            batch = await reader.next_batch(timeout)
            if batch is None:
                return
            yield [orjson.loads(item) for item in batch]

    async def send(self, run_id: str, key: str, data: Any,
                   idempotency_key: str | None = None) -> int:
        return await self.services.send_input(run_id, key, data, idempotency_key)

    # --- tasks and runs ----------------------------------------------------------------------

    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any]) -> RunHandle:
        record = await self.services.trigger(task_id, payload, options, parent=self.actor)
        return RunHandle(id=record.id, public_access_token=self.services.run_token(record.id))

    async def trigger_and_wait(self, task_id: str, payload: Any,
                               options: dict[str, Any]) -> TaskRunResult[Any]:
        return (await self.batch_trigger_and_wait(task_id, [(payload, options)]))[0]

    async def batch_trigger_and_wait(self, task_id: str, items: list[tuple[Any, dict[str, Any]]],
                                     ) -> list[TaskRunResult[Any]]:
        records = [await self.services.trigger(task_id, p, o, parent=self.actor)
                   for p, o in items]
        async with self.actor.suspended():  # a parent waiting on children leaves its slot
            results = [await self.services.wait_finished(r.id) for r in records]
        return [TaskRunResult.from_run(Run.from_wire(r.to_wire())) for r in results]

    async def retrieve(self, run_id: str) -> Run:
        record = await self.services.get_record(run_id)
        return Run.from_wire(record.to_wire())

    async def cancel_run(self, run_id: str) -> None:
        await self.services.cancel_run(run_id)

    async def subscribe(self, run_id: str) -> AsyncIterator[Run]:
        async for snapshot in self.services.subscribe(run_id):
            yield Run.from_wire(snapshot)

    async def list_runs(self, filters: dict[str, Any]) -> tuple[list[Run], str | None]:
        runs, cursor = await self.services.list_runs(**filters)
        return [Run.from_wire(run) for run in runs], cursor

    async def create_waitpoint(self, timeout: float | None, idempotency_key: str | None,
                               tags: list[str]) -> dict[str, Any]:
        """A token owned by this run (deleted with it by retention)."""
        token = await self.services.create_waitpoint(
            timeout=timeout, idempotency_key=idempotency_key, tags=tags, run_id=self.actor.id)
        return {**token.to_wire(self.actor.env.clock()),
                "public_access_token": self.services.waitpoint_token(token)}

    async def complete_waitpoint(self, token_id: str, data: Any) -> tuple[dict[str, Any], bool]:
        token, completed = await self.services.complete_waitpoint(token_id, data)
        return token.to_wire(self.actor.env.clock()), completed

    async def retrieve_waitpoint(self, token_id: str) -> dict[str, Any]:
        token = await self.services.get_waitpoint(token_id)
        return token.to_wire(self.actor.env.clock())

    async def wait_waitpoint(self, token_id: str) -> Any:
        """``wait.for_token``: suspended (``WAITING``, no queue slot) until the token is
        completed (its data) or times out (``TIMED_OUT``)."""
        token = await self.services.get_waitpoint(token_id)  # NotFoundError before suspending
        if token.status == "COMPLETED" or token.timed_out(self.actor.env.clock()):
            return await self.services.wait_waitpoint(token_id)  # at once
        async with self.actor.suspended():
            return await self.services.wait_waitpoint(token_id)

    async def create_token(self, scopes: list[str], expires_in: float) -> str:
        """A public access token; a task acts with the engine's authority."""
        return self.services.issue_token(scopes, expires_in)[0]

    # --- inside a run only -------------------------------------------------------------------

    def input(self, key: str) -> _InputChannel:
        return _InputChannel(self.actor, key)

    def metadata_get(self, key: str) -> Any:
        return self.actor.record.metadata.get(key)

    def metadata_set(self, key: str, value: Any) -> None:
        orjson.dumps(value)  # refuse what cannot be stored, here, where the caller is
        self.actor.record.metadata[key] = value
        self.actor.touch()

    def metadata_all(self) -> dict[str, Any]:
        return dict(self.actor.record.metadata)

    async def suspend_for(self, seconds: float) -> None:
        await self.actor.sleep(seconds)

    async def step(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await self.actor.step(name, fn)

    async def legacy_stream(self, key: str, source: Any) -> AsyncIterator[Any]:
        return streams.pipe(key, source).stream
