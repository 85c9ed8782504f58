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
