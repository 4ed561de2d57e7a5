"""RunActor: one trio actor per run; the only writer of the run's streams and record.

Theory of operation. ``run()`` is started with ``nursery.start`` and owns one nursery with:

* the *commit loop*: takes everything waiting in the :class:`Mailbox` (dirty producer buffers,
  external appends, input records, the final ``Finish``) and writes it to the Store as one
  :class:`Batch`, then updates the live tails and wakes readers once. Indices are assigned
  here and nowhere else, so they never collide or skip;
* the *life*: attempts of the task (each in a cancel scope with ``max_duration``), with the
  run's ``.on()`` handlers in a child nursery and its producers (pipes, writers,
  ``metadata.stream``) in another.

Run end, in order: the task returns or raises -> handlers are cancelled -> drain: producers
get until ``drain_timeout`` to finish, then are cancelled -> what they buffered is committed ->
every output stream gets its end marker, in the same batch as the final status -> subscribers
are told. ``runs.cancel`` and ``max_duration`` skip the drain. A crash anywhere in the actor
becomes the run's ``CRASHED`` status; it never reaches the engine.

On a store shared by many engines every batch carries the run's lease token (``lease``); a
batch refused because another engine claimed the run since (``LeaseLostError``), or a word
from the broker that the lease is gone (:meth:`RunActor.lose`), ends the actor as *lost*:
no final status, nothing more written, and whoever waits on it is told to try again (the
service sends them to the engine that holds the run now).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from runwire import (
    BadFrameError, InternalError, InvalidPayloadError,
    PayloadTooLargeError, RunContext, RunFinishedError, RunInfo, RunStatus, StreamTooLargeError,
    Task,
)
from runwire.runtime import TIMED_OUT, Completion, bind_run
from runwire.transport import json_bytes, json_bytes_within

from .._limits import Limits
from ..store import (
    Batch, ChunkAppend, LeaseLostError, RecordAppend, StoredRecord, StreamState, Waitpoint,
)
from ._backend import RunBackend
from ._env import QueueSlots, RunEnv
from ._event import LazyEvent
from ._journal import Journal, resume_key
from ._records import RunRecord
from ._streams import (
    InputMailbox, Mailbox, OutputStream, Producer, StreamStatistics, _Handler,
)

log = logging.getLogger("runwire.engine")

#: A commit cycle that took at least this many chunks means producers outpace the commits:
#: the next cycle lets them run scheduler passes first, until two passes in a row add fewer
#: than ``BUSY_PASS_CHUNKS`` or ``MAX_CYCLE_CHUNKS`` wait. Under load commits grow instead of
#: multiplying (each one is a Store transaction); sparse chunks never wait for it.
BUSY_CYCLE_CHUNKS = 256
BUSY_PASS_CHUNKS = 64
MAX_CYCLE_CHUNKS = 2048


class _Reply:
    """The answer to a mailbox message, for whoever waits on it."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._event.set()

    def answered(self) -> bool:
        return self._event.is_set()

    async def get(self) -> Any:
        await self._event.wait()
        if self.error is not None:
            raise self.error
        return self.value


@attrs.define
class ExternalAppend:
    """Chunks from a producer outside the run (a client), numbered by ``seq``."""

    key: str
    producer: str
    seq: int
    items: list[Any]
    reply: _Reply = attrs.field(factory=_Reply)


@attrs.define
class SendInput:
    """One input record for input stream ``key``; ``ikey`` deduplicates retries."""

    key: str
    data: Any
    ikey: str | None
    reply: _Reply = attrs.field(factory=_Reply)


@attrs.define
class SaveWaitpoint:
    """Remember the record a ``wait(idempotency_key=...)`` got."""

    key: str
    data: bytes
    expires_at: float | None
    reply: _Reply = attrs.field(factory=_Reply)


@attrs.define
class SaveJournal:
    """Journal entries (``_journal``): stored with everything the run's producers put
    before them, in the same batch or an earlier one."""

    entries: dict[str, bytes]
    reply: _Reply = attrs.field(factory=_Reply)


@attrs.define
class HandBack:
    """A graceful stop: store what is buffered and where to resume, end nothing."""

    entries: dict[str, bytes]
    reply: _Reply = attrs.field(factory=_Reply)


@attrs.define
class Finish:
    """End every stream and store the final status, in one batch."""

    status: RunStatus
    output: Any
    error: dict[str, str] | None
    reply: _Reply = attrs.field(factory=_Reply)


@attrs.frozen
class Outcome:
    status: RunStatus
    output: Any = None
    error: dict[str, str] | None = None


def error_dict(exc: BaseException) -> dict[str, str]:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task's nursery wraps its error; report the error itself
    return {"type": type(exc).__name__, "message": str(exc)}


def _encode_fast(values: list[Any], used: int,
                 limits: Limits) -> tuple[list[bytes], int] | None:
    """Encode a batch in one pass, with its size; ``None`` if any chunk would be refused
    (the hot path)."""
    encoded = json_bytes_within(values, limits.max_chunk_bytes)
    if encoded is None:
        return None
    size = sum(map(len, encoded))
    if used + size > limits.max_stream_bytes:
        return None
    return encoded, size


