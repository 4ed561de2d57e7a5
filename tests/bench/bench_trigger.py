"""Triggering: no-op runs triggered and completed per second over a websocket.

A client in another process calls ``noop.trigger_and_wait(None)`` (trigger, then follow the
run until it is finished) in a loop, and with many callers at once on its one connection.
Each measurement gets a fresh engine (``memory://`` and ``sqlite://``), with the trigger rate
limit turned off: by default a credential may trigger 100 runs a second (bursts of 1,000),
which would be the figure otherwise. Baseline: request/response round trips over bare
trio-websocket, one at a time and with as many connections as there are callers.

The throughput of the first and the last tenth of the calls are reported too: a cost that
grows with the number of runs the engine has seen shows up as a falling rate.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import trio

from runwire import connect, task

from ._harness import (
    API_KEY,
    Report,
    engine_stores,
    run_client,
    serving,
    spawn,
    spawn_engine,
    store_url,
    trio_worker,
    worker_main,
)

NAME = "trigger"
NO_LIMITS = {"trigger_rate": None, "send_rate": None}


@attrs.frozen
class Params:
    runs: int = 3_000
    concurrent_runs: int = 6_000
    concurrency: int = 50
    repeat: int = 3
    stores: tuple[str, ...] = ("memory", "sqlite")


FULL = Params()
QUICK = Params(runs=1_000, concurrent_runs=2_000, repeat=2)
SMOKE = Params(runs=20, concurrent_runs=100, concurrency=10, repeat=1, stores=("memory",))


@task(id="bench-noop")
async def noop(payload: Any) -> None:
    return None


async def _client(args: dict[str, Any]) -> dict[str, Any]:
    n, concurrency = args["n"], args["concurrency"]
    done: list[float] = []
    anomalies = 0
    async with connect(args["url"], api_key=API_KEY):
        await noop.trigger_and_wait(None)  # warm-up

        async def caller(count: int) -> None:
            nonlocal anomalies
            for _ in range(count):
                try:
                    result = await noop.trigger_and_wait(None)
                except AssertionError:
                    # the SDK's wait_for_run saw its subscription end on a run that was not
                    # final (an engine race, see docs/performance.md); count it and go on
                    anomalies += 1
                else:
                    if not result.ok:
                        raise AssertionError(f"run failed: {result.error}")
                done.append(time.perf_counter())

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(caller, n // concurrency)
    total = len(done)
    tenth = max(1, total // 10)
    first = tenth / (done[tenth - 1] - t0)
    last = tenth / (done[-1] - done[-tenth - 1]) if total > tenth else first
    return {"runs": total, "rate": total / (done[-1] - t0), "first_tenth": first,
            "last_tenth": last, "anomalies": anomalies}


worker = trio_worker("trigger", _client)


def _engine_rate(url: str, n: int, concurrency: int) -> dict[str, Any]:
    with spawn_engine(store=url, tasks=[__name__], limits=NO_LIMITS) as engine:
        engine_url = engine.expect("READY")["url"]
        cpu0 = engine.cpu_seconds()
        result = run_client(__name__, "trigger", url=engine_url, n=n, concurrency=concurrency)
        result["engine_us"] = (engine.cpu_seconds() - cpu0) / result["runs"] * 1e6
        engine.stop()
    return result


def run(params: Params = FULL) -> Report:
    report = Report(NAME)
    stores = engine_stores(report, params.stores)
    c = params.concurrency
    shapes = {"sequential": (params.runs, 1), f"{c} concurrent": (params.concurrent_runs, c)}
    samples: dict[str, list[dict[str, Any]]] = {}
    with serving({"bare": spawn("tests.bench._baselines", "trio-server")}) as urls:
        for _ in range(params.repeat):
            for store in stores:
                for shape, (n, conc) in shapes.items():
                    samples.setdefault(f"{store}, {shape}", []).append(
                        _engine_rate(store_url(store), n, conc))  # a fresh database
            for shape, (n, conc) in shapes.items():
                samples.setdefault(f"baseline: bare round trips, {shape}", []).append(
                    run_client("tests.bench._baselines", "trio-client", op="echo",
                               url=urls["bare"], n=n, concurrency=conc))
    for label, results in samples.items():
        unit = "calls/s" if label.startswith("baseline") else "runs/s"
        report.add(f"{label}: {unit}", unit, [r["rate"] for r in results])
        if not label.startswith("baseline"):
            report.add(f"{label}: first tenth", unit, [r["first_tenth"] for r in results])
            report.add(f"{label}: last tenth", unit, [r["last_tenth"] for r in results])
            report.add(f"{label}: engine CPU/run", "us", [r["engine_us"] for r in results],
                       higher_is_better=False)
            anomalies = sum(r["anomalies"] for r in results)
            if anomalies:
                report.notes.append(
                    f"{label}: {anomalies} trigger_and_wait calls raised AssertionError in "
                    "the SDK (their subscription ended on a non-final run snapshot)")
    for store in stores:
        for shape in shapes:
            runs = report.figure(f"{store}, {shape}: runs/s").median
            calls = report.figure(f"baseline: bare round trips, {shape}: calls/s").median
            report.notes.append(f"{store}, {shape}: {runs / calls:.2f} runs per bare round "
                                "trip (context, no target)")
    report.notes.append("trigger rate limit off (default: 100/s, bursts of 1,000 per "
                        "credential, the API key included)")
    report.notes.append("a trigger_and_wait is a trigger and a subscription: two requests, "
                        "five or more messages")
    return report


if __name__ == "__main__":
    worker_main(worker)
