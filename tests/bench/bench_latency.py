"""Latency: a writer paced at 1,000 chunks/s; p50/p99 of append-to-receive in the reader.

Each chunk is ``[index, time.time_ns()]`` taken just before the writer hands it over (the
wall clock, because writer and reader are different processes on one machine). The reader
(``runwire.connect`` + ``read``, another process) subtracts it from the arrival time. Variants:
``pipe`` from a paced async generator and ``await append`` per chunk, on ``memory://`` and
``sqlite://``. Baseline: the same pacing over a bare trio-websocket connection, one chunk per
message.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from runwire import connect, streams, task, tasks

from ._baselines import latency_summary
from ._harness import (
    API_KEY,
    Report,
    engine_stores,
    run_client,
    serving,
    spawn,
    spawn_engine,
    trio_worker,
    worker_main,
)

NAME = "latency"
stamps = streams.define(id="stamps")


@attrs.frozen
class Params:
    chunks: int = 5_000
    rate: float = 1_000.0
    repeat: int = 3
    stores: tuple[str, ...] = ("memory", "sqlite")


FULL = Params()
QUICK = Params(chunks=2_000, repeat=2)
SMOKE = Params(chunks=100, repeat=1, stores=("memory",))


async def paced(n: int, rate: float) -> AsyncIterator[list[int]]:
    start = trio.current_time()
    for i in range(n):
        await trio.sleep_until(start + i / rate)
        yield [i, time.time_ns()]


@task(id="bench-paced-pipe")
async def paced_pipe(payload: dict[str, Any]) -> int:
    await stamps.pipe(paced(payload["n"], payload["rate"])).wait_until_complete()
    return payload["n"]


@task(id="bench-paced-append")
async def paced_append(payload: dict[str, Any]) -> int:
    async for item in paced(payload["n"], payload["rate"]):
        await stamps.append(item)
    return payload["n"]


async def _reader(args: dict[str, Any]) -> dict[str, Any]:
    async with connect(args["url"], api_key=API_KEY):
        handle = await tasks.trigger(args["task"], {"n": args["n"], "rate": args["rate"]})
        latencies: list[float] = []
        async for _, sent in await stamps.read(handle.id, timeout_in_seconds=60):
            latencies.append((time.time_ns() - sent) / 1e6)
        if len(latencies) != args["n"]:
            raise AssertionError(f"read {len(latencies)} chunks of {args['n']}")
        return latency_summary(latencies)


worker = trio_worker("read", _reader)


def run(params: Params = FULL) -> Report:
    report = Report(NAME)
    stores = engine_stores(report, params.stores)
    servers = {name: spawn_engine(store=url, tasks=[__name__]) for name, url in stores.items()}
    servers["bare"] = spawn("tests.bench._baselines", "trio-server")
    samples: dict[str, list[dict[str, Any]]] = {}
    with serving(servers) as urls:
        for _ in range(params.repeat):
            for store in stores:
                for writer in ("pipe", "append"):
                    samples.setdefault(f"{store} {writer}", []).append(run_client(
                        __name__, "read", url=urls[store], task=f"bench-paced-{writer}",
                        n=params.chunks, rate=params.rate))
            samples.setdefault("baseline: bare trio-websocket", []).append(run_client(
                "tests.bench._baselines", "trio-client", op="paced", url=urls["bare"],
                n=params.chunks, rate=params.rate))
    for label, results in samples.items():
        for key in ("p50", "p99", "max"):
            report.add(f"{label}: {key}", "ms", [r[f"{key}_ms"] for r in results],
                       higher_is_better=False)
    base = "baseline: bare trio-websocket: p99"
    for variant in [k for k in samples if not k.startswith("baseline")]:
        report.ratio(f"{variant} p99 vs bare", f"{variant}: p99", base, 2.0, at_least=False)
    report.notes.append(f"{params.chunks} chunks at {params.rate:g}/s per repetition; "
                        "latency = reader's time.time_ns() minus the writer's")
    return report


if __name__ == "__main__":
    worker_main(worker)
