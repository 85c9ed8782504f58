"""XGBoost fitting inside one training fold: random search and early stopping on an inner split.

The caller hands over the training fold only; this module never sees the evaluation fold, so
tuning, early stopping and the fold calibrator cannot leak it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb
from scipy.stats import loguniform, randint, uniform
from sklearn.model_selection import ParameterSampler, StratifiedGroupKFold

from training.config import ModelConfig, SearchSpace
from training.validation import inner_split

log = logging.getLogger(__name__)

# observer(purpose, positions) is told which rows (positions in the full labelled data) each fit
# uses; tests use it to prove that no fit sees the evaluation fold.
Observer = Callable[[str, np.ndarray], None]

BASE_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_bin": 256,
}


@dataclass
class FoldFit:
    """What fitting one training fold produced."""

    booster: xgb.Booster
    params: dict[str, Any]
    n_rounds: int
    inner_valid: np.ndarray  # positions (within the fold) used for early stopping and calibration
    p_inner_valid: np.ndarray  # out-of-sample raw predictions at `inner_valid`, for the calibrator
    trials: list[dict[str, Any]] = field(default_factory=list)
    # fit_final only: the inner fold whose held-out split each position of `inner_valid` is in
    inner_fold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


def sample_candidates(space: SearchSpace, n_trials: int, seed: int) -> list[dict[str, Any]]:
    """Draw hyper-parameter sets; the first is always the centre of the space (a sane default)."""
    distributions = {
        "max_depth": randint(space.max_depth[0], space.max_depth[1] + 1),
        "learning_rate": loguniform(*space.learning_rate),
        "min_child_weight": loguniform(*space.min_child_weight),
        "subsample": uniform(space.subsample[0], space.subsample[1] - space.subsample[0]),
        "colsample_bytree": uniform(
            space.colsample_bytree[0], space.colsample_bytree[1] - space.colsample_bytree[0]
        ),
        "reg_lambda": loguniform(*space.reg_lambda),
    }
    centre = {
        "max_depth": int(round(np.mean(space.max_depth))),
        "learning_rate": float(np.sqrt(np.prod(space.learning_rate))),
        "min_child_weight": float(np.sqrt(np.prod(space.min_child_weight))),
        "subsample": float(np.mean(space.subsample)),
        "colsample_bytree": float(np.mean(space.colsample_bytree)),
        "reg_lambda": float(np.sqrt(np.prod(space.reg_lambda))),
    }
    drawn = list(ParameterSampler(distributions, n_iter=max(0, n_trials - 1), random_state=seed))
    return [centre] + [{k: _plain(v) for k, v in d.items()} for d in drawn]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _matrix(X: np.ndarray, y: np.ndarray | None, n_jobs: int) -> xgb.DMatrix:
    return xgb.DMatrix(X, label=y, nthread=n_jobs, missing=np.nan)


def monotone_vector(columns: list[str], constraints: dict[str, int]) -> str:
    """XGBoost's monotone_constraints string aligned with the columns."""
    return "(" + ",".join(str(int(constraints.get(c, 0))) for c in columns) + ")"


def fit_fold(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    config: ModelConfig,
    monotone: str | None,
    seed: int,
    positions: np.ndarray | None = None,
    observer: Observer | None = None,
) -> FoldFit:
    """Tune and early-stop on a patient-grouped inner split of this training fold.

    Returns the booster of the best trial, trained on inner-train and stopped on inner-valid, with
    its predictions on inner-valid (out of sample, for the fold calibrator).
    """
    positions = np.arange(len(y)) if positions is None else np.asarray(positions)
    train, valid = inner_split(y, groups, config.inner_valid_fraction, seed)
    if observer is not None:
        observer("xgb_fit", positions[train])
        observer("xgb_early_stopping", positions[valid])
    dtrain = _matrix(X[train], y[train], config.n_jobs)
    dvalid = _matrix(X[valid], y[valid], config.n_jobs)
    best: tuple[float, xgb.Booster, dict[str, Any]] | None = None
    trials = []
    for candidate in sample_candidates(config.search, config.n_trials, seed):
        params = {**BASE_PARAMS, **candidate, **config.params}
        params.update(seed=seed, nthread=config.n_jobs)
        if monotone:
            params["monotone_constraints"] = monotone
        history: dict[str, Any] = {}
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=config.max_rounds,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=config.early_stopping_rounds,
            evals_result=history,
            verbose_eval=False,
        )
        score = float(booster.best_score)
        trials.append({**candidate, "n_rounds": booster.best_iteration + 1, "valid_logloss": score})
        if best is None or score < best[0]:
            best = (score, booster, params)
    assert best is not None
    _, booster, params = best
    n_rounds = booster.best_iteration + 1
    booster = booster[:n_rounds]
    p_valid = booster.predict(dvalid)
    return FoldFit(booster, params, n_rounds, valid, p_valid, trials)


