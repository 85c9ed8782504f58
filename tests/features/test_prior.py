"""The previous episode's platelet course as a feature: hand-computed values, the index-date cut,
and the same values for a patient alone as within a cohort (one code path)."""

import numpy as np
import pandas as pd
import pytest

from data.cohort import cohort_from_tables
from features.pipeline import ALL_FAMILIES, FeatureConfig, FeaturePipeline, build_features
from features.prior import PRIOR_FEATURES
from features.registry import spec_of

CONFIG = FeatureConfig(families=(*ALL_FAMILIES, "prior_episode"))


def _tables() -> dict[str, list[dict]]:
    plt = [
        # P: previous episode 2024-01-10, baseline 35 (the last PLT of 01-07..01-10), peak 130
        # on day 10; the count of day 20 lies outside days 1-14.
        ("P", "2024-01-08T08:00:00", 40),
        ("P", "2024-01-09T08:00:00", 35),
        ("P", "2024-01-15T08:00:00", 90),
        ("P", "2024-01-20T08:00:00", 130),
        ("P", "2024-01-30T08:00:00", 200),
        ("P", "2024-02-29T08:00:00", 60),
        # Q: episodes four days apart: the count on the second index day counts (a date-only
        # index includes its day), the one after it does not.
        ("Q", "2024-04-30T08:00:00", 30),
        ("Q", "2024-05-03T08:00:00", 80),
        ("Q", "2024-05-05T09:00:00", 150),
        ("Q", "2024-05-06T08:00:00", 300),
    ]
    return {
        "patients": [{"patient_id": "P"}, {"patient_id": "Q"}],
        "episodes": [
            {"episode_id": "P1", "patient_id": "P", "index_date": "2024-01-10"},
            {"episode_id": "P2", "patient_id": "P", "index_date": "2024-03-01"},
            {"episode_id": "Q1", "patient_id": "Q", "index_date": "2024-05-01"},
            {"episode_id": "Q2", "patient_id": "Q", "index_date": "2024-05-05"},
        ],
        "labs": [
            {"patient_id": p, "time": t, "test": "PLT", "value": v, "unit": "10*9/L"}
            for p, t, v in plt
        ],
    }


def test_hand_computed_values_and_the_index_cut() -> None:
    frame = build_features(cohort_from_tables(_tables()), CONFIG).set_index("episode_id")
    got = frame[list(PRIOR_FEATURES)]
    assert got.loc["P1"].isna().all() and got.loc["Q1"].isna().all()
    assert got.loc["P2"].tolist() == [130.0, 95.0, 51.0]  # 2024 is a leap year
    assert got.loc["Q2"].tolist() == [150.0, 120.0, 4.0]


def test_a_patient_alone_gives_the_same_values_and_one_episode_gives_missing() -> None:
    tables = _tables()
    pipeline = FeaturePipeline(CONFIG).fit(cohort_from_tables(tables))
    together = pipeline.transform(cohort_from_tables(tables))
    alone = {
        "patients": [{"patient_id": "Q"}],
        "episodes": [e for e in tables["episodes"] if e["patient_id"] == "Q"],
        "labs": [r for r in tables["labs"] if r["patient_id"] == "Q"],
    }
    q = pipeline.transform(cohort_from_tables(alone))
    pd.testing.assert_frame_equal(q.loc[["Q2"]], together.loc[["Q2"]])
    current_only = {**alone, "episodes": [alone["episodes"][1]]}
    single = pipeline.transform(cohort_from_tables(current_only))
    assert single.loc["Q2", list(PRIOR_FEATURES)].isna().all()


def test_declared_and_opt_in() -> None:
    for name in PRIOR_FEATURES:
        assert spec_of(name).group == "platelet_history"
    default = build_features(cohort_from_tables(_tables()))
    assert not set(PRIOR_FEATURES) & set(default.columns)
    with pytest.raises(ValueError, match="prior_episode"):
        FeatureConfig(families=("prior_episodes",))
    assert np.isnan(build_features(cohort_from_tables(_tables()), CONFIG)["prior_plt_max_d14"])[0]
