"""`Table`: numpy columns with the pandas frame built on demand, and the `Cohort` that holds them
(the loader's arrays reach the features without a frame; a frame handed out is the table)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from data.cohort import Cohort, cohort_from_tables
from data.table import Table, as_table


def test_columns_rows_and_names() -> None:
    table = Table({"a": np.array([1.0, 2.0]), "b": np.array(["x", None], dtype=object)}, 2)
    assert len(table) == 2 and table.names == ("a", "b") and "a" in table and "c" not in table
    assert list(table) == ["a", "b"]
    assert table["a"].tolist() == [1.0, 2.0]
    assert table.get("a", object).tolist() == [1.0, 2.0]
    assert table.get("a", object).dtype == object
    with pytest.raises(KeyError):
        table["c"]
    assert not table.has_frame


def test_frame_is_built_once_and_then_is_the_table() -> None:
    table = Table({"a": np.array([1.0, 2.0]), "b": np.array(["x", "y"], dtype=object)}, 2)
    frame = table.frame
    assert table.has_frame and table.frame is frame
    assert list(frame.columns) == ["a", "b"] and isinstance(frame.index, pd.RangeIndex)
    frame.loc[0, "a"] = 9.0  # a caller may change the frame it was given
    assert table["a"].tolist() == [9.0, 2.0]
    assert table.names == ("a", "b")


def test_view_of_a_frame_reads_it_as_pandas_gives_it() -> None:
    frame = pd.DataFrame({"n": pd.array([1, None], dtype="Int64"), "t": ["u", "v"]})
    table = as_table(frame, "labs")
    assert table is not None and len(table) == 2 and table.names == ("n", "t")
    assert table.get("t", object).tolist() == ["u", "v"]
    assert table.series("n").equals(frame["n"]) and str(table.series("n").dtype) == "Int64"
    assert as_table(table, "labs") is table and as_table(None, "labs") is None
    with pytest.raises(TypeError, match=r"cohort\.labs: expected a pandas DataFrame, got list"):
        as_table([{"n": 1}], "labs")


def test_scoring_one_patient_builds_no_frame(cohort_tables) -> None:
    from features.pipeline import FeaturePipeline

    pipeline = FeaturePipeline().fit(cohort_from_tables(cohort_tables))
    cohort = cohort_from_tables(cohort_tables)
    pipeline.transform_matrix(cohort)
    for name in ("patients", "episodes", "labs", "regimens"):
        table = cohort.table(name)
        assert table is not None and not table.has_frame, name
    assert cohort.labs is cohort.labs  # asked for, the frame is built once
    assert cohort.table("labs").has_frame


def test_cohort_is_a_frozen_dataclass(cohort_tables) -> None:
    cohort = cohort_from_tables(cohort_tables)
    names = [f.name for f in dataclasses.fields(cohort)]
    assert names[:4] == ["patients", "episodes", "labs", "regimens"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cohort.labs = cohort.labs  # type: ignore[misc]
    fewer = cohort.labs.iloc[:1]
    changed = dataclasses.replace(cohort, labs=fewer, warnings=())
    assert len(changed.labs) == 1 and changed.warnings == ()
    assert changed.patients.equals(cohort.patients) and changed.conversions == cohort.conversions
    assert cohort.table("outcomes") is None and cohort.outcomes is None
    with pytest.raises(KeyError, match="no table 'lab'"):
        cohort.table("lab")
    assert repr(cohort).startswith("Cohort(patients=")
    tables = [cohort.table(n) for n in ("patients", "episodes", "labs", "regimens")]
    assert isinstance(Cohort(*tables).labs, pd.DataFrame)
