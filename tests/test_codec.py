"""The codec: every frame round-trips, and decoding is strict about everything else."""

from __future__ import annotations

import orjson
import pytest

from runwire.transport import (
    FRAME_TYPES, Ack, Append, Cancel, CancelRun, Chunks, CreateToken, End, Error, Hello, Read,
    RemoteProtocolError, Retrieve, RunInfo, Send, Subscribe, Token, Trigger, Triggered, Welcome,
    decode, encode, unstructure, ListRuns, CreateWaitpoint, CompleteWaitpoint,
    RetrieveWaitpoint, RunList, WaitpointInfo,
)
from runwire.transport._codec import MAX_DEPTH, QUOTE_LIMIT, frame_fields

#: One frame of every type, every field set away from its default.
SAMPLES = {
    "hello": Hello(protocol=1, token="tok"),
    "read": Read(id=1, run="run_1", stream="k", from_=5, timeout_s=2.5),
    "append": Append(id=2, run="run_1", stream="k", producer="p", seq=3, items=[1, "two", {}]),
    "send": Send(id=3, run="run_1", stream="in", data={"a": [1, None]}, key="ik"),
    "trigger": Trigger(id=4, task="t", payload=[1, 2], options={"tags": ["x"]}),
    "subscribe": Subscribe(id=5, run="run_1"),
    "retrieve": Retrieve(id=6, run="run_1"),
    "cancel_run": CancelRun(id=7, run="run_1"),
    "cancel": Cancel(id=8),
    "create_token": CreateToken(id=9, scopes=["read:runs:run_1"], expires_in=60.0),
    "welcome": Welcome(protocol=1, engine="runwire", max_message=1024),
    "chunks": Chunks(re=1, stream="k", start=5, items=["a", {"b": 1}]),
    "end": End(re=1, reason="complete", next=7),
    "ack": Ack(re=2, index=4, next_seq=9),
    "triggered": Triggered(re=4, run="run_1", token="tok"),
    "run": RunInfo(re=6, run={"id": "run_1", "status": "COMPLETED"}),
    "token": Token(re=9, token="tok", expires_at=1.5),
    "error": Error(re=None, code="bad_frame", message="no"),
    "list_runs": ListRuns(id=10, task="t", status=["FAILED"], tags=["x"], created_after=1.5,
                          created_before=9.5, limit=5, cursor="1.0/run_1"),
    "create_waitpoint": CreateWaitpoint(id=11, timeout_s=3.5, idempotency_key="k",
                                        tags=["a"]),
    "complete_waitpoint": CompleteWaitpoint(id=12, waitpoint="waitpoint_1", data={"ok": 1}),
    "retrieve_waitpoint": RetrieveWaitpoint(id=13, waitpoint="waitpoint_1"),
    "runs": RunList(re=10, runs=[{"id": "run_1"}], cursor="1.0/run_1"),
    "waitpoint": WaitpointInfo(re=12, waitpoint={"id": "waitpoint_1"}, completed=True),
}


def test_samples_cover_every_frame_type():
    assert set(SAMPLES) == set(FRAME_TYPES)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_frame_round_trips(kind):
    frame = SAMPLES[kind]
    data = encode(frame)
    assert isinstance(data, bytes)
    raw = orjson.loads(data)
    assert raw["type"] == kind
    assert set(raw) == set(frame_fields(type(frame))) | {"type"}
    assert decode(data) == frame
    assert decode(data.decode()) == frame  # text messages arrive as str


def test_from_is_renamed_on_the_wire():
    raw = unstructure(Read(id=1, run="r", from_=3))
    assert raw["from"] == 3 and "from_" not in raw
    assert decode(b'{"type":"read","id":1,"run":"r","from":9}').from_ == 9
    # the Python name is not a wire name: it is ignored like any unknown field
    assert decode(b'{"type":"read","id":1,"run":"r","from_":9}').from_ == 0


def test_defaults_fill_missing_optional_fields():
    assert decode(b'{"type":"read","id":1,"run":"r"}') == Read(id=1, run="r")
    assert decode(b'{"type":"read","id":1,"run":"r","timeout_s":null}').timeout_s is None
    assert decode(b'{"type":"trigger","id":1,"task":"t"}') == Trigger(id=1, task="t")


def test_extra_fields_are_ignored():
    frame = decode(b'{"type":"retrieve","id":1,"run":"r","shiny":[1,2],"x":{"y":null}}')
    assert frame == Retrieve(id=1, run="r")


def test_numbers_are_accepted_for_float_fields():
    assert decode(b'{"type":"read","id":1,"run":"r","timeout_s":5}').timeout_s == 5.0


def bad(message: bytes | str) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode(message)
    assert info.value.code == "bad_frame"
    assert info.value.close_code is None
    return info.value


