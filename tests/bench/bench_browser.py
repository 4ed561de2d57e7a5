"""The browser: the dashboard keeping up with a live stream of 1,000 chunks/s, and the React
hook's renders per throttle interval, in Debian's chromium (Playwright), against a live engine.

A task writes ``rate`` text chunks a second for ``seconds`` seconds (10 at a time, paced on
the wall clock) and notes when it wrote each one. *Dashboard lag*: the run's page is open in
the dashboard while the run streams; after every animation frame an init script notes the
time and how many chunks the stream's view has drawn (its ``data-chunks``); a chunk's lag is
the first such time at which it was drawn minus the time it was written (one clock: the same
machine). *No growing lag* compares the median lag of the last second with the first second's
(a ratio within one run). *Hook renders*: a React page shows the stream with
``useRealtimeStream(..., {throttleInMs: 16})`` and notes every render that shows new parts;
the figure is renders per 16 ms interval of streaming (at most 1 by design) and the smallest
gap between two renders.

    python -m tests.bench --only browser
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from runwire import streams, task

from ._harness import Report, percentile

NAME = "browser"

ticks = streams.define(id="ticks", type=str)
#: run id -> the wall-clock time each chunk was written
WRITTEN: dict[str, list[float]] = {}


@task(id="bench-paced")
async def paced(payload: dict[str, Any], ctx: Any) -> int:
    rate, seconds = payload["rate"], payload["seconds"]
    times = WRITTEN.setdefault(ctx.run.id, [])
    await trio.sleep(payload.get("start_after", 0))
    start = time.time()
    for i in range(int(rate * seconds)):
        if i % 10 == 0:
            await trio.sleep(max(0.0, start + i / rate - time.time()))
        times.append(time.time())
        await ticks.append(f"t{i} ")
    return len(times)


@attrs.frozen
class Params:
    rate: int = 1000
    seconds: float = 10.0
    repeat: int = 3
    throttle_ms: int = 16


FULL = Params()
QUICK = Params(seconds=5.0, repeat=1)
SMOKE = Params(rate=200, seconds=1.0, repeat=1)

FRAMES = """
window.__frames = [];
const tick = () => {
  const el = document.querySelector("section[data-stream='ticks']");
  if (el) {
    const n = Number(el.dataset.chunks || 0);
    const last = window.__frames[window.__frames.length - 1];
    if (!last || last[1] !== n) window.__frames.push([Date.now(), n]);
  }
  requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""

HOOK_PAGE = """<!doctype html><meta charset="utf-8">
<script type="importmap">%(map)s</script><div id="root"></div>
<script type="module">
import React from "react";
import { createRoot } from "react-dom/client";
import { useRealtimeStream } from "runwire/react";
const p = new URLSearchParams(location.hash.slice(1));
window.__renders = [];
function View() {
  const { parts, isComplete } = useRealtimeStream(p.get("run"), "ticks", {
    accessToken: p.get("token"), baseURL: p.get("base"), throttleInMs: Number(p.get("t")) });
  const last = window.__renders[window.__renders.length - 1];
  if (!last || last[1] !== parts.length) window.__renders.push([performance.now(), parts.length]);
  return React.createElement("p", { id: isComplete ? "done" : "live" }, String(parts.length));
}
createRoot(document.getElementById("root")).render(React.createElement(View));
</script>"""


def _trigger(engine: Any, params: Params, start_after: float) -> tuple[str, str]:
    answer = engine.http.post("/v1/api/tasks/bench-paced/trigger", json={"payload": {
        "rate": params.rate, "seconds": params.seconds, "start_after": start_after}})
    answer.raise_for_status()
    body = answer.json()
    return body["id"], body["public_access_token"]


def _lags(frames: list[list[float]], written: list[float]) -> list[tuple[float, float]]:
    """(written at, lag in ms) of every chunk, from the frames' (time ms, count) samples."""
    out = []
    frame = 0
    for i, at in enumerate(written):
        while frame < len(frames) and frames[frame][1] <= i:
            frame += 1
        if frame == len(frames):
            break
        out.append((at, frames[frame][0] - at * 1000))
    return out


def _dashboard_once(browser: Any, engine: Any, params: Params) -> dict[str, float]:
    from tests.browser import API_KEY, open_page

    page = open_page(browser)
    page.add_init_script(FRAMES)
    page.goto(f"{engine.url}/dashboard")
    page.fill("#api-key", API_KEY)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#runs-state:has-text('live')")
    run_id, _ = _trigger(engine, params, start_after=1.0)
    page.goto(f"{engine.url}/dashboard#/run/{run_id}")
    total = int(params.rate * params.seconds)
    page.wait_for_selector(f"section[data-stream='ticks'][data-chunks='{total}']",
                           timeout=(params.seconds + 30) * 1000)
    frames = page.evaluate("window.__frames")
    page.context.close()
    written = _written(run_id, total)
    lags = _lags(frames, written)
    assert len(lags) == total, (len(lags), total)
    t0 = written[0]
    first = [lag for at, lag in lags if at - t0 < 1.0]
    last = [lag for at, lag in lags if at - t0 >= params.seconds - 1.0]
    return {"p50": statistics.median(l for _, l in lags), "p95": percentile([l for _, l in lags], 95),
            "max": max(l for _, l in lags), "first": statistics.median(first),
            "last": statistics.median(last)}


def _written(run_id: str, total: int) -> list[float]:
    deadline = time.monotonic() + 30
    while len(WRITTEN.get(run_id, [])) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    return WRITTEN.pop(run_id)


def _hooks_once(browser: Any, engine: Any, app: Any, params: Params) -> dict[str, float]:
    from tests.browser import import_map, open_page

    app.files["bench.html"] = HOOK_PAGE % {"map": import_map(engine, app)}
    run_id, token = _trigger(engine, params, start_after=1.0)
    page = open_page(browser)
    page.goto(f"{app.url}/bench.html#run={run_id}&token={token}&base={engine.url}"
              f"&t={params.throttle_ms}")
    page.wait_for_selector("#done", timeout=(params.seconds + 30) * 1000)
    renders = page.evaluate("window.__renders")
    page.context.close()
    _written(run_id, int(params.rate * params.seconds))
    times = [t for t, n in renders if n > 0]
    span = times[-1] - times[0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"per_interval": (len(times) - 1) / (span / params.throttle_ms) if span else 0.0,
            "min_gap": min(gaps) if gaps else 0.0, "renders": float(len(times))}


def run(params: Params = FULL) -> Report:
    report = Report(NAME)
    if not Path("/usr/bin/chromium").exists():
        report.skipped = "no /usr/bin/chromium (apt-get install chromium)"
        return report
    import tempfile

    from playwright.sync_api import sync_playwright

    from runwire.engine import EngineThread
    from tests.browser import API_KEY, CHROMIUM, CHROMIUM_ARGS, AppServer, Engine, vendor_dir

    dash: list[dict[str, float]] = []
    hooks: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, EngineThread([paced], api_key=API_KEY) as thread:
        engine = Engine(thread)
        app = AppServer()
        for name, path in ((f"vendor/{p.name}", p) for p in vendor_dir(Path(tmp)).iterdir()):
            app.files[name] = path
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
                for _ in range(params.repeat):
                    dash.append(_dashboard_once(browser, engine, params))
                    hooks.append(_hooks_once(browser, engine, app, params))
                browser.close()
        finally:
            app.close()
            engine.http.close()
    stream = f"{params.rate:,} chunks/s for {params.seconds:g} s"
    report.add("dashboard lag p50", "ms", [d["p50"] for d in dash], higher_is_better=False,
               note=f"written -> drawn, {stream}")
    report.add("dashboard lag p95", "ms", [d["p95"] for d in dash], higher_is_better=False)
    report.add("dashboard lag max", "ms", [d["max"] for d in dash], higher_is_better=False)
    report.add("dashboard lag, first second", "ms", [d["first"] for d in dash],
               higher_is_better=False)
    report.add("dashboard lag, last second", "ms", [d["last"] for d in dash],
               higher_is_better=False)
    report.add("hook renders per throttle interval", "", [h["per_interval"] for h in hooks],
               higher_is_better=False, note=f"throttleInMs {params.throttle_ms}, {stream}")
    report.add("hook smallest gap between renders", "ms", [h["min_gap"] for h in hooks])
    report.ratio("no growing lag (last second / first second)", "dashboard lag, last second",
                 "dashboard lag, first second", 2.0, at_least=False)
    report.target("dashboard keeps up (p95 lag)", "dashboard lag p95", 250, " ms",
                  at_least=False)
    report.target("hook: at most one render per interval", "hook renders per throttle interval",
                  1.0, "", at_least=False)
    return report
