"""``sqlite:///path``: the durable embedded Store, one SQLite file in WAL mode.

Theory of operation.

* **Threads.** sqlite3 blocks, so no SQLite call ever runs on the trio thread. There are two
  connections: the *writer*, used only through ``trio.to_thread.run_sync`` with a
  ``CapacityLimiter(1)`` (so exactly one worker thread touches it at a time), and the
  *reader*, with its own limiter. WAL mode lets the reader see every committed transaction
  without waiting for the writer. A ``:memory:`` database has one connection for both.
  Connections are opened lazily by the first call, in the worker thread.
* **Group commit.** Every actor commits one :class:`~engine._store.Batch` per cycle. Callers
  append their batch to a queue and take a fair ``trio.Lock``; whoever holds it writes
  *everything queued so far* as one transaction, so batches that arrive while a transaction
  is in flight ride together in the next one. A caller returns only once its own batch is
  committed (or raises that batch's error). Each batch gets a SAVEPOINT, so a bad batch
  (an index gap, a bug) is rolled back alone and the rest of the group still commits.
* **Cancellation.** A caller cancelled before its batch was taken removes it: nothing is
  written. Once taken, the write finishes (shielded; one transaction is short) and the
  caller then sees the cancellation.
* **Indices.** The actor assigns chunk indices; the store checks that each append starts at
  the stream's stored length and refuses a gap or an overlap, like the memory store.
* **Durability.** ``synchronous=NORMAL`` by default: a committed batch survives a killed
  process (it is in the WAL, which the OS holds); a power loss or OS crash may lose the
  last commits, never corrupt the file. ``?synchronous=full`` fsyncs the WAL on every
  commit (group commit shares one fsync among all batches that ride together).
* **One engine per file.** An advisory ``flock`` on ``<path>.lock`` stops a second engine
  from opening the same file (both would recover and re-run the same runs). The kernel drops
  it when the process dies, so a restart after ``kill -9`` is never blocked.
* **Chunk pages.** Chunks are not one row each: each append is cut into *pages* of up to
  ``PAGE_ITEMS`` consecutive chunks / ``PAGE_BYTES`` bytes, one row holding the chunks'
  bytes concatenated plus their end offsets, keyed by ``(sid, last index)``. A row per
  chunk costs ~3 us of SQLite work *and* one GIL hand-off per row (``sqlite3_step``
  releases the GIL), which convoys with the busy trio thread; a page costs that once per
  thousand chunks. ``read_chunks(start, n)`` seeks to the first page with ``last >= start``
  and reads pages in order until it has ``n`` chunks.

Schema: ``runs`` (JSON blob plus indexed task/idempotency key/status/finished_at),
``streams`` (one row per output stream: integer ``sid``, length, bytes, ended),
``chunk_pages``, ``producer_seqs``, ``records`` and ``waitpoints``.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
import trio

from ._store import Batch, ChunkAppend, Store, StoredRecord, StreamState

T = TypeVar("T")

SCHEMA_VERSION = 1
_FINAL = "('COMPLETED', 'FAILED', 'CANCELED', 'CRASHED', 'TIMED_OUT')"
#: Runs deleted per retention transaction, so a big sweep never stalls commits for long.
DELETE_STEP = 200
#: Chunks are stored in pages: one row holds up to this many consecutive chunks ...
PAGE_ITEMS = 1024
#: ... and up to this many bytes of them (a bigger chunk gets a page of its own).
PAGE_BYTES = 256 * 1024
_BIG_ENDIAN = sys.byteorder == "big"
assert array("I").itemsize == 4

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    finished_at REAL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_idempotency_key ON runs (task_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (status) WHERE status NOT IN {_FINAL};
CREATE INDEX IF NOT EXISTS runs_by_finished_at ON runs (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS streams (
    sid INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    length INTEGER NOT NULL DEFAULT 0,
    nbytes INTEGER NOT NULL DEFAULT 0,
    ended INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, key)
);
CREATE TABLE IF NOT EXISTS chunk_pages (
    sid INTEGER NOT NULL,
    last INTEGER NOT NULL,
    first INTEGER NOT NULL,
    ends BLOB NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (sid, last)
);
CREATE TABLE IF NOT EXISTS producer_seqs (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    producer TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, key, producer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    idempotency_key TEXT,
    PRIMARY KEY (run_id, key, idx)
);
CREATE TABLE IF NOT EXISTS waitpoints (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    data BLOB NOT NULL,
    expires_at REAL,
    PRIMARY KEY (run_id, key)
);
"""

