"""Tool calling: an agent task asks a (fake, scripted) LLM, which calls a tool task.

``get_weather`` is a ``tool_task``: its parameters type gives the tool's JSON schema, in
OpenAI's format (``get_weather.tool.openai()``) and Anthropic's (``.anthropic()``). The agent
sends the schema to the model; the model answers with a tool call; ``run_tool`` runs the tool
as a child run of the agent and the answer goes back to the model, which then replies.

    python -m examples.tool_calling            # prints the tool, the calls and the reply
    python -m examples.tool_calling --city Oslo
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import attrs
import trio

from runwire import connect, runs, streams, task, tool_task
from runwire.engine import open_engine

API_KEY = "tool-calling-example-key"

transcript = streams.define(id="transcript", type=str)


@attrs.frozen
class WeatherQuery:
    """Where and in which unit."""

    city: str
    unit: str = "celsius"


@tool_task(id="get_weather", parameters=WeatherQuery)
async def get_weather(query: WeatherQuery) -> dict[str, Any]:
    """Get the current weather in a city."""
    temperature = {"Paris": 18, "Oslo": 4}.get(query.city, 21)
    if query.unit == "fahrenheit":
        temperature = round(temperature * 9 / 5 + 32)
    return {"city": query.city, "temperature": temperature, "unit": query.unit}


def fake_llm(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A scripted stand-in for a chat-completions call: first a tool call, then a reply.

    It answers in OpenAI's message shape and only uses the tools it was given.
    """
    last = messages[-1]
    if last["role"] == "user":
        name = tools[0]["function"]["name"]
        city = last["content"].rsplit(" ", 1)[-1].rstrip("?")
        return {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": name, "arguments": json.dumps({"city": city})}}]}
    weather = json.loads(last["content"])
    return {"role": "assistant",
            "content": f"It is {weather['temperature']} degrees {weather['unit']} "
                       f"in {weather['city']}."}


@task(id="agent")
async def agent(payload: dict[str, Any]) -> str:
    tools = {get_weather.id: get_weather}
    messages: list[dict[str, Any]] = [{"role": "user", "content": payload["question"]}]
    while True:
        reply = fake_llm(messages, [t.tool.openai() for t in tools.values()])
        messages.append(reply)
        if not reply.get("tool_calls"):
            await transcript.append(f"assistant: {reply['content']}")
            return str(reply["content"])
        for call in reply["tool_calls"]:
            fn = call["function"]
            await transcript.append(f"tool call: {fn['name']}({fn['arguments']})")
            output = await tools[fn["name"]].run_tool(fn["arguments"])  # a child run
            await transcript.append(f"tool result: {json.dumps(output)}")
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": json.dumps(output)})


async def main(city: str) -> None:
    print("tool (OpenAI):", json.dumps(get_weather.tool.openai()))
    print("tool (Anthropic):", json.dumps(get_weather.tool.anthropic()))
    async with open_engine([agent, get_weather], store="memory://", api_key=API_KEY,
                           port=0) as eng:
        async with connect(eng.url, api_key=API_KEY):
            handle = await agent.trigger({"question": f"What is the weather in {city}?"})
            async for line in await transcript.read(handle.id, timeout_in_seconds=30):
                print(line)
            run = await runs.retrieve(handle.id)
            print(f"run {run.status.value}: {run.output}")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.tool_calling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--city", default="Paris", help="the city to ask about")
    return parser.parse_args()


if __name__ == "__main__":
    trio.run(main, _args().city)
