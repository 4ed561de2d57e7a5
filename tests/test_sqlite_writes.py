"""Where the SQLite store writes (trio thread or worker thread), its background WAL
checkpoints, its page format, and the conversion of schema 1 files."""

from __future__ import annotations

import itertools
import logging
import shutil
import sqlite3
import threading
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runwire.engine.store import _sqlite as sqlite_store
from runwire.engine.run import RunRecord
from runwire.engine.store._sqlite import (
    _STREAM_END,
    CHECKPOINT_PAGES,
    INLINE_BYTES,
    PAGE_BYTES,
    PAGE_ITEMS,
    SCHEMA_VERSION,
    SqliteStore,
    _pages,
    _Pending,
)
from runwire.engine.store import Batch, ChunkAppend, IndexGapError, NotCompactError, StreamState

from .helpers import bounded, count_groups

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def append(start: int, items: list[bytes], key: str = "s") -> Batch:
    return Batch(chunks=[ChunkAppend("r1", key, start, items, sum(map(len, items)))])


def record_threads(store: SqliteStore) -> list[bool]:
    """Patch ``store._write`` to note, per group, whether it ran on the trio thread."""
    on_trio_thread: list[bool] = []
    write = store._write

    def spy(group: Any) -> None:
        on_trio_thread.append(threading.current_thread() is threading.main_thread())
        write(group)

    store._write = spy  # type: ignore[method-assign]
    return on_trio_thread


