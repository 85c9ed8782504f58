"""The one procedure that builds the deployed model; every outer fold runs it unchanged.

`fit_procedure` is handed the training part only (an outer fold's training rows, or every
labelled episode for the deployed model) and does, on that part alone:

1. tuning: random search over the search space, each candidate scored by patient-grouped inner
   k-fold cross-validation (xgboost.cv on our folds) with early stopping on the mean
   inner-validation log loss, which also fixes the number of rounds;
2. inner out-of-fold predictions: the chosen settings and rounds are trained on each inner
   training split and predict its held-out split, so every episode of the part gets one raw
   prediction from a model that never saw its patient;
3. the calibrator is fitted on those inner out-of-fold predictions;
4. the booster is refitted on the whole part with the chosen settings and rounds.

Because the outer folds call exactly this function, the out-of-fold figures estimate the
procedure that produced the deployed model, not a cousin of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.model_selection import StratifiedGroupKFold

from serving.bundle.calibrator import Calibrator
from training.config import ModelConfig
from training.metrics import calibration_intercept, calibration_slope
from training.tuning import BASE_PARAMS, Observer, matrix, sample_candidates

log = logging.getLogger(__name__)


class ProcedureError(ValueError):
    """The training part is too small or too one-sided for the procedure's inner folds."""


@dataclass(frozen=True)
class ProcedureSettings:
    """What the procedure needs besides the data: model settings, calibration, constraints."""

    model: ModelConfig
    calibration_method: str = "platt"
    monotone: str | None = None  # xgboost's monotone_constraints string, aligned with columns


@dataclass
class ProcedureFit:
    """What one run of the procedure produced on its training part."""

    booster: xgb.Booster
    calibrator: Calibrator
    params: dict[str, Any]
    n_rounds: int
    trials: list[dict[str, Any]]
    p_inner_raw: np.ndarray  # inner out-of-fold raw predictions, one per row of the part
    inner_fold: np.ndarray  # the inner fold whose held-out split each row is in
    calibration: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: np.ndarray, n_jobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Raw and calibrated probabilities for rows outside the training part."""
        p_raw = self.booster.predict(matrix(X, None, n_jobs)).astype(float)
        return p_raw, np.asarray(self.calibrator.transform(p_raw), dtype=float)


def inner_folds(
    y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped stratified inner folds of one training part."""
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    for value, word in ((1, "responders"), (0, "non-responders")):
        n_patients = len(np.unique(groups[y == value]))
        if n_patients < n_folds:
            raise ProcedureError(
                f"the training part has {n_patients} patients with {word}; the procedure's "
                f"inner {n_folds}-fold tuning needs at least {n_folds}"
            )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(y)), y, groups))
    for k, (train, valid) in enumerate(folds):
        if set(groups[train]) & set(groups[valid]):
            raise ProcedureError(f"inner fold {k} shares patients with its training split")
    return folds


def fit_procedure(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    settings: ProcedureSettings,
    seed: int,
    positions: np.ndarray | None = None,
    observer: Observer | None = None,
) -> ProcedureFit:
    """Build the deployed model from one training part (see the module docstring).

    `positions` maps the part's rows to positions in the full labelled data; the observer is
    told, in those positions, the rows each step uses (tests prove no step sees an outer
    evaluation fold).
    """
    config = settings.model
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    positions = np.arange(len(y)) if positions is None else np.asarray(positions)
    folds = inner_folds(y, groups, config.inner_folds, seed)
    if observer is not None:
        for train, valid in folds:
            observer("tuning", positions[train])
            observer("early_stopping", positions[valid])
    dall = matrix(X, y, config.n_jobs)
    best: tuple[float, int, dict[str, Any]] | None = None
    trials = []
    for candidate in sample_candidates(config.search, config.n_trials, seed):
        params = {**BASE_PARAMS, **candidate, **config.params}
        params.update(seed=seed, nthread=config.n_jobs)
        if settings.monotone:
            params["monotone_constraints"] = settings.monotone
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

    p_inner, inner_fold = inner_oof_predictions(
        X, y, folds, params, n_rounds, config.n_jobs, positions, observer
    )

    if observer is not None:
        observer("calibrator", positions)
    calibrator = Calibrator(method=settings.calibration_method).fit(p_inner, y)
    if observer is not None:
        observer("refit", positions)
    booster = xgb.train(params, dall, num_boost_round=n_rounds)
    log.debug("procedure: %d rows, %d rounds, depth %s", len(y), n_rounds, params["max_depth"])
    return ProcedureFit(
        booster=booster,
        calibrator=calibrator,
        params=params,
        n_rounds=n_rounds,
        trials=trials,
        p_inner_raw=p_inner,
        inner_fold=inner_fold,
        calibration=calibration_evidence(p_inner, calibrator, y, settings.calibration_method),
    )


def inner_oof_predictions(
    X: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    params: dict[str, Any],
    n_rounds: int,
    n_jobs: int,
    positions: np.ndarray | None = None,
    observer: Observer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inner out-of-fold raw predictions of one configuration, and each row's inner fold."""
    positions = np.arange(len(y)) if positions is None else positions
    p_inner = np.full(len(y), np.nan)
    inner_fold = np.full(len(y), -1, dtype=int)
    for k, (train, valid) in enumerate(folds):
        if observer is not None:
            observer("inner_oof_fit", positions[train])
        booster = xgb.train(params, matrix(X[train], y[train], n_jobs), n_rounds)
        p_inner[valid] = booster.predict(matrix(X[valid], None, n_jobs))
        inner_fold[valid] = k
    if (inner_fold < 0).any():
        raise ProcedureError("the inner folds leave episodes without a prediction")
    return p_inner, inner_fold


def describe(settings: ProcedureSettings) -> str:
    """One sentence for the report's Methods and the model metadata."""
    m = settings.model
    calibration = (
        "no calibrator"
        if settings.calibration_method == "none"
        else f"a {settings.calibration_method} calibrator fitted on the chosen settings' inner "
        "out-of-fold predictions"
    )
    return (
        "One procedure builds the deployed model and runs unchanged in every outer fold: "
        f"random search over {m.n_trials} XGBoost settings, each scored by patient-grouped inner "
        f"{m.inner_folds}-fold cross-validation with early stopping on the inner validation "
        f"folds (patience {m.early_stopping_rounds} rounds, at most {m.max_rounds}); a refit on "
        f"the whole training part with the chosen settings and rounds; and {calibration}. The "
        "out-of-fold figures therefore estimate the procedure that built the deployed model."
    )


def calibration_evidence(
    p_raw: np.ndarray, calibrator: Calibrator, y: np.ndarray, method: str
) -> dict[str, Any]:
    """Calibration of the inner out-of-fold predictions before and after the calibrator (after:
    in sample, as the calibrator is fitted on these predictions)."""
    p_cal = np.asarray(calibrator.transform(p_raw), dtype=float)

    def summary(p: np.ndarray) -> dict[str, float]:
        return {
            "calibration_slope": float(calibration_slope(y, p)[0]),
            "calibration_intercept": float(calibration_intercept(y, p)[0]),
        }

    return {
        "method": method,
        "n_episodes": int(len(y)),
        "raw": summary(np.asarray(p_raw, dtype=float)),
        "calibrated": summary(p_cal),
    }
