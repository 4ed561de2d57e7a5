"""The Store contract: every store implementation passes the same tests.

A new store joins by adding one entry to ``STORES`` (a factory from a temporary directory to
a fresh, empty store; ``durable=True`` if what it committed must survive ``aclose`` and a new
store on the same place). The sqlite-only mechanics (URLs, the file lock, group commit,
cancellation) are tested at the end.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runwire.engine.store import IndexGapError, MemoryStore, Store, StoreConfigError
from runwire.engine.run import RunRecord
from runwire.engine.store._sqlite import SqliteStore, parse_sqlite_url
from runwire.engine.store import (
    Batch,
    ChunkAppend,
    RecordAppend,
    StoredRecord,
    StreamState,
    Waitpoint,
    open_store,
)

from .helpers import bounded, count_groups
from .redisserver import redis_url

TIME_LIMIT = 10.0


@attrs.frozen
class StoreKind:
    make: Callable[[Path], Store]
    durable: bool


STORES = {
    "memory": StoreKind(lambda tmp: MemoryStore(), durable=False),
    "sqlite": StoreKind(lambda tmp: open_store(f"sqlite:///{tmp / 'contract.db'}"), durable=True),
    # its own key prefix per test directory: an empty store, the same one when reopened
    "redis": StoreKind(lambda tmp: open_store(redis_url("c" + hashlib.sha1(
        str(tmp).encode()).hexdigest()[:16])), durable=True),
}


@pytest.fixture(params=sorted(STORES))
def kind(request: pytest.FixtureRequest) -> StoreKind:
    return STORES[request.param]


@pytest.fixture
async def store(kind: StoreKind, tmp_path: Path) -> AsyncIterator[Store]:
    opened = kind.make(tmp_path)
    try:
        yield opened
    finally:
        await opened.aclose()


# --- helpers -------------------------------------------------------------------------------


def run(run_id: str, *, status: str = "QUEUED", task_id: str = "t",
        finished_at: float | None = None, idempotency_key: str | None = None,
        **extra: Any) -> dict[str, Any]:
    """A run in the form the engine stores it (``RunRecord.to_store()``)."""
    raw = RunRecord(id=run_id, task_id=task_id, created_at=1.0,
                    idempotency_key=idempotency_key).to_store()
    raw.update(status=status, finished_at=finished_at, **extra)
    return raw


def chunks(run_id: str, key: str, start: int, values: list[str], **kw: Any) -> ChunkAppend:
    items = [f'"{v}"'.encode() for v in values]
    return ChunkAppend(run_id, key, start, items, sum(map(len, items)), **kw)


def enc(values: list[str]) -> list[bytes]:
    return [f'"{v}"'.encode() for v in values]


async def snapshot(store: Store, run_id: str) -> tuple[Any, ...]:
    """Everything a store holds about one run."""
    return (await store.get_run(run_id), await store.streams(run_id),
            await store.producer_seqs(run_id), await store.records(run_id),
            await store.read_chunks(run_id, "default", 0, 1000))


# --- the contract --------------------------------------------------------------------------


@bounded(TIME_LIMIT)
async def test_runs_are_stored_replaced_and_copied(store: Store) -> None:
    first = run("r1", metadata={"a": [1, 2]}, payload={"p": "x"})
    await store.commit(Batch(runs=[first]))
    assert await store.get_run("r1") == first
    got = await store.get_run("r1")
    assert got is not None
    got["metadata"]["a"].append(3)  # the caller's copy, not the store's
    assert await store.get_run("r1") == first
    second = run("r1", status="EXECUTING", attempt=2, started_at=5.0)
    await store.commit(Batch(runs=[second]))
    assert await store.get_run("r1") == second
    assert await store.get_run("nope") is None


@bounded(TIME_LIMIT)
async def test_commit_is_atomic_when_a_batch_is_refused(store: Store) -> None:
    await store.commit(Batch(runs=[run("r1")], chunks=[chunks("r1", "default", 0, ["a"])]))
    before = await snapshot(store, "r1")
    bad = Batch(runs=[run("r1", status="EXECUTING")],
                chunks=[chunks("r1", "default", 1, ["b"], producer="p", next_seq=1),
                        chunks("r1", "other", 0, ["x"]),
                        chunks("r1", "default", 5, ["gap"])],
                records=[RecordAppend("r1", "in", 0, b"1")],
                ended=[("r1", "default")])
    with pytest.raises(IndexGapError, match="gap"):
        await store.commit(bad)
    assert await snapshot(store, "r1") == before
    assert await store.waitpoint("r1", "w", 0.0) is None


@bounded(TIME_LIMIT)
async def test_batch_parts_apply_in_order(store: Store) -> None:
    # Two appends to one stream in one batch follow each other; an end marker in the same
    # batch applies after the chunks.
    await store.commit(Batch(chunks=[chunks("r1", "default", 0, ["a", "b"]),
                                     chunks("r1", "default", 2, ["c"])],
                             ended=[("r1", "default")]))
    assert await store.read_chunks("r1", "default", 0, 10) == enc(["a", "b", "c"])
    assert (await store.streams("r1"))["default"] == StreamState(3, 9, True)


@bounded(TIME_LIMIT)
async def test_read_chunks_windows(store: Store) -> None:
    values = [f"c{i}" for i in range(10)]
    for start in (0, 4, 7):
        end = {0: 4, 4: 7, 7: 10}[start]
        await store.commit(Batch(chunks=[chunks("r1", "default", start, values[start:end])]))
    assert await store.read_chunks("r1", "default", 0, 100) == enc(values)
    assert await store.read_chunks("r1", "default", 3, 4) == enc(values[3:7])
    assert await store.read_chunks("r1", "default", 8, 5) == enc(values[8:])
    assert await store.read_chunks("r1", "default", 0, 1) == enc(values[:1])
    assert await store.read_chunks("r1", "default", 10, 5) == []
    assert await store.read_chunks("r1", "default", 50, 5) == []
    assert await store.read_chunks("r1", "default", 2, 0) == []
    assert await store.read_chunks("r1", "missing", 0, 5) == []
    assert await store.read_chunks("nope", "default", 0, 5) == []


@bounded(TIME_LIMIT)
async def test_read_chunks_any_window_of_big_and_small_appends(store: Store) -> None:
    # Big appends, big chunks and one-chunk appends mixed (a store may group chunks
    # into pages internally; no window may notice).
    expected: list[bytes] = []

    async def append(items: list[bytes]) -> None:
        await store.commit(Batch(chunks=[ChunkAppend("r1", "s", len(expected), items,
                                                     sum(map(len, items)))]))
        expected.extend(items)

    await append([b"%d" % i for i in range(2500)])
    await append([b'"' + b"x" * 300_000 + b'"', b"1", b'"' + b"y" * 200_000 + b'"'])
    for i in range(30):
        await append([b'"tiny %d"' % i])
    await append([b'"' + bytes([65 + i % 26]) * 1000 + b'"' for i in range(600)])
    assert await store.read_chunks("r1", "s", 0, 10_000) == expected
    for start in (0, 1, 1023, 1024, 1025, 2047, 2499, 2500, 2501, 2502, 2503, 2520, 2533,
                  2534, 3000, 3132, 3133, 3134):
        for limit in (1, 2, 7, 1024, 5000):
            got = await store.read_chunks("r1", "s", start, limit)
            assert got == expected[start:start + limit], (start, limit)


@bounded(TIME_LIMIT)
async def test_chunks_are_bytes_exactly_as_given(store: Store) -> None:
    items = [b'{"k":[1,2.5,null]}', b'"\xc3\xa9\\u0000"', b"0", b'"' + b"x" * 100_000 + b'"']
    await store.commit(Batch(chunks=[ChunkAppend("r1", "s", 0, items, sum(map(len, items)))]))
    got = await store.read_chunks("r1", "s", 0, 10)
    assert got == items and all(type(item) is bytes for item in got)


@bounded(TIME_LIMIT)
async def test_streams_state(store: Store) -> None:
    assert await store.streams("r1") == {}
    await store.commit(Batch(chunks=[chunks("r1", "default", 0, ["ab", "c"]),
                                     chunks("r1", "ai", 0, ["xyz"]),
                                     chunks("r2", "default", 0, ["other run"])]))
    await store.commit(Batch(chunks=[chunks("r1", "ai", 1, ["q"])],
                             ended=[("r1", "ai"), ("r1", "never-written")]))
    assert await store.streams("r1") == {
        "default": StreamState(length=2, nbytes=7, ended=False),
        "ai": StreamState(length=2, nbytes=8, ended=True),
        "never-written": StreamState(length=0, nbytes=0, ended=True),
    }
    assert await store.streams("r2") == {"default": StreamState(1, 11, False)}


@bounded(TIME_LIMIT)
async def test_producer_seqs(store: Store) -> None:
    await store.commit(Batch(chunks=[
        chunks("r1", "default", 0, ["a", "b"], producer="p1", next_seq=2),
        chunks("r1", "default", 2, ["c"], producer="p2", next_seq=7),
        chunks("r1", "ai", 0, ["d"], producer="p1", next_seq=1),
        chunks("r1", "ai", 1, ["no producer"]),
    ]))
    await store.commit(Batch(chunks=[chunks("r1", "default", 3, ["e"], producer="p1",
                                            next_seq=3)]))
    assert await store.producer_seqs("r1") == {
        ("default", "p1"): 3, ("default", "p2"): 7, ("ai", "p1"): 1}
    assert await store.producer_seqs("r2") == {}


@bounded(TIME_LIMIT)
async def test_records(store: Store) -> None:
    await store.commit(Batch(records=[RecordAppend("r1", "cancel", 0, b'{"a":1}', "k0"),
                                      RecordAppend("r1", "approval", 0, b"true")]))
    await store.commit(Batch(records=[RecordAppend("r1", "cancel", 1, b'"x"'),
                                      RecordAppend("r2", "cancel", 0, b"2")]))
    assert await store.records("r1") == {
        "cancel": [StoredRecord(0, b'{"a":1}', "k0"), StoredRecord(1, b'"x"', None)],
        "approval": [StoredRecord(0, b"true", None)],
    }
    assert await store.records("r2") == {"cancel": [StoredRecord(0, b"2", None)]}
    assert await store.records("r3") == {}


@bounded(TIME_LIMIT)
async def test_waitpoints_expire(store: Store) -> None:
    await store.commit(Batch(waitpoints=[Waitpoint("r1", "approval:k", b'"yes"', 100.0),
                                         Waitpoint("r1", "forever:k", b"1", None)]))
    assert await store.waitpoint("r1", "approval:k", 99.9) == b'"yes"'
    assert await store.waitpoint("r1", "approval:k", 100.0) is None
    assert await store.waitpoint("r1", "approval:k", 1e12) is None
    assert await store.waitpoint("r1", "forever:k", 1e12) == b"1"
    assert await store.waitpoint("r1", "other", 0.0) is None
    assert await store.waitpoint("r2", "approval:k", 0.0) is None
    await store.commit(Batch(waitpoints=[Waitpoint("r1", "approval:k", b'"no"', 200.0)]))
    assert await store.waitpoint("r1", "approval:k", 150.0) == b'"no"'


@bounded(TIME_LIMIT)
async def test_find_run(store: Store) -> None:
    await store.commit(Batch(runs=[run("r1", task_id="a", idempotency_key="k"),
                                   run("r2", task_id="b", idempotency_key="k"),
                                   run("r3", task_id="a")]))
    assert await store.find_run("a", "k") == "r1"
    assert await store.find_run("b", "k") == "r2"
    assert await store.find_run("a", "other") is None
    assert await store.find_run("c", "k") is None


@bounded(TIME_LIMIT)
async def test_unfinished_runs(store: Store) -> None:
    live = ["QUEUED", "EXECUTING", "WAITING"]
    final = ["COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"]
    await store.commit(Batch(runs=[run(f"r-{s}", status=s, finished_at=9.0 if s in final
                                       else None) for s in live + final]))
    assert sorted(r["id"] for r in await store.unfinished_runs()) == sorted(
        f"r-{s}" for s in live)
    assert {r["id"]: r for r in await store.unfinished_runs()}["r-WAITING"] == run(
        "r-WAITING", status="WAITING")
    await store.commit(Batch(runs=[run("r-QUEUED", status="COMPLETED", finished_at=10.0)]))
    assert sorted(r["id"] for r in await store.unfinished_runs()) == ["r-EXECUTING", "r-WAITING"]


async def _fill(store: Store, run_id: str, finished_at: float | None) -> None:
    await store.commit(Batch(
        runs=[run(run_id, status="COMPLETED" if finished_at else "EXECUTING",
                  finished_at=finished_at, idempotency_key=f"ik-{run_id}")],
        chunks=[chunks(run_id, "default", 0, ["a", "b"], producer="p", next_seq=2),
                chunks(run_id, "ai", 0, ["c"])],
        records=[RecordAppend(run_id, "in", 0, b"1", "rk")],
        waitpoints=[Waitpoint(run_id, "in:k", b"1", None)],
        ended=[(run_id, "default")]))


@bounded(TIME_LIMIT)
async def test_delete_finished_before(store: Store) -> None:
    await _fill(store, "old", 100.0)
    await _fill(store, "edge", 150.0)
    await _fill(store, "new", 200.0)
    await _fill(store, "live", None)
    kept = {rid: await snapshot(store, rid) for rid in ("edge", "new", "live")}
    assert await store.delete_finished_before(150.0) == 1
    assert await store.get_run("old") is None
    assert await store.streams("old") == {}
    assert await store.read_chunks("old", "default", 0, 10) == []
    assert await store.producer_seqs("old") == {}
    assert await store.records("old") == {}
    assert await store.waitpoint("old", "in:k", 0.0) is None
    assert await store.find_run("t", "ik-old") is None
    assert {rid: await snapshot(store, rid) for rid in kept} == kept
    assert await store.delete_finished_before(150.0) == 0
    assert await store.delete_finished_before(1e12) == 2
    assert [r["id"] for r in await store.unfinished_runs()] == ["live"]
    assert await snapshot(store, "live") == kept["live"]


@bounded(TIME_LIMIT)
async def test_delete_many_runs(store: Store) -> None:
    for i in range(450):  # more than one sqlite deletion step
        await store.commit(Batch(runs=[run(f"r{i}", status="COMPLETED", finished_at=1.0)],
                                 chunks=[chunks(f"r{i}", "default", 0, ["x"])]))
    assert await store.delete_finished_before(2.0) == 450
    assert await store.get_run("r449") is None and await store.streams("r0") == {}


@bounded(TIME_LIMIT)
async def test_gap_and_overlap_are_refused(store: Store) -> None:
    await store.commit(Batch(chunks=[chunks("r1", "default", 0, ["a", "b"])]))
    with pytest.raises(IndexGapError, match="gap"):
        await store.commit(Batch(chunks=[chunks("r1", "default", 3, ["d"])]))
    with pytest.raises(IndexGapError, match="gap"):
        await store.commit(Batch(chunks=[chunks("r1", "default", 1, ["b again"])]))
    with pytest.raises(IndexGapError, match="gap"):
        await store.commit(Batch(chunks=[chunks("r1", "new", 1, ["first is not 0"])]))
    assert await store.read_chunks("r1", "default", 0, 10) == enc(["a", "b"])
    assert await store.streams("r1") == {"default": StreamState(2, 6, False)}
    await store.commit(Batch(chunks=[chunks("r1", "default", 2, ["c"])]))
    assert await store.read_chunks("r1", "default", 0, 10) == enc(["a", "b", "c"])


@bounded(TIME_LIMIT)
async def test_concurrent_commits_all_land_and_a_bad_one_fails_alone(store: Store) -> None:
    results: dict[int, BaseException | None] = {}

    async def writer(i: int) -> None:
        start = 5 if i == 13 else 0  # run 13's batch has a gap
        batch = Batch(runs=[run(f"r{i}")], chunks=[chunks(f"r{i}", "default", start, ["x"])])
        try:
            await store.commit(batch)
        except IndexGapError as exc:
            results[i] = exc
        else:
            results[i] = None

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(writer, i)
    assert [i for i, err in results.items() if err is not None] == [13]
    assert await store.get_run("r13") is None
    for i in set(range(40)) - {13}:
        assert await store.read_chunks(f"r{i}", "default", 0, 5) == enc(["x"])


@bounded(TIME_LIMIT)
async def test_commit_no_pause_writes_like_commit_and_is_a_cancellation_point(
        store: Store) -> None:
    await store.commit_no_pause(Batch(runs=[run("r1")], chunks=[chunks("r1", "k", 0, ["a"])]))
    assert await store.read_chunks("r1", "k", 0, 5) == enc(["a"])
    before = await snapshot(store, "r1")
    with pytest.raises(IndexGapError):  # refused whole, as by commit
        await store.commit_no_pause(Batch(runs=[run("r1", status="EXECUTING")],
                                          chunks=[chunks("r1", "k", 3, ["b"])]))
    assert await snapshot(store, "r1") == before
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.commit_no_pause(Batch(runs=[run("r2")]))
    assert scope.cancelled_caught
    assert await store.get_run("r2") is None  # cancelled first: nothing written

    results: dict[int, BaseException | None] = {}

    async def writer(i: int) -> None:  # mixed with commit, concurrently: all land
        start = 5 if i == 7 else 0
        batch = Batch(runs=[run(f"c{i}")], chunks=[chunks(f"c{i}", "default", start, ["x"])])
        try:
            await (store.commit_no_pause if i % 2 else store.commit)(batch)
        except IndexGapError as exc:
            results[i] = exc
        else:
            results[i] = None

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(writer, i)
    assert [i for i, err in results.items() if err is not None] == [7]
    for i in set(range(20)) - {7}:
        assert await store.read_chunks(f"c{i}", "default", 0, 5) == enc(["x"])


@pytest.mark.parametrize("make", [lambda tmp: MemoryStore(),
                                  lambda tmp: SqliteStore(str(tmp / "n.db"))],
                         ids=["memory", "sqlite"])
@bounded(TIME_LIMIT)
async def test_a_lone_commit_no_pause_takes_no_scheduling_pass(
        make: Callable[[Path], Store], tmp_path: Path) -> None:
    store = make(tmp_path)
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    try:
        await store.get_run("warm-up")  # (opens the file)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)  # runnable: it runs at the next yield
            for i in range(10):  # (a yield would let it run, at latest by the second one)
                await store.commit_no_pause(Batch(runs=[run(f"r{i}")]))
            assert ran == []  # written without a yield
        assert ran == [1]
        assert all([await store.get_run(f"r{i}") for i in range(10)])
    finally:
        await store.aclose()


@bounded(TIME_LIMIT)
async def test_aclose_twice(store: Store) -> None:
    await store.commit(Batch(runs=[run("r1")]))
    await store.aclose()
    await store.aclose()


@pytest.mark.parametrize("name", sorted(k for k, v in STORES.items() if v.durable))
@bounded(TIME_LIMIT)
async def test_durable_stores_keep_everything_across_reopen(name: str, tmp_path: Path) -> None:
    kind = STORES[name]
    first = kind.make(tmp_path)
    await _fill(first, "done", 100.0)
    await _fill(first, "live", None)
    before = {rid: await snapshot(first, rid) for rid in ("done", "live")}
    await first.aclose()
    second = kind.make(tmp_path)
    try:
        assert {rid: await snapshot(second, rid) for rid in before} == before
        assert [r["id"] for r in await second.unfinished_runs()] == ["live"]
        assert await second.find_run("t", "ik-done") == "done"
        assert await second.waitpoint("done", "in:k", 0.0) == b"1"
        await second.commit(Batch(chunks=[chunks("live", "default", 2, ["next"])]))
        assert await second.read_chunks("live", "default", 2, 5) == enc(["next"])
    finally:
        await second.aclose()


@bounded(TIME_LIMIT)
async def test_commit_staged_builds_the_batch_when_it_is_written(store: Store) -> None:
    staged: list[str] = []

    def stage() -> Batch:
        staged.append("r1")
        return Batch(runs=[run("r1")], chunks=[chunks("r1", "default", 0, ["a"])])

    await store.commit_staged(stage)
    assert staged == ["r1"]  # once
    assert await store.read_chunks("r1", "default", 0, 5) == enc(["a"])
    before = await snapshot(store, "r1")
    await store.commit_staged(Batch)  # nothing to write: no error

    def broken() -> Batch:
        raise KeyError("staging failed")

    with pytest.raises(KeyError, match="staging failed"):
        await store.commit_staged(broken)
    with pytest.raises(IndexGapError, match="gap"):
        await store.commit_staged(lambda: Batch(runs=[run("r1", status="EXECUTING")],
                                                chunks=[chunks("r1", "default", 5, ["x"])]))
    assert await snapshot(store, "r1") == before

    def late() -> Batch:
        staged.append("r2")
        return Batch(runs=[run("r2")])

    with trio.CancelScope() as scope:
        scope.cancel()
        await store.commit_staged(late)
    assert scope.cancelled_caught
    assert staged == ["r1"]  # cancelled before its turn: nothing was taken
    assert await store.get_run("r2") is None


# --- sqlite mechanics ------------------------------------------------------------------------


def test_sqlite_urls() -> None:
    assert parse_sqlite_url("sqlite:///runwire.db") == ("runwire.db", {"synchronous": "NORMAL"})
    assert parse_sqlite_url("sqlite:///data/x.db") == ("data/x.db", {"synchronous": "NORMAL"})
    assert parse_sqlite_url("sqlite:////var/lib/x.db")[0] == "/var/lib/x.db"
    assert parse_sqlite_url("sqlite:///:memory:")[0] == ":memory:"
    assert parse_sqlite_url("sqlite:///x.db?synchronous=full") == ("x.db", {"synchronous": "FULL"})
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?foo=1",
                "sqlite:///x.db?synchronous=off", "postgres:///x"):
        with pytest.raises(StoreConfigError):
            parse_sqlite_url(bad)
    store = open_store("sqlite:///x.db?synchronous=full")
    assert isinstance(store, SqliteStore) and store.scheme == "sqlite"
    assert store.synchronous == "FULL"


@bounded(TIME_LIMIT)
async def test_sqlite_memory_database() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        await store.commit(Batch(runs=[run("r1")], chunks=[chunks("r1", "default", 0, ["a"])]))
        assert await store.read_chunks("r1", "default", 0, 5) == enc(["a"])
        assert (await store.get_run("r1") or {})["id"] == "r1"
    finally:
        await store.aclose()
    assert not os.path.exists(":memory:")


@bounded(TIME_LIMIT)
async def test_sqlite_relative_path_is_relative_to_cwd(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///sub.db")
    try:
        await store.commit(Batch(runs=[run("r1")]))
    finally:
        await store.aclose()
    assert (tmp_path / "sub.db").exists()


@bounded(TIME_LIMIT)
async def test_sqlite_file_is_locked_to_one_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = open_store(url)
    await first.commit(Batch(runs=[run("r1")]))
    second = open_store(url)
    with pytest.raises(OSError, match="in use by another engine"):
        await second.get_run("r1")
    await second.aclose()
    await first.aclose()
    third = open_store(url)
    try:
        assert await third.get_run("r1") is not None
    finally:
        await third.aclose()


@bounded(TIME_LIMIT)
async def test_sqlite_unopenable_file_is_an_oserror(tmp_path: Path) -> None:
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    store = open_store(f"sqlite:///{tmp_path / 'garbage.db'}")
    with pytest.raises(OSError, match="cannot open SQLite store"):
        await store.get_run("r1")
    await store.aclose()
    missing = open_store(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    with pytest.raises(OSError):
        await missing.get_run("r1")
    await missing.aclose()


@pytest.mark.parametrize("synchronous", ["normal", "full"])  # trio thread / worker thread
@bounded(TIME_LIMIT)
async def test_sqlite_group_commit_merges_concurrent_batches(tmp_path: Path,
                                                             synchronous: str) -> None:
    store = SqliteStore(str(tmp_path / "g.db"), synchronous=synchronous)
    groups = count_groups(store)
    try:
        await store.get_run("warm-up")  # open the file first
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(store.commit, Batch(runs=[run(f"r{i}")]))
        assert sum(groups) == 50
        assert len(groups) <= 3, groups  # the first alone, the rest ride together
        assert all([await store.get_run(f"r{i}") for i in range(50)])
    finally:
        await store.aclose()


async def busy_committer(store: SqliteStore, release: trio.Event,
                         task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Hold the store's turn, as if a group commit were in flight, until ``release``."""
    async with store._turn:
        task_status.started()
        await release.wait()


