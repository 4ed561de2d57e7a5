"""Many runs: 10,000 concurrent runs, each waiting on an input stream; memory per waiting run.

Each measurement is a fresh process with an in-process engine (no socket: what is measured is
the run, not a connection). It triggers a warm-up batch, takes a baseline, triggers N runs,
waits until every one of them is parked in ``cancel.once()`` (or ``approval.wait()``, which
also suspends the run and stores its ``WAITING`` status), lets the scheduler settle, and
divides the growth by N; then it exits at once (tearing 10,000 runs down is not measured).
Two probes, each in its own process: the resident set size (what the OS sees) and
tracemalloc (what Python allocated; a deeper trace says where the bytes go). Baseline: a
bare trio task parked on a ``trio.Event``, probed the same way.
"""

from __future__ import annotations

import gc
import linecache
import os
import tracemalloc
from typing import Any

import attrs
import trio
import trio.testing

from runwire.engine import open_engine
from runwire import streams, task

from ._harness import (
    API_KEY,
    KiB,
    Report,
    emit,
    engine_stores,
    rss_bytes,
    run_client,
    store_url,
    worker_main,
)

NAME = "many_runs"
BARE = "baseline: bare trio task on an Event"
cancel = streams.input(id="cancel")
approval = streams.input(id="approval")
parked = 0
#: how long the scheduler must have had nothing to run before a run count is probed
IDLE_S = 0.2


@attrs.frozen
class Params:
    runs: int = 10_000
    traced_runs: int = 2_000
    site_runs: int = 300
    warmup: int = 200
    repeat: int = 2
    stores: tuple[str, ...] = ("memory", "sqlite")
    waits: tuple[str, ...] = ("once()", "wait()")
    bare_probes: tuple[str, ...] = ("rss", "tracemalloc")


FULL = Params()
QUICK = Params(runs=5_000, traced_runs=1_000, repeat=1)
SMOKE = Params(runs=100, traced_runs=50, site_runs=30, warmup=20, repeat=1, stores=("memory",),
               waits=("wait()",), bare_probes=("rss",))


@task(id="bench-wait-once")
async def wait_once(payload: Any) -> None:
    global parked
    parked += 1
    await cancel.once()


@task(id="bench-wait-suspended")
async def wait_suspended(payload: Any) -> None:
    global parked
    parked += 1
    await approval.wait(timeout="1h")


# --- measuring process ---------------------------------------------------------------------


async def _settle(target: int, engine: Any, status: str) -> None:
    """Until ``target`` runs are parked with ``status`` and nothing has run for ``IDLE_S``
    (the store's threads included: a write finishing wakes the scheduler)."""
    while parked < target or any(run.status.value != status
                                 for run in engine.live_run_statistics()):
        await trio.sleep(0.02)
    await trio.testing.wait_all_tasks_blocked(IDLE_S)


