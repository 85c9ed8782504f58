"""One scored patient: the plain-Python paths the features take for a one-episode cohort, the
block-built output frame and the column reads give exactly what the vectorised pandas/numpy code
gives (values, NaN positions, dtypes, index, columns, warnings), on the shared cohort and on
random patients (labs after the index, unknown tests and drugs, missing birth dates and units,
several episodes, unseen categories)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import features.labs
import features.regimens
from data.cohort import Cohort, cohort_from_tables
from features.pipeline import FeatureConfig, FeaturePipeline, _float_frame
from features.timeline import column_values, is_missing


@pytest.fixture
def pipeline(cohort_tables) -> FeaturePipeline:
    return FeaturePipeline().fit(cohort_from_tables(cohort_tables))


@pytest.fixture
def extra_pipeline(cohort_tables) -> FeaturePipeline:
    """With an extra analyte and extra static columns (a category and a number)."""
    config = FeatureConfig(extra_analytes=("XYZ-1",), extra_static=("site", "weight_kg"))
    tables = dict(cohort_tables)
    tables["patients"] = tables["patients"].assign(weight_kg=[61.0, None, 70.5, 80.0])
    return FeaturePipeline(config).fit(cohort_from_tables(tables))


def _vectorised(pipeline: FeaturePipeline, cohort: Any) -> tuple[pd.DataFrame, list[str]]:
    features.labs._SCALAR = features.regimens._SCALAR = False
    try:
        return pipeline.transform_with_warnings(cohort)
    finally:
        features.labs._SCALAR = features.regimens._SCALAR = True


def _assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes)
    assert got.index.name == want.index.name and got.index.dtype == want.index.dtype
    pd.testing.assert_frame_equal(
        got, want, check_exact=True, check_index_type=True, check_column_type=True
    )
    # Same bits, so also the same signed zeros and the same NaN positions.
    assert np.array_equal(got.to_numpy().view(np.int64), want.to_numpy().view(np.int64))


def _assert_same_paths(pipeline: FeaturePipeline, cohort: Any) -> pd.DataFrame:
    got, got_warnings = pipeline.transform_with_warnings(cohort)
    want, want_warnings = _vectorised(pipeline, cohort)
    _assert_frames_equal(got, want)
    assert got_warnings == want_warnings
    return got


def _one_episode(cohort: Cohort, episode_id: str) -> Cohort:
    """The cohort of one episode: its row, its patient, and that patient's labs and regimens."""
    episodes = cohort.episodes[cohort.episodes["episode_id"] == episode_id]
    patient = episodes["patient_id"].iloc[0]

    def own(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["patient_id"] == patient].reset_index(drop=True)

    return Cohort(
        patients=own(cohort.patients),
        episodes=episodes.reset_index(drop=True),
        labs=own(cohort.labs),
        regimens=own(cohort.regimens),
    )


def _assert_alone_as_in_cohort(pipeline: FeaturePipeline, cohort: Cohort) -> None:
    """Each episode scored alone (plain-Python path) equals its row in the whole cohort."""
    whole, _ = _vectorised(pipeline, cohort)
    for episode_id in cohort.episodes["episode_id"]:
        alone = _assert_same_paths(pipeline, _one_episode(cohort, episode_id))
        _assert_frames_equal(alone, whole.loc[[episode_id]])


def test_the_shared_cohort_alone_and_together(pipeline: FeaturePipeline, cohort_tables) -> None:
    cohort = cohort_from_tables(cohort_tables)
    _assert_alone_as_in_cohort(pipeline, cohort)


def test_a_one_episode_cohort_takes_the_plain_python_path(
    pipeline, cohort_tables, monkeypatch
) -> None:
    cohort = _one_episode(cohort_from_tables(cohort_tables), "E-1")
    calls = []
    original = features.labs._window_stats_one
    monkeypatch.setattr(
        features.labs, "_window_stats_one", lambda *a: calls.append(1) or original(*a)
    )
    regimen_calls = []
    original_regimens = features.regimens._regimen_features_one
    monkeypatch.setattr(
        features.regimens,
        "_regimen_features_one",
        lambda *a: regimen_calls.append(1) or original_regimens(*a),
    )
    pipeline.transform_with_warnings(cohort)
    assert len(calls) == 5  # three PLT windows and two ANC windows
    assert len(regimen_calls) == 1


# -- random patients ----------------------------------------------------------------------------

_INDEX = dt.datetime(2024, 6, 15)
_TESTS = {  # test code -> units it may come in (None: no unit)
    "PLT": ["10*9/L", "10*3/uL"],
    "777-3": ["10*3/uL"],
    "ANC": ["10*9/L"],
    "HGB": ["g/L", "g/dL"],
    "ALB": ["g/L"],
    "CREA": ["umol/L", "mg/dL"],
    "XYZ-1": [None, "u"],  # unknown test: kept under its own code
}
_DRUGS = ["gemcitabine", "carboplatin", "docetaxel", "capecitabine", "trastuzumab", "madeupumab"]


@st.composite
def _lab(draw) -> dict[str, Any]:
    test = draw(st.sampled_from(sorted(_TESTS)))
    # Hours around the index (midnight): before it, on the index day, and after the cut-off.
    hours = draw(st.integers(-24 * 40, 24 * 3))
    seconds = draw(st.sampled_from([0, 0, 0, 1, 1800]))
    value = draw(st.sampled_from([0.0, 0.5, 2.0, 5.0, 12.5, 25.0, 25.0]))  # plausible for all
    return {
        "time": (_INDEX + dt.timedelta(hours=hours, seconds=seconds)).isoformat(),
        "test": test,
        "value": value,
        "unit": draw(st.sampled_from(_TESTS[test])),
    }


