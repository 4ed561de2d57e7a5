"""Type kinds everywhere a type goes (issue 15, part 4): pydantic v2 models, dataclasses and
TypedDicts as well as attrs classes, for stream chunk types, input types, ``schema_task``
schemas and task outputs; a pydantic chunk is stored as ``model_dump(mode="json")``."""

from __future__ import annotations

import dataclasses
import sys
from typing import TypedDict

import attrs
import pydantic
import pytest

from runwire import InvalidPayloadError, RunStatus, schema_task, streams, task
from runwire._convert import from_json, to_json

from .helpers import final, serve


class PModel(pydantic.BaseModel):
    step: int
    label: str
    tags: list[str] = []


@dataclasses.dataclass
class DModel:
    step: int
    label: str


class TModel(TypedDict):
    step: int
    label: str


@attrs.frozen
class AModel:
    step: int
    label: str


KINDS = [
    (PModel, PModel(step=1, label="a"), {"step": 1, "label": "a", "tags": []}),
    (DModel, DModel(1, "a"), {"step": 1, "label": "a"}),
    (TModel, TModel(step=1, label="a"), {"step": 1, "label": "a"}),
    (AModel, AModel(1, "a"), {"step": 1, "label": "a"}),
]
IDS = ["pydantic", "dataclass", "typeddict", "attrs"]


@pytest.mark.parametrize(("cls", "value", "json"), KINDS, ids=IDS)
def test_round_trip(cls, value, json):
    assert to_json(value) == json
    assert from_json(json, cls) == value


@pytest.mark.parametrize(("cls", "value", "json"), KINDS, ids=IDS)
def test_wrong_field_names_its_path(cls, value, json):
    with pytest.raises(InvalidPayloadError, match=r"payload\.step"):
        from_json({"step": "not a number", "label": "a"}, cls, "payload")


@pytest.mark.parametrize(("cls", "value", "json"), KINDS, ids=IDS)
@pytest.mark.parametrize(("bad", "path"), [
    ({"step": "1", "label": "a"}, "step"), ({"step": 1.0, "label": "a"}, "step"),
    ({"step": True, "label": "a"}, "step"), ({"step": 1, "label": 5}, "label"),
    ({"step": 1, "label": None}, "label"),
])
def test_every_kind_is_strict(cls, value, json, bad, path):
    """Issue 20's rule holds for pydantic models (strict mode) as for the cattrs kinds:
    nothing is coerced ("1" is not 1, 1.0 and True are not ints, 5 is not a str)."""
    with pytest.raises(InvalidPayloadError, match=rf"payload\.{path}"):
        from_json(bad, cls, "payload")


class PTimes(pydantic.BaseModel):
    when: __import__("datetime").datetime
    ratio: float
    flag: bool


def test_a_strict_pydantic_model_still_reads_json_forms():
    """Strict, as JSON: an ISO string is a datetime and an integer is a float, as in the
    cattrs kinds; a number is not a bool, a string is not a float."""
    got = from_json({"when": "2024-01-02T03:04:05Z", "ratio": 1, "flag": True}, PTimes)
    assert got.when.year == 2024 and got.ratio == 1.0 and got.flag is True
    assert from_json(to_json(got), PTimes) == got
    for bad, path in (({"when": "2024-01-02T03:04:05Z", "ratio": 1, "flag": 1}, "flag"),
                      ({"when": "2024-01-02T03:04:05Z", "ratio": "1", "flag": True}, "ratio")):
        with pytest.raises(InvalidPayloadError, match=rf"payload\.{path}"):
            from_json(bad, PTimes, "payload")


def test_pydantic_chunk_is_stored_as_its_json_dump():
    class WithEnum(pydantic.BaseModel):
        when: __import__("datetime").date
    assert to_json(WithEnum(when="2024-01-02")) == {"when": "2024-01-02"}


def test_pydantic_is_not_imported_by_the_sdk():
    import subprocess

    code = "import runwire, runwire._convert, sys; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


def _tasks(cls):
    chunks = streams.define(id="chunks", type=cls)
    answers = streams.input(id="answer", type=cls)

    @schema_task(id="kinds", schema=cls)
    async def kinds(payload, ctx):
        assert isinstance(payload, dict if cls is TModel else cls)
        await chunks.append(payload)
        chunks.pipe([payload, payload])
        answer = (await answers.once(timeout_ms=60_000)).unwrap()
        assert isinstance(answer, dict if cls is TModel else cls)
        return answer

    return kinds, chunks, answers


@pytest.mark.parametrize(("cls", "value", "json"), KINDS, ids=IDS)
async def test_every_place_a_type_goes(cls, value, json, transport, autojump_clock):
    kinds, chunks, answers = _tasks(cls)
    async with serve([kinds], transport):
        handle = await kinds.trigger(value)
        read = await chunks.read(handle.id)
        got = []
        async for chunk in read:
            got.append(chunk)
            if len(got) == 3:
                break
        assert got == [value] * 3
        await answers.send(handle.id, value)
        run = await final(handle.id)
        assert run.status is RunStatus.COMPLETED
        assert run.output == json


async def test_a_pydantic_schema_refuses_a_bad_payload(transport, autojump_clock):
    kinds, _, _ = _tasks(PModel)
    async with serve([kinds], transport):
        with pytest.raises(InvalidPayloadError, match=r"payload\.step"):
            await kinds.trigger({"step": "x", "label": "a"})
