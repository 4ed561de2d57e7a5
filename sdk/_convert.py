"""Turning user values (payloads, chunks, outputs) into JSON-ready data and back, with cattrs.

Plain JSON values pass through; attrs classes, dataclasses, TypedDicts, enums and datetimes
are unstructured by cattrs, pydantic v2 models by their own ``model_dump(mode="json")``.
Structuring into a declared type reports the path of the bad field.

pydantic is optional (``runwire[pydantic]``) and never imported here: a class is a pydantic
model only if pydantic is already loaded (whoever defined the class imported it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar, overload

from cattrs import transform_error
from cattrs.preconf.orjson import make_converter

from runwire.transport import json_bytes as json_bytes
from runwire.transport import json_bytes_many as json_bytes_many
from runwire.transport import json_bytes_within as json_bytes_within

from ._errors import InvalidPayloadError

T = TypeVar("T")

converter = make_converter()


def _is_pydantic_model(cls: Any) -> bool:
    """Is ``cls`` a pydantic v2 model class? (Without importing pydantic.)"""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None) if pydantic is not None else None
    return (base is not None and isinstance(cls, type) and issubclass(cls, base)
            and hasattr(cls, "model_validate"))


def _dump_pydantic(value: Any) -> Any:
    return value.model_dump(mode="json")


def _validate_pydantic(value: Any, cls: Any) -> Any:
    return cls.model_validate(value)


converter.register_unstructure_hook_func(_is_pydantic_model, _dump_pydantic)
converter.register_structure_hook_func(_is_pydantic_model, _validate_pydantic)

_PLAIN = (str, int, float, bool, type(None))


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