@bounded(30)
async def test_small_groups_are_written_on_the_trio_thread_big_ones_in_a_worker(tmp_path):
    store = SqliteStore(str(tmp_path / "w.db"))
    try:
        placed = record_threads(store)
        await store.commit(append(0, [b'"small"']))
        big = [b'"' + b"x" * 1000 + b'"'] * (INLINE_BYTES // 1000 + 1)
        await store.commit(append(1, big))
        assert placed == [True, False]
        assert await store.read_chunks("r1", "s", 0, 10**6) == [b'"small"', *big]
    finally:
        await store.aclose()


@bounded(30)
async def test_synchronous_full_writes_every_group_in_a_worker_thread(tmp_path):
    store = SqliteStore.from_url(f"sqlite:///{tmp_path / 'f.db'}?synchronous=full")
    try:
        placed = record_threads(store)
        await store.commit(append(0, [b"1"]))
        await store.commit(append(1, [b"2"]))
        assert placed == [False, False]
        autocheckpoint = await store._read(
            store._rows, "PRAGMA wal_autocheckpoint")  # the reader's: SQLite's default
        assert autocheckpoint == [(1000,)]
    finally:
        await store.aclose()


async def test_a_memory_database_does_everything_on_the_trio_thread():
    store = SqliteStore(":memory:")
    try:
        placed = record_threads(store)
        await store.commit(append(0, [b'"' + b"y" * (INLINE_BYTES + 1) + b'"']))
        assert placed == [True]
        threads: list[bool] = []
        rows = store._rows

        def spy(*args: Any) -> Any:
            threads.append(threading.current_thread() is threading.main_thread())
            return rows(*args)

        store._rows = spy  # type: ignore[method-assign]
        assert (await store.streams("r1"))["s"].length == 1
        assert threads == [True]
    finally:
        await store.aclose()


@bounded(30)
async def test_the_wal_is_checkpointed_in_the_background_not_inside_commits(tmp_path):
    store = SqliteStore(str(tmp_path / "c.db"))
    try:
        started: list[bool] = []
        checkpoint = store._checkpoint

        def spy() -> None:
            started.append(threading.current_thread() is threading.main_thread())
            checkpoint()

        store._checkpoint = spy  # type: ignore[method-assign]
        await store.commit(append(0, [b"0"]))
        writer = store._writer
        assert writer is not None
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        written = 1
        checkpointing = None  # the checkpoint's event, taken as soon as a commit starts it
        while checkpointing is None and written < CHECKPOINT_PAGES:  # a few pages a commit
            await store.commit(append(written, [b"%d" % written]))
            written += 1
            checkpointing = store._checkpointing
        assert checkpointing is not None
        with trio.fail_after(10):  # a safety bound only: the event ends the wait
            await checkpointing.wait()
        assert started == [False]  # started once, in a worker thread
        # the checkpoint copied the WAL into the database file: the file alone, without its
        # WAL, holds the chunks written before it started
        shutil.copyfile(tmp_path / "c.db", tmp_path / "copy.db")
        probe = sqlite3.connect(tmp_path / "copy.db")
        (pages,) = probe.execute("SELECT count(*) FROM chunk_pages").fetchone()
        probe.close()
        assert pages >= written - 1
        assert await store.read_chunks("r1", "s", 0, 10**6) == [b"%d" % i for i in range(written)]
    finally:
        await store.aclose()
    assert not (tmp_path / "c.db-wal").exists()


@bounded(30)
async def test_a_failing_checkpoint_is_logged_and_writes_go_on(tmp_path, caplog):
    store = SqliteStore(str(tmp_path / "e.db"))
    try:
        def broken() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        store._checkpoint = broken  # type: ignore[method-assign]
        caplog.set_level(logging.WARNING, logger="runwire.engine")
        i = 0
        checkpointing = None
        with trio.fail_after(10):  # a safety bound only
            while checkpointing is None:  # commit until one starts the (broken) checkpoint
                await store.commit(append(i, [b"%d" % i]))
                i += 1
                checkpointing = store._checkpointing
            await checkpointing.wait()
        assert "checkpoint" in caplog.text
        assert "disk I/O error" in caplog.text
        await store.commit(append(i, [b"%d" % i]))  # the store still writes
        assert len(await store.read_chunks("r1", "s", 0, 10**6)) == i + 1
    finally:
        await store.aclose()


@bounded(30)
async def test_a_chunk_with_a_raw_newline_is_refused_and_the_rest_of_the_group_commits(
        tmp_path):
    store = SqliteStore(str(tmp_path / "n.db"))
    try:
        await store.commit(append(0, [b'"first"']))
        groups = count_groups(store)
        results: dict[str, Any] = {}

        async def commit(name: str, batch: Batch) -> None:
            try:
                await store.commit(batch)
                results[name] = "ok"
            except NotCompactError as exc:
                results[name] = str(exc)

        async with trio.open_nursery() as nursery:  # both ride in one group commit
            nursery.start_soon(commit, "bad", append(1, [b'"a"', b'"b\nc"'], key="s"))
            nursery.start_soon(commit, "good", append(0, [b'"fine"'], key="other"))
        assert groups == [2]  # one group commit for both: the refusal is per batch
        assert results["good"] == "ok"
        assert "compact JSON" in results["bad"]
        assert await store.read_chunks("r1", "s", 0, 10) == [b'"first"']
        assert await store.read_chunks("r1", "other", 0, 10) == [b'"fine"']
        # alone in its transaction, too; and across pages
        with pytest.raises(NotCompactError, match="compact JSON"):
            await store.commit(append(1, [b"1"] * PAGE_ITEMS + [b"2\n"]))
        assert (await store.streams("r1"))["s"].length == 1
    finally:
        await store.aclose()


@bounded(30)
async def test_pages_round_trip_odd_chunks(tmp_path):
    store = SqliteStore(str(tmp_path / "p.db"))
    items = [b'""', b"0", b'"\\n"', b'{"a":[1,{"b":"\\r\\n"}]}', b'"' + b"z" * 70_000 + b'"',
             *[b"%d" % i for i in range(3 * PAGE_ITEMS)], b"null"]
    try:
        await store.commit(append(0, items))
        assert await store.read_chunks("r1", "s", 0, 10**6) == items
        for start in (0, 3, 4, 5, PAGE_ITEMS, 2 * PAGE_ITEMS + 7, len(items) - 1):
            assert await store.read_chunks("r1", "s", start, 5) == items[start:start + 5]
    finally:
        await store.aclose()


def _reference_pages(sid: int, start: int, before: int,
                     items: list[bytes]) -> list[tuple[int, int, int, int, bytes]]:
    """Pages as the docstring of ``_pages`` defines them, the slow and obvious way."""
    rows, begin, through = [], 0, before
    while begin < len(items):
        end, size = begin, 0
        while end < len(items) and end - begin < PAGE_ITEMS and (
                end == begin or size + len(items[end]) <= PAGE_BYTES):
            size += len(items[end])
            end += 1
        through += size
        rows.append((sid, start + end - 1, start + begin, through, b"\n".join(items[begin:end])))
        begin = end
    return rows


@settings(max_examples=60, deadline=None)
@example(sizes=[9] * (2 * PAGE_ITEMS + 3), start=5, before=7)  # count alone cuts the pages
@example(sizes=[9] * PAGE_ITEMS + [300_000] + [1] * 2, start=0, before=0)  # bytes do too
@given(sizes=st.lists(st.sampled_from([1, 2, 9, 5_000, 70_000, 300_000]), min_size=1,
                      max_size=3 * PAGE_ITEMS + 5).filter(lambda s: sum(s) < 2_000_000),
       start=st.integers(0, 10**6), before=st.integers(0, 10**9))
def test_pages_are_cut_by_count_and_bytes(sizes, start, before):
    items = [b"7" * size for size in sizes]
    assert _pages(3, start, before, items, sum(sizes)) == _reference_pages(
        3, start, before, items)


def _write_schema_1_file(path: Path, pages: list[list[bytes]]) -> None:
    """A database as schema 1 wrote it: pages with an ``ends`` array of end offsets."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode = WAL;
        CREATE TABLE runs (id TEXT PRIMARY KEY, task_id TEXT NOT NULL, idempotency_key TEXT,
            status TEXT NOT NULL, finished_at REAL, data BLOB NOT NULL);
        CREATE TABLE streams (sid INTEGER PRIMARY KEY, run_id TEXT NOT NULL,
            key TEXT NOT NULL, length INTEGER NOT NULL DEFAULT 0,
            nbytes INTEGER NOT NULL DEFAULT 0, ended INTEGER NOT NULL DEFAULT 0,
            UNIQUE (run_id, key));
        CREATE TABLE chunk_pages (sid INTEGER NOT NULL, last INTEGER NOT NULL,
            first INTEGER NOT NULL, ends BLOB NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (sid, last));
        CREATE TABLE producer_seqs (run_id TEXT NOT NULL, key TEXT NOT NULL,
            producer TEXT NOT NULL, next_seq INTEGER NOT NULL,
            PRIMARY KEY (run_id, key, producer)) WITHOUT ROWID;
        CREATE TABLE records (run_id TEXT NOT NULL, key TEXT NOT NULL, idx INTEGER NOT NULL,
            data BLOB NOT NULL, idempotency_key TEXT, PRIMARY KEY (run_id, key, idx));
        CREATE TABLE waitpoints (run_id TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL,
            expires_at REAL, PRIMARY KEY (run_id, key));
        PRAGMA user_version = 1;
    """)
    total = sum(map(len, pages))
    conn.execute("INSERT INTO streams (sid, run_id, key, length, nbytes, ended) "
                 "VALUES (1, 'r1', 's', ?, ?, 1)", (total, sum(map(len, itertools.chain(*pages)))))
    first = 0
    for page in pages:
        ends, end = array("I"), 0
        for item in page:
            end += len(item)
            ends.append(end)
        conn.execute("INSERT INTO chunk_pages VALUES (1, ?, ?, ?, ?)",
                     (first + len(page) - 1, first, ends.tobytes(), b"".join(page)))
        first += len(page)
    conn.close()