_UPSERT_RUN = """
INSERT INTO runs (id, task_id, idempotency_key, status, finished_at, data)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id,
    idempotency_key = excluded.idempotency_key, status = excluded.status,
    finished_at = excluded.finished_at, data = excluded.data
"""
_UPSERT_SEQ = """
INSERT INTO producer_seqs (run_id, key, producer, next_seq) VALUES (?, ?, ?, ?)
ON CONFLICT (run_id, key, producer) DO UPDATE SET next_seq = excluded.next_seq
"""
_END_STREAM = """
INSERT INTO streams (run_id, key, ended) VALUES (?, ?, 1)
ON CONFLICT (run_id, key) DO UPDATE SET ended = 1
"""
_DELETE_RUN_DATA = (
    "DELETE FROM chunk_pages WHERE sid IN (SELECT sid FROM streams WHERE run_id = ?)",
    "DELETE FROM streams WHERE run_id = ?",
    "DELETE FROM producer_seqs WHERE run_id = ?",
    "DELETE FROM records WHERE run_id = ?",
    "DELETE FROM waitpoints WHERE run_id = ?",
    "DELETE FROM runs WHERE id = ?",
)


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path?opt=value`` into the file path and its options.

    ``sqlite:///runwire.db`` is relative to the working directory, ``sqlite:////var/x.db``
    is absolute, ``sqlite:///:memory:`` is a private in-memory database.

    Raises:
        ValueError: not a ``sqlite:///`` URL, no path, or an unknown option.
    """
    prefix = "sqlite://"
    if not url.startswith(prefix):
        raise ValueError(f"not a sqlite URL: {url!r}")
    rest, _, query = url[len(prefix):].partition("?")
    if not rest.startswith("/"):
        raise ValueError(f"sqlite URL {url!r} names a host; use sqlite:///relative/path "
                         "or sqlite:////absolute/path")
    path = rest[1:]
    if not path:
        raise ValueError(f"sqlite URL {url!r} has no file path, e.g. sqlite:///runwire.db")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise ValueError(f"unknown sqlite store options {sorted(unknown)} in {url!r}")
    sync = options.get("synchronous", "normal").upper()
    if sync not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be 'normal' or 'full', not {sync.lower()!r}")
    options["synchronous"] = sync
    return path, options


class _Pending:
    """One caller's batch waiting for (or riding in) a group commit."""

    __slots__ = ("batch", "done", "error", "taken")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.taken = False
        self.done = trio.Event()
        self.error: BaseException | None = None


