"""What the browser tests share: a live engine in a thread, Debian's chromium through the
Playwright Python package, pages served at a made-up origin, and the tasks they run.

Chromium is ``/usr/bin/chromium`` (``.ci/run`` installs it with apt-get; ``playwright install``
is never run). The tests skip when it is absent, except under ``CI=true``, where they fail.
Pages are served by a loopback HTTP server of their own (:class:`AppServer`): their scripts
are the built client from the engine (``/v1/js/``), cross-origin, so the engine's CORS is
exercised too; React comes from ``sdk/js/node_modules`` (``npm ci``),
bundled as ES modules by ``sdk/js/vendor.mjs``. Every request a page makes outside loopback
is aborted, so nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from runwire import streams, task
from runwire.engine import EngineThread, Limits

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "sdk" / "js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
API_KEY = "browser-tests-key-0123456789"

ai = streams.define(id="ai", type=str)
data = streams.define(id="data")
go = streams.input(id="go")
stop = streams.input(id="stop")


@task(id="tokens")
async def tokens(payload: dict[str, Any]) -> dict[str, Any]:
    """Streams ``n`` tokens (``token-0 `` ...) to ``ai``, ``delay`` seconds apart, in batches
    of ``batch`` (default 1); with ``wait`` it first waits for a ``go`` input."""
    if payload.get("wait"):
        (await go.once()).unwrap()
    n, delay, batch = payload["n"], payload.get("delay", 0.0), payload.get("batch", 1)
    for start in range(0, n, batch):
        for i in range(start, min(n, start + batch)):
            await ai.append(f"token-{i} ")
        if delay:
            await trio.sleep(delay)
    return {"tokens": n}


@task(id="waiter")
async def waiter(payload: Any) -> Any:
    """Writes one JSON chunk, then waits for a ``go`` input and returns it."""
    await data.append({"step": "waiting", "payload": payload})
    received = (await go.once()).unwrap()
    return {"got": received}


@task(id="chat")
async def chat(payload: dict[str, Any]) -> dict[str, Any]:
    """A fake AI completion: words to ``ai`` every ``delay`` seconds until done or a ``stop``
    input arrives."""
    words = (payload.get("prompt", "") + " ") * 0 + ("Structured concurrency keeps every "
                                                     "task owned. " * 40)
    stopped = None
    sent = 0
    with trio.CancelScope() as generation:
        def on_stop(signal: Any) -> None:
            nonlocal stopped
            stopped = signal
            generation.cancel()

        stop.on(on_stop)
        for word in words.split():
            await ai.append(word + " ")
            sent += 1
            await trio.sleep(payload.get("delay", 0.02))
    return {"stopped": stopped is not None, "tokens": sent}


TASKS = [tokens, waiter, chat]


def need_chromium() -> None:
    """Skip without chromium, but fail on CI (where .ci/run installs it)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run must apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]'")


class Engine:
    """A live engine in a thread, and a small HTTP client on its JSON API."""

    def __init__(self, thread: EngineThread) -> None:
        self.thread = thread
        self.url = thread.url.replace("ws://", "http://").removesuffix("/v1")
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 headers={"Authorization": f"Bearer {API_KEY}"})

    def trigger(self, task_id: str, payload: Any = None, **options: Any) -> tuple[str, str]:
        answer = self.http.post(f"/v1/api/tasks/{task_id}/trigger",
                                json={"payload": payload, "options": options})
        answer.raise_for_status()
        body = answer.json()
        return body["id"], body["public_access_token"]

    def run(self, run_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/api/runs/{run_id}")
        answer.raise_for_status()
        return dict(answer.json())

    def wait_finished(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["finished_at"] is not None:
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not finish in {timeout} s")

    def send(self, run_id: str, key: str, value: Any) -> None:
        self.http.post(f"/v1/api/runs/{run_id}/inputs/{key}", json=value).raise_for_status()

    def open_requests(self) -> int:
        engine = self.thread.engine
        assert engine is not None
        return int(engine.statistics().open_requests)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    need_chromium()
    thread = EngineThread(TASKS, api_key=API_KEY, limits=Limits(sse_interval=60))
    with thread:
        live = Engine(thread)
        yield live
        live.http.close()


def vendor_dir(tmp: Path) -> Path:
    """React and ReactDOM as ES modules (built from sdk/js/node_modules by vendor.mjs)."""
    node = shutil.which("node")
    assert node, "node is needed for the browser tests (React from npm)"
    if not (JS / "node_modules" / "react").exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install sdk/js's packages"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
    out = tmp / "vendor"
    subprocess.run([node, str(JS / "vendor.mjs"), str(out)], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vendor_dir(tmp_path_factory.mktemp("vendor"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                      headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


_TYPES = {".js": "text/javascript", ".html": "text/html", ".css": "text/css",
          ".json": "application/json"}


class AppServer:
    """Test pages at ``http://127.0.0.1:<port>/<name>`` (another origin than the engine's,
    both on loopback as Chromium's private-network rules want): ``files[name]`` is a path or
    the text itself. Served by the standard library's threading HTTP server."""

    def __init__(self) -> None:
        self.files: dict[str, Path | str] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                name = self.path.split("?")[0].lstrip("/")
                source = files.get(name)
                if source is None:
                    self.send_error(404)
                    return
                body = source.read_bytes() if isinstance(source, Path) else source.encode()
                self.send_response(200)
                self.send_header("Content-Type", _TYPES.get(Path(name).suffix, "text/plain"))
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def app() -> Iterator[AppServer]:
    server = AppServer()
    yield server
    server.close()


_contexts: list[Any] = []


@pytest.fixture(autouse=True)
def _close_pages() -> Iterator[None]:
    """Each test's pages are closed after it (their reads end with them)."""
    yield
    while _contexts:
        try:
            _contexts.pop().close()
        except Exception:  # already closed by the test
            pass


def open_page(browser: Any, *, console: list[str] | None = None) -> Any:
    """A new page in a fresh context; requests that leave loopback are aborted."""
    context = browser.new_context()
    _contexts.append(context)
    page = context.new_page()

    def guard(route: Any) -> None:
        if route.request.url.startswith(("http://127.0.0.1", "http://localhost", "data:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", guard)
    if console is not None:
        page.on("console", lambda msg: console.append(msg.text))
        page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    return page


def import_map(engine: Engine, app: AppServer) -> str:
    """An import map for test pages: the engine's client, and React from the vendor files."""
    return json.dumps({"imports": {
        "runwire": f"{engine.url}/v1/js/runwire.js",
        "runwire/react": f"{engine.url}/v1/js/react.js",
        "react": f"{app.url}/vendor/react.js",
        "react-dom/client": f"{app.url}/vendor/react-dom-client.js",
    }})


def vendor_files(vendor: Path) -> dict[str, Path | str]:
    return {f"vendor/{p.name}": p for p in vendor.iterdir()}


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``check`` until it is true. While a page is open it waits with the page's
    ``wait_for_timeout``, which keeps Playwright's event loop turning: the pages' requests
    pass through a route handler in this process, which a plain ``time.sleep`` would stall."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pages = [page for context in _contexts for page in context.pages if not page.is_closed()]
        if pages:
            pages[-1].wait_for_timeout(50)
        else:
            time.sleep(0.05)