@bounded(30)
async def test_a_schema_1_file_is_converted_when_opened(tmp_path):
    pages = [[b'"a"', b"1", b'{"k":"v"}'], [b'""'], [b"%d" % i for i in range(700)]]
    _write_schema_1_file(tmp_path / "old.db", pages)
    store = SqliteStore(str(tmp_path / "old.db"))
    try:
        every = list(itertools.chain(*pages))
        assert await store.streams("r1") == {
            "s": StreamState(len(every), sum(map(len, every)), True)}
        assert await store.read_chunks("r1", "s", 0, 10**6) == every
        assert await store.read_chunks("r1", "s", 2, 3) == every[2:5]
        await store.commit(append(len(every), [b'"new"']))
        assert (await store.read_chunks("r1", "s", len(every), 5)) == [b'"new"']
    finally:
        await store.aclose()
    conn = sqlite3.connect(tmp_path / "old.db")
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    page_columns = [row[1] for row in conn.execute("PRAGMA table_info(chunk_pages)")]
    stream_columns = [row[1] for row in conn.execute("PRAGMA table_info(streams)")]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert page_columns == ["sid", "last", "first", "total", "data"]
    assert stream_columns == ["sid", "run_id", "key", "ended"]
    assert not {"chunk_pages_1", "streams_1"} & tables


