"""The Redis store (``redis://host:port/db``) on a real redis-server: an engine on it, the
startup checks (unreachable, wrong database, eviction on), Redis out of memory, Redis gone
and back. The store contract itself runs on Redis in ``test_store_contract.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from runwire import Queue, streams, task
from runwire.engine import open_engine
from runwire.engine.store import (
    Batch, ChunkAppend, StoreConfigError, StoreFullError, StoreUnavailableError, open_store,
)

from .helpers import API_KEY, bounded, final, serve
from .redisserver import RedisServer, free_port, redis_url, require_redis

ai = streams.define(id="ai", type=str)
answer = streams.input(id="answer", type=str)


@task(id="redis.stream")
async def stream_task(payload: dict[str, Any]) -> str:
    await ai.pipe(f"c{i}" for i in range(payload["n"])).wait_until_complete()
    got = (await answer.wait(timeout="1h")).unwrap()
    return got


@bounded(30)
async def test_an_engine_on_redis_runs_streams_and_inputs_and_a_new_engine_reads_them() -> None:
    url = redis_url()
    async with serve([stream_task], store=url):
        run = await stream_task.trigger({"n": 300})
        seen = []
        async for chunk in await ai.read(run.id):
            seen.append(chunk)
            if len(seen) == 300:
                break
        assert seen == [f"c{i}" for i in range(300)]
        await answer.send(run.id, "yes")
        assert (await final(run.id)).output == "yes"
    async with serve([stream_task], store=url):
        from runwire import runs

        stored = await runs.retrieve(run.id)
        assert stored.status.value == "COMPLETED" and stored.output == "yes"
        assert await (await ai.read(run.id)).collect() == [f"c{i}" for i in range(300)]


@bounded(20)
async def test_unreachable_redis_is_a_clear_error_at_startup() -> None:
    require_redis()
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        async with open_engine([], store=url, api_key=API_KEY):
            pass


@bounded(20)
async def test_a_database_redis_does_not_have_is_a_clear_error() -> None:
    url = redis_url().replace("/0?", "/99?")
    with pytest.raises(StoreConfigError, match="no database 99"):
        async with open_engine([], store=url, api_key=API_KEY):
            pass


def test_bad_redis_urls() -> None:
    for bad in ("redis://", "redis://host/x", "redis://host/0?foo=1", "redis://host:99999/0",
                "redis://host/0?lease_ttl=0.1", "redis://host/0?lease_ttl=x",
                "redis://host/0?prefix=", "redis://host/-1", "rediss://host/0"):
        with pytest.raises(StoreConfigError):
            open_store(bad)
    from runwire.engine.store._redis import parse_redis_url

    got = parse_redis_url("redis://u:p%40ss@h:7000/3?prefix=app&lease_ttl=2.5")
    assert (got.host, got.port, got.db, got.username, got.password, got.prefix,
            got.lease_ttl) == ("h", 7000, 3, "u", "p@ss", "app:", 2.5)
    assert str(got) == "redis://h:7000/3"  # the password is never shown


@pytest.fixture(scope="module")
def lru_redis() -> Any:
    server = RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    yield server
    server.kill()


@bounded(20)
async def test_redis_that_evicts_is_refused(lru_redis: RedisServer) -> None:
    with pytest.raises(StoreConfigError, match="noeviction"):
        async with open_engine([], store=lru_redis.url, api_key=API_KEY):
            pass


def test_cli_says_what_is_wrong_without_a_traceback(lru_redis: RedisServer) -> None:
    for url, words in ((f"redis://127.0.0.1:{free_port()}/0", "unreachable"),
                       (lru_redis.url, "maxmemory-policy allkeys-lru")):
        done = subprocess.run(
            [sys.executable, "-m", "runwire.engine", "serve", "--store", url, "--port", "0",
             "--api-key", API_KEY], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr


@bounded(30)
async def test_redis_out_of_memory_refuses_whole_batches_and_keeps_what_it_acked() -> None:
    server = RedisServer("--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    store = open_store(server.url)
    try:
        acked: list[bytes] = []
        item = b'"' + b"x" * 20_000 + b'"'
        with pytest.raises(StoreFullError, match="out of memory"):
            for _ in range(1000):
                batch = [item] * 5
                await store.commit(Batch(chunks=[ChunkAppend("r1", "s", len(acked), batch,
                                                             len(item) * 5)]))
                acked.extend(batch)
        assert 0 < len(acked) < 5000
        assert (await store.streams("r1"))["s"].length == len(acked)  # nothing half-written
        assert await store.read_chunks("r1", "s", 0, 10_000) == acked
        server.command("CONFIG", "SET", "maxmemory", "0")  # the operator adds memory
        await store.commit(Batch(chunks=[ChunkAppend("r1", "s", len(acked), [b"1"], 1)]))
        assert (await store.streams("r1"))["s"].length == len(acked) + 1
    finally:
        await store.aclose()
        server.kill()


@bounded(40)
async def test_redis_gone_is_a_clear_error_and_the_store_reconnects_when_it_is_back(
        tmp_path: Path) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always", directory=tmp_path)
    store = open_store(server.url)
    try:
        await store.commit(Batch(chunks=[ChunkAppend("r1", "s", 0, [b"1", b"2"], 2)]))
        server.kill()
        with pytest.raises(StoreUnavailableError, match="unreachable|failed"):
            await store.read_chunks("r1", "s", 0, 10)
        with pytest.raises(StoreUnavailableError):
            await store.commit(Batch(chunks=[ChunkAppend("r1", "s", 2, [b"3"], 1)]))
        server.start()  # same port, same directory: the AOF brings the data back
        for _ in range(100):
            try:
                got = await store.read_chunks("r1", "s", 0, 10)
                break
            except StoreUnavailableError:
                await trio.sleep(0.1)
        assert got == [b"1", b"2"]
        await store.commit(Batch(chunks=[ChunkAppend("r1", "s", 2, [b"3"], 1)]))
        assert await store.read_chunks("r1", "s", 0, 10) == [b"1", b"2", b"3"]
    finally:
        await store.aclose()
        server.kill()


@bounded(60)
async def test_an_engine_rides_out_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always", directory=tmp_path)
    url = server.url + "?lease_ttl=1"
    try:
        async with serve([stream_task], store=url) as eng:
            first = await stream_task.trigger({"n": 3})
            with trio.fail_after(10):
                while (await eng.get_record(first.id)).status.value != "WAITING":
                    await trio.sleep(0.05)
            server.kill()
            from runwire import RunwireError
            with pytest.raises(RunwireError) as refused:  # the engine lives on
                await stream_task.trigger({"n": 1})
            print("while Redis is down:", repr(refused.value))
            server.start()
            with trio.fail_after(20):
                while True:
                    try:
                        second = await stream_task.trigger({"n": 2})
                        break
                    except RunwireError:
                        await trio.sleep(0.2)
            await answer.send(first.id, "one")
            await answer.send(second.id, "two")
            assert (await final(first.id)).output == "one"
            assert (await final(second.id)).output == "two"
            assert await (await ai.read(first.id)).collect() == ["c0", "c1", "c2"]
    finally:
        server.kill()


solo = Queue("redis-solo", concurrency_limit=1)


HOLD: dict[str, trio.Event] = {}


@task(id="redis.queued", queue=solo)
async def queued(payload: dict[str, Any]) -> str:
    if payload.get("hold"):  # executing, holding the queue's slot (a wait() would free it)
        await HOLD["go"].wait()
    return str(payload.get("name"))


@bounded(40)
async def test_a_queue_limit_holds_across_engines() -> None:
    url = redis_url() + "&lease_ttl=1"
    HOLD["go"] = trio.Event()
    async with open_engine([queued], store=url, api_key=API_KEY) as a, \
            open_engine([queued], store=url, api_key=API_KEY) as b:
        hog = await a.trigger("redis.queued", {"hold": True, "name": "hog"})
        with trio.fail_after(10):
            while (await a.get_record(hog.id)).status.value != "EXECUTING":
                await trio.sleep(0.05)
        behind = await b.trigger("redis.queued", {"name": "behind"})
        await trio.sleep(1.5)  # longer than a lease: renewed, the slot stays taken
        assert (await b.get_record(behind.id)).status.value == "QUEUED"
        assert a.broker.statistics().queues["redis-solo"] == (1, 1)
        HOLD["go"].set()
        assert (await a.wait_finished(hog.id)).output == "hog"
        with trio.fail_after(10):
            assert (await b.wait_finished(behind.id)).output == "behind"


@bounded(30)
async def test_an_engine_that_lost_a_lease_abandons_the_run_without_a_word() -> None:
    from .redisserver import shared_redis

    HOLD["go"] = trio.Event()
    url = redis_url("lost") + "&lease_ttl=1"
    async with open_engine([queued], store=url, api_key=API_KEY) as eng:
        run = await eng.trigger("redis.queued", {"hold": True, "name": "x"})
        with trio.fail_after(10):
            while (await eng.get_record(run.id)).status.value != "EXECUTING":
                await trio.sleep(0.05)
        # another engine took the run while this one could not renew (Redis away)
        assert shared_redis().command("SET", f"lost:lease:{{{run.id}}}", "other") == b"+OK\r\n"
        with trio.fail_after(10):
            while eng.statistics().live_runs:
                await trio.sleep(0.05)
        stored = await eng.store.get_run(run.id)
        assert stored is not None and stored["status"] == "EXECUTING"  # left to the other


@bounded(30)
async def test_one_idempotency_key_makes_one_run_across_engines() -> None:
    HOLD["go"] = trio.Event()
    url = redis_url()
    async with open_engine([queued], store=url, api_key=API_KEY) as a, \
            open_engine([queued], store=url, api_key=API_KEY) as b:
        got: list[str] = []

        async def trigger(eng: Any) -> None:
            run = await eng.trigger("redis.queued", {"hold": True, "name": "k"},
                                    {"idempotency_key": "once"})
            got.append(run.id)

        for _ in range(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trigger, a)
                nursery.start_soon(trigger, b)
        assert len(set(got)) == 1, got
        assert a.statistics().live_runs + b.statistics().live_runs == 1
        listed, _ = await a.service.list_runs(task="redis.queued")
        assert [r["id"] for r in listed] == got[:1]
        HOLD["go"].set()


@bounded(20)
async def test_a_chunk_with_a_raw_newline_is_refused_whole() -> None:
    from runwire.engine.store import NotCompactError

    store = open_store(redis_url())
    try:
        with pytest.raises(NotCompactError):
            await store.commit(Batch(runs=[{"id": "r1", "task_id": "t", "status": "QUEUED",
                                            "created_at": 1.0}],
                                     chunks=[ChunkAppend("r1", "s", 0, [b"1", b'"a\nb"'], 7)]))
        assert await store.get_run("r1") is None and await store.streams("r1") == {}
    finally:
        await store.aclose()


@task(id="redis.token")
async def token_task(payload: dict[str, Any]) -> Any:
    from runwire import metadata, wait

    token = await wait.create_token(timeout="1h")
    metadata.set("token", token.id)
    return (await wait.for_token(token)).output


@bounded(30)
async def test_a_token_completed_on_one_engine_wakes_the_run_on_another() -> None:
    url = redis_url()
    async with open_engine([token_task], store=url, api_key=API_KEY) as a, \
            open_engine([token_task], store=url, api_key=API_KEY) as b:
        run = await a.trigger("redis.token", {})
        with trio.fail_after(10):
            while True:
                record = await b.get_record(run.id)  # as stored: B does not execute it
                if record.status.value == "WAITING" and "token" in record.metadata:
                    break
                await trio.sleep(0.05)
        routed, served = b.broker.routed, a.broker.served
        token, completed = await b.service.complete_waitpoint(record.metadata["token"],
                                                              {"ok": 1})
        assert completed and token.status == "COMPLETED"
        assert (b.broker.routed, a.broker.served) == (routed + 1, served + 1)  # A was told
        assert (await b.wait_finished(run.id)).output == {"ok": 1}


@bounded(30)
async def test_a_graceful_stop_hands_runs_to_another_engine_as_the_same_attempt() -> None:
    url = redis_url() + "&lease_ttl=1"
    async with open_engine([stream_task], store=url, api_key=API_KEY) as b:
        async with open_engine([stream_task], store=url, api_key=API_KEY) as a:
            run = await a.trigger("redis.stream", {"n": 2})
            with trio.fail_after(10):
                while (await b.get_record(run.id)).status.value != "WAITING":
                    await trio.sleep(0.05)
        # A stopped: its lease went with it, and B resumes the run in its wait
        with trio.fail_after(10):
            while b.run_statistics(run.id) is None:
                await trio.sleep(0.05)
        await b.send_input(run.id, "answer", "to B")
        done = await b.wait_finished(run.id)
        assert done.output == "to B" and done.attempt == 1
        # the replay on B did not write A's chunks again
        assert await b.store.read_chunks(run.id, "ai", 0, 10) == [b'"c0"', b'"c1"']


@bounded(20)
async def test_a_durable_stream_write_from_stale_metadata_is_refused_whole() -> None:
    from runwire.engine.store import DurableStream, IndexGapError, StreamWrite

    store = open_store(redis_url())
    try:
        meta = DurableStream(path="p", content_type="text/plain", created_at=1.0,
                             accessed_at=1.0, tail=2, nbytes=2)
        await store.commit(Batch(streams=[StreamWrite(meta, [(0, b"ab")])]))
        # another engine, with the stream as it was before that write, appends
        stale = attrs.evolve(meta, tail=1, nbytes=1)
        with pytest.raises(IndexGapError, match="another engine"):
            await store.commit(Batch(streams=[StreamWrite(stale, [(0, b"x")])]))
        # or creates it again over the first one
        again = attrs.evolve(meta, created_at=5.0, tail=0, nbytes=0)
        with pytest.raises(IndexGapError):
            await store.commit(Batch(streams=[StreamWrite(again)]))
        assert await store.stream_items("p", 0, 10, 100) == [(0, b"ab")]
        assert [s.tail for s in await store.durable_streams()] == [2]
        # dropped and made again in one batch is no conflict
        await store.commit(Batch(dropped_streams=["p"], streams=[StreamWrite(again)]))
        assert [s.created_at for s in await store.durable_streams()] == [5.0]
    finally:
        await store.aclose()


@bounded(20)
async def test_a_checked_durable_stream_write_applies_only_over_what_it_was_made_from() -> None:
    from runwire.engine.store import DurableStream, IndexGapError, StreamWrite

    store = open_store(redis_url())
    try:
        meta = DurableStream(path="c", content_type="text/plain", created_at=1.0,
                             accessed_at=1.0)
        made = StreamWrite(meta, checked=True)  # expected None: no stream there
        await store.commit(Batch(streams=[made]))
        with pytest.raises(IndexGapError, match="created by another engine"):
            await store.commit(Batch(streams=[made]))
        stored = await store.durable_stream("c")
        assert stored == meta
        one = attrs.evolve(stored, tail=1, nbytes=1, accessed_at=2.0)
        await store.commit(Batch(streams=[StreamWrite(one, [(0, b"a")], checked=True,
                                                      expected=stored)]))
        # a second write made from the same (now old) metadata, with a producer: refused
        # whole, its items and its producer state not written
        two = attrs.evolve(stored, tail=1, nbytes=1, accessed_at=3.0)
        with pytest.raises(IndexGapError, match="changed by another engine"):
            await store.commit(Batch(streams=[StreamWrite(two, [(0, b"b")], ("p", 0, 0),
                                                          checked=True, expected=stored)]))
        assert await store.stream_items("c", 0, 10, 100) == [(0, b"a")]
        assert await store.durable_stream_state("c", "p") == (one, None)
        # dropped since: a checked write of it is refused too (it would re-create it)
        await store.commit(Batch(dropped_streams=["c"]))
        with pytest.raises(IndexGapError):
            await store.commit(Batch(streams=[StreamWrite(attrs.evolve(one, tail=2), [(1, b"c")],
                                                          checked=True, expected=one)]))
        assert await store.durable_stream("c") is None
    finally:
        await store.aclose()


@task(id="redis.feeder")
async def feeder(payload: dict[str, Any]) -> str:
    """Pipes into a stream of another run (``target=``), wherever that run executes."""
    await ai.pipe((f"f{i}" for i in range(payload["n"])),
                  target=payload["run"]).wait_until_complete()
    return "fed"


@bounded(30)
async def test_a_task_writes_into_a_run_executing_on_another_engine() -> None:
    url = redis_url()
    async with open_engine([stream_task, feeder], store=url, api_key=API_KEY) as a, \
            open_engine([stream_task, feeder], store=url, api_key=API_KEY) as b:
        target = await b.trigger("redis.stream", {"n": 0})  # executes on B
        fed = await a.trigger("redis.feeder", {"n": 600, "run": target.id})  # on A
        assert (await a.wait_finished(fed.id)).output == "fed"
        assert await a.store.read_chunks(target.id, "ai", 0, 1000) == [
            f'"f{i}"'.encode() for i in range(600)]
        await a.send_input(target.id, "answer", "done")
        assert (await a.wait_finished(target.id)).output == "done"
        missing = await a.trigger("redis.feeder", {"n": 1, "run": "run_nope"})
        assert (await a.wait_finished(missing.id)).status.value == "FAILED"
