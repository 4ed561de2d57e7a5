"""examples/fastapi_app.py under a real uvicorn server on a loopback port, driven with httpx
(issue 15, part 2): trigger, SSE, stop, a client that leaves mid-stream, and an app shutdown
with a run in flight (handed back to the store, taken up by the next app)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from examples.fastapi_app import create_app

TIME_LIMIT = 20


@contextmanager
def serving(store: str) -> Iterator[tuple[httpx.Client, object]]:
    """The example app under uvicorn in a thread; an httpx client for it; the app."""
    app = create_app(store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIME_LIMIT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIME_LIMIT) as http:
            yield http, app
    finally:
        server.should_exit = True
        thread.join(TIME_LIMIT)
        assert not thread.is_alive(), "uvicorn did not stop"


def events(response: httpx.Response, limit: int | None = None) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE response, up to ``limit`` chunk events (call again for
    the next ones: the response keeps its line iterator)."""
    found: list[tuple[str, str]] = []
    event = None
    lines = response.extensions.setdefault("test_lines", response.iter_lines())
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            found.append((event or "message", line[6:]))
            if event in ("end", "error"):
                break
            if limit is not None and sum(e == "chunk" for e, _ in found) >= limit:
                break
    return found


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + TIME_LIMIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


def test_generate_stream_and_stop(store):
    with serving(store) as (http, app):
        started = http.post("/generate", json={"tokens": 500, "delay": 0.01}).json()
        run_id = started["run_id"]
        assert started["token"].count(".") == 2  # a JWT
        with http.stream("GET", f"/runs/{run_id}/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            got = events(response, limit=5)
            assert [e for e, _ in got] == ["chunk"] * 5
            assert http.post(f"/runs/{run_id}/stop").json() == {"stopped": run_id}
            rest = events(response)
        assert rest[-1][0] == "end"
        wait_for(lambda: http.get(f"/runs/{run_id}").json()["status"] == "COMPLETED", "the run")
        output = http.get(f"/runs/{run_id}").json()["output"]
        assert output["stopped"] is True and output["tokens"] == len(got) + len(rest) - 1
        # after the end: stopping again is a 409, an unknown run a 404
        assert http.post(f"/runs/{run_id}/stop").status_code == 409
        assert http.post("/runs/run_nope/stop").status_code == 404
        assert http.get("/runs/run_nope").status_code == 404


def test_resume_with_last_event_id_and_an_unknown_run(store):
    with serving(store) as (http, app):
        run_id = http.post("/generate", json={"tokens": 5, "delay": 0}).json()["run_id"]
        with http.stream("GET", f"/runs/{run_id}/stream",
                         headers={"Last-Event-ID": "2"}) as response:
            got = events(response)
        assert got[:2] == [("chunk", '"word3 "'), ("chunk", '"word4 "')]
        assert got[-1] == ("end", '{"chunks":5}')
        with http.stream("GET", "/runs/run_nope/stream") as response:
            got = events(response)
        assert got[0][0] == "error" and '"code":"not_found"' in got[0][1]


def test_a_client_that_leaves_mid_stream_stops_the_read(store):
    with serving(store) as (http, app):
        run_id = http.post("/generate", json={"tokens": 1000, "delay": 0.01}).json()["run_id"]
        client = app.state.client
        baseline = client.statistics().open_requests
        with httpx.Client(base_url=http.base_url, timeout=TIME_LIMIT) as other:
            with other.stream("GET", f"/runs/{run_id}/stream") as response:
                assert len(events(response, limit=3)) == 3
                wait_for(lambda: client.statistics().open_requests == baseline + 1,
                         "the app's read")
        # the connection is closed mid-stream: the app's read on the engine ends with it
        wait_for(lambda: client.statistics().open_requests == baseline, "the read to stop")
        http.post(f"/runs/{run_id}/stop")
        wait_for(lambda: http.get(f"/runs/{run_id}").json()["status"] == "COMPLETED", "the run")


def test_shutdown_with_a_run_in_flight_hands_it_back(store):
    with serving(store) as (http, app):
        run_id = http.post("/generate", json={"tokens": 60, "delay": 0.02}).json()["run_id"]
        with http.stream("GET", f"/runs/{run_id}/stream") as response:
            assert len(events(response, limit=3)) == 3
        assert http.get(f"/runs/{run_id}").json()["status"] == "EXECUTING"
    # the app stopped with the run executing; a new app on the same store takes it up
    with serving(store) as (http, app):
        wait_for(lambda: http.get(f"/runs/{run_id}").json()["status"] == "COMPLETED",
                 "the recovered run")
        assert http.get(f"/runs/{run_id}").json()["output"] == {"tokens": 60, "stopped": False}
        with http.stream("GET", f"/runs/{run_id}/stream") as response:
            got = events(response)
        # handed back, not failed: the same attempt resumes and nothing is written twice
        assert got[-1][0] == "end"
        words = [data for event, data in got if event == "chunk"]
        assert words == [f'"word{i} "' for i in range(60)]
        assert http.get(f"/runs/{run_id}").json()["attempt"] == 1
