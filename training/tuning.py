"""The XGBoost search: candidate settings drawn from the search space, and shared helpers.

`training.procedure.fit_procedure` scores the candidates on inner folds of the training part it
is given; nothing here sees an evaluation fold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost as xgb
from scipy.stats import loguniform, randint, uniform
from sklearn.model_selection import ParameterSampler

from training.config import SearchSpace

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


def matrix(X: np.ndarray, y: np.ndarray | None, n_jobs: int) -> xgb.DMatrix:
    """A DMatrix with NaN as missing (XGBoost handles missing values natively)."""
    return xgb.DMatrix(X, label=y, nthread=n_jobs, missing=np.nan)


def monotone_vector(columns: list[str], constraints: dict[str, int]) -> str:
    """XGBoost's monotone_constraints string aligned with the columns."""
    return "(" + ",".join(str(int(constraints.get(c, 0))) for c in columns) + ")"
