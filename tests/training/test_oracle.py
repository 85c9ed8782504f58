"""The observable-data oracle: its observation summary (hand-computed, leakage-free) and its fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.cohort import cohort_from_tables
from training.oracle import (
    OracleFit,
    fit_observable_oracle,
    observation_summary,
    predict_observable_oracle,
    regimen_codes,
)


def _summary(tables: dict[str, pd.DataFrame], codes: dict[str, int] | None = None) -> pd.DataFrame:
    cohort = cohort_from_tables(tables)
    ids = pd.Index(["E-1", "E-2", "E-5"], name="episode_id")
    features = pd.DataFrame({"plt_last": [42.0, 30.0, 55.0]}, index=ids)
    return observation_summary(cohort, ids, features, codes or regimen_codes(cohort))


def test_summary_of_the_fixture_cohort_by_hand(cohort_tables) -> None:
    summary = _summary(cohort_tables)
    e1 = summary.loc["E-1"]
    # E-1, index 2024-03-10: PLT 180 (day -21), 90 (day -9), 42000/uL = 42 (day -1)
    assert e1["plt_log_day_-1"] == pytest.approx(math.log(42), abs=1e-6)
    assert e1["plt_log_day_-9"] == pytest.approx(math.log(90), abs=1e-6)
    assert e1["plt_log_day_-21"] == pytest.approx(math.log(180), abs=1e-6)
    assert np.isnan(e1["plt_log_day_0"])
    assert e1["hgb_week_-1"] == pytest.approx(105.0)  # 10.5 g/dL the day before
    # cycles before 2024-03-10: T-DM1 19 days before, THP 161 days before
    assert e1["cycle_days_before_0"] == 19 and e1["cycle_days_before_1"] == 161
    codes = sorted(["GCb", "GP", "T-DM1", "T-DXd", "THP", "X", "palbo+AI"])
    assert e1["cycle_regimen_0"] == codes.index("T-DM1")
    assert e1["cycle_regimen_1"] == codes.index("THP")
    assert np.isnan(e1["cycle_days_before_2"])
    # E-2, index 2024-06-01: PLT 30 on the index date itself counts (day 0)
    assert summary.loc["E-2", "plt_log_day_0"] == pytest.approx(math.log(30), abs=1e-6)
    assert summary.loc["E-1", "plt_last"] == 42.0
    assert summary.dtypes.eq("float32").all()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    after=st.lists(
        st.one_of(
            st.tuples(st.integers(1, 60), st.just("PLT"), st.floats(1, 400)),
            st.tuples(st.integers(1, 60), st.just("ANC"), st.floats(0.1, 20)),
            st.tuples(st.integers(1, 60), st.just("HGB"), st.floats(50, 200)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_nothing_after_the_index_date_changes_the_summary(cohort_tables, after) -> None:
    tables = {name: frame.copy() for name, frame in cohort_tables.items()}
    codes = regimen_codes(cohort_from_tables(tables))  # the reference's codes, as in the bench
    before = _summary(tables, codes)
    units = {"PLT": "10*9/L", "ANC": "10*9/L", "HGB": "g/L"}
    extra = pd.DataFrame(
        [
            (
                "P-a1",
                (pd.Timestamp("2024-03-10") + pd.Timedelta(days=d)).isoformat(),
                t,
                v,
                units[t],
            )
            for d, t, v in after
        ],
        columns=["patient_id", "time", "test", "value", "unit"],
    )
    # P-a1's episode E-1 (index 2024-03-10); E-5 is later, so only keep rows before 2024-09-01
    extra = extra[pd.to_datetime(extra["time"]) < pd.Timestamp("2024-09-01")]
    tables["labs"] = pd.concat([tables["labs"], extra], ignore_index=True)
    later_cycle = {"patient_id": "P-a1", "start_date": "2024-03-20", "drugs": "eribulin"}
    later_cycle |= {"regimen": "E", "line": 3, "cycle": 1}
    tables["regimens"] = pd.concat(
        [tables["regimens"], pd.DataFrame([later_cycle])], ignore_index=True
    )
    pd.testing.assert_series_equal(_summary(tables, codes).loc["E-1"], before.loc["E-1"])


def test_an_index_time_cuts_the_index_day(cohort_tables) -> None:
    tables = {name: frame.copy() for name, frame in cohort_tables.items()}
    episodes = tables["episodes"]
    episodes.loc[episodes["episode_id"] == "E-2", "index_date"] = "2024-06-01T07:00:00"
    later = pd.DataFrame(
        [("P-b2", "2024-06-01T12:00:00", "PLT", 99, "10*9/L")],
        columns=["patient_id", "time", "test", "value", "unit"],
    )
    tables["labs"] = pd.concat([tables["labs"], later], ignore_index=True)
    # PLT 30 at midnight is before 07:00; the 12:00 count is after the first dose
    assert _summary(tables).loc["E-2", "plt_log_day_0"] == pytest.approx(math.log(30), abs=1e-6)


def test_the_fit_recovers_a_known_conditional_probability() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(4000, 3)), columns=["a", "b", "c"]).astype("float32")
    p = 1 / (1 + np.exp(-(1.5 * X["a"] - X["b"]).to_numpy()))
    booster = fit_observable_oracle(X, p, OracleFit(n_jobs=1, max_rounds=600))
    fitted = predict_observable_oracle(booster, X)
    assert np.corrcoef(fitted, p)[0, 1] > 0.97
    assert np.abs(fitted - p).mean() < 0.05


def test_the_fit_refuses_bad_inputs() -> None:
    X = pd.DataFrame({"a": [0.0, 1.0]})
    with pytest.raises(ValueError, match="2 summary rows but 3"):
        fit_observable_oracle(X, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_observable_oracle(X, np.array([0.1, 1.2]))
