"""Profile the hottest path, single-stream throughput, with py-spy: where each chunk's time goes.

    pip install py-spy
    python -m tests.bench.hotpath                      # memory://, pipe, 1,000,000 chunks
    python -m tests.bench.hotpath --store sqlite --chunks 500000 --top 30 --out /tmp/prof

It starts an engine worker and a reader worker exactly as ``bench_throughput`` does, attaches
``py-spy record --gil`` to both (sampling from outside: no instrumentation overhead; only the
thread holding the GIL, so idle waits do not count), and prints, for each process, the
functions with the most samples, by *self* time (the function itself, and the C functions it
calls) and *inclusive* time (it and everything it calls), in % of that process's samples and
in microseconds per chunk (that share of the GIL-holding time; SQLite's own work in the
store's threads releases the GIL and is not in it). ``--out DIR`` keeps the raw
collapsed stacks (``engine.txt``, ``reader.txt``) for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
from pathlib import Path

from ._harness import REPO, spawn, spawn_engine, sqlite_available, store_url

#: The engine worker's own stdin thread (``_harness.read_commands``, blocked in ``readline``):
#: not the engine's work.
IGNORED = ("read_commands ",)


def _record(pid: int, out: Path, rate: int, gil: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
         "--nolineno", "--output", str(out), *(["--gil"] if gil else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    """``fn (path/to/site-packages/pkg/mod.py)`` -> ``fn (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("/site-packages/", f"{REPO}/", "/lib/python3."):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3.":
                where = "stdlib/" + where.split("/", 1)[-1]
            break
    return f"{name} ({where})"


def summarise(path: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, self samples per function, inclusive samples per function."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if " (" in f]
        if not frames or any(f.startswith(IGNORED) for f in frames):
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    return total, own, incl


#: Stages of the engine's hot path, by a function on the stack (first match wins).
STAGES = [
    ("task: the benchmark's generator (chunk strings)", ("<genexpr> (tests/bench",)),
    ("producer: sdk _pump -> Producer.put", ("_pump (",)),
    ("commit: encode (_Stage.chunks)", ("_Stage.chunks (",)),
    ("commit: store", ("Store.commit (",)),
    ("commit: rest (mailbox, tail, wake)", ("RunActor._commit_loop (",)),
    ("session: read the tail or the store", ("Reader.next_batch (",)),
    ("session: encode + send a frame", ("Session._emit (",)),
    ("session: rest", ("Session._run_request (",)),
    ("reader: sdk decode + iterate", ("StreamReader._iterate (",)),
    ("reader: websocket receive + frame decode", ("WebSocketConnection._reader_task (",
                                                  "Client._serve (")),
    ("benchmark loop", ("_read_once (tests/bench",)),
]


def stages(path: Path) -> tuple[int, collections.Counter[str]]:
    """Samples per stage of :data:`STAGES` (``other``: the trio scheduler, I/O, ...)."""
    total = 0
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or any(i in stack for i in IGNORED):
            continue
        frames = [_short(f) for f in stack.split(";") if " (" in f]
        total += int(count)
        for name, needles in STAGES:
            if any(n in f for f in frames for n in needles):
                counts[name] += int(count)
                break
        else:
            counts["other: trio scheduler, sockets, ..."] += int(count)
    return total, counts


def _table(title: str, total: int, counts: collections.Counter[str], us_per_sample: float,
           top: int) -> str:
    lines = [f"  {title}", f"  {'%':>6} {'us/chunk':>9}  function"]
    for name, n in counts.most_common(top):
        lines.append(f"  {100 * n / total:6.1f} {n * us_per_sample:9.3f}  {name}")
    return "\n".join(lines)


def profile(store: str, task: str, chunks: int, top: int, rate: int, out: Path,
            gil: bool = True) -> str:
    if store == "sqlite" and (missing := sqlite_available()):
        raise SystemExit(missing)
    url = store_url(store)
    sections = []
    with spawn_engine(store=url, tasks=["tests.bench.bench_throughput"]) as engine:
        engine_url = engine.expect("READY")["url"]
        reader = spawn("tests.bench.bench_throughput", "read", url=engine_url, task=task,
                       n=chunks)
        try:
            reader.expect("WARM", 120)  # sample the measured read, not imports and warm-up
            cpu0 = {"engine": engine.cpu_seconds(), "reader": reader.cpu_seconds()}
            spies = {side: _record(w.pid, out / f"{side}.txt", rate, gil)
                     for side, w in (("engine", engine), ("reader", reader))}
            result = reader.expect("RESULT", 600)
            cpu = {"engine": engine.cpu_seconds() - cpu0["engine"]}
            reader.wait()
        finally:
            reader.close()
        cpu["reader"] = result["cpu_s"]
        engine.send("stop")
        for spy in spies.values():
            spy.wait(60)
    sections.append(f"{chunks:,} chunks ({task}, {store}): {result['rate']:,.0f} chunks/s; "
                    f"CPU per chunk: engine {cpu['engine'] / chunks * 1e6:.2f} us, reader "
                    f"{cpu['reader'] / chunks * 1e6:.2f} us")
    for side in ("engine", "reader"):
        total, own, incl = summarise(out / f"{side}.txt")
        if not total:
            sections.append(f"{side}: no samples")
            continue
        us = 1e6 / rate / chunks  # one sample stands for 1/rate s of the sampled thread's time
        sections.append(f"\n{side}: {total} samples = {total * us:.2f} us per chunk "
                        f"(process CPU: {cpu[side] / chunks * 1e6:.2f} us per chunk)")
        st_total, st = stages(out / f"{side}.txt")
        sections.append(_table("by stage", st_total, st, us, len(st)))
        sections.append(_table("self time", total, own, us, top))
        sections.append(_table("inclusive time", total, incl, us, top))
    return "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.hotpath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="memory", choices=["memory", "sqlite"])
    parser.add_argument("--task", default="bench-pipe", choices=["bench-pipe", "bench-append"])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--out", help="directory for the raw collapsed stacks")
    parser.add_argument("--all-threads", action="store_true",
                        help="sample every thread, not only the one holding the GIL (idle "
                             "waits then show up as time, e.g. in epoll and worker threads)")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    out = Path(args.out or tempfile.mkdtemp(prefix="runwire-hotpath-"))
    out.mkdir(parents=True, exist_ok=True)
    print(profile(args.store, args.task, args.chunks, args.top, args.rate, out,
                  gil=not args.all_threads))
    print(f"\nraw stacks in {out}")


if __name__ == "__main__":
    main()
