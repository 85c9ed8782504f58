"""One scored patient: each episode scored alone gets exactly its row of the cohort it came from
(values, signed zeros, NaN positions, dtypes, index, columns, warnings), on the shared cohort and
on random patients (labs after the index, unknown tests and drugs, missing birth dates and units,
several episodes, unseen categories); the window statistics by hand."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.cohort import Cohort, cohort_from_tables
from features.labs import AnalyteSeries, window_stats
from features.pipeline import FeatureConfig, FeaturePipeline
from features.timeline import NS_PER_DAY, SMALL, build_timeline, factorize, is_missing, lookup


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


def _assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes)
    assert got.index.name == want.index.name and got.index.dtype == want.index.dtype
    pd.testing.assert_frame_equal(
        got, want, check_exact=True, check_index_type=True, check_column_type=True
    )
    # Same bits, so also the same signed zeros and the same NaN positions.
    assert np.array_equal(got.to_numpy().view(np.int64), want.to_numpy().view(np.int64))


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
    """Each episode scored alone equals its row in the whole cohort, warnings included."""
    whole, whole_warnings = pipeline.transform_with_warnings(cohort)
    for episode_id in cohort.episodes["episode_id"]:
        alone, warnings = pipeline.transform_with_warnings(_one_episode(cohort, episode_id))
        _assert_frames_equal(alone, whole.loc[[episode_id]])
        assert warnings == [w for w in whole_warnings if w.startswith(f"episode {episode_id}:")]


def test_the_shared_cohort_alone_and_together(pipeline: FeaturePipeline, cohort_tables) -> None:
    cohort = cohort_from_tables(cohort_tables)
    _assert_alone_as_in_cohort(pipeline, cohort)


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
        _assert_alone_as_in_cohort(fitted, cohort)


# -- building blocks ----------------------------------------------------------------------------


def test_the_matrix_is_the_frame(pipeline, cohort_tables) -> None:
    cohort = cohort_from_tables(cohort_tables)
    matrix = pipeline.transform_matrix(cohort)
    frame, warnings = pipeline.transform_with_warnings(cohort)
    assert matrix.X.shape == frame.shape and matrix.X.dtype == np.float64
    assert np.array_equal(matrix.X.view(np.int64), frame.to_numpy().view(np.int64))
    assert list(matrix.episode_ids) == list(frame.index) == list(cohort.episodes["episode_id"])
    assert matrix.warnings == warnings


def test_window_statistics_by_hand() -> None:
    """Two episodes of one patient (index days 10 and 20), counts on days 2, 8, 9 and 19 (noon),
    windows of 1, 3 and 12 days: minimum, slope per day (x in days from the index day) and count."""
    day_s = NS_PER_DAY // 1_000_000_000
    index_ns = np.array([10, 20]) * NS_PER_DAY
    seconds = np.array([2, 8, 9, 19]) * day_s + day_s // 2
    timeline = build_timeline(
        np.array(["E1", "E2"], dtype=object),
        np.array(["P", "P"], dtype=object),
        index_ns,
        [seconds],
        lookback_days=12,
    )
    key = timeline.key(np.zeros(4, dtype=np.int64), seconds)
    day = seconds // day_s
    series = AnalyteSeries(key, seconds, day, np.array([40.0, 30.0, 60.0, 90.0]))
    stats = window_stats(series, timeline, (1, 3, 12))
    # E1 (index day 10, whole day included): 1 day from day 9: [60]; 3 days from day 7: [30, 60];
    # 12 days from day -2: [40, 30, 60] at x = -7.5, -1.5, -0.5.
    # E2 (index day 20): 1 day from day 19: [90]; 3 days: [90]; 12 days from day 8: [30, 60, 90].
    np.testing.assert_array_equal(stats.count, [[1, 1], [2, 1], [3, 3]])
    np.testing.assert_array_equal(stats.minimum, [[60, 90], [30, 90], [30, 30]])
    x, y = np.array([-7.5, -1.5, -0.5]), np.array([40.0, 30.0, 60.0])
    by_hand = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    assert stats.slope[1, 0] == pytest.approx(30.0)  # (60 - 30) / 1 day
    assert stats.slope[2, 0] == pytest.approx(by_hand)
    # E2, 12 days: 30, 60, 90 at x = -11.5, -10.5, -0.5: sxy 330, sxx 74.
    assert stats.slope[2, 1] == pytest.approx(330 / 74)
    assert np.isnan(stats.slope[0]).all()  # one count: no slope


_ODD = st.sampled_from([None, np.nan, pd.NaT, pd.NA, np.datetime64("NaT"), 1, 2.5, "", " x"])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.text(max_size=3) | st.none() | _ODD, max_size=70))
def test_is_missing_is_pd_isna(values: list) -> None:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    assert is_missing(array).tolist() == pd.isna(array).tolist()
    assert is_missing(np.array([1.0, np.nan])).tolist() == [False, True]


_KEYS = st.text(alphabet="abP1-", max_size=3) | st.integers(-2, 2)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(_KEYS, max_size=3 * SMALL))
def test_factorize_is_pandas_factorize(values: list) -> None:
    """Below `SMALL` values the codes come from a dict: the same as pandas' hash table."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    codes, uniques = factorize(array)
    want_codes, want_uniques = pd.factorize(array, use_na_sentinel=False)
    assert codes.tolist() == want_codes.tolist()
    assert uniques.tolist() == list(want_uniques)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(_KEYS, unique_by=lambda v: (type(v), v), max_size=2 * SMALL),
    wanted=st.lists(_KEYS, max_size=2 * SMALL),
)
def test_lookup_is_pandas_get_indexer(keys: list, wanted: list) -> None:
    known, asked = (np.array(v + [None], dtype=object)[:-1] for v in (keys, wanted))
    assert lookup(known, asked, "t").tolist() == pd.Index(known).get_indexer(asked).tolist()
