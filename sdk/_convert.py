"""Turning user values (payloads, chunks, outputs) into JSON-ready data and back, with cattrs.

Plain JSON values pass through; attrs classes, dataclasses, enums and datetimes are
unstructured by cattrs. Structuring into a declared type reports the path of the bad field.
"""

from __future__ import annotations

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
            detail = "; ".join(transform_error(exc, path=what))
        except Exception:
            detail = f"{what}: {exc}"
        raise InvalidPayloadError(f"invalid {what}: {detail}") from None
