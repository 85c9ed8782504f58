"""Out-of-fold predictions of the deployed procedure and the comparators on the same folds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from training import comparators, procedure
from training.procedure import ProcedureSettings
from training.tuning import Observer
from training.validation import Fold, assert_disjoint_patients

log = logging.getLogger(__name__)

FoldCallback = Callable[[int, int], None]


@dataclass
class CVOutput:
    oof: pd.DataFrame
    fold_boosters: list[xgb.Booster]
    fold_importance: pd.DataFrame
    tuning: list[dict[str, Any]] = field(default_factory=list)


def mean_abs_contributions(booster: xgb.Booster, X: np.ndarray, n_jobs: int = 1) -> np.ndarray:
    """Mean |SHAP| per feature (exact TreeSHAP from the booster), bias column dropped."""
    contribs = booster.predict(xgb.DMatrix(X, nthread=n_jobs, missing=np.nan), pred_contribs=True)
    return np.abs(contribs[:, :-1]).mean(axis=0)


def fold_seed(seed: int, fold: Fold) -> int:
    """The procedure's seed in one outer fold (the deployed model uses `seed` itself)."""
    return seed + 1000 * fold.repeat + fold.fold + 1


def cross_validate(
    X: pd.DataFrame,
    y: pd.Series,
    groups: pd.Series,
    folds: list[Fold],
    settings: ProcedureSettings,
    seed: int,
    observer: Observer | None = None,
    on_fold: FoldCallback | None = None,
) -> CVOutput:
    """Run the deployed procedure on each training fold and predict its evaluation fold.

    Each fold hands `procedure.fit_procedure` its training rows only, so tuning, early stopping
    and the calibrator never see the evaluation fold; `p_xgb` is the procedure's calibrated
    probability, `p_xgb_raw` the booster's. The comparators are fitted on the same rows.
    """
    columns = list(X.columns)
    values = X.to_numpy(dtype=np.float32)
    y_arr = y.to_numpy().astype(int)
    g_arr = groups.astype(str).to_numpy()
    n_jobs = settings.model.n_jobs
    rows, boosters, importance, tuning = [], [], [], []
    for i, fold in enumerate(folds):
        train, test = fold.train, fold.test
        assert_disjoint_patients(g_arr, train, test)
        fit = procedure.fit_procedure(
            values[train],
            y_arr[train],
            g_arr[train],
            settings,
            fold_seed(seed, fold),
            positions=train,
            observer=observer,
        )
        p_raw, p_cal = fit.predict(values[test], n_jobs)
        predictions = {}
        for name in ("logreg", "plt_baseline"):
            if observer is not None:
                observer(name, train)
            predictions[name] = comparators.fit_predict(
                name, X.iloc[train], y_arr[train], X.iloc[test]
            )
        rows.append(
            pd.DataFrame(
                {
                    "episode_id": X.index[test].to_numpy(),
                    "patient_id": g_arr[test],
                    "y": y_arr[test],
                    "repeat": fold.repeat,
                    "fold": fold.fold,
                    "p_xgb_raw": p_raw,
                    "p_xgb": p_cal,
                    "p_logreg": predictions["logreg"],
                    "p_plt": predictions["plt_baseline"],
                }
            )
        )
        if fold.repeat == 0:
            boosters.append(fit.booster)
        mean_abs = mean_abs_contributions(fit.booster, values[test], n_jobs)
        ranks = pd.Series(mean_abs).rank(ascending=False, method="min").astype(int).to_numpy()
        importance.append(
            pd.DataFrame(
                {
                    "repeat": fold.repeat,
                    "fold": fold.fold,
                    "feature": columns,
                    "mean_abs_shap": mean_abs,
                    "rank": ranks,
                }
            )
        )
        best = min(fit.trials, key=lambda t: t["valid_logloss"])
        tuning.append(
            {
                "repeat": fold.repeat,
                "fold": fold.fold,
                "name": fold.name,
                **best,
                "n_rounds": fit.n_rounds,
                "inner_oof_raw_slope": fit.calibration["raw"]["calibration_slope"],
            }
        )
        log.info(
            "fold %s: %d train, %d test, %d rounds", fold.name, len(train), len(test), fit.n_rounds
        )
        if on_fold is not None:
            on_fold(i + 1, len(folds))
    oof = pd.concat(rows, ignore_index=True)
    return CVOutput(oof, boosters, pd.concat(importance, ignore_index=True), tuning)


def prediction_matrix(oof: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(R, n) predictions, y (n,) and episode ids for episodes predicted in every repeat."""
    wide = oof.pivot_table(index="episode_id", columns="repeat", values=column, aggfunc="mean")
    wide = wide.dropna()
    y = oof.drop_duplicates("episode_id").set_index("episode_id").loc[wide.index, "y"]
    return wide.to_numpy().T, y.to_numpy().astype(float), list(wide.index)
