"""The framework-free client (``/v1/js/runwire.js``) in Debian's chromium against a live engine:
tokens streaming into a page, a run with its streams, a send reaching a run in ``wait()``,
a waitpoint completed, a reader resuming after its connection is cut, and bad credentials
ending with a clear error and no retry loop. (tests/browser.py: the engine, the browser.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

from .browser import (_close_pages, API_KEY, AppServer, Engine, app, browser, engine,  # noqa: F401
                      open_page, wait_for)
from .faultproxy import FaultProxy

PAGE = """<!doctype html><meta charset="utf-8"><title>client</title>
<pre id="out"></pre><p id="status">starting</p>
<script type="module">
import * as rw from "%(base)s/v1/js/runwire.js";
window.rw = rw;
window.base = "%(base)s";
document.getElementById("status").textContent = "ready";
</script>"""


def client_page(browser: Any, engine: Engine, app: AppServer) -> Any:
    app.files["client.html"] = PAGE % {"base": engine.url}
    console: list[str] = []
    page = open_page(browser, console=console)
    page.goto(f"{app.url}/client.html")
    try:
        page.wait_for_function("document.getElementById('status').textContent === 'ready'",
                               timeout=10_000)
    except Exception:
        raise AssertionError(f"the page did not load the client: {console}") from None
    return page


def test_tokens_stream_into_the_page(browser, engine, app):
    run_id, token = engine.trigger("tokens", {"n": 200, "delay": 0.005, "batch": 5})
    page = client_page(browser, engine, app)
    page.evaluate("""([runId, token]) => {
        window.done = (async () => {
          const out = document.getElementById("out");
          const got = [];
          for await (const chunk of rw.readStream(runId, "ai", {accessToken: token,
                                                                  baseURL: window.base})) {
            got.push(chunk);
            out.textContent += chunk;
          }
          return got;
        })();
    }""", [run_id, token])
    page.wait_for_function("document.getElementById('out').textContent.length > 0")
    got = page.evaluate("window.done")
    assert got == [f"token-{i} " for i in range(200)]
    assert page.text_content("#out") == "".join(got)
    # from an index, and the same stream read again after the run: in full
    tail = page.evaluate("""async ([runId, token]) => {
        const got = [];
        for await (const c of rw.readStream(runId, "ai", {accessToken: token,
                                                          baseURL: window.base,
                                                          startIndex: 190})) got.push(c);
        return got;
    }""", [run_id, token])
    assert tail == [f"token-{i} " for i in range(190, 200)]


def test_subscribe_to_run_gives_the_run_and_every_chunk(browser, engine, app):
    run_id, token = engine.trigger("tokens", {"n": 30, "delay": 0.01, "batch": 3})
    page = client_page(browser, engine, app)
    parts = page.evaluate("""async ([runId, token]) => {
        const parts = [];
        for await (const part of rw.subscribeToRun(runId, {accessToken: token,
                                                          baseURL: window.base})) {
          parts.push(part.type === "run" ? {type: "run", status: part.run.status}
                                         : {type: part.type, chunk: part.chunk,
                                            index: part.index});
        }
        return parts;
    }""", [run_id, token])
    chunks = [p for p in parts if p["type"] == "ai"]
    assert [c["chunk"] for c in chunks] == [f"token-{i} " for i in range(30)]
    assert [c["index"] for c in chunks] == list(range(30))
    statuses = [p["status"] for p in parts if p["type"] == "run"]
    assert statuses[-1] == "COMPLETED"


def test_a_send_from_the_page_reaches_a_run_in_wait(browser, engine, app):
    run_id, token = engine.trigger("waiter", {"x": 1})
    page = client_page(browser, engine, app)
    # the run is in wait(): its JSON chunk is there first
    first = page.evaluate("""async ([runId, token]) => {
        for await (const c of rw.readStream(runId, "data", {accessToken: token,
                                                            baseURL: window.base})) return c;
    }""", [run_id, token])
    assert first == {"step": "waiting", "payload": {"x": 1}}
    sent = page.evaluate("""([runId, token]) => rw.sendInput(runId, "go", {"approved": true},
                                                            {accessToken: token,
                                                             baseURL: window.base})""",
                         [run_id, token])
    assert sent == {"index": 0}
    run = engine.wait_finished(run_id)
    assert run["status"] == "COMPLETED" and run["output"] == {"got": {"approved": True}}
    # a finished run refuses a send with a clear error
    error = page.evaluate("""([runId, token]) => rw.sendInput(runId, "go", 1,
            {accessToken: token, baseURL: window.base}).then(() => null,
            (e) => ({name: e.name, status: e.status, code: e.code, message: e.message}))""",
                          [run_id, token])
    assert error["name"] == "RunwireError" and error["status"] == 409
    assert error["code"] == "run_finished"


def test_complete_a_waitpoint_token(browser, engine, app):
    thread = engine.thread
    assert thread.engine is not None

    async def make() -> tuple[str, str]:
        service = thread.engine.service  # type: ignore[union-attr]
        waitpoint = await service.create_waitpoint(timeout=600)
        return waitpoint.id, service.waitpoint_token(waitpoint)

    token_id, waitpoint_token = trio.from_thread.run(
        make, trio_token=thread._token)  # type: ignore[attr-defined]
    page = client_page(browser, engine, app)
    answer = page.evaluate("""([id, token]) => rw.completeToken(id, {"ok": 1},
                                   {accessToken: token, baseURL: window.base})""",
                           [token_id, waitpoint_token])
    assert answer["completed"] is True and answer["waitpoint"]["status"] == "COMPLETED"
    again = page.evaluate("""([id, token]) => rw.completeToken(id, 2,
                                   {accessToken: token, baseURL: window.base})""",
                          [token_id, waitpoint_token])
    assert again["completed"] is False
    missing = page.evaluate("""([token]) => rw.completeToken("wp_nope", 1,
            {accessToken: token, baseURL: window.base}).then(() => null,
            (e) => ({status: e.status, code: e.code}))""", [API_KEY])
    assert missing == {"status": 404, "code": "not_found"}


@pytest.mark.parametrize("bad", ["wrong", "expired"])
def test_a_bad_token_is_a_clear_error_without_retrying(browser, engine, app, bad):
    run_id, token = engine.trigger("tokens", {"n": 3})
    if bad == "expired":
        answer = engine.http.post("/v1/api/tokens", json={"scopes": [f"read:runs:{run_id}"],
                                                          "expires_in": 1})
        token = answer.json()["token"]
        time.sleep(1.5)
    else:
        token = "not-a-token"
    requests: list[str] = []
    page = client_page(browser, engine, app)
    page.on("request", lambda r: requests.append(r.url) if "/v1/runs/" in r.url else None)
    for call in ("readStream(runId, 'ai', opts)", "subscribeToRun(runId, opts)"):
        error = page.evaluate("""async ([runId, token, call]) => {
            const opts = {accessToken: token, baseURL: window.base};
            try {
              const it = call.startsWith("read") ? rw.readStream(runId, "ai", opts)
                                                 : rw.subscribeToRun(runId, opts);
              for await (const _ of it) {}
              return null;
            } catch (e) {
              return {name: e.name, status: e.status, code: e.code, message: e.message};
            }
        }""", [run_id, token, call])
        assert error is not None, call
        assert error["name"] == "RunwireError" and error["status"] == 401, error
        assert "wrong or expired" in error["message"], error
    page.wait_for_timeout(1000)  # (a plain sleep would hold back Playwright's events)
    assert len(requests) == 2, requests  # one request each: no retry loop


def test_unknown_run_is_404_and_an_unwritten_key_is_empty_until_chunks_come(browser, engine, app):
    page = client_page(browser, engine, app)
    error = page.evaluate("""async ([key]) => {
        try { for await (const _ of rw.readStream("run_nope", "ai", {accessToken: key,
                                                                    baseURL: window.base})) {}
        } catch (e) { return {status: e.status, code: e.code}; }
    }""", [API_KEY])
    assert error == {"status": 404, "code": "not_found"}
    run_id, token = engine.trigger("waiter", None)
    page.evaluate("""([runId, token]) => {
        window.later = [];
        window.reading = (async () => {
          for await (const c of rw.readStream(runId, "late", {accessToken: token,
                                                              baseURL: window.base}))
            window.later.push(c);
          return "ended";
        })();
    }""", [run_id, token])
    page.wait_for_timeout(500)
    assert page.evaluate("window.later") == []
    engine.send(run_id, "go", 1)
    engine.wait_finished(run_id)
    assert page.evaluate("window.reading") == "ended"  # the run ended: so did the key
    # bad arguments are refused before any request
    message = page.evaluate("""() => { try { rw.readStream("", "ai", {accessToken: "x",
            baseURL: window.base}).next(); } catch (e) { return e.message; }
            return rw.readStream("r", "ai", {accessToken: ""}).next().then(() => null,
                                                                         (e) => e.message); }""")
    assert "accessToken" in message


def test_a_reader_resumes_after_its_connection_is_cut(browser, engine, app):
    """The page reads through a proxy that the test cuts (TCP resets) while tokens stream:
    the reader reconnects from the next index, nothing lost or repeated."""
    run_id, token = engine.trigger("tokens", {"n": 400, "delay": 0.01, "batch": 2, "wait": True})
    with proxy_thread(engine.thread.port) as (proxy, port, trio_token):
        page = client_page(browser, engine, app)
        page.evaluate("""([runId, token, base]) => {
            window.got = [];
            window.done = (async () => {
              for await (const c of rw.readStream(runId, "ai", {accessToken: token,
                    baseURL: base, retryDelayInMs: 50, maxRetryDelayInMs: 200}))
                window.got.push(c);
              return window.got;
            })();
        }""", [run_id, token, f"http://127.0.0.1:{port}"])
        engine.send(run_id, "go", True)
        cuts = 0
        for at in (40, 150, 300):
            wait_for(lambda: page.evaluate("window.got.length") >= at, what=f"{at} chunks")
            cuts += trio.from_thread.run_sync(proxy.cut_all, trio_token=trio_token)
        got = page.evaluate("window.done")
        accepted = proxy.accepted
    assert cuts >= 3
    assert accepted >= 4  # it did reconnect
    assert got == [f"token-{i} " for i in range(400)]


@contextmanager
def proxy_thread(target: int) -> Iterator[tuple[FaultProxy, int, Any]]:
    """A FaultProxy to ``target`` running under trio in a thread of its own (Playwright's
    sync API must stay on the test's thread)."""
    proxy = FaultProxy(target, seed=17)
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            box["port"] = await nursery.start(proxy.run)
            box["stop"] = nursery.cancel_scope
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield proxy, box["port"], box["token"]
    finally:
        trio.from_thread.run_sync(box["stop"].cancel, trio_token=box["token"])
        thread.join(10)


def test_timeout_and_abort_end_a_read_quietly(browser, engine, app):
    run_id, token = engine.trigger("waiter", None)  # writes one chunk, then waits
    page = client_page(browser, engine, app)
    result = page.evaluate("""async ([runId, token]) => {
        const started = performance.now();
        const got = [];
        for await (const c of rw.readStream(runId, "data", {accessToken: token,
              baseURL: window.base, timeoutInSeconds: 0.5})) got.push(c);
        return {got: got.length, ms: performance.now() - started};
    }""", [run_id, token])
    assert result["got"] == 1 and result["ms"] >= 500  # ended 0.5 s after the last chunk
    page.evaluate("""([runId, token]) => {
        window.controller = new AbortController();
        window.aborted = (async () => {
          for await (const c of rw.readStream(runId, "data", {accessToken: token,
                baseURL: window.base, signal: window.controller.signal})) {}
          return "ended";
        })();
    }""", [run_id, token])
    wait_for(lambda: engine.open_requests() > 0, what="the read")
    page.evaluate("window.controller.abort()")
    assert page.evaluate("window.aborted") == "ended"
    wait_for(lambda: engine.open_requests() == 0, timeout=10, what="the engine to free it")
    engine.send(run_id, "go", 1)
    engine.wait_finished(run_id)


def test_reads_go_on_across_the_engines_sse_interval(browser, app):
    """The engine closes an SSE response every ``Limits.sse_interval`` (here 0.5 s): the
    stream reader (the durable-streams client) and the run subscription (Last-Event-ID) go
    on from where they were, nothing lost or repeated, over a 3 s stream."""
    from runwire.engine import EngineThread, Limits

    from .browser import TASKS

    with EngineThread(TASKS, api_key=API_KEY, limits=Limits(sse_interval=0.5)) as thread:
        short = Engine(thread)
        run_id, token = short.trigger("tokens", {"n": 300, "delay": 0.01})
        page = client_page(browser, short, app)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url) if "/v1/runs/" in r.url else None)
        got = page.evaluate("""async ([runId, token]) => {
            const opts = {accessToken: token, baseURL: window.base};
            const [stream, parts] = await Promise.all([
              (async () => { const got = []; for await (const c of rw.readStream(runId, "ai",
                                                                                  opts)) got.push(c);
                             return got; })(),
              (async () => { const got = []; for await (const p of rw.subscribeToRun(runId, opts))
                               if (p.type === "ai") got.push([p.index, p.chunk]);
                             return got; })(),
            ]);
            return {stream, parts};
        }""", [run_id, token])
        short.http.close()
    expected = [f"token-{i} " for i in range(300)]
    assert got["stream"] == expected
    assert got["parts"] == [[i, t] for i, t in enumerate(expected)]
    assert sum("/streams/ai" in u for u in requests) >= 4  # it did reconnect
    assert sum("/events" in u for u in requests) >= 4
