"""What every benchmark shares: results, statistics, worker processes, memory and CPU probes.

Theory of operation: the orchestrator (``python -m tests.bench``) is plain synchronous code.
Everything measured runs in *worker processes* it starts with :func:`spawn`: a server (an
engine, or a baseline server) prints ``READY {json}`` once it listens and then obeys lines on
its stdin (``stop``; an engine also ``reset``); a client prints ``RESULT {json}`` when it is
done. Workers are this package's modules run as
``python -m tests.bench.<module> <role> <json args>``; each module's ``worker(role, args)``
does the work. Starting every measured thing in a fresh process keeps one benchmark's heap,
caches and garbage out of the next one's figures.

A benchmark returns a :class:`Report`: figures (each the samples of several repetitions,
summarised by the median) and checks (a figure or a ratio against a target). Ratios are always
between figures measured in the same run, so a noisy machine moves both sides together.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

REPO = Path(__file__).resolve().parents[2]
API_KEY = "bench-api-key-0123456789"
KiB = 1024
MiB = 1024 * 1024


# --- results -------------------------------------------------------------------------------


@attrs.define
class Figure:
    """One measured quantity: its samples (one per repetition) and how to read it."""

    name: str
    unit: str
    samples: list[float]
    higher_is_better: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> str:
        """``min..max`` of the samples, so a reader can judge the noise."""
        if len(self.samples) < 2:
            return ""
        return f"{fmt(min(self.samples))}..{fmt(max(self.samples))}"


@attrs.define
class Check:
    """A target: ``value`` (a figure's median or a ratio of medians) against ``threshold``."""

    name: str
    value: float
    threshold: float
    at_least: bool = True
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.value >= self.threshold if self.at_least else self.value <= self.threshold

    @property
    def target(self) -> str:
        return f"{'>=' if self.at_least else '<='} {fmt(self.threshold)}{self.unit}"


@attrs.define
class Report:
    """What one benchmark found."""

    bench: str
    figures: list[Figure] = attrs.field(factory=list)
    checks: list[Check] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    skipped: str | None = None

    def figure(self, name: str) -> Figure:
        for fig in self.figures:
            if fig.name == name:
                return fig
        raise KeyError(name)

    def add(self, name: str, unit: str, samples: Iterable[float], *,
            higher_is_better: bool = True, note: str = "") -> Figure:
        fig = Figure(name, unit, [float(s) for s in samples], higher_is_better, note)
        self.figures.append(fig)
        return fig

    def ratio(self, name: str, num: str, den: str, threshold: float, *,
              at_least: bool = True) -> Check | None:
        """A check on ``median(num) / median(den)``; skipped when either figure is missing."""
        try:
            a, b = self.figure(num).median, self.figure(den).median
        except KeyError:
            return None
        check = Check(name, a / b if b else float("nan"), threshold, at_least)
        self.checks.append(check)
        return check

    def target(self, name: str, fig: str, threshold: float, unit: str, *,
               at_least: bool = True) -> Check | None:
        """A check on a figure's median against an absolute threshold."""
        try:
            value = self.figure(fig).median
        except KeyError:
            return None
        check = Check(name, value, threshold, at_least, unit)
        self.checks.append(check)
        return check

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench, "skipped": self.skipped, "notes": self.notes,
            "figures": [{**attrs.asdict(f), "median": f.median} for f in self.figures],
            "checks": [{**attrs.asdict(c), "met": c.met} for c in self.checks],
        }


def fmt(value: float) -> str:
    """A number for a table: thousands separators, three significant digits for small ones."""
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank on sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def print_report(report: Report, out: Any = None) -> None:
    """The report as a plain-text table."""
    out = out or sys.stdout
    print(f"\n== {report.bench} ==", file=out)
    if report.skipped:
        print(f"   skipped: {report.skipped}", file=out)
    if report.figures:
        width = max(len(f.name) for f in report.figures)
        for fig in report.figures:
            spread = f"  [{fig.spread}]" if fig.spread else ""
            note = f"  ({fig.note})" if fig.note else ""
            print(f"   {fig.name:<{width}}  {fmt(fig.median):>12} {fig.unit}{spread}{note}",
                  file=out)
    for check in report.checks:
        mark = "MET   " if check.met else "MISSED"
        print(f"   [{mark}] {check.name}: {fmt(check.value)}{check.unit} "
              f"(target {check.target})", file=out)
    for note in report.notes:
        print(f"   note: {note}", file=out)
    out.flush()


# --- worker processes ----------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker process failed or did not answer in time; carries the tail of its stderr."""