# --- where streams end: remembered by the writer, never out of step with the file -----------


def _file_ends(store: SqliteStore) -> dict[tuple[str, str], tuple[int, int, int]]:
    """Every stream's (sid, length, bytes), read from the file by another connection."""
    conn = sqlite3.connect(store.path)
    try:
        return {(run_id, key): tuple(conn.execute(_STREAM_END, (run_id, key)).fetchone()[:3])
                for run_id, key in conn.execute("SELECT run_id, key FROM streams")}
    finally:
        conn.close()


def _staged(batch: Batch) -> _Pending:
    entry = _Pending(lambda: batch)
    assert entry.build()
    return entry


def _check_remembered(store: SqliteStore) -> None:
    on_file = _file_ends(store)
    assert store._ends, "nothing remembered: the test would prove nothing"
    for stream, end in store._ends.items():
        assert on_file[stream] == end, stream


@bounded(30)
async def test_remembered_ends_follow_commits_and_refusals(tmp_path):
    store = SqliteStore(str(tmp_path / "e.db"))
    try:
        await store.commit(append(0, [b'"a"', b'"b"']))
        await store.commit(append(2, [b'"c"']))
        _check_remembered(store)
        assert store._ends[("r1", "s")][1:] == (3, 9)
        # one group, in this order (written directly: trio may start tasks in any order);
        # each batch has its savepoint, and a refused one must leave no end behind
        group = [_staged(append(3, [b'"d"'])), _staged(append(9, [b'"x"'])),
                 _staged(append(4, [b'"e"', b'"\n"'])),
                 _staged(Batch(chunks=[*append(4, [b'"e"']).chunks,  # refused after s moved
                                       *append(7, [b'"v"'], key="v").chunks])),
                 _staged(append(4, [b'"e"'])),
                 _staged(append(0, [b'"o"'], key="t")),
                 _staged(append(5, [b'"p"'], key="u"))]
        store._write(group)
        assert [type(entry.error).__name__ for entry in group] == [
            "NoneType", "IndexGapError", "NotCompactError", "IndexGapError", "NoneType", "NoneType",
            "IndexGapError"]
        assert ("r1", "u") not in store._ends
        _check_remembered(store)
        assert store._ends[("r1", "s")][1] == 5
        for start in (4, 6):  # an overlap and a gap are still refused from what is remembered
            with pytest.raises(IndexGapError, match="gap"):
                await store.commit(append(start, [b'"y"']))
        await store.commit(append(5, [b'"f"']))
        _check_remembered(store)
        assert await store.read_chunks("r1", "s", 0, 10) == [
            b'"a"', b'"b"', b'"c"', b'"d"', b'"e"', b'"f"']
    finally:
        await store.aclose()


@bounded(30)
async def test_a_failed_transaction_leaves_the_remembered_ends_alone(tmp_path, monkeypatch):
    store = SqliteStore(str(tmp_path / "f.db"))
    try:
        await store.commit(append(0, [b'"a"']))
        before = dict(store._ends)
        monkeypatch.setattr(sqlite_store, "_END_STREAM", "NOT SQL")  # fails after the append
        with pytest.raises(sqlite3.OperationalError):
            await store.commit(Batch(chunks=[ChunkAppend("r1", "s", 1, [b'"b"'], 3)],
                                     ended=[("r1", "s")]))
        assert store._ends == before
        monkeypatch.undo()
        await store.commit(append(1, [b'"b"']))
        _check_remembered(store)
    finally:
        await store.aclose()