def _encode_checked(key: str, values: list[Any], used: int,
                    limits: Limits) -> tuple[list[bytes], int, BaseException | None]:
    """Encode chunks in order until one is refused; what came before it is kept."""
    encoded: list[bytes] = []
    size = 0
    for value in values:
        try:
            data = json_bytes(value)
        except TypeError as exc:
            return encoded, size, TypeError(f"chunk for stream {key!r} is not JSON: {exc}")
        if len(data) > limits.max_chunk_bytes:
            return encoded, size, PayloadTooLargeError(
                f"chunk of {len(data)} bytes is over the {limits.max_chunk_bytes}-byte limit")
        if used + size + len(data) > limits.max_stream_bytes:  # keep what fits
            return encoded, size, StreamTooLargeError(
                f"stream {key!r} would exceed {limits.max_stream_bytes} bytes; "
                f"it holds {used + size} bytes, earlier chunks stay readable")
        encoded.append(data)
        size += len(data)
    return encoded, size, None


class _Suspended:
    """``RunActor.suspended()``: a slotted object, not a generator-based context manager,
    whose frame each suspended run held for as long as it waited."""

    __slots__ = ("actor",)

    def __init__(self, actor: RunActor) -> None:
        self.actor = actor

    async def __aenter__(self) -> None:
        self.actor._suspend()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.actor._resume()


class _Stage:
    """What one commit cycle writes, and what to do once it is stored."""

    def __init__(self, actor: RunActor) -> None:
        self.actor = actor
        self.batch = Batch()
        self.after: list[Callable[[], None]] = []
        self.extend: dict[str, tuple[list[bytes], int]] = {}
        self.next_index: dict[str, int] = {}
        self.nbytes: dict[str, int] = {}
        self.taken = 0  # chunks taken from producers
        #: who waits on this cycle's commit (told if it fails): messages, producers' takes
        self.messages: list[Any] = []
        self.takes: list[tuple[Producer, int]] = []

    def chunks(self, key: str, values: list[Any], producer: str | None = None,
               first_seq: int | None = None) -> tuple[int, BaseException | None]:
        """Stage chunks for stream ``key`` in order, until one is refused.

        Returns how many were staged and the error that refused the rest (or ``None``).
        ``first_seq`` is the producer sequence number of ``values[0]`` (client producers).
        """
        actor = self.actor
        limits = actor.env.limits
        stream = actor.stream(key)
        used = stream.nbytes + self.nbytes.get(key, 0)
        fast = _encode_fast(values, used, limits)
        if fast is not None:
            (encoded, size), error = fast, None
        else:  # something is refused: find what, chunk by chunk
            encoded, size, error = _encode_checked(key, values, used, limits)
        if not encoded:
            return 0, error
        start = self.next_index.get(key, stream.length)
        next_seq = None if first_seq is None else first_seq + len(encoded)
        self.next_index[key] = start + len(encoded)
        self.nbytes[key] = self.nbytes.get(key, 0) + size
        self.batch.chunks.append(ChunkAppend(actor.record.id, key, start, encoded, size,
                                             producer, next_seq))
        items, total = self.extend.get(key, ([], 0))
        items.extend(encoded)
        self.extend[key] = (items, total + size)
        if key not in actor.record.streams:
            actor.record.streams.append(key)
            actor.touch()
        return len(encoded), error

    def fail(self, exc: BaseException) -> None:
        """The commit failed: every reply and producer waiting on it hears so (nothing of
        the cycle was stored)."""
        for producer, count in self.takes:
            producer.settled(count, exc)
        for message in self.messages:
            if not message.reply.answered():
                message.reply.set(error=exc)

    def apply(self) -> None:
        for key, (items, nbytes) in self.extend.items():
            self.actor.streams[key].extend(items, nbytes)
        for fn in self.after:
            fn()


@attrs.frozen
class RunStatistics:
    """What a live run holds now (for tests and operators).

    Attributes:
        status: the run's status.
        streams: each output stream's :class:`StreamStatistics`.
        queued_chunks: chunks producers have put that the next commit takes.
        journaled: the current attempt has a journal (``_journal``): it made a durable
            call or wrote to its own streams, or it is a replay (a run that did neither
            allocates none).
    """

    status: RunStatus
    streams: dict[str, StreamStatistics]
    queued_chunks: int
    journaled: bool = False


class RunUnreachableError(InternalError):
    """An ``internal`` error for a request to a run whose engine cannot take it now: the run
    moved to another engine (this one lost its lease on it), it is between engines (its
    engine stopped and none has taken it over yet), or its engine did not answer in time.
    Nothing is wrong with the request, and it may be tried again (the HTTP door answers
    ``503`` with ``Retry-After``)."""


class MovedWhileStoringError(RunUnreachableError):
    """An ``internal`` error for a request whose commit was under way when its actor lost
    the run to another engine: unlike a refused commit (nothing stored), it may have been
    stored, so it is not sent on to the new engine without an idempotency key."""


