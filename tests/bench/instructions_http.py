"""Count the engine's instructions per durable stream append (bench_http's append workload),
with valgrind's callgrind: a figure the machine's load does not move, unlike CPU seconds.

    python -m tests.bench.instructions_http                   # memory://
    python -m tests.bench.instructions_http --store sqlite --small 300 --large 1300

It runs an engine *in this process's child* under ``valgrind --tool=callgrind`` twice, with
``--small`` and then ``--large`` appends of bench_http's append workload (a writer process
POSTs one-item appends one at a time while a reader process tails the stream with SSE; both
run natively, only the engine is counted), and prints the difference of the two totals divided
by the difference in appends: the instructions one append costs the engine, its SSE event
included, with its start-up and shutdown subtracted. User-space instructions only (valgrind
does not see the kernel). Slow: the engine runs about 50x slower under valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from ._harness import API_KEY, REPO, spawn


async def _serve_once(store: str, n: int) -> None:
    from runwire.engine import open_engine

    from . import bench_http

    async with open_engine([], store=store, api_key=API_KEY, host="127.0.0.1", port=0) as eng:
        args = {"url": eng.http_url, "server": "runwire", "path": "bench/i", "n": n}
        reader = spawn(bench_http.__name__, "ds-read", **args)

        def rest() -> dict[str, Any]:
            with spawn(bench_http.__name__, "ds-write", **args) as writer:
                writer.expect("RESULT", 3600)
                writer.wait()
            result: dict[str, Any] = reader.expect("RESULT", 3600)
            reader.wait()
            reader.close()
            return result

        await trio.to_thread.run_sync(reader.expect, "READY", 600)
        result = await trio.to_thread.run_sync(rest)
        if result["items"] != n:
            raise AssertionError(f"read {result['items']} of {n}")


def _count(store: str, n: int, tmp: Path) -> int:
    """The instructions callgrind counted for one engine serving ``n`` appends."""
    if store == "sqlite":
        url = f"sqlite:///{tmp / f'i{n}.db'}"
    else:
        url = "memory://"
    out = tmp / f"callgrind.{n}.out"
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
         "tests.bench.instructions_http", "--serve", url, str(n)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise SystemExit(f"the engine under valgrind failed:\n{done.stderr[-3000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no callgrind total in:\n{done.stderr[-3000:]}")
    return int(found[1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.instructions_http",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--small", type=int, default=300, help="appends of the first run")
    parser.add_argument("--large", type=int, default=1300, help="appends of the second run")
    parser.add_argument("--serve", nargs=2, metavar=("STORE_URL", "N"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:  # the child, under valgrind
        trio.run(_serve_once, options.serve[0], int(options.serve[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if options.large <= options.small:
        raise SystemExit("--large must be more than --small")
    with tempfile.TemporaryDirectory() as tmp:
        small = _count(options.store, options.small, Path(tmp))
        large = _count(options.store, options.large, Path(tmp))
    per = (large - small) / (options.large - options.small)
    print(f"{options.store}: {per:,.0f} instructions per append "
          f"({options.small} appends: {small:,}; {options.large}: {large:,})")


if __name__ == "__main__":
    main()
