"""Time to response: censoring of hand-made episodes, concordance, the AFT fit and its evidence."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.cohort import cohort_from_tables
from data.labels import derive_labels, get_definition
from training.config import SurvivalConfig
from training.survival import concordance, fit_time_model, survival_targets

INDEX = pd.Timestamp("2025-03-10")


def _plt(patient: str, day: int, value: float) -> dict:
    when = INDEX + pd.Timedelta(days=day, hours=8)
    return {"patient_id": patient, "time": when.isoformat(), "test": "PLT", "value": value,
            "unit": "10*9/L"}  # fmt: skip


def _hand_made_cohort():
    patients = ["R4", "N14", "L6", "R1", "NB"]
    labs = [_plt(p, -1, 30.0) for p in patients if p != "NB"]
    labs += [_plt("R4", 2, 45.0), _plt("R4", 4, 120.0), _plt("R4", 7, 130.0)]
    labs += [_plt("N14", d, 40.0) for d in (3, 7, 10, 14)]
    labs += [_plt("L6", 2, 35.0), _plt("L6", 6, 40.0)]
    labs += [_plt("R1", 1, 110.0)]
    labs += [_plt("NB", 3, 150.0)]  # no baseline: cannot be judged
    tables = {
        "patients": pd.DataFrame({"patient_id": patients}),
        "episodes": pd.DataFrame(
            {
                "episode_id": [f"E-{p}" for p in patients],
                "patient_id": patients,
                "index_date": INDEX.date().isoformat(),
            }
        ),
        "labs": pd.DataFrame(labs),
    }
    return cohort_from_tables(tables)


def test_hand_made_episodes_are_censored_between_draws() -> None:
    cohort = _hand_made_cohort()
    definition = get_definition("plt100_or_rise50_d14")
    labels = derive_labels(cohort, definition)
    targets = survival_targets(cohort, labels, definition)
    # a responder on day 4, last seen without response on day 2: response in (2, 4]
    assert targets.loc["E-R4", ["lower", "upper", "event"]].tolist() == [2.0, 4.0, True]
    assert targets.loc["E-R4", "status"] == "response"
    # a non-responder followed to day 14: right-censored at 14
    assert targets.loc["E-N14", ["lower", "upper", "event"]].tolist() == [14.0, math.inf, False]
    assert targets.loc["E-N14", "status"] == "no_response"
    # a non-responder whose draws stop on day 6: right-censored at 6 whether the label rules
    # keep it as a non-responder or exclude it as not evaluable
    assert targets.loc["E-L6", ["lower", "upper", "event"]].tolist() == [6.0, math.inf, False]
    l6 = labels.set_index("episode_id").loc["E-L6", "label"]
    assert targets.loc["E-L6", "status"] == ("lost" if pd.isna(l6) else "no_response")
    # a response at the first draw: left-censored (0, 1]
    assert targets.loc["E-R1", ["lower", "upper", "event"]].tolist() == [0.0, 1.0, True]
    # no baseline: no target
    assert "E-NB" not in targets.index


def test_concordance_hand_computed() -> None:
    time = np.array([2.0, 4.0, 6.0])
    event = np.array([True, True, False])
    # pairs (0,1), (0,2), (1,2) are comparable; the earlier event should have the higher risk
    assert concordance(time, event, np.array([3.0, 2.0, 1.0]))[0] == 1.0
    assert concordance(time, event, np.array([1.0, 2.0, 3.0]))[0] == 0.0
    assert concordance(time, event, np.array([1.0, 1.0, 1.0]))[0] == 0.5
    assert concordance(time, event, np.array([2.0, 3.0, 1.0]))[0] == pytest.approx(2 / 3)
    # a censored episode at the same time as an event is still event-free then: comparable
    tied = concordance(np.array([4.0, 4.0]), np.array([True, False]), np.array([1.0, 0.0]))
    assert tied[0] == 1.0
    # Uno's weights 1/G(t-)^2: censoring at 3 (G = 2/3 after it) weighs the later event's pairs
    # more. Events at 2 (risk 1) and 5 (risk 3), censored at 3 (risk 2) and 9 (risk 0):
    # pairs from t=2: vs 3 (discordant: 1 < 2), 5 (discordant), 9 (concordant), weight 1;
    # from t=5: vs 9 (concordant), weight 1 / G(5-)^2 = 1 / (1 - 1/3)^2 = 2.25
    time = np.array([2.0, 3.0, 5.0, 9.0])
    event = np.array([True, False, True, False])
    risk = np.array([1.0, 2.0, 3.0, 0.0])
    assert concordance(time, event, risk)[0] == pytest.approx(2 / 4)
    assert concordance(time, event, risk, uno=True)[0] == pytest.approx((1 + 2.25) / (3 + 2.25))


def _brute_harrell(time, event, risk) -> float:
    num = den = 0.0
    for i, j in itertools.permutations(range(len(time)), 2):
        if event[i] and (time[j] > time[i] or (time[j] == time[i] and not event[j])):
            den += 1
            num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den if den else math.nan


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.booleans(), st.integers(0, 4)), min_size=2, max_size=25
    )
)
def test_harrell_equals_the_pairwise_definition(rows) -> None:
    time = np.array([r[0] for r in rows], dtype=float)
    event = np.array([r[1] for r in rows])
    risk = np.array([r[2] for r in rows], dtype=float)
    expected = _brute_harrell(time, event, risk)
    got = concordance(time, event, risk)[0]
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)
    # bootstrap weights: integer weights equal repeating the rows
    w = np.random.default_rng(0).integers(0, 3, size=len(rows))
    rows_w = np.repeat(np.arange(len(rows)), w)
    repeated = _brute_harrell(time[rows_w], event[rows_w], risk[rows_w])
    weighted = concordance(time, event, risk, w[None, :].astype(float))[0]
    # repeating a row also pairs it with its own copies when tied, which weights cannot; compare
    # only when no comparable pair is a self-pair (distinct times or no repeats)
    if not math.isnan(repeated) and len(set(rows_w)) == len(rows_w):
        assert weighted == pytest.approx(repeated)


def test_aft_model_ranks_time_on_held_out_patients() -> None:
    rng = np.random.default_rng(3)
    n = 600
    x = rng.normal(size=(n, 3)).astype(np.float32)
    true_time = np.exp(1.8 - 0.6 * x[:, 0] + rng.normal(scale=0.4, size=n))
    draws = np.arange(1, 15, 2)  # PLT every other day
    seen = np.searchsorted(draws, true_time)  # first draw at or after the true time
    event = seen < len(draws)
    upper = np.where(event, draws[np.minimum(seen, len(draws) - 1)], np.inf)
    lower = np.where(event, np.where(seen > 0, draws[np.maximum(seen - 1, 0)], 0), draws[-1])
    targets = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "lower": lower.astype(float),
            "upper": upper.astype(float),
            "event": event,
        },
        index=[f"E{i}" for i in range(n)],
    )
    train = np.arange(n) < 400
    model = fit_time_model(
        x[train], targets[train], 14, SurvivalConfig(), {"max_depth": 2, "learning_rate": 0.1},
        max_rounds=300, early_stopping_rounds=20, valid_fraction=0.25, seed=0,
    )  # fmt: skip
    mu = model.location(x[~train])
    test = targets[~train]
    time = np.where(test["event"], test["upper"], test["lower"])
    c = concordance(time, test["event"].to_numpy(), -mu)[0]
    assert c > 0.7
    # the fitted median time follows the true one (log-time slope -0.6 on x0)
    assert np.corrcoef(mu, -x[~train, 0])[0, 1] > 0.8


def test_metrics_are_logged_to_mlflow_with_their_cis(tmp_path) -> None:
    import mlflow

    from training.survival import log_time_to_response_metrics

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    evidence = {
        "metrics": {
            "harrell_c": {"estimate": 0.71, "low": 0.68, "high": 0.74},
            "day7.observed": {"estimate": 0.4},
            "uno_c": {"estimate": float("nan"), "low": 0.5, "high": 0.6},
        }
    }
    # an explicit experiment: another test may have left an active experiment id of its own store
    experiment_id = mlflow.create_experiment("time-to-response")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        log_time_to_response_metrics(evidence)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["time_to_response.harrell_c"] == 0.71
    assert logged["time_to_response.harrell_c.low"] == 0.68
    assert logged["time_to_response.harrell_c.high"] == 0.74
    assert logged["time_to_response.day7.observed"] == 0.4
    assert "time_to_response.uno_c" not in logged  # NaN is not logged
    assert logged["time_to_response.uno_c.low"] == 0.5
