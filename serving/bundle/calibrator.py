"""The calibrator of a model bundle: raw booster probabilities (or margins) to calibrated ones.

Training fits it on out-of-fold predictions (`training.procedure`); serving applies it. Saved as
JSON (`to_dict` / `from_dict`), never pickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


class Calibrator:
    """Maps raw booster probabilities to calibrated ones (fitted on out-of-fold predictions).

    `platt` fits a logistic regression on the logit of the raw probability; `isotonic` a monotone
    step function (linear between knots, clipped outside); `none` is the identity.
    """

    METHODS = ("platt", "isotonic", "none")

    def __init__(self, method: str = "platt") -> None:
        self.method = method

    def fit(self, p_raw: Sequence[float] | np.ndarray, y: Sequence[int] | np.ndarray) -> Calibrator:
        if self.method not in self.METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; one of {self.METHODS}")
        p_raw = np.asarray(p_raw, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if p_raw.shape != y.shape or p_raw.ndim != 1:
            raise ValueError("p_raw and y must be 1-D and of the same length")
        if self.method == "platt":
            from sklearn.linear_model import LogisticRegression

            fitted = LogisticRegression(C=np.inf).fit(_logit(p_raw)[:, None], y.astype(int))
            self.slope_ = float(fitted.coef_[0, 0])
            self.intercept_ = float(fitted.intercept_[0])
        elif self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p_raw, y)
            self.x_ = np.asarray(fitted.X_thresholds_, dtype=np.float64)
            self.y_ = np.asarray(fitted.y_thresholds_, dtype=np.float64)
        self.fitted_ = True
        return self

    def transform(self, p_raw: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.transform_margin(_logit(np.asarray(p_raw, dtype=np.float64)))

    def transform_margin(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from booster margins (log-odds), without a logit round trip."""
        if not getattr(self, "fitted_", False):
            raise ValueError("Calibrator is not fitted; call fit() first")
        margin = np.asarray(margin, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.slope_ * margin + self.intercept_)
        if self.method == "isotonic":
            return np.interp(_sigmoid(margin), self.x_, self.y_)
        return _sigmoid(margin)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.method == "platt":
            out.update(slope=self.slope_, intercept=self.intercept_)
        elif self.method == "isotonic":
            out.update(x=self.x_.tolist(), y=self.y_.tolist())
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        calibrator = cls(str(data["method"]))
        if calibrator.method == "platt":
            calibrator.slope_ = float(data["slope"])
            calibrator.intercept_ = float(data["intercept"])
        elif calibrator.method == "isotonic":
            calibrator.x_ = np.asarray(data["x"], dtype=np.float64)
            calibrator.y_ = np.asarray(data["y"], dtype=np.float64)
        elif calibrator.method != "none":
            raise ValueError(f"unknown calibration method {calibrator.method!r}")
        calibrator.fitted_ = True
        return calibrator