@pytest.mark.parametrize("value", ['"5"', "true", "false", "1.5", "5.0", "null", "[5]", "{}"])
def test_integer_fields_refuse_everything_but_integers(value):
    err = bad('{"type":"read","id":1,"run":"r","from":%s}' % value)
    assert "$.from" in str(err)
    assert err.re == 1


@pytest.mark.parametrize("value", ["5", "true", "null", "[]", '{"a":1}'])
def test_string_fields_refuse_everything_but_strings(value):
    err = bad('{"type":"subscribe","id":3,"run":%s}' % value)
    assert "$.run" in str(err)
    assert err.re == 3


@pytest.mark.parametrize("value", ['"5"', "true"])
def test_float_fields_refuse_strings_and_booleans(value):
    assert bad('{"type":"read","id":1,"run":"r","timeout_s":%s}' % value).re == 1


@pytest.mark.parametrize("value", ['"read:runs:x"', '{"read:runs:x":1}', '["ok", 5]', "null"])
def test_list_of_strings_fields_refuse_anything_else(value):
    assert bad('{"type":"create_token","id":2,"scopes":%s}' % value).re == 2


@pytest.mark.parametrize("value", ['"x"', "[1]", "5"])
def test_object_fields_refuse_anything_else(value):
    bad('{"type":"trigger","id":1,"task":"t","options":%s}' % value)


def test_array_fields_refuse_anything_else():
    bad('{"type":"append","id":1,"run":"r","stream":"k","producer":"p","seq":0,"items":{}}')


def test_a_missing_field_is_named():
    err = bad('{"type":"send","id":7,"run":"r","stream":"k"}')
    assert "data" in str(err) and err.re == 7


@pytest.mark.parametrize("message", [b"", b"{", b"nope", b'{"type":"read",}', b"\xff\xfe",
                                     b'"\\ud800"', b"1e400"])
def test_not_json(message):
    err = bad(message)
    assert "JSON" in str(err) and err.re is None


@pytest.mark.parametrize("message", [b"[]", b"1", b'"hello"', b"null", b'[{"type":"cancel"}]'])
def test_not_an_object(message):
    assert "object" in str(bad(message))


@pytest.mark.parametrize("message", [b'{"type":"nope","id":4}', b'{"id":4}', b'{"type":4,"id":4}',
                                     b'{"type":null,"id":4}', b'{"type":"Read","id":4}'])
def test_unknown_or_missing_type_keeps_the_id(message):
    assert bad(message).re == 4


@pytest.mark.parametrize("rid", ['"4"', "4.0", "true", "null", "18446744073709551616"])
def test_an_unusable_id_is_not_reported(rid):
    assert bad('{"type":"nope","id":%s}' % rid).re is None


def test_the_id_of_a_bad_request_is_reported():
    assert bad(b'{"type":"read","id":42,"run":5}').re == 42
    assert bad(b'{"type":"read","id":-3}').re == -3


def test_an_echoed_type_is_cut_short():
    err = bad('{"type":"%s"}' % ("x" * 10_000))
    assert len(str(err)) < QUOTE_LIMIT + 40


def nested(depth: int) -> str:
    """A ``send`` frame whose whole nesting (the frame object is level 1) is ``depth``."""
    inner = depth - 1
    return '{"type":"send","id":5,"run":"r","stream":"k","data":%s%s}' % ("[" * inner, "]" * inner)


def test_nesting_up_to_the_limit_round_trips():
    frame = decode(nested(MAX_DEPTH))
    # whatever decode accepts, encode can write again, even wrapped in a few more levels
    assert decode(encode(frame)) == frame
    orjson.dumps([[[[[unstructure(frame)]]]]])


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 255, 1000, 1100])
def test_nesting_beyond_the_limit_is_refused(depth):
    err = bad(nested(depth))
    assert "nested" in str(err) or "JSON" in str(err)


def test_many_shallow_brackets_are_fine():
    items = ",".join(["[]"] * 5000)
    frame = decode('{"type":"append","id":1,"run":"r","stream":"k","producer":"p","seq":0,'
                   '"items":[%s]}' % items)
    assert len(frame.items) == 5000


def test_encode_is_the_compact_json_of_unstructure():
    frame = SAMPLES["send"]
    assert encode(frame) == orjson.dumps(unstructure(frame))
    assert list(unstructure(frame))[0] == "type"


def test_chunks_with_encoded_items_are_joined_unchanged():
    """The engine's fast path: stored JSON bytes go into the array as they are."""
    from runwire.transport import Chunks, decode, encode

    items = [b'"x"', b'{"k":[1,2.5,"\\u00e9"]}', b"null", b"[]"]
    frame = Chunks(re=3, stream='odd "key"', start=7, items=items)
    data = encode(frame)
    assert decode(data) == Chunks(re=3, stream='odd "key"', start=7,
                                  items=["x", {"k": [1, 2.5, "é"]}, None, []])
    assert decode(encode(decode(data))) == decode(data)
