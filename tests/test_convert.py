"""The batch conversions of the hot path give exactly what the one-value forms give."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runwire import InvalidPayloadError
from runwire._convert import from_json, from_json_many, json_bytes, json_bytes_many

# every code point, surrogates included (orjson refuses those), weighted toward the ones JSON
# escapes and the separator the fast path joins with
_chars = st.one_of(st.characters(codec=None), st.sampled_from('"\\\n\r\t\x00\x1f\x7f\u2028é'))
_strings = st.text(alphabet=_chars, max_size=12)


def _reference(values: list[Any]) -> list[bytes] | type[TypeError]:
    try:
        return [orjson.dumps(value) for value in values]
    except TypeError:
        return TypeError


def _many(values: list[Any]) -> list[bytes] | type[TypeError]:
    try:
        return json_bytes_many(values)
    except TypeError:
        return TypeError


@given(st.lists(_strings, max_size=8))
def test_strings_encode_as_orjson_does(values):
    assert _many(values) == _reference(values)


@given(st.lists(st.one_of(_strings, st.integers(), st.none(), st.booleans(),
                          st.lists(_strings, max_size=2)), max_size=6))
def test_mixed_values_encode_as_orjson_does(values):
    assert _many(values) == _reference(values)


def test_fast_path_results_are_exact_size_copies():
    encoded = json_bytes_many(["tok", "en"])
    assert encoded == [b'"tok"', b'"en"']
    assert all(type(data) is bytes for data in encoded)


def test_a_str_subclass_takes_the_general_path():
    class Token(str):
        pass

    assert json_bytes_many([Token("a"), "b"]) == [json_bytes("a"), json_bytes("b")]


def test_empty_and_non_json():
    assert json_bytes_many([]) == []
    with pytest.raises(TypeError):
        json_bytes_many(["a", object()])
    with pytest.raises(TypeError):
        json_bytes_many(["a", "\ud800"])  # a lone surrogate is not UTF-8


@pytest.mark.parametrize("cls, values", [
    (str, ["a", "b"]), (int, [1, 2]), (None, [1, "a", None]), (Any, [{"a": 1}]),
    (object, [[1]]),
])
def test_values_that_already_fit_pass_through_untouched(cls, values):
    assert from_json_many(values, cls) is values


@pytest.mark.parametrize("cls, values", [
    (int, [1, True]),  # bool is not an int here, as in from_json
    (float, [1.5, 2]),  # an int is turned into a float
    (str, ["a", 1]),
    (list[int], [[1], [2]]),
])
def test_other_values_are_converted_one_by_one(cls, values):
    def one(value: Any) -> Any:
        try:
            return from_json(value, cls)
        except InvalidPayloadError:
            return InvalidPayloadError

    def many() -> list[Any]:
        out: list[Any] = []
        try:
            out.extend(from_json_many(values, cls))  # keeps what came before a raise
        except InvalidPayloadError:
            out.append(InvalidPayloadError)
        return out

    expected = [one(value) for value in values]
    if InvalidPayloadError in expected:
        expected = expected[:expected.index(InvalidPayloadError) + 1]
    assert many() == expected


def test_a_bad_value_raises_only_when_its_turn_comes():
    items = iter(from_json_many([1, 2, "three"], int, "chunk"))
    assert next(items) == 1
    assert next(items) == 2
    with pytest.raises(InvalidPayloadError, match="chunk"):
        next(items)
