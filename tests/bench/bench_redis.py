"""The Redis store and many engines on one Redis (a redis-server this benchmark starts).

1. **One engine, Redis vs SQLite**: ``bench_throughput``'s pipe variant (a task pipes short
   chunks; a reader in another process reads them over a websocket) on an engine with
   ``redis://`` and one with ``sqlite:///``, interleaved; chunks/s and the ratio (target
   >= 0.5x). Round trips per commit cycle and chunks per commit come from Redis' own
   counters (``INFO commandstats``): commands sent by clients (those the Lua scripts run
   inside Redis left out) over commit cycles (each publishes the run's wake-up once).
2. **Reads across engines**: a stored stream of ``chunks`` chunks, read to its end by
   ``readers`` reader processes at once: all on engine A, then half on A and half on B (B
   reads A's run from Redis). Chunks delivered per second in all, engine CPU and Redis CPU
   (``INFO cpu``) per chunk delivered, and the engines one Redis carries for this load
   (engine CPU per chunk / Redis CPU per chunk: how many engine cores keep one Redis core
   busy). On a 2-core machine the readers, the engines and Redis share the cores, so the
   two-engine reads/s ratio says little; the CPU figures are the ones to trust.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import trio

from runwire import connect, runs, tasks
from runwire.engine.store import open_store

from ._harness import (
    API_KEY, Report, emit, engine_stores, read_commands, serving, spawn, spawn_engine,
    worker_main,
)

NAME = "redis"
#: Commands only the Lua scripts run (Redis counts them in its command statistics too).
INSIDE_SCRIPTS = {"xadd", "hincrby", "hset", "hget", "publish", "sadd", "srem", "zadd", "set",
                  "del", "pexpire", "hdel", "zrem", "zremrangebyscore", "zcard", "exists",
                  "time", "rpush", "get", "smembers", "zrangebyscore", "xrange", "xrevrange"}
THROUGHPUT = "tests.bench.bench_throughput"


@attrs.frozen
class Params:
    chunks: int = 100_000
    repeat: int = 5
    read_chunks: int = 50_000
    readers: int = 4


FULL = Params()
QUICK = Params(chunks=30_000, repeat=3, read_chunks=20_000, readers=4)
SMOKE = Params(chunks=1_000, repeat=1, read_chunks=1_000, readers=2)


# --- workers -------------------------------------------------------------------------------


async def _make(args: dict[str, Any]) -> dict[str, Any]:
    """Store a finished stream of ``n`` chunks; its run id."""
    async with connect(args["url"], api_key=API_KEY):
        handle = await tasks.trigger("bench-pipe", {"n": args["n"]})
        while not (await runs.retrieve(handle.id)).is_finished:
            await trio.sleep(0.05)
        return {"run": handle.id}


async def _read(args: dict[str, Any]) -> dict[str, Any]:
    from .bench_throughput import ai

    async with connect(args["url"], api_key=API_KEY):
        emit("WARM")
        await trio.to_thread.run_sync(read_commands)  # "go": every reader starts at once
        cpu0, t0 = time.process_time(), time.perf_counter()
        count = 0
        async for _ in await ai.read(args["run"], timeout_in_seconds=300):
            count += 1
        return {"chunks": count, "seconds": time.perf_counter() - t0,
                "cpu_s": time.process_time() - cpu0}


def worker(role: str, args: dict[str, Any]) -> None:
    emit("RESULT", trio.run({"make": _make, "read": _read}[role], args))


# --- Redis' own counters -------------------------------------------------------------------


def redis_counters(url: str) -> dict[str, float]:
    """Commands processed, EVALSHA calls and CPU seconds of the Redis at ``url``."""

    async def fetch() -> dict[str, float]:
        store = open_store(url)
        try:
            client = await store.client()  # type: ignore[attr-defined]
            info = await client.info("stats", "cpu", "commandstats")
        finally:
            await store.aclose()
        calls = {name[8:]: float(v.get("calls", 0)) for name, v in info.items()
                 if name.startswith("cmdstat_") and isinstance(v, dict)}
        # commands from clients: not those the scripts run inside Redis (counted there
        # too), not INFO (these counters' own)
        trips = sum(n for cmd, n in calls.items() if cmd not in INSIDE_SCRIPTS | {"info"})
        # each commit cycle publishes once for the one run it writes (the wake-up)
        return {"round_trips": trips, "commits": calls.get("publish", 0.0),
                "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"])}

    return trio.run(fetch)


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}  # (the counters' INFO is left out)


# --- orchestration -------------------------------------------------------------------------


def run(params: Params = FULL) -> Report:
    from tests.redisserver import RedisServer, SERVER

    report = Report(NAME)
    if SERVER is None:
        if "PYTEST_CURRENT_TEST" in os.environ:  # the smoke test: skipped, or failed under CI
            from tests.redisserver import require_redis
            require_redis()
        report.skipped = "redis-server is not installed"
        return report
    redis = RedisServer("--maxmemory-policy", "noeviction")
    try:
        _one_engine(report, params, redis.url)
        _two_engines(report, params, redis.url)
    finally:
        redis.kill()
    return report


def _one_engine(report: Report, params: Params, redis_url: str) -> None:
    stores = {"redis": redis_url + "?prefix=tput", **engine_stores(report, ["sqlite"])}
    servers = {name: spawn_engine(store=url, tasks=[THROUGHPUT]) for name, url in stores.items()}
    rates: dict[str, list[float]] = {}
    per_commit: list[float] = []
    redis_cpu: list[float] = []
    engine_cpu: dict[str, list[float]] = {}
    chunks_per_commit: list[float] = []
    with serving(servers) as urls:
        for _ in range(params.repeat):
            for name in stores:
                before = redis_counters(redis_url)  # the warm-up's 100 chunks count too
                cpu0 = servers[name].cpu_seconds()
                with spawn(THROUGHPUT, "read", url=urls[name], task="bench-pipe",
                           n=params.chunks) as client:
                    client.expect("WARM", 600)
                    result = client.expect("RESULT", 600)
                    client.wait()
                    counts = _delta(before, redis_counters(redis_url))
                engine_cpu.setdefault(name, []).append(
                    (servers[name].cpu_seconds() - cpu0) / (params.chunks + 100) * 1e6)
                rates.setdefault(name, []).append(result["rate"])
                if name == "redis" and counts["commits"]:
                    per_commit.append(counts["round_trips"] / counts["commits"])
                    chunks_per_commit.append((params.chunks + 100) / counts["commits"])
                    redis_cpu.append(counts["cpu"] / (params.chunks + 100) * 1e6)
    for name, samples in rates.items():
        report.add(f"one engine, {name} pipe: chunks/s", "chunks/s", samples)
    if "sqlite" in rates:
        report.ratio("redis pipe vs sqlite pipe (one engine)", "one engine, redis pipe: "
                     "chunks/s", "one engine, sqlite pipe: chunks/s", 0.5)
    report.add("redis: round trips per commit cycle (client commands / commits)", "trips",
               per_commit, higher_is_better=False)
    report.add("redis: chunks per commit cycle", "chunks", chunks_per_commit)
    for name, samples in engine_cpu.items():
        report.add(f"one engine, {name} pipe: engine CPU/chunk written and read", "us",
                   samples, higher_is_better=False)
    report.add("one engine, redis pipe: Redis CPU/chunk written", "us", redis_cpu,
               higher_is_better=False)


def _two_engines(report: Report, params: Params, redis_url: str) -> None:
    url = redis_url + "?prefix=reads"
    servers = {"a": spawn_engine(store=url, tasks=[THROUGHPUT]),
               "b": spawn_engine(store=url, tasks=[THROUGHPUT])}
    with serving(servers) as urls:
        run_id = _client(__name__, "make", url=urls["a"], n=params.read_chunks)["run"]
        for label, where in (("one engine", ["a"] * params.readers),
                             ("two engines", [["a", "b"][i % 2]
                                              for i in range(params.readers)])):
            for _ in range(params.repeat):
                readers = [spawn(__name__, "read", url=urls[e], run=run_id) for e in where]
                try:
                    for reader in readers:
                        reader.expect("WARM", 120)
                    cpu0 = {e: servers[e].cpu_seconds() for e in servers}
                    before = redis_counters(redis_url)
                    t0 = time.perf_counter()
                    for reader in readers:
                        reader.send("go")
                    results = [r.expect("RESULT", 600) for r in readers]
                    seconds = time.perf_counter() - t0
                    counts = _delta(before, redis_counters(redis_url))
                    engine_cpu = sum(servers[e].cpu_seconds() - cpu0[e] for e in servers)
                finally:
                    for reader in readers:
                        reader.close()
                total = sum(r["chunks"] for r in results)
                assert total == params.read_chunks * params.readers, results
                _sample(report, f"{label}: reads/s", "chunks/s", total / seconds)
                _sample(report, f"{label}: engine CPU/chunk read", "us",
                        engine_cpu / total * 1e6, higher_is_better=False)
                _sample(report, f"{label}: Redis CPU/chunk read", "us",
                        counts["cpu"] / total * 1e6, higher_is_better=False)
                _sample(report, f"{label}: engines one Redis carries", "engines",
                        engine_cpu / counts["cpu"] if counts["cpu"] > 0 else 0.0)
    report.ratio("two engines vs one engine: reads/s", "two engines: reads/s",
                 "one engine: reads/s", 1.6)
    report.notes.append("reads across engines: 2 cores shared by the readers, the engines and "
                        "Redis; the CPU per chunk figures are the ones to trust")


def _sample(report: Report, name: str, unit: str, value: float, **kw: Any) -> None:
    try:
        report.figure(name).samples.append(value)
    except KeyError:
        report.add(name, unit, [value], **kw)


def _client(module: str, role: str, **args: Any) -> dict[str, Any]:
    with spawn(module, role, **args) as client:
        result = client.expect("RESULT", 600)
        client.wait()
        return result


if __name__ == "__main__":
    worker_main(worker)
