"""The Store interface: where runs, stream logs, input logs and waitpoints are kept.

Theory of operation: a run's actor is the only writer of that run's data. It gathers what
its producers and mailbox hand it and writes it as one :class:`Batch` (one transaction, one
pipeline), assigning chunk and record indices itself. The store therefore never decides an
index; it stores rows and answers reads. Chunks and records are stored as JSON bytes, exactly
as they go on the wire: compact JSON (orjson's output), so never holding a raw newline byte.
Every implementation passes ``tests/test_store_contract.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import attrs
import orjson
import trio


@attrs.define
class ChunkAppend:
    """Chunks ``start .. start+len(items)-1`` of stream ``key`` of ``run_id``.

    ``producer``/``next_seq`` record the producer's next expected sequence number, so a
    retried batch can be cut to what is new even after a restart.
    """

    run_id: str
    key: str
    start: int
    items: list[bytes]
    nbytes: int
    producer: str | None = None
    next_seq: int | None = None


@attrs.define
class RecordAppend:
    """Input record ``index`` of input stream ``key`` of ``run_id``."""

    run_id: str
    key: str
    index: int
    data: bytes
    idempotency_key: str | None = None


@attrs.define
class Waitpoint:
    """The record a ``wait(idempotency_key=...)`` got, kept until ``expires_at``."""

    run_id: str
    key: str
    data: bytes
    expires_at: float | None


@attrs.define
class DurableStream:
    """A free-standing durable stream's metadata (``/v1/stream/{path}``).

    Positions (``tail``, ``fork_offset``, an item's ``start``) count bytes, or messages for
    an ``application/json`` stream. A fork shares its source's positions below
    ``fork_offset`` and stores only what was appended to it.
    """

    path: str
    content_type: str
    created_at: float
    accessed_at: float
    ttl: int | None = None
    expires_at: float | None = None
    closed: bool = False
    tail: int = 0
    nbytes: int = 0
    source: str | None = None
    fork_offset: int = 0
    refs: int = 0
    deleted: bool = False
    closed_by: tuple[str, int, int] | None = None
    last_seq: str | None = None

    def copy(self) -> DurableStream:
        """A copy: what ``attrs.evolve(self)`` makes, several times faster (every append
        makes one or two). Every field, in order (a test checks that none is missed)."""
        return DurableStream(self.path, self.content_type, self.created_at, self.accessed_at,
                             self.ttl, self.expires_at, self.closed, self.tail, self.nbytes,
                             self.source, self.fork_offset, self.refs, self.deleted,
                             self.closed_by, self.last_seq)


@attrs.define
class StreamWrite:
    """A durable stream's new metadata, the items appended with it (``(start, bytes)``), and
    the producer state ``(producer id, epoch, last seq)`` the append sets.

    A store shared by many engines checks a ``checked`` write before it applies anything of
    its batch: the stored metadata must still be ``expected`` (exactly; ``None``: no stream
    at the path), else the whole batch is refused with :class:`IndexGapError` and the writer
    reads the stream again. A store of one engine has nobody else writing and ignores both.
    """

    stream: DurableStream
    items: list[tuple[int, bytes]] = attrs.field(factory=list)
    producer: tuple[str, int, int] | None = None
    checked: bool = False
    expected: DurableStream | None = None


@attrs.define
class Batch:
    """Everything one actor cycle writes, committed atomically."""

    chunks: list[ChunkAppend] = attrs.field(factory=list)
    records: list[RecordAppend] = attrs.field(factory=list)
    waitpoints: list[Waitpoint] = attrs.field(factory=list)
    runs: list[dict[str, Any]] = attrs.field(factory=list)
    ended: list[tuple[str, str]] = attrs.field(factory=list)
    #: durable streams written (their metadata upserted, items appended) ...
    streams: list[StreamWrite] = attrs.field(factory=list)
    #: ... and removed with all their data
    dropped_streams: list[str] = attrs.field(factory=list)
    #: ``(run id, lease token)``: the batch writes that run's data as the holder of its
    #: lease (the token ``Broker.lease`` gave). A store shared by many engines refuses the
    #: whole batch with :class:`LeaseLostError` if another engine claimed the run since; a
    #: store of one engine has nobody to fence off and ignores it.
    leases: list[tuple[str, str]] = attrs.field(factory=list)

    def __bool__(self) -> bool:
        return bool(self.chunks or self.records or self.waitpoints or self.runs or self.ended
                    or self.streams or self.dropped_streams)


@attrs.frozen
class StreamState:
    """What a store knows about one output stream."""

    length: int
    nbytes: int
    ended: bool


@attrs.frozen
class StoredRecord:
    index: int
    data: bytes
    idempotency_key: str | None


@attrs.frozen
class StoredToken:
    """A waitpoint token: a run may wait for it; anyone allowed may complete it once.

    ``status`` is ``WAITING`` until completed (then ``COMPLETED`` with ``data``, the JSON
    bytes it was completed with); a ``WAITING`` token whose ``expires_at`` has passed has
    timed out and can no longer be completed.
    """

    id: str
    created_at: float
    expires_at: float | None = None
    run_id: str | None = None
    idempotency_key: str | None = None
    tags: tuple[str, ...] = ()
    status: str = "WAITING"
    data: bytes | None = None
    completed_at: float | None = None

    def timed_out(self, now: float) -> bool:
        return self.status == "WAITING" and self.expires_at is not None \
            and self.expires_at <= now

    def to_wire(self, now: float) -> dict[str, Any]:
        """The ``waitpoint`` object of the wire protocol (``status`` as of ``now``)."""
        return {
            "id": self.id, "status": "TIMED_OUT" if self.timed_out(now) else self.status,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "completed_at": self.completed_at, "tags": list(self.tags),
            "idempotency_key": self.idempotency_key, "run_id": self.run_id,
            "output": orjson.loads(self.data) if self.data is not None else None,
        }


@attrs.frozen
class RunFilter:
    """Which runs ``list_runs`` returns: every condition given must hold (tags: all)."""

    task_id: str | None = None
    statuses: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    created_after: float | None = None
    created_before: float | None = None

    @classmethod
    def of(cls, *, task: str | None, status: list[str] | None, tags: list[str] | None,
           created_after: float | None, created_before: float | None) -> RunFilter:
        """The filter :meth:`Store.list_runs`'s keywords describe."""
        return cls(task_id=task, statuses=tuple(status or ()), tags=tuple(tags or ()),
                   created_after=created_after, created_before=created_before)

    def matches(self, run: dict[str, Any]) -> bool:
        created = run.get("created_at") or 0.0
        return ((self.task_id is None or run["task_id"] == self.task_id)
                and (not self.statuses or run["status"] in self.statuses)
                and all(tag in (run.get("tags") or ()) for tag in self.tags)
                and (self.created_after is None or created > self.created_after)
                and (self.created_before is None or created < self.created_before))


def encode_cursor(created_at: float, run_id: str) -> str:
    """The position after run ``run_id``: runs are listed by ``(created_at, id)``, newest
    first, so a page never shifts when newer runs are added."""
    return f"{float(created_at)!r}/{run_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises: ValueError: not a cursor this store made."""
    when, sep, run_id = cursor.partition("/") if isinstance(cursor, str) else ("", "", "")
    try:
        value = float(when)
    except ValueError:
        value = float("nan")
    if not sep or not run_id or value != value:
        raise ValueError(f"not a run list cursor: {str(cursor)[:64]!r}")
    return value, run_id


class Store(abc.ABC):
    """Persistence for the engine. All methods are async and safe to call from trio."""

    #: The URL scheme this store serves (``memory``, ``sqlite``, ``redis``).
    scheme: str = ""

    async def open(self) -> None:
        """Connect and check what the store needs, before the engine serves anyone (the
        engine calls it at startup; a store also opens itself on first use).

        Raises:
            StoreError: the store cannot work (unreachable, misconfigured).
        """
        await trio.lowlevel.checkpoint()

    @abc.abstractmethod
    async def commit(self, batch: Batch) -> None:
        """Write a batch atomically; returns once it is durable (as durable as the store is).

        Like every trio async function it must be a checkpoint: an actor's commit loop takes
        what arrived meanwhile at once, and relies on this yield to let producers run.
        """

    async def commit_staged(self, stage: Callable[[], Batch]) -> None:
        """Like :meth:`commit`, for a batch that ``stage()`` builds at the last moment.

        ``stage`` is called once, on the trio thread, when the store is about to write (a
        store that groups commits calls it when the caller's turn comes), so whatever the
        caller's producers added while it waited for its turn rides in the same commit.
        It may be called from another caller's task, so it must only build data. It is
        not called at all if the caller is cancelled first: then nothing was taken. An
        empty batch is not written. What ``stage`` raises, this raises, and only this.

        This default builds at once and calls :meth:`commit`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: nothing is taken
        batch = stage()
        if batch:
            await self.commit(batch)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def commit_no_pause(self, batch: Batch) -> None:
        """Like :meth:`commit`, for a caller that reaches a schedule point of its own right
        after (an HTTP append: its answer, then its connection's next read, which yields),
        and that needs its write whole or not at all without a shielded scope of its own.

        A cancellation point *before* anything is written: cancelled then, it raises
        ``trio.Cancelled`` and writes nothing. Once the batch is taken it is written, and
        the call returns normally (or raises the write's own error), even if cancelled
        meanwhile: unlike :meth:`commit`, never ``Cancelled`` after writing, so what the
        caller does after it stays true. A store that can write at once, without waiting
        for anything, skips :meth:`commit`'s yield (a pass of trio's event loop); one that
        must wait (another group commit holds the writer, a write in a worker thread)
        yields. Not for loops of commits: an actor's commit loop relies on :meth:`commit`'s
        yield to let its producers run.

        This default: a cancellation point, then :meth:`commit` in a shielded scope.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: nothing is written
        with trio.CancelScope(shield=True):  # taken: written whole, and no Cancelled after
            await self.commit(batch)

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The stored run (``RunRecord.to_store()`` form), or ``None``."""

    @abc.abstractmethod
    async def find_run(self, task_id: str, idempotency_key: str) -> str | None:
        """The id of the run of ``task_id`` triggered with ``idempotency_key``, if any."""

    @abc.abstractmethod
    async def unfinished_runs(self) -> list[dict[str, Any]]:
        """Runs whose stored status is not final (for recovery after a restart)."""

    @abc.abstractmethod
    async def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[bytes]:
        """Up to ``limit`` chunks of a stream from index ``start`` (fewer at its end)."""

    @abc.abstractmethod
    async def streams(self, run_id: str) -> dict[str, StreamState]:
        """Every output stream of a run with its length, size and ended flag."""

    @abc.abstractmethod
    async def producer_seqs(self, run_id: str) -> dict[tuple[str, str], int]:
        """``(stream key, producer id) -> next expected sequence number``."""

    @abc.abstractmethod
    async def records(self, run_id: str) -> dict[str, list[StoredRecord]]:
        """Every input record of a run, per input stream, in index order."""

    @abc.abstractmethod
    async def waitpoint(self, run_id: str, key: str, now: float) -> bytes | None:
        """The record stored for a ``wait`` idempotency key, unless it has expired."""

    @abc.abstractmethod
    async def delete_finished_before(self, cutoff: float) -> int:
        """Delete runs (and all their data) that finished before ``cutoff``; how many."""

    @abc.abstractmethod
    async def list_runs(self, *, task: str | None, status: list[str] | None,
                        tags: list[str] | None, created_after: float | None,
                        created_before: float | None, limit: int,
                        cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of stored runs, newest first (by ``created_at``, then id), at most
        ``limit``, after ``cursor`` (from the previous page); and the cursor of the next
        page: ``None`` when this page is not full (a full page gives a cursor, and the page
        after it may be empty). A run matches if it is of ``task``, in one of ``status``, has
        every one of ``tags`` and was created in ``(created_after, created_before)``.

        Raises:
            ValueError: a malformed cursor.
        """

    @abc.abstractmethod
    async def create_token(self, token: StoredToken) -> StoredToken:
        """Store a new waitpoint token; with an idempotency key already used, the token
        made with it (nothing new is stored)."""

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> StoredToken | None:
        """The waitpoint token, or ``None``."""

    @abc.abstractmethod
    async def complete_token(self, token_id: str, data: bytes,
                             now: float) -> tuple[StoredToken | None, bool]:
        """Complete a ``WAITING``, unexpired token with ``data``, atomically.

        Returns the token as stored after the call and whether this call completed it (a
        token completed earlier, or timed out, is left as it is: the first completion
        wins). ``(None, False)`` for an unknown id.
        """

    @abc.abstractmethod
    async def durable_streams(self) -> list[DurableStream]:
        """Every durable stream's metadata (soft-deleted ones too)."""

    async def durable_stream(self, path: str) -> DurableStream | None:
        """One durable stream's metadata as stored now (soft-deleted too), or ``None``."""
        for meta in await self.durable_streams():
            if meta.path == path:
                return meta
        return None

    async def durable_stream_state(
            self, path: str, producer: str) -> tuple[DurableStream | None, tuple[int, int] | None]:
        """:meth:`durable_stream` and :meth:`stream_producer` as one snapshot (a store shared
        by many engines reads both at once)."""
        return await self.durable_stream(path), await self.stream_producer(path, producer)

    async def count_durable_streams(self) -> int:
        """How many durable streams are stored (soft-deleted ones too)."""
        return len(await self.durable_streams())

    @abc.abstractmethod
    async def stream_items(self, path: str, start: int, end: int,
                           max_bytes: int) -> list[tuple[int, bytes]]:
        """A durable stream's own items ``(start, bytes)`` that hold positions ``start ..
        end - 1``, in order: the one holding ``start`` first (it may begin before it), then
        more until they hold ``max_bytes`` (at least one)."""

    @abc.abstractmethod
    async def stream_producer(self, path: str, producer: str) -> tuple[int, int] | None:
        """A producer's ``(epoch, last seq)`` on a durable stream, if it appended there."""

    async def aclose(self) -> None:
        """Release the store's resources; safe to call twice."""


def page_of_runs(runs: list[dict[str, Any]], *, task: str | None,
                 status: list[str] | None, tags: list[str] | None,
                 created_after: float | None, created_before: float | None, limit: int,
                 cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """:meth:`Store.list_runs` over runs in memory (what a store without indexes does).

    Raises:
        ValueError: a malformed cursor.
    """
    after = decode_cursor(cursor) if cursor is not None else None
    where = RunFilter.of(task=task, status=status, tags=tags, created_after=created_after,
                         created_before=created_before)
    runs = sorted(runs, key=lambda r: (r.get("created_at") or 0.0, r["id"]), reverse=True)
    page: list[dict[str, Any]] = []
    for run in runs:
        if after is not None and (run.get("created_at") or 0.0, run["id"]) >= after:
            continue
        if where.matches(run):
            page.append(run)
            if len(page) == limit:
                break
    last = page[-1] if page and len(page) == limit else None
    return page, (encode_cursor(last.get("created_at") or 0.0, last["id"])
                  if last is not None else None)
