"""The one codec for frames: cattrs (preconf orjson) + orjson, strict about types.

``encode(frame) -> bytes`` and ``decode(data) -> Frame`` are the only places that turn frames
into JSON and back; nobody else calls orjson on frames. Decoding is strict: an integer field
refuses ``"5"`` and ``true``, a string field refuses ``5``. Anything wrong raises
:class:`RemoteProtocolError` with code ``bad_frame`` and, when the message had a usable
``id``, that id, so the answer can point back to the request.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import make_converter

from ._errors import RemoteProtocolError
from ._frames import FRAME_TYPES, Frame, Json, JsonList, JsonObject, Read, request_id

#: Deepest nesting accepted in a frame; orjson itself refuses more than 1024.
MAX_DEPTH = 1024


def _strict(kind: type | tuple[type, ...], name: str):
    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return structure


def _float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _json_list(value: Any, _: Any) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected an array, got {type(value).__name__}")
    return value


def _json_object(value: Any, _: Any) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _make_converter():
    conv = make_converter(forbid_extra_keys=False)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "a boolean"))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(Json, lambda v, _: v)
    conv.register_structure_hook(JsonList, _json_list)
    conv.register_structure_hook(JsonObject, _json_object)
    conv.register_unstructure_hook(Json, lambda v: v)
    conv.register_unstructure_hook(JsonList, lambda v: v)
    conv.register_unstructure_hook(JsonObject, lambda v: v)
    renames = {Read: {"from_": override(rename="from")}}
    structurers = {}
    unstructurers = {}
    for name, cls in FRAME_TYPES.items():
        extra = renames.get(cls, {})
        structurers[name] = make_dict_structure_fn(cls, conv, **extra)
        unstructurers[cls] = make_dict_unstructure_fn(cls, conv, **extra)
    return conv, structurers, unstructurers


converter, _STRUCTURE, _UNSTRUCTURE = _make_converter()


def unstructure(frame: Frame) -> dict[str, Any]:
    """The frame as a plain dict, ``type`` first."""
    body = _UNSTRUCTURE[type(frame)](frame)
    return {"type": frame.type, **body}


def encode(frame: Frame) -> bytes:
    """Serialize a frame to UTF-8 JSON bytes."""
    return orjson.dumps(unstructure(frame))


def decode(data: bytes | bytearray | memoryview | str) -> Frame:
    """Parse one message into a frame.

    Raises:
        RemoteProtocolError: the message is not JSON, not an object, has no known ``type``,
            or a field is missing or of the wrong type.
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"message is not valid JSON: {exc}") from None
    return from_dict(raw)


def from_dict(raw: Any) -> Frame:
    """Structure an already-parsed JSON value into a frame (see :func:`decode`)."""
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"a frame must be a JSON object, not {type(raw).__name__}")
    rid = request_id(raw)
    kind = raw.get("type")
    structure = _STRUCTURE.get(kind) if isinstance(kind, str) else None
    if structure is None:
        raise RemoteProtocolError(f"unknown frame type {kind!r}", re=rid)
    try:
        return structure(raw, FRAME_TYPES[kind])
    except Exception as exc:  # cattrs raises ClassValidationError groups; flatten to one line
        raise RemoteProtocolError(f"bad {kind!r} frame: {_describe(exc)}", re=rid) from None


def _describe(exc: BaseException) -> str:
    from cattrs import transform_error

    try:
        return "; ".join(transform_error(exc))
    except Exception:
        return str(exc)


def frame_fields(cls: type[Frame]) -> list[str]:
    """Wire names of a frame class's fields, for documentation and tests."""
    names = [f.name for f in attrs.fields(cls)]
    return ["from" if n == "from_" else n for n in names]
