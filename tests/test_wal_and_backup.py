"""The SQLite WAL stays bounded under a continuous writer, and ``runwire backup`` copies a
busy engine's database (issue 19, part 4).

The WAL bound with a 1 MiB limit and a writer that never pauses (PASSIVE checkpoints alone
never catch up with it: the WAL grew to 900 MB in 4 minutes); the 64 MiB target at 400
chunks/s for 10 minutes is ``tests/bench/bench_wal.py`` (docs/performance.md).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from runwire import streams, task
from runwire.engine import open_engine
from runwire.engine.store import (
    Batch, ChunkAppend, SqliteStore, StoreConfigError, backup_database,
)
from runwire.engine._cli import main

from .helpers import bounded

CHUNK = b'"' + b"x" * 508 + b'"'


@bounded(60)
async def test_the_wal_is_truncated_under_a_writer_that_never_pauses(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = SqliteStore(str(path), wal_limit_bytes=1 << 20)
    wal = Path(str(path) + "-wal")
    peak = 0
    try:
        for start in range(0, 40_000, 20):  # 2,000 commits, about 20 MB of chunks
            await store.commit(Batch(chunks=[ChunkAppend("run", "out", start, [CHUNK] * 20,
                                                         20 * len(CHUNK))]))
            peak = max(peak, wal.stat().st_size)
            await trio.sleep(0)
            if start % 4000 == 0 and store._checkpointing is not None:
                # on a loaded machine one background checkpoint can outlast the whole
                # write: let it end now and then, so the bound does not depend on the load
                await store._checkpointing.wait()
        assert store.wal_truncations >= 1
        # checkpoints run in the background: allow what commits add meanwhile (without
        # the truncation this WAL grows past 40 MB)
        assert peak < 16 << 20, peak  # untruncated: over 40 MB
        assert len(await store.read_chunks("run", "out", 39_990, 100)) == 10
    finally:
        await store.aclose()


out = streams.define(id="out", type=str)


@task(id="backup.writer")
async def writer(payload: Any) -> None:
    for _ in range(1_000_000):
        await out.append("y" * 500)
        await trio.sleep(0.001)


@bounded(60)
async def test_backup_of_a_busy_engine_is_consistent_and_quick(tmp_path: Path) -> None:
    db = tmp_path / "runwire.db"
    dest = tmp_path / "copy.db"
    async with open_engine([writer], store=f"sqlite:///{db}") as eng:
        record = await eng.trigger(writer.id, None)
        while (stats := eng.run_statistics(record.id)) is None or \
                stats.streams.get("out") is None or stats.streams["out"].length < 2000:
            await trio.sleep(0.05)
        began = trio.current_time()
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "runwire.engine", "backup", str(dest), "--store",
             f"sqlite:///{db}"], capture_output=True, text=True, check=False))
        took = trio.current_time() - began
        assert done.returncode == 0, done.stderr
        assert "checked" in done.stdout
        assert took < 10
        length_then = eng.run_statistics(record.id).streams["out"].length  # type: ignore
        await eng.cancel_run(record.id)
    copy = SqliteStore(str(dest))
    try:
        run = await copy.get_run(record.id)
        assert run is not None and run["status"] in ("EXECUTING", "QUEUED")
        state = (await copy.streams(record.id))["out"]
        assert 2000 <= state.length <= length_then
        chunks = await copy.read_chunks(record.id, "out", 0, state.length)
        assert len(chunks) == state.length  # no gap: a consistent snapshot
    finally:
        await copy.aclose()
    with sqlite3.connect(dest) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_backup_refuses_what_it_cannot_do(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(StoreConfigError, match="no SQLite database"):
        backup_database(f"sqlite:///{tmp_path / 'none.db'}", str(tmp_path / "x.db"))
    with pytest.raises(StoreConfigError, match="memory"):
        backup_database("memory://", str(tmp_path / "x.db"))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreConfigError, match="not a runwire database"):
        backup_database(f"sqlite:///{other}", str(tmp_path / "x.db"))
    with pytest.raises(StoreConfigError, match="exists"):
        backup_database(f"sqlite:///{other}", str(other))
    assert main(["backup", str(other), "--store", f"sqlite:///{other}"]) == 2
    assert "exists" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.db")
