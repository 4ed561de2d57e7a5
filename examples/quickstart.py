"""Quickstart: an engine on the embedded SQLite store, a fake LLM task streaming tokens, and a
reader that prints them as they arrive.

    python -m examples.quickstart            # prints the tokens, then the run's result
    python -m examples.quickstart --db runwire.db   # keeps the SQLite file afterwards

Without ``--db`` the store lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
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
    if db_path is not None:
        await _run(db_path)
        return
    with tempfile.TemporaryDirectory(prefix="runwire-") as folder:  # removed afterwards
        await _run(str(Path(folder) / "quickstart.db"))


async def _run(db: str) -> None:
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


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.quickstart",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--db", metavar="PATH",
                        help="SQLite file to use and keep (default: a temporary one, removed)")
    return parser.parse_args()


if __name__ == "__main__":
    trio.run(main, _args().db)