class SqliteStore(Store):
    """The Store in one SQLite file (see the module docstring for how it works).

    Args:
        path: the database file (``":memory:"`` for a private in-memory database).
        synchronous: ``"NORMAL"`` (survives a killed process) or ``"FULL"`` (also survives
            power loss, one fsync per group commit).
    """

    scheme = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._memory = path == ":memory:"
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = self._write_limiter if self._memory else trio.CapacityLimiter(1)
        self._open_lock = trio.Lock()
        self._turn = trio.Lock()  # fair: committers take turns in arrival order
        self._queue: list[_Pending] = []
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """The store for ``sqlite:///path[?synchronous=normal|full]``.

        Raises:
            ValueError: see :func:`parse_sqlite_url`.
        """
        path, options = parse_sqlite_url(url)
        return cls(path, synchronous=options["synchronous"])

    # --- opening and closing (in the worker thread) -----------------------------------------

    async def _ready(self) -> None:
        """Open the connections on first use (in the worker thread).

        Raises:
            trio.ClosedResourceError: the store is closed.
            OSError: the file cannot be opened or is locked by another engine.
        """
        if self._writer is None or self._closed:
            async with self._open_lock:
                if self._closed:
                    raise trio.ClosedResourceError("the SQLite store is closed")
                if self._writer is None:
                    await trio.to_thread.run_sync(self._open, limiter=self._write_limiter)

    def _open(self) -> None:
        if not self._memory:
            self._lock_fd = _lock_file(self.path + ".lock")
        opened: list[sqlite3.Connection] = []
        try:
            opened.append(self._connect())
            _migrate(opened[0])
            if not self._memory:
                opened.append(self._connect())
        except sqlite3.Error as exc:
            for conn in opened:
                conn.close()
            self._unlock()
            raise OSError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        self._writer, self._reader = opened[0], opened[-1]

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        if not self._memory:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA cache_size = -16384")  # 16 MiB
        return conn

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    async def aclose(self) -> None:
        """Refuse new calls, let batches already queued commit, close; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            async with self._open_lock, self._turn:  # after those queued before us (fair)
                for entry in self._queue:  # queued behind us: nobody will write these
                    entry.taken = True
                    entry.error = trio.ClosedResourceError("the SQLite store is closed")
                    entry.done.set()
                self._queue.clear()
                await trio.to_thread.run_sync(self._close_reader, limiter=self._read_limiter)
                await trio.to_thread.run_sync(self._close_writer, limiter=self._write_limiter)
                self._unlock()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not self._writer:
            reader.close()

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # the last connection: SQLite checkpoints and removes the WAL

    # --- writing --------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Write ``batch`` atomically, in the next group commit.

        Raises:
            RuntimeError: a chunk append does not start at the stream's stored length.
            trio.ClosedResourceError: the store is closed.
        """
        await self._ready()
        entry = _Pending(batch)
        self._queue.append(entry)
        try:
            async with self._turn:
                if not entry.taken:
                    await self._write_group()
        except trio.Cancelled:
            if not entry.taken:
                self._queue.remove(entry)
                raise
            with trio.CancelScope(shield=True):
                await entry.done.wait()
            raise
        if entry.error is not None:
            raise entry.error

    async def _write_group(self) -> None:
        group, self._queue = self._queue, []
        for entry in group:
            entry.taken = True
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._write, group, limiter=self._write_limiter)
        except Exception as exc:  # noqa: BLE001 - whatever broke the write, every waiter hears it
            for entry in group:
                entry.error = entry.error or exc
        finally:
            for entry in group:
                entry.done.set()

    def _writing(self) -> sqlite3.Connection:
        if self._writer is None:  # closed between the call and its turn in the thread
            raise trio.ClosedResourceError("the SQLite store is closed")
        return self._writer

    def _write(self, group: list[_Pending]) -> None:
        """One transaction for the whole group; a failing batch is rolled back alone."""
        conn = self._writing()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for entry in group:
                conn.execute("SAVEPOINT batch")
                try:
                    _apply(conn, entry.batch)
                except (sqlite3.Error, RuntimeError) as exc:
                    conn.execute("ROLLBACK TO batch")
                    entry.error = exc
                conn.execute("RELEASE batch")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def delete_finished_before(self, cutoff: float) -> int:
        """Delete runs finished before ``cutoff`` and all their data, a few per transaction."""
        await self._ready()
        total = 0
        while True:  # cancellable between steps; a step in its thread always finishes whole
            removed = await trio.to_thread.run_sync(self._delete_some, cutoff,
                                                    limiter=self._write_limiter)
            total += removed
            if removed < DELETE_STEP:
                return total

    def _delete_some(self, cutoff: float) -> int:
        conn = self._writing()
        with conn:  # BEGIN ... COMMIT, or ROLLBACK on error
            conn.execute("BEGIN IMMEDIATE")
            ids = [(row[0],) for row in conn.execute(
                "SELECT id FROM runs WHERE finished_at < ? LIMIT ?", (cutoff, DELETE_STEP))]
            for statement in _DELETE_RUN_DATA:
                conn.executemany(statement, ids)
        return len(ids)

    # --- reading --------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        await self._ready()
        return await trio.to_thread.run_sync(fn, *args, limiter=self._read_limiter)

    def _reading(self) -> sqlite3.Connection:
        if self._reader is None:  # closed between the call and its turn in the thread
            raise trio.ClosedResourceError("the SQLite store is closed")
        return self._reader

    def _rows(self, sql: str, *params: Any) -> list[Any]:
        return self._reading().execute(sql, params).fetchall()

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = await self._read(self._rows, "SELECT data FROM runs WHERE id = ?", run_id)
        return orjson.loads(rows[0][0]) if rows else None

    async def find_run(self, task_id: str, idempotency_key: str) -> str | None:
        rows = await self._read(
            self._rows, "SELECT id FROM runs WHERE task_id = ? AND idempotency_key = ? "
            "ORDER BY rowid LIMIT 1", task_id, idempotency_key)
        return rows[0][0] if rows else None

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        rows = await self._read(
            self._rows, f"SELECT data FROM runs WHERE status NOT IN {_FINAL} ORDER BY rowid")
        return [orjson.loads(row[0]) for row in rows]

    async def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[bytes]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        return await self._read(self._read_pages, run_id, key, max(start, 0), limit)

    def _read_pages(self, run_id: str, key: str, start: int, limit: int) -> list[bytes]:
        """Chunks from the pages that hold ``start ..``; stops once it has ``limit``."""
        found: list[bytes] = []
        cursor = self._reading().execute(
            "SELECT first, ends, data FROM chunk_pages WHERE sid = (SELECT sid FROM streams "
            "WHERE run_id = ? AND key = ?) AND last >= ? ORDER BY last", (run_id, key, start))
        try:
            for first, ends, data in cursor:
                skip = max(start - first, 0)
                found.extend(_unpack(ends, data, skip, limit - len(found)))
                if len(found) >= limit:
                    break
        finally:
            cursor.close()  # ends the read transaction even when we stop early
        return found

    async def streams(self, run_id: str) -> dict[str, StreamState]:
        rows = await self._read(
            self._rows, "SELECT key, length, nbytes, ended FROM streams WHERE run_id = ? "
            "ORDER BY sid", run_id)
        return {key: StreamState(length, nbytes, bool(ended))
                for key, length, nbytes, ended in rows}

    async def producer_seqs(self, run_id: str) -> dict[tuple[str, str], int]:
        rows = await self._read(
            self._rows, "SELECT key, producer, next_seq FROM producer_seqs WHERE run_id = ?",
            run_id)
        return {(key, producer): seq for key, producer, seq in rows}

    async def records(self, run_id: str) -> dict[str, list[StoredRecord]]:
        rows = await self._read(
            self._rows, "SELECT key, idx, data, idempotency_key FROM records "
            "WHERE run_id = ? ORDER BY key, idx", run_id)
        found: dict[str, list[StoredRecord]] = {}
        for key, index, data, ikey in rows:
            found.setdefault(key, []).append(StoredRecord(index, data, ikey))
        return found

    async def waitpoint(self, run_id: str, key: str, now: float) -> bytes | None:
        rows = await self._read(
            self._rows, "SELECT data FROM waitpoints WHERE run_id = ? AND key = ? "
            "AND (expires_at IS NULL OR expires_at > ?)", run_id, key, now)
        return rows[0][0] if rows else None


