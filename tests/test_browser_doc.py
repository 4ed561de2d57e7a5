"""Every ``js`` block of docs/browser.md, run as a module in Chromium against a live engine
(``http://127.0.0.1:8765`` becomes the engine's URL; ``runId`` and ``token`` are a run of the
``tokens`` or ``waiter`` task and its public token; React through the doc's import map, with
React from sdk/js/node_modules)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .browser import (AppServer, Engine, _close_pages, app, browser, engine,  # noqa: F401
                      import_map, open_page, vendor, vendor_files, wait_for)

DOC = Path(__file__).resolve().parent.parent / "docs" / "browser.md"


def blocks() -> list[str]:
    return re.findall(r"```js\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_its_examples():
    text = "\n".join(blocks())
    for name in ("readStream", "subscribeToRun", "sendInput", "useRealtimeStream",
                 "useInputStreamSend", "RunwireError"):
        assert name in text, name


@pytest.mark.parametrize("index", range(len(blocks())))
def test_every_js_block_runs(browser, engine, app, vendor, index):
    code = blocks()[index].replace("http://127.0.0.1:8765", engine.url)
    waits = "sendInput" in code
    run_id, token = engine.trigger("waiter" if waits else "tokens",
                                   {"q": 1} if waits else {"n": 20, "delay": 0.01})
    app.files.update(vendor_files(vendor))
    app.files[f"snippet{index}.js"] = code + "\nwindow.snippetDone = true;\n"
    app.files[f"doc{index}.html"] = (
        f'<!doctype html><meta charset="utf-8"><script type="importmap">'
        f'{import_map(engine, app)}</script><script>window.runId = "{run_id}"; '
        f'window.token = "{token}";</script>'
        f'<script type="module" src="snippet{index}.js"></script>')
    console: list[str] = []
    page = open_page(browser, console=console)
    page.goto(f"{app.url}/doc{index}.html")
    wait_for(lambda: page.evaluate("window.snippetDone === true")
             or any(m.startswith("pageerror") for m in console), what="the snippet")
    assert not [m for m in console if m.startswith("pageerror")], console
    if "useRealtimeStream" in code:  # the React one: it renders the stream, and stops it
        page.wait_for_selector("#answer:has-text('token-19')")
    if "readStream(runId, \"ai\", { accessToken: token" in code:
        assert "token-0 token-1" in (page.text_content("pre") or "")
    if waits:
        assert engine.wait_finished(run_id)["output"] == {"got": {"approved": True}}
    if "subscribeToRun" in code:
        assert any("token-19" in m for m in console), console
