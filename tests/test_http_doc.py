"""Every curl example of docs/http.md, run with bash against a live engine."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from runwire import streams, task
from runwire.engine import open_engine

from .helpers import API_KEY, bounded, until_go

DOC = Path(__file__).parent.parent / "docs" / "http.md"
ai = streams.define(id="ai", type=str)


@task(id="hello")
async def hello(payload: Any) -> str:
    await ai.append("hello")
    await ai.append("world")
    await until_go()
    return "done"


def examples() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_an_example_for_every_route():
    text = "\n".join(examples())
    for route in ("/v1/api/tasks/hello/trigger", "/v1/api/runs/$RUN\"", "/v1/api/runs?",
                  "/inputs/", "/cancel", "/v1/api/tokens", "/streams/ai?", "live=long-poll",
                  "live=sse", "/events", "-X PUT", "-X DELETE", "-I ", "Stream-Closed",
                  "/v1/api/waitpoints/$WAITPOINT/complete"):
        assert route in text, route


@bounded(60)
async def test_every_curl_example_runs():
    bash, curl = shutil.which("bash"), shutil.which("curl")
    assert bash and curl, "the doc test needs bash and curl"
    async with open_engine([hello], api_key=API_KEY, port=0) as eng:
        record = await eng.trigger("hello", None)
        waitpoint = await eng.service.create_waitpoint(timeout=3600)
        env = {**os.environ, "RUNWIRE": eng.http_url, "KEY": API_KEY, "RUN": record.id,
               "TOKEN": eng.service.run_token(record.id), "WAITPOINT": waitpoint.id,
               "WAITPOINT_TOKEN": eng.service.waitpoint_token(waitpoint)}
        for example in examples():
            done = await trio.run_process([bash, "-euo", "pipefail", "-c", example], env=env,
                                          capture_stdout=True, capture_stderr=True, check=False)
            assert done.returncode == 0, (example, done.stdout, done.stderr)
            assert b"Traceback" not in done.stdout
        completed = await eng.service.get_waitpoint(waitpoint.id)  # the example did it
        assert completed.status == "COMPLETED"
        assert completed.data == b'{"approved":true,"by":"alice"}'