class Probe:
    """``rss``; ``tracemalloc`` (one frame: the figure); ``sites`` (deep: where it goes)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.snapshot: Any = None
        if kind != "rss":
            tracemalloc.start(FRAMES if kind == "sites" else 1)

    def now(self) -> int:
        gc.collect()
        if self.kind != "rss":
            return tracemalloc.get_traced_memory()[0]
        return rss_bytes()

    def mark(self) -> int:
        value = self.now()
        if self.kind == "sites":
            self.snapshot = tracemalloc.take_snapshot()
        return value

    def top(self, count: int, limit: int = 10) -> list[list[Any]]:
        """Where the growth since ``mark`` was allocated: ``[site, bytes per item]``.

        A site is the innermost frame in this repository's code (``engine/``, ``sdk/``,
        ``transport/``), so trio's and attrs' allocations are charged to the line of ours
        that caused them; allocations with no such frame are charged to their own line.
        """
        if self.kind != "sites":
            return []
        diff = tracemalloc.take_snapshot().compare_to(self.snapshot, "traceback")
        sites: dict[str, int] = {}
        for stat in diff:
            frame = next((f for f in reversed(stat.traceback) if _ours(f.filename)),
                         stat.traceback[-1])
            code = linecache.getline(frame.filename, frame.lineno).strip()
            site = f"{_short(frame.filename)}:{frame.lineno} `{code}`"
            sites[site] = sites.get(site, 0) + stat.size_diff
        ranked = sorted(sites.items(), key=lambda kv: -kv[1])[:limit]
        return [[site, size / count] for site, size in ranked]


FRAMES = 12
_OURS = ("/engine/", "/sdk/", "/transport/")


def _ours(filename: str) -> bool:
    return any(part in filename for part in _OURS) and "site-packages" not in filename


def _short(filename: str) -> str:
    for part in _OURS:
        if part in filename:
            return part.strip("/") + "/" + filename.split(part, 1)[1]
    return filename.split("/site-packages/")[-1]


async def _runs(args: dict[str, Any]) -> dict[str, Any]:
    probe = Probe(args["probe"])
    n, warm = args["runs"], args["warmup"]
    status = "WAITING" if args["task"] == "bench-wait-suspended" else "EXECUTING"
    async with open_engine([wait_once, wait_suspended], store=args["store"],
                           api_key=API_KEY) as eng:
        for _ in range(warm):
            await eng.trigger(args["task"], None)
        await _settle(warm, eng, status)
        before = probe.mark()
        for _ in range(n):
            await eng.trigger(args["task"], None)
        await _settle(warm + n, eng, status)
        after = probe.now()
        statuses = sorted({run.status.value for run in eng.live_run_statistics()})
        _done({"per_run": (after - before) / n, "runs": n, "top": probe.top(n),
               "statuses": statuses})


async def _bare(args: dict[str, Any]) -> dict[str, Any]:
    probe = Probe(args["probe"])
    n = args["runs"]
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(args["warmup"]):
            nursery.start_soon(release.wait)
        await trio.testing.wait_all_tasks_blocked(IDLE_S)  # every task parked on the Event
        before = probe.mark()
        for _ in range(n):
            nursery.start_soon(release.wait)
        await trio.testing.wait_all_tasks_blocked(IDLE_S)
        after = probe.now()
        _done({"per_run": (after - before) / n, "runs": n, "top": probe.top(n)})


def _done(result: dict[str, Any]) -> None:
    """Report and leave at once: tearing down 10,000 runs is not what is measured."""
    emit("RESULT", result)
    os._exit(0)


def worker(role: str, args: dict[str, Any]) -> None:
    trio.run(_runs if role == "runs" else _bare, args)


# --- orchestration -------------------------------------------------------------------------


def run(params: Params = FULL) -> Report:
    report = Report(NAME)
    stores = engine_stores(report, params.stores)
    tasks = {"once()": "bench-wait-once", "wait()": "bench-wait-suspended"}
    variants = {f"{store} {kind}": (store, tasks[kind]) for store in stores
                for kind in params.waits}
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    sizes = {"rss": params.runs, "tracemalloc": params.traced_runs}

    def measure(label: str, role: str, probe: str, n: int, **args: Any) -> None:
        samples.setdefault(label, {}).setdefault(probe, []).append(run_client(
            __name__, role, runs=n, warmup=params.warmup, probe=probe, **args))

    for _ in range(params.repeat):
        for probe, n in sizes.items():
            for label, (store, tid) in variants.items():
                url = store_url(store)
                measure(label, "runs", probe, n, store=url, task=tid)
            if probe in params.bare_probes:
                measure(BARE, "bare", probe, n)
    for label, (store, tid) in variants.items():
        if store == "memory":
            measure(label, "runs", "sites", params.site_runs, store="memory://", task=tid)
    for label, by_probe in samples.items():
        for probe, n in sizes.items():
            if probe not in by_probe:
                continue
            report.add(f"{label}: {probe}", "KiB/run",
                       [r["per_run"] / KiB for r in by_probe[probe]], higher_is_better=False,
                       note=f"{n} runs")
    for label in variants:
        report.target(f"{label} (RSS)", f"{label}: rss", 16, " KiB", at_least=False)
        report.target(f"{label} (tracemalloc)", f"{label}: tracemalloc", 16, " KiB",
                      at_least=False)
        if "sites" in samples[label]:
            top = samples[label]["sites"][-1]["top"]
            report.notes.append(f"{label}, where a run's bytes are allocated (innermost "
                                "engine/sdk line): " + "; ".join(
                                    f"{site} {size:.0f} B" for site, size in top))
        report.notes.append(f"{label}: statuses while parked "
                            f"{samples[label]['rss'][-1].get('statuses')}")
    report.notes.append("each measurement in a fresh process; RSS with "
                        f"{params.runs} runs, tracemalloc with {params.traced_runs}")
    return report


if __name__ == "__main__":
    worker_main(worker)
