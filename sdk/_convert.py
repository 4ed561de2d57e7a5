"""Turning user values (payloads, chunks, outputs) into JSON-ready data and back, with cattrs.

Plain JSON values pass through; attrs classes, dataclasses, TypedDicts, enums and datetimes
are unstructured by cattrs, pydantic v2 models by their own ``model_dump(mode="json")``.
Structuring into a declared type reports the path of the bad field.

Strict: structuring never coerces. A ``str`` field takes only a string (not ``42``, not
``None``, not a dict), an ``int`` only an integer (not ``1.9``, not ``True``, not ``"1"``),
a ``float`` an integer or a float (not a bool), a ``bool`` only a bool; an attrs class or
dataclass refuses keys it does not declare. A pydantic model is validated in pydantic's
strict mode, as JSON (so an ISO datetime string still makes a ``datetime``, but ``"42"`` does
not make an ``int``); which keys it takes is the model's own ``model_config["extra"]``.
:func:`check_json` is what every typed writer calls before anything leaves the caller.

pydantic is optional (``runwire[pydantic]``) and never imported here: a class is a pydantic
model only if pydantic is already loaded (whoever defined the class imported it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar, overload

import orjson
from cattrs import transform_error
from cattrs.preconf.orjson import make_converter

from runwire.transport import json_bytes as json_bytes
from runwire.transport import json_bytes_many as json_bytes_many
from runwire.transport import json_bytes_within as json_bytes_within

from ._errors import InvalidPayloadError, RunwireError, TaskRunError, error_from_code

T = TypeVar("T")

converter = make_converter(forbid_extra_keys=True)


def _strict_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _strict_int(value: Any, _: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, not {type(value).__name__}")
    return int(value)


def _strict_float(value: Any, _: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"expected a number, not {type(value).__name__}")
    return float(value)


def _strict_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a bool, not {type(value).__name__}")
    return value


def _unstructure_error(error: RunwireError) -> dict[str, Any]:
    """An error as JSON (a ``TaskRunResult`` of a failed child is returned by its parent)."""
    data: dict[str, Any] = {"code": error.code, "message": error.message}
    if isinstance(error, TaskRunError):
        data.update(type=error.remote_type, run_id=error.run_id)
    else:
        data["type"] = type(error).__name__
    return data


def _structure_error(value: Any, _: Any) -> RunwireError:
    if not isinstance(value, dict) or not isinstance(value.get("message", ""), str):
        raise TypeError("expected an error object with a 'message'")
    code, message = value.get("code", "task_failed"), value.get("message", "")
    if code == "task_failed":
        return TaskRunError(message, remote_type=str(value.get("type", "Error")),
                            run_id=str(value.get("run_id", "")))
    return error_from_code(str(code), message)


def _is_error(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, RunwireError)


converter.register_unstructure_hook_func(_is_error, _unstructure_error)
converter.register_structure_hook_func(_is_error, _structure_error)

# cattrs' defaults call str()/int()/float()/bool() on whatever comes: 42 -> "42", 1.9 -> 1
def _strict(base: type[Any], check: Any) -> Any:
    """The hook for ``base``; its subclasses (a str or int enum) are built from the value."""
    def hook(value: Any, cls: Any) -> Any:
        if cls is not base and cls is not None:
            return cls(value)  # what cattrs does for an enum: an unknown value raises
        return check(value, cls)
    return hook


for _cls, _check in ((str, _strict_str), (int, _strict_int), (float, _strict_float),
                     (bool, _strict_bool)):
    converter.register_structure_hook(_cls, _strict(_cls, _check))


def _is_pydantic_model(cls: Any) -> bool:
    """Is ``cls`` a pydantic v2 model class? (Without importing pydantic.)"""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None) if pydantic is not None else None
    return (base is not None and isinstance(cls, type) and issubclass(cls, base)
            and hasattr(cls, "model_validate"))


def _dump_pydantic(value: Any) -> Any:
    return value.model_dump(mode="json")


def _validate_pydantic(value: Any, cls: Any) -> Any:
    """Strict, like the hooks above: from JSON, as pydantic's strict JSON mode reads it (a
    datetime from its ISO string, an int from a JSON integer only, never ``"42"``)."""
    return cls.model_validate_json(orjson.dumps(value), strict=True)


converter.register_unstructure_hook_func(_is_pydantic_model, _dump_pydantic)
converter.register_structure_hook_func(_is_pydantic_model, _validate_pydantic)

_PLAIN = (str, int, float, bool, type(None))


def check_json(value: Any, cls: Any, what: str = "value") -> Any:
    """The JSON-ready form of ``value``, checked against ``cls`` (a typed writer's check).

    The value is unstructured, then structured into ``cls`` strictly; nothing is coerced.

    Raises:
        InvalidPayloadError: the value does not fit ``cls``; the message names the field.
    """
    data = to_json(value)
    if not _untyped(cls):
        from_json(data, cls, what)
    return data


def to_json(value: Any) -> Any:
    """A JSON-ready form of ``value`` (fast path for plain strings and numbers)."""
    if isinstance(value, _PLAIN):
        return value
    return converter.unstructure(value)


_PLAIN_TYPES = frozenset(_PLAIN)


def to_json_many(values: list[Any]) -> list[Any]:
    """``to_json`` of each value; ``values`` itself when every one is plain (checked in C)."""
    if _PLAIN_TYPES.issuperset(map(type, values)):
        return values
    return [to_json(value) for value in values]


@overload
def from_json_many(values: list[Any], cls: type[T], what: str = ...) -> Iterable[T]: ...
@overload
def from_json_many(values: list[Any], cls: object, what: str = ...) -> Iterable[Any]: ...


def from_json_many(values: list[Any], cls: object, what: str = "value") -> Iterable[Any]:
    """``from_json`` of each value, lazily (a bad value raises when its turn comes).

    ``values`` itself when every value already is ``cls`` exactly (checked in C): a reader
    of a ``str`` stream does no per-chunk call.
    """
    if _untyped(cls) or (cls in _PLAIN and frozenset((cls,)).issuperset(map(type, values))):
        return values
    return (from_json(value, cls, what) for value in values)


def _untyped(cls: object) -> bool:
    """``None``/``Any``/``object``: values are taken as they are."""
    return cls is None or cls is Any or cls is object


@overload
def from_json(value: Any, cls: type[T], what: str = ...) -> T: ...
@overload
def from_json(value: Any, cls: object, what: str = ...) -> Any: ...


def from_json(value: Any, cls: Any, what: str = "value") -> Any:
    """Structure ``value`` into ``cls``; ``Any``/``object``/``None`` leave it as it is.

    ``cls`` is a class (then the result is typed as an instance of it) or any other type
    cattrs understands (``list[int]``, ``int | None`` ...; then the result is ``Any``).

    Raises:
        InvalidPayloadError: the value does not fit ``cls``; the message names the field path.
    """
    if _untyped(cls):
        return value
    if cls in _PLAIN and isinstance(value, cls) and not (cls is int and isinstance(value, bool)):
        return value
    try:
        return converter.structure(value, cls)
    except Exception as exc:
        try:
            detail = _pydantic_detail(exc, what) or "; ".join(transform_error(exc, path=what))
        except Exception:
            detail = f"{what}: {exc}"
        raise InvalidPayloadError(f"invalid {what}: {detail}") from None


def _pydantic_detail(exc: Exception, what: str) -> str | None:
    """A pydantic ``ValidationError`` as ``path: message`` items; ``None`` for other errors."""
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ != "ValidationError" or not callable(errors):
        return None
    return "; ".join(f"{what}{''.join(f'.{part}' for part in e.get('loc', ()))}: {e.get('msg')}"
                     for e in errors())
