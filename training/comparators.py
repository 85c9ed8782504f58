"""Comparator models fitted on the same folds as XGBoost: unfitted-estimator factories."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

PLT_FEATURE = "plt_last"


class ComparatorError(ValueError):
    """A comparator cannot be built from these features."""


def make_logreg() -> Pipeline:
    """Logistic regression on all model features: median imputation, scaling, L2 (C=1)."""
    return make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=1.0, max_iter=2000),
    )


def make_plt_baseline(columns: list[str]) -> Pipeline:
    """Logistic regression on the baseline platelet count alone (`plt_last`)."""
    if PLT_FEATURE not in columns:
        raise ComparatorError(
            f"the baseline-PLT comparator needs the feature {PLT_FEATURE!r}; "
            "keep the platelet features in the experiment's feature families"
        )
    select = ColumnTransformer([("plt", "passthrough", [PLT_FEATURE])], remainder="drop")
    return Pipeline(
        [
            ("select", select),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(C=1.0, max_iter=2000)),
        ]
    )


COMPARATORS = {"logreg": make_logreg, "plt_baseline": make_plt_baseline}


def fit_predict(name: str, X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame):
    """Fit a fresh comparator on the training fold and return P(response) on the test fold."""
    if name == "logreg":
        model = make_logreg()
    elif name == "plt_baseline":
        model = make_plt_baseline(list(X_train.columns))
    else:
        raise ComparatorError(f"unknown comparator {name!r}")
    model.fit(X_train, y_train)
    return model.predict_proba(X_test)[:, 1]


def fit_all(X: pd.DataFrame, y: np.ndarray) -> dict[str, Pipeline]:
    """Both comparators fitted on every labelled episode (what the model artifact carries)."""
    return {
        "logreg": make_logreg().fit(X, y),
        "plt_baseline": make_plt_baseline(list(X.columns)).fit(X, y),
    }


def to_dict(model: Pipeline, columns: list[str]) -> dict:
    """A fitted comparator as plain numbers (JSON, no pickle): the features it reads, the
    imputation medians, the scaling and the logistic coefficients."""
    steps = list(model.named_steps.values())
    used = list(columns)
    if isinstance(steps[0], ColumnTransformer):
        used = [PLT_FEATURE]
        steps = steps[1:]
    imputer, scaler, logistic = steps
    return {
        "features": used,
        "medians": [float(v) for v in imputer.statistics_],
        "mean": [float(v) for v in scaler.mean_],
        "scale": [float(v) for v in scaler.scale_],
        "coef": [float(v) for v in logistic.coef_[0]],
        "intercept": float(logistic.intercept_[0]),
    }


def predict_from_dict(spec: dict, X: pd.DataFrame) -> np.ndarray:
    """P(response) of a comparator stored by `to_dict`, from the model features `X`."""
    missing = [c for c in spec["features"] if c not in X.columns]
    if missing:
        raise ComparatorError(f"the comparator needs features the data lack: {missing[:5]}")
    values = X[spec["features"]].to_numpy(dtype=float)
    values = np.where(np.isnan(values), np.asarray(spec["medians"]), values)
    z = (values - np.asarray(spec["mean"])) / np.asarray(spec["scale"])
    margin = z @ np.asarray(spec["coef"]) + spec["intercept"]
    return 1.0 / (1.0 + np.exp(-margin))
