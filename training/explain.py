"""SHAP computations for the reviewer report, from the booster's own exact TreeSHAP.

Contributions come from `Booster.predict(..., pred_contribs=True)` on the raw model features with
NaN kept as missing (XGBoost routes missing values down its learned default branches, so imputing
before explaining would explain a different model). Base values are the bias column, never
`shap.TreeExplainer.expected_value` (which is off by the base-score offset until first used).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shap
import xgboost as xgb
from scipy import stats
from scipy.special import expit

ProbabilityMap = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DirectionRule:
    """How the learned direction of a feature is read from its SHAP dependence.

    Attributes:
        tolerance: |Spearman rho| below this counts as no clear direction (about 0).
        min_rows: fewest non-missing rows (with at least two distinct values) to assess a feature.
    """

    tolerance: float = 0.1
    min_rows: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"DirectionRule.tolerance must be in [0, 1), got {self.tolerance}")
        if self.min_rows < 3:
            raise ValueError(f"DirectionRule.min_rows must be at least 3, got {self.min_rows}")


def tree_shap(booster: xgb.Booster, X: pd.DataFrame) -> tuple[shap.Explanation, float]:
    """Explain the booster's margin on X with exact TreeSHAP.

    Returns:
        The log-odds `shap.Explanation` (base values from the bias column, data = X with NaN kept)
        and the largest absolute gap between contributions + bias and the booster's margin.
    """
    if X.empty:
        raise ValueError("tree_shap: X has no rows to explain")
    names = booster.feature_names
    if names is not None:
        missing = [name for name in names if name not in X.columns]
        if missing:
            raise ValueError(f"tree_shap: X lacks the booster's features {missing}")
        X = X[list(names)]
    non_numeric = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if non_numeric:
        raise ValueError(f"tree_shap: model features must be numeric, not {non_numeric}")
    values = X.to_numpy(dtype=np.float64)
    dmatrix = xgb.DMatrix(values, feature_names=list(X.columns), missing=np.nan, nthread=1)
    contribs = booster.predict(dmatrix, pred_contribs=True)
    margin = booster.predict(dmatrix, output_margin=True)
    gap = float(np.max(np.abs(contribs.sum(axis=1) - margin)))
    explanation = shap.Explanation(
        values=contribs[:, :-1].astype(np.float64),
        base_values=contribs[:, -1].astype(np.float64),
        data=values,
        feature_names=list(X.columns),
    )
    return explanation, gap


def feature_importance(explanation: shap.Explanation) -> pd.DataFrame:
    """Mean |SHAP| per feature (log-odds), largest first, with its share of the total."""
    mean_abs = np.abs(explanation.values).mean(axis=0)
    table = pd.DataFrame({"feature": explanation.feature_names, "mean_abs_shap": mean_abs})
    total = float(mean_abs.sum())
    table["share"] = table["mean_abs_shap"] / total if total > 0 else 0.0
    table = table.sort_values("mean_abs_shap", ascending=False, kind="stable")
    table["rank"] = np.arange(1, len(table) + 1)
    return table.reset_index(drop=True)


def group_importance(explanation: shap.Explanation, group_of: Mapping[str, str]) -> pd.DataFrame:
    """Mean |SHAP| per clinical group.

    SHAP values are additive, so a group's contribution to one prediction is the sum of its
    features' contributions; the importance is the mean absolute value of that sum.
    """
    frame = pd.DataFrame(explanation.values, columns=explanation.feature_names)
    groups = [group_of.get(name, "other") for name in frame.columns]
    per_group = frame.T.groupby(groups).sum().T
    mean_abs = per_group.abs().mean(axis=0)
    n_features = pd.Series(groups).value_counts()
    table = pd.DataFrame(
        {
            "group": mean_abs.index,
            "mean_abs_shap": mean_abs.to_numpy(),
            "n_features": [int(n_features[g]) for g in mean_abs.index],
        }
    )
    return table.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)


def learned_direction(
    feature_values: np.ndarray, shap_values: np.ndarray, rule: DirectionRule
) -> tuple[int | None, float, int]:
    """Direction the model learned for one feature: sign of Spearman(value, SHAP) where observed.

    Returns:
        (direction, rho, n): direction +1, -1, 0 (|rho| within the tolerance band) or None when the
        feature cannot be assessed (too few non-missing rows, a constant value, or SHAP all zero,
        i.e. the model never uses it); rho is NaN when not assessable.
    """
    x = np.asarray(feature_values, dtype=np.float64)
    s = np.asarray(shap_values, dtype=np.float64)
    observed = ~np.isnan(x)
    n = int(observed.sum())
    x, s = x[observed], s[observed]
    if n < rule.min_rows or np.unique(x).size < 2 or np.allclose(s, 0.0):
        return None, math.nan, n
    if np.unique(s).size < 2:
        return 0, 0.0, n
    rho = float(stats.spearmanr(x, s).statistic)
    if math.isnan(rho):
        return None, math.nan, n
    if abs(rho) < rule.tolerance:
        return 0, rho, n
    return (1 if rho > 0 else -1), rho, n


def plausibility_table(
    explanation: shap.Explanation,
    expected: Mapping[str, int | None],
    monotone: Mapping[str, int],
    rule: DirectionRule,
) -> pd.DataFrame:
    """Compare, for every feature with an expected direction, the direction the model learned.

    Args:
        explanation: log-odds explanation of the model features.
        expected: feature -> +1 / -1 / None (expected effect on the probability of response).
        monotone: monotone constraints imposed in training (feature -> +1 / -1).
        rule: tolerance band and minimum rows.

    Returns:
        One row per feature with an expected direction: `feature`, `expected`, `constraint`,
        `learned`, `rho`, `n_observed`, `status` (`agrees`, `contradicts`, `no clear direction`,
        `not used by the model`, `not assessable` (constant or too few observed values)) and
        `flag` (True where the reviewer must look).
    """
    rows = []
    names = list(explanation.feature_names)
    for j, name in enumerate(names):
        want = expected.get(name)
        if want is None:
            continue
        got, rho, n = learned_direction(explanation.data[:, j], explanation.values[:, j], rule)
        if got is None and np.allclose(explanation.values[:, j], 0.0):
            status = "not used by the model"
        elif got is None:
            status = "not assessable"
        elif got == 0:
            status = "no clear direction"
        elif got == want:
            status = "agrees"
        else:
            status = "contradicts"
        constraint = monotone.get(name)
        flag = status == "contradicts" or (constraint is not None and constraint != want)
        rows.append(
            {
                "feature": name,
                "expected": int(want),
                "constraint": None if constraint is None else int(constraint),
                "learned": got,
                "rho": rho,
                "n_observed": n,
                "status": status,
                "flag": bool(flag),
            }
        )
    columns = [
        "feature",
        "expected",
        "constraint",
        "learned",
        "rho",
        "n_observed",
        "status",
        "flag",
    ]
    table = pd.DataFrame(rows, columns=columns)
    order = {
        "contradicts": 0,
        "no clear direction": 1,
        "not used by the model": 2,
        "not assessable": 3,
        "agrees": 4,
    }
    return table.sort_values(
        ["flag", "status", "feature"],
        key=lambda col: col.map(order) if col.name == "status" else col,
        ascending=[False, True, True],
        kind="stable",
    ).reset_index(drop=True)


def rank_stability(fold_importance: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Rank of each named feature across the cross-validation fold models.

    Args:
        fold_importance: `repeat`, `fold`, `feature`, `mean_abs_shap`, `rank` (1 = most important).
        features: the features to report, in display order (e.g. the final model's top features).

    Returns:
        `feature`, `n_models`, `median_rank`, `best_rank`, `worst_rank`, `top_k_share` (share of
        fold models ranking it within the top len(features)).
    """
    required = {"repeat", "fold", "feature", "rank"}
    missing = required - set(fold_importance.columns)
    if missing:
        raise ValueError(f"fold_importance lacks columns {sorted(missing)}")
    n_models = int(fold_importance[["repeat", "fold"]].drop_duplicates().shape[0])
    k = len(features)
    rows = []
    for name in features:
        ranks = fold_importance.loc[fold_importance["feature"] == name, "rank"].astype(float)
        rows.append(
            {
                "feature": name,
                "n_models": int(ranks.size),
                "median_rank": float(ranks.median()) if ranks.size else math.nan,
                "best_rank": float(ranks.min()) if ranks.size else math.nan,
                "worst_rank": float(ranks.max()) if ranks.size else math.nan,
                "top_k_share": float((ranks <= k).sum() / n_models) if n_models else math.nan,
            }
        )
    return pd.DataFrame(rows)


