"""``python -m tests.bench [--quick] [--only NAME ...] [--json PATH]``: run the benchmarks."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from ._harness import REPO, Report, fmt, machine, print_report


def benchmarks() -> dict[str, ModuleType]:
    """Every ``bench_*`` module of this package that follows the benchmark interface."""
    found: dict[str, ModuleType] = {}
    package = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda i: i.name):
        if not info.name.startswith("bench_"):
            continue
        try:
            module = importlib.import_module(f"{__package__}.{info.name}")
        except ImportError as exc:  # a benchmark whose subject is not written yet
            print(f"note: {info.name} not loaded: {exc}", file=sys.stderr)
            continue
        if all(hasattr(module, attr) for attr in ("NAME", "FULL", "QUICK", "run")):
            found[module.NAME] = module
        elif hasattr(module, "main"):  # a standalone benchmark script with its own CLI
            found[info.name.removeprefix("bench_")] = module
    return found


def run_script(module: ModuleType, size: str) -> Report:
    """Run a standalone ``bench_*`` script with its default arguments; its output as is."""
    name = module.__name__.rsplit(".", 1)[-1].removeprefix("bench_")
    if size != "FULL":
        return Report(name, skipped=f"a standalone script: run python -m {module.__name__}")
    print(f"\n== {name} ({module.__name__}, its own output) ==", flush=True)
    done = subprocess.run([sys.executable, "-m", module.__name__], cwd=REPO)
    report = Report(name)
    if done.returncode:
        report.skipped = f"failed: exit status {done.returncode}"
    return report


ORDER = ["throughput", "latency", "fanout", "many_runs", "long_stream", "trigger"]


def _parser(names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (what the tests run)")
    parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(names)}")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    return parser


def summary(reports: list[Report]) -> None:
    """Every target, met or missed, in one table."""
    print("\n== targets ==")
    for report in reports:
        if report.skipped:
            print(f"   {report.bench}: skipped ({report.skipped})")
        for check in report.checks:
            mark = "MET   " if check.met else "MISSED"
            print(f"   [{mark}] {report.bench}: {check.name}: {fmt(check.value)}{check.unit} "
                  f"(target {check.target})")


def _revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    found = benchmarks()
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    args = _parser(names).parse_args(argv)
    size = "SMOKE" if args.smoke else "QUICK" if args.quick else "FULL"
    info = machine()
    print(f"runwire benchmarks ({size.lower()}) on {info['nproc']} x {info['cpu']}, "
          f"Python {info['python']}, revision {_revision()}")
    reports: list[Report] = []
    failed = False
    for name in args.only or names:
        module = found[name]
        started = time.monotonic()
        if not hasattr(module, "run"):
            report = run_script(module, size)
            failed = failed or bool(report.skipped and report.skipped.startswith("failed"))
            reports.append(report)
            continue
        params = getattr(module, size, module.FULL)
        print(f"\n-- {name}: {params}", flush=True)
        try:
            report = module.run(params)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            report = Report(name, skipped=f"failed: {type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
            failed = True
        report.notes.append(f"took {time.monotonic() - started:.0f} s")
        print_report(report)
        reports.append(report)
    summary(reports)
    if args.json:
        data: dict[str, Any] = {"machine": info, "size": size, "revision": _revision(),
                                "reports": [r.to_json() for r in reports]}
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
