"""``redis://host:port/db``: the Store in Redis, shared by every engine that opens the URL.

Theory of operation: the client is coredis (it runs on trio through anyio; redis-py's async
client is asyncio-only). Its connection pool lives in a task group, so the store holds the
client open in a trio *system task* that it starts on first use (:meth:`RedisStore.open`, which
the engine calls at startup) and ends in :meth:`RedisStore.aclose`: a store still opens with
a plain ``open_store(url)`` and works from any task.

A commit is one ``EVALSHA`` of a Lua script (``_redis_lua.COMMIT``): atomic, one round trip,
and it checks every run lease the batch names (:attr:`Batch.leases`, fencing: a writer that
lost a run to another engine writes nothing more of it) and every chunk index against the
stored lengths before it writes anything. Chunk
logs are Redis Streams whose entry ids are the chunk indices (``i-1``), so reads are exact
``XRANGE`` windows. The key layout is in ``_redis_lua``.

Errors are translated where they enter: Redis unreachable or gone is
:class:`StoreUnavailableError`; out of memory (``maxmemory`` with ``noeviction``) is
:class:`StoreFullError` and nothing of the batch was written; a URL, a database number or a
server that cannot work is :class:`StoreConfigError` at :meth:`open`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import coredis
import coredis.exceptions
import orjson
import trio

from ._base import (
    Batch, DurableStream, Store, StoredRecord, StoredToken, StreamState, decode_cursor,
    encode_cursor, RunFilter,
)
from ._errors import (
    DuplicateRunError, IndexGapError, LeaseLostError, NotCompactError, StoreClosedError,
    StoreConfigError, StoreError, StoreFullError, StoreUnavailableError,
)
from . import _redis_lua as lua

log = logging.getLogger("runwire.engine")

_FINAL = frozenset({"COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"})
#: The oldest Redis that works: ``#!lua`` script flags (refused whole when out of memory).
MIN_VERSION = (7, 0)
#: Seconds to connect and to wait for one answer before Redis counts as unreachable.
CONNECT_TIMEOUT = 5.0
STREAM_TIMEOUT = 30.0


@attrs.frozen
class RedisAddress:
    """Where a ``redis://`` URL points."""

    host: str
    port: int
    db: int
    password: str | None = None
    username: str | None = None
    prefix: str = "rw:"
    #: seconds an engine's hold on a run lasts without renewal (the broker's leases)
    lease_ttl: float = 10.0

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db][?prefix=NAME&lease_ttl=SECONDS]`` (port
    6379, db 0, prefix ``rw``, leases of 10 s).

    Raises:
        StoreConfigError: not such a URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise StoreConfigError(f"malformed Redis URL {url!r}: {exc}") from None
    if parts.scheme != "redis" or not parts.hostname:
        raise StoreConfigError(f"a Redis store URL is redis://host:port/db, not {url!r}")
    path = parts.path.strip("/") or "0"
    if not path.isdigit() or len(path) > 5:
        raise StoreConfigError(f"the database of {url!r} must be a number such as /0, "
                               f"not {path!r}")
    prefix, lease = "rw:", 10.0
    for option in parts.query.split("&") if parts.query else ():
        key, _, value = option.partition("=")
        if key == "prefix" and value:
            prefix = unquote(value) + ":"
        elif key == "lease_ttl":
            try:
                lease = float(value)
            except ValueError:
                lease = math.nan
            if not 0.5 <= lease <= 3600:
                raise StoreConfigError(f"lease_ttl in {url!r} must be seconds in 0.5-3600")
        else:
            raise StoreConfigError(f"unknown option {option!r} in {url!r}: the options are "
                                   f"prefix=NAME and lease_ttl=SECONDS")
    return RedisAddress(parts.hostname, port, int(path),
                        unquote(parts.password) if parts.password else None,
                        unquote(parts.username) if parts.username else None, prefix, lease)


