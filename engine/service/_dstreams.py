"""Free-standing durable streams (the Durable Streams protocol's stream model), kept in the store.

Theory of operation: every stream's metadata is loaded from the store when the engine starts
and kept in memory (:class:`_Live`, bounded by ``Limits.max_durable_streams``); every change
is written through to the store, one :class:`~runwire.engine.store.Batch` per request (its
metadata, its items and the producer's state in one transaction, so a retried producer append
after a restart is deduplicated exactly). Writes to one stream are serialized by the stream's
lock, which is what the protocol asks of idempotent producers. Readers waiting at a stream's
tail wait on its ``changed`` event, which each write sets and replaces.

Positions count bytes, or messages for ``application/json`` streams; an offset on the wire is
the position as 16 decimal digits, so offsets sort like positions. A fork shares its source's
positions below its fork offset (reads stitch the source's items in) and stores only its own
appends. Errors are :class:`StreamError` with the protocol's HTTP status: the protocol is
HTTP's, so its statuses are its vocabulary.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_right
import random
import re
from collections.abc import Iterable
from typing import Any

import attrs
import orjson
import trio

from .._limits import Limits
from ..store import (
    Batch, DurableStream, IndexGapError, Store, StoreUnavailableError, StreamWrite,
)

#: Offsets on the wire: ``<segment>_<position>``, each 16 decimal digits (the reference
#: server's shape, which clients and the conformance suite know); the segment is always 0.
OFFSET_DIGITS = 16
_OFFSET = re.compile(r"(\d{1,19})_(\d{1,19})\Z")
#: Cursor intervals (the protocol's defaults): 20 s from 2024-10-09T00:00:00Z.
CURSOR_EPOCH = 1728432000.0
CURSOR_INTERVAL = 20.0
MAX_SAFE = 2 ** 53 - 1


class StreamError(Exception):
    """A request the protocol refuses: its HTTP status, a message, response headers."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = (),
                 *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)
        self.code = code or {400: "bad_request", 403: "forbidden", 404: "not_found",
                             409: "conflict", 410: "gone", 413: "payload_too_large",
                             429: "rate_limited"}.get(status, "bad_request")


def format_offset(position: int) -> str:
    return f"{0:0{OFFSET_DIGITS}d}_{position:0{OFFSET_DIGITS}d}"


def parse_offset(text: str) -> int:
    """A wire offset's position (``-1`` is 0).

    Raises:
        StreamError: 400, malformed.
    """
    if text == "-1":
        return 0
    match = _OFFSET.match(text)
    if match is None or int(match[1]) != 0:
        raise StreamError(400, f"malformed offset {text[:40]!r}")
    return int(match[2])


