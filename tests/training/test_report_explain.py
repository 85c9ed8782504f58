"""Unit tests of the report's SHAP computations, with hand-computed values."""

import numpy as np
import pandas as pd
import pytest
import shap
import xgboost as xgb
from scipy.special import expit

from training.explain import (
    DirectionRule,
    feature_importance,
    group_importance,
    learned_direction,
    plausibility_table,
    probability_scale,
    rank_stability,
    select_cases,
    sigmoid_then,
    tree_shap,
)
from training.report_tripod import REPORT_COVERAGE, TRIPOD_AI_ITEMS

RULE = DirectionRule(tolerance=0.1, min_rows=5)


def test_learned_direction_reads_the_sign_of_the_dependence() -> None:
    x = np.arange(1.0, 21.0)
    assert learned_direction(x, 0.1 * x, RULE) == (1, pytest.approx(1.0), 20)
    assert learned_direction(x, -(x**2), RULE)[0:2] == (-1, pytest.approx(-1.0))


def test_learned_direction_ignores_missing_rows_and_flags_unusable_features() -> None:
    x = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.0, np.nan])
    s = np.array([-2.0, -1.0, 99.0, 0.0, 1.0, 2.0, -99.0])
    direction, rho, n = learned_direction(x, s, RULE)
    assert (direction, n) == (1, 5)
    assert rho == pytest.approx(1.0)
    # too few observed rows
    assert learned_direction(x[:3], s[:3], RULE)[0] is None
    # the model never uses the feature (all SHAP zero)
    assert learned_direction(np.arange(10.0), np.zeros(10), RULE)[0] is None
    # a constant feature
    assert learned_direction(np.ones(10), np.arange(10.0), RULE)[0] is None


def test_learned_direction_tolerance_band() -> None:
    # Spearman of x against a zig-zag: ranks (2,1,4,3,6,5,8,7,10,9) give rho = 1 - 6*10/990
    x = np.arange(10.0)
    s = np.array([2, 1, 4, 3, 6, 5, 8, 7, 10, 9], dtype=float)
    rho = 1 - 6 * 10 / (10 * 99)
    assert learned_direction(x, s, DirectionRule(tolerance=0.95, min_rows=5)) == (
        0,
        pytest.approx(rho),
        10,
    )
    assert learned_direction(x, s, DirectionRule(tolerance=0.9, min_rows=5))[0] == 1


def test_direction_rule_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        DirectionRule(tolerance=1.5)
    with pytest.raises(ValueError, match="min_rows"):
        DirectionRule(min_rows=1)


def _explanation(values: np.ndarray, data: np.ndarray, names: list[str]) -> shap.Explanation:
    return shap.Explanation(
        values=values, base_values=np.zeros(len(values)), data=data, feature_names=names
    )


def test_plausibility_table_flags_contradictions_and_opposing_constraints() -> None:
    x = np.tile(np.arange(10.0), (5, 1)).T
    x[:, 4] = 1.0
    values = np.column_stack([x[:, 0], -x[:, 1], x[:, 2], np.zeros(10), x[:, 0]])
    expl = _explanation(values, x, ["plt_last", "n_lines", "ecog", "marrow", "dose"])
    expected = {"plt_last": -1, "n_lines": -1, "ecog": None, "marrow": -1, "dose": 1}
    table = plausibility_table(expl, expected, {"n_lines": 1}, RULE).set_index("feature")
    # ecog has no expectation; flagged rows first, then by status
    assert list(table.index) == ["plt_last", "n_lines", "marrow", "dose"]
    assert table.loc["marrow", "status"] == "not used by the model"
    assert table.loc["dose", "status"] == "not assessable"  # constant value
    assert not table.loc[["marrow", "dose"], "flag"].any()
    assert table.loc["plt_last", "status"] == "contradicts"
    assert bool(table.loc["plt_last", "flag"])
    assert table.loc["n_lines", "status"] == "agrees"
    # the model agrees, but a constraint opposite to the registry is still flagged
    assert bool(table.loc["n_lines", "flag"])


def test_group_importance_sums_within_group_before_the_absolute_value() -> None:
    values = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -0.5]])
    expl = _explanation(values, np.zeros_like(values), ["a1", "a2", "b"])
    table = group_importance(expl, {"a1": "a", "a2": "a", "b": "b"}).set_index("group")
    # group a: row sums 0 and 2 -> mean |.| = 1; group b: 0.5
    assert table.loc["a", "mean_abs_shap"] == pytest.approx(1.0)
    assert table.loc["b", "mean_abs_shap"] == pytest.approx(0.5)
    assert table.loc["a", "n_features"] == 2


