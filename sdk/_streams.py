"""Output streams: ``streams.define``, ``pipe``, ``append``, ``writer``, ``read``.

Theory of operation: every write goes through a producer (:class:`~runwire.runtime.ProducerSink`)
that the current backend opens for ``(run, key)``. A pipe or writer is a *producer job*: the
backend runs it where the run's drain can wait for it (the run's nursery inside a task, the
client's nursery outside). Producers buffer; the engine stores what is buffered in batches, so
a pipe of many small chunks costs a few store transactions, not one per chunk.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import inspect
import itertools
import weakref
from collections.abc import (
    AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Iterable,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union, overload

import anyio
import orjson

from ._convert import _PLAIN, check_json, from_json_many, to_json, to_json_many
from ._errors import InvalidPayloadError, TeeOverflowError
from .runtime import Backend, Completion, ProducerSink, current_backend

if TYPE_CHECKING:
    from typing import TypeAlias

    from ._inputs import InputStreamDef

T = TypeVar("T")
DEFAULT_KEY = "default"
#: Chunks a pipe takes from a sync source per put.
PIPE_SLICE = 256
#: Chunks a pipe's ``.stream`` keeps for a consumer that has not read them yet. Past it the
#: oldest are dropped (from the tee only: the stream stores every chunk, and the pipe never
#: waits for the tee), and the consumer's next step raises :class:`TeeOverflowError`.
TEE_BUFFER = 10_000
#: Streams whose ``append`` producer a backend keeps (one per target run and key, so
#: appends keep their order even when nobody awaits them).
APPENDERS_PER_BACKEND = 256

#: What ``pipe`` and ``merge`` take: any async or sync iterable of chunks.
Source: TypeAlias = Union[AsyncIterable[T], Iterable[T]]


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > 256:
        raise ValueError(f"a stream key must be a non-empty string of at most 256 characters, "
                         f"not {key!r}")
    return key


def _check_source(source: Any) -> None:
    if isinstance(source, (str, bytes, dict)) or not (
            hasattr(source, "__aiter__") or hasattr(source, "__iter__")):
        raise TypeError(f"pipe needs an iterable or async iterable of chunks, "
                        f"not {type(source).__name__}")


class _Encoder:
    """Turns chunks into JSON for stream ``key``, checking them against its type (strict).

    Untyped streams only unstructure. A typed stream refuses a chunk that does not fit
    with :class:`InvalidPayloadError` naming the field, before anything is stored; any
    chunk that is not JSON is a ``TypeError`` naming the stream (see :func:`json_chunk`).
    """

    def __init__(self, cls: Any = None, what: str = "chunk", key: str = DEFAULT_KEY) -> None:
        self.cls = None if cls is Any or cls is object else cls
        self.what = what
        self.key = key

    def one(self, value: Any) -> Any:
        if self.cls is None:
            return json_chunk(value, self.key)
        if type(value) is self.cls and self.cls in _PLAIN:
            return value
        return _must_be_json(check_json(value, self.cls, self.what), value, self.key)

    def many(self, values: list[Any]) -> tuple[list[Any], Exception | None]:
        """The JSON of ``values`` up to the first refused one, and its error."""
        cls = self.cls
        if cls is None:
            return json_chunks(values, self.key)
        if cls in _PLAIN and frozenset((cls,)).issuperset(map(type, values)):
            return values, None  # a str stream's chunks are all str: checked in C
        out: list[Any] = []
        for value in values:
            try:
                out.append(self.one(value))
            except (InvalidPayloadError, TypeError) as exc:
                return out, exc
        return out, None


class _Tee(Generic[T]):
    """The ``.stream`` side of a pipe: the source's chunks, for the task to consume.

    It keeps chunks from the first one, so a task may await other things before it starts
    iterating; at most ``TEE_BUFFER`` unread ones (the oldest are dropped past that, and
    the consumer then gets :class:`TeeOverflowError`; the pipe itself never waits for the
    tee). Once the iterator is closed, or the ``PipeResult`` is dropped, nothing is kept.
    """

    def __init__(self, limit: int = TEE_BUFFER) -> None:
        self._items: collections.deque[T] = collections.deque(maxlen=limit)
        self._limit = limit
        self._fed = 0  # chunks fed so far
        self._taken = 0  # chunks the consumer took
        self._live = True
        self._closed = False
        self._error: BaseException | None = None
        self._event = anyio.Event()
        self.done: Completion | None = None  # told when the consumer got the error

    def want(self) -> AsyncIterator[T]:
        return self._iterate()

    def feed(self, item: T) -> None:
        self.feed_many((item,))

    def feed_many(self, items: Sequence[T]) -> None:
        if not self._live or not items:
            return
        self._items.extend(items)  # a full deque drops from the left, in C
        self._fed += len(items)
        self._event.set()

    def close(self, error: BaseException | None = None) -> None:
        """The source ended; with ``error``, the consumer gets it after the chunks before it
        (a failed pipe never looks like a complete one)."""
        self._closed = True
        self._error = error
        self._event.set()

    async def _iterate(self) -> AsyncIterator[T]:
        try:
            while True:
                while self._items:
                    if self._taken + len(self._items) < self._fed:
                        raise TeeOverflowError(
                            f"pipe.stream fell {self._fed - self._taken - len(self._items)} "
                            f"chunks behind its source (it keeps at most {self._limit} "
                            f"unread chunks); the stream itself stored every chunk: read it "
                            f"with read() instead")
                    self._taken += 1
                    yield self._items.popleft()
                if self._closed:
                    if self._error is not None:
                        if self.done is not None:
                            self.done.observed = True
                        raise self._error
                    return
                self._event = anyio.Event()
                await self._event.wait()
        finally:
            self._live = False
            self._items.clear()


class PipeResult(Generic[T]):
    """What ``pipe`` returns at once: ``.stream`` (the same chunks) and the completion."""

    def __init__(self, tee: _Tee[T], done: Completion) -> None:
        self._tee = tee
        self._done = done
        self._stream: AsyncIterator[T] | None = None

    @property
    def stream(self) -> AsyncIterator[T]:
        """An async iterator over the piped chunks, from the first one.

        Chunks are kept from the start of the pipe (at most ``TEE_BUFFER`` unread; past
        that the iterator raises :class:`TeeOverflowError`), so it may be asked for late.
        """
        if self._stream is None:
            self._stream = self._tee.want()
        return self._stream

    async def wait_until_complete(self) -> None:
        """Wait until every chunk of the source is stored; raise if the source failed."""
        await self._done.wait()


class WriterResult:
    """What ``writer`` returns: await ``wait_until_complete()`` for the end of ``execute``."""

    def __init__(self, done: Completion) -> None:
        self._done = done

    async def wait_until_complete(self) -> None:
        await self._done.wait()


_PLAIN_CHUNKS = frozenset((str, int, float, bool, type(None)))


def _must_be_json(data: Any, value: Any, key: str) -> Any:
    """``data`` (the JSON-ready form of ``value``), refused unless orjson can write it."""
    if type(data) not in _PLAIN_CHUNKS:
        try:
            orjson.dumps(data)
        except TypeError as exc:
            raise TypeError(f"chunk for stream {key!r} (a {type(value).__name__}) is not "
                            f"JSON: {exc}") from None
    return data


def json_chunk(value: Any, key: str) -> Any:
    """``value`` as a JSON-ready chunk of stream ``key``, refused here if it is not JSON.

    The engine would refuse it too, but later (when it stores the batch) and as the
    producer's error; checking here makes the writer's own call raise, before anything of
    it is buffered.

    Raises:
        TypeError: naming the stream and the type of the value.
    """
    return _must_be_json(to_json(value), value, key)


def json_chunks(values: list[Any], key: str) -> tuple[list[Any], TypeError | None]:
    """:func:`json_chunk` of each value, up to the first refused one (and its error)."""
    data = to_json_many(values)
    if _PLAIN_CHUNKS.issuperset(map(type, data)):
        return data, None
    good: list[Any] = []
    for value in values:
        try:
            good.append(json_chunk(value, key))
        except TypeError as exc:
            return good, exc
    return good, None


async def _pump(sink: ProducerSink, source: Source[T], tee: _Tee[T] | None,
                encoder: _Encoder) -> None:
    error: BaseException | None = None
    try:
        if isinstance(source, AsyncIterable):
            async for item in source:
                data = encoder.one(item)  # a refused chunk ends the pipe, and is not teed
                if tee is not None:
                    tee.feed(item)
                await sink.put(data)
        else:  # a sync source never blocks: take it in slices, one put per slice
            items = iter(source)
            full = True
            while full:
                batch: list[T] = []
                refused: Exception | None = None
                try:  # list.extend keeps what it took before the source raised: stored too
                    batch.extend(itertools.islice(items, PIPE_SLICE))
                finally:
                    encoded, refused = encoder.many(batch)
                    if tee is not None:
                        tee.feed_many(batch[:len(encoded)])
                    if encoded:
                        await sink.put_many(encoded)
                if refused is not None:  # what came before it is stored
                    raise refused
                full = len(batch) == PIPE_SLICE
        await sink.flush()
    except BaseException as exc:
        error = exc
        raise
    finally:
        if tee is not None:
            tee.close(error if isinstance(error, Exception) else None)


def _producer_job(sink: ProducerSink,
                  body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A pipe's or writer's job: run ``body``, then close ``sink``.

    If ``body`` fails (its source, a chunk it was given, a writer's function), the job
    first waits until what the sink had accepted is stored, so the error is reported once
    the chunks before it are readable, not while they are still on their way (a run
    finishing meanwhile would refuse them).
    """
    async def job() -> None:
        try:
            await body()
        except Exception:
            with contextlib.suppress(Exception):  # the sink's own: the body's error is raised
                await sink.flush()
            raise
        finally:
            sink.close()

    return job