@bounded(TIME_LIMIT)
async def test_sqlite_batches_are_staged_when_their_group_is_taken(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    groups = count_groups(store)
    produced = ["a"]  # what a producer has handed over so far
    staged: list[list[str]] = []
    errors: list[BaseException] = []

    def stage() -> Batch:
        staged.append(list(produced))
        return Batch(chunks=[chunks("r1", "default", 0, list(produced))])

    def broken() -> Batch:
        raise KeyError("only this caller's")

    async def commit(fn: Callable[[], Batch]) -> None:
        try:
            await store.commit_staged(fn)
        except KeyError as exc:
            errors.append(exc)

    try:
        await store.get_run("warm-up")
        release = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(busy_committer, store, release)
            for fn in (stage, broken, lambda: Batch(runs=[run("other")])):
                nursery.start_soon(commit, fn)
            await trio.testing.wait_all_tasks_blocked()
            assert staged == []  # waiting for the turn: nothing taken yet
            produced.append("b")  # handed over meanwhile: it rides in the same commit
            release.set()
        assert staged == [["a", "b"]]
        assert groups == [2]  # one transaction; the batch that failed to stage is not in it
        assert [str(exc) for exc in errors] == ['"only this caller\'s"']
        assert await store.read_chunks("r1", "default", 0, 5) == enc(["a", "b"])
        assert await store.get_run("other") is not None
    finally:
        await store.aclose()


@bounded(TIME_LIMIT)
async def test_sqlite_cancelled_commit_writes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "c.db"))
    try:
        await store.get_run("warm-up")
        release = trio.Event()
        scope = trio.CancelScope()

        async def commit_until_cancelled() -> None:
            with scope:
                await store.commit(Batch(runs=[run("cancelled")]))

        async with trio.open_nursery() as nursery:
            await nursery.start(busy_committer, store, release)
            nursery.start_soon(commit_until_cancelled)
            await trio.testing.wait_all_tasks_blocked()
            assert len(store._queue) == 1  # queued, waiting for the turn
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert scope.cancelled_caught
            assert store._queue == []
            release.set()
        await store.commit(Batch(runs=[run("after")]))
        assert await store.get_run("cancelled") is None
        assert await store.get_run("after") is not None
    finally:
        await store.aclose()


