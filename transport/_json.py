"""JSON bytes within a size: how chunks and records are kept and sent.

Shared by the engine (its commit stage) and the SDK (its producers): both must encode a
chunk exactly as the other would, and refuse the same ones.
"""

from __future__ import annotations

import re
from typing import Any

import orjson


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON bytes, for keeping (stores, tails, buffers).

    orjson (>= 3.12) returns bytes objects with about 4 KiB of spare capacity; a copy of
    exactly the right size makes a kept chunk cost its length, not 4 KiB
    (``docs/performance.md``, "Figures behind the code").

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
    costs an allocation of its 4 KiB buffer and a copy. When no string of the batch needs
    escaping, their JSON is the string in quotes: the batch is joined with a newline (which
    JSON strings never hold raw), encoded once and split, about a third of the cost
    (``docs/performance.md``). The result is byte for byte what orjson writes
    (property-tested).

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