async def load_scripts(client: coredis.Redis[bytes], sources: dict[str, str]) -> dict[str, Any]:
    """Register Lua scripts and load them into Redis now (``SCRIPT LOAD``), so the first
    call of each is an ``EVALSHA`` that finds it."""
    scripts = {}
    for name, source in sources.items():
        scripts[name] = client.register_script(source)
        await client.script_load(source)
    return scripts


def _leaf(exc: BaseException) -> BaseException:
    """The error inside task-group wrappers (coredis' pool runs in one)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:2])
    except ValueError:
        return (0,)


@contextmanager
def redis_errors(address: RedisAddress) -> Iterator[None]:
    """Translate coredis' errors into the store's family (the boundary where they enter)."""
    try:
        yield
    except StoreError:
        raise
    except coredis.exceptions.ResponseError as exc:
        text = str(exc)
        if text.startswith("GAP "):
            raise IndexGapError(text[4:]) from None
        if text.startswith("DUPKEY "):
            raise DuplicateRunError(text[7:]) from None
        if text.startswith("LEASE "):
            run_id, _, why = text[6:].partition(" ")
            raise LeaseLostError(run_id, why) from None
        if text.startswith("OOM") or "maxmemory" in text:
            raise StoreFullError(f"Redis at {address} is out of memory (maxmemory reached; "
                                 f"nothing of this write was stored): {text}") from None
        if text.startswith(("LOADING", "MASTERDOWN", "READONLY", "BUSY")):
            raise StoreUnavailableError(f"Redis at {address} cannot take writes now: "
                                        f"{text}").refused_whole() from None
        raise
    except (coredis.exceptions.ConnectionError, TimeoutError, OSError) as exc:
        error = StoreUnavailableError(f"Redis at {address} is unreachable: "
                                      f"{exc or type(exc).__name__}")
        if _never_sent(exc):
            error.refused_whole()
        raise error from exc


def _never_sent(exc: BaseException) -> bool:
    """Whether a connection error came from connecting (the command was never sent), not
    from a connection lost or a reply late while the command was under way (it may have
    run)."""
    return (isinstance(exc, coredis.exceptions.ConnectionError)
            and str(exc).startswith("Unable to establish a connection"))


class RedisStore(Store):
    """Runs, chunk logs, input logs, waitpoints, tokens and durable streams in one Redis
    database, shared by every engine on it."""

    scheme = "redis"

    def __init__(self, address: RedisAddress) -> None:
        self.address = address
        self.prefix = address.prefix
        self._client: coredis.Redis[bytes] | None = None
        self._ready: trio.Event | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._scripts: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(parse_redis_url(url))

    # --- the connection ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check the server: reachable, the database exists, Redis >= 7,
        ``maxmemory-policy`` is ``noeviction``.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
            StoreConfigError: a database or a server setting that cannot work.
        """
        await self.client()

    async def client(self) -> coredis.Redis[bytes]:
        """The connected client (connecting, or reconnecting after a failure, if needed)."""
        if self._closed:
            raise StoreClosedError("the Redis store is closed")
        if self._ready is None:
            self._ready = trio.Event()
            self._error = None
            self._stopped = trio.Event()
            trio.lowlevel.spawn_system_task(self._hold, name=f"redis store {self.address}")
        await self._ready.wait()
        if self._client is None:
            error = self._error
            self._ready = None  # the next call tries again
            assert error is not None
            raise error
        return self._client

    async def _hold(self) -> None:
        """Keep the client (and its pool's task group) open until ``aclose``."""
        ready = self._ready
        assert ready is not None
        try:
            client: coredis.Redis[bytes] = coredis.Redis(
                self.address.host, self.address.port, self.address.db,
                username=self.address.username, password=self.address.password,
                connect_timeout=CONNECT_TIMEOUT, stream_timeout=STREAM_TIMEOUT,
                client_name="runwire", retry_policy=coredis.retry.NoRetryPolicy())
            with redis_errors(self.address):
                async with client:
                    await self._check(client)
                    self._scripts = await load_scripts(client, {
                        name: getattr(lua, name) for name in (
                            "COMMIT", "READ", "TOKEN_CREATE", "TOKEN_COMPLETE",
                            "DELETE_FINISHED", "DS_STATE")})
                    self._client = client
                    ready.set()
                    await self._stop.wait()
        except Exception as caught:
            exc = _leaf(caught)
            if isinstance(exc, (coredis.exceptions.ConnectionError, OSError, TimeoutError)):
                exc = StoreUnavailableError(f"Redis at {self.address} is unreachable: {exc}")
            elif isinstance(exc, coredis.exceptions.AuthenticationError):
                exc = StoreConfigError(f"Redis at {self.address} refused the credentials: "
                                       f"{exc}")
            elif isinstance(exc, coredis.exceptions.ResponseError) and "DB index" in str(exc):
                exc = StoreConfigError(f"Redis at {self.address.host}:{self.address.port} has "
                                       f"no database {self.address.db}: {exc}")
            elif not isinstance(exc, StoreError):
                exc = StoreUnavailableError(f"Redis at {self.address} failed: {exc!r}")
            if isinstance(exc, StoreUnavailableError):  # raised to callers of client():
                exc.refused_whole()  # their calls were never sent
            if self._client is not None:
                log.warning("Redis store %s lost its connection: %s", self.address, exc)
            self._error = exc
        finally:
            self._client = None
            if self._ready is ready:
                self._ready = None if ready.is_set() else ready
            ready.set()
            self._stopped.set()

    async def _check(self, client: coredis.Redis[bytes]) -> None:
        info = await client.info("server", "memory")
        version = str(info.get("redis_version", "0"))
        if _version(version) < MIN_VERSION:
            raise StoreConfigError(f"Redis at {self.address} is version {version}; runwire "
                                   f"needs Redis {'.'.join(map(str, MIN_VERSION))} or newer")
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            raise StoreConfigError(
                f"Redis at {self.address} has maxmemory-policy {policy}: it would evict "
                f"runs and stream chunks when memory runs out. Set "
                f"'maxmemory-policy noeviction' (docs/operations.md)")

    async def aclose(self) -> None:
        """Close the connection pool; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._ready is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._stopped.wait()

    async def _run(self, name: str, args: Sequence[Any]) -> Any:
        client = await self.client()
        with redis_errors(self.address):
            return await self._scripts[name](args=[self.prefix, *args])

    # --- writing -------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        args = encode_batch(batch)
        if len(args) <= 0:
            await trio.lowlevel.checkpoint()
            return
        await self._run("COMMIT", args)

    # --- runs ----------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        client = await self.client()
        with redis_errors(self.address):
            raw = await client.get(self._k("run:{", run_id, "}"))
        return orjson.loads(raw) if raw is not None else None

    async def find_run(self, task_id: str, idempotency_key: str) -> str | None:
        client = await self.client()
        with redis_errors(self.address):
            found = await client.hget(self._k("runkeys"), f"{task_id}\n{idempotency_key}")
        return found.decode() if found is not None else None

    async def _runs(self, ids: Sequence[bytes | str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        client = await self.client()
        keys = [self._k("run:{", i.decode() if isinstance(i, bytes) else i, "}") for i in ids]
        with redis_errors(self.address):
            raws = await client.mget(keys)
        return [orjson.loads(raw) for raw in raws if raw is not None]

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        client = await self.client()
        with redis_errors(self.address):
            ids = await client.smembers(self._k("unfinished"))
        return [r for r in await self._runs(sorted(ids)) if r["status"] not in _FINAL]

    async def list_runs(self, *, task: str | None, status: list[str] | None,
                        tags: list[str] | None, created_after: float | None,
                        created_before: float | None, limit: int,
                        cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        after = decode_cursor(cursor) if cursor is not None else None
        where = RunFilter.of(task=task, status=status, tags=tags, created_after=created_after,
                             created_before=created_before)
        top = after[0] if after is not None else math.inf
        if created_before is not None:
            top = min(top, created_before)
        client = await self.client()
        page: list[dict[str, Any]] = []
        offset = 0
        window = max(limit * 2, 50)
        while len(page) < limit:
            with redis_errors(self.address):
                ids = await client.zrange(self._k("runs"), "+inf" if top == math.inf
                                          else repr(top), "-inf",
                                          sortby=coredis.PureToken.BYSCORE, rev=True,
                                          offset=offset, count=window)
            offset += len(ids)
            for run in await self._runs([i for i in ids if isinstance(i, bytes)]):
                key = (run.get("created_at") or 0.0, run["id"])
                if after is not None and key >= after:
                    continue
                if created_after is not None and key[0] <= created_after:
                    break
                if where.matches(run):
                    page.append(run)
                    if len(page) == limit:
                        break
            else:
                if len(ids) < window:
                    break
                continue
            break
        last = page[-1] if len(page) == limit else None
        return page, (encode_cursor(last.get("created_at") or 0.0, last["id"])
                      if last is not None else None)

    async def delete_finished_before(self, cutoff: float) -> int:
        total = 0
        while True:
            done = int(await self._run("DELETE_FINISHED", [repr(float(cutoff)), 200]))
            total += done
            if done < 200:
                return total

    # --- streams and inputs ----------------------------------------------------------------

    async def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[bytes]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        flat = await self._run("READ", ["s:{" + run_id + "}" + key, start, limit])
        found: list[bytes] = []
        for at, data in zip(flat[::2], flat[1::2]):
            chunks = _bytes(data).split(b"\n")
            skip = start - int(at) if not found else 0
            found.extend(chunks[skip:] if skip > 0 else chunks)
            if len(found) >= limit:
                break
        return found[:limit]

    async def streams(self, run_id: str) -> dict[str, StreamState]:
        client = await self.client()
        with redis_errors(self.address):
            fields = await client.hgetall(self._k("st:{", run_id, "}"))
        return decode_streams(fields)

    async def producer_seqs(self, run_id: str) -> dict[tuple[str, str], int]:
        client = await self.client()
        with redis_errors(self.address):
            fields = await client.hgetall(self._k("seq:{", run_id, "}"))
        return decode_seqs(fields)

    async def records(self, run_id: str) -> dict[str, list[StoredRecord]]:
        client = await self.client()
        with redis_errors(self.address):
            raws = await client.lrange(self._k("rec:{", run_id, "}"), 0, -1)
        return decode_records(raws)

    async def waitpoint(self, run_id: str, key: str, now: float) -> bytes | None:
        client = await self.client()
        with redis_errors(self.address):
            raw = await client.hget(self._k("wp:{", run_id, "}"), key)
        if raw is None:
            return None
        data, expires = orjson.loads(raw)
        if expires is not None and expires <= now:
            return None
        return str(data).encode()

    # --- waitpoint tokens ----------------------------------------------------------------

    async def create_token(self, token: StoredToken) -> StoredToken:
        base = orjson.dumps({"id": token.id, "created_at": token.created_at,
                             "expires_at": token.expires_at, "run_id": token.run_id,
                             "idempotency_key": token.idempotency_key,
                             "tags": list(token.tags)})
        got = await self._run("TOKEN_CREATE", [
            token.id, base, token.idempotency_key or "", token.run_id or "",
            "" if token.expires_at is None else repr(float(token.expires_at))])
        made = got.decode() if isinstance(got, bytes) else str(got)
        if made == token.id:
            return token
        found = await self.get_token(made)
        assert found is not None, "a token's key and the token are written together"
        return found

    async def get_token(self, token_id: str) -> StoredToken | None:
        client = await self.client()
        with redis_errors(self.address):
            fields = await client.hgetall(self._k("tok:", token_id))
        return decode_token(fields) if fields else None

    async def complete_token(self, token_id: str, data: bytes,
                             now: float) -> tuple[StoredToken | None, bool]:
        done = await self._run("TOKEN_COMPLETE", [token_id, bytes(data), repr(float(now))])
        return await self.get_token(token_id), bool(done)

    # --- durable streams -----------------------------------------------------------------

    async def durable_streams(self) -> list[DurableStream]:
        client = await self.client()
        with redis_errors(self.address):
            fields = await client.hgetall(self._k("ds"))
        return [decode_durable(raw) for raw in fields.values()]

    async def durable_stream(self, path: str) -> DurableStream | None:
        client = await self.client()
        with redis_errors(self.address):
            raw = await client.hget(self._k("ds"), path)
        return decode_durable(raw) if raw is not None else None

    async def durable_stream_state(
            self, path: str, producer: str) -> tuple[DurableStream | None, tuple[int, int] | None]:
        raw, state = await self._run("DS_STATE", [path, producer])
        found = None
        if state:
            epoch, seq = _bytes(state).split()
            found = (int(epoch), int(seq))
        return (decode_durable(_bytes(raw)) if raw else None), found

    async def count_durable_streams(self) -> int:
        client = await self.client()
        with redis_errors(self.address):
            return int(await client.hlen(self._k("ds")))

    async def stream_items(self, path: str, start: int, end: int,
                           max_bytes: int) -> list[tuple[int, bytes]]:
        client = await self.client()
        key = self._k("dsi:", path)
        with redis_errors(self.address):
            first = await client.xrevrange(key, f"{start}-1", "-", count=1)
            begin = _bytes(first[0].identifier) if first else b"-"
        found: list[tuple[int, bytes]] = []
        size = 0
        while True:
            with redis_errors(self.address):
                entries = await client.xrange(key, begin, "+", count=64)
            for entry in entries:
                at = int(_bytes(entry.identifier).split(b"-")[0])
                if at >= end or (found and size >= max_bytes):
                    return found
                data = _bytes(entry.field_values[b"d"])
                found.append((at, data))
                size += len(data)
            if len(entries) < 64:
                return found
            begin = b"(" + _bytes(entries[-1].identifier)

    async def stream_producer(self, path: str, producer: str) -> tuple[int, int] | None:
        client = await self.client()
        with redis_errors(self.address):
            raw = await client.hget(self._k("dsp:", path), producer)
        if raw is None:
            return None
        epoch, seq = raw.split()
        return int(epoch), int(seq)


# --- encoding ------------------------------------------------------------------------------


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _flag(value: object) -> str:
    return "0" if value is None else "1"


def encode_batch(batch: Batch) -> list[bytes | str | int]:
    """The ``COMMIT`` script's operations for a batch, in the order the batch applies."""
    args: list[bytes | str | int] = []
    for run_id, token in batch.leases:  # first: a lost lease refuses the batch at once
        args += ["L", run_id, token]
    for run in batch.runs:
        finished = run.get("finished_at")
        ikey = run.get("idempotency_key")
        args += ["R", run["id"], orjson.dumps(run), "1" if run["status"] in _FINAL else "0",
                 repr(float(run.get("created_at") or 0.0)),
                 "" if finished is None else repr(float(finished)), run["task_id"],
                 _flag(ikey), ikey or ""]
    for app in batch.chunks:
        has = app.producer is not None and app.next_seq is not None
        pages = paginate(app.start, app.items)
        args += ["C", app.run_id, app.key, app.start, len(app.items), app.nbytes,
                 "1" if has else "0", app.producer or "", app.next_seq or 0, len(pages)]
        for page in pages:
            args.extend(page)
    for rec in batch.records:
        args += ["I", rec.run_id, orjson.dumps([rec.key, rec.index, rec.idempotency_key,
                                                rec.data.decode()])]
    for wp in batch.waitpoints:
        args += ["W", wp.run_id, wp.key, orjson.dumps([wp.data.decode(), wp.expires_at])]
    for run_id, key in batch.ended:
        args += ["E", run_id, key]
    for path in batch.dropped_streams:
        args += ["D", path]
    for write in batch.streams:
        expect = (b"" if not write.checked else b"-" if write.expected is None
                  else encode_durable(write.expected))
        args += ["S", write.stream.path, encode_durable(write.stream), len(write.items), expect]
        for start, data in write.items:
            args += [start, bytes(data)]
        if write.producer is None:
            args += ["0", "", ""]
        else:
            pid, epoch, seq = write.producer
            args += ["1", pid, f"{epoch} {seq}"]
    return args


