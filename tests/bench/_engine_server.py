"""Worker: an engine serving websockets, for benchmark clients in other processes.

    python -m tests.bench._engine_server serve '{"store": "memory://", "tasks": [...]}'

Prints ``READY {"url": ...}`` once it listens, then obeys stdin lines: ``reset``
(restarts the resident-size sampling, answers ``RESET``) and ``stop`` (answers ``RESULT`` with
the sampled memory figures and exits). With ``"sample_s"`` it samples its resident size that
often, so a benchmark can see whether memory grows with a stream's length.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import attrs
import trio

from runwire.engine import Limits, open_engine
from runwire import Task

from ._harness import (
    API_KEY,
    emit,
    read_commands,
    rss_bytes,
    rss_parts,
    worker_main,
)


class Sampler:
    """Resident size every ``interval`` seconds: the peak since ``reset`` and a short series."""

    def __init__(self, interval: float, engine: Any) -> None:
        self.interval = interval
        self.engine = engine
        self.series: list[tuple[float, int, int]] = []
        self.reset()

    def reset(self) -> None:
        self.base = self.peak = rss_bytes()
        self.anon_base = self.anon_peak = rss_parts()["RssAnon"]
        self.series.clear()
        self._t0 = time.monotonic()

    def sample(self) -> None:
        rss, anon = rss_bytes(), rss_parts()["RssAnon"]
        self.peak = max(self.peak, rss)
        self.anon_peak = max(self.anon_peak, anon)
        chunks = sum(s.length for run in self.engine.live_run_statistics() for s in run.streams.values())
        self.series.append((round(time.monotonic() - self._t0, 3), rss, chunks))

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(self.interval)


def load_tasks(modules: list[str]) -> list[Task[Any, Any]]:
    found: list[Task[Any, Any]] = []
    for name in modules:
        module = importlib.import_module(name)
        found.extend(v for v in vars(module).values() if isinstance(v, Task))
    return found


#: Every benchmark's clients connect from one address (loopback), so the per-address caps,
#: made to keep one address of many from starving the rest, are off unless a benchmark sets
#: them (fan-out opens 500 connections from 127.0.0.1; the default cap is 256).
ONE_ADDRESS = {"max_connections_per_address": None, "max_reads_per_address": None}


def make_limits(overrides: dict[str, Any]) -> Limits:
    """Default limits, without the per-address caps, with ``overrides`` (a name the engine
    does not know raises)."""
    return attrs.evolve(Limits(), **{**ONE_ADDRESS, **overrides})


async def serve(args: dict[str, Any]) -> None:
    tasks = load_tasks(args["tasks"])
    async with open_engine(tasks, store=args["store"], api_key=API_KEY, host="127.0.0.1",
                           port=0, limits=make_limits(args.get("limits", {}))) as eng:
        sampler = Sampler(args.get("sample_s") or 0.0, eng)
        async with trio.open_nursery() as nursery:
            if sampler.interval:
                nursery.start_soon(sampler.run)
            emit("READY", {"url": eng.url})
            while True:
                command = await trio.to_thread.run_sync(read_commands, abandon_on_cancel=True)
                if command == "reset":
                    sampler.reset()
                    emit("RESET")
                else:
                    emit("RESULT", _result(sampler, args))
                    nursery.cancel_scope.cancel()
                    return


def _result(sampler: Sampler, args: dict[str, Any]) -> dict[str, Any]:
    """What ``bench_long_stream`` reads: the sampled sizes, and the resident parts now."""
    return {
        "rss_parts": rss_parts(),
        "sampled_base": sampler.base, "sampled_peak": sampler.peak,
        "anon_base": sampler.anon_base, "anon_peak": sampler.anon_peak,
        "series": sampler.series[-2000:] if args.get("series") else [],
    }


def worker(role: str, args: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.ERROR)
    assert role == "serve", role
    trio.run(serve, args)


if __name__ == "__main__":
    worker_main(worker)
