"""Issue 20 part 3: ``tool_task``: its tool schema in OpenAI's and Anthropic's formats, and
``run_tool`` running it as a child run; bad arguments."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal

import attrs
import pytest

from runwire import (
    InvalidPayloadError, RunStatus, TaskRunError, ToolTask, runs, task, tool_task,
)
from runwire._tool import json_schema

from .helpers import final, serve


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


@attrs.frozen
class Inner:
    x: float


@attrs.frozen
class Params:
    """Weather parameters."""

    city: str = attrs.field(metadata={"description": "the city"})
    days: int = 1
    unit: Unit = Unit.C
    mode: Literal["fast", "exact"] = "fast"
    tags: list[str] = attrs.field(factory=list)
    near: Inner | None = None
    extra: dict[str, int] = attrs.field(factory=dict)


@dataclasses.dataclass
class DataParams:
    q: str
    limit: int = 5


def test_json_schema_of_attrs_and_dataclasses():
    assert json_schema(Params) == {
        "type": "object", "description": "Weather parameters.",
        "properties": {
            "city": {"type": "string", "description": "the city"},
            "days": {"type": "integer"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "mode": {"enum": ["fast", "exact"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "near": {"anyOf": [{"type": "object", "properties": {"x": {"type": "number"}},
                                "required": ["x"], "additionalProperties": False},
                               {"type": "null"}]},
            "extra": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        "required": ["city"], "additionalProperties": False,
    }
    assert json_schema(DataParams) == {
        "type": "object", "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["q"], "additionalProperties": False}
    with pytest.raises(TypeError, match="cannot describe"):
        json_schema(complex)


@tool_task(id="lookup", parameters=Params)
async def lookup(params: Params) -> dict[str, Any]:
    """Look the weather up.

    Longer text that is not part of the description.
    """
    if params.city == "Nowhere":
        raise LookupError("no such city")
    return {"city": params.city, "days": params.days, "unit": params.unit.value}


def test_tool_formats():
    assert isinstance(lookup, ToolTask)
    schema = json_schema(Params)
    assert lookup.tool.openai() == {"type": "function", "function": {
        "name": "lookup", "description": "Look the weather up.", "parameters": schema}}
    assert lookup.tool.anthropic() == {"name": "lookup", "description": "Look the weather up.",
                                       "input_schema": schema}
    for bad in ("has space", "", "x" * 65, "dots.not.allowed"):
        with pytest.raises(ValueError, match="tool name"):
            tool_task(id=bad, parameters=Params)(lookup.fn)


@task(id="caller")
async def caller(payload: Any) -> Any:
    got = await lookup.run_tool('{"city": "Paris", "days": 2}')  # OpenAI: a JSON string
    also = await lookup.run_tool({"city": "Oslo", "unit": "fahrenheit"})  # Anthropic: a dict
    errors = []
    for bad in ("{not json", '{"city": 42}', "[1]", '{"city": "x", "bogus": 1}'):
        try:
            await lookup.run_tool(bad)
        except InvalidPayloadError as exc:
            errors.append(str(exc))
    try:
        await lookup.run_tool({"city": "Nowhere"})
    except TaskRunError as exc:
        errors.append(str(exc))
    return {"got": got, "also": also, "errors": errors}


async def test_run_tool_runs_the_task_as_a_child(transport, autojump_clock):
    async with serve([lookup, caller], transport):
        handle = await caller.trigger()
        run = await final(handle.id)
        children = (await runs.list(task="lookup")).runs
        direct = await lookup.run_tool({"city": "Rome"})  # from a backend too
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.output["got"] == {"city": "Paris", "days": 2, "unit": "celsius"}
    assert run.output["also"] == {"city": "Oslo", "days": 1, "unit": "fahrenheit"}
    errors = run.output["errors"]
    assert "not JSON" in errors[0] and "arguments.city" in errors[1]
    assert "JSON object" in errors[2] and "bogus" in errors[3]
    assert "no such city" in errors[4]
    assert {c.parent_id for c in children} == {handle.id}  # bad arguments started nothing
    assert len(children) == 3
    assert direct["city"] == "Rome"