def select_cases(probability: pd.Series, threshold: float) -> dict[str, str]:
    """Pick example episodes: high (95th centile), low (5th centile), borderline (near threshold).

    Centiles rather than extremes so the examples are typical of their band, not outliers.
    Returns kind -> episode id (distinct episodes; fewer kinds when there are fewer episodes).
    """
    if probability.empty:
        raise ValueError("select_cases: no predictions to choose from")
    p = probability.astype(float)
    targets = {
        "high": float(p.quantile(0.95)),
        "low": float(p.quantile(0.05)),
        "borderline": float(threshold),
    }
    chosen: dict[str, str] = {}
    for kind, target in targets.items():
        candidates = p.drop(index=list(chosen.values()), errors="ignore")
        if candidates.empty:
            break
        chosen[kind] = str((candidates - target).abs().idxmin())
    return chosen


def probability_scale(
    explanation_row: shap.Explanation, to_probability: ProbabilityMap
) -> shap.Explanation:
    """Re-express one row's log-odds contributions on the probability scale.

    Features are added to the base value one at a time, largest |log-odds| first, and each gets
    the change in probability its step causes; the steps add up exactly to the predicted
    probability minus the base probability. Unlike log-odds SHAP values these depend on the order,
    so the report labels them as a probability-scale view.
    """
    values = np.asarray(explanation_row.values, dtype=np.float64)
    base = float(np.asarray(explanation_row.base_values).reshape(-1)[0])
    order = np.argsort(-np.abs(values), kind="stable")
    cumulative = base + np.concatenate([[0.0], np.cumsum(values[order])])
    probs = np.asarray(to_probability(cumulative), dtype=np.float64)
    steps = np.diff(probs)
    prob_values = np.empty_like(values)
    prob_values[order] = steps
    return shap.Explanation(
        values=prob_values,
        base_values=float(probs[0]),
        data=explanation_row.data,
        feature_names=explanation_row.feature_names,
    )


def sigmoid_then(calibrate: Callable[[np.ndarray], np.ndarray] | None) -> ProbabilityMap:
    """Map margins to (calibrated) probabilities: expit, then the calibrator when given."""

    def to_probability(margin: np.ndarray) -> np.ndarray:
        raw = expit(np.asarray(margin, dtype=np.float64))
        return raw if calibrate is None else np.asarray(calibrate(raw), dtype=np.float64)

    return to_probability
