"""Every benchmark in ``tests/bench`` runs with tiny sizes, so none of them rots.

Only completion and the presence of numbers are asserted: speed is never asserted in a unit
test (the machine is shared). The real figures come from ``python -m tests.bench``.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from tests.bench.__main__ import benchmarks
from tests.bench._harness import REPO

BENCHMARKS = {name: m for name, m in benchmarks().items() if hasattr(m, "SMOKE")}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_and_reports_numbers(name: str) -> None:
    module = BENCHMARKS[name]
    report = module.run(module.SMOKE)
    assert report.bench == name
    assert report.figures, f"{name} reported no figures"
    for figure in report.figures:
        assert figure.samples, f"{name}: {figure.name} has no samples"
        assert all(math.isfinite(s) and s >= 0 for s in figure.samples), figure
    assert any(f.median > 0 for f in report.figures)
    for check in report.checks:
        assert math.isfinite(check.value), check
    if os.environ.get("CI") == "true":  # .ci/run installs what every benchmark needs
        assert not [note for note in report.notes if "skipped" in note], report.notes


def test_every_benchmark_is_found() -> None:
    assert {"throughput", "latency", "fanout", "many_runs", "long_stream",
            "trigger", "http"} <= set(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "sqlite", "bare"])
def test_latency_stages_tool_runs_and_reports_every_stage(store: str) -> None:
    """``python -m tests.bench.latency_stages`` (a profiling tool: it patches engine
    internals, so it runs in its own process)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.latency_stages", "--store", store, "--mode", "pipe",
         "--chunks", "400"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = ["recv", "reader"]
    stages += [] if store == "bare" else ["stage", "committed", "send0", "send1", "routed"]
    stages += ["store write"] if store == "sqlite" else []
    for stage in stages:
        line = next((line for line in done.stdout.splitlines()
                     if line.strip().startswith(stage)), None)
        assert line is not None, f"no {stage!r} line in:\n{done.stdout}"
        assert "p50" in line and "nan" not in line, line


@pytest.mark.slow
def test_the_store_benchmark_runs_and_reports_numbers() -> None:
    """``python -m tests.bench.bench_store`` has its own command line (the full run prints
    its output as is)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_store", "--chunks", "2000", "--repeat", "1",
         "--commits", "20"], capture_output=True, text=True, timeout=120, check=False,
        cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    for shape in ("one-run", "many-runs"):
        assert re.search(rf"{shape} +sqlite/memory = \d", done.stdout), done.stdout
    assert done.stdout.count("one-chunk commits") == 2, done.stdout


@pytest.mark.slow
def test_the_ab_tool_compares_two_revisions() -> None:
    """``python -m tests.bench.ab REV --b REV``: both sides run, each from a worktree of its
    own, and every figure gets a ratio (without ``--b``, side B is this checkout as it is)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.ab", "HEAD", "--b", "HEAD", "--smoke", "--rounds",
         "1", "--only", "throughput"], cwd=REPO, capture_output=True, text=True, timeout=300,
        check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "#### A:" in done.stdout and "#### B:" in done.stdout, done.stdout[-3000:]
    rows = [line for line in done.stdout.splitlines() if " B/A " in line]
    assert any("throughput: memory pipe: chunks/s" in row for row in rows), rows
    sides = re.findall(r"#### [AB]: .* \(in (\S+)\)", done.stdout)
    assert len(sides) == 2 and str(REPO) not in sides, done.stdout[-3000:]
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout
    assert not any(side in worktrees for side in sides), worktrees  # cleaned up