def test_feature_importance_ranks_by_mean_absolute_shap() -> None:
    values = np.array([[1.0, -3.0], [-1.0, 1.0]])
    table = feature_importance(_explanation(values, np.zeros_like(values), ["a", "b"]))
    assert table["feature"].tolist() == ["b", "a"]
    assert table["mean_abs_shap"].tolist() == pytest.approx([2.0, 1.0])
    assert table["share"].tolist() == pytest.approx([2 / 3, 1 / 3])


def test_probability_scale_steps_add_up_to_the_probability() -> None:
    row = shap.Explanation(
        values=np.array([-0.5, 1.0]),
        base_values=0.0,
        data=np.array([1.0, 2.0]),
        feature_names=["a", "b"],
    )
    converted = probability_scale(row, sigmoid_then(None))
    # largest |log-odds| first: b (+1) from 0 -> 1, then a (-0.5) from 1 -> 0.5
    assert converted.base_values == pytest.approx(0.5)
    assert converted.values[1] == pytest.approx(expit(1.0) - 0.5)
    assert converted.values[0] == pytest.approx(expit(0.5) - expit(1.0))
    assert converted.base_values + converted.values.sum() == pytest.approx(expit(0.5))


def test_probability_scale_applies_the_calibration_map() -> None:
    row = shap.Explanation(values=np.array([2.0]), base_values=-1.0, data=np.array([0.0]))
    halved = probability_scale(row, lambda m: expit(np.asarray(m) / 2))
    assert halved.base_values == pytest.approx(expit(-0.5))
    assert halved.values[0] == pytest.approx(expit(0.5) - expit(-0.5))


def test_tree_shap_adds_up_to_the_margin_and_keeps_missing_values() -> None:
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    X.loc[X.index[:40], "b"] = np.nan
    y = (X["a"] + X["b"].fillna(1.0) > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 0},
        xgb.DMatrix(X, label=y, nthread=1),
        num_boost_round=20,
    )
    expl, gap = tree_shap(booster, X[["b", "a"]])  # reordered to the booster's order
    assert expl.feature_names == ["a", "b"]
    assert gap < 1e-4
    assert np.isnan(expl.data[:40, 1]).all()
    assert np.ptp(expl.base_values) == 0  # one bias for every row
    margin = booster.predict(xgb.DMatrix(X, nthread=1), output_margin=True)
    assert expl.base_values + expl.values.sum(axis=1) == pytest.approx(margin, abs=1e-4)
    with pytest.raises(ValueError, match=r"lacks the booster's features \['b'\]"):
        tree_shap(booster, X[["a"]])


def test_rank_stability_counts_top_k_share() -> None:
    folds = pd.DataFrame(
        {
            "repeat": [0, 0, 0, 0, 1, 1, 1, 1],
            "fold": [0, 0, 1, 1, 0, 0, 1, 1],
            "feature": ["a", "b"] * 4,
            "mean_abs_shap": [2, 1, 2, 1, 1, 2, 2, 1],
            "rank": [1, 2, 1, 2, 2, 1, 1, 2],
        }
    )
    table = rank_stability(folds, ["a"]).set_index("feature")
    assert table.loc["a", "n_models"] == 4
    assert table.loc["a", "median_rank"] == 1.0
    assert table.loc["a", "worst_rank"] == 2.0
    assert table.loc["a", "top_k_share"] == pytest.approx(0.75)  # top-1 in 3 of 4 models
    with pytest.raises(ValueError, match="rank"):
        rank_stability(folds.drop(columns="rank"), ["a"])


def test_select_cases_picks_distinct_typical_episodes() -> None:
    p = pd.Series(np.linspace(0.0, 1.0, 101), index=[f"E{i}" for i in range(101)])
    cases = select_cases(p, threshold=0.42)
    assert cases == {"high": "E95", "low": "E5", "borderline": "E42"}
    two = select_cases(pd.Series([0.1, 0.9], index=["x", "y"]), threshold=0.5)
    assert len(set(two.values())) == 2
    with pytest.raises(ValueError, match="no predictions"):
        select_cases(pd.Series(dtype=float), 0.5)


def test_tripod_ai_has_27_items_and_52_subitems() -> None:
    assert len(TRIPOD_AI_ITEMS) == 52
    assert sorted({item.main_item for item in TRIPOD_AI_ITEMS}) == list(range(1, 28))
    assert len({item.item for item in TRIPOD_AI_ITEMS}) == 52
    assert {i.item for i in TRIPOD_AI_ITEMS if i.applies == "E"} == {"12f", "12g", "20c", "24"}
    assert set(REPORT_COVERAGE) <= {item.item for item in TRIPOD_AI_ITEMS}
