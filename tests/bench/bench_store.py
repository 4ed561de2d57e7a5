"""Store throughput through a real engine: ``memory://`` against ``sqlite:///``.

    python -m tests.bench.bench_store [--chunks 200000] [--repeat 5] [--synchronous normal]

Two shapes, each timed from trigger to the run's final status (so every chunk is committed):

* ``one-run``: one task pipes ``--chunks`` short string chunks (``"tok12345 "``) into its
  default stream; the actor coalesces them into batches.
* ``many-runs``: ``--runs`` runs at once share the same number of chunks; with SQLite their
  batches meet in group commits.

Then the latency of one small commit straight on the SQLite store (``--commits`` one-chunk
batches, one after the other), with ``synchronous=normal`` and ``full``: what each token of a
slow stream waits for before readers see it.

Every measurement runs in a fresh process (one engine's heap and garbage never slow the
next), stores interleaved, so both see the same machine. It prints wall chunks/s (best and
median) and CPU microseconds per chunk (user+sys of the whole process, every thread: on a
shared machine CPU time is steadier than wall time), and the ratio sqlite/memory of the
best wall rates (target >= 0.8). Not collected by pytest (``bench_*.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from runwire.engine import open_engine, open_store
from runwire.engine.store import Batch, ChunkAppend
from runwire import streams, task

from ._harness import REPO, percentile

API_KEY = "bench-store-key-0123456789"
TARGET = 0.8


@task(id="bench-pipe")
async def bench_pipe(payload: dict) -> int:
    n = payload["n"]
    await streams.pipe(f"tok{i:05d} " for i in range(n)).wait_until_complete()
    return n


async def _run_shape(store: str, chunks: int, runs: int) -> dict[str, float]:
    """Wall and CPU seconds from the first trigger to the last run's final status."""
    async with open_engine([bench_pipe], store=store, api_key=API_KEY) as eng:
        per_run = chunks // runs
        ids: list[str] = []

        async def one() -> None:
            record = await eng.trigger("bench-pipe", {"n": per_run})
            ids.append(record.id)
            final = await eng.wait_finished(record.id)
            assert final.status.value == "COMPLETED", final.error

        cpu0, wall0 = time.process_time(), time.perf_counter()  # CPU seconds, every thread
        async with trio.open_nursery() as nursery:
            for _ in range(runs):
                nursery.start_soon(one)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        for run_id in ids[:3]:  # spot check: every chunk is in the store, the stream ended
            state = (await eng.store.streams(run_id))["default"]
            assert state.length == per_run and state.ended, state
    return {"wall": wall, "cpu": cpu, "chunks": per_run * runs}


def _worker(kind: str, chunks: int, runs: int, synchronous: str) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    tmp = tempfile.mkdtemp(prefix="bench-store-")
    url = "memory://" if kind == "memory" else \
        f"sqlite:///{Path(tmp) / 'bench.db'}?synchronous={synchronous}"
    try:
        print(json.dumps(trio.run(_run_shape, url, chunks, runs)), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _spawn(kind: str, chunks: int, runs: int, synchronous: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_store", "--worker", kind, "--chunks",
         str(chunks), "--runs", str(runs), "--synchronous", synchronous],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(shape: str, args: argparse.Namespace) -> float:
    runs = 1 if shape == "one-run" else args.runs
    results: dict[str, list[dict[str, float]]] = {"memory": [], "sqlite": []}
    for _ in range(args.repeat):
        for kind, samples in results.items():
            samples.append(_spawn(kind, args.chunks, runs, args.synchronous))
    best: dict[str, float] = {}
    for kind, samples in results.items():
        rates = [s["chunks"] / s["wall"] for s in samples]
        cpu_us = [s["cpu"] / s["chunks"] * 1e6 for s in samples]
        best[kind] = max(rates)
        print(f"  {shape:<10} {kind:<7} {best[kind]:>10,.0f} chunks/s best "
              f"{statistics.median(rates):>10,.0f} median   "
              f"CPU {min(cpu_us):.2f} us/chunk best {statistics.median(cpu_us):.2f} median")
    ratio = best["sqlite"] / best["memory"]
    cpu_ratio = (min(s["cpu"] for s in results["memory"])
                 / min(s["cpu"] for s in results["sqlite"]))
    verdict = "ok" if ratio >= TARGET else f"BELOW TARGET {TARGET}"
    print(f"  {shape:<10} sqlite/memory = {ratio:.2f} wall, {cpu_ratio:.2f} by CPU  [{verdict}]")
    return ratio


async def _commit_latencies(synchronous: str, commits: int) -> list[float]:
    tmp = tempfile.mkdtemp(prefix="bench-store-")
    store = open_store(f"sqlite:///{Path(tmp) / 'latency.db'}?synchronous={synchronous}")
    try:
        await store.commit(Batch())  # open the file first
        seconds = []
        for i in range(commits):
            started = time.perf_counter()
            await store.commit(Batch(chunks=[ChunkAppend("run", "default", i, [b'"tok"'], 5)]))
            seconds.append(time.perf_counter() - started)
        return seconds
    finally:
        await store.aclose()
        shutil.rmtree(tmp, ignore_errors=True)


def _latency(commits: int) -> None:
    for synchronous in ("normal", "full"):
        got = trio.run(_commit_latencies, synchronous, commits)
        p50, p99 = percentile(got, 50), percentile(got, 99)
        print(f"  commit     synchronous={synchronous:<6} p50 {p50 * 1e6:6.0f} us   "
              f"p99 {p99 * 1e6:6.0f} us   ({commits} one-chunk commits)")


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=100, help="runs in the many-runs shape")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--synchronous", default="normal", choices=["normal", "full"])
    parser.add_argument("--commits", type=int, default=500, help="for the latency part")
    parser.add_argument("--worker", choices=["memory", "sqlite"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.chunks, args.runs, args.synchronous)
    print(f"{args.chunks:,} chunks, sqlite synchronous={args.synchronous}, "
          f"{args.repeat} fresh processes per store and shape")
    for shape in ("one-run", "many-runs"):
        _measure(shape, args)
    _latency(args.commits)


if __name__ == "__main__":
    main()
