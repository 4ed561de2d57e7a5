"""The engine's side of :mod:`runwire.runtime`: what SDK calls do when made inside a run."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson
import trio

from runwire import Run, RunContext, RunHandle, TaskRunResult, streams
from runwire.runtime import TIMED_OUT, Completion, ProducerSink

if TYPE_CHECKING:
    from ._actor import RunActor
    from ._env import RunServices


class _InputChannel:
    """``runwire.runtime.InputChannel`` over an actor's :class:`InputMailbox`.

    ``once`` and ``wait`` hand back the actor's own coroutines rather than awaiting them in
    one of their own: a run parked in a wait holds no frame of this class's.
    """

    __slots__ = ("_actor", "_key")

    def __init__(self, actor: RunActor, key: str) -> None:
        self._actor = actor
        self._key = key

    def on(self, handler: Callable[[Any], Any], fail_run: bool) -> Callable[[], None]:
        return self._actor.add_handler(self._key, handler, fail_run)

    def once(self, timeout: float | None) -> Coroutine[Any, Any, Any]:
        return self._actor.input(self._key).next_record(timeout)

    def wait(self, timeout: float | None, idempotency_key: str | None,
             idempotency_key_ttl: float | None) -> Coroutine[Any, Any, Any]:
        return self._actor.wait_input(self._key, timeout, idempotency_key,
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

    # (weakly referenced: the SDK keeps a backend's appenders in a WeakKeyDictionary)
    __slots__ = ("__weakref__", "_context", "actor", "services")

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

    async def _trigger_children(self, task_id: str,
                                items: list[tuple[Any, dict[str, Any]]]) -> list[str]:
        """Trigger a child per item, journaled (``_journal``): a replay gets the same
        children back instead of triggering new ones."""
        async def trigger_all() -> list[str]:
            return [(await self.services.trigger(task_id, p, o, parent=self.actor)).id
                    for p, o in items]

        ids: list[str] = await self.actor.step(task_id, trigger_all, kind="trigger")
        return ids

    async def trigger(self, task_id: str, payload: Any, options: dict[str, Any]) -> RunHandle:
        [run_id] = await self._trigger_children(task_id, [(payload, options)])
        return RunHandle(id=run_id, public_access_token=self.services.run_token(run_id))

    async def trigger_and_wait(self, task_id: str, payload: Any,
                               options: dict[str, Any]) -> TaskRunResult[Any]:
        return (await self.batch_trigger_and_wait(task_id, [(payload, options)]))[0]

    async def batch_trigger_and_wait(self, task_id: str, items: list[tuple[Any, dict[str, Any]]],
                                     ) -> list[TaskRunResult[Any]]:
        """Trigger the children, then a durable wait for them all (the parent is
        ``WAITING`` without its queue slot; a restart resumes it in the wait, with the same
        children)."""
        actor = self.actor
        ids = await self._trigger_children(task_id, items)

        async def finished(_: float | None) -> list[dict[str, Any]]:
            return [(await self.services.wait_finished(i)).to_wire() for i in ids]

        runs: list[dict[str, Any]] = await actor.durable_wait(
            actor.journal.next_key("children", task_id), None, lambda: TIMED_OUT, finished)
        return [TaskRunResult.from_run(Run.from_wire(run)) for run in runs]

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
        """A token owned by this run (deleted with it by retention); journaled, so a replay
        gets the same token back (and waits for the one the approver was given)."""
        async def make() -> dict[str, Any]:
            token = await self.services.create_waitpoint(
                timeout=timeout, idempotency_key=idempotency_key, tags=tags,
                run_id=self.actor.id)
            return {**token.to_wire(self.actor.env.clock()),
                    "public_access_token": self.services.waitpoint_token(token)}

        made: dict[str, Any] = await self.actor.step("token", make, kind="waitpoint")
        return made

    async def complete_waitpoint(self, token_id: str, data: Any) -> tuple[dict[str, Any], bool]:
        token, completed = await self.services.complete_waitpoint(token_id, data)
        return token.to_wire(self.actor.env.clock()), completed

    async def retrieve_waitpoint(self, token_id: str) -> dict[str, Any]:
        token = await self.services.get_waitpoint(token_id)
        return token.to_wire(self.actor.env.clock())

    async def wait_waitpoint(self, token_id: str) -> Any:
        """``wait.for_token``: a durable wait (``_journal``), suspended (``WAITING``, no
        queue slot) until the token is completed (its data) or times out (``TIMED_OUT``).
        A restart resumes the run in it; the token's own expiry is its deadline."""
        actor = self.actor
        token = await self.services.get_waitpoint(token_id)  # NotFoundError before suspending
        completed = token.status == "COMPLETED"
        data = orjson.loads(token.data) if completed and token.data is not None else None

        def ready() -> Any:
            return data if completed else TIMED_OUT  # (timed out: the wait answers at once)

        async def wait(_: float | None) -> Any:
            return await self.services.wait_waitpoint(token_id)

        return await actor.durable_wait(actor.journal.next_key("token", token_id), None,
                                        ready, wait)

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
