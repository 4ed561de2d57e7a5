"""Long streams: one stream of 1,000,000 chunks; the engine's memory must stay flat.

The engine process samples its resident set size every 100 ms while a task pipes the chunks
and a reader in another process reads them over a websocket (the throughput benchmark's task
and reader). Growth = peak during the stream minus the size after a warm-up stream, taken
just before. The *lagging reader* variants pause the reader for ``LAG_PAUSE_S`` every
``LAG_EVERY`` chunks (every fifth of a shorter stream), so it falls behind the live tail
and catches up from the store (and is still reading from it after the task has finished).
With ``sqlite://`` the chunks live on disk, so growth is the engine's own: the target
(< 50 MiB) applies there. ``memory://`` keeps every chunk in the engine process by design;
its growth is reported per chunk, which shows what one stored chunk costs.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._harness import MiB, Report, engine_stores, run_client, spawn_engine, store_url

NAME = "long_stream"
READER = "tests.bench.bench_throughput"


@attrs.frozen
class Params:
    chunks: int = 1_000_000
    warmup: int = 20_000
    repeat: int = 2
    stores: tuple[str, ...] = ("sqlite", "memory")
    #: stores also measured with a lagging reader
    lagging: tuple[str, ...] = ("sqlite",)


FULL = Params()
QUICK = Params(chunks=300_000, repeat=1)
SMOKE = Params(chunks=5_000, warmup=1_000, repeat=1, stores=("memory",), lagging=("memory",))
LAG_EVERY = 20_000
LAG_PAUSE_S = 0.02
#: Growth is also reported at these fractions of the stream (not at its end: the sampler
#: counts the chunks of live runs, and the run is gone once it has finished)
MARKS = (0.25, 0.5, 0.75)


def _one(url: str, params: Params, lagging: bool = False) -> dict[str, Any]:
    with spawn_engine(store=url, tasks=[READER], sample_s=0.1, series=True) as engine:
        engine_url = engine.expect("READY")["url"]
        run_client(READER, "read", url=engine_url, task="bench-pipe", n=params.warmup)
        engine.send("reset")
        engine.expect("RESET")
        lag = {"pause_every": min(LAG_EVERY, params.chunks // 5), "pause_s": LAG_PAUSE_S}
        read = run_client(READER, "read", url=engine_url, task="bench-pipe", n=params.chunks,
                          **(lag if lagging else {}))
        stats = engine.stop()
    base, series = stats["sampled_base"], stats["series"]
    marks = {}
    for fraction in MARKS:
        goal = fraction * params.chunks
        hit = next((s for s in series if s[2] >= goal), None)
        if hit is not None:
            marks[fraction] = (hit[1] - base) / MiB
    growth = stats["sampled_peak"] - base
    return {"growth": growth / MiB, "per_chunk": growth / params.chunks, "base": base / MiB,
            "anon_growth": (stats["anon_peak"] - stats["anon_base"]) / MiB,
            "file_mib": (stats["rss_parts"].get("RssFile", 0)
                         + stats["rss_parts"].get("RssShmem", 0)) / MiB,
            "marks": marks, "rate": read["rate"]}


def run(params: Params = FULL) -> Report:
    report = Report(NAME)
    stores = engine_stores(report, params.stores)
    samples: dict[str, list[dict[str, Any]]] = {}
    for _ in range(params.repeat):
        for store, url in stores.items():
            for lagging in [False, True] if store in params.lagging else [False]:
                label = store + " lagging reader" * lagging  # a fresh database each time:
                samples.setdefault(label, []).append(_one(store_url(store), params, lagging))
    for label, results in samples.items():
        report.add(f"{label}: RSS after warm-up", "MiB", [r["base"] for r in results],
                   higher_is_better=False)
        report.add(f"{label}: peak RSS growth", "MiB", [r["growth"] for r in results],
                   higher_is_better=False)
        report.add(f"{label}: RSS growth per chunk", "B", [r["per_chunk"] for r in results],
                   higher_is_better=False)
        report.add(f"{label}: peak growth of anonymous RSS (heap)", "MiB",
                   [r["anon_growth"] for r in results], higher_is_better=False)
        report.add(f"{label}: file-backed + shared RSS at the end", "MiB",
                   [r["file_mib"] for r in results], higher_is_better=False)
        for fraction in MARKS:
            values = [r["marks"][fraction] for r in results if fraction in r["marks"]]
            if values:
                report.add(f"{label}: RSS growth at {fraction:.0%} of the stream", "MiB",
                           values, higher_is_better=False)
        report.add(f"{label}: chunks/s over the long stream", "chunks/s",
                   [r["rate"] for r in results])
    for label in samples:
        if label.startswith("sqlite"):
            report.target(f"{label}: peak growth", f"{label}: peak RSS growth", 50, " MiB",
                          at_least=False)
    report.notes.append(f"{params.chunks:,} chunks per stream, RSS sampled every 100 ms in "
                        "the engine process")
    report.notes.append("the target applies to sqlite://, where chunks live on disk; "
                        "memory:// keeps every chunk in the engine process by design, so its "
                        "growth is reported per chunk")
    return report