def _start_pipe(key: str, source: Source[T], target: str,
                encoder: _Encoder, client: Backend | None = None) -> PipeResult[T]:
    _check_source(source)
    backend = current_backend(client)
    sink = backend.open_producer(backend.resolve_target(target), key)
    tee: _Tee[T] = _Tee()
    job = _producer_job(sink, lambda: _pump(sink, source, tee, encoder))
    tee.done = backend.spawn_producer(job)
    return PipeResult(tee, tee.done)


class AppendResult:
    """What ``append`` returns: the chunk is already queued; await this for it to be stored.

    ``append`` queues its chunk when it is *called*, in call order, on one producer per
    target run and stream: an append that nobody awaits still lands, after the appends
    called before it (as in TypeScript). Awaiting returns once the chunk is stored and
    raises what the engine refused (a chunk too large, a finished run); an append never
    awaited loses that error (it is logged by the engine when it refuses a chunk).
    """

    __slots__ = ("_sink", "_forget")

    def __init__(self, sink: ProducerSink, forget: Callable[[], None]) -> None:
        self._sink = sink
        self._forget = forget

    def __await__(self) -> Generator[Any, None, None]:
        return self._flush().__await__()

    async def _flush(self) -> None:
        try:
            await self._sink.flush()
        except BaseException:
            self._forget()  # the next append starts a fresh producer
            raise


