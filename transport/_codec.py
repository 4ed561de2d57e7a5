"""The one codec for frames: cattrs (preconf orjson) + orjson, strict about types.

``encode(frame) -> bytes`` and ``decode(data) -> Frame`` are the only places that turn frames
into JSON and back; nobody else calls orjson on frames. Decoding is strict: an integer field
refuses ``"5"`` and ``true``, a string field refuses ``5``, a list field refuses a string.
Anything wrong raises :class:`RemoteProtocolError` with code ``bad_frame`` and, when the
message had a usable ``id``, that id, so the answer can point back to the request.

Whatever :func:`decode` accepts, :func:`encode` can write again, also wrapped in an engine
frame: orjson reads up to 1024 levels of nesting but writes at most 254, so a message nested
deeper than :data:`MAX_DEPTH` is refused here, at the edge, instead of failing later deep
inside the engine (found by the codec fuzzer, see ``docs/security.md``). Error messages
quote at most :data:`QUOTE_LIMIT` characters of what the peer sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import orjson
from cattrs import transform_error
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import OrjsonConverter, make_converter

from ._errors import RemoteProtocolError
from ._frames import FRAME_TYPES, Chunks, Frame, Json, JsonList, JsonObject, Read, request_id

#: Deepest nesting accepted in a frame (the frame object itself is level 1).
MAX_DEPTH = 128
#: Deepest nesting orjson writes; anything deeper makes ``orjson.dumps`` fail.
_ORJSON_WRITE_DEPTH = 254
#: Longest piece of a peer's message quoted back in an error.
QUOTE_LIMIT = 64

#: A structure hook: the raw value and the type asked for (ignored) -> the value.
_Hook = Callable[[Any, Any], Any]
#: Builds one frame class from a decoded JSON object (the second argument is the class).
_FrameStructurer = Callable[[Mapping[str, Any], Any], Frame]
#: Turns one frame into a dict of its fields (without ``type``).
_FrameUnstructurer = Callable[[Any], dict[str, Any]]


def _strict(kind: type | tuple[type, ...], name: str) -> _Hook:
    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return structure


def _float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _str_list(value: Any, _: Any) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"expected an array of strings, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"expected an array of strings, got a {type(item).__name__} in it")
    return value


def _make_converter() -> tuple[OrjsonConverter, dict[str, _FrameStructurer],
                               dict[type[Frame], _FrameUnstructurer]]:
    conv = make_converter(forbid_extra_keys=False)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "a boolean"))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(Json, lambda v, _: v)
    conv.register_structure_hook(JsonList, _strict(list, "an array"))
    conv.register_structure_hook(JsonObject, _strict(dict, "an object"))
    conv.register_structure_hook_func(lambda t: t == list[str], _str_list)
    conv.register_unstructure_hook(Json, lambda v: v)
    conv.register_unstructure_hook(JsonList, lambda v: v)
    conv.register_unstructure_hook(JsonObject, lambda v: v)
    # attribute name -> cattrs override (cattrs does not export the override's type)
    renames: dict[type[Frame], dict[str, Any]] = {Read: {"from_": override(rename="from")}}
    structurers: dict[str, _FrameStructurer] = {}
    unstructurers: dict[type[Frame], _FrameUnstructurer] = {}
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
    """Serialize a frame to UTF-8 JSON bytes.

    A ``chunks`` frame whose items are ``bytes`` is taken to carry chunks that are already
    JSON (the engine keeps chunks encoded): they are joined into the array as they are,
    never parsed or re-encoded.
    """
    if type(frame) is Chunks and frame.items and type(frame.items[0]) is bytes:
        return _encode_encoded_chunks(frame)
    return orjson.dumps(unstructure(frame))


def _encode_encoded_chunks(frame: Chunks) -> bytes:
    head = orjson.dumps({"type": "chunks", "re": frame.re, "stream": frame.stream,
                         "start": frame.start, "items": []})
    return b"".join((head[:-2], b",".join(frame.items), b"]}"))  # head ends with '[]}'


def decode(data: bytes | bytearray | memoryview | str, *, check_depth: bool = True) -> Frame:
    """Parse one message into a frame.

    ``check_depth=False`` skips the nesting check (:func:`_check_depth`), which costs a
    second encoding of a message holding many arrays or objects: a client may, since it
    decodes what an engine encoded (and so at most ``MAX_DEPTH`` deep), and never encodes
    it again.

    Raises:
        RemoteProtocolError: the message is not JSON, not an object, has no known ``type``,
            or a field is missing or of the wrong type.
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"message is not valid JSON: {exc}") from None
    if check_depth:
        _check_depth(raw, data)
    return from_dict(raw)


def _check_depth(raw: Any, data: bytes | bytearray | memoryview | str) -> None:
    """Refuse a message nested deeper than :data:`MAX_DEPTH`.

    Cheap for ordinary frames: only a message with more than ``MAX_DEPTH`` opening brackets
    can be that deep; for those, orjson (in C) tries to write the value wrapped in enough
    extra levels that it fails exactly when the value is deeper than ``MAX_DEPTH``.
    """
    text = bytes(data) if isinstance(data, memoryview) else data
    if isinstance(text, str):
        opening = text.count("[") + text.count("{")
    else:
        opening = text.count(b"[") + text.count(b"{")
    if opening <= MAX_DEPTH:
        return
    wrapped = raw
    for _ in range(_ORJSON_WRITE_DEPTH - MAX_DEPTH):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        raise RemoteProtocolError(f"message is nested deeper than {MAX_DEPTH} levels",
                                  re=request_id(raw)) from None


def from_dict(raw: Any) -> Frame:
    """Structure an already-parsed JSON value into a frame (see :func:`decode`)."""
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"a frame must be a JSON object, not {type(raw).__name__}")
    rid = request_id(raw)
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise RemoteProtocolError('a frame needs a string "type"', re=rid)
    structure = _STRUCTURE.get(kind)
    if structure is None:
        raise RemoteProtocolError(f"unknown frame type {quote(kind)}", re=rid)
    try:
        return structure(raw, FRAME_TYPES[kind])
    except Exception as exc:  # cattrs raises ClassValidationError groups; flatten to one line
        raise RemoteProtocolError(f"bad {kind!r} frame: {_describe(exc)}", re=rid) from None


def _describe(exc: BaseException) -> str:
    try:
        text = "; ".join(transform_error(exc))
    except Exception:
        text = str(exc)
    return text.replace("$.from_", "$.from")


def quote(value: str) -> str:
    """``repr(value)`` cut to :data:`QUOTE_LIMIT` characters, for error messages."""
    text = repr(value)
    if len(text) > QUOTE_LIMIT:
        text = text[:QUOTE_LIMIT - 3] + "..."
    return text


def frame_fields(cls: type[Frame]) -> list[str]:
    """Wire names of a frame class's fields, for documentation and tests."""
    names = [f.name for f in attrs.fields(cls)]
    return ["from" if n == "from_" else n for n in names]
