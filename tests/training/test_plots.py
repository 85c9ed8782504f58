"""The report's SHAP figures are reproducible: the same explanation draws the same image."""

from __future__ import annotations

import numpy as np
import shap

from training.plots import beeswarm_figure, dependence_figure


def _explanation() -> shap.Explanation:
    rng = np.random.default_rng(1)
    return shap.Explanation(
        values=rng.normal(size=(200, 4)),
        base_values=np.zeros(200),
        data=rng.normal(size=(200, 4)),
        feature_names=["a", "b", "c", "d"],
    )


def test_shap_figures_are_the_same_twice_and_leave_numpy_state_alone() -> None:
    explanation = _explanation()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    assert dependence_figure(explanation, "a") == dependence_figure(explanation, "a")
    assert beeswarm_figure(explanation, 4) == beeswarm_figure(explanation, 4)
    assert np.array_equal(np.random.get_state()[1], before)
