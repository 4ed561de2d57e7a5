"""The SQLite WAL under a continuous writer, and a backup taken meanwhile (issue 19, part 4).

One run appends a 510-byte chunk 400 times a second (paced to an absolute schedule) to an
engine on a ``sqlite://`` store in a temporary directory, for ``--seconds`` (600 by
default). The size of ``runwire.db-wal`` is sampled every 0.5 s; halfway through,
``runwire backup`` (``VACUUM INTO``) copies the database while the writer goes on. Prints one
JSON line: chunks written, the WAL's peak and final size, TRUNCATE checkpoints, the backup's
time and size. ``python -m tests.bench.bench_wal --seconds 600``; the figures are in
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from runwire import streams, task
from runwire.engine import open_engine
from runwire.engine.store import SqliteStore

CHUNK = "x" * 508  # 510 bytes as JSON
RATE = 400

out = streams.define(id="out", type=str)


@task(id="bench-wal-writer")
async def writer(payload: dict[str, Any]) -> int:
    count = int(payload["seconds"] * RATE)
    began = trio.current_time()
    for i in range(count):
        await out.append(CHUNK)
        await trio.sleep_until(began + (i + 1) / RATE)
    return count


async def measure(seconds: float, folder: Path) -> dict[str, Any]:
    db = folder / "runwire.db"
    store = SqliteStore(str(db))
    wal = Path(str(db) + "-wal")
    peak = 0
    backup: dict[str, Any] = {}
    async with open_engine([writer], store=store) as eng:
        record = await eng.trigger(writer.id, {"seconds": seconds})
        began = time.monotonic()
        while not (await eng.get_record(record.id)).status.is_final:
            await trio.sleep(0.5)
            peak = max(peak, wal.stat().st_size if wal.exists() else 0)
            if not backup and time.monotonic() - began >= seconds / 2:
                backup = await trio.to_thread.run_sync(_backup, db, folder / "backup.db")
        final = wal.stat().st_size if wal.exists() else 0
        chunks = (await eng.get_record(record.id)).output
    return {"seconds": seconds, "chunks": chunks, "chunk_bytes": len(CHUNK) + 2,
            "wal_peak_mib": round(peak / 2**20, 2),
            "wal_final_mib": round(final / 2**20, 2),
            "wal_peak_seen_by_checkpoints_mib": round(store.wal_peak_bytes / 2**20, 2),
            "truncations": store.wal_truncations, "backup": backup}


def _backup(db: Path, dest: Path) -> dict[str, Any]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runwire.engine", "backup", str(dest),
                           "--store", f"sqlite:///{db}"], capture_output=True, text=True,
                          check=False)
    return {"exit": done.returncode, "seconds": round(time.monotonic() - began, 2),
            "mib": round(os.path.getsize(dest) / 2**20, 2) if dest.exists() else None,
            "output": done.stdout.strip() or done.stderr.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_wal")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(trio.run(measure, args.seconds, Path(folder))), flush=True)


if __name__ == "__main__":
    main()
