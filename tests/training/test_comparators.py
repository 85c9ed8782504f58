"""Comparators stored as plain numbers in the model artifact predict as the fitted pipelines do."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import comparators
from training.metrics import auroc, paired_difference


def _frame(seed: int, n: int = 80) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "plt_last": rng.uniform(5, 90, n),
            "hgb_last": rng.normal(100, 15, n),
            "empty": np.nan,
            "constant": 1.0,
        }
    )
    X.loc[rng.random(n) < 0.2, "plt_last"] = np.nan
    X.loc[rng.random(n) < 0.2, "hgb_last"] = np.nan
    y = (rng.random(n) < 1 / (1 + np.exp(-0.05 * (X["plt_last"].fillna(40) - 40)))).astype(int)
    return X, y.to_numpy()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_stored_comparators_predict_as_the_pipelines(seed: int) -> None:
    X, y = _frame(seed)
    if len(set(y)) < 2:
        return
    fitted = comparators.fit_all(X, y)
    test, _ = _frame(seed + 1, n=30)
    for pipeline in fitted.values():
        spec = comparators.to_dict(pipeline, list(X.columns))
        np.testing.assert_allclose(
            comparators.predict_from_dict(spec, test),
            pipeline.predict_proba(test)[:, 1],
            rtol=1e-9,
            atol=1e-12,
        )
    assert comparators.to_dict(fitted["plt_baseline"], list(X.columns))["features"] == ["plt_last"]


def test_missing_feature_is_named() -> None:
    X, y = _frame(1)
    spec = comparators.to_dict(comparators.fit_all(X, y)["logreg"], list(X.columns))
    with pytest.raises(comparators.ComparatorError, match="hgb_last"):
        comparators.predict_from_dict(spec, X.drop(columns=["hgb_last"]))


def test_paired_difference_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    a = np.array([0.1, 0.2, 0.8, 0.9])  # AUROC 1
    b = np.array([0.1, 0.8, 0.2, 0.9])  # positives beat negatives in 3 of 4 pairs: 0.75
    out = paired_difference(auroc, y, a, b, np.ones((3, 4)))
    assert out == {"estimate": 0.25, "low": 0.25, "high": 0.25}
    # Weights [1, 2, 2, 1] (episodes 2 and 3 drawn twice): for b, positive 0.2 (weight 2) beats
    # negative 0.1 (weight 1) and loses to 0.8 (weight 2); positive 0.9 (weight 1) beats both:
    # (2*1 + 1*1 + 1*2) / (3*3) = 5/9, while a still separates perfectly.
    out = paired_difference(auroc, y, a, b, np.array([[1.0, 2.0, 2.0, 1.0]]))
    assert out["low"] == pytest.approx(1 - 5 / 9)