def fit_final(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    config: ModelConfig,
    monotone: str | None,
    seed: int,
    observer: Observer | None = None,
    n_inner_folds: int = 3,
) -> FoldFit:
    """Tune by patient-grouped inner cross-validation on all labelled episodes, then refit on all.

    Each candidate is scored by its mean inner-validation log loss at the round where that mean is
    best (xgboost.cv with our grouped folds); the refit uses those rounds unscaled, since more
    rounds on more rows made the final model overconfident on fresh cohorts.

    The chosen configuration (settings and rounds) is then trained on each inner training split
    and predicts its held-out split, so every episode gets one raw prediction from a model of the
    deployed configuration that never saw its patient: `inner_valid` (all positions),
    `p_inner_valid` and `inner_fold` carry them, for the deployed calibrator.
    """
    if observer is not None:
        observer("xgb_final", np.arange(len(y)))
    splitter = StratifiedGroupKFold(n_splits=n_inner_folds, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(y)), y, groups))
    dall = _matrix(X, y, config.n_jobs)
    best: tuple[float, int, dict[str, Any]] | None = None
    trials = []
    for candidate in sample_candidates(config.search, config.n_trials, seed):
        params = {**BASE_PARAMS, **candidate, **config.params}
        params.update(seed=seed, nthread=config.n_jobs)
        if monotone:
            params["monotone_constraints"] = monotone
        history = xgb.cv(
            params,
            dall,
            num_boost_round=config.max_rounds,
            folds=folds,
            early_stopping_rounds=config.early_stopping_rounds,
            seed=seed,
        )
        score = float(history["test-logloss-mean"].iloc[-1])
        n_rounds = len(history)
        trials.append({**candidate, "n_rounds": n_rounds, "valid_logloss": score})
        if best is None or score < best[0]:
            best = (score, n_rounds, params)
    assert best is not None
    _, n_rounds, params = best
    p_oof, inner_fold = _inner_oof(X, y, groups, folds, params, n_rounds, config.n_jobs, observer)
    booster = xgb.train(params, dall, num_boost_round=n_rounds)
    return FoldFit(
        booster, params, n_rounds, np.arange(len(y)), p_oof, trials, inner_fold=inner_fold
    )


def _inner_oof(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    params: dict[str, Any],
    n_rounds: int,
    n_jobs: int,
    observer: Observer | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold raw predictions of one configuration on patient-grouped folds."""
    p_oof = np.full(len(y), np.nan)
    inner_fold = np.full(len(y), -1, dtype=int)
    for k, (train, valid) in enumerate(folds):
        if set(groups[train]) & set(groups[valid]):
            raise ValueError(f"inner fold {k} of the final model shares patients with its training")
        if observer is not None:
            observer("xgb_final_oof", train)
        booster = xgb.train(params, _matrix(X[train], y[train], n_jobs), num_boost_round=n_rounds)
        p_oof[valid] = booster.predict(_matrix(X[valid], None, n_jobs))
        inner_fold[valid] = k
    if (inner_fold < 0).any():
        raise ValueError("the inner folds of the final model leave episodes without a prediction")
    return p_oof, inner_fold
