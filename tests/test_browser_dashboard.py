"""The dashboard (``/dashboard``, served by the engine) in Debian's chromium: login with the
API key (session storage, never a URL), the runs list updating live with filters, a run's
page with its fields and every stream live and in full, a send, cancel, a token, a wrong key,
and a 100,000-chunk stream drawn windowed. With ``RUNWIRE_SCREENSHOTS=DIR`` it saves the
screenshots docs/browser.md shows (docs/img/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from .browser import (API_KEY, Engine, _close_pages, browser, engine, open_page,  # noqa: F401
                      wait_for)

SHOTS = os.environ.get("RUNWIRE_SCREENSHOTS")


def shot(page: Any, name: str, **options: Any) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), **options)


def logged_in(browser: Any, engine: Engine, requests: list[str] | None = None,
              console: list[str] | None = None) -> Any:
    page = open_page(browser, console=console)
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{engine.url}/dashboard")
    page.fill("#api-key", API_KEY)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#runs-state:has-text('live')")
    return page


def test_login_keeps_the_key_in_session_storage_only(browser, engine):
    page = open_page(browser)
    page.goto(f"{engine.url}/dashboard")
    page.fill("#api-key", "wrong-key")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error .error")
    assert "wrong or expired" in (page.text_content("#login-error") or "")
    assert page.evaluate("sessionStorage.getItem('runwire.apiKey')") is None
    requests: list[str] = []
    page = logged_in(browser, engine, requests)
    assert page.evaluate("sessionStorage.getItem('runwire.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    assert API_KEY not in page.url and not [u for u in requests if API_KEY in u]
    page.click("#logout")
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.getItem('runwire.apiKey')") is None


def test_runs_list_updates_live_and_filters(browser, engine):
    page = logged_in(browser, engine)
    run_id, _ = engine.trigger("waiter", {"n": 1}, tags=["live-test"])
    row = f"#runs tr[data-run='{run_id}']"
    page.wait_for_selector(row, timeout=10_000)  # appears without a reload
    wait_for(lambda: "EXECUTING" in (page.text_content(row) or ""), what="EXECUTING")
    assert "waiter" in (page.text_content(row) or "") and "live-test" in page.text_content(row)
    shot(page, "dashboard-runs")
    engine.send(run_id, "go", "ok")
    wait_for(lambda: "COMPLETED" in (page.text_content(row) or ""), what="COMPLETED live")
    # filters: a tag, a status, a task
    page.fill("#filters input[name=tag]", "live-test")
    page.click("#filters button[type=submit]")
    wait_for(lambda: page.locator("#runs tr[data-run]").count() == 1, what="the tag filter")
    assert "tag=live-test" in page.url and API_KEY not in page.url
    page.goto(f"{engine.url}/dashboard#/runs?status=EXECUTING&task=nope")
    page.wait_for_selector("#runs td.muted:has-text('No runs')")


def test_run_page_streams_live_and_in_full(browser, engine):
    run_id, _ = engine.trigger("chat", {"prompt": "hi", "delay": 0.02})
    page = logged_in(browser, engine)
    page.goto(f"{engine.url}/dashboard#/run/{run_id}")
    section = "section[data-stream='ai']"
    page.wait_for_selector(section)
    wait_for(lambda: int(page.get_attribute(section, "data-chunks") or 0) >= 20,
             what="chunks, live")
    assert page.get_attribute(section, "data-ended") is None  # still streaming
    assert page.get_attribute(section, "data-mode") == "text"
    assert "EXECUTING" in (page.text_content("#facts") or "")
    shot(page, "dashboard-run-live", full_page=True)
    # the stop input from the send form ends it
    page.fill("#input-key", "stop")
    page.fill("#input-value", '{"reason": "enough"}')
    page.click("#send button[type=submit]")
    page.wait_for_selector("#input-result:has-text('record 0')")
    page.wait_for_selector(f"{section}[data-ended='true']", timeout=15_000)
    wait_for(lambda: "COMPLETED" in (page.text_content("#facts") or ""), what="COMPLETED")
    run = engine.run(run_id)
    assert run["output"]["stopped"] is True
    assert page.get_attribute(section, "data-chunks") == str(run["output"]["tokens"])
    assert '"stopped": true' in (page.text_content("#output") or "")
    assert '"prompt": "hi"' in (page.text_content("#payload") or "")
    # opened after the run: every chunk, in full
    page.reload()
    page.wait_for_selector(f"{section}[data-ended='true'][data-chunks='{run['output']['tokens']}']")
    assert page.is_disabled("#cancel")


def test_json_chunks_with_index_cancel_and_token(browser, engine):
    run_id, _ = engine.trigger("waiter", {"q": "json"})
    page = logged_in(browser, engine)
    page.goto(f"{engine.url}/dashboard#/run/{run_id}")
    section = "section[data-stream='data']"
    page.wait_for_selector(f"{section}[data-chunks='1']")
    assert page.get_attribute(section, "data-mode") == "chunks"
    row = page.text_content(f"{section} .row[data-index='0']") or ""
    assert row.startswith("0") and '{"step":"waiting","payload":{"q":"json"}}' in row
    # a public token for this run, made on the page, reads it
    page.check("#token input[name=send]")
    page.click("#token button[type=submit]")
    page.wait_for_selector("#token-value")
    token = page.text_content("#token-value") or ""
    with httpx.Client(base_url=engine.url) as http:
        headers = {"Authorization": f"Bearer {token}"}
        assert http.get(f"/v1/api/runs/{run_id}", headers=headers).status_code == 200
        assert http.post(f"/v1/api/runs/{run_id}/cancel", headers=headers).status_code == 403
    # cancel
    page.wait_for_selector("#cancel:not([disabled])")
    page.click("#cancel")
    wait_for(lambda: "CANCELED" in (page.text_content("#facts") or ""), what="CANCELED")
    assert engine.run(run_id)["status"] == "CANCELED"
    # a send to the canceled run: a clear error
    page.fill("#input-key", "go")
    page.fill("#input-value", "1")
    page.click("#send button[type=submit]")
    page.wait_for_selector("#input-result .error")
    assert "run_finished" in (page.text_content("#input-result") or "")
    page.fill("#input-value", "{not json")
    page.click("#send button[type=submit]")
    page.wait_for_selector("#input-result .error:has-text('not JSON')")


def test_a_100000_chunk_stream_is_drawn_windowed(browser, engine):
    run_id, _ = engine.trigger("tokens", {"n": 100_000, "batch": 2000})
    engine.wait_finished(run_id, timeout=60)
    page = logged_in(browser, engine)
    page.goto(f"{engine.url}/dashboard#/run/{run_id}")
    section = "section[data-stream='ai']"
    page.wait_for_selector(f"{section}[data-ended='true'][data-chunks='100000']",
                           timeout=30_000)
    # only the rows in view are in the DOM
    assert page.locator(f"{section} .row").count() < 60
    page.click(f"{section} button:has-text('Chunks')")
    page.wait_for_selector(f"{section}[data-mode='chunks']")
    page.evaluate(f"""() => {{
        const v = document.querySelector("{section} .viewport");
        v.scrollTop = 50000 * 18;
    }}""")
    page.wait_for_selector(f"{section} .row[data-index='50000']")
    assert page.locator(f"{section} .row").count() < 60
    assert "token-50000 " in (page.text_content(f"{section} .row[data-index='50000']") or "")
    page.click(f"{section} button:has-text('Text')")
    page.wait_for_selector(f"{section}[data-mode='text']")
    assert page.locator(f"{section} .row").count() < 60
    # the page still answers: a click on the list link navigates at once
    page.click("a[href='#/runs']")
    page.wait_for_selector("#runs tr[data-run]")


def test_an_unknown_run_and_a_key_that_stopped_working(browser, engine):
    page = logged_in(browser, engine)
    page.goto(f"{engine.url}/dashboard#/run/run_nope")
    page.wait_for_selector("#run-error .error")
    assert "not found" in (page.text_content("#run-error") or "")
    # a key that no longer works (another engine's, a rotated one): back to the login form,
    # with the reason, and the key is forgotten
    page.evaluate("sessionStorage.setItem('runwire.apiKey', 'rotated-key')")
    # (no reload after this: the 401 forgets the key, and a reload that came after it
    # would show a plain login form)
    page.goto(f"{engine.url}/dashboard#/runs")
    page.wait_for_selector("#login-error .error")
    assert "wrong or expired" in (page.text_content("#login-error") or "")
    assert page.evaluate("sessionStorage.getItem('runwire.apiKey')") is None
