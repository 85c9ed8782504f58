"""The leakage guard: records dated after an episode's index date never change its features."""

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.cohort import cohort_from_tables
from features.pipeline import FeatureConfig, FeaturePipeline

CONFIG = FeatureConfig(extra_analytes=("FERRITIN",), extra_static=("site",))
TESTS = [
    ("PLT", "10*9/L", 1, 500),
    ("777-3", "/uL", 1000, 500000),
    ("718-7", "g/dL", 5, 17),
    ("ALB", "g/L", 20, 50),
    ("CREA", "mg/dL", 0.3, 3),
    ("FERRITIN", "ng/mL", 10, 2000),
]
DRUGS = [
    "gemcitabine;carboplatin",
    "paclitaxel",
    "trastuzumab deruxtecan",
    "eribulin",
    "olaparib",
    "capecitabine;pembrolizumab",
]


def _timed(tables):
    """The same cohort with a time of day on every index: records later that day are "after"."""
    timed = {k: v.copy() for k, v in tables.items()}
    timed["episodes"]["index_date"] = timed["episodes"]["index_date"] + "T10:30:00"
    return timed


def _after(index_date: str, offset_s: int) -> str:
    index = pd.Timestamp(index_date)
    start = index + pd.Timedelta(days=1) if index == index.normalize() else index
    return (start + pd.Timedelta(seconds=offset_s)).isoformat()


late_lab = st.tuples(st.sampled_from(TESTS), st.floats(0, 1), st.integers(1, 60 * 86_400))
late_regimen = st.tuples(
    st.sampled_from(DRUGS),
    st.integers(0, 60),
    st.one_of(st.none(), st.integers(1, 9)),
    st.one_of(st.none(), st.integers(1, 8)),
)


def _features(tables):
    cohort = cohort_from_tables(tables)
    return FeaturePipeline(CONFIG).fit(cohort).transform(cohort)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    episode=st.integers(0, 4),
    timed=st.booleans(),
    labs=st.lists(late_lab, max_size=6),
    regimens=st.lists(late_regimen, max_size=3),
)
def test_records_after_the_index_leave_the_episode_unchanged(
    cohort_tables, episode, timed, labs, regimens
):
    base = _timed(cohort_tables) if timed else cohort_tables
    tables = {k: v.copy() for k, v in base.items()}
    row = tables["episodes"].iloc[episode]
    patient, index_date = row["patient_id"], row["index_date"]
    lab_rows = [
        (patient, _after(index_date, offset), test, low + share * (high - low), unit)
        for (test, unit, low, high), share, offset in labs
    ]
    tables["labs"] = pd.concat(
        [tables["labs"], pd.DataFrame(lab_rows, columns=tables["labs"].columns)],
        ignore_index=True,
    )
    regimen_rows = pd.DataFrame(
        {
            "patient_id": patient,
            "start_date": [_after(index_date, 1 + days * 86_400) for _, days, _, _ in regimens],
            "drugs": [drugs for drugs, _, _, _ in regimens],
            "line": [np.nan if line is None else line for _, _, line, _ in regimens],
            "cycle": [np.nan if cycle is None else cycle for _, _, _, cycle in regimens],
        }
    )
    tables["regimens"] = pd.concat([tables["regimens"], regimen_rows], ignore_index=True)
    episode_id = row["episode_id"]
    expected = _features(base).loc[[episode_id]]
    got = _features(tables).loc[[episode_id], expected.columns]
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_the_guard_test_would_see_a_leak(cohort_tables):
    """Control: the same kind of record, dated on the index day, does change the features."""
    tables = {k: v.copy() for k, v in cohort_tables.items()}
    extra = pd.DataFrame(
        [("P-a1", "2024-03-10T23:59:00", "PLT", 5.0, "10*9/L")], columns=tables["labs"].columns
    )
    tables["labs"] = pd.concat([tables["labs"], extra], ignore_index=True)
    assert _features(tables).loc["E-1", "plt_last"] == 5.0
    assert _features(cohort_tables).loc["E-1", "plt_last"] == 42.0
