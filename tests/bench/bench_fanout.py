"""Fan-out: one stream, 500 readers in 2 reader processes; chunk deliveries per second.

Readers do not share connections: each of the 250 readers in a process opens its own
``runwire.connect`` (its own websocket and session in the engine), because that is what 500
browsers or backend subscribers do. A second variant puts the 250 reads of a process on one
shared connection, to show what a connection costs.

Timing: the task appends one first chunk (``SUBSCRIBED``), then waits for a ``go`` input
record before it pipes its chunks. Every reader process triggers the run with the same
idempotency key (so all read the one run), opens its reads, and reports ``READY`` once every
one of its readers has received that first chunk (so every read is subscribed on the
engine); the orchestrator then says ``go`` and the first process sends the record.
Deliveries per second = readers x chunks / (last reader's last chunk - go), on the wall
clock both processes share; the first chunk is neither timed nor counted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import attrs
import trio

from runwire import connect, streams, task, tasks

from ._baselines import chunk
from ._harness import (
    API_KEY,
    Report,
    emit,
    read_commands,
    spawn,
    spawn_engine,
    trio_worker,
    worker_main,
)

NAME = "fanout"
fan = streams.define(id="fan", type=str)
go = streams.input(id="go")
#: the chunk the task appends before it waits for ``go``: a reader that got it is subscribed
SUBSCRIBED = "subscribed"


@attrs.frozen
class Params:
    chunks: int = 20_000
    readers_per_process: int = 250
    processes: int = 2
    repeat: int = 3
    shared_variant: bool = True


FULL = Params()
QUICK = Params(chunks=5_000, repeat=2)
SMOKE = Params(chunks=200, readers_per_process=5, repeat=1, shared_variant=False)


@task(id="bench-fanout")
async def fanout(payload: dict[str, Any]) -> int:
    await fan.append(SUBSCRIBED)
    await go.once(timeout_ms=600_000)
    await fan.pipe(chunk(i) for i in range(payload["n"])).wait_until_complete()
    return payload["n"]


# --- reader process ------------------------------------------------------------------------


async def _readers(args: dict[str, Any]) -> dict[str, Any]:
    url, n, count = args["url"], args["n"], args["readers"]
    ends: list[int] = []
    subscribed = 0
    all_in = trio.Event()

    async def read(run_id: str) -> None:
        nonlocal subscribed
        got = -1  # the first chunk (SUBSCRIBED) arrives before go and is not counted
        async for item in await fan.read(run_id, timeout_in_seconds=None):
            got += 1
            if got == 0:
                if item != SUBSCRIBED:
                    raise AssertionError(f"first chunk {item!r}")
                subscribed += 1
                if subscribed == count:
                    all_in.set()
            elif got == n:
                ends.append(time.time_ns())
                if item != chunk(n - 1):
                    raise AssertionError(f"last chunk {item!r}")

    async def own_connection(run_id: str) -> None:
        async with connect(url, api_key=API_KEY):
            await read(run_id)

    async with connect(url, api_key=API_KEY):  # the control connection
        handle = await tasks.trigger("bench-fanout", {"n": n}, idempotency_key=args["key"])
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                if args["shared"]:
                    nursery.start_soon(read, handle.id)
                else:
                    nursery.start_soon(own_connection, handle.id)
            await all_in.wait()  # every read has its first chunk: it is subscribed
            emit("READY")
            await trio.to_thread.run_sync(read_commands)
            go_ns, cpu0 = time.time_ns(), time.process_time()
            if args["leader"]:
                await go.send(handle.id, {"go": True})
    if len(ends) != count:
        raise AssertionError(f"{len(ends)} of {count} readers finished")
    return {"go_ns": go_ns, "last_end_ns": max(ends),
            "deliveries": count * n, "cpu_s": time.process_time() - cpu0}


worker = trio_worker("readers", _readers)


# --- orchestration -------------------------------------------------------------------------


def _one(params: Params, shared: bool) -> dict[str, float]:
    with spawn_engine(store="memory://", tasks=[__name__]) as engine:
        url = engine.expect("READY")["url"]
        key = uuid.uuid4().hex
        procs = [spawn(__name__, "readers", url=url, n=params.chunks, key=key,
                       readers=params.readers_per_process, shared=shared, leader=i == 0)
                 for i in range(params.processes)]
        try:
            for proc in procs:
                proc.expect("READY", 300)
            cpu0 = engine.cpu_seconds()
            for proc in procs:
                proc.send("go")
            results = [proc.expect("RESULT", 900) for proc in procs]
            engine_cpu = engine.cpu_seconds() - cpu0
            engine.stop()
        finally:
            for proc in procs:
                proc.close()
    go_ns = results[0]["go_ns"]
    seconds = (max(r["last_end_ns"] for r in results) - go_ns) / 1e9
    deliveries = sum(r["deliveries"] for r in results)
    return {"rate": deliveries / seconds, "seconds": seconds,
            "engine_us": engine_cpu / deliveries * 1e6,
            "reader_us": sum(r["cpu_s"] for r in results) / deliveries * 1e6}


def run(params: Params = FULL) -> Report:
    report = Report(NAME)
    variants = {"own connection per reader": False}
    if params.shared_variant:
        variants["one shared connection per process"] = True
    samples: dict[str, list[dict[str, float]]] = {}
    for _ in range(params.repeat):
        for label, shared in variants.items():
            samples.setdefault(label, []).append(_one(params, shared))
    readers = params.readers_per_process * params.processes
    for label, results in samples.items():
        report.add(f"{readers} readers, {label}: deliveries/s", "deliveries/s",
                   [r["rate"] for r in results])
        report.add(f"{label}: engine CPU/delivery", "us", [r["engine_us"] for r in results],
                   higher_is_better=False)
        report.add(f"{label}: reader CPU/delivery", "us", [r["reader_us"] for r in results],
                   higher_is_better=False)
    report.target("deliveries/s, own connection per reader",
                  f"{readers} readers, own connection per reader: deliveries/s", 1_000_000, "/s")
    report.notes.append(f"{params.chunks} chunks x {readers} readers in {params.processes} "
                        "processes per repetition; memory:// store")
    return report


if __name__ == "__main__":
    worker_main(worker)