# --- helpers that run in the writer thread ------------------------------------------------


def _apply(conn: sqlite3.Connection, batch: Batch) -> None:
    """Write one batch (inside the group's transaction), in the memory store's order."""
    for run in batch.runs:
        conn.execute(_UPSERT_RUN, (run["id"], run["task_id"], run.get("idempotency_key"),
                                   run["status"], run.get("finished_at"), orjson.dumps(run)))
    for app in batch.chunks:
        _append_chunks(conn, app)
    if batch.records:
        conn.executemany("INSERT INTO records (run_id, key, idx, data, idempotency_key) "
                         "VALUES (?, ?, ?, ?, ?)",
                         [(r.run_id, r.key, r.index, r.data, r.idempotency_key)
                          for r in batch.records])
    for wp in batch.waitpoints:
        conn.execute("INSERT OR REPLACE INTO waitpoints (run_id, key, data, expires_at) "
                     "VALUES (?, ?, ?, ?)", (wp.run_id, wp.key, wp.data, wp.expires_at))
    if batch.ended:
        conn.executemany(_END_STREAM, batch.ended)


def _append_chunks(conn: sqlite3.Connection, app: ChunkAppend) -> None:
    row = conn.execute("SELECT sid, length FROM streams WHERE run_id = ? AND key = ?",
                       (app.run_id, app.key)).fetchone()
    if row is None:
        sid = conn.execute("INSERT INTO streams (run_id, key) VALUES (?, ?)",
                           (app.run_id, app.key)).lastrowid
        length = 0
    else:
        sid, length = row
    if app.start != length:
        raise RuntimeError(f"chunk index gap in {app.run_id}/{app.key}: store has {length}, "
                           f"batch starts at {app.start}")
    conn.executemany("INSERT INTO chunk_pages (sid, last, first, ends, data) "
                     "VALUES (?, ?, ?, ?, ?)", _pages(sid, app.start, app.items))
    conn.execute("UPDATE streams SET length = ?, nbytes = nbytes + ? WHERE sid = ?",
                 (app.start + len(app.items), app.nbytes, sid))
    if app.producer is not None and app.next_seq is not None:
        conn.execute(_UPSERT_SEQ, (app.run_id, app.key, app.producer, app.next_seq))


