"""The React hooks (``/v1/js/react.js``) in a small React page (React from npm, through an
import map), in Debian's chromium against a live engine: a stream's parts, the throttle, a
run with its streams, a send to a run in ``wait()``, a bad token, and a page closed
mid-stream leaving nothing behind on the engine."""

from __future__ import annotations

from typing import Any

from .browser import (_close_pages, AppServer, Engine, app, browser, engine, import_map,  # noqa: F401
                      open_page, vendor, vendor_files, wait_for)

APP_JS = """
import React from "react";
import { createRoot } from "react-dom/client";
import { useRealtimeStream, useRealtimeRunWithStreams, useInputStreamSend } from "runwire/react";
const h = React.createElement;
const params = new URLSearchParams(location.hash.slice(1));
const runId = params.get("run"), token = params.get("token"), base = params.get("base");
const throttleInMs = Number(params.get("throttle") || 16);
window.renders = [];   // [time, parts.length] of every render that showed new parts
window.onDataCalls = 0;

function Stream() {
  const { parts, error, isComplete } = useRealtimeStream(runId, "ai", {
    accessToken: token, baseURL: base, throttleInMs,
    onData: () => { window.onDataCalls++; },
  });
  const last = window.renders[window.renders.length - 1];
  if (!last || last[1] !== parts.length) window.renders.push([performance.now(), parts.length]);
  return h("div", null,
    h("pre", { id: "text" }, parts.join("")),
    h("p", { id: "count" }, String(parts.length)),
    h("p", { id: "complete" }, isComplete ? "complete" : "streaming"),
    error ? h("p", { id: "error" }, error.message) : null);
}

function Run() {
  const { run, streams, error } = useRealtimeRunWithStreams(runId, { accessToken: token,
                                                                    baseURL: base });
  const { send, isLoading, error: sendError } = useInputStreamSend(runId, "go", {
    accessToken: token, baseURL: base });
  return h("div", null,
    h("p", { id: "status" }, run ? run.status : "none"),
    h("p", { id: "output" }, run && run.output ? JSON.stringify(run.output) : ""),
    h("pre", { id: "streams" }, JSON.stringify(streams)),
    h("button", { id: "send", disabled: isLoading,
                  onClick: () => send({ approved: true }).then((r) => { window.sent = r; }) },
      "approve"),
    error ? h("p", { id: "error" }, error.message) : null,
    sendError ? h("p", { id: "send-error" }, sendError.message) : null);
}

createRoot(document.getElementById("root")).render(
  h(params.get("view") === "run" ? Run : Stream));
"""

PAGE = """<!doctype html><meta charset="utf-8"><title>hooks</title>
<script type="importmap">%(map)s</script>
<div id="root"></div>
<script type="module" src="app.js"></script>"""


def hooks_page(browser: Any, engine: Engine, app: AppServer, vendor: Any,
               requests: list[str] | None = None, **params: Any) -> Any:
    app.files.update(vendor_files(vendor))
    app.files["hooks.html"] = PAGE % {"map": import_map(engine, app)}
    app.files["app.js"] = APP_JS
    console: list[str] = []
    page = open_page(browser, console=console)
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url) if "/v1/runs/" in r.url else None)
    query = "&".join(f"{k}={v}" for k, v in {"base": engine.url, **params}.items())
    page.goto(f"{app.url}/hooks.html#{query}")
    page.console = console
    return page


def test_use_realtime_stream_shows_every_part_throttled(browser, engine, app, vendor):
    run_id, token = engine.trigger("tokens", {"n": 600, "delay": 0.002, "batch": 2})
    page = hooks_page(browser, engine, app, vendor, run=run_id, token=token, throttle=50)
    page.wait_for_selector("#complete:has-text('complete')", timeout=30_000)
    assert page.text_content("#text") == "".join(f"token-{i} " for i in range(600))
    assert page.evaluate("window.onDataCalls") == 600
    renders = page.evaluate("window.renders")
    times = [t for t, n in renders if n > 0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # at most one render per throttle interval: the next snapshot is taken >= 50 ms after the
    # previous one was committed, so renders showing new parts are >= 50 ms apart
    assert gaps and min(gaps) >= 49.8, gaps  # performance.now() is coarsened to 0.1 ms
    assert len(times) <= (times[-1] - times[0]) / 50 + 1, (len(times), times[-1] - times[0])
    assert len(times) >= 5  # it did render while streaming, not only at the end
    assert not page.console or all("error" not in m.lower() for m in page.console), page.console


def test_use_realtime_run_with_streams_and_input_send(browser, engine, app, vendor):
    run_id, token = engine.trigger("waiter", {"q": "ship it?"})
    page = hooks_page(browser, engine, app, vendor, run=run_id, token=token, view="run")
    page.wait_for_selector("#status:has-text('EXECUTING')", timeout=20_000)
    wait_for(lambda: '"data"' in (page.text_content("#streams") or ""), what="the data stream")
    assert page.evaluate("JSON.parse(document.getElementById('streams').textContent)") == {
        "data": [{"step": "waiting", "payload": {"q": "ship it?"}}]}
    page.click("#send")
    page.wait_for_selector("#status:has-text('COMPLETED')", timeout=20_000)
    assert page.evaluate("window.sent") == {"index": 0}
    assert page.text_content("#output") == '{"got":{"approved":true}}'
    # a second send to the finished run: the hook's error says so
    page.click("#send")
    page.wait_for_selector("#send-error", timeout=10_000)
    assert "run_finished" in (page.text_content("#send-error") or "")


def test_a_wrong_token_shows_in_the_hooks_error_without_a_retry_loop(browser, engine, app,
                                                                      vendor):
    run_id, _ = engine.trigger("tokens", {"n": 5})
    requests: list[str] = []
    page = hooks_page(browser, engine, app, vendor, requests, run=run_id, token="wrong-token")
    page.wait_for_selector("#error", timeout=20_000)
    message = page.text_content("#error") or ""
    assert "wrong or expired" in message and "unauthorized" in message, message
    page.wait_for_timeout(1000)  # (a plain sleep would hold back Playwright's events)
    assert len(requests) == 1, requests
    assert page.text_content("#count") == "0"


def test_a_page_closed_mid_stream_leaves_nothing_behind(browser, engine, app, vendor):
    # the earlier tests' pages are closed: the engine frees their requests
    wait_for(lambda: engine.open_requests() == 0, timeout=10, what="no open requests")
    run_id, token = engine.trigger("chat", {"delay": 0.05})
    before = 0
    page = hooks_page(browser, engine, app, vendor, run=run_id, token=token)
    wait_for(lambda: int(page.text_content("#count") or 0) > 3, what="some parts")
    # (between two of the reader's requests the count may be 0 for a moment)
    wait_for(lambda: engine.open_requests() > before, what="the page's open read")
    page.context.close()
    wait_for(lambda: engine.open_requests() == before, timeout=10,
             what="the engine to free the page's requests")
    engine.send(run_id, "stop", "done")
    engine.wait_finished(run_id)