#: A page (one stream entry) holds at most this many chunks, and more only than one chunk
#: when they fit in PAGE_BYTES: a read of a frame never fetches much more than the frame.
PAGE_CHUNKS = 512
PAGE_BYTES = 256 * 1024


def paginate(start: int, items: list[bytes]) -> list[tuple[int, int, bytes]]:
    """``(first index, count, chunks joined by newlines)`` per page of an append.

    Raises:
        NotCompactError: a chunk holds a raw newline byte.
    """
    pages: list[tuple[int, int, bytes]] = []
    begin = 0
    while begin < len(items):
        end, size = begin, 0
        while end < len(items) and end - begin < PAGE_CHUNKS and (
                end == begin or size + len(items[end]) <= PAGE_BYTES):
            size += len(items[end]) + 1
            end += 1
        data = b"\n".join(items[begin:end])
        if data.count(b"\n") != end - begin - 1:
            raise NotCompactError("a chunk holds a raw newline byte: chunks must be "
                                  "compact JSON")
        pages.append((start + begin, end - begin, data))
        begin = end
    return pages


def decode_streams(fields: dict[bytes, bytes]) -> dict[str, StreamState]:
    found: dict[str, list[Any]] = {}
    for name, value in fields.items():
        kind, key = name[:2], name[2:].decode()
        state = found.setdefault(key, [0, 0, False])
        if kind == b"n:":
            state[0] = int(value)
        elif kind == b"b:":
            state[1] = int(value)
        elif kind == b"e:":
            state[2] = True
    return {key: StreamState(*state) for key, state in found.items()}


