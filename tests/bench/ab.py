"""``python -m tests.bench.ab REV [--b REV] [--only NAME ...] [--rounds N] [--quick]``: a
same-run A/B.

Runs the benchmark suite of revision ``REV`` (A) and of this checkout (B; or of the revision
``--b`` names) in turns, A B B A A B ..., so drift on a shared machine hits both alike, and
prints for every figure both have the median over the rounds of each side's medians and the
ratio B/A. Each side runs its own ``tests/bench`` against its own code: ``REV`` (and ``--b``'s
revision, so the checkout may change while it runs) is checked out into a temporary git
worktree,
and a ``runwire/`` tree of symlinks into each side's ``sdk/``, ``engine/`` and
``transport/`` comes first on ``PYTHONPATH``, so neither side imports the other's code
through the editable install (a revision from before the move to one ``runwire`` package
imports its top-level ``engine``/``sdk`` from its own folder, as its harness always did).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._harness import REPO

FOLDERS = {"sdk": "runwire", "engine": "runwire/engine", "transport": "runwire/transport"}


def _package_tree(tree: Path, into: Path) -> None:
    """``into/runwire``: symlinks to ``tree``'s folders, laid out as the wheel lays them."""
    if not (tree / "sdk" / "__init__.py").exists():
        return
    for folder, target in FOLDERS.items():
        if folder == "sdk":
            (into / target).mkdir(parents=True)
            for item in (tree / folder).iterdir():
                (into / target / item.name).symlink_to(item)
        else:
            (into / target).symlink_to(tree / folder)


def _run(side: str, tree: Path, package: Path, args: list[str], out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(package), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "tests.bench", *args, "--json", str(out)]
    print(f"\n#### {side}: {' '.join(command[1:])} (in {tree})", flush=True)
    subprocess.run(command, cwd=tree, env=env, check=True)
    return json.loads(out.read_text())


def _medians(results: list[dict[str, Any]]) -> dict[str, tuple[float, str, bool]]:
    """Figure name -> (median over rounds, unit, higher is better)."""
    samples: dict[str, list[float]] = {}
    kind: dict[str, tuple[str, bool]] = {}
    for result in results:
        for report in result["reports"]:
            for figure in report["figures"]:
                name = f"{report['bench']}: {figure['name']}"
                samples.setdefault(name, []).append(figure["median"])
                kind[name] = (figure["unit"], figure["higher_is_better"])
    return {name: (statistics.median(v), *kind[name]) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the revision to compare this checkout with (side A)")
    parser.add_argument("--b", metavar="REV", help="side B: this revision (default: this "
                        "checkout, as it is)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="benchmark to run (repeatable); default: throughput and latency")
    parser.add_argument("--rounds", type=int, default=2, help="turns per side (default 2)")
    parser.add_argument("--quick", action="store_true", help="the suite's smaller sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (what the tests run)")
    parser.add_argument("--json", metavar="PATH", help="also write both sides' medians")
    args = parser.parse_args(argv)
    bench_args = [f"--only={name}" for name in (args.only or ["throughput", "latency"])]
    bench_args += ["--quick"] if args.quick else []
    bench_args += ["--smoke"] if args.smoke else []
    work = Path(tempfile.mkdtemp(prefix="runwire-ab-"))
    old, new = work / "a", work / "b"
    trees = [(old, args.rev)] + ([(new, args.b)] if args.b else [])
    try:
        for tree, rev in trees:
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO,
                           check=True, capture_output=True)
        sides = {"A": old, "B": new if args.b else REPO}
        packages = {}
        for side, tree in sides.items():
            packages[side] = work / f"pkg-{side}"
            packages[side].mkdir()
            _package_tree(tree, packages[side])
        results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        for turn in range(args.rounds):
            for side in ("AB" if turn % 2 == 0 else "BA"):
                out = work / f"{side}-{turn}.json"
                results[side].append(_run(side, sides[side], packages[side], bench_args, out))
        _print(args.rev, args.b, _medians(results["A"]), _medians(results["B"]), args.json)
    finally:
        for tree, _ in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _print(rev: str, rev_b: str | None, a: dict[str, tuple[float, str, bool]],
           b: dict[str, tuple[float, str, bool]], path: str | None) -> None:
    print(f"\n== A/B: A = {rev}, B = {rev_b or 'this checkout'}; medians over rounds ==")
    rows = {}
    for name in sorted(set(a) & set(b)):
        (va, unit, higher), (vb, _, _) = a[name], b[name]
        ratio = vb / va if va else float("nan")
        better = "" if va == 0 else ("better" if (ratio > 1) == higher and ratio != 1 else "")
        print(f"   {name:<70} A {va:>14,.3f}  B {vb:>14,.3f} {unit:<9} B/A {ratio:6.3f} "
              f"{better}")
        rows[name] = {"A": va, "B": vb, "unit": unit, "higher_is_better": higher,
                      "ratio": ratio}
    if path:
        Path(path).write_text(json.dumps({"A": rev, "B": rev_b or "this checkout",
                                          "figures": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
