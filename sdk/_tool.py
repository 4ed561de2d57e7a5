"""``tool_task``: a task that is also a tool an LLM can call.

Theory of operation: a tool task is a :class:`~runwire.Task` whose payload type is its
``parameters`` (structured strictly, like a ``schema_task``). ``.tool`` describes it in the
formats the model APIs take (OpenAI chat completions' ``tools`` entries and Anthropic
messages' ``tools`` entries), built from one JSON schema of ``parameters``. ``run_tool`` takes
the arguments a model produced (OpenAI's JSON string, or Anthropic's ``input`` object),
checks them against ``parameters`` and runs the task as a child run (``trigger_and_wait``),
returning its output.

The JSON schema of a pydantic model is its own ``model_json_schema()`` (pydantic is optional);
for attrs classes, dataclasses and plain types it is built here: no maintained library turns
attrs classes into JSON schema, and the subset the model APIs use (objects, arrays, strings,
numbers, booleans, enums, nullable values, descriptions) is small.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Literal, TypeVar, Union

import attrs
import orjson

from ._convert import from_json, to_json
from ._errors import InvalidPayloadError
from ._models import Queue, RetryPolicy
from ._task import Payload, Output, SchemaTaskDecorator, Task, TaskFunction
from .runtime import Backend

P = TypeVar("P")
R = TypeVar("R")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def json_schema(cls: Any) -> dict[str, Any]:
    """The JSON schema of a parameters type (see the module docstring for what it covers).

    Raises:
        TypeError: a type it cannot describe.
    """
    return _schema(cls, set())


def _schema(tp: Any, seen: set[Any]) -> dict[str, Any]:
    if hasattr(tp, "model_json_schema"):  # a pydantic v2 model: its own schema
        return dict(tp.model_json_schema())
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return {}
    if tp is type(None):
        return {"type": "null"}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp in (datetime.datetime, datetime.date):
        return {"type": "string", "format": "date-time" if tp is datetime.datetime else "date"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        inner = _schema(options[0], seen) if len(options) == 1 else \
            {"anyOf": [_schema(a, seen) for a in options]}
        if len(options) < len(args):  # Optional: JSON null allowed
            return {"anyOf": [inner, {"type": "null"}]}
        return inner
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        item = args[0] if args and args[-1] is not Ellipsis or len(args) == 2 else Any
        return {"type": "array", "items": _schema(item if args else Any, seen)}
    if origin in (dict, Mapping) or tp is dict:
        return {"type": "object",
                "additionalProperties": _schema(args[1], seen) if len(args) == 2 else {}}
    if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
        return _object(tp, seen)
    raise TypeError(f"cannot describe {tp!r} as JSON schema; use an attrs class, a dataclass, "
                    f"a pydantic model or plain types")


def _object(cls: type[Any], seen: set[Any]) -> dict[str, Any]:
    if cls in seen:
        raise TypeError(f"{cls.__name__} refers to itself; tool parameters cannot")
    seen = seen | {cls}
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    fields: list[tuple[str, bool, Any]] = []
    if attrs.has(cls):
        for field in attrs.fields(cls):
            fields.append((field.name, field.default is attrs.NOTHING,
                           field.metadata.get("description")))
    else:
        for dfield in dataclasses.fields(cls):
            missing = (dfield.default is dataclasses.MISSING
                       and dfield.default_factory is dataclasses.MISSING)
            fields.append((dfield.name, missing, dfield.metadata.get("description")))
    for name, is_required, description in fields:
        prop = _schema(hints.get(name, Any), seen)
        if description:
            prop = {**prop, "description": description}
        properties[name] = prop
        if is_required:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": required, "additionalProperties": False}
    doc = inspect.getdoc(cls)
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the generated dataclass doc
        schema["description"] = doc.split("\n\n")[0]
    return schema


@attrs.frozen
class ToolSpec:
    """A tool's description: ``name``, ``description`` and the ``parameters`` JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        """An entry of OpenAI chat completions' ``tools`` list (a function tool)."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}

    def anthropic(self) -> dict[str, Any]:
        """An entry of Anthropic messages' ``tools`` list."""
        return {"name": self.name, "description": self.description,
                "input_schema": self.parameters}


class ToolTask(Task[P, R], Generic[P, R]):
    """A task that is also an LLM tool (made by :func:`tool_task`).

    ``.tool`` describes it (``.tool.openai()``, ``.tool.anthropic()``); ``await
    run_tool(arguments)`` runs it as a child run from a model's tool call.
    """

    def __init__(self, id: str, fn: TaskFunction[P, R], *, parameters: Any,
                 description: str | None = None, retry: RetryPolicy | None = None,
                 queue: Queue | None = None, max_duration: float | None = None) -> None:
        if not isinstance(id, str) or not _NAME.match(id):
            raise ValueError(f"a tool task's id is its tool name: 1-64 letters, digits, '_' "
                             f"or '-', not {id!r}")
        super().__init__(id, fn, retry=retry, queue=queue, max_duration=max_duration,
                         schema=parameters)
        self.parameters = parameters
        text = description if description is not None else (inspect.getdoc(fn) or "")
        self.tool = ToolSpec(id, text.split("\n\n")[0].strip(), json_schema(parameters))

    async def run_tool(self, arguments: str | bytes | Mapping[str, Any], *,
                       client: Backend | None = None) -> Any:
        """Run the task for a model's tool call and return its output (JSON-ready).

        Args:
            arguments: OpenAI's ``tool_call.function.arguments`` (a JSON string) or
                Anthropic's ``tool_use.input`` (an object).
            client: run it through this client (outside a task) rather than the run or
                the client ``connect()`` bound to this context.

        Raises:
            InvalidPayloadError: the arguments are not JSON or do not fit ``parameters``
                (tell the model; nothing ran).
            TaskRunError: the run failed.
        """
        if isinstance(arguments, (str, bytes)):
            try:
                arguments = orjson.loads(arguments)
            except orjson.JSONDecodeError as exc:
                raise InvalidPayloadError(f"tool {self.id!r}: arguments are not JSON: "
                                          f"{exc}") from None
        if not isinstance(arguments, Mapping):
            raise InvalidPayloadError(f"tool {self.id!r}: arguments must be a JSON object")
        value = from_json(dict(arguments), self.parameters, "arguments")
        result = await self.trigger_and_wait(value, client=client)
        return to_json(result.unwrap())


def tool_task(id: str, *, parameters: type[Payload], description: str | None = None,
              retry: RetryPolicy | None = None, queue: Queue | None = None,
              max_duration: float | None = None) -> SchemaTaskDecorator[Payload]:
    """Decorator: a task that is also a tool for LLM tool calling.

    ``id`` is the tool's name; ``parameters`` (an attrs class, a dataclass or a pydantic
    model) is the payload type, checked strictly, and its JSON schema the tool's
    parameters; ``description`` defaults to the first paragraph of the function's docstring.
    """

    def decorate(fn: Callable[..., Awaitable[Output]]) -> Task[Any, Any]:
        return ToolTask(id, fn, parameters=parameters, description=description, retry=retry,
                        queue=queue, max_duration=max_duration)

    return decorate