_appenders: weakref.WeakKeyDictionary[Backend, collections.OrderedDict[
    tuple[str, str], ProducerSink]] = weakref.WeakKeyDictionary()


def _append(key: str, chunk: Any, target: str, client: Backend | None = None) -> AppendResult:
    """Queue ``chunk`` (JSON-ready) now, on the backend's producer for ``(run, key)``."""
    backend = current_backend(client)
    where = (backend.resolve_target(target), key)
    sinks = _appenders.get(backend)
    if sinks is None:
        sinks = _appenders[backend] = collections.OrderedDict()

    def forget() -> None:
        if sinks.get(where) is sink:
            del sinks[where]

    sink = sinks.get(where)
    if sink is not None:
        sinks.move_to_end(where)
        try:
            sink.put_nowait(chunk)
            return AppendResult(sink, forget)
        except Exception:  # an earlier chunk's refusal: not this one's; start afresh
            forget()
    sink = backend.open_producer(*where)
    sink.put_nowait(chunk)
    sinks[where] = sink
    while len(sinks) > APPENDERS_PER_BACKEND:  # an evicted producer still stores its chunks
        sinks.popitem(last=False)
    return AppendResult(sink, forget)


class StreamWriter(Generic[T]):
    """Given to a writer's ``execute`` function: ``write`` one chunk, ``merge`` a source."""

    def __init__(self, sink: ProducerSink, backend: Backend,
                 encoder: _Encoder) -> None:
        self._sink = sink
        self._backend = backend
        self._encoder = encoder
        self._merges: list[Completion] = []

    def write(self, chunk: T) -> None:
        """Queue one chunk (never blocks).

        Raises:
            InvalidPayloadError: the chunk does not fit the stream's type.
            TypeError: the chunk is not JSON (nothing of it is queued).
        """
        self._sink.put_nowait(self._encoder.one(chunk))

    def merge(self, source: Source[T]) -> None:
        """Pipe ``source`` into the same stream alongside the writes."""
        _check_source(source)
        self._merges.append(self._backend.spawn_producer(
            lambda: _pump(self._sink, source, None, self._encoder)))

    async def _finish(self) -> None:
        for merge in self._merges:
            await merge.wait()
        await self._sink.flush()


