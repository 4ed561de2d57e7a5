"""A FastAPI app that runs the engine in its lifespan and forwards a run's stream as SSE.

Routes:
    POST /generate            trigger a run; answers {"run_id": ..., "token": ...}
    GET  /runs/{run_id}/stream  the run's "story" stream as Server-Sent Events
    POST /runs/{run_id}/stop    send on the run's "stop" input stream

The engine runs on trio in a thread of its own (``EngineThread``), started and stopped with
the app; the handlers reach it through one asyncio client, passed explicitly (``client=``),
so nothing depends on which task or thread a handler runs in.

Run it as a server: ``uvicorn examples.fastapi_app:app`` (needs ``runwire[fastapi]`` and
uvicorn). ``python -m examples.fastapi_app`` serves it on a free loopback port and plays a
short session against it with httpx. Without ``$RUNWIRE_STORE`` the runs are kept in a
temporary folder, made when the app starts and removed when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from runwire import (
    Client, NotFoundError, RetryPolicy, RunFinishedError, runs, sse_response, streams, task,
)
from runwire.engine import EngineThread

story = streams.define(id="story", type=str)
stop = streams.input(id="stop", type=str)


@task(id="generate", retry=RetryPolicy(max_attempts=3))
async def generate(payload: dict) -> dict:
    """Streams ``tokens`` words, one every ``delay`` seconds, until told to stop."""
    reason: list[str] = []
    stop.on(reason.append)
    count = 0
    for i in range(payload.get("tokens", 20)):
        if reason:
            break
        await story.append(f"word{i} ")
        count += 1
        await anyio.sleep(payload.get("delay", 0.02))  # anyio runs on the engine's trio
    return {"tokens": count, "stopped": bool(reason)}


def create_app(store: str | None = None) -> FastAPI:
    """The app; ``store`` defaults to ``$RUNWIRE_STORE``, else a SQLite file in a temporary
    folder that lives as long as the app runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as folder:
            url = store or os.environ.get("RUNWIRE_STORE")
            if url is None:
                path = Path(folder.enter_context(tempfile.TemporaryDirectory(prefix="runwire-")))
                url = f"sqlite:///{path / 'runs.db'}"
            engine = EngineThread([generate], store=url)
            async with engine, engine.connect() as client:
                app.state.engine, app.state.client = engine, client
                yield

    app = FastAPI(lifespan=lifespan)

    def client_of(request: Request) -> Client:
        return request.app.state.client  # type: ignore[no-any-return]

    @app.post("/generate")
    async def post_generate(request: Request) -> dict:
        body = await request.json() if await request.body() else {}
        client = client_of(request)
        handle = await generate.trigger(body, client=client)
        return {"run_id": handle.id, "token": handle.public_access_token}

    @app.get("/runs/{run_id}/stream")
    async def get_stream(run_id: str, request: Request) -> StreamingResponse:
        return sse_response(run_id, story.id, client=client_of(request), request=request)

    @app.post("/runs/{run_id}/stop")
    async def post_stop(run_id: str, request: Request) -> dict:
        client = client_of(request)
        try:
            await stop.send(run_id, "user pressed stop", client=client)
        except NotFoundError:
            raise HTTPException(404, f"no run {run_id}") from None
        except RunFinishedError:
            raise HTTPException(409, f"run {run_id} has finished") from None
        return {"stopped": run_id}

    @app.get("/runs/{run_id}")
    async def get_run(run_id: str, request: Request) -> dict:
        try:
            run = await runs.retrieve(run_id, client=client_of(request))
        except NotFoundError:
            raise HTTPException(404, f"no run {run_id}") from None
        return {"status": run.status.value, "output": run.output, "attempt": run.attempt}

    return app


app = create_app()


async def main() -> None:
    """Serve the app with uvicorn on a free port and play one session against it."""
    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    print(f"app at {base}")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        started = (await http.post("/generate", json={"tokens": 200, "delay": 0.02})).json()
        run_id = started["run_id"]
        print(f"triggered {run_id} (token {started['token'][:12]}...)")
        words = 0
        async with http.stream("GET", f"/runs/{run_id}/stream") as response:
            async for line in response.aiter_lines():
                if line.startswith("event: chunk"):
                    words += 1
                    if words == 10:
                        await http.post(f"/runs/{run_id}/stop")
                elif line.startswith("event: end"):
                    break
        print(f"stream ended after {words} words")
        print(f"run {(await http.get(f'/runs/{run_id}')).json()}")
    server.should_exit = True
    await serving


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.fastapi_app",
                                     description=(__doc__ or "").split("\n\n")[0])
    return parser.parse_args()


if __name__ == "__main__":
    _args()
    asyncio.run(main())