def _pages(sid: int, start: int, items: list[bytes]) -> list[tuple[int, int, int, bytes, bytes]]:
    """Rows of ``chunk_pages`` for chunks ``start ..``: at most ``PAGE_ITEMS`` chunks and
    (unless one chunk alone is bigger) ``PAGE_BYTES`` bytes per page.

    Per-chunk work stays in C (``map``, ``accumulate``, ``bisect``, ``join``): this runs
    once for every chunk the engine stores.
    """
    sizes = list(map(len, items))
    total = list(accumulate(sizes))
    rows = []
    begin = 0
    while begin < len(items):
        base = total[begin - 1] if begin else 0
        end = min(len(items), begin + PAGE_ITEMS)
        if total[end - 1] - base > PAGE_BYTES:
            end = max(begin + 1, bisect_right(total, base + PAGE_BYTES, begin, end))
        offsets = array("I", accumulate(sizes[begin:end]))
        if _BIG_ENDIAN:
            offsets.byteswap()  # stored little-endian, so a file can move between machines
        rows.append((sid, start + end - 1, start + begin, offsets.tobytes(),
                     b"".join(items[begin:end])))
        begin = end
    return rows


def _unpack(ends: bytes, data: bytes, skip: int, limit: int) -> list[bytes]:
    """Chunks ``skip .. skip+limit-1`` of one page."""
    offsets = array("I", ends)
    if _BIG_ENDIAN:
        offsets.byteswap()
    stop = min(len(offsets), skip + limit)
    begin = offsets[skip - 1] if skip else 0
    out: list[bytes] = []
    for i in range(skip, stop):
        end = offsets[i]
        out.append(data[begin:end])
        begin = end
    return out


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, or check that the file's schema is one this code understands."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} was written by a newer "
                                    f"runwire (this one knows {SCHEMA_VERSION})")
    if version < SCHEMA_VERSION:
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = "
                           f"{SCHEMA_VERSION}; COMMIT;")


def _lock_file(path: str) -> int | None:
    """Take an exclusive advisory lock on ``path`` (POSIX); the fd holds it.

    Raises:
        OSError: another process (or another store in this one) holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(errno.EBUSY, f"the SQLite store {path[:-5]!r} is in use by another "
                      f"engine (lock file {path!r})") from None
    return fd