class RunActor:
    """One run: its record, streams, input mailboxes, and the nursery everything lives in.

    Args:
        env: what every actor of the engine shares (store, limits, clock, drain timeout,
            the services its SDK calls reach, the callback for its end).
        record: the run's record; the actor is its only writer from now on.
        task: the task to run (``None`` only for a run whose task is not registered here).
        slots: the task queue's concurrency slots, ``None`` when the queue has no limit.
        lease: the token of this engine's lease on the run (``Broker.lease``), carried by
            every batch; ``None`` when no other engine could take the run.
    """

    # Slotted: one of these lives for every run, also the many parked in a wait, and an
    # instance dict of this many attributes is a full dict (CPython shares dict keys
    # between instances only up to 30 attributes): ~1.6 KiB a run more.
    __slots__ = (
        "_accepting", "_attempt_offs", "_attempt_scope", "_attempts_done", "_cancel_requested",
        "_changed", "_committing", "_failed", "_failed_producers", "_handing_back",
        "_handler_error", "_handler_scopes", "_handlers_open", "_holds_slot", "_journal",
        "_lost", "_nursery", "_producers", "_reacquiring", "_replay_waiting", "_resumed",
        "_run_dirty", "_run_scope", "_writable", "backend", "ended", "env", "finished",
        "input_checks", "inputs", "lease", "mailbox", "record", "seqs", "slots", "streams",
        "task", "version",
    )

    def __init__(self, env: RunEnv, record: RunRecord, task: Task[Any, Any] | None,
                 slots: QueueSlots | None = None, lease: str | None = None) -> None:
        self.env = env
        self.lease = lease
        self._lost = False
        self.record = record
        self.task = task
        self.slots = slots
        self.mailbox = Mailbox(env.limits.mailbox_size, self._wake_committer)
        self._nursery: trio.Nursery | None = None
        self._committing = False
        self.streams: dict[str, OutputStream] = {}
        self.inputs: dict[str, InputMailbox] = {}
        self.seqs: dict[tuple[str, str], int] = {}
        #: input stream key -> the record check its run declared (a typed once/wait/on/peek)
        self.input_checks: dict[str, Callable[[Any], Any]] = {}
        self.finished = LazyEvent()
        self._changed: trio.Event | None = None  # made when a subscriber waits
        self.version = 0
        self._run_dirty = False
        self._writable = True
        self._accepting = True
        self._holds_slot = False
        self._cancel_requested = False
        self._handler_error: BaseException | None = None
        self._attempt_offs: list[Callable[[], None]] = []  # on() handlers of this attempt
        self._run_scope = trio.CancelScope()
        self._attempt_scope: trio.CancelScope | None = None
        self._reacquiring: trio.CancelScope | None = None  # suspended(): slot being retaken
        self._producers: trio.Nursery | None = None
        self._failed_producers: list[Completion] = []
        #: ``on()`` handlers and background tasks run in the producers' nursery, each in its
        #: own scope, cancelled when the attempts end (a nursery of their own cost memory in
        #: every run, also the many that never register a handler)
        self._handlers_open = False
        self._handler_scopes: list[trio.CancelScope] | None = None  # made on first use
        #: what ``runwire.runtime`` finds while this run's task executes
        self.backend = RunBackend(self, env.services)
        #: the durable-execution journal of the current attempt (``_journal``): made by
        #: :attr:`journal` at the attempt's first durable call or own-stream write
        self._journal: Journal | None = None
        self._resumed: Journal | None = None  # recovery's journal, for the first attempt
        self._replay_waiting = False  # resumed in a wait: WAITING, no slot, until it is reached
        self._handing_back = False
        self._attempts_done = False
        #: why a commit failed: the run is crashing (``_store_failed``)
        self._failed: BaseException | None = None
        #: set once the actor has ended (finished, crashed or handed back)
        self.ended = LazyEvent()

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def journal(self) -> Journal:
        """The current attempt's durable-execution journal (``_journal``), made at its first
        durable call or own-stream write: a run that makes neither allocates none."""
        journal = self._journal
        if journal is None:
            journal = self._journal = Journal(self.record.attempt)
        return journal

    @property
    def handing_back(self) -> bool:
        """A graceful stop is handing the run back (it ends without a final status)."""
        return self._handing_back

    @property
    def lost(self) -> bool:
        """Another engine holds the run now (this engine lost its lease): the actor ends
        without a final status and writes nothing more."""
        return self._lost

    def lose(self, why: str) -> None:
        """Stop acting on the run at once: another engine has claimed it. Nothing more is
        written; requests waiting on the actor are answered with :meth:`moved_error`, and
        subscribers here are woken (the service follows the run on its new engine)."""
        if self._lost or self.ended.is_set():
            return
        self._lost = True
        self._writable = self._accepting = False
        if self._failed is None:
            self._failed = LeaseLostError(self.id, why)
        log.warning("run %s: %s; it is abandoned here, the engine holding it goes on with it",
                    self.id, why)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._bump()

    def moved_error(self) -> RunUnreachableError:
        """What a request to a lost actor gets (the service sends it on to the run's new
        engine where it can; a refused commit stored nothing of it)."""
        return RunUnreachableError(f"run {self.id} moved to another engine (this one lost "
                                   "its lease on it); try again")

    def moved_while_storing_error(self) -> MovedWhileStoringError:
        """What a request gets whose commit was under way when the actor was lost: the
        store may have taken it before the other engine's claim."""
        return MovedWhileStoringError(
            f"run {self.id} moved to another engine while this request was being stored "
            "(this one lost its lease on it): it may or may not have been stored; repeat it "
            "with an idempotency key to be safe")

    # --- state everyone may look at ------------------------------------------------------

    def stream(self, key: str) -> OutputStream:
        """The stream ``key`` (created empty if nobody wrote to it yet)."""
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = OutputStream(
                key, tail_limit=self.env.limits.live_tail, ended=not self._writable)
        return stream

    def input(self, key: str) -> InputMailbox:
        box = self.inputs.get(key)
        if box is None:
            box = self.inputs[key] = InputMailbox(key)
        return box

    def statistics(self) -> RunStatistics:
        return RunStatistics(status=self.record.status,
                             streams={k: s.statistics() for k, s in self.streams.items()},
                             queued_chunks=self.mailbox.queued_chunks(),
                             journaled=self._journal is not None)

    def producer(self, key: str, own: bool = False) -> Producer:
        """A new writer of stream ``key`` inside the engine (a pipe, a writer, an append).

        ``own``: the run's own task writes it (its puts are counted for the journal, and
        dropped while a replay re-puts what was stored before a restart).

        Raises:
            RunFinishedError: the run's streams are closed.
        """
        self.check_writable()
        return Producer(self, key, own)

    def restore(self, streams: dict[str, StreamState], seqs: dict[tuple[str, str], int],
                records: dict[str, list[StoredRecord]],
                point: dict[str, Any] | None = None) -> None:
        """Continue from what the store kept of the run (recovery), before :meth:`run`.

        Output streams go on at their stored length; producers' sequence numbers and the
        input streams' idempotency keys are kept; records already received are counted but
        not delivered again. With a resume ``point`` (``_journal``) the same attempt is
        replayed: records its waits had not consumed yet are delivered again, and a run
        suspended in a wait stays ``WAITING`` without a queue slot until it is back there.
        """
        for key, state in streams.items():
            self.streams[key] = OutputStream(key, length=state.length, nbytes=state.nbytes,
                                             tail_limit=self.env.limits.live_tail)
        self.seqs.update(seqs)
        for key, stored in records.items():
            self.input(key).restore(len(stored), {r.idempotency_key: r.index for r in stored
                                                  if r.idempotency_key})
        if point is not None:
            writes = point.get("writes") or {}
            self._resumed = Journal(self.record.attempt, base=writes, replaying=True,
                                    frontier=point.get("wait"))
            unconsumed = point.get("inputs") or {}
            for key, stored in records.items():
                start = unconsumed.get(key)
                if isinstance(start, int):
                    box = self.input(key)
                    for rec in stored[start:]:
                        box.deliver(orjson.loads(rec.data))
            self._replay_waiting = point.get("wait") is not None
        self.touch()

    def check_writable(self) -> None:
        if not self._writable:
            raise RunFinishedError(f"run {self.id} has finished; its streams are closed")

    def touch(self) -> None:
        """The run record changed: store it with the next batch and tell subscribers."""
        self._run_dirty = True
        self.mailbox.poke()
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_change(self, seen: int) -> None:
        """Return once the record is newer than version ``seen`` or the run has finished."""
        while self.version == seen and not self.finished.is_set():
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def set_status(self, status: RunStatus) -> None:
        if self.record.status is not status and self._failed is None:
            before = self.record.status
            self.record.set_status(status, self.env.clock())
            self.touch()
            if status is RunStatus.EXECUTING and before is not RunStatus.WAITING:
                log.info("run %s started (task %s, attempt %d)", self.id, self.record.task_id,
                         self.record.attempt)
            elif status is RunStatus.WAITING:
                log.info("run %s waiting", self.id)

    # --- requests from outside, through the mailbox ---------------------------------------

    async def submit(self, message: Any) -> Any:
        """Put a message in the mailbox and wait for its answer."""
        if self._lost:
            raise self.moved_error()
        if isinstance(message, ExternalAppend) and not self._writable:
            raise RunFinishedError(f"run {self.id} has finished; its streams are closed")
        if isinstance(message, SendInput) and not self._accepting:
            raise RunFinishedError(f"run {self.id} has finished; it takes no more input")
        await self.mailbox.put(message)
        return await message.reply.get()

    def cancel(self) -> None:
        """``runs.cancel``: stop the task and its producers; the run ends ``CANCELED``."""
        if not self.finished.is_set():
            self._cancel_requested = True
            self._run_scope.cancel()
            if self._reacquiring is not None:
                self._reacquiring.cancel()
            if self._producers is not None:
                self._producers.cancel_scope.cancel()

    # --- the actor ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The run's whole life; reports ready as soon as it can take messages."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._wake_committer()  # work that arrived before the actor ran
                task_status.started()
                if not self._lost:  # (lost before it ran: its task never starts here)
                    await self._live()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # a bug or a store failure: the run crashes, not the engine
            if not self._lost:  # (lost: the run is another engine's, nothing is written)
                log.exception("run %s crashed", self.id)
                await self._crash(exc)
        finally:
            self._nursery = None  # nothing may be started in it any more
            self._writable = self._accepting = False
            self.mailbox.close(self.moved_error() if self._lost
                               else RunFinishedError(f"run {self.id} has finished"))
            self.env.on_done(self)
            self.ended.set()

    async def _live(self) -> None:
        outcome: Outcome | None = None
        async with trio.open_nursery() as producers:
            self._producers = producers
            self._handlers_open = True
            with self._run_scope:
                outcome = await self._attempts()
            self._attempts_done = True
            self._handlers_open = False
            for scope in self._handler_scopes or ():
                scope.cancel()
            # a graceful stop ended the attempt (not one that had returned meanwhile)
            self._handing_back = self._handing_back and outcome is None
            if self._handing_back:  # its producers stop where they are
                producers.cancel_scope.cancel()
            elif outcome is None:
                outcome = Outcome(RunStatus.CANCELED if self._cancel_requested
                                  else RunStatus.TIMED_OUT)
            if outcome is None:
                pass
            elif outcome.status in (RunStatus.CANCELED, RunStatus.TIMED_OUT):
                producers.cancel_scope.cancel()
            else:
                producers.cancel_scope.deadline = trio.current_time() + self.env.drain_timeout
        if self._handing_back:
            await self._hand_back()
            return
        if outcome is None:  # runs.cancel cancelled the producers' nursery, body and all
            outcome = Outcome(RunStatus.CANCELED)
        outcome = self._unobserved_failure(outcome)
        self._release_slot()
        self._writable = False
        await self.submit(Finish(outcome.status, outcome.output, outcome.error))

    def _unobserved_failure(self, outcome: Outcome) -> Outcome:
        """A run that would complete while one of its producers failed and the task never
        saw the error (neither by a pipe's ``.stream`` nor by ``wait_until_complete``) fails
        with that error: its streams hold part of the data, which must not look complete."""
        if outcome.status is not RunStatus.COMPLETED:
            return outcome
        for done in self._failed_producers:
            if not done.observed and done.error is not None:
                return Outcome(RunStatus.FAILED, error=error_dict(done.error))
        return outcome

    async def _attempts(self) -> Outcome:
        policy = self.task.retry if self.task else None
        while True:
            if self._resumed is not None and self._resumed.attempt == self.record.attempt:
                self._journal, self._resumed = self._resumed, None
            else:  # a fresh attempt: its journal is made when first needed
                self._journal = None
            if not self._replay_waiting:  # a replay back into its wait needs no slot
                await self._acquire_slot()
            outcome = await self._attempt()
            if outcome.status is not RunStatus.FAILED or policy is None or \
                    self.record.attempt >= policy.max_attempts:
                return outcome
            for off in self._attempt_offs:  # a failed attempt's on() handlers end with it
                off()
            self._attempt_offs.clear()
            self._release_slot()
            delay = policy.delay(self.record.attempt, random.random())
            log.info("run %s attempt %d failed; retrying in %.2fs", self.id,
                     self.record.attempt, delay)
            self.record.attempt += 1
            # the failed attempt's journal is done with: a stop during the delay hands the
            # run back at the next attempt's start (its own, empty, journal), not at this one
            self._journal = None
            self.set_status(RunStatus.QUEUED)
            await trio.sleep(delay)

    async def _attempt(self) -> Outcome:
        assert self.task is not None
        record = self.record
        ctx = RunContext(run=RunInfo(id=record.id, task_id=record.task_id,
                                        parent_id=record.parent_id,
                                        root_id=record.root_id or record.id,
                                        tags=tuple(record.tags)),
                         attempt=record.attempt, payload=record.payload)
        self.backend.context = ctx
        self._handler_error = None
        self._failed_producers.clear()  # an earlier attempt's failures are that attempt's
        scope = self._attempt_scope = trio.CancelScope()
        if self.task.max_duration is not None:
            scope.deadline = trio.current_time() + self.task.max_duration
        with scope:
            bind_run(self.backend)
            try:
                output = await self.task.invoke(record.payload, ctx)
                orjson.dumps(output)
            except Exception as exc:
                return Outcome(RunStatus.FAILED, error=error_dict(self._handler_error or exc))
            return Outcome(RunStatus.COMPLETED, output=output)
        if self._handler_error is not None:
            return Outcome(RunStatus.FAILED, error=error_dict(self._handler_error))
        return Outcome(RunStatus.TIMED_OUT, error={
            "type": "MaxDurationExceededError",
            "message": f"attempt ran longer than max_duration={self.task.max_duration}s"})

    def handler_failed(self, exc: BaseException) -> None:
        """An ``on(..., fail_run=True)`` handler raised: fail the current attempt."""
        self._handler_error = exc
        if self._attempt_scope is not None:
            self._attempt_scope.cancel()

    # --- queue slots and suspension ----------------------------------------------------------

    async def _acquire_slot(self) -> None:
        slots = self.slots
        if slots is not None and not self._holds_slot:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                self.set_status(RunStatus.QUEUED)
                await slots.acquire()
            self._holds_slot = True
        self.set_status(RunStatus.EXECUTING)

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            assert self.slots is not None
            self.slots.release()

    def suspended(self) -> _Suspended:
        """``async with``: ``WAITING`` for the block, without the queue slot; the slot is
        taken back after."""
        return _Suspended(self)

    def _suspend(self) -> None:
        self._release_slot()
        self.set_status(RunStatus.WAITING)

    async def _resume(self) -> None:
        if not self._run_scope.cancel_called:  # a run that is ending never executes again
            # shielded from the caller's scopes, not from runs.cancel or max_duration
            with trio.CancelScope(shield=True) as self._reacquiring:
                if self._attempt_scope is not None:
                    self._reacquiring.deadline = self._attempt_scope.deadline
                await self._acquire_slot()

    # --- spawning ------------------------------------------------------------------------------

    def spawn_producer(self, fn: Callable[[], Any], done: Any) -> None:
        if self._producers is None or not self._writable:
            raise RunFinishedError(f"run {self.id} is finishing; it cannot start producers")

        async def job() -> None:
            try:
                await fn()
            except Exception as exc:
                log.warning("producer in run %s failed: %r", self.id, exc)
                done.set_error(exc)
                self._failed_producers.append(done)
            else:
                done.set_result()

        self._producers.start_soon(job)

    def spawn_handler(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` (an ``on()`` handler, a background task) until the attempts end."""
        if not self._handlers_open:
            raise RunFinishedError(f"run {self.id} is not executing")
        assert self._producers is not None  # open while handlers are
        if self._handler_scopes is None:
            self._handler_scopes = []
        scopes, scope = self._handler_scopes, trio.CancelScope()
        scopes.append(scope)

        async def handler() -> None:
            try:
                with scope:
                    await fn()
            finally:
                scopes.remove(scope)

        self._producers.start_soon(handler)

    def add_handler(self, key: str, fn: Callable[[Any], Any], fail_run: bool) -> Callable[[], None]:
        handler = _Handler(fn, fail_run)
        box = self.input(key)
        box.add_handler(handler)
        self.spawn_handler(lambda: handler.run(self.handler_failed))
        self._attempt_offs.append(lambda: box.remove_handler(handler))
        return self._attempt_offs[-1]

    # --- the commit loop -----------------------------------------------------------------------

    def _wake_committer(self) -> None:
        """Work arrived: start the commit loop unless it runs (or the actor has not started)."""
        if not self._committing and self._nursery is not None and self.mailbox.has_work() \
                and self._failed is None:
            self._committing = True
            self._nursery.start_soon(self._commit_loop)

    async def _commit_loop(self) -> None:
        """Commit until the mailbox is empty, then end (the next work starts it again).

        Every cycle yields inside the store's commit, and work that arrives meanwhile is
        taken by the next cycle at once (or by the same one, if the store stages it after
        its yield): it has already waited a whole cycle. Being started already gave runnable
        producers a scheduler pass, so the first cycle does not wait either. Only after a
        busy cycle (``BUSY_CYCLE_CHUNKS``) does the loop let producers run first, for as
        long as they keep adding (up to ``MAX_CYCLE_CHUNKS``): under load commits grow
        instead of multiplying.
        """
        mailbox = self.mailbox
        try:
            taken = 0
            while True:
                if taken >= BUSY_CYCLE_CHUNKS:  # let the next batch grow
                    # (even if nothing waits yet: the cycle staged what was put until the
                    # moment it was written, so a busy producer has not had its turn since)
                    queued, idle = mailbox.queued_chunks(), 0
                    while idle < 2 and queued < MAX_CYCLE_CHUNKS:
                        await trio.lowlevel.checkpoint()
                        before, queued = queued, mailbox.queued_chunks()
                        # trio runs a pass's tasks in either order: one pass may show nothing
                        idle = idle + 1 if queued - before < BUSY_PASS_CHUNKS else 0
                if not mailbox.has_work():
                    break
                taken = await self._commit()
        finally:
            self._committing = False

    async def _commit(self) -> int:
        """Stage, store and apply one cycle's work; returns how many chunks producers gave.

        The store stages the batch when it is about to write (``Store.commit_staged``), so
        what producers add while this cycle waits for its turn still rides in it.
        """
        stage = _Stage(self)
        try:
            await self.env.store.commit_staged(lambda: self._stage(stage))
        except LeaseLostError as exc:  # refused whole: another engine has the run now
            self.lose(str(exc))
            stage.fail(self.moved_error())
            raise
        except trio.Cancelled:
            if self._lost:  # lost meanwhile: the commit may or may not have been written
                stage.fail(self.moved_while_storing_error())
            raise
        except Exception as exc:  # the run crashes (``run``); nobody is left waiting
            self._store_failed(exc)
            error = InternalError(f"run {self.id}: the store could not write ({exc}); "
                                  "this request was not stored")
            error.__cause__ = exc  # (the HTTP door answers a store that is away with 503)
            stage.fail(error)
            raise
        stage.apply()
        return stage.taken

    def _store_failed(self, exc: BaseException) -> None:
        """A commit failed (the store gave up retrying, or refused the batch): the run is
        ``CRASHED`` from now on, for everyone who looks, and commits nothing more until
        ``_crash`` stores that."""
        if self._failed is None:
            self._failed = exc
            self._writable = self._accepting = False
            record = self.record
            if not record.status.is_final:
                record.set_status(RunStatus.CRASHED, self.env.clock())
                record.error = error_dict(exc)
                log.error("run %s crashed: its state could not be stored (%s)", self.id, exc)
            self._bump()

    def _stage(self, stage: _Stage) -> Batch:
        """Take the mailbox's work and stage it (possibly in another actor's task)."""
        messages, producers = self.mailbox.take()
        for producer in producers:
            items = producer.take()
            if items:
                stage.taken += len(items)
                _, err = stage.chunks(producer.key, items)
                stage.after.append(functools.partial(producer.settled, len(items), err))
                stage.takes.append((producer, len(items)))
        stage.messages = messages
        for message in messages:
            self._stage_message(stage, message)
        if self._run_dirty:
            self._run_dirty = False
            stage.batch.runs.append(self.record.to_store())
        if self.lease is not None:
            stage.batch.leases.append((self.id, self.lease))
        return stage.batch

    def _stage_message(self, stage: _Stage, message: Any) -> None:
        reply = message.reply
        if isinstance(message, ExternalAppend):
            self._stage_external(stage, message)
        elif isinstance(message, SendInput):
            self._stage_input(stage, message)
        elif isinstance(message, SaveWaitpoint):
            stage.batch.waitpoints.append(Waitpoint(self.id, message.key, message.data,
                                                    message.expires_at))
            stage.after.append(reply.set)
        elif isinstance(message, SaveJournal):
            stage.batch.waitpoints.extend(Waitpoint(self.id, key, data, None)
                                          for key, data in message.entries.items())
            stage.after.append(reply.set)
        elif isinstance(message, HandBack):
            self._accepting = False  # sends now go to the next engine
            stage.batch.waitpoints.extend(Waitpoint(self.id, key, data, None)
                                          for key, data in message.entries.items())
            self._run_dirty = True  # its status as it is: not final
            stage.after.append(reply.set)
        elif isinstance(message, Finish):
            self._stage_finish(stage, message)
        else:  # pragma: no cover - a bug
            reply.set(error=TypeError(f"unknown mailbox message {message!r}"))

    def _stream_keys(self) -> list[str]:
        """Every output stream of the run: written to, or only read so far."""
        return list(dict.fromkeys([*self.record.streams, *self.streams]))

    def _stage_external(self, stage: _Stage, msg: ExternalAppend) -> None:
        expected = self.seqs.get((msg.key, msg.producer), 0)
        if msg.seq > expected:
            msg.reply.set(error=BadFrameError(
                f"producer {msg.producer!r} skipped sequence numbers {expected}..{msg.seq - 1}"))
            return
        fresh = msg.items[expected - msg.seq:]
        if not fresh:
            msg.reply.set(expected)
            return
        if not self._writable:
            msg.reply.set(error=RunFinishedError(f"run {self.id} has finished"))
            return
        stored, err = stage.chunks(msg.key, fresh, msg.producer, expected)
        nxt = expected + stored  # a partly refused batch: the producer resumes after the part kept
        self.seqs[(msg.key, msg.producer)] = nxt
        stage.after.append(lambda: msg.reply.set(nxt, err))

    def _stage_input(self, stage: _Stage, msg: SendInput) -> None:
        box = self.input(msg.key)
        if msg.ikey is not None and msg.ikey in box.keys:
            msg.reply.set(box.keys[msg.ikey])
            return
        if not self._accepting:
            msg.reply.set(error=RunFinishedError(f"run {self.id} has finished"))
            return
        check = self.input_checks.get(msg.key)
        if check is not None:  # the run declared the record type: nothing else is stored
            try:
                check(msg.data)
            except InvalidPayloadError as exc:
                msg.reply.set(error=exc)
                return
        try:  # a record from a task did not pass the wire codec: refuse it here, not crash
            data = json_bytes(msg.data)
        except TypeError as exc:
            msg.reply.set(error=TypeError(f"input record for {msg.key!r} is not JSON: {exc}"))
            return
        limit = self.env.limits.max_record_bytes
        if len(data) > limit:
            msg.reply.set(error=PayloadTooLargeError(
                f"input record of {len(data)} bytes is over the {limit}-byte limit"))
            return
        index = box.count
        box.count += 1
        if msg.ikey is not None:
            box.keys[msg.ikey] = index
        stage.batch.records.append(RecordAppend(self.id, msg.key, index, data, msg.ikey))

        def delivered() -> None:
            box.deliver(msg.data)
            msg.reply.set(index)

        stage.after.append(delivered)

    def _stage_finish(self, stage: _Stage, msg: Finish) -> None:
        self._accepting = False
        record = self.record
        record.output, record.error = msg.output, msg.error
        record.set_status(msg.status, self.env.clock())
        self._run_dirty = True
        stage.batch.ended.extend((self.id, key) for key in self._stream_keys())

        def finished() -> None:
            log.info("run %s finished %s in %.3fs", self.id, msg.status.value,
                     (record.finished_at or 0.0) - record.created_at)
            for stream in self.streams.values():
                stream.end()
            self.finished.set()
            self._bump()
            msg.reply.set()

        stage.after.append(finished)

    async def _crash(self, exc: BaseException) -> None:
        """After a crash: the run is CRASHED, its streams end, everyone is told; then the
        crash is stored, tried again until the store takes it (a store that failed the run
        may come back), so the stored run never stays ``EXECUTING`` or ``WAITING``. The
        actor stays the run's owner meanwhile, so every read sees the true status.
        """
        self._writable = self._accepting = False
        self._release_slot()
        self.mailbox.close(RunFinishedError(f"run {self.id} has crashed"))
        record = self.record
        if not record.status.is_final:
            record.set_status(RunStatus.CRASHED, self.env.clock())
            record.error = error_dict(exc)
        for stream in self.streams.values():
            stream.end()
        self.finished.set()
        self._bump()
        batch = Batch(runs=[record.to_store()],
                      ended=[(self.id, k) for k in self._stream_keys()],
                      leases=[(self.id, self.lease)] if self.lease is not None else [])
        pause = 0.5
        while True:  # cancelled when the engine stops: recovery then finds it unfinished
            try:
                await self.env.store.commit(batch)
            except LeaseLostError as exc:  # another engine has the run: its word stands
                log.warning("run %s crashed here, but %s; the crash is not stored", self.id,
                            exc)
                return
            except trio.ClosedResourceError:
                log.error("run %s crashed; the store closed before the crash was stored",
                          self.id)
                return
            except Exception as error:  # noqa: BLE001 - the store is still failing
                log.warning("could not store the crash of run %s yet (%r); trying again",
                            self.id, error)
                await trio.sleep(pause)
                pause = min(pause * 2, 10.0)
            else:
                return

    # --- input streams, for the run backend --------------------------------------------------

    def wait_input(self, key: str, timeout: float | None, ikey: str | None,
                   ttl: float | None) -> Coroutine[Any, Any, Any]:
        """``wait()``: suspended until the next record (or the stored one for ``ikey``).

        Durable (``_journal``): the wait is journaled with its absolute deadline before the
        run suspends, so a restarted engine resumes the run in it; a replayed wait that had
        completed returns the record it got.

        Returns the coroutine to await at once (the wait's journal key is taken now):
        without ``ikey`` the durable wait itself, so a run parked in it holds no frame of
        this method's.
        """
        if ikey is not None:
            return self._wait_input_keyed(key, timeout, ikey, ttl)
        return self._wait_record(key, timeout)

    def _wait_record(self, key: str, timeout: float | None) -> Coroutine[Any, Any, Any]:
        box = self.input(key)
        return self.durable_wait(self.journal.next_key("wait", key), timeout,
                                 box.take_pending, box.next_record)

    async def _wait_input_keyed(self, key: str, timeout: float | None, ikey: str,
                                ttl: float | None) -> Any:
        """``wait(idempotency_key=...)``: the record stored for the key, or the next one
        (then stored for it)."""
        point = f"~i{key}:{ikey}" if key.startswith("~") else f"{key}:{ikey}"
        stored = await self.env.store.waitpoint(self.id, point, self.env.clock())
        if stored is not None:
            return orjson.loads(stored)
        value = await self._wait_record(key, timeout)
        if value is not TIMED_OUT:
            expires = None if ttl is None else self.env.clock() + ttl
            await self.submit(SaveWaitpoint(point, json_bytes(value), expires))
        return value

    async def sleep(self, seconds: float) -> None:
        """``wait.for_``: suspended for ``seconds``, durably (the deadline is journaled)."""
        async def asleep(timeout: float | None) -> Any:
            await trio.sleep(timeout if timeout is not None else math.inf)
            return TIMED_OUT

        await self.durable_wait(self.journal.next_key("sleep", ""), seconds,
                                 lambda: TIMED_OUT, asleep)

    async def durable_wait(self, jkey: str, timeout: float | None,
                            ready: Callable[[], Any],
                            wait: Callable[[float | None], Awaitable[Any]]) -> Any:
        """Suspend until ``wait(remaining)`` returns, journaled under ``jkey``.

        ``ready()`` is what is there without waiting (``TIMED_OUT`` if nothing is).
        """
        journal = self.journal
        stored = await self._journal_read(jkey)
        if stored is not None and "deadline" not in stored:  # replayed: it completed
            await trio.lowlevel.checkpoint()
            return TIMED_OUT if stored.get("timed_out") else stored.get("value")
        if stored is not None:  # the wait the run was suspended in: replay ends here
            deadline = stored["deadline"]
            journal.end_replay()
            self._replay_waiting = False
        else:
            await self._end_replay()
            value = ready()
            if value is not TIMED_OUT:
                await self._journal_write({jkey: {"value": value}})
                return value
            deadline = None if timeout is None else self.env.clock() + timeout
            await self._journal_write({
                jkey: {"deadline": deadline},
                resume_key(journal.attempt): self._resume_point(jkey, handback=False)})
        journal.pending = jkey
        remaining = None if deadline is None else max(0.0, deadline - self.env.clock())
        async with self.suspended():
            value = await wait(remaining)
        journal.pending = None
        result = {"timed_out": True} if value is TIMED_OUT else {"value": value}
        await self._journal_write({jkey: result})
        return value

    async def step(self, name: str, fn: Callable[[], Awaitable[Any]],
                   kind: str = "step") -> Any:
        """``runwire.step``: ``fn()``'s result, journaled; a replay returns the stored one.

        ``kind`` keeps the engine's own journaled calls (``trigger``: the ids of the
        children a run triggered; ``waitpoint``: a token it made) apart from the task's
        steps.
        """
        key = self.journal.next_key(kind, name)
        stored = await self._journal_read(key)
        if stored is not None:
            self.journal.skip(stored.get("writes") or {})
            return stored.get("value")
        await self._end_replay()
        before = dict(self.journal.writes)
        value = await fn()
        try:  # the value a replay would get, so both ways return the same
            encoded = json_bytes(value)
        except TypeError as exc:
            raise TypeError(f"step {name!r} returned a value that is not JSON: {exc}") from None
        limit = self.env.limits.max_record_bytes
        if len(encoded) > limit:
            raise PayloadTooLargeError(f"step {name!r} returned {len(encoded)} bytes of JSON, "
                                       f"over the {limit}-byte limit")
        value = orjson.loads(encoded)
        writes = {k: n - before.get(k, 0) for k, n in self.journal.writes.items()
                  if n != before.get(k, 0)}
        await self._journal_write({key: {"value": value, "writes": writes}})
        return value

    # --- the journal (``_journal``) ------------------------------------------------------------

    async def _journal_read(self, key: str) -> Any:
        """The stored entry ``key`` while replaying; ``None`` otherwise (or if there is none)."""
        if not self.journal.replaying:
            return None
        raw = await self.env.store.waitpoint(self.id, key, -math.inf)
        return None if raw is None else orjson.loads(raw)

    async def _journal_write(self, entries: dict[str, Any]) -> None:
        await self.submit(SaveJournal({k: json_bytes(v) for k, v in entries.items()}))

    async def _end_replay(self) -> None:
        """A durable call the journal does not know: the run executes for real from here."""
        if self.journal.replaying:
            self.journal.end_replay()
        if self._replay_waiting:  # it had not got back to its wait: it needs its slot now
            self._replay_waiting = False
            await self._acquire_slot()

    def _resume_point(self, wait: str | None, handback: bool) -> dict[str, Any]:
        """Where the current attempt resumes after a restart (``_journal``)."""
        journal = self.journal
        writes = dict(journal.writes)
        # stopped again before the replay caught up: what it had written before counts
        for key, count in (journal.base or {}).items():
            writes[key] = max(count, writes.get(key, 0))
        return {"wait": wait, "handback": handback, "writes": writes,
                "inputs": {key: box.unconsumed() for key, box in self.inputs.items()}}

    # --- a graceful stop -----------------------------------------------------------------------

    def hand_back(self) -> None:
        """A graceful stop: end the task where it is, without a final status; what is live
        is stored so the next engine resumes the same attempt (``_journal``)."""
        if self.finished.is_set() or self._handing_back:
            return
        if self._attempts_done:  # it is finishing: it ends with its true status
            if self._producers is not None:
                self._producers.cancel_scope.cancel()  # its drain is cut short
            return
        self._handing_back = True
        self._run_scope.cancel()
        if self._reacquiring is not None:
            self._reacquiring.cancel()

    async def _hand_back(self) -> None:
        self._release_slot()
        self._writable = False
        journal = self.journal
        point = self._resume_point(journal.pending, handback=True)
        if journal.replaying and point["wait"] is None:
            point["wait"] = journal.frontier
        await self.submit(HandBack({resume_key(journal.attempt): json_bytes(point)}))
        log.info("run %s handed back (attempt %d, %s)", self.id, journal.attempt,
                 self.record.status.value)
