"""`loads_strict`'s depth limit: refused exactly when the value nests deeper than the limit,
whether the bracket count lets it skip the measure or not, and brackets in strings never count."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.request.jsonin import JsonRefused, loads_strict, nesting_depth


def depth_of(value: Any) -> int:
    """The nesting depth by walking the parsed value (the reference)."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def too_deep(raw: bytes, limit: int) -> bool:
    try:
        loads_strict(raw, max_depth=limit)
    except JsonRefused as exc:
        assert exc.kind == "json_too_deep" and exc.status == 400
        return True
    return False


_TEXT = st.text(alphabet='[]{}\\"ab', max_size=6)
_VALUES = st.recursive(
    st.none() | st.integers(-5, 5) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, limit=st.integers(0, 6))
def test_refused_exactly_when_deeper_than_the_limit(value: Any, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert nesting_depth(raw) == depth_of(value)
    assert too_deep(raw, limit) == (depth_of(value) > limit)


@pytest.mark.parametrize("limit", [1, 3, 64])
def test_the_limit_itself_is_accepted_and_one_more_is_refused(limit: int) -> None:
    at = ("[" * limit + "]" * limit).encode()
    beyond = ("[" * (limit + 1) + "]" * (limit + 1)).encode()
    assert not too_deep(at, limit)
    assert too_deep(beyond, limit)


def test_brackets_in_strings_do_not_count_past_the_shortcut() -> None:
    # More opening brackets than the limit in all (the shortcut cannot decide), depth 2.
    raw = json.dumps({"history": ["[" * 100, "{" * 100]}).encode()
    assert not too_deep(raw, 3)
    # Many shallow siblings: more brackets than the limit, depth 2.
    assert not too_deep(json.dumps([[1]] * 100).encode(), 3)
    assert too_deep(json.dumps([[[[1]]]] * 100).encode(), 3)
