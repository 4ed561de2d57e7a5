"""Worker: an engine serving websockets, for benchmark clients in other processes.

    python -m tests.bench._engine_server serve '{"store": "memory://", "tasks": [...]}'

Prints ``READY {"url": ..., "pid": ...}`` once it listens, then obeys stdin lines:
``stats`` (answers ``STATS`` with memory and CPU figures, including the peak resident size
sampled since the last ``reset``), ``reset``, and ``stop`` (answers ``RESULT`` and exits).
With ``"sample_s"`` it samples its resident size that often, so a benchmark can see whether
memory grows with a stream's length.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any

import attrs
import trio

from engine import Limits, open_engine
from sdk import Task

from ._harness import (
    API_KEY,
    emit,
    peak_rss_bytes,
    proc_cpu_seconds,
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
        chunks = sum(s.length for a in self.engine.actors.values() for s in a.streams.values())
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


def make_limits(overrides: dict[str, Any]) -> Limits:
    """Default limits with ``overrides`` (names the engine does not know are ignored)."""
    known = attrs.fields_dict(Limits)
    return attrs.evolve(Limits(), **{k: v for k, v in overrides.items() if k in known})


async def serve(args: dict[str, Any]) -> None:
    tasks = load_tasks(args["tasks"])
    for name in args.get("what_if", []):
        WHAT_IF[name]()
    async with open_engine(tasks, store=args["store"], api_key=API_KEY, host="127.0.0.1",
                           port=0, limits=make_limits(args.get("limits", {}))) as eng:
        sampler = Sampler(args.get("sample_s") or 0.0, eng)
        async with trio.open_nursery() as nursery:
            if sampler.interval:
                nursery.start_soon(sampler.run)
            emit("READY", {"url": eng.url, "pid": _pid()})
            while True:
                command = await trio.to_thread.run_sync(_readline, abandon_on_cancel=True)
                if command == "reset":
                    sampler.reset()
                    emit("RESET")
                elif command == "stats":
                    sampler.sample()
                    emit("STATS", _stats(eng, sampler, args))
                else:
                    emit("RESULT", _stats(eng, sampler, args))
                    nursery.cancel_scope.cancel()
                    return


def _stats(eng: Any, sampler: Sampler, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "rss": rss_bytes(), "peak_rss": peak_rss_bytes(), "rss_parts": rss_parts(),
        "sampled_base": sampler.base, "sampled_peak": sampler.peak,
        "anon_base": sampler.anon_base, "anon_peak": sampler.anon_peak,
        "series": sampler.series[-2000:] if args.get("series") else [],
        "cpu_s": proc_cpu_seconds(), "actors": len(eng.actors),
    }


def _readline() -> str:
    return sys.stdin.readline().strip() or "stop"


def _pid() -> int:
    import os

    return os.getpid()


# --- what-if experiments --------------------------------------------------------------------
# Each patches the engine *in this worker process only*, to measure what a recommended change
# would gain before anyone makes it. The engine's code is not touched.


# (trim_chunk_bytes and batch_sync_pipe measured R1 and R2; no_wal_autocheckpoint measured
# SQLite's in-commit checkpoints. All three are now how the engine works.)
WHAT_IF: dict[str, Any] = {}


def worker(role: str, args: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.ERROR)
    assert role == "serve", role
    trio.run(serve, args)


if __name__ == "__main__":
    worker_main(worker)
