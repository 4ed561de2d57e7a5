"""Cancellable stream: a fake LLM streams tokens; a stop signal sent on an input stream aborts it.

The task generates inside a trio cancel scope; an ``on`` handler for the ``stop`` input stream
cancels that scope. The reader sees the output stream end early (the run ends, so its streams
end), and the run's output says it was stopped and why.

    python -m examples.cancellable_stream
"""

from __future__ import annotations

import argparse
import attrs
import trio

from runwire.engine import open_engine
from runwire import connect, runs, streams, task

API_KEY = "cancellable-stream-example-key"

ANSWER = ("Trio's cancel scopes let you stop any part of a program cleanly: every await is a "
          "place where cancellation can arrive, and every finally block still runs, so a "
          "stopped generation leaves nothing behind. ") * 3


@attrs.frozen
class StopSignal:
    reason: str


ai = streams.define(id="ai-output", type=str)
stop = streams.input(id="stop", type=StopSignal)


async def fake_llm(prompt: str):
    """Yields an answer word by word, like a model streaming tokens."""
    for word in ANSWER.split():
        await trio.sleep(0.02)
        yield word + " "


@task(id="chat")
async def chat(payload: dict, ctx) -> dict:
    total = len(ANSWER.split())
    sent = 0
    stopped_by: str | None = None
    with trio.CancelScope() as generation:

        def on_stop(signal: StopSignal) -> None:
            nonlocal stopped_by
            stopped_by = signal.reason
            generation.cancel()  # aborts the loop below at its next await

        stop.on(on_stop)
        async for token in fake_llm(payload["prompt"]):
            await ai.append(token)
            sent += 1
    return {"stopped": stopped_by is not None, "reason": stopped_by, "tokens": sent,
            "of": total}


async def main() -> None:
    async with open_engine([chat], store="memory://", api_key=API_KEY, port=0) as eng:
        print(f"engine at {eng.url}")
        async with connect(eng.url, api_key=API_KEY):
            handle = await chat.trigger({"prompt": "Why are cancel scopes nice?"})
            received = 0
            async for token in await ai.read(handle.id, timeout_in_seconds=10):
                print(token, end="", flush=True)
                received += 1
                if received == 10:
                    await stop.send(handle.id, StopSignal("user pressed stop"))
            print()
            run = await runs.retrieve(handle.id)
            total = run.output["of"]
            print(f"reader: the stream ended after {received} of {total} tokens")
            print(f"run {run.status.value}: stopped={run.output['stopped']} "
                  f"reason={run.output['reason']!r} tokens={run.output['tokens']}")
            if not (run.output["stopped"] and received < total):
                raise SystemExit("the stop signal did not stop the stream")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.cancellable_stream",
                                     description=(__doc__ or "").split("\n\n")[0])
    return parser.parse_args()  # no options; --help describes the example


if __name__ == "__main__":
    _args()
    trio.run(main)
