"""Turning user values (payloads, chunks, outputs) into JSON-ready data and back, with cattrs.

Plain JSON values pass through; attrs classes, dataclasses, enums and datetimes are
unstructured by cattrs. Structuring into a declared type reports the path of the bad field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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


def from_json_many(values: list[Any], cls: Any, what: str = "value") -> Iterable[Any]:
    """``from_json`` of each value, lazily (a bad value raises when its turn comes).

    ``values`` itself when every value already is ``cls`` exactly (checked in C): a reader
    of a ``str`` stream does no per-chunk call.
    """
    if _untyped(cls) or (cls in _PLAIN and frozenset((cls,)).issuperset(map(type, values))):
        return values
    return (from_json(value, cls, what) for value in values)


def _untyped(cls: Any) -> bool:
    """``None``/``Any``/``object``: values are taken as they are."""
    return cls is None or cls is Any or cls is object


def from_json(value: Any, cls: Any, what: str = "value") -> Any:
    """Structure ``value`` into ``cls``; ``Any``/``object``/``None`` leave it as it is.

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


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON bytes, for keeping (stores, tails, buffers).

    orjson (>= 3.12) returns bytes objects with about 4 KiB of spare capacity; a copy of
    exactly the right size makes a kept chunk cost its length, not 4 KiB (measured: the memory
    store went from 4,131 to 58 bytes per short chunk).

    Raises:
        TypeError: ``value`` is not JSON-serializable.
    """
    return memoryview(orjson.dumps(value)).tobytes()


#: What JSON must escape in a string: quote, backslash, control characters.
_ESCAPED = re.compile(r'["\\\x00-\x1f]')
_STR = frozenset((str,))


def json_bytes_many(values: list[Any]) -> list[bytes]:
    """``[json_bytes(v) for v in values]``, in a few C calls when every value is a plain string.

    Short strings (LLM tokens) are the common chunk, and one ``orjson.dumps`` per chunk
    costs an allocation of its 4 KiB buffer and a copy (~320 ns a chunk). When no
    string of the batch needs escaping, their JSON is the string in quotes: the batch is
    joined with a newline (which JSON strings never hold raw), encoded once and split
    (~100 ns a chunk). The result is byte for byte what orjson writes (property-tested).

    Raises:
        TypeError: a value is not JSON-serializable.
    """
    if values and _STR.issuperset(map(type, values)) and not _ESCAPED.search("".join(values)):
        try:
            return ('"' + '"\n"'.join(values) + '"').encode().split(b"\n")
        except UnicodeEncodeError:  # a lone surrogate: orjson refuses it below, as it should
            pass
    return list(map(json_bytes, values))


def json_bytes_within(values: list[Any], limit: int | None) -> list[bytes] | None:
    """:func:`json_bytes_many`, or ``None`` if a value is not JSON or one encodes to more
    than ``limit`` bytes (``None``: no limit): the fast path of a batch, whose caller then finds
    the refused value one by one."""
    try:
        encoded = json_bytes_many(values)
    except TypeError:
        return None
    if limit is not None and encoded and max(map(len, encoded)) > limit:
        return None
    return encoded