class Worker:
    """A child process speaking the ``READY``/``RESULT`` line protocol."""

    def __init__(self, module: str, role: str, args: dict[str, Any]) -> None:
        self.module, self.role = module, role
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{role}-", suffix=".log",
                                                delete=False)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, role, json.dumps(args)], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1)
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, tag: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the next ``TAG {json}`` line (other lines are ignored)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                self.kill()
                raise WorkerError(f"{self.role}: no {tag} within {timeout:g} s\n"
                                  f"{self.stderr_tail()}") from None
            if line is None:
                self.proc.wait()
                raise WorkerError(f"{self.role} exited with {self.proc.returncode} before "
                                  f"{tag}\n{self.stderr_tail()}")
            head, _, body = line.partition(" ")
            if head == tag:
                return json.loads(body) if body else {}

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Ask a server to stop; its final ``RESULT``."""
        self.send("stop")
        result = self.expect("RESULT", timeout)
        self.wait(timeout)
        return result

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WorkerError(f"{self.role} did not exit\n{self.stderr_tail()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far (from /proc)."""
        return proc_cpu_seconds(self.pid)

    def stderr_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        """Kill the process if it still runs; show its stderr if it logged an error."""
        self.kill()
        tail = self.stderr_tail(40)
        if "Traceback" in tail or "ERROR" in tail:
            print(f"--- stderr of {self.module} {self.role} (pid {self.pid}) ---\n{tail}\n---",
                  file=sys.stderr, flush=True)
        self._log.close()
        os.unlink(self._log.name)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def spawn(module: str, role: str, **args: Any) -> Worker:
    """Start ``python -m module role json(args)``."""
    return Worker(module, role, args)


def spawn_engine(**args: Any) -> Worker:
    """Start an engine worker (``tests/bench/_engine_server.py``); it prints ``READY``."""
    return spawn("tests.bench._engine_server", "serve", **args)


@contextlib.contextmanager
def serving(servers: dict[str, Worker]) -> Iterator[dict[str, str]]:
    """The ``READY`` URL of each server; stops them all at the end (closes them on error)."""
    try:
        yield {name: server.expect("READY")["url"] for name, server in servers.items()}
        for server in servers.values():
            server.stop()
    finally:
        for server in servers.values():
            server.close()


def run_client(module: str, role: str, timeout: float = 600.0, **args: Any) -> dict[str, Any]:
    """Run a client worker to completion; its ``RESULT``."""
    with spawn(module, role, **args) as worker:
        result = worker.expect("RESULT", timeout)
        worker.wait()
        return result


def worker_main(worker: Callable[[str, dict[str, Any]], Any]) -> None:
    """``if __name__ == "__main__"`` of a benchmark module: dispatch ``role json``."""
    role, raw = sys.argv[1], sys.argv[2]
    worker(role, json.loads(raw))


def emit(tag: str, payload: dict[str, Any] | None = None) -> None:
    """Print one protocol line from inside a worker."""
    print(f"{tag} {json.dumps(payload or {})}", flush=True)


def read_commands() -> str:
    """The next command line from the orchestrator (``stop`` at end of input)."""
    line = sys.stdin.readline()
    return line.strip() or "stop"


# --- probes --------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def rss_parts(pid: int | str = "self") -> dict[str, int]:
    """``RssAnon`` (the heap), ``RssFile`` and ``RssShmem`` (mapped files, e.g. SQLite's
    WAL index) in bytes."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                name, value = line.split(":", 1)
                parts[name] = int(value.split()[0]) * KiB
    return parts


def proc_cpu_seconds(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model,
            "python": sys.version.split()[0], "platform": sys.platform}


def sqlite_available() -> str | None:
    """``None`` if the sqlite store can be opened, else why not."""
    try:
        from runwire.engine import open_store

        store = open_store(f"sqlite:///{temp_dir()}/probe.db")
    except Exception as exc:  # ImportError while engine/_sqlite_store.py is being written
        return f"sqlite store not available ({type(exc).__name__}: {exc})"
    import trio

    trio.run(store.aclose)
    return None


_TEMP_DIRS: list[str] = []


def temp_dir() -> str:
    """A temporary directory, removed when this (orchestrating) process exits."""
    if not _TEMP_DIRS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _TEMP_DIRS])
    path = tempfile.mkdtemp(prefix="runwire-bench-")
    _TEMP_DIRS.append(path)
    return path


def temp_db() -> str:
    """A fresh ``sqlite:///`` URL in a temporary directory."""
    return f"sqlite:///{temp_dir()}/bench.db"


def store_url(name: str) -> str:
    """A fresh store of that name: ``memory://``, or a new SQLite file."""
    return temp_db() if name == "sqlite" else "memory://"


def engine_stores(report: Report, wanted: Iterable[str]) -> dict[str, str]:
    """Store URLs for the wanted store names (``memory``, ``sqlite``) that can be opened;
    a note on the report for each one skipped."""
    stores: dict[str, str] = {}
    for name in wanted:
        missing = sqlite_available() if name == "sqlite" else None
        if missing:
            report.notes.append(f"sqlite variants skipped: {missing}")
        elif name in ("memory", "sqlite"):
            stores[name] = store_url(name)
    return stores


def trio_worker(role: str, main: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
                ) -> Callable[[str, dict[str, Any]], None]:
    """A client worker (for :func:`worker_main`) that plays ``role``: runs ``main(args)``
    under trio and emits its ``RESULT``."""
    def worker(given: str, args: dict[str, Any]) -> None:
        assert given == role, given
        emit("RESULT", trio.run(main, args))

    return worker
