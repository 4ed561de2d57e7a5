"""examples/web: the plain-JS page and the React page streaming a (fake) AI completion with a
Stop button, run as a user would (``python -m examples.web.server``), in Debian's chromium.
The React page takes React from esm.sh; here those URLs are answered with React from
sdk/js/node_modules (vendor.mjs), so nothing leaves the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import ROOT, _close_pages, browser, need_chromium, open_page, vendor  # noqa: F401


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    need_chromium()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "examples.web.server"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        for _ in range(20):
            line = proc.stdout.readline()
            if found := re.match(r"(plain|React) page at (\S+)", line):
                urls[found[1]] = found[2]
            if found := re.match(r"engine at (\S+)", line):
                urls["engine"] = found[1]
            if len(urls) == 3:
                break
        assert len(urls) == 3, urls
        yield urls
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ask_and_stop(page: Any, ask: str, stop: str, answer: str, status: str) -> None:
    page.click(ask)
    page.wait_for_function(f"(document.querySelector({answer!r})?.textContent ?? '')"
                           f".split(' ').length > 8", timeout=20_000)
    page.click(stop)
    page.wait_for_selector(f"{status}:has-text('stopped after')", timeout=20_000)
    tokens = int(re.search(r"stopped after (\d+)", page.text_content(status) or "")[1])
    text = page.text_content(answer) or ""
    assert len(text.split()) == tokens  # every token the run made, none twice
    assert text.startswith("Realtime streams let a task hand its output")
    assert tokens < 100  # stopped long before the end (~130 words)


def test_the_plain_page_streams_and_stops(browser, server):
    page = open_page(browser)
    page.goto(server["plain"])
    ask_and_stop(page, "#start", "#stop", "#answer", "#status")


def test_the_react_page_streams_and_stops(browser, server, vendor: Path):
    page = open_page(browser)
    files = {"https://esm.sh/react@19.2.0": vendor / "react.js",
             "https://esm.sh/react-dom@19.2.0/client": vendor / "react-dom-client.js"}

    def cdn(route: Any) -> None:
        source = files.get(route.request.url)
        if source is None:
            route.abort()
        else:
            route.fulfill(status=200, body=source.read_bytes(), content_type="text/javascript",
                          headers={"access-control-allow-origin": "*"})

    page.route("https://esm.sh/**", cdn)
    page.goto(server["React"])
    ask_and_stop(page, "button.ask", "button.stop", "p.answer", "p.status")
