"""Every benchmark in ``tests/bench`` runs with tiny sizes, so none of them rots.

Only completion and the presence of numbers are asserted: speed is never asserted in a unit
test (the machine is shared). The real figures come from ``python -m tests.bench``.
"""

from __future__ import annotations

import math

import pytest

from tests.bench.__main__ import benchmarks

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


def test_every_benchmark_is_found() -> None:
    assert {"throughput", "latency", "fanout", "many_runs", "long_stream",
            "trigger"} <= set(BENCHMARKS)