@st.composite
def _regimen(draw) -> dict[str, Any]:
    # Few distinct days: regimens starting together, on the index day and after it.
    days = draw(st.sampled_from([-200, -60, -21, -21, -7, 0, 3]) | st.integers(-300, 5))
    start = _INDEX.date() + dt.timedelta(days=days)
    row: dict[str, Any] = {
        "start_date": start.isoformat(),
        "drugs": ";".join(draw(st.lists(st.sampled_from(_DRUGS), min_size=1, max_size=2))),
    }
    if draw(st.booleans()):
        row["line"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        row["cycle"] = draw(st.integers(1, 6))
    if draw(st.booleans()):
        row["regimen"] = draw(st.sampled_from(["GC", "TC", "X"]))
    return row


@st.composite
def _patient_tables(draw) -> dict[str, list[dict[str, Any]]]:
    patient: dict[str, Any] = {"patient_id": "P1"}
    if draw(st.booleans()):
        patient["birth_date"] = f"{draw(st.integers(1940, 1990))}-03-01"
    patient["subtype"] = draw(st.sampled_from(["HR+/HER2-", "HER2+", "TNBC", "luminal-x", None]))
    patient["race"] = draw(st.sampled_from(["Asian", "White", "korean", "", None]))
    patient["site"] = draw(st.sampled_from(["north", "south", "east", None]))
    patient["weight_kg"] = draw(st.sampled_from([55.0, 72.5, None]))
    patient["ecog"] = draw(st.sampled_from([0, 1, 2, None]))
    patient["bone_mets"] = draw(st.sampled_from([True, False, None]))
    n_episodes = draw(st.integers(1, 3))
    episodes = []
    for i in range(n_episodes):
        day = _INDEX + dt.timedelta(days=-40 * i, hours=draw(st.sampled_from([0, 0, 9])))
        index = day.date().isoformat() if day.hour == 0 else day.isoformat()
        episode = {"episode_id": f"E{i}", "patient_id": "P1", "index_date": index}
        if draw(st.booleans()):
            episode["dose_mg"] = draw(st.sampled_from([5.0, 7.5]))
        episodes.append(episode)
    labs = draw(st.lists(_lab(), max_size=30))
    regimens = draw(st.lists(_regimen(), max_size=6))
    return {
        "patients": [patient],
        "episodes": episodes,
        "labs": [{"patient_id": "P1", **row} for row in labs],
        "regimens": [{"patient_id": "P1", **row} for row in regimens],
    }


@settings(
    max_examples=150,
    deadline=None,
    # The fitted pipeline is only read.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(tables=_patient_tables())
def test_random_patients_alone_and_together(pipeline, extra_pipeline, tables) -> None:
    cohort = cohort_from_tables(tables)
    for fitted in (pipeline, extra_pipeline):
        _assert_same_paths(fitted, cohort)
        _assert_alone_as_in_cohort(fitted, cohort)


# -- building blocks ----------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [True, False])
@pytest.mark.parametrize("n", [0, 1, 3])
def test_the_output_frame_is_the_pandas_frame(n: int, blocks: bool, monkeypatch) -> None:
    import features.pipeline

    monkeypatch.setattr(features.pipeline, "_BLOCKS", blocks)
    rng = np.random.default_rng(n)
    out = rng.normal(size=(4, n))
    out[1, :] = np.nan
    ids = np.array([f"E{i}" for i in range(n)], dtype=object)
    columns = pd.Index(["a", "b=x", "c", "d"])
    want = pd.DataFrame(
        out.T, index=pd.Index(ids, name="episode_id", dtype=object), columns=columns
    )
    got = _float_frame(out, ids, columns)
    _assert_frames_equal(got, want)
    pd.testing.assert_frame_equal(got.iloc[::-1], want.iloc[::-1])


def _frames() -> list[pd.DataFrame]:
    when = pd.to_datetime(["2024-01-01T00:00", None, "2024-02-01T08:00"])
    plain = pd.DataFrame(
        {"a": ["x", None, "z"], "b": [1.0, np.nan, 3.0], "n": [1, 2, 3], "t": when, "f": [1, 0, 1]}
    )
    return [
        plain,
        plain.iloc[[2, 0]],  # a view with a non-default index
        pd.concat([plain, plain], axis=1),  # every name twice
        plain.assign(t=when.tz_localize("UTC")),  # timezone-aware
        plain.assign(a=pd.Categorical(["x", None, "z"]), n=pd.array([1, None, 3], dtype="Int64")),
        plain.astype({"a": "string"}),
    ]


@pytest.mark.parametrize("frame", _frames())
@pytest.mark.parametrize("name", ["a", "b", "n", "t", "f"])
@pytest.mark.parametrize("dtype", [None, object])
def test_column_values_reads_what_pandas_gives(frame, name, dtype) -> None:
    want = frame[name].to_numpy(dtype=dtype)
    got = column_values(frame, name, dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert pd.isna(got).tolist() == pd.isna(want).tolist()
    assert [v for v in got.ravel() if not pd.isna(v)] == [v for v in want.ravel() if not pd.isna(v)]


def test_column_values_raises_for_a_missing_name() -> None:
    with pytest.raises(KeyError):
        column_values(_frames()[0], "missing")


_ODD = st.sampled_from([None, np.nan, pd.NaT, pd.NA, np.datetime64("NaT"), 1, 2.5, "", " x"])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.text(max_size=3) | st.none() | _ODD, max_size=70))
def test_is_missing_is_pd_isna(values: list) -> None:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    assert is_missing(array).tolist() == pd.isna(array).tolist()
    assert is_missing(np.array([1.0, np.nan])).tolist() == [False, True]
