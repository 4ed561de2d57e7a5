"""Quickstart: an engine on the embedded SQLite store, a fake LLM task streaming tokens, and a
reader that prints them as they arrive.

    python -m examples.quickstart            # prints the tokens, then the run's result
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from runwire.engine import open_engine
from runwire import connect, runs, streams, task

ai = streams.define(id="ai-output", type=str)

ANSWER = ("Structured concurrency means every task has a parent that waits for it, so nothing "
          "leaks and every error has somewhere to go.")


async def fake_llm(prompt: str):
    """Yields an answer word by word, like a model streaming tokens."""
    for word in ANSWER.split(" "):
        await trio.sleep(0.02)
        yield word + " "


@task(id="generate")
async def generate(payload: dict, ctx) -> dict:
    result = ai.pipe(fake_llm(payload["prompt"]))
    await result.wait_until_complete()
    return {"words": len(ANSWER.split(" ")), "attempt": ctx.attempt}


async def main(db_path: str | None = None) -> None:
    db = db_path or str(Path(tempfile.mkdtemp(prefix="runwire-")) / "quickstart.db")
    async with open_engine([generate], store=f"sqlite:///{db}", api_key="quickstart-key",
                           port=0) as eng:
        print(f"engine at {eng.url}, store sqlite:///{db}")
        async with connect(eng.url, api_key="quickstart-key"):
            handle = await generate.trigger({"prompt": "What is structured concurrency?"})
            async for token in await ai.read(handle.id, timeout_in_seconds=30):
                print(token, end="", flush=True)
            print()
            run = await runs.retrieve(handle.id)
            print(f"run {run.id} {run.status.value}: {run.output}")


if __name__ == "__main__":
    trio.run(main, *(sys.argv[1:2]))