@bounded(TIME_LIMIT)
async def test_sqlite_commit_no_pause_joins_a_group_in_flight(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "j.db"))
    groups = count_groups(store)
    scope = trio.CancelScope()
    returned: list[str] = []
    try:
        await store.get_run("warm-up")
        release = trio.Event()

        async def cancelled_while_waiting() -> None:
            with scope:
                await store.commit_no_pause(Batch(runs=[run("c")]))
                returned.append("c")  # queued is taken: written whole, no Cancelled after

        async with trio.open_nursery() as nursery:
            await nursery.start(busy_committer, store, release)
            nursery.start_soon(store.commit_no_pause, Batch(runs=[run("a")]))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(store.commit_no_pause, Batch(runs=[run("b")]))
            nursery.start_soon(cancelled_while_waiting)
            await trio.testing.wait_all_tasks_blocked()
            assert len(store._queue) == 3  # waiting for the turn, like commit
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert groups == [3]  # all three rode in one transaction
        assert returned == ["c"]
        assert all([await store.get_run(r) for r in "abc"])
    finally:
        await store.aclose()


@bounded(TIME_LIMIT)
async def test_sqlite_aclose_lets_queued_commits_finish(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "q.db"))
    await store.get_run("warm-up")
    release = trio.Event()
    outcome: list[str] = []

    async def queued_commit(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await store.commit(Batch(runs=[run("queued")]))
        outcome.append("committed")

    async with trio.open_nursery() as nursery:
        await nursery.start(busy_committer, store, release)
        await nursery.start(queued_commit)
        nursery.start_soon(store.aclose)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert outcome == ["committed"]
    reopened = SqliteStore(str(tmp_path / "q.db"))
    try:
        assert await reopened.get_run("queued") is not None
    finally:
        await reopened.aclose()


@bounded(TIME_LIMIT)
async def test_sqlite_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "x.db"))
    await store.commit(Batch(runs=[run("r1")]))
    await store.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await store.commit(Batch(runs=[run("r2")]))
    with pytest.raises(trio.ClosedResourceError):
        await store.get_run("r1")
    assert not (tmp_path / "x.db-wal").exists()  # a clean close checkpoints the WAL


