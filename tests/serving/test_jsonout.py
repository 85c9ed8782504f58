"""`serving.http.jsonout`: the same JSON values as the standard library, NaN and infinities
refused wherever they hide (orjson alone would write them as null), numpy numbers as numbers."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.http.jsonout import FastJSONResponse, dumps

_KEYS = st.text(max_size=8)
_FINITE = st.floats(allow_nan=False, allow_infinity=False)
_LEAVES = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _FINITE | st.text(max_size=8)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES)
def test_the_same_value_as_the_standard_library(value: Any) -> None:
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))


@settings(max_examples=100, deadline=None)
@given(value=st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_sorted_keys_come_out_in_the_standard_librarys_order(value: dict[str, Any]) -> None:
    ours = json.loads(dumps(value, sort_keys=True), object_pairs_hook=lambda pairs: pairs)
    theirs = json.loads(json.dumps(value, sort_keys=True), object_pairs_hook=lambda pairs: pairs)
    assert ours == theirs  # the same pairs in the same order, at every level


@settings(max_examples=200, deadline=None)
@given(
    value=st.dictionaries(_KEYS, _VALUES, min_size=1, max_size=4),
    bad=st.sampled_from([math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf")]),
    depth=st.integers(0, 3),
)
def test_a_non_finite_number_anywhere_is_refused(value: dict, bad: float, depth: int) -> None:
    hidden: Any = bad
    for level in range(depth):
        hidden = [hidden] if level % 2 else {"x": hidden}
    value = {**value, "hidden": hidden}
    with pytest.raises(ValueError, match="NaN or an infinity"):
        dumps(value)
    if isinstance(bad, float):  # as the standard library refuses it (it cannot hold float32)
        with pytest.raises(ValueError):
            json.dumps(value, allow_nan=False)


def test_numpy_numbers_are_numbers_and_a_nan_in_an_array_is_refused() -> None:
    value = {"f32": np.float32(1.5), "f64": np.float64(0.25), "i": np.int64(3), "a": np.arange(3.0)}
    assert json.loads(dumps(value)) == {"f32": 1.5, "f64": 0.25, "i": 3, "a": [0.0, 1.0, 2.0]}
    with pytest.raises(ValueError):
        dumps({"a": np.array([1.0, np.nan])})


def test_keys_that_are_not_text_become_text_as_with_the_standard_library() -> None:
    value = {1: "a", 2.5: "b", None: "c", "d": {7: [1]}}
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))


class _Level(enum.Enum):
    UNKNOWN = math.nan


@dataclasses.dataclass
class _Row:
    p: float


def test_what_orjson_refuses_but_json_holds_is_rendered_by_json() -> None:
    class Measure(float):
        pass

    pair = collections.namedtuple("pair", "low high")
    for value in (
        {"patient_id": 2**64},
        {"patient_id": -(2**63) - 1},
        {"x": Measure(1.5)},
        {"range": pair(1, 2)},
    ):
        assert json.loads(dumps(value)) == json.loads(json.dumps(value))
    with pytest.raises(ValueError):  # and json's refusals stay refusals
        dumps({"patient_id": 2**64, "p": math.nan})


def test_a_non_finite_key_or_enum_value_is_refused() -> None:
    for value in ({math.nan: 1}, {math.inf: "x"}, {"level": _Level.UNKNOWN}):
        with pytest.raises(ValueError, match="NaN or an infinity"):
            dumps(value)


def test_a_value_json_cannot_hold_is_a_type_error() -> None:
    for value in (object(), dt.date(2024, 1, 1), _Row(0.5)):  # orjson alone renders the last two
        with pytest.raises(TypeError, match="not JSON serialisable"):
            dumps({"when": value})


def test_nulls_and_text_are_kept_as_written() -> None:
    value = {"interval": None, "word": "plättchen ✓", "small": 1e-05, "big": 1e300}
    raw = dumps(value)
    assert json.loads(raw) == value
    assert "plättchen ✓".encode() in raw  # UTF-8, not \\u escapes


def test_the_response_renders_with_dumps() -> None:
    response = FastJSONResponse({"probability": 0.5, "warnings": []}, status_code=201)
    assert response.body == b'{"probability":0.5,"warnings":[]}'
    assert response.status_code == 201 and response.media_type == "application/json"
    fhir = FastJSONResponse({"resourceType": "Bundle"}, media_type="application/fhir+json")
    assert fhir.headers["content-type"] == "application/fhir+json"
    with pytest.raises(ValueError):
        FastJSONResponse({"probability": math.nan})
