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
from training.config import ExperimentConfig, SurvivalConfig
from training.metrics import brier, calibration_slope, oe_ratio
from training.survival import (
    concordance,
    fit_time_model,
    fit_time_to_response,
    responded_by,
    split_between_draws,
    survival_targets,
    timed_responders,
)

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
    return _cohort_of(labs, patients)


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


def _cohort_of(labs: list[dict], patients: list[str]):
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


def test_an_unconfirmed_response_is_censored_before_it() -> None:
    # confirm_days 3: a responding count needs a PLT 3 or more days later that still responds
    definition = get_definition("custom:threshold=100,rise=50,horizon=14,confirm_days=3")
    patients = ["U11", "U9", "C4", "U2"]
    labs = [_plt(p, -1, 30.0) for p in patients]
    labs += [_plt("U11", 3, 40.0), _plt("U11", 11, 120.0)]  # day 11 responds, nothing after
    labs += [_plt("U9", d, v) for d, v in ((3, 40.0), (6, 45.0), (9, 42.0), (11, 130.0))]
    labs += [_plt("C4", 4, 120.0), _plt("C4", 8, 125.0)]  # confirmed on day 8
    labs += [_plt("U2", 2, 120.0)]  # responds on its only draw
    cohort = _cohort_of(labs, patients)
    labels = derive_labels(cohort, definition).set_index("episode_id")
    assert labels.loc[["E-U11", "E-U9", "E-U2"], "label"].isna().all()  # not evaluable
    targets = survival_targets(cohort, labels.reset_index(), definition)
    # known free of response only up to the last draw a later one could confirm (day <= 11 - 3)
    assert targets.loc["E-U11", ["lower", "upper", "event"]].tolist() == [3.0, math.inf, False]
    assert targets.loc["E-U9", ["lower", "upper", "event"]].tolist() == [6.0, math.inf, False]
    assert targets.loc[["E-U11", "E-U9"], "status"].eq("lost").all()
    assert targets.loc["E-C4", ["lower", "upper", "event"]].tolist() == [0.0, 4.0, True]
    assert "E-U2" not in targets.index  # nothing known: no target


def test_responded_by_counts_a_response_between_draws_by_its_share() -> None:
    lower = np.array([5.0, 0.0, 2.0, 7.0, 3.0, 6.0])
    upper = np.array([9.0, 14.0, 4.0, 10.0, np.inf, 7.0])
    event = np.array([True, True, True, True, False, True])
    np.testing.assert_allclose(responded_by(7, event, lower, upper), [0.5, 0.5, 1, 0, 0, 1])


def test_sparse_draws_do_not_bias_the_response_observed_by_a_day() -> None:
    # Responders with a true day uniform on 1..14, PLT drawn on days 2, 5, 9, 12 and 14 only:
    # by day 7 half have responded. Counting only intervals that end by day 7 says 5/14.
    rng = np.random.default_rng(3)
    true_day = rng.integers(1, 15, size=20_000)
    draws = np.array([2, 5, 9, 12, 14])
    upper = draws[np.searchsorted(draws, true_day)].astype(float)
    before = np.searchsorted(draws, true_day) - 1
    lower = np.where(before >= 0, draws[np.maximum(before, 0)], 0).astype(float)
    event = np.ones(true_day.size, dtype=bool)
    share = responded_by(7, event, lower, upper)
    assert abs(share.mean() - 0.5) < 0.02
    assert abs((upper <= 7).mean() - 5 / 14) < 0.02  # the old count, for contrast


def test_metrics_on_split_episodes_use_expected_counts() -> None:
    share = np.array([1.0, 0.0, 0.25, 0.5])
    predicted = np.array([0.9, 0.2, 0.3, 0.6])
    y, q, expand = split_between_draws(share, predicted)
    ones = np.ones((1, 4))
    assert oe_ratio(y, q, expand(ones))[0] == pytest.approx(share.sum() / predicted.sum())
    expected_brier = np.mean(share * (predicted - 1) ** 2 + (1 - share) * predicted**2)
    assert brier(y, q, expand(ones))[0] == pytest.approx(expected_brier)
    # bootstrap weights carry through: dropping the split episode 2 is dropping both halves
    w = np.array([[1.0, 1.0, 0.0, 1.0]])
    kept = np.array([0, 1, 3])
    assert oe_ratio(y, q, expand(w))[0] == pytest.approx(share[kept].sum() / predicted[kept].sum())
    assert np.isfinite(calibration_slope(y, q, expand(ones))[0])


def test_no_curve_when_the_draws_say_nothing_about_when() -> None:
    # 30 responders seen only at the horizon (PLT on the index date and on day 14): each
    # responded somewhere in (0, 14]; and 10 non-responders
    definition = get_definition("plt100_or_rise50_d14")
    responders = [f"R{i}" for i in range(30)]
    others = [f"N{i}" for i in range(10)]
    labs = [_plt(p, -1, 30.0) for p in responders + others]
    labs += [_plt(p, 14, 140.0) for p in responders] + [_plt(p, 14, 40.0) for p in others]
    cohort = _cohort_of(labs, responders + others)
    labels = derive_labels(cohort, definition)
    targets = survival_targets(cohort, labels, definition)
    assert timed_responders(targets, 14) == 0
    model, evidence = fit_time_to_response(
        ExperimentConfig(), cohort, labels, None, definition, [], pd.Index([]), None, {}
    )
    assert model is None
    assert evidence["n_timed_responders"] == 0
    assert "timing not estimable: 0 of 30 responders" in evidence["not_estimable"]
    # a draw on day 7 without response places each response in (7, 14]: timed
    labs += [_plt(p, 7, 40.0) for p in responders]
    cohort = _cohort_of(labs, responders + others)
    timed = survival_targets(cohort, derive_labels(cohort, definition), definition)
    assert timed_responders(timed, 14) == 30


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