#: A writer's ``execute``: sync, or async (its awaitable is awaited); its result is ignored.
Execute: TypeAlias = Callable[[StreamWriter[T]], object]


def _start_writer(key: str, execute: Execute[T], target: str,
                  encoder: _Encoder, client: Backend | None = None) -> WriterResult:
    if not callable(execute):
        raise TypeError("writer(execute=...) needs a function taking the writer")
    backend = current_backend(client)
    sink = backend.open_producer(backend.resolve_target(target), key)
    writer: StreamWriter[T] = StreamWriter(sink, backend, encoder)

    async def body() -> None:
        result = execute(writer)
        if inspect.isawaitable(result):
            await result
        await writer._finish()

    return WriterResult(backend.spawn_producer(_producer_job(sink, body)))


class StreamReader(Generic[T]):
    """An async iterator over a stream's chunks, typed by its definition.

    It ends when the stream has ended; it raises :class:`StreamTimeoutError` when no chunk
    arrived for ``timeout_in_seconds``. To leave the loop early, use it as
    ``async with await ai.read(run_id) as chunks:`` (or call :meth:`aclose`): the read is
    stopped on the engine at once. A reader dropped without that is stopped when it is
    garbage collected.
    """

    def __init__(self, batches: AsyncGenerator[list[Any], None],
                 decode: Callable[[list[Any]], Iterable[T]]) -> None:
        self._batches = batches
        self._decode = decode  # a batch's values -> its chunks, lazily
        # Weak: a bare loop that breaks drops its iterator, which stops the read (trio
        # finalizes it). Strong inside ``async with``: the block's exit closes it cleanly.
        self._items: weakref.ref[AsyncGenerator[T, None]] | None = None
        self._entered: AsyncGenerator[T, None] | None = None
        self._in_block = False

    def __aiter__(self) -> AsyncIterator[T]:
        items = self._items() if self._items is not None else None
        if items is None:
            items = self._iterate()
            self._items = weakref.ref(items)
        if self._in_block:
            self._entered = items
        return items

    async def _iterate(self) -> AsyncGenerator[T, None]:
        decode = self._decode
        try:
            async for batch in self._batches:
                for item in decode(batch):
                    yield item
        finally:
            await self._batches.aclose()

    async def aclose(self) -> None:
        """Stop reading (safe to call twice, and after the stream ended)."""
        items = self._items() if self._items is not None else None
        if items is not None:
            await items.aclose()
        await self._batches.aclose()

    async def __aenter__(self) -> StreamReader[T]:
        self._in_block = True
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.aclose()
        finally:
            self._in_block = False
            self._entered = None

    async def collect(self) -> list[T]:
        """Read the whole stream into a list."""
        return [item async for item in self]


def _open_read(run_id: str, key: str, timeout: float | None, start: int,
               decode: Callable[[list[Any]], Iterable[T]],
               client: Backend | None = None) -> StreamReader[T]:
    if not isinstance(run_id, str) or not run_id:
        raise TypeError("run_id must be a non-empty string")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ValueError("start_index must be an integer >= 0")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError("timeout_in_seconds must be a positive number or None")
    batches = current_backend(client).read(run_id, key, start, timeout)
    return StreamReader(batches, decode)


