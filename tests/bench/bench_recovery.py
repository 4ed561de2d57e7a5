"""How soon an engine serves when many waiting runs were live at its last stop (issue 19,
part 7), and how long restoring them all takes.

A first engine on a ``sqlite://`` store in a temporary directory triggers ``--runs`` runs
(10,000 by default) of a task that waits for an input record; once all are ``WAITING`` it is
killed with SIGKILL (a subprocess: nothing handed back, each run resumes from its journaled
wait). Then, ``--repeat`` times on a copy of that file: a second engine process is started
and the bench measures, from the moment the process is spawned, when it prints the URL it
serves, when a ``retrieve`` of a finished run is answered, when a ``send`` to the run listed
last is answered, and when the engine logs that every run is restored. Prints one JSON line.
``python -m tests.bench.bench_recovery [--runs 10000] [--repeat 3]``; the figures are in
``docs/operations.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from runwire import RunStatus, connect, runs, streams, task

API_KEY = "bench-recovery-key-0123456789"
REPO = Path(__file__).resolve().parents[2]

answer = streams.input(id="answer", type=dict)


@task(id="bench.recovery.waiter")
async def waiter(payload: Any) -> Any:
    return (await answer.wait(timeout="7d")).unwrap()


@task(id="bench.recovery.done")
async def done(payload: Any) -> str:
    return "done"


def _spawn(db: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runwire.engine", "serve", "--tasks",
         "tests.bench.bench_recovery", "--store", f"sqlite:///{db}", "--port", "0",
         "--api-key", API_KEY, "--log-level", "INFO"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


class _Lines:
    """The engine's output, read in a thread; marks when given lines appeared."""

    def __init__(self, process: subprocess.Popen[str], began: float) -> None:
        self.process = process
        self.began = began
        self.url: str | None = None
        self.seen: dict[str, float] = {}
        self.ready = trio.Event()
        self.restored = trio.Event()

    def read(self, token: trio.lowlevel.TrioToken) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            found = re.search(r"serving (ws://\S+)", line)
            if found and self.url is None:
                self.url = found.group(1)
                self.seen["serving"] = time.perf_counter() - self.began
                trio.from_thread.run_sync(self.ready.set, trio_token=token)
            if "recovery:" in line and "restored" not in self.seen:
                self.seen["restored"] = time.perf_counter() - self.began
                trio.from_thread.run_sync(self.restored.set, trio_token=token)


async def prepare(db: Path, count: int) -> tuple[str, str]:
    """``count`` waiting runs and a finished one in ``db``, the engine then SIGKILLed;
    the finished run's id and the id of the waiting run triggered last."""
    process = _spawn(db)
    lines = _Lines(process, time.perf_counter())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lines.read,
                               trio.lowlevel.current_trio_token())
            await lines.ready.wait()
            assert lines.url is not None
            async with connect(lines.url, api_key=API_KEY):
                finished = (await done.trigger({})).id
                last = ""
                for _ in range(count):
                    last = (await waiter.trigger({})).id
                while True:
                    page = await runs.list(task=waiter.id, status=["WAITING"], limit=1)
                    if page.runs and page.runs[0].id == last:
                        break
                    await trio.sleep(0.2)
                await trio.sleep(1)  # the last runs' waits journaled
            process.send_signal(signal.SIGKILL)
            process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return finished, last


async def measure(db: Path, finished: str, last: str) -> dict[str, float]:
    """Start an engine on ``db``; seconds from its spawn to each milestone."""
    began = time.perf_counter()
    process = _spawn(db)
    lines = _Lines(process, began)
    got: dict[str, float] = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lines.read,
                               trio.lowlevel.current_trio_token())
            await lines.ready.wait()
            assert lines.url is not None
            async with connect(lines.url, api_key=API_KEY):
                assert (await runs.retrieve(finished)).status is RunStatus.COMPLETED
                got["retrieve_finished"] = time.perf_counter() - began
                await answer.send(last, {"ok": True})
                got["send_to_last_run"] = time.perf_counter() - began
                await lines.restored.wait()
            process.send_signal(signal.SIGINT)
            process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    got.update(lines.seen)
    return got


async def main_async(count: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        master = Path(folder) / "master.db"
        began = time.perf_counter()
        finished, last = await prepare(master, count)
        made = time.perf_counter() - began
        samples = []
        for i in range(repeat):
            copy = Path(folder) / f"run{i}.db"
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{master}{suffix}").exists():
                    shutil.copy(f"{master}{suffix}", f"{copy}{suffix}")
            samples.append(await measure(copy, finished, last))
    keys = ["serving", "retrieve_finished", "send_to_last_run", "restored"]
    return {"runs": count, "repeat": repeat, "prepare_s": round(made, 1),
            "median_s": {k: round(statistics.median(s[k] for s in samples), 3)
                         for k in keys if all(k in s for s in samples)},
            "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_recovery")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(trio.run(main_async, args.runs, args.repeat)))


if __name__ == "__main__":
    main()
