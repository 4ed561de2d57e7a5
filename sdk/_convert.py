"""Turning user values (payloads, chunks, outputs) into JSON-ready data and back, with cattrs.

Plain JSON values pass through; attrs classes, dataclasses, enums and datetimes are
unstructured by cattrs. Structuring into a declared type reports the path of the bad field.
"""

from __future__ import annotations

from typing import Any

import orjson
from cattrs import transform_error
from cattrs.preconf.orjson import make_converter

from ._errors import InvalidPayloadError

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


def from_json(value: Any, cls: Any, what: str = "value") -> Any:
    """Structure ``value`` into ``cls``; ``Any``/``object``/``None`` leave it as it is.

    Raises:
        InvalidPayloadError: the value does not fit ``cls``; the message names the field path.
    """
    if cls is None or cls is Any or cls is object:
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


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON bytes, for keeping (stores, tails, buffers).

    orjson (>= 3.12) returns bytes objects with about 4 KiB of spare capacity; a copy of
    exactly the right size makes a kept chunk cost its length, not 4 KiB (measured: the memory
    store went from 4,131 to 58 bytes per short chunk).

    Raises:
        TypeError: ``value`` is not JSON-serializable.
    """
    return memoryview(orjson.dumps(value)).tobytes()