@bounded(30)
async def test_remembered_ends_are_bounded_and_forgotten_streams_still_append(
        tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "END_CACHE_STREAMS", 3)
    store = SqliteStore(str(tmp_path / "b.db"))
    try:
        for key in "abcde":
            await store.commit(append(0, [b'"1"'], key=key))
        assert list(store._ends) == [("r1", "c"), ("r1", "d"), ("r1", "e")]
        await store.commit(append(1, [b'"2"'], key="a"))  # looked up in the file again
        assert list(store._ends) == [("r1", "d"), ("r1", "e"), ("r1", "a")]
        with pytest.raises(IndexGapError, match="gap"):
            await store.commit(append(2, [b'"3"'], key="b"))
        _check_remembered(store)
    finally:
        await store.aclose()


@bounded(30)
async def test_deleting_runs_forgets_every_remembered_end(tmp_path):
    store = SqliteStore(str(tmp_path / "d.db"))
    try:
        done = RunRecord(id="r1", task_id="t", created_at=1.0).to_store()
        done.update(status="COMPLETED", finished_at=5.0)
        await store.commit(Batch(runs=[done], chunks=[ChunkAppend("r1", "s", 0, [b"1"], 1)]))
        assert store._ends
        assert await store.delete_finished_before(10.0) == 1
        assert store._ends == {}
        await store.commit(append(0, [b"2"]))  # the same run id and key start afresh
        assert await store.read_chunks("r1", "s", 0, 10) == [b"2"]
        _check_remembered(store)
    finally:
        await store.aclose()


def _schema_2() -> str:
    """The tables schema 2 wrote: today's base tables without ``runs.created_at``."""
    base = sqlite_store._SCHEMA
    assert ",\n    created_at REAL\n);" in base
    return base.replace(",\n    created_at REAL\n);", "\n);", 1)


@bounded(30)
async def test_a_schema_2_file_opens_and_gains_the_durable_stream_tables(tmp_path):
    """Schema 2 (before durable streams) -> 3 -> 4: the runs stay, the new tables appear."""
    from runwire.engine.store import DurableStream, StreamWrite

    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(_schema_2() + "PRAGMA user_version = 2;")
    conn.execute("INSERT INTO runs (id, task_id, status, data) VALUES ('r1', 't', 'COMPLETED',"
                 " '{\"id\": \"r1\"}')")
    conn.commit()
    conn.close()
    store = SqliteStore(str(path))
    try:
        assert await store.get_run("r1") == {"id": "r1"}
        meta = DurableStream(path="s", content_type="text/plain", created_at=1.0,
                             accessed_at=1.0, tail=2, nbytes=2)
        await store.commit(Batch(streams=[StreamWrite(meta, [(0, b"hi")])]))
        assert await store.durable_streams() == [meta]
    finally:
        await store.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (4,)
    conn.close()


@bounded(30)
async def test_a_schema_3_file_gains_created_at_and_tokens_when_opened(tmp_path):
    """Schema 3 (durable streams, no ``runs.created_at``) -> 4: the column is filled from
    each run's JSON, so old runs list in order; tokens can be stored; streams stay."""
    from runwire.engine.store import StoredToken

    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path)
    conn.executescript(_schema_2() + sqlite_store._SCHEMA_3 + "PRAGMA user_version = 3;")
    for i in range(3):
        conn.execute("INSERT INTO runs VALUES (?, 't', NULL, 'COMPLETED', 5.0, ?)",
                     (f"r{i}", orjson.dumps({"id": f"r{i}", "task_id": "t",
                                             "status": "COMPLETED", "created_at": float(i)})))
    conn.execute("INSERT INTO ds_items VALUES ('s', 0, ?)", (b"hi",))
    conn.commit()
    conn.close()
    store = SqliteStore(str(path))
    listing: dict[str, Any] = dict(task=None, status=None, tags=None, created_after=None,
                                   created_before=None)
    try:
        page, cursor = await store.list_runs(**listing, limit=2, cursor=None)
        assert [r["id"] for r in page] == ["r2", "r1"]
        rest, end = await store.list_runs(**listing, limit=2, cursor=cursor)
        assert [r["id"] for r in rest] == ["r0"] and end is None
        await store.create_token(StoredToken(id="wt", created_at=1.0))
        assert (await store.get_token("wt")) is not None
        assert await store.stream_items("s", 0, 2, 100) == [(0, b"hi")]
    finally:
        await store.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (4,)
    conn.close()
