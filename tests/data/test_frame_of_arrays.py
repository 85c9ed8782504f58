"""`data.cohort._frame_of_arrays` builds exactly the frame `pd.DataFrame` builds from the same
arrays (values, dtypes, index and column types), and a frame that behaves like one afterwards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.cohort import _frame_of_arrays

_KINDS = ("int", "float", "bool", "text", "datetime")


def _column(kind: str, data: st.DataObject, n: int) -> np.ndarray:
    if kind == "int":
        values = data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
        return np.array(values, dtype=np.int64)
    if kind == "float":
        number = st.floats(allow_nan=True, allow_infinity=True)
        return np.array(data.draw(st.lists(number, min_size=n, max_size=n)), dtype=np.float64)
    if kind == "bool":
        return np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    if kind == "text":
        values = data.draw(st.lists(st.none() | st.text(max_size=4), min_size=n, max_size=n))
        out = np.empty(n, dtype=object)
        out[:] = values
        return out
    ns = st.none() | st.integers(-(2**62), 2**62)
    values = data.draw(st.lists(ns, min_size=n, max_size=n))
    ints = np.array([np.iinfo(np.int64).min if v is None else v for v in values], dtype=np.int64)
    return ints.view("datetime64[ns]")


def _assert_same(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    got = _frame_of_arrays(columns)
    want = pd.DataFrame(columns)
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes)
    assert got.columns.dtype == want.columns.dtype
    pd.testing.assert_frame_equal(
        got, want, check_exact=True, check_index_type=True, check_column_type=True
    )
    return got


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(0, 6), kinds=st.lists(st.sampled_from(_KINDS), max_size=9))
def test_random_columns_give_the_pandas_frame(data: st.DataObject, n: int, kinds) -> None:
    names = data.draw(st.lists(st.text(max_size=3), min_size=len(kinds), max_size=len(kinds)))
    columns = {name: _column(kind, data, n) for name, kind in zip(names, kinds, strict=True)}
    _assert_same(columns)


def test_the_frame_behaves_like_a_pandas_frame() -> None:
    text = np.array(["a", None, "c"], dtype=object)
    columns = {
        "id": text,
        "when": np.array(["2024-01-01", "NaT", "2024-03-01T08:00"], dtype="datetime64[ns]"),
        "x": np.array([1.5, np.nan, 3.0]),
        "y": np.array([1.0, 2.0, 3.0]),
        "n": np.array([1, 2, 3]),
        "flag": np.array([True, False, True]),
        "other": np.array(["x", "y", "z"], dtype=object),
    }
    frame = _assert_same(columns)
    want = pd.DataFrame(columns)
    pd.testing.assert_frame_equal(frame.iloc[::-1], want.iloc[::-1])
    pd.testing.assert_frame_equal(frame.sort_values("x"), want.sort_values("x"))
    pd.testing.assert_frame_equal(pd.concat([frame, frame]), pd.concat([want, want]))
    pd.testing.assert_series_equal(frame["when"].dt.year, want["when"].dt.year)
    frame["x"] = 0.0  # a new column value replaces the old one, others untouched
    assert frame["x"].tolist() == [0.0, 0.0, 0.0]
    assert frame["y"].tolist() == [1.0, 2.0, 3.0]
    assert text.tolist() == ["a", None, "c"]  # the input arrays are not modified


@pytest.mark.parametrize(
    "columns",
    [
        {},
        {1: np.arange(3)},  # a non-string name
        {"a": np.arange(3), "b": np.arange(2)},  # unequal lengths
        {"a": np.zeros((2, 2))},  # not 1-D
        {"a": np.array(["2024-01-01"], dtype="datetime64[s]")},  # not nanoseconds
        {"a": [1, 2, 3]},  # not an array
        {"a": np.array(["x"], dtype=str)},  # numpy text
    ],
)
def test_other_inputs_are_left_to_pandas(columns) -> None:
    try:
        want = pd.DataFrame(columns)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)[:20]):
            _frame_of_arrays(columns)
        return
    pd.testing.assert_frame_equal(_frame_of_arrays(columns), want, check_exact=True)


def test_without_block_internals_pandas_builds_the_frame(monkeypatch) -> None:
    import data.cohort

    monkeypatch.setattr(data.cohort, "_BLOCKS", False)
    columns = {"a": np.array([1.0, np.nan]), "b": np.array(["x", None], dtype=object)}
    _assert_same(columns)
