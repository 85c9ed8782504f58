"""Metrics against scikit-learn on fixed inputs and against hand-computed values."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
)

from training import metrics as m

Y = np.array([1, 0, 1, 0])
P = np.array([0.8, 0.3, 0.6, 0.1])


@pytest.fixture
def tied() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.round(np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1), 1)  # many ties
    w = rng.integers(0, 4, 400).astype(float)
    return y, p, w


def test_auroc_and_auprc_match_sklearn_with_ties_and_weights(tied) -> None:
    y, p, w = tied
    assert m.auroc(y, p)[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m.auprc(y, p)[0] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m.auroc(y, p, w)[0] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert m.auprc(y, p, w)[0] == pytest.approx(
        average_precision_score(y, p, sample_weight=w), abs=1e-12
    )
    assert m.brier(y, p, w)[0] == pytest.approx(brier_score_loss(y, p, sample_weight=w))


def test_vectorised_rows_equal_one_at_a_time(tied) -> None:
    y, p, _ = tied
    weights = m.bootstrap_weights(np.arange(len(y)), 5, seed=1)
    for fn in (m.auroc, m.auprc, m.brier, m.calibration_slope, m.ece):
        batch = fn(y, p, weights)
        single = [fn(y, p, weights[i : i + 1])[0] for i in range(5)]
        np.testing.assert_allclose(batch, single, rtol=1e-9)


def test_brier_scaled_brier_oe_and_ece_by_hand() -> None:
    # squared errors 0.04, 0.09, 0.16, 0.01 -> 0.30 / 4
    assert m.brier(Y, P)[0] == pytest.approx(0.075)
    # prevalence 0.5: reference Brier 0.25
    assert m.scaled_brier(Y, P)[0] == pytest.approx(1 - 0.075 / 0.25)
    assert m.oe_ratio(Y, P)[0] == pytest.approx(2 / 1.8)
    # one episode per bin: (0.2 + 0.3 + 0.4 + 0.1) / 4
    assert m.ece(Y, P, n_bins=10)[0] == pytest.approx(0.25)


def test_calibration_slope_and_intercept_by_hand() -> None:
    # Two predicted values, logit +-ln 4; observed 2/4 at p=0.2 and 3/4 at p=0.8.
    # Saturated recalibration: a - b ln4 = logit(0.5) = 0 and a + b ln4 = logit(0.75) = ln 3.
    p = np.array([0.2] * 4 + [0.8] * 4)
    y = np.array([1, 1, 0, 0, 1, 1, 1, 0])
    assert m.calibration_slope(y, p)[0] == pytest.approx(math.log(3) / (2 * math.log(4)), 1e-8)
    # Offset model: 4u/(u+4) + 16u/(4u+1) = 5 with u = e^a  ->  3u^2 - 4.25u - 5 = 0.
    u = (4.25 + math.sqrt(4.25**2 + 60)) / 6
    assert m.calibration_intercept(y, p)[0] == pytest.approx(math.log(u), 1e-8)


def test_a_calibrated_model_has_slope_one_and_intercept_zero() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 200_000)
    y = (rng.random(len(p)) < p).astype(int)
    assert m.calibration_slope(y, p)[0] == pytest.approx(1.0, abs=0.03)
    assert m.calibration_intercept(y, p)[0] == pytest.approx(0.0, abs=0.02)
    # Overconfident predictions (logit doubled) give a slope of about one half.
    over = 1 / (1 + np.exp(-2 * np.log(p / (1 - p))))
    assert m.calibration_slope(y, over)[0] == pytest.approx(0.5, abs=0.02)


def test_threshold_metrics_match_confusion_matrix(tied) -> None:
    y, p, _ = tied
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.5).ravel()
    got = m.threshold_metrics(y, p, None, 0.5)
    assert got["sensitivity"][0] == pytest.approx(tp / (tp + fn))
    assert got["specificity"][0] == pytest.approx(tn / (tn + fp))
    assert got["ppv"][0] == pytest.approx(tp / (tp + fp))
    assert got["npv"][0] == pytest.approx(tn / (tn + fn))


def test_net_benefit_by_hand() -> None:
    nb = m.net_benefit(Y, P, np.array([0.5, 0.25]))
    # t=0.5: TP 2, FP 0 -> 2/4; t=0.25: TP 2, FP 1 -> 2/4 - 1/4 * (0.25 / 0.75)
    np.testing.assert_allclose(nb, [0.5, 0.5 - 0.25 / 3])
    np.testing.assert_allclose(m.net_benefit_treat_all(Y, np.array([0.5])), [0.0])


def test_bootstrap_weights_move_a_patients_episodes_together() -> None:
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    w = m.bootstrap_weights(groups, 200, seed=4)
    assert w.shape == (200, 6)
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    np.testing.assert_array_equal(w[:, 3], w[:, 5])
    # Three patients drawn per resample: the patient counts sum to 3.
    np.testing.assert_array_equal(w[:, 0] + w[:, 2] + w[:, 3], 3)
    assert len({tuple(row) for row in w}) > 1


def test_evaluate_averages_repeats_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(0.4 * y + 0.6 * rng.random(300), 0.01, 0.99)
    p2 = np.clip(0.2 * y + 0.8 * rng.random(300), 0.01, 0.99)
    weights = m.bootstrap_weights(np.arange(300) // 2, 300, seed=2)
    out = m.evaluate(y, np.vstack([p1, p2]), weights, m.MetricSettings(), names=["auroc", "brier"])
    expected = (roc_auc_score(y, p1) + roc_auc_score(y, p2)) / 2
    assert out["auroc"]["estimate"] == pytest.approx(expected)
    for metric in out.values():
        assert metric["low"] < metric["estimate"] < metric["high"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        m.auroc(np.array([1, 0]), np.array([0.5]))
    with pytest.raises(ValueError, match="NaN"):
        m.brier(np.array([1, 0]), np.array([0.5, np.nan]))


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 20), st.integers(0, 3)), min_size=4, max_size=60
    )
)
def test_weighted_metrics_match_sklearn_on_random_inputs(data) -> None:
    y = np.array([d[0] for d in data])
    p = np.array([d[1] for d in data]) / 20  # coarse grid: many ties, 0 and 1 included
    w = np.array([d[2] for d in data], dtype=float)
    assume(w.sum() > 0 and 0 < (w * y).sum() < w.sum())
    assert m.auroc(y, p, w)[0] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-9)
    assert m.auprc(y, p, w)[0] == pytest.approx(
        average_precision_score(y, p, sample_weight=w), abs=1e-9
    )
    assert m.brier(y, p, w)[0] == pytest.approx(brier_score_loss(y, p, sample_weight=w))
