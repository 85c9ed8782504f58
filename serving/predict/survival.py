"""Chance of response by each day: an interval-censored XGBoost AFT model, reconciled.

Training (`training.survival`) fits an XGBoost `survival:aft` model on the time to response, each
episode an interval between platelet draws: a responder between the last draw before the response
day and that day, a non-responder right-censored at the last draw of follow-up (day `horizon` or
earlier when follow-up stopped). The model gives a log-time location mu(x) and, with its fixed
scale sigma, the distribution F(d | x) = G((ln d - mu(x)) / sigma) of the time to response.

What the answer shows is reconciled with the calibrated probability p(x) of response by the
horizon H: the AFT model contributes only the timing *given* response by the horizon,

    P(response by day d) = p(x) * F(d | x) / F(H | x),   d = 1..H,

so the curve is non-decreasing, lies in [0, p(x)], and equals the calibrated probability on day H
exactly. `median_days_to_response` is the first day the curve reaches 0.5 (None when p(x) < 0.5).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb
from scipy.special import log_ndtr

DISTRIBUTIONS = ("normal", "logistic")

MEANING = (
    "P(response by day d) for d = 1..{h}: the calibrated probability of response by day {h} "
    "times the share of responses expected by day d (an interval-censored XGBoost AFT model of "
    "the time to response between platelet draws), so day {h} equals the probability"
)


def _log_cdf(z: np.ndarray, distribution: str) -> np.ndarray:
    if distribution == "normal":
        return log_ndtr(z)
    return -np.logaddexp(0.0, -z)  # logistic: log(1 / (1 + exp(-z)))


@dataclass
class TimeToResponse:
    """The AFT booster, its distribution and scale, and the label horizon in days."""

    booster: xgb.Booster
    distribution: str = "normal"
    scale: float = 1.0
    horizon_days: int = 14
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"AFT distribution must be one of {DISTRIBUTIONS}")
        if not self.scale > 0:
            raise ValueError("AFT scale must be positive")
        if not 1 <= int(self.horizon_days) <= 365:
            raise ValueError("horizon must be 1-365 days")
        self.horizon_days = int(self.horizon_days)
        self.booster.set_param({"nthread": 1})
        self._log_days = np.log(np.arange(1, self.horizon_days + 1, dtype=np.float64))

    def meaning(self) -> str:
        return MEANING.format(h=self.horizon_days)

    def location(self, X: np.ndarray) -> np.ndarray:
        """mu(x): the predicted log time to response (the booster's margin)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        return self.booster.inplace_predict(X, predict_type="margin").astype(np.float64)

    def timing(self, mu: np.ndarray) -> np.ndarray:
        """F(d | x) / F(H | x) for d = 1..H (rows: patients): the timing given response by H."""
        z = (self._log_days[None, :] - np.asarray(mu, dtype=np.float64)[:, None]) / self.scale
        log_f = _log_cdf(z, self.distribution)
        share = np.exp(log_f - log_f[:, -1:])
        # exp of a difference of non-decreasing terms can wobble by an ulp; keep the curve monotone
        return np.minimum(np.maximum.accumulate(share, axis=1), 1.0)

    def unreconciled(self, mu: np.ndarray) -> np.ndarray:
        """F(d | x) for d = 1..H: the AFT model's own P(response by day d) (for evaluation)."""
        z = (self._log_days[None, :] - np.asarray(mu, dtype=np.float64)[:, None]) / self.scale
        return np.exp(_log_cdf(z, self.distribution))

    def curves(self, probability: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """P(response by day d), d = 1..H, reconciled with the calibrated probability."""
        return np.asarray(probability, dtype=np.float64)[:, None] * self.timing(mu)

    # -- persistence ---------------------------------------------------------------------------

    def to_blobs(self, dumps: Any) -> dict[str, bytes]:
        return {
            "survival.json": dumps(
                {
                    "method": "xgboost_aft_interval_censored",
                    "distribution": self.distribution,
                    "scale": self.scale,
                    "horizon_days": self.horizon_days,
                    "meta": self.meta,
                }
            ),
            "survival.ubj": bytes(self.booster.save_raw("ubj")),
        }

    @classmethod
    def from_blobs(cls, blobs: Mapping[str, bytes]) -> TimeToResponse | None:
        if "survival.json" not in blobs:
            return None
        spec = json.loads(blobs["survival.json"])
        booster = xgb.Booster()
        booster.load_model(bytearray(blobs["survival.ubj"]))
        return cls(
            booster=booster,
            distribution=str(spec["distribution"]),
            scale=float(spec["scale"]),
            horizon_days=int(spec["horizon_days"]),
            meta=dict(spec.get("meta") or {}),
        )


def median_day(curve: np.ndarray) -> int | None:
    """The first day (1-based) the curve reaches 0.5, or None."""
    reached = np.flatnonzero(np.asarray(curve) >= 0.5)
    return int(reached[0]) + 1 if reached.size else None


def timing_sentence(answer: Mapping[str, Any], days: tuple[int, ...] = (7,)) -> str | None:
    """One sentence on how soon: 'Chance of response by day 7: 38%; by day 14: 64% (half of
    such patients would have responded by day 11).' None without `response_by_day`."""
    curve = answer.get("response_by_day")
    if not curve:
        return None
    horizon = len(curve)
    parts = [f"by day {d}: {float(curve[d - 1]):.0%}" for d in days if d < horizon]
    parts.append(f"by day {horizon}: {float(curve[-1]):.0%}")
    median = answer.get("median_days_to_response")
    tail = (
        f" (the curve passes 50% on day {median})"
        if median is not None
        else " (the curve stays below 50%)"
    )
    return "Chance of response " + "; ".join(parts) + tail + "."
