"""``sqlite:///path``: the durable embedded Store, one SQLite file in WAL mode.

Theory of operation.

* **Threads, and where each write runs.** There are three connections, opened lazily in
  worker threads: the *writer*, the *reader* (with its own ``CapacityLimiter(1)``: reads run
  in a worker thread, and WAL mode lets them see every committed transaction without waiting
  for the writer), and the *checkpointer*.

  With ``synchronous=NORMAL`` (the default) a commit only appends pages to the WAL file,
  which the OS holds in its page cache: no fsync. Such a write of at most ``INLINE_BYTES``
  runs **on the trio thread**, between two checkpoints of the event loop. Handing it to a
  worker thread costs far more under load: the worker must win the GIL back after every
  ``sqlite3_step``, and while the trio thread is busy it often gets it only when the
  switch interval forces a drop (figures: ``docs/performance.md``, "Figures behind the
  code"). What does touch the disk runs in worker threads: a bigger group
  (writing it costs more than the hand-off), every commit under ``synchronous=FULL`` (one
  fsync each), and **WAL checkpoints** (copy the WAL into the database file and fsync it).
  SQLite's automatic checkpoint would run inside a commit, so the writer turns it off and
  the store starts a ``PASSIVE`` checkpoint on the checkpointer connection in a worker
  thread once about ``CHECKPOINT_PAGES`` pages were written since the last one; writers
  never wait for it. A ``:memory:`` database has no disk and one connection, so everything
  on it runs on the trio thread.
* **Group commit.** Every actor commits one :class:`~runwire.engine.store.Batch` per cycle. Callers
  append their batch to a queue and take a fair ``trio.Lock``; whoever holds it writes
  *everything queued so far* as one transaction, so batches that arrive while a transaction
  is in flight ride together in the next one. An actor queues its staging function
  (``commit_staged``), called when the group is taken: what its producers put while it
  waited for the lock is in its batch too. (``commit_no_pause``, a durable stream append's
  commit: a caller that finds nothing queued and the lock free takes it at once, where
  taking a free ``trio.Lock`` yields once, and writes inline; nobody else can join a group
  then.) A caller returns only once its own batch is committed (or raises that batch's
  error). When several batches ride together each gets a
  SAVEPOINT, so a bad batch (an index gap, a bug) is rolled back alone and the rest of the
  group still commits.
* **Cancellation.** A caller cancelled before its batch was taken removes it: nothing is
  written. Once taken, the write finishes (inline it cannot be interrupted; in a thread it
  is shielded, one transaction is short) and the caller then sees the cancellation.
* **Faults.** The writer's busy timeout is 0: SQLite never waits on the trio thread. A
  write that meets a transient fault (``SQLITE_BUSY``/``LOCKED``: another process holds the
  write lock; ``FULL``; ``READONLY``; ``IOERR``; ``CANTOPEN``) is rolled back and tried
  again in a worker thread after a trio sleep (20 ms doubling to 1 s), for up to
  ``retry_seconds``; then every caller of the group gets :class:`StoreUnavailableError`.
  Such a fault is the store's, not a batch's: it never counts as one batch's refusal. The
  retention sweep and the direct writes (waitpoint tokens) are retried the same way.
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
  ``PAGE_ITEMS`` consecutive chunks / ``PAGE_BYTES`` bytes, keyed by ``(sid, last index)``.
  A row costs SQLite the same work whether it holds one chunk or a thousand.
  A page holds its chunks joined by ``b"\n"``: a chunk is compact JSON (what orjson
  writes), in which a raw newline never occurs, so ``split`` gives the chunks back (the
  store refuses a chunk that holds one). Joining and splitting run in C; schema 1 kept an
  array of end offsets beside the bytes, built and unpacked in Python per chunk (opening a
  schema 1 file converts it).
  ``read_chunks(start, n)`` seeks to the first page with ``last >= start`` and reads pages in
  order until it has ``n`` chunks.
* **Where streams end.** An append must know its stream's ``sid``, length and size; the
  writer remembers them for the last ``END_CACHE_STREAMS`` streams it wrote, as of the last
  commit, so a busy stream's append skips the lookup (a join on its last page, a fifth of a
  commit under load). A transaction's changes are kept apart until it commits (a
  savepoint's until it is released), so a rollback leaves nothing stale behind; deleting
  runs forgets everything.

Schema: ``runs`` (JSON blob plus indexed task/idempotency key/status/finished_at),
``streams`` (one row per output stream: integer ``sid``, run, key, ended), ``chunk_pages``
(``WITHOUT ROWID``, keyed by ``(sid, last)``; each row also holds the stream's size in bytes
through it, so a stream's length and size are read off its last page and an append writes
one row, one database page when it is small), ``producer_seqs``, ``records`` and
``waitpoints``; ``ds_streams``, ``ds_items`` and ``ds_producers`` (schema 3: the
free-standing durable streams of the HTTP door); ``wait_tokens`` (schema 4: waitpoint
tokens, written directly, not in batches: a completion can come from anywhere, and the first
one wins in one ``UPDATE ... WHERE status = 'WAITING'``). ``runs.created_at`` (schema 4)
orders ``list_runs``: keyset pages on ``(created_at, id)``, newest first, so a page never
shifts when newer runs arrive. Older files are upgraded step by step when opened (1 -> 2
converts the chunk pages, 2 -> 3 adds the durable-stream tables, 3 -> 4 adds the column,
filled from each run's JSON, its indexes and the token table).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import math
import os
import sqlite3
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, MutableMapping
from itertools import accumulate
from typing import Any, TypeVar
from urllib.parse import parse_qs

import attrs
import orjson
import trio

from ._base import (
    Batch, ChunkAppend, DurableStream, RunFilter, Store, StoredRecord, StoredToken,
    StreamState, decode_cursor, encode_cursor,
)
from ._errors import (
    IndexGapError, NotCompactError, StoreClosedError, StoreConfigError, StoreError,
    StoreUnavailableError,
)

T = TypeVar("T")
log = logging.getLogger("runwire.engine")

SCHEMA_VERSION = 4
_FINAL = "('COMPLETED', 'FAILED', 'CANCELED', 'CRASHED', 'TIMED_OUT')"
#: Runs deleted per retention transaction, so a big sweep never stalls commits for long.
DELETE_STEP = 200
#: Chunks are stored in pages: one row holds up to this many consecutive chunks ...
PAGE_ITEMS = 1024
#: ... and up to this many bytes of them (a bigger chunk gets a page of its own).
PAGE_BYTES = 256 * 1024
#: With ``synchronous=NORMAL``, a group of batches holding at most this many bytes is
#: written on the trio thread (see "Threads" above); a bigger one in a worker thread.
INLINE_BYTES = 256 * 1024
#: Start a background WAL checkpoint once about this many pages were written since the
#: last one (SQLite's own automatic checkpoint uses the same figure).
CHECKPOINT_PAGES = 1000
#: The WAL's bound. A ``PASSIVE`` checkpoint never waits, so under a continuous writer it
#: never catches up with the WAL's end and SQLite never starts the WAL over: it grew to
#: 900 MB in 4 minutes. Once a checkpoint finds the WAL bigger than this, the next group
#: commit is followed by a ``TRUNCATE`` checkpoint on the writer, in a worker thread,
#: while the store's write turn is held (no write of ours contends; readers' transactions
#: are short). ``journal_size_limit`` trims what a restarted WAL leaves behind.
WAL_LIMIT_BYTES = 16 * 1024 * 1024
#: How long a write that meets a transient fault (the write lock held by another process,
#: a full disk, a file made read-only, an I/O error) is retried before its callers get
#: :class:`StoreUnavailableError` (``?retry=SECONDS`` in the URL); see "Faults".
RETRY_SECONDS = 30.0
#: The first pause between two tries of a failed write; it doubles up to ``RETRY_MAX_PAUSE``.
RETRY_FIRST_PAUSE = 0.02
RETRY_MAX_PAUSE = 1.0
#: SQLite's primary result codes of faults that may go away: BUSY, LOCKED, READONLY, IOERR,
#: FULL, CANTOPEN.
_TRANSIENT_CODES = frozenset({5, 6, 8, 10, 13, 14})
#: Streams whose end (sid, length, size) the writer remembers (see "Where streams end").
END_CACHE_STREAMS = 1024
_PAGE_SIZE = 4096
_SEP = b"\n"  # between the chunks of a page; never inside compact JSON
#: What rolls back one batch and fails its caller (a gap, a bad chunk, a constraint);
#: anything else fails the whole group.
_REFUSED = (sqlite3.Error, StoreError, RuntimeError, ValueError)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    finished_at REAL,
    data BLOB NOT NULL,
    created_at REAL
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
    ended INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, key)
);
CREATE TABLE IF NOT EXISTS chunk_pages (
    sid INTEGER NOT NULL,
    last INTEGER NOT NULL,
    first INTEGER NOT NULL,
    total INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (sid, last)
) WITHOUT ROWID;
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

#: What schema 3 added: the free-standing durable streams (``/v1/stream/...``).
_SCHEMA_3 = """
CREATE TABLE IF NOT EXISTS ds_streams (
    path TEXT PRIMARY KEY,
    meta BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ds_items (
    path TEXT NOT NULL,
    start INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (path, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ds_producers (
    path TEXT NOT NULL,
    producer TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (path, producer)
) WITHOUT ROWID;
"""

#: What schema 4 added (run after ``_SCHEMA_3`` on a new file, after the column on an old
#: one): the indexes ``list_runs`` pages on, and waitpoint tokens.
_SCHEMA_4 = """
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at, id);
CREATE INDEX IF NOT EXISTS runs_by_task_created ON runs (task_id, created_at, id);
CREATE TABLE IF NOT EXISTS wait_tokens (
    id TEXT PRIMARY KEY,
    run_id TEXT,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    completed_at REAL,
    tags BLOB NOT NULL,
    data BLOB
);
CREATE INDEX IF NOT EXISTS wait_tokens_by_run ON wait_tokens (run_id) WHERE run_id IS NOT NULL;
"""
_TOKEN_COLUMNS = "id, run_id, idempotency_key, status, created_at, expires_at, completed_at, " \
                 "tags, data"

_UPSERT_RUN = """
INSERT INTO runs (id, task_id, idempotency_key, status, finished_at, data, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id,
    idempotency_key = excluded.idempotency_key, status = excluded.status,
    finished_at = excluded.finished_at, data = excluded.data, created_at = excluded.created_at
"""
_UPSERT_SEQ = """
INSERT INTO producer_seqs (run_id, key, producer, next_seq) VALUES (?, ?, ?, ?)
ON CONFLICT (run_id, key, producer) DO UPDATE SET next_seq = excluded.next_seq
"""
_END_STREAM = """
INSERT INTO streams (run_id, key, ended) VALUES (?, ?, 1)
ON CONFLICT (run_id, key) DO UPDATE SET ended = 1
"""
#: Streams with their length and size in bytes, read off each one's last page.
_WITH_LAST_PAGE = """
coalesce(p.last + 1, 0), coalesce(p.total, 0) FROM streams s LEFT JOIN chunk_pages p
ON p.sid = s.sid AND p.last = (SELECT max(last) FROM chunk_pages WHERE sid = s.sid)
"""
_STREAM_END = f"SELECT s.sid, {_WITH_LAST_PAGE} WHERE s.run_id = ? AND s.key = ?"
_STREAMS_OF_RUN = (f"SELECT s.key, s.ended, {_WITH_LAST_PAGE} WHERE s.run_id = ? "
                   "ORDER BY s.sid")
_DELETE_RUN_DATA = (
    "DELETE FROM chunk_pages WHERE sid IN (SELECT sid FROM streams WHERE run_id = ?)",
    "DELETE FROM streams WHERE run_id = ?",
    "DELETE FROM producer_seqs WHERE run_id = ?",
    "DELETE FROM records WHERE run_id = ?",
    "DELETE FROM waitpoints WHERE run_id = ?",
    "DELETE FROM wait_tokens WHERE run_id = ?",
    "DELETE FROM runs WHERE id = ?",
)


def backup_database(url: str, dest: str) -> int:
    """Copy the SQLite store at ``url`` (``sqlite:///path``) to the new file ``dest``,
    consistently, while an engine keeps writing to it (``VACUUM INTO``: one read
    transaction, compacted; ``runwire backup``).

    Returns the copy's size in bytes. The copy is checked with ``PRAGMA quick_check``.

    Raises:
        StoreConfigError: ``source`` does not exist or is not a runwire database, or
            ``dest`` exists already.
        StoreUnavailableError: SQLite failed (disk full, permissions, ...).
    """
    source, _ = parse_sqlite_url(url)
    if source == ":memory:" or not os.path.isfile(source):
        raise StoreConfigError(f"no SQLite database at {source!r}")
    if os.path.exists(dest):
        raise StoreConfigError(f"{dest!r} exists; a backup is written to a new file")
    conn = sqlite3.connect(source, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "runs" not in tables:
            raise StoreConfigError(f"{source!r} is not a runwire database")
        conn.execute("VACUUM INTO ?", (dest,))
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"backup of {source!r} failed: {exc}") from exc
    finally:
        conn.close()
    copy = sqlite3.connect(dest)
    try:
        verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        copy.close()
    if verdict != "ok":
        raise StoreUnavailableError(f"the backup {dest!r} failed its check: {verdict}")
    return os.path.getsize(dest)


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path?opt=value`` into the file path and its options.

    ``sqlite:///runwire.db`` is relative to the working directory, ``sqlite:////var/x.db``
    is absolute, ``sqlite:///:memory:`` is a private in-memory database.

    Raises:
        ValueError: not a ``sqlite:///`` URL, no path, or an unknown option.
    """
    prefix = "sqlite://"
    if not url.startswith(prefix):
        raise StoreConfigError(f"not a sqlite URL: {url!r}")
    rest, _, query = url[len(prefix):].partition("?")
    if not rest.startswith("/"):
        raise StoreConfigError(f"sqlite URL {url!r} names a host; use sqlite:///relative/path "
                         "or sqlite:////absolute/path")
    path = rest[1:]
    if not path:
        raise StoreConfigError(f"sqlite URL {url!r} has no file path, e.g. sqlite:///runwire.db")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - {"synchronous", "retry"}
    if unknown:
        raise StoreConfigError(f"unknown sqlite store options {sorted(unknown)} in {url!r}")
    sync = options.get("synchronous", "normal").upper()
    if sync not in ("NORMAL", "FULL"):
        raise StoreConfigError(f"synchronous must be 'normal' or 'full', not {sync.lower()!r}")
    options["synchronous"] = sync
    if "retry" in options:
        try:
            retry = float(options["retry"])
        except ValueError:
            retry = math.nan
        if not 0 <= retry <= 86400:
            raise StoreConfigError(f"retry must be a number of seconds in [0, 86400], not "
                                   f"{options['retry']!r}")
    return path, options


class _Pending:
    """One caller's batch waiting for (or riding in) a group commit.

    The batch is staged (built by the caller's ``stage``) when the group is taken, and the
    runs' rows are built (their JSON encoded) then too, on the trio thread, so the size of
    the group is known before choosing where to write it.
    """

    __slots__ = ("batch", "done", "error", "nbytes", "run_rows", "stage", "taken")

    def __init__(self, stage: Callable[[], Batch]) -> None:
        self.stage = stage
        self.batch = Batch()
        self.run_rows: list[tuple[Any, ...]] = []
        self.nbytes = 0
        self.taken = False
        self.done = trio.Event()
        self.error: BaseException | None = None

    def build(self) -> bool:
        """Stage the batch; ``False`` if there is nothing to write (or staging failed)."""
        try:
            batch = self.batch = self.stage()
        except Exception as exc:  # noqa: BLE001 - the caller's own error, raised to it alone
            self.error = exc
            return False
        self.run_rows = [(run["id"], run["task_id"], run.get("idempotency_key"), run["status"],
                          run.get("finished_at"), orjson.dumps(run), run.get("created_at"))
                         for run in batch.runs]
        self.nbytes = (sum(len(row[5]) for row in self.run_rows)
                       + sum(app.nbytes for app in batch.chunks)
                       + sum(len(r.data) for r in batch.records)
                       + sum(len(w.data) for w in batch.waitpoints)
                       + sum(len(data) for w in batch.streams for _, data in w.items))
        return bool(batch)

    def pages(self) -> int:
        """About how many database pages writing this batch dirties."""
        batch = self.batch
        rows = (len(self.run_rows) + len(batch.chunks) + len(batch.records)
                + len(batch.waitpoints) + len(batch.ended))
        return 1 + rows + self.nbytes // _PAGE_SIZE


class SqliteStore(Store):
    """The Store in one SQLite file (see the module docstring for how it works).

    Args:
        path: the database file (``":memory:"`` for a private in-memory database).
        synchronous: ``"NORMAL"`` (survives a killed process) or ``"FULL"`` (also survives
            power loss, one fsync per group commit).
    """

    scheme = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "NORMAL",
                 wal_limit_bytes: int = WAL_LIMIT_BYTES,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.path = path
        #: how long a write is retried through transient faults (see "Faults")
        self.retry_seconds = retry_seconds
        #: transient faults met by writes, and writes that failed after retrying (counters)
        self.write_faults = 0
        self.failed_writes = 0
        #: the WAL is truncated once a checkpoint finds it bigger (see ``WAL_LIMIT_BYTES``)
        self.wal_limit_bytes = wal_limit_bytes
        self._truncate_due = False
        #: TRUNCATE checkpoints done, and the biggest WAL a checkpoint found (bytes)
        self.wal_truncations = 0
        self.wal_peak_bytes = 0
        self.synchronous = synchronous.upper()
        self._memory = path == ":memory:"
        #: a file under synchronous=NORMAL: small groups are written on the trio thread and
        #: WAL checkpoints run in the background (see "Threads" in the module docstring)
        self._background_checkpoints = not self._memory and self.synchronous == "NORMAL"
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpointing: trio.Event | None = None  # set when the checkpoint in flight ends
        self._unchecked_pages = 0  # written since the last checkpoint started (an estimate)
        self._lock_fd: int | None = None
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = self._write_limiter if self._memory else trio.CapacityLimiter(1)
        self._open_lock = trio.Lock()
        self._turn = trio.Lock()  # fair: committers take turns in arrival order
        self._queue: list[_Pending] = []
        self._closed = False
        #: (run id, key) -> (sid, length, bytes) as of the last commit; see "Where streams end"
        self._ends: dict[tuple[str, str], tuple[int, int, int]] = {}

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """The store for ``sqlite:///path[?synchronous=normal|full]``.

        Raises:
            ValueError: see :func:`parse_sqlite_url`.
        """
        path, options = parse_sqlite_url(url)
        return cls(path, synchronous=options["synchronous"],
                   retry_seconds=float(options.get("retry", RETRY_SECONDS)))

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
                    raise StoreClosedError("the SQLite store is closed")
                if self._writer is None:
                    await trio.to_thread.run_sync(self._open, limiter=self._write_limiter)

    def _open(self) -> None:
        if not self._memory:
            self._lock_fd = _lock_file(self.path + ".lock")
        opened: list[sqlite3.Connection] = []
        try:
            # the writer touches the pages it appends and the b-trees' rightmost paths: a
            # small cache does (a 16 MiB one filled up with pages nobody reads again)
            opened.append(self._connect(cache_kib=16384 if self._memory else 2048))
            _migrate(opened[0])
            # the writer never waits inside SQLite: a held lock fails at once, and the
            # write is retried with pauses off the trio thread (see "Faults")
            opened[0].execute("PRAGMA busy_timeout = 0")
            if not self._memory:
                if self._background_checkpoints:  # instead of SQLite's in-commit ones
                    opened[0].execute("PRAGMA wal_autocheckpoint = 0")
                opened[0].execute(f"PRAGMA journal_size_limit = {int(self.wal_limit_bytes)}")
                # the reader: catch-up reads scan pages in order and rarely come back, and
                # the OS page cache holds the file anyway; a bigger cache only filled up
                # when a reader fell behind (docs/performance.md, "Figures behind the code")
                opened.append(self._connect(cache_kib=2048))
        except sqlite3.Error as exc:
            for conn in opened:
                conn.close()
            self._unlock()
            raise StoreUnavailableError(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        self._writer, self._reader = opened[0], opened[-1]

    def _connect(self, cache_kib: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        if not self._memory:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute(f"PRAGMA cache_size = -{cache_kib}")
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
                if self._checkpointing is not None:
                    await self._checkpointing.wait()
                await trio.to_thread.run_sync(self._close_reader, limiter=self._read_limiter)
                await trio.to_thread.run_sync(self._close_writer, limiter=self._write_limiter)
                self._unlock()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not self._writer:
            reader.close()
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.close()

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # the last connection: SQLite checkpoints and removes the WAL

    # --- writing --------------------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Write ``batch`` atomically, in the next group commit.

        Raises:
            RuntimeError: a chunk append does not start at the stream's stored length.
            ValueError: a chunk is not compact JSON (it holds a raw newline).
            trio.ClosedResourceError: the store is closed.
        """
        await self.commit_staged(lambda: batch)

    async def commit_staged(self, stage: Callable[[], Batch]) -> None:
        """Stage the batch when its group is taken, then write it like :meth:`commit`."""
        await self._ready()
        entry = _Pending(stage)
        self._queue.append(entry)
        try:
            async with self._turn:  # taking it yields once: callers of the same pass join
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

    async def commit_no_pause(self, batch: Batch) -> None:
        """See :meth:`Store.commit_no_pause`. When nobody else is committing, the caller
        takes the write turn at once, without the scheduling pass that taking it otherwise
        costs (that pass lets the callers of the same pass join one group; a lone caller
        has nobody to wait for), and a small batch is written on the trio thread without
        yielding (see "Threads"); a bigger one, or a retried one, in a worker thread."""
        await self._ready()
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: nothing is written
        if not self._queue:  # (a group forming: join it, below)
            try:
                self._turn.acquire_nowait()
            except trio.WouldBlock:  # a group commit is under way: join the next one
                pass
            else:
                entry = _Pending(lambda: batch)
                self._queue.append(entry)
                try:
                    await self._write_group()  # every await in it is shielded
                finally:
                    self._turn.release()
                if entry.error is not None:
                    raise entry.error
                return
        with trio.CancelScope(shield=True):  # taken: written whole, and no Cancelled after
            await self.commit(batch)

    async def _write_group(self) -> None:
        taken = group = self._queue
        self._queue = []
        for entry in group:
            entry.taken = True
        try:
            group = [entry for entry in group if entry.build()]  # staged now: see commit_staged
            if group and (self._memory or (self._background_checkpoints and sum(
                    entry.nbytes for entry in group) <= INLINE_BYTES)):
                try:  # on the trio thread: see "Threads" in the module docstring
                    self._write(group)
                except sqlite3.Error as exc:
                    if self._memory or not _transient(exc):
                        raise
                    with trio.CancelScope(shield=True):  # taken: the group is written whole
                        await self._retrying(self._write, group, inline=False, failed=exc)
            elif group:
                with trio.CancelScope(shield=True):
                    await self._retrying(self._write, group, inline=False)
        except Exception as exc:  # noqa: BLE001 - whatever broke the write, every waiter hears it
            for entry in group:
                entry.error = entry.error or exc
        finally:
            for entry in taken:
                entry.done.set()
        self._written(group)
        if self._truncate_due:  # still holding the write turn: see WAL_LIMIT_BYTES
            self._truncate_due = False
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._truncate_wal, limiter=self._write_limiter)

    async def _retrying(self, fn: Callable[..., T], *args: Any, inline: bool,
                        failed: sqlite3.Error | None = None) -> T:
        """``fn(*args)`` on the writer connection, tried again through transient faults.

        The first try runs on the trio thread if ``inline`` (see "Threads"); SQLite never
        waits there (the writer's busy timeout is 0), so a lock held by another process
        costs the trio thread one failed ``BEGIN``. Later tries run in a worker thread, with
        pauses that double from ``RETRY_FIRST_PAUSE`` to ``RETRY_MAX_PAUSE`` (trio sleeps:
        the engine serves reads and other work meanwhile), for ``retry_seconds`` in all.

        ``failed``: the fault a first try (made by the caller) met.

        Raises:
            StoreUnavailableError: the fault outlasted ``retry_seconds``.
        """
        pause = RETRY_FIRST_PAUSE
        deadline: float | None = None
        while True:
            try:
                if failed is not None:
                    exc, failed = failed, None
                    raise exc
                if inline or self._memory:
                    return fn(*args)
                return await trio.to_thread.run_sync(fn, *args, limiter=self._write_limiter)
            except sqlite3.Error as exc:
                if self._memory or not _transient(exc) or self._writer is None:
                    raise
                self.write_faults += 1
                now = trio.current_time()
                if deadline is None:
                    deadline = now + self.retry_seconds
                    log.warning("SQLite write to %r failed (%s); retrying for up to %gs",
                                self.path, exc, self.retry_seconds)
                if now >= deadline:
                    self.failed_writes += 1
                    log.error("SQLite write to %r failed for %gs: %s", self.path,
                              self.retry_seconds, exc)
                    raise StoreUnavailableError(
                        f"the SQLite store {self.path!r} could not write for "
                        f"{self.retry_seconds:g}s ({exc}); nothing of this request was "
                        "stored").refused_whole() from exc
            inline = False
            await trio.sleep(min(pause, max(0.0, deadline - trio.current_time())))
            pause = min(pause * 2, RETRY_MAX_PAUSE)

    def _truncate_wal(self) -> None:
        """Checkpoint the whole WAL and truncate it (writer connection, worker thread)."""
        try:
            conn = self._writing()
            conn.execute("PRAGMA busy_timeout = 5000")  # waits for readers, in its thread
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute("PRAGMA busy_timeout = 0")
        except (sqlite3.Error, StoreError) as exc:
            log.warning("SQLite WAL truncation of %r failed: %r", self.path, exc)
            return
        if busy:  # a reader held an old snapshot past the busy timeout: the next one tries
            log.warning("SQLite WAL of %r not truncated: a reader held it", self.path)
        else:
            self.wal_truncations += 1

    def _written(self, group: list[_Pending]) -> None:
        """Count the pages written; start a background checkpoint once there are enough."""
        if self._background_checkpoints:
            self._unchecked_pages += sum(entry.pages() for entry in group)
            if self._unchecked_pages >= CHECKPOINT_PAGES and self._checkpointing is None:
                self._start_checkpoint()

    # --- checkpoints (synchronous=NORMAL): in a worker thread, nobody waits for them -------

    def _start_checkpoint(self) -> None:
        self._unchecked_pages = 0
        done = self._checkpointing = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def finished(result: Any) -> None:  # an outcome.Outcome, in the worker thread
            with contextlib.suppress(trio.RunFinishedError):  # trio is gone: nobody waits
                token.run_sync_soon(self._checkpoint_done, result, done)

        trio.lowlevel.start_thread_soon(self._checkpoint, finished)

    def _checkpoint_done(self, result: Any, done: trio.Event) -> None:
        try:
            result.unwrap()
        except Exception as exc:  # noqa: BLE001 - the next checkpoint tries again
            log.warning("SQLite WAL checkpoint of %r failed: %r", self.path, exc)
        finally:
            self._checkpointing = None
            done.set()

    def _checkpoint(self) -> None:
        """Copy what the WAL holds into the database file (``PASSIVE``: never blocks a
        writer or a reader; what is written meanwhile waits for the next checkpoint)."""
        if self._checkpointer is None:
            self._checkpointer = self._connect(cache_kib=256)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        self.wal_peak_bytes = max(self.wal_peak_bytes, size)
        if size > self.wal_limit_bytes:
            self._truncate_due = True  # (a plain flag: read on the trio thread later)

    def _writing(self) -> sqlite3.Connection:
        if self._writer is None:  # closed between the call and its turn in the thread
            raise StoreClosedError("the SQLite store is closed")
        return self._writer

    def _write(self, group: list[_Pending]) -> None:
        """One transaction for the whole group; a failing batch is rolled back alone."""
        conn = self._writing()
        written: dict[tuple[str, str], tuple[int, int, int]] = {}  # this transaction's ends
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(group) == 1:  # the usual case: no savepoint needed to roll back alone
                try:
                    _apply(conn, group[0].batch, group[0].run_rows,
                           collections.ChainMap(written, self._ends))
                except _REFUSED as exc:
                    if _transient(exc):  # the store's fault, not the batch's: try again
                        raise
                    conn.execute("ROLLBACK")
                    group[0].error = exc
                    return
            else:
                for entry in group:
                    entry.error = None  # (from an earlier try of this group)
                    conn.execute("SAVEPOINT batch")
                    ends = collections.ChainMap({}, written, self._ends)
                    try:
                        _apply(conn, entry.batch, entry.run_rows, ends)
                    except _REFUSED as exc:
                        if _transient(exc):
                            raise
                        conn.execute("ROLLBACK TO batch")
                        entry.error = exc
                    else:
                        written.update(ends.maps[0])
                    conn.execute("RELEASE batch")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # a failed disk may refuse it too
                    conn.execute("ROLLBACK")
            raise
        self._remember(written)

    def _remember(self, written: dict[tuple[str, str], tuple[int, int, int]]) -> None:
        """Committed: keep the streams' new ends, most recently written last."""
        ends = self._ends
        for key, end in written.items():
            ends.pop(key, None)
            ends[key] = end
        while len(ends) > END_CACHE_STREAMS:
            del ends[next(iter(ends))]

    async def delete_finished_before(self, cutoff: float) -> int:
        """Delete runs finished before ``cutoff`` and all their data, a few per transaction."""
        await self._ready()
        total = 0
        while True:  # cancellable between steps; a step in its thread always finishes whole
            async with self._turn:  # no commit may write on the writer connection meanwhile
                # (in a worker thread; on the trio thread for :memory:, its one connection)
                with trio.CancelScope(shield=True):
                    removed = await self._retrying(self._delete_some, cutoff, inline=False)
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
            conn.execute("DELETE FROM wait_tokens WHERE run_id IS NULL AND coalesce("
                         "completed_at, expires_at) < ?", (cutoff,))
        if ids:
            self._ends.clear()  # a deleted stream's sid may be given to a new one
        return len(ids)

    # --- reading --------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        await self._ready()
        if self._memory:  # one connection, which the trio thread also writes on; no disk
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._read_limiter)

    def _reading(self) -> sqlite3.Connection:
        if self._reader is None:  # closed between the call and its turn in the thread
            raise StoreClosedError("the SQLite store is closed")
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
            "SELECT first, data FROM chunk_pages WHERE sid = (SELECT sid FROM streams "
            "WHERE run_id = ? AND key = ?) AND last >= ? ORDER BY last", (run_id, key, start))
        try:
            for first, data in cursor:
                skip = max(start - first, 0)
                found.extend(data.split(_SEP)[skip:skip + limit - len(found)])
                if len(found) >= limit:
                    break
        finally:
            cursor.close()  # ends the read transaction even when we stop early
        return found

    async def streams(self, run_id: str) -> dict[str, StreamState]:
        rows = await self._read(self._rows, _STREAMS_OF_RUN, run_id)
        return {key: StreamState(length, nbytes, bool(ended))
                for key, ended, length, nbytes in rows}

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


    async def list_runs(self, *, task: str | None, status: list[str] | None,
                        tags: list[str] | None, created_after: float | None,
                        created_before: float | None, limit: int,
                        cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        after = decode_cursor(cursor) if cursor is not None else None
        where = RunFilter.of(task=task, status=status, tags=tags,
                             created_after=created_after, created_before=created_before)
        return await self._read(self._list_runs, where, limit, after)

    def _list_runs(self, where: RunFilter, limit: int,
                   after: tuple[float, str] | None) -> tuple[list[dict[str, Any]], str | None]:
        """Keyset pages on ``(created_at, id)``; SQL filters what it indexes, tags are
        checked here (reading on until the page is full)."""
        sql = ["SELECT data, coalesce(created_at, 0), id FROM runs WHERE 1"]
        params: list[Any] = []
        if where.task_id is not None:
            sql.append("AND task_id = ?")
            params.append(where.task_id)
        if where.statuses:
            sql.append(f"AND status IN ({', '.join('?' * len(where.statuses))})")
            params.extend(where.statuses)
        if where.created_after is not None:
            sql.append("AND coalesce(created_at, 0) > ?")
            params.append(where.created_after)
        if where.created_before is not None:
            sql.append("AND coalesce(created_at, 0) < ?")
            params.append(where.created_before)
        base = " ".join(sql)
        page: list[dict[str, Any]] = []
        step = max(limit, 64)
        while True:
            keyset = "" if after is None else \
                " AND (coalesce(created_at, 0), id) < (?, ?)"
            rows = self._rows(f"{base}{keyset} ORDER BY coalesce(created_at, 0) DESC, id DESC "
                              f"LIMIT ?", *params, *(after or ()), step)
            for data, created, run_id in rows:
                after = (created, run_id)
                run = orjson.loads(data)
                if where.matches(run):
                    page.append(run)
                    if len(page) == limit:
                        return page, encode_cursor(created, run_id)
            if len(rows) < step:
                break
        return page, None

    async def create_token(self, token: StoredToken) -> StoredToken:
        return await self._write_direct(self._create_token, token)

    def _create_token(self, token: StoredToken) -> StoredToken:
        conn = self._writing()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if token.idempotency_key is not None:
                found = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM wait_tokens WHERE "
                                     "idempotency_key = ?", (token.idempotency_key,)).fetchone()
                if found is not None:
                    return _token(found)
            conn.execute(f"INSERT INTO wait_tokens ({_TOKEN_COLUMNS}) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (token.id, token.run_id, token.idempotency_key, token.status,
                          token.created_at, token.expires_at, token.completed_at,
                          orjson.dumps(list(token.tags)), token.data))
        return token

    async def get_token(self, token_id: str) -> StoredToken | None:
        rows = await self._read(self._rows, f"SELECT {_TOKEN_COLUMNS} FROM wait_tokens "
                                "WHERE id = ?", token_id)
        return _token(rows[0]) if rows else None

    async def complete_token(self, token_id: str, data: bytes,
                             now: float) -> tuple[StoredToken | None, bool]:
        return await self._write_direct(self._complete_token, token_id, data, now)

    def _complete_token(self, token_id: str, data: bytes,
                        now: float) -> tuple[StoredToken | None, bool]:
        conn = self._writing()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            changed = conn.execute(
                "UPDATE wait_tokens SET status = 'COMPLETED', data = ?, completed_at = ? "
                "WHERE id = ? AND status = 'WAITING' AND (expires_at IS NULL OR expires_at > ?)",
                (data, now, token_id, now)).rowcount
            row = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM wait_tokens WHERE id = ?",
                               (token_id,)).fetchone()
        return (_token(row) if row else None), changed == 1

    async def durable_streams(self) -> list[DurableStream]:
        rows = await self._read(self._rows, "SELECT meta FROM ds_streams")
        found = []
        for (meta,) in rows:
            fields = orjson.loads(meta)
            if fields.get("closed_by") is not None:
                fields["closed_by"] = tuple(fields["closed_by"])
            found.append(DurableStream(**fields))
        return found

    async def stream_items(self, path: str, start: int, end: int,
                           max_bytes: int) -> list[tuple[int, bytes]]:
        return await self._read(self._stream_items, path, start, end, max_bytes)

    def _stream_items(self, path: str, start: int, end: int,
                      max_bytes: int) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        size = 0
        cursor = self._reading().execute(
            "SELECT start, data FROM ds_items WHERE path = ? AND start >= coalesce((SELECT "
            "max(start) FROM ds_items WHERE path = ? AND start <= ?), 0) AND start < ? "
            "ORDER BY start", (path, path, start, end))
        try:
            for item_start, data in cursor:
                found.append((item_start, data))
                size += len(data)
                if size >= max_bytes:
                    break
        finally:
            cursor.close()
        return found

    async def stream_producer(self, path: str, producer: str) -> tuple[int, int] | None:
        rows = await self._read(self._rows, "SELECT epoch, seq FROM ds_producers WHERE "
                                "path = ? AND producer = ?", path, producer)
        return (rows[0][0], rows[0][1]) if rows else None

    async def _write_direct(self, fn: Callable[..., T], *args: Any) -> T:
        """One small transaction of its own on the writer connection, between group
        commits (like the retention sweep)."""
        await self._ready()
        async with self._turn:
            with trio.CancelScope(shield=True):  # a transaction in its thread finishes whole
                result = await self._retrying(fn, *args, inline=False)
            return result


def _transient(exc: BaseException) -> bool:
    """A fault that may go away (see ``_TRANSIENT_CODES``), not a refusal of the batch."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and \
        (code & 0xFF) in _TRANSIENT_CODES


def _token(row: tuple[Any, ...]) -> StoredToken:
    token_id, run_id, ikey, status, created, expires, completed, tags, data = row
    return StoredToken(id=token_id, run_id=run_id, idempotency_key=ikey, status=status,
                       created_at=created, expires_at=expires, completed_at=completed,
                       tags=tuple(orjson.loads(tags)), data=data)


# --- writing on the writer connection (trio thread or worker thread: see "Threads") -----


def _apply(conn: sqlite3.Connection, batch: Batch, run_rows: list[tuple[Any, ...]],
           ends: MutableMapping[tuple[str, str], tuple[int, int, int]]) -> None:
    """Write one batch (inside the group's transaction), in the memory store's order.

    ``ends`` holds known stream ends and takes the new ones (see "Where streams end").
    """
    if run_rows:
        conn.executemany(_UPSERT_RUN, run_rows)
    for app in batch.chunks:
        _append_chunks(conn, app, ends)
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
    for path in batch.dropped_streams:
        for table in ("ds_streams", "ds_items", "ds_producers"):
            conn.execute(f"DELETE FROM {table} WHERE path = ?", (path,))
    for write in batch.streams:
        path = write.stream.path
        conn.execute(_UPSERT_DS, (path, orjson.dumps(_ds_fields(write.stream))))
        if len(write.items) == 1:  # one append of one item: the usual case
            conn.execute(_INSERT_DS_ITEM, (path, *write.items[0]))
        elif write.items:
            conn.executemany(_INSERT_DS_ITEM,
                             [(path, start, data) for start, data in write.items])
        if write.producer is not None:
            conn.execute("INSERT OR REPLACE INTO ds_producers (path, producer, epoch, seq) "
                         "VALUES (?, ?, ?, ?)", (path, *write.producer))


_UPSERT_DS = ("INSERT INTO ds_streams (path, meta) VALUES (?, ?) "
              "ON CONFLICT (path) DO UPDATE SET meta = excluded.meta")
_INSERT_DS_ITEM = "INSERT INTO ds_items (path, start, data) VALUES (?, ?, ?)"
_DS_FIELDS = tuple(field.name for field in attrs.fields(DurableStream))


def _ds_fields(stream: DurableStream) -> dict[str, Any]:
    """``attrs.asdict(stream)`` (the same JSON once dumped), for a fraction of its cost."""
    return {name: getattr(stream, name) for name in _DS_FIELDS}


def _append_chunks(conn: sqlite3.Connection, app: ChunkAppend,
                   ends: MutableMapping[tuple[str, str], tuple[int, int, int]]) -> None:
    """Add the append's pages. Only the ``chunk_pages`` row is written (one database page
    for a small append): a stream's length and size are read off its last page, or
    remembered from the last append (``ends``)."""
    stream = (app.run_id, app.key)
    row = ends.get(stream) or conn.execute(_STREAM_END, stream).fetchone()
    if row is None:
        sid = conn.execute("INSERT INTO streams (run_id, key) VALUES (?, ?)",
                           (app.run_id, app.key)).lastrowid
        assert sid is not None  # an INSERT into a rowid table
        length = nbytes = 0
    else:
        sid, length, nbytes = row
    if app.start != length:
        raise IndexGapError(f"chunk index gap in {app.run_id}/{app.key}: store has {length}, "
                           f"batch starts at {app.start}")
    conn.executemany("INSERT INTO chunk_pages (sid, last, first, total, data) "
                     "VALUES (?, ?, ?, ?, ?)",
                     _pages(sid, app.start, nbytes, app.items, app.nbytes))
    ends[stream] = (sid, app.start + len(app.items), nbytes + app.nbytes)
    if app.producer is not None and app.next_seq is not None:
        conn.execute(_UPSERT_SEQ, (app.run_id, app.key, app.producer, app.next_seq))


def _pages(sid: int, start: int, before: int, items: list[bytes],
           nbytes: int) -> list[tuple[int, int, int, int, bytes]]:
    """Rows of ``chunk_pages`` for chunks ``start ..`` (``nbytes`` in all, after ``before``
    bytes already stored): at most ``PAGE_ITEMS`` chunks and (unless one chunk alone is
    bigger) ``PAGE_BYTES`` bytes per page; each row carries the stream's size through it.

    Per-chunk work stays in C (``join``, ``count``; ``map``/``accumulate``/``bisect`` only
    when the chunks hold more than ``PAGE_BYTES``): this runs for every chunk stored.

    Raises:
        ValueError: a chunk holds a raw newline, so it is not compact JSON.
    """
    # cut by count alone when everything fits in one page's bytes (the usual case: no
    # per-chunk sizes needed); else also by bytes, on running totals
    total = None if nbytes <= PAGE_BYTES else list(accumulate(map(len, items)))
    rows = []
    through = before
    begin = 0
    while begin < len(items):
        end = min(len(items), begin + PAGE_ITEMS)
        if total is not None:
            base = total[begin - 1] if begin else 0
            if total[end - 1] - base > PAGE_BYTES:
                end = max(begin + 1, bisect_right(total, base + PAGE_BYTES, begin, end))
        page = items if end - begin == len(items) else items[begin:end]
        data = _SEP.join(page)
        separators = end - begin - 1
        if data.count(_SEP) != separators:
            raise _not_compact()
        through += len(data) - separators
        rows.append((sid, start + end - 1, start + begin, through, data))
        begin = end
    return rows


def _not_compact() -> NotCompactError:
    return NotCompactError("a chunk holds a raw newline byte: chunks must be compact JSON")


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older file up to this schema one step at a time
    (1 -> 2 -> 3 -> 4, each in a transaction of its own), or refuse a newer one."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} was written by a newer "
                                    f"runwire (this one knows {SCHEMA_VERSION})")
    if version == 0:
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} {_SCHEMA_3} {_SCHEMA_4} "
                           f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        return
    if version == 1:
        _migrate_from_1(conn)
        version = 2
    if version == 2:
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA_3} PRAGMA user_version = 3; COMMIT;")
        version = 3
    if version == 3:
        _migrate_from_3(conn)


def _migrate_from_3(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4, in one transaction: ``runs.created_at`` (filled from each run's JSON)
    with its indexes, and the ``wait_tokens`` table."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "created_at" not in columns:
            conn.execute("ALTER TABLE runs ADD COLUMN created_at REAL")
            rowid = -1
            while rows := conn.execute("SELECT rowid, data FROM runs WHERE rowid > ? "
                                       "ORDER BY rowid LIMIT 512", (rowid,)).fetchall():
                conn.executemany("UPDATE runs SET created_at = ? WHERE rowid = ?",
                                 [(orjson.loads(data).get("created_at"), rid)
                                  for rid, data in rows])
                rowid = rows[-1][0]
        for statement in _SCHEMA_4.split(";"):  # not executescript: it would COMMIT first
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2, in one transaction. Schema 1 pages kept their chunks' end offsets
    (``ends``, little-endian uint32) beside the bytes, and ``streams`` kept each stream's
    length and size, rewritten by every append (two more database pages per commit). Now
    chunks are joined by newlines and each page carries the stream's size through it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE chunk_pages RENAME TO chunk_pages_1")
        conn.execute("ALTER TABLE streams RENAME TO streams_1")
        for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT first
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO streams (sid, run_id, key, ended) "
                     "SELECT sid, run_id, key, ended FROM streams_1")
        sid = last = -1
        total = 0
        while rows := conn.execute(
                "SELECT sid, last, first, ends, data FROM chunk_pages_1 WHERE (sid, last) > "
                "(?, ?) ORDER BY sid, last LIMIT 256", (sid, last)).fetchall():
            converted = []
            for page_sid, page_last, first, ends, data in rows:
                total = (total if page_sid == sid else 0) + len(data)
                sid, last = page_sid, page_last
                converted.append((sid, last, first, total, _SEP.join(_split_v1(ends, data))))
            conn.executemany("INSERT INTO chunk_pages (sid, last, first, total, data) "
                             "VALUES (?, ?, ?, ?, ?)", converted)
        conn.execute("DROP TABLE chunk_pages_1")
        conn.execute("DROP TABLE streams_1")
        conn.execute("PRAGMA user_version = 2")  # then 2 -> 3 -> 4
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _split_v1(ends: bytes, data: bytes) -> list[bytes]:
    offsets = array("I", ends)
    if sys.byteorder == "big":
        offsets.byteswap()
    return [data[begin:end] for begin, end in zip([0, *offsets], offsets, strict=False)]


def _lock_file(path: str) -> int | None:
    """Take an exclusive advisory lock on ``path`` (POSIX); the fd holds it.

    Raises:
        StoreUnavailableError: another process (or another store in this one) holds the
            lock, or the file cannot be created (no such folder, no permission).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # no such folder, no permission ...: the store, not its lock
        raise StoreUnavailableError(exc.errno, f"the SQLite store {path[:-5]!r} cannot be "
                                    f"opened: {exc.strerror} (lock file {path!r})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreUnavailableError(errno.EBUSY, f"the SQLite store {path[:-5]!r} is in use by "
                                    f"another engine (lock file {path!r})") from None
    return fd