class StreamDef(Generic[T]):
    """A typed output stream, made by ``streams.define(id=..., type=...)``.

    ``type`` is a class (chunks are typed as its instances: ``StreamDef[str]``,
    ``StreamDef[Progress]``), any other type cattrs understands (``int | None`` ...: typed
    ``Any``), or ``None`` for chunks taken as they are (``StreamDef[Any]``).
    """

    @overload
    def __init__(self: StreamDef[Any], id: str, type: None = None) -> None: ...
    @overload
    def __init__(self, id: str, type: type[T]) -> None: ...
    @overload
    def __init__(self: StreamDef[Any], id: str, type: object) -> None: ...

    def __init__(self, id: str, type: Any = None) -> None:
        self.id = _check_key(id)
        self.type: builtins.type[T] | None = type
        self._what = f"chunk of stream {self.id!r}"
        self._encoder = _Encoder(type, self._what, id)

    def __repr__(self) -> str:
        return f"<StreamDef {self.id!r}>"

    def _decode(self, values: list[Any]) -> Iterable[T]:
        return from_json_many(values, self.type, self._what)

    def pipe(self, source: Source[T], *, target: str = "self",
             client: Backend | None = None) -> PipeResult[T]:
        """Store every chunk of ``source`` in this stream; returns at once.

        A chunk that does not fit the stream's type ends the pipe: the chunks before it
        are stored, and ``wait_until_complete()`` raises :class:`InvalidPayloadError`.
        ``client`` (here and in the other calls) makes the call through that client rather
        than the run or the client ``connect()`` bound to this context.
        """
        return _start_pipe(self.id, source, target, self._encoder, client)

    def append(self, chunk: T, *, target: str = "self",
               client: Backend | None = None) -> AppendResult:
        """Queue one chunk now; ``await`` the result for it to be stored (see
        :class:`AppendResult`).

        Raises:
            InvalidPayloadError: the chunk does not fit the stream's type (nothing queued).
            TypeError: the chunk is not JSON (nothing queued).
        """
        return _append(self.id, self._encoder.one(chunk), target, client)

    def writer(self, execute: Execute[T], *, target: str = "self",
               client: Backend | None = None) -> WriterResult:
        """Run ``execute(w)`` as a producer of this stream (``w.write``, ``w.merge``)."""
        return _start_writer(self.id, execute, target, self._encoder, client)

    async def read(self, run_id: str, *, timeout_in_seconds: float | None = 60,
                   start_index: int = 0, client: Backend | None = None) -> StreamReader[T]:
        """Read this stream of ``run_id`` from ``start_index``; typed chunks."""
        return _open_read(run_id, self.id, timeout_in_seconds, start_index, self._decode,
                          client)


def _identity(value: Any) -> Any:
    return value


class _Streams:
    """``streams``: define streams, or use them by key without a definition."""

    @overload
    def define(self, id: str, type: None = None) -> StreamDef[Any]: ...
    @overload
    def define(self, id: str, type: type[T]) -> StreamDef[T]: ...
    @overload
    def define(self, id: str, type: object) -> StreamDef[Any]: ...

    def define(self, id: str, type: Any = None) -> StreamDef[Any]:
        """A typed output stream definition (see :class:`StreamDef`)."""
        return StreamDef(id, type)

    @overload
    def input(self, id: str, type: None = None) -> InputStreamDef[Any]: ...
    @overload
    def input(self, id: str, type: type[T]) -> InputStreamDef[T]: ...
    @overload
    def input(self, id: str, type: object) -> InputStreamDef[Any]: ...

    def input(self, id: str, type: Any = None) -> InputStreamDef[Any]:
        """A typed input stream definition (see :class:`~runwire.InputStreamDef`)."""
        from ._inputs import InputStreamDef

        return InputStreamDef(id, type)

    @overload
    def pipe(self, source: Source[T], /, *, target: str = "self",
             client: Backend | None = None) -> PipeResult[T]: ...
    @overload
    def pipe(self, key: str, source: Source[T], /, *, target: str = "self",
             client: Backend | None = None) -> PipeResult[T]: ...

    def pipe(self, key_or_source: Any, source: Any = None, *, target: str = "self",
             client: Backend | None = None) -> PipeResult[Any]:
        """``pipe(key, source)`` or ``pipe(source)`` (key ``"default"``)."""
        if source is None:
            key, source = DEFAULT_KEY, key_or_source
        else:
            key = _check_key(key_or_source)
        return _start_pipe(key, source, target, _Encoder(key=key), client)

    def append(self, key_or_chunk: Any, chunk: Any = _identity, *,
               target: str = "self", client: Backend | None = None) -> AppendResult:
        """``append(key, chunk)`` or ``append(chunk)`` (key ``"default"``); see
        :meth:`StreamDef.append`."""
        if chunk is _identity:
            key, chunk = DEFAULT_KEY, key_or_chunk
        else:
            key = _check_key(key_or_chunk)
        return _append(key, json_chunk(chunk, key), target, client)

    def writer(self, key: str = DEFAULT_KEY, *, execute: Execute[Any],
               target: str = "self", client: Backend | None = None) -> WriterResult:
        """``writer(key, execute=fn)``; no key means ``"default"``."""
        key = _check_key(key)
        return _start_writer(key, execute, target, _Encoder(key=key), client)

    async def read(self, run_id: str, key: str = DEFAULT_KEY, *,
                   timeout_in_seconds: float | None = 60,
                   start_index: int = 0, client: Backend | None = None) -> StreamReader[Any]:
        """Read stream ``key`` of ``run_id`` (untyped chunks)."""
        return _open_read(run_id, _check_key(key), timeout_in_seconds, start_index, _identity,
                          client)


streams = _Streams()
