"""runwire benchmarks: throughput, latency, fan-out, memory, triggering.

Run them all (about 12 minutes on 2 cores), or a quick pass (3 minutes), or some:

    python -m tests.bench                  # every benchmark, full sizes
    python -m tests.bench --quick          # smaller sizes, fewer repetitions
    python -m tests.bench --only throughput --only latency
    python -m tests.bench --json results.json

Every benchmark compares against baselines measured in the same run and reports medians of
several repetitions and ratios, never absolute speeds alone: the machine is shared and noisy.
``docs/performance.md`` has the latest figures and what they mean.

A benchmark is a module ``bench_<name>.py`` in this package with ``NAME``, ``FULL``,
``QUICK`` and ``SMOKE`` parameter sets and ``run(params) -> Report``; ``__main__`` finds
every such module. The files are named ``bench_*`` so pytest does not collect them;
``tests/test_bench_smoke.py`` runs each with ``SMOKE`` sizes so they never rot. Measured code
runs in worker processes (see ``_harness``), so one benchmark's heap never skews another's.
"""