def decode_seqs(fields: dict[bytes, bytes]) -> dict[tuple[str, str], int]:
    seqs = {}
    for name, value in fields.items():
        key, _, producer = name.decode().partition("\0")
        seqs[(key, producer)] = int(value)
    return seqs


def decode_records(raws: Sequence[bytes]) -> dict[str, list[StoredRecord]]:
    records: dict[str, list[StoredRecord]] = {}
    for raw in raws:
        key, index, ikey, data = orjson.loads(raw)
        records.setdefault(key, []).append(StoredRecord(index, data.encode(), ikey))
    return records


def decode_token(fields: dict[bytes, bytes]) -> StoredToken:
    base = orjson.loads(fields[b"base"])
    done = fields.get(b"done")
    return StoredToken(id=base["id"], created_at=base["created_at"],
                       expires_at=base["expires_at"], run_id=base["run_id"],
                       idempotency_key=base["idempotency_key"], tags=tuple(base["tags"]),
                       status=fields[b"status"].decode(), data=fields.get(b"data"),
                       completed_at=float(done) if done is not None else None)


def encode_durable(stream: DurableStream) -> bytes:
    return orjson.dumps(attrs.asdict(stream))


def decode_durable(raw: bytes) -> DurableStream:
    fields = orjson.loads(raw)
    if fields.get("closed_by") is not None:
        fields["closed_by"] = tuple(fields["closed_by"])
    return DurableStream(**fields)