def cursor_for(now: float, given: str | None) -> str:
    """The protocol's collapsing cursor: the current interval, strictly past the client's."""
    current = int((now - CURSOR_EPOCH) // CURSOR_INTERVAL)
    try:
        theirs = int(given) if given is not None else None
    except ValueError:
        theirs = None
    if theirs is not None and theirs >= current:
        current = theirs + max(1, math.ceil(random.uniform(1, 3600) / CURSOR_INTERVAL))
    return str(current)


def media_type(content_type: str | None) -> str:
    """``text/plain; charset=utf-8`` -> ``text/plain`` (what the protocol compares)."""
    if content_type is not None and len(content_type) > 100:
        return _media_type.__wrapped__(content_type)  # (the cache keeps short ones only)
    return _media_type(content_type)


@functools.lru_cache(maxsize=256)  # a few content types, asked about on every request
def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """A JSON body's messages: an array is flattened one level.

    Raises:
        StreamError: 400, not JSON, or an empty array where one is not allowed.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StreamError(400, f"the body is not valid JSON: {exc}") from None
    if isinstance(value, list):
        if not value and not allow_empty:
            raise StreamError(400, "an empty JSON array appends nothing")
        return [orjson.dumps(item) for item in value]
    return [orjson.dumps(value)]


@attrs.define
class ReadResult:
    """What a read found: pieces (messages, or byte slices) and where the next read starts."""

    pieces: list[bytes]
    next: int
    up_to_date: bool
    closed: bool  # closed and this read reached its end


#: A stream's newest items kept in memory while live readers wait on it: at most this
#: many ...
RECENT_ITEMS = 256
#: ... and about this many bytes (so at most about ``max_connections`` x 64 KiB in all).
RECENT_BYTES = 64 * 1024


class _Live:
    """A stream in memory: its metadata, its writers' lock, the event its readers wait on,
    and, while readers wait, its newest items (``recent``: ``(start, data)`` in order,
    complete from position ``recent_from`` to the tail), so a live reader at the tail is
    answered without a store read per append (one thread hop each on SQLite)."""

    __slots__ = ("changed", "lock", "meta", "recent", "recent_bytes", "recent_from",
                 "waiting")

    def __init__(self, meta: DurableStream) -> None:
        self.meta = meta
        self.changed = trio.Event()
        self.lock = trio.Lock()
        self.recent: list[tuple[int, bytes]] = []
        self.recent_bytes = 0
        self.recent_from = meta.tail  # what was written before this is in the store only
        self.waiting = 0  # readers in DurableStreams.wait

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def remember(self, placed: list[tuple[int, bytes]]) -> None:
        """Keep newly stored items (and forget the oldest beyond the bounds); with no
        reader waiting, keep none (a stream nobody tails costs no memory for them)."""
        if not self.waiting:
            self.recent.clear()
            self.recent_bytes = 0
            self.recent_from = self.meta.tail
            return
        self.recent.extend(placed)
        self.recent_bytes += sum(len(data) for _, data in placed)
        drop = 0
        while len(self.recent) - drop > RECENT_ITEMS or (
                self.recent_bytes > RECENT_BYTES and len(self.recent) - drop > 1):
            self.recent_bytes -= len(self.recent[drop][1])
            drop += 1
        if drop:
            del self.recent[:drop]
            self.recent_from = self.recent[0][0]


def _pieces(items: list[tuple[int, bytes]], pos: int, end: int, budget: int | None,
            json: bool) -> tuple[list[bytes], int]:
    """What ``items`` (``(start, data)``, in order) hold from ``pos`` to ``end``: JSON
    streams' whole items, other streams' bytes (the first item cut at ``pos``); with a
    ``budget``, about that many bytes (at least one piece), found by bisection. The pieces,
    and where they end."""
    first = max(bisect_right(items, pos, key=_start) - 1, 0) if budget is not None else 0
    pieces: list[bytes] = []
    size = 0
    for index in range(first, len(items)):
        item_start, data = items[index]
        if item_start >= end or (budget is not None and pieces and size >= budget):
            break
        if json:
            if pos <= item_start:
                pieces.append(data)
                size += len(data)
                pos = item_start + 1
        else:
            skip = max(pos - item_start, 0)
            piece = data[skip:max(end - item_start, 0)]
            if piece:
                pieces.append(piece)
                size += len(piece)
                pos = item_start + skip + len(piece)
    return pieces, pos


def _start(item: tuple[int, bytes]) -> int:
    return item[0]


@attrs.frozen
class AppendResult:
    status: int  # 200 (a producer's new data), 204
    meta: DurableStream
    producer: tuple[int, int] | None = None  # (epoch, seq) to echo


class DurableStreams:
    """The free-standing durable streams of one engine."""

    #: other engines write the same streams (:class:`SharedDurableStreams`)
    shared = False

    def __init__(self, store: Store, limits: Limits, clock: Any) -> None:
        self.store = store
        self.limits = limits
        self.clock = clock
        self._streams: dict[str, _Live] = {}
        self._producers: dict[tuple[str, str], tuple[int, int]] = {}
        self._loaded = False

    async def load(self) -> None:
        """Read every stream's metadata from the store (once, as the engine starts)."""
        for meta in await self.store.durable_streams():
            self._streams[meta.path] = _Live(meta)
        self._loaded = True

    # --- looking streams up ------------------------------------------------------------------

    def _expired(self, meta: DurableStream, now: float) -> bool:
        if meta.expires_at is not None and now >= meta.expires_at:
            return True
        return meta.ttl is not None and now >= meta.accessed_at + meta.ttl

    async def _usable(self, path: str, live: _Live | None) -> tuple[_Live, float]:
        """The stream found at ``path``, if it may be used, and the time now.

        Raises:
            StreamError: 404 (none, or it expired: then it is deleted), 410 (deleted).
        """
        if live is None:
            raise StreamError(404, f"no stream at {path!r}")
        now = self.clock()
        if not live.meta.deleted and self._expired(live.meta, now):
            await self._delete(live)
            raise StreamError(404, f"no stream at {path!r} (it expired)")
        if live.meta.deleted:
            raise StreamError(410, f"the stream at {path!r} was deleted")
        return live, now

    async def _find(self, path: str, *, touch: bool = True) -> _Live:
        """The live stream at ``path``. Raises: StreamError 404 (none, expired), 410."""
        live, now = await self._usable(path, self._streams.get(path))
        if touch:
            live.meta.accessed_at = now
        return live

    def exists(self, path: str) -> bool:
        return path in self._streams

    async def head(self, path: str) -> DurableStream:
        return (await self._find(path, touch=False)).meta

    # --- writing -------------------------------------------------------------------------------

    async def _commit(self, batch: Batch, *, pause: bool = True) -> None:
        if not pause:  # an append: its HTTP answer, then its connection's next read, yields;
            await self.store.commit_no_pause(batch)  # (whole or not at all, by itself)
            return
        with trio.CancelScope(shield=True):  # a write is stored whole, or not at all
            await self.store.commit(batch)

    async def create(self, path: str, *, content_type: str | None, ttl: int | None,
                     expires_at: float | None, closed: bool, body: bytes,
                     fork: tuple[str, int | None, int] | None) -> tuple[bool, DurableStream]:
        """Create a stream (or find the same one); ``(created, metadata)``.

        Raises:
            StreamError: 400 (bad body, fork offset), 404 (fork source), 409 (exists with
            another configuration, or was deleted), 413.
        """
        existing = await self._lookup(path)
        now = self.clock()
        if existing is not None and not existing.meta.deleted and self._expired(
                existing.meta, now):
            await self._delete(existing)
            existing = await self._lookup(path)
        source: _Live | None = None
        fork_offset = 0
        if fork is not None:
            found = await self._lookup(fork[0])
            if found is not None and found.meta.deleted:
                raise StreamError(409, "the fork's source stream was deleted")
            source = await self._find(fork[0])
            src = source.meta
            if content_type is not None and media_type(content_type) != media_type(
                    src.content_type):
                raise StreamError(409, "a fork's content type must be its source's")
            content_type = src.content_type
            offset = src.tail if fork[1] is None else fork[1]
            if offset > src.tail:
                raise StreamError(400, "the fork offset is beyond the source's tail")
            fork_offset = offset + fork[2]
            if fork_offset > src.tail:
                raise StreamError(400, "the fork sub-offset is beyond the source's tail")
            if ttl is None and expires_at is None:  # the protocol's inheritance table
                ttl, expires_at = src.ttl, src.expires_at
        ctype = content_type or "application/octet-stream"
        if existing is not None:
            meta = existing.meta
            if meta.deleted:
                raise StreamError(409, f"the stream at {path!r} was deleted; its path is kept")
            same = (media_type(meta.content_type) == media_type(ctype) and meta.ttl == ttl
                    and meta.expires_at == expires_at and meta.closed == closed
                    and meta.source == (fork[0] if fork else None)
                    and (fork is None or meta.fork_offset == fork_offset))
            if not same:
                raise StreamError(409, f"a stream exists at {path!r} with another "
                                       f"configuration")
            return False, meta
        if await self._count() >= self.limits.max_durable_streams:
            raise StreamError(429, "too many durable streams on this engine",
                              [("retry-after", "60")])
        if is_json(ctype):
            items = json_messages(body, allow_empty=True) if body.strip() else []
        else:
            items = [body] if body else []
        meta = DurableStream(path=path, content_type=ctype, created_at=now, accessed_at=now,
                             ttl=ttl, expires_at=expires_at, closed=closed, tail=fork_offset,
                             source=fork[0] if fork else None, fork_offset=fork_offset)
        write = StreamWrite(meta, self._place(meta, items), checked=self.shared)
        self._check_size(meta, write.items)
        meta.nbytes += sum(len(data) for _, data in write.items)
        batch = Batch(streams=[write])
        if source is not None:
            batch.streams.append(self._refs_write(source, +1))
        await self._commit(batch)
        self._streams[path] = _Live(meta)
        return True, meta

    # (hooks that SharedDurableStreams answers from the store; here they do not yield: one
    # engine's answers are in memory, as before)

    async def _lookup(self, path: str) -> _Live | None:
        """The stream at ``path`` as this engine knows it (deleted or expired too)."""
        return self._streams.get(path)

    async def _count(self) -> int:
        return len(self._streams)

    def _refs_write(self, live: _Live, delta: int) -> StreamWrite:
        """The write that counts one fork more (or less) reading from ``live``."""
        live.meta.refs += delta
        return StreamWrite(live.meta)

    async def _source_meta(self, path: str) -> DurableStream | None:
        source = self._streams.get(path)
        return source.meta if source is not None else None

    def _place(self, meta: DurableStream, items: list[bytes]) -> list[tuple[int, bytes]]:
        """Give items their positions from the tail on (advances ``meta.tail``)."""
        placed = []
        json = is_json(meta.content_type)
        for data in items:
            placed.append((meta.tail, data))
            meta.tail += 1 if json else len(data)
        return placed

    def _check_size(self, meta: DurableStream, items: list[tuple[int, bytes]]) -> None:
        size = meta.nbytes + sum(len(data) for _, data in items)
        if size > self.limits.max_stream_bytes:
            raise StreamError(413, f"the stream would hold {size} bytes, over the "
                                   f"{self.limits.max_stream_bytes}-byte limit")

    async def append(self, path: str, *, content_type: str | None, body: bytes,
                     closing: bool, seq: str | None,
                     producer: tuple[str, int, int] | None) -> AppendResult:
        """Append (and maybe close), as the protocol's section 5.2 says.

        Raises:
            StreamError: 400, 403 (a fenced producer epoch), 404, 409, 410, 413.
        """
        live = await self._find(path)
        lock = live.lock
        try:  # the usual case, nobody else appending: no scheduling round trip for the lock
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            return await self._append(live, live.meta, content_type, body, closing, seq,
                                      producer)
        finally:
            lock.release()

    async def _append(self, live: _Live, meta: DurableStream, content_type: str | None,
                      body: bytes, closing: bool, seq: str | None,
                      producer: tuple[str, int, int] | None) -> AppendResult:
        """Append onto ``meta`` (``live.meta``; on a shared store, the metadata as read
        from it, which the store checks is still what it holds)."""
        if meta.closed:
            if producer is not None and meta.closed_by == producer:
                return AppendResult(204, meta, producer[1:])
            if closing and not body:
                return AppendResult(204, meta)
            raise StreamError(409, "the stream is closed", [
                ("stream-closed", "true"), ("stream-next-offset", format_offset(meta.tail))],
                code="stream_closed")
        if body and content_type is not None and content_type != meta.content_type and \
                media_type(content_type) != media_type(meta.content_type):
            raise StreamError(409, f"the stream's content type is {meta.content_type}")
        state: tuple[int, int] | None = None
        if producer is not None:
            pid, epoch, pseq = producer
            state = await self._producer(meta.path, pid)
            if state is not None and epoch < state[0]:
                raise StreamError(403, "a newer epoch of this producer is writing",
                                  [("producer-epoch", str(state[0]))])
            if state is not None and epoch == state[0]:
                if pseq <= state[1]:
                    return AppendResult(204, meta, (epoch, state[1]))
                if pseq > state[1] + 1:
                    raise StreamError(409, "a producer sequence gap", [
                        ("producer-expected-seq", str(state[1] + 1)),
                        ("producer-received-seq", str(pseq))])
            elif pseq != 0:
                if state is None:
                    raise StreamError(409, "a producer sequence gap", [
                        ("producer-expected-seq", "0"), ("producer-received-seq", str(pseq))])
                raise StreamError(400, "a new producer epoch must start at seq 0")
        if seq is not None and meta.last_seq is not None and seq <= meta.last_seq:
            raise StreamError(409, f"Stream-Seq {seq[:40]!r} is not after the last one")
        items = (json_messages(body, allow_empty=False) if body and is_json(meta.content_type)
                 else [body] if body else [])
        new = meta.copy()
        placed = self._place(new, items)
        self._check_size(new, placed)
        new.nbytes += sum(len(data) for _, data in placed)
        if seq is not None:
            new.last_seq = seq
        if closing:
            new.closed = True
            new.closed_by = producer
        write = StreamWrite(new, placed, producer if producer is not None else None)
        if self.shared:
            new.accessed_at = self.clock()
            write.checked = True
            write.expected = meta
        await self._commit(Batch(streams=[write]), pause=False)
        live.meta = new
        live.remember(placed)
        if producer is not None and not self.shared:
            self._producers[(meta.path, producer[0])] = (producer[1], producer[2])
        live.notify()
        if producer is not None:  # 200: new data; a producer's close-only is 204
            return AppendResult(200 if placed else 204, new, producer[1:])
        return AppendResult(204, new)

    async def _producer(self, path: str, pid: str) -> tuple[int, int] | None:
        key = (path, pid)
        if key not in self._producers:
            found = await self.store.stream_producer(path, pid)
            if found is None:
                return None
            self._producers[key] = found
        return self._producers[key]

    async def delete(self, path: str) -> None:
        """Delete a stream (soft, while forks read from it). Raises: StreamError 404, 410."""
        live = await self._find(path, touch=False)
        await self._delete(live)

    async def _delete(self, live: _Live) -> None:
        meta = live.meta
        batch = Batch()
        if meta.refs > 0:
            meta.deleted = True
            batch.streams.append(StreamWrite(meta))
        else:
            self._drop(meta, batch)
        await self._commit(batch)
        live.notify()

    def _drop(self, meta: DurableStream, batch: Batch) -> None:
        """Remove a stream, then its sources that only its reference kept (cascade)."""
        while True:
            self._streams.pop(meta.path, None)
            for key in [k for k in self._producers if k[0] == meta.path]:
                del self._producers[key]
            batch.dropped_streams.append(meta.path)
            source = self._streams.get(meta.source) if meta.source else None
            if source is None:
                return
            source.meta.refs -= 1
            if not (source.meta.deleted and source.meta.refs <= 0):
                batch.streams.append(StreamWrite(source.meta))
                return
            meta = source.meta

    async def sweep(self) -> int:
        """Delete expired streams and streams idle for longer than ``retention``; how many."""
        now = self.clock()
        doomed = [live for live in self._streams.values() if not live.meta.deleted and (
            self._expired(live.meta, now)
            or now - live.meta.accessed_at > self.limits.retention)]
        for live in doomed:
            if live.meta.path in self._streams:
                await self._delete(live)
        return len(doomed)

    # --- reading -------------------------------------------------------------------------------

    async def open_read(self, path: str) -> _Live:
        """The stream to read (its TTL restarts). Raises: StreamError 404, 410."""
        return await self._find(path)

    async def read(self, live: _Live, start: int) -> ReadResult:
        """What the stream holds from ``start`` (up to ``Limits.frame_bytes`` of it).

        Raises:
            StreamError: 400, ``start`` is beyond the tail.
        """
        meta = live.meta
        if start > meta.tail:
            raise StreamError(400, "the offset is beyond the stream's tail")
        if start >= live.recent_from:  # the newest items: from memory
            # (a cancellation point, not a yield: a live reader yields when it writes, and
            # waits when it is at the tail)
            await trio.lowlevel.checkpoint_if_cancelled()
            pieces, nxt = _pieces(live.recent, start, meta.tail, self.limits.frame_bytes,
                                  is_json(meta.content_type))
        else:
            pieces, nxt = await self._collect(meta, start, meta.tail, self.limits.frame_bytes)
        done = nxt >= meta.tail
        return ReadResult(pieces, nxt, done, done and meta.closed)

    async def _collect(self, meta: DurableStream, start: int, end: int,
                       budget: int) -> tuple[list[bytes], int]:
        pieces: list[bytes] = []
        pos = start
        if meta.source is not None and pos < meta.fork_offset:
            source = await self._source_meta(meta.source)
            if source is not None:
                got, pos = await self._collect(source, pos, min(end, meta.fork_offset),
                                               budget)
                pieces.extend(got)
                budget -= sum(len(p) for p in got)
                if pos < min(end, meta.fork_offset) or budget <= 0:
                    return pieces, pos
            else:
                pos = min(end, meta.fork_offset)  # (a source gone: nothing below the fork)
        if pos >= end:
            return pieces, pos
        got, pos = _pieces(await self.store.stream_items(meta.path, pos, end, max(budget, 1)),
                           pos, end, None, is_json(meta.content_type))
        pieces.extend(got)
        return pieces, pos

    async def wait(self, live: _Live, position: int, timeout: float) -> bool:
        """Wait until the stream holds more than ``position``, is closed or gone; whether it
        changed within ``timeout``."""
        live.waiting += 1
        try:
            if timeout == math.inf:  # (an SSE response: its own scope ends it)
                await self._changed(live, position)
                return True
            with trio.move_on_after(timeout):
                await self._changed(live, position)
                return True
            return False
        finally:
            live.waiting -= 1

    async def _changed(self, live: _Live, position: int) -> None:
        while live.meta.tail <= position and not live.meta.closed \
                and not live.meta.deleted and self._streams.get(live.meta.path) is live:
            await live.changed.wait()


#: Times a write to a shared stream is tried again after another engine changed the stream
#: between this engine's read and its commit (each failure means another write succeeded).
SHARED_RETRIES = 64
#: Seconds between a live reader's safety-net looks at a shared stream (pub/sub is at most
#: once: it loses messages while a connection is down).
SHARED_REFRESH = 2.0
#: A read of a shared stream stores its access time (so TTLs slide, and the retention
#: sweep of any engine sees it) when the stored one is older than this many seconds:
#: TTL streams (or a quarter of the TTL, if less), and the others.
TOUCH_EVERY = (1.0, 60.0)


class SharedDurableStreams(DurableStreams):
    """The free-standing durable streams of a store many engines share (Redis).

    Theory of operation: the store is the only truth. Every request reads the stream's
    metadata from the store (one round trip); every write is made from the metadata as read
    (``_stored``, kept apart from what requests touch) and committed as a *checked*
    :class:`~runwire.engine.store.StreamWrite`: the store applies it only if it still holds
    exactly that metadata, so two engines never both append at one offset, and a producer's
    state (read from the store each time) is the one the write continues. A refused write
    (:class:`~runwire.engine.store.IndexGapError`) is made again from a fresh read; each
    refusal means another write went in, so the loop progresses, and it is bounded
    (``SHARED_RETRIES``, then a 503 to retry). Writes on this engine still take the
    stream's lock, so only other engines' writes cause retries.

    Live readers wait on the broker's :meth:`~runwire.engine.broker.Broker.watch_durable_stream`:
    the store's commit script publishes each write of the stream, any engine's, and the
    reader reads the metadata again; it also looks every ``SHARED_REFRESH`` seconds, a
    safety net for lost pub/sub messages, not the wake-up.
    """

    shared = True

    def __init__(self, store: Store, limits: Limits, clock: Any, broker: Any) -> None:
        super().__init__(store, limits, clock)
        self.broker = broker
        self._stored: dict[str, DurableStream] = {}
        #: a producer's state read with the stream's metadata (``_stored``'s object then)
        self._prefetched: dict[tuple[str, str], tuple[DurableStream,
                                                      tuple[int, int] | None]] = {}

    async def load(self) -> None:
        """Nothing to load: every request reads the store."""
        await trio.lowlevel.checkpoint()
        self._loaded = True

    def _forget(self, path: str) -> None:
        live = self._streams.pop(path, None)
        self._stored.pop(path, None)
        if live is not None:
            live.notify()

    async def _fresh(self, path: str, producer: str | None = None) -> _Live | None:
        """The stream at ``path`` as the store holds it now (its ``_Live`` kept if it is the
        same stream: readers and writers here hold it); with a ``producer``, its state read
        in the same round trip (for :meth:`_producer`)."""
        if producer is None:
            meta = await self.store.durable_stream(path)
        else:
            meta, state = await self.store.durable_stream_state(path, producer)
            if meta is not None:
                self._prefetched[(path, producer)] = (meta, state)
        if meta is None:
            self._forget(path)
            return None
        live = self._streams.get(path)
        if live is None or live.meta.created_at != meta.created_at:
            if live is not None:
                live.notify()
            if len(self._streams) >= self.limits.max_durable_streams:
                self._prune()
            live = self._streams[path] = _Live(attrs.evolve(meta))
        else:
            live.meta = attrs.evolve(meta)
        self._stored[path] = meta
        return live

    def _prune(self) -> None:
        """Forget streams nobody here reads or writes now (the store keeps them)."""
        for path, live in list(self._streams.items()):
            if not live.waiting and not live.lock.locked():
                del self._streams[path]
                self._stored.pop(path, None)

    async def _lookup(self, path: str) -> _Live | None:
        return await self._fresh(path)

    async def _count(self) -> int:
        return await self.store.count_durable_streams()

    def exists(self, path: str) -> bool:
        return path in self._streams  # (seen here; the door asks only to pick an error)

    async def _source_meta(self, path: str) -> DurableStream | None:
        return await self.store.durable_stream(path)

    async def _producer(self, path: str, pid: str) -> tuple[int, int] | None:
        found = self._prefetched.pop((path, pid), None)
        if found is not None and self._stored.get(path) is found[0]:
            return found[1]  # read with the metadata this write is made from
        return await self.store.stream_producer(path, pid)

    def _refs_write(self, live: _Live, delta: int) -> StreamWrite:
        stored = self._stored.get(live.meta.path)
        if stored is None:  # removed meanwhile (seen by another request here): read again
            raise IndexGapError(f"durable stream {live.meta.path} changed")
        return StreamWrite(attrs.evolve(stored, refs=stored.refs + delta,
                                        accessed_at=self.clock()),
                           checked=True, expected=stored)

    async def _commit(self, batch: Batch, *, pause: bool = True) -> None:
        await super()._commit(batch, pause=pause)
        for path in batch.dropped_streams:
            self._forget(path)
        for write in batch.streams:
            path = write.stream.path
            self._stored[path] = attrs.evolve(write.stream)
            live = self._streams.get(path)
            if live is not None:
                if live.meta.created_at == write.stream.created_at:
                    live.meta = attrs.evolve(write.stream)
                live.notify()

    def _busy(self, path: str) -> StreamError:
        return StreamError(503, f"the stream at {path!r} is being written by other engines "
                                f"too fast to add this write; try again",
                           [("retry-after", "1")], code="rate_limited")

    async def _find(self, path: str, *, touch: bool = True,
                    producer: str | None = None) -> _Live:
        live, now = await self._usable(path, await self._fresh(path, producer))
        if touch:
            stored = self._stored[path]
            every = TOUCH_EVERY[stored.ttl is None]
            if stored.ttl is not None:
                every = min(every, stored.ttl / 4)
            if now - stored.accessed_at > every:
                try:  # (lost to a concurrent write, which stores a newer time anyway)
                    await self._commit(Batch(streams=[StreamWrite(
                        attrs.evolve(stored, accessed_at=now), checked=True,
                        expected=stored)]))
                except IndexGapError:
                    pass
            live.meta.accessed_at = now
        return live

    async def create(self, path: str, *, content_type: str | None, ttl: int | None,
                     expires_at: float | None, closed: bool, body: bytes,
                     fork: tuple[str, int | None, int] | None) -> tuple[bool, DurableStream]:
        for _ in range(SHARED_RETRIES):
            try:
                return await super().create(path, content_type=content_type, ttl=ttl,
                                            expires_at=expires_at, closed=closed, body=body,
                                            fork=fork)
            except IndexGapError:  # created, or its fork source changed, elsewhere
                continue
        raise self._busy(path)

    async def append(self, path: str, *, content_type: str | None, body: bytes,
                     closing: bool, seq: str | None,
                     producer: tuple[str, int, int] | None) -> AppendResult:
        pid = producer[0] if producer is not None else None
        try:
            live = await self._find(path, producer=pid)
            async with live.lock:
                for _ in range(SHARED_RETRIES):
                    stored = self._stored.get(path)
                    try:
                        if stored is None or stored.created_at != live.meta.created_at:
                            raise IndexGapError(path)  # (changed while this waited)
                        return await self._append(live, stored, content_type, body, closing,
                                                  seq, producer)
                    except IndexGapError:  # another engine wrote it first: read it again
                        live = await self._find(path, touch=False, producer=pid)
            raise self._busy(path)
        finally:
            if pid is not None:
                self._prefetched.pop((path, pid), None)

    async def _delete(self, live: _Live) -> None:
        path = live.meta.path
        for _ in range(SHARED_RETRIES):
            meta = self._stored.get(path)
            if meta is None:
                return
            batch = Batch()
            if meta.refs > 0:
                if not meta.deleted:
                    batch.streams.append(StreamWrite(
                        attrs.evolve(meta, deleted=True), checked=True, expected=meta))
            else:
                batch.dropped_streams.append(path)
                source_path = meta.source
                while source_path is not None:  # the sources only this reference kept
                    source = await self.store.durable_stream(source_path)
                    if source is None:
                        break
                    if source.deleted and source.refs <= 1:
                        batch.dropped_streams.append(source_path)
                        source_path = source.source
                        continue
                    batch.streams.append(StreamWrite(
                        attrs.evolve(source, refs=source.refs - 1), checked=True,
                        expected=source))
                    break
            try:
                await self._commit(batch)
                return
            except IndexGapError:
                if await self._fresh(path) is None:
                    return
        raise self._busy(path)

    async def sweep(self) -> int:
        now = self.clock()
        doomed = [meta.path for meta in await self.store.durable_streams()
                  if not meta.deleted and (self._expired(meta, now)
                                           or now - meta.accessed_at > self.limits.retention)]
        for path in doomed:
            live = await self._fresh(path)
            if live is not None and not live.meta.deleted:
                await self._delete(live)
        return len(doomed)

    async def read(self, live: _Live, start: int) -> ReadResult:
        meta = live.meta  # (as read from the store by the request, or its last wait)
        if meta.deleted:  # (seen by a wait: the reader learns it, rather than waits on)
            raise StreamError(410, f"the stream at {meta.path!r} was deleted")
        if start > meta.tail:
            raise StreamError(400, "the offset is beyond the stream's tail")
        pieces, nxt = await self._collect(meta, start, meta.tail, self.limits.frame_bytes)
        done = nxt >= meta.tail
        return ReadResult(pieces, nxt, done, done and meta.closed)

    async def wait(self, live: _Live, position: int, timeout: float) -> bool:
        path = live.meta.path
        deadline = trio.current_time() + timeout
        live.waiting += 1
        try:
            async with self.broker.watch_durable_stream(path) as watch:
                while True:
                    seen = watch.version  # (subscribed before this read: nothing missed)
                    try:
                        fresh = await self._fresh(path)
                    except StoreUnavailableError:  # Redis away: wait on, look again later
                        left = deadline - trio.current_time()
                        if left <= 0:
                            return False
                        await watch.wait_change(seen, min(left, SHARED_REFRESH))
                        continue
                    if fresh is None or fresh.meta.created_at != live.meta.created_at:
                        live.meta.deleted = True  # removed (or removed and made again)
                        return True
                    if fresh is not live:  # (forgotten here meanwhile: the same stream)
                        live.meta = attrs.evolve(fresh.meta)
                    meta = live.meta
                    if meta.tail > position or meta.closed or meta.deleted:
                        return True
                    left = deadline - trio.current_time()
                    if left <= 0:
                        return False
                    await watch.wait_change(seen, min(left, SHARED_REFRESH))
        finally:
            live.waiting -= 1
