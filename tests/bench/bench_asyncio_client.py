"""The client under asyncio against the client under trio, same engine, same run.

    python -m tests.bench.bench_asyncio_client [--quick]

An engine (memory store) serves from a process of its own. In this process the same client
code runs under ``anyio.run(..., backend="trio")`` (trio-websocket) and under
``backend="asyncio"`` (websockets), alternately, ``repeat`` times each:

- **read throughput**: a run pipes ``chunks`` short string chunks; once it has finished, the
  client reads the whole stream (chunks per second, from the first to the last chunk);
- **trigger round trip**: ``noop.trigger_and_wait(None)`` called ``triggers`` times in a row
  (median and p90 per call, in milliseconds).

The rounds are interleaved (trio, asyncio, trio, ...) so that drift of a busy machine hits
both alike. Reported: the median over the repetitions of each figure, the asyncio/trio ratio
of those medians (the target is >= 0.8: throughput asyncio/trio, and for the round trip
trio's median over asyncio's), and each repetition's own ratio, so the spread is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import attrs

from runwire import connect, streams, task

API_KEY = "bench-asyncio-key-0123456789"
TOKENS = streams.define(id="tokens", type=str)


@attrs.frozen
class Params:
    chunks: int = 200_000
    triggers: int = 1_000
    repeat: int = 5


FULL = Params()
QUICK = Params(chunks=50_000, triggers=300, repeat=2)
TINY = Params(chunks=500, triggers=10, repeat=1)


@task(id="bench-tokens")
async def tokens(payload: Any) -> None:
    await TOKENS.pipe(f"tok{i:07d} " for i in range(payload)).wait_until_complete()


@task(id="bench-noop")
async def noop(payload: Any) -> None:
    return None


ENGINE = """
import sys, trio
from runwire.engine import open_engine
from tests.bench.bench_asyncio_client import API_KEY, noop, tokens

async def main():
    async with open_engine([noop, tokens], api_key=API_KEY, port=0) as engine:
        print(engine.url, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)

trio.run(main)
"""


async def _one_round(url: str, params: Params) -> dict[str, Any]:
    async with connect(url, api_key=API_KEY):
        handle = await tokens.trigger(params.chunks)
        await tokens.trigger_and_wait(10)  # warm-up (and the first run is well under way)
        async for run in __import__("runwire").runs.subscribe_to_run(handle.id):
            if run.is_finished:
                break
        start = time.perf_counter()
        count = 0
        async for _ in await TOKENS.read(handle.id):
            count += 1
        read_s = time.perf_counter() - start
        assert count == params.chunks, count
        laps = []
        for _ in range(params.triggers):
            t0 = time.perf_counter()
            result = await noop.trigger_and_wait(None)
            laps.append(time.perf_counter() - t0)
            assert result.ok
    laps.sort()
    return {"read_per_s": count / read_s, "trigger_p50_ms": statistics.median(laps) * 1e3,
            "trigger_p90_ms": laps[int(len(laps) * 0.9)] * 1e3}


def measure(params: Params) -> dict[str, Any]:
    """Both backends against one engine process; medians over interleaved repetitions."""
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", ENGINE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("ws://"), url
        rounds: dict[str, list[dict[str, Any]]] = {"trio": [], "asyncio": []}
        for _ in range(params.repeat):
            for backend in rounds:
                rounds[backend].append(anyio.run(_one_round, url, params, backend=backend))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(30)
    figures = ("read_per_s", "trigger_p50_ms", "trigger_p90_ms")
    results: dict[str, Any] = {
        backend: {name: statistics.median(r[name] for r in reps) for name in figures}
        for backend, reps in rounds.items()}
    results["ratio"] = {
        "read": results["asyncio"]["read_per_s"] / results["trio"]["read_per_s"],
        "trigger": results["trio"]["trigger_p50_ms"] / results["asyncio"]["trigger_p50_ms"]}
    results["repetitions"] = [
        {"read": a["read_per_s"] / t["read_per_s"],
         "trigger": t["trigger_p50_ms"] / a["trigger_p50_ms"]}
        for t, a in zip(rounds["trio"], rounds["asyncio"])]
    return {"params": attrs.asdict(params), "results": results, "rounds": rounds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    params = TINY if args.smoke else QUICK if args.quick else FULL
    report = measure(params)
    res = report["results"]
    for backend in ("trio", "asyncio"):
        r = res[backend]
        print(f"{backend:8} read {r['read_per_s']:>12,.0f} chunks/s   trigger round trip "
              f"p50 {r['trigger_p50_ms']:.3f} ms  p90 {r['trigger_p90_ms']:.3f} ms")
    print(f"asyncio/trio (medians of {params.repeat}): read {res['ratio']['read']:.2f}x, "
          f"trigger round trip {res['ratio']['trigger']:.2f}x (target >= 0.8)")
    print("each repetition: read " + ", ".join(f"{r['read']:.2f}x" for r in res["repetitions"])
          + "; trigger " + ", ".join(f"{r['trigger']:.2f}x" for r in res["repetitions"]))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