# --- run lists and waitpoint tokens (issue 20) ----------------------------------------------


async def _runs_for_listing(store: Store) -> None:
    batch = Batch(runs=[
        run("r1", task_id="a", created_at=1.0, tags=["x"]),
        run("r2", task_id="b", created_at=2.0, status="COMPLETED", finished_at=3.0),
        run("r3", task_id="a", created_at=3.0, tags=["x", "y"], status="FAILED",
            finished_at=4.0),
        run("r4", task_id="a", created_at=3.0),  # same time as r3: the id breaks the tie
        run("r5", task_id="b", created_at=5.0, tags=["y"]),
    ])
    await store.commit(batch)


async def _list(store: Store, limit: int = 100, cursor: str | None = None,
                **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
    every: dict[str, Any] = dict(task=None, status=None, tags=None, created_after=None,
                                 created_before=None)
    return await store.list_runs(**{**every, **filters}, limit=limit, cursor=cursor)


@bounded(TIME_LIMIT)
async def test_list_runs_filters_newest_first(store: Store) -> None:
    await _runs_for_listing(store)

    async def ids(**filters: Any) -> list[str]:
        return [r["id"] for r in (await _list(store, **filters))[0]]

    assert await ids() == ["r5", "r4", "r3", "r2", "r1"]
    assert await ids(task="a") == ["r4", "r3", "r1"]
    assert await ids(status=["COMPLETED", "FAILED"]) == ["r3", "r2"]
    assert await ids(tags=["x"]) == ["r3", "r1"]
    assert await ids(tags=["x", "y"]) == ["r3"]
    assert await ids(created_after=2.0, created_before=5.0) == ["r4", "r3"]
    assert await ids(task="nope") == []
    whole, cursor = await _list(store)
    assert cursor is None and whole[0]["task_id"] == "b"


@bounded(TIME_LIMIT)
async def test_list_runs_pages_are_stable_under_inserts(store: Store) -> None:
    await _runs_for_listing(store)
    first, cursor1 = await _list(store, 2)
    assert [r["id"] for r in first] == ["r5", "r4"] and cursor1
    await store.commit(Batch(runs=[run("r6", created_at=9.0), run("r0", created_at=0.5)]))
    second, cursor2 = await _list(store, 2, cursor1)
    assert [r["id"] for r in second] == ["r3", "r2"]
    third, cursor3 = await _list(store, 2, cursor2)
    assert [r["id"] for r in third] == ["r1", "r0"]
    last, end = await _list(store, 2, cursor3)  # a full page gives a cursor; this is empty
    assert last == [] and end is None
    tagged, tcursor = await _list(store, 1, tags=["x"])  # filtered pages too
    assert [r["id"] for r in tagged] == ["r3"]
    assert [r["id"] for r in (await _list(store, 1, tcursor, tags=["x"]))[0]] == ["r1"]
    for bad in ("", "nope", "1.0/", "x/r1"):
        with pytest.raises(ValueError, match="cursor"):
            await _list(store, 2, bad)


@bounded(TIME_LIMIT)
async def test_tokens_complete_once_and_honour_keys_and_expiry(store: Store) -> None:
    from runwire.engine.store import StoredToken

    token = StoredToken(id="wt1", created_at=1.0, expires_at=10.0, run_id="r1",
                        idempotency_key="k1", tags=("a",))
    assert await store.create_token(token) == token
    again = await store.create_token(StoredToken(id="wt2", created_at=2.0, idempotency_key="k1"))
    assert again == token  # the key's token, nothing new
    assert await store.get_token("wt2") is None
    assert await store.get_token("nope") is None
    done, now = await store.complete_token("wt1", b'{"ok":true}', 5.0)
    assert now and done is not None and done.status == "COMPLETED"
    assert done.data == b'{"ok":true}' and done.completed_at == 5.0 and done.tags == ("a",)
    second, now = await store.complete_token("wt1", b'"late"', 6.0)
    assert not now and second == done  # the first completion wins
    assert await store.complete_token("nope", b"1", 1.0) == (None, False)
    await store.create_token(StoredToken(id="wt3", created_at=1.0, expires_at=2.0))
    expired, now = await store.complete_token("wt3", b"1", 2.0)
    assert not now and expired is not None and expired.status == "WAITING"
    assert expired.timed_out(2.0)
    await store.create_token(StoredToken(id="wt4", created_at=1.0))  # no expiry
    assert (await store.complete_token("wt4", b"null", 1e12))[1]


@bounded(TIME_LIMIT)
async def test_tokens_go_with_their_run_and_free_ones_when_over(store: Store) -> None:
    from runwire.engine.store import StoredToken

    await store.commit(Batch(runs=[run("r1", status="COMPLETED", finished_at=5.0)]))
    await store.create_token(StoredToken(id="of-run", created_at=1.0, run_id="r1"))
    await store.create_token(StoredToken(id="free-old", created_at=1.0, expires_at=3.0))
    await store.create_token(StoredToken(id="free-new", created_at=1.0, expires_at=50.0))
    assert await store.delete_finished_before(10.0) == 1
    assert await store.get_token("of-run") is None
    assert await store.get_token("free-old") is None
    assert await store.get_token("free-new") is not None


@pytest.mark.parametrize("name", [n for n, k in STORES.items() if k.durable])
@bounded(TIME_LIMIT)
async def test_durable_stores_keep_tokens_across_reopen(name: str, tmp_path: Path) -> None:
    from runwire.engine.store import StoredToken

    first = STORES[name].make(tmp_path)
    try:
        await first.create_token(StoredToken(id="wt", created_at=1.0, expires_at=None))
        await first.complete_token("wt", b'"yes"', 2.0)
    finally:
        await first.aclose()
    again = STORES[name].make(tmp_path)
    try:
        token = await again.get_token("wt")
        assert token is not None and token.status == "COMPLETED" and token.data == b'"yes"'
    finally:
        await again.aclose()
# --- durable streams and listing runs (issue 16) ---------------------------------------------


def ds(path: str, **fields: Any) -> Any:
    from runwire.engine.store import DurableStream

    return DurableStream(path=path, content_type="text/plain", created_at=1.0,
                         accessed_at=1.0, **fields)


@bounded(TIME_LIMIT)
async def test_durable_streams_are_kept_with_items_and_producers(store: Store,
                                                                 kind: StoreKind,
                                                                 tmp_path: Path):
    from runwire.engine.store import StreamWrite

    assert await store.durable_streams() == []
    meta = ds("a", tail=5, nbytes=5, closed_by=("p", 1, 2))
    await store.commit(Batch(streams=[StreamWrite(meta, [(0, b"ab"), (2, b"cde")],
                                                  ("p", 1, 2))]))
    await store.commit(Batch(streams=[StreamWrite(ds("b", ttl=3))]))
    assert sorted(await store.durable_streams(), key=lambda s: s.path) == [meta, ds("b", ttl=3)]
    # the item holding the start first, then more until max_bytes; never past end
    assert await store.stream_items("a", 3, 5, 100) == [(2, b"cde")]
    assert await store.stream_items("a", 0, 5, 1) == [(0, b"ab")]
    assert await store.stream_items("a", 0, 2, 100) == [(0, b"ab")]
    assert await store.stream_items("nope", 0, 5, 100) == []
    assert await store.stream_producer("a", "p") == (1, 2)
    assert await store.stream_producer("a", "q") is None
    if kind.durable:
        await store.aclose()
        store = kind.make(tmp_path)
        assert (await store.stream_producer("a", "p")) == (1, 2)
        assert {s.path for s in await store.durable_streams()} == {"a", "b"}
    await store.commit(Batch(dropped_streams=["a"]))
    assert [s.path for s in await store.durable_streams()] == ["b"]
    assert await store.stream_items("a", 0, 5, 100) == []
    assert await store.stream_producer("a", "p") is None
    if kind.durable:
        await store.aclose()


def test_durable_stream_copy_keeps_every_field() -> None:
    from runwire.engine.store import DurableStream

    values = {f.name: f"v{i}" for i, f in enumerate(attrs.fields(DurableStream))}
    meta = DurableStream(**values)  # type: ignore[arg-type]
    copied = meta.copy()
    assert copied == meta == attrs.evolve(meta) and copied is not meta
    assert attrs.asdict(copied, recurse=False) == values  # a new field not copied fails


@bounded(TIME_LIMIT)
async def test_list_runs_filters_and_pages(store: Store):
    runs = [run(f"r{i}", task_id="t" if i % 2 else "u", created_at=float(i),
                tags=["x"] if i < 3 else [], status="COMPLETED" if i == 4 else "QUEUED")
            for i in range(6)]
    await store.commit(Batch(runs=runs))
    args: dict[str, Any] = dict(task=None, status=None, tags=None, created_after=None,
                                created_before=None, cursor=None)
    page, cursor = await store.list_runs(**{**args, "limit": 4})
    assert [r["id"] for r in page] == ["r5", "r4", "r3", "r2"] and cursor
    page, cursor = await store.list_runs(**{**args, "limit": 4, "cursor": cursor})
    assert [r["id"] for r in page] == ["r1", "r0"] and cursor is None
    assert [r["id"] for r in (await store.list_runs(**{**args, "limit": 9, "task": "t"}))[0]] \
        == ["r5", "r3", "r1"]
    assert [r["id"] for r in (await store.list_runs(**{**args, "limit": 9,
                                                       "status": ["COMPLETED"]}))[0]] == ["r4"]
    assert [r["id"] for r in (await store.list_runs(**{**args, "limit": 9,
                                                       "tags": ["x"]}))[0]] == ["r2", "r1", "r0"]
    assert [r["id"] for r in (await store.list_runs(**{
        **args, "limit": 9, "created_after": 1.0, "created_before": 4.0}))[0]] == ["r3", "r2"]
    with pytest.raises(ValueError, match="cursor"):
        await store.list_runs(**{**args, "limit": 9, "cursor": "bogus"})


@bounded(TIME_LIMIT)
async def test_one_durable_stream_its_count_and_a_producer_state(store: Store) -> None:
    from runwire.engine.store import DurableStream, StreamWrite

    assert await store.durable_stream("a") is None
    assert await store.count_durable_streams() == 0
    assert await store.durable_stream_state("a", "p") == (None, None)
    meta = DurableStream(path="a", content_type="text/plain", created_at=1.5,
                         accessed_at=2.0, ttl=60, tail=3, nbytes=3, closed_by=("p", 1, 4))
    await store.commit(Batch(streams=[StreamWrite(meta, [(0, b"abc")], ("p", 1, 4)),
                                      StreamWrite(attrs.evolve(meta, path="b"))]))
    assert await store.durable_stream("a") == meta
    assert await store.count_durable_streams() == 2
    assert await store.durable_stream_state("a", "p") == (meta, (1, 4))
    assert await store.durable_stream_state("a", "q") == (meta, None)
    await store.commit(Batch(dropped_streams=["b"]))
    assert await store.durable_stream("b") is None
    assert await store.count_durable_streams() == 1
