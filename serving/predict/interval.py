"""The probability interval: a patient-bootstrap interval of the deployed procedure, stated level.

Training refits the deployed configuration (tuned settings and rounds, then the calibrator on the
inner out-of-fold predictions) on B patient-level bootstrap resamples of the training data
(`training.interval`). For a patient the B refits give B calibrated probabilities; the interval is
the normal bootstrap interval on the log-odds scale, centred on the deployed probability:

    logit(p) +- k * sd_b(logit p_b)

mapped back to probabilities. Its known property: for a smooth estimator the bootstrap standard
deviation estimates the sampling standard deviation of the procedure's estimate, so with k the
Student t quantile the interval covers the probability the same procedure would give with
unlimited data (the large-sample reference) at the stated level, asymptotically and up to the
procedure's finite-sample bias, which the bootstrap does not see. Training therefore calibrates k
by a parametric bootstrap (outcomes drawn from the deployed model's bias-corrected probability,
the procedure refitted: the level quantile of the refits' standardised errors); the measured
coverage is in the README. The log-odds scale keeps both bounds inside (0, 1) and the
probability inside the interval (strictly, unless every refit gives the same probability, as at
an isotonic calibrator's flat ends).
Where training data are sparse (rare categories, values at or past the edge of the training
range) the resamples disagree more, so the interval is wider there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb
from scipy.special import stdtrit

_EPS = 1e-7

#: Words for /v1/model, the report and the page.
MEANING = (
    "{level:.0%} interval for the probability: the range of probabilities that the same training "
    "procedure would plausibly give with unlimited data like the training cohort (a patient "
    "bootstrap of the deployed procedure, {n} refits; log-odds +- {k:.2f} bootstrap standard "
    "deviations, the multiplier {how}); it is not a range for this patient's outcome. Wider "
    "where training data are sparse."
)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass
class BootstrapInterval:
    """B bootstrap refits (boosters and their calibrators) and the nominal level.

    `calibrators` are `serving.bundle.calibrator.Calibrator`-like objects with `transform_margin`
    and `to_dict`; they are kept untyped here so this module does not import `serving.bundle`.
    """

    boosters: list[xgb.Booster]
    calibrators: list[Any]
    level: float = 0.8
    meta: dict[str, Any] = field(default_factory=dict)
    #: the half-width in bootstrap standard deviations; None: Student's t(B - 1) at the level
    multiplier: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"interval level must be inside (0, 1), got {self.level}")
        if len(self.boosters) < 2:
            raise ValueError("a bootstrap interval needs at least 2 refits")
        if len(self.calibrators) != len(self.boosters):
            raise ValueError("one calibrator per bootstrap booster")
        for booster in self.boosters:
            booster.set_param({"nthread": 1})
        n = len(self.boosters)
        self.t_multiplier = float(stdtrit(n - 1, (1 + self.level) / 2))
        if self.multiplier is None:
            self.multiplier = self.t_multiplier
        elif not self.multiplier > 0:
            raise ValueError("the interval multiplier must be positive")
        # Platt calibrators as two vectors: all B maps in one numpy expression.
        methods = {getattr(c, "method", None) for c in self.calibrators}
        self._platt: tuple[np.ndarray, np.ndarray] | None = None
        if methods == {"platt"}:
            self._platt = (
                np.asarray([c.slope_ for c in self.calibrators])[:, None],
                np.asarray([c.intercept_ for c in self.calibrators])[:, None],
            )

    @property
    def n_refits(self) -> int:
        return len(self.boosters)

    def meaning(self) -> str:
        calibrated = self.meta.get("n_calibration")
        # models trained before the bias correction drew the outcomes from p0 itself
        truth = " after a bootstrap bias correction" if self.meta.get("bias_corrected") else ""
        how = (
            f"calibrated by a parametric bootstrap of {calibrated} refits on outcomes drawn from "
            f"the deployed model{truth}"
            if calibrated
            else f"Student's t with {self.n_refits - 1} degrees of freedom"
        )
        meaning = MEANING.format(level=self.level, n=self.n_refits, k=self.multiplier, how=how)
        site = self.meta.get("site")  # set by a site recalibration (`training.recalibrate`)
        return f"{meaning}; {site}" if site else meaning

    def logits(self, margins: np.ndarray) -> np.ndarray:
        """Calibrated log-odds of each refit (rows) for each patient (columns)."""
        margins = np.asarray(margins, dtype=np.float64)
        if self._platt is not None:
            slope, intercept = self._platt
            return slope * margins + intercept
        return _logit(
            np.vstack(
                [c.transform_margin(m) for c, m in zip(self.calibrators, margins, strict=True)]
            )
        )

    def margins(self, X: np.ndarray) -> np.ndarray:
        """Each refit's margins for a float32 matrix (rows: refits); xgboost's own predictor."""
        return np.vstack([b.inplace_predict(X, predict_type="margin") for b in self.boosters])

    def bounds(self, probability: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) around the deployed probabilities, from the refits' margins (B, n)."""
        spread = np.std(self.logits(margins), axis=0, ddof=1)
        centre = _logit(probability)
        half = self.multiplier * spread
        # A probability of exactly 0 or 1 (an isotonic calibrator's ends) is clipped above, so the
        # bounds are widened to contain it.
        low = np.minimum(_sigmoid(centre - half), probability)
        return low, np.maximum(_sigmoid(centre + half), probability)

    # -- persistence (the files go into the model's manifest) ------------------------------------

    def to_blobs(self, dumps: Any) -> dict[str, bytes]:
        blobs = {
            "interval.json": dumps(
                {
                    "method": "patient_bootstrap_normal_logit",
                    "level": self.level,
                    "multiplier": self.multiplier,
                    "calibrators": [c.to_dict() for c in self.calibrators],
                    "meta": self.meta,
                }
            )
        }
        for k, booster in enumerate(self.boosters):
            blobs[f"interval_{k:03d}.ubj"] = bytes(booster.save_raw("ubj"))
        return blobs

    @classmethod
    def from_blobs(
        cls, blobs: Mapping[str, bytes], calibrator_from_dict: Any
    ) -> BootstrapInterval | None:
        import json

        if "interval.json" not in blobs:
            return None
        spec = json.loads(blobs["interval.json"])
        names = sorted(n for n in blobs if n.startswith("interval_") and n.endswith(".ubj"))
        boosters = []
        for name in names:
            booster = xgb.Booster()
            booster.load_model(bytearray(blobs[name]))
            boosters.append(booster)
        return cls(
            boosters=boosters,
            calibrators=[calibrator_from_dict(c) for c in spec["calibrators"]],
            level=float(spec["level"]),
            meta=dict(spec.get("meta") or {}),
            multiplier=spec.get("multiplier"),
        )


def interval_width_summary(low: Sequence[float], high: Sequence[float]) -> dict[str, float]:
    """Median and 10th/90th percentile of interval widths (for logs and the report)."""
    width = np.asarray(high, dtype=float) - np.asarray(low, dtype=float)
    if width.size == 0:
        return {"median": math.nan, "p10": math.nan, "p90": math.nan}
    q = np.quantile(width, [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


#: A 0/1 value, a category level or a missing value in fewer than this share of the training
#: episodes is outside the data's support.
RARE_SHARE = 0.01


class SupportEnvelope:
    """Where the training data say little, the interval also spans what the model says across
    the data it has.

    The bootstrap spread is small where trees extrapolate: past the last split a value beyond the
    training range scores like the edge, a category level almost no training patient had moves
    few splits, and a value missing where training values almost never were takes each tree's
    default branch alike in every refit. So a patient with features outside the training range
    gets an interval that also contains the intervals with all those features at the training
    1st percentile, with all at the 50th, and with all at the 99th; a patient with features
    missing where under 1% of training episodes missed them, the interval with those at the
    50th (an unknown value is at least as uncertain as a typical one; with features out of
    range as well, they join those three rows); a patient with 0/1 features (or one-hot levels)
    seen in fewer than 1% of training episodes, the interval with those features at their
    common level (a one-hot level as an unseen one). At most four extra rows per patient, each
    about 0.35 ms with 20 refits. The coverage statement applies inside the data's support;
    outside it the interval is knowingly wider.
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        reference: Mapping[str, Mapping[str, Any]],
        binary: Sequence[bool],
    ) -> None:
        n = len(feature_names)
        self._low = np.full(n, np.nan)
        self._high = np.full(n, np.nan)
        self._p01 = np.full(n, np.nan, dtype=np.float32)
        self._p50 = np.full(n, np.nan, dtype=np.float32)
        self._p99 = np.full(n, np.nan, dtype=np.float32)
        self._rarely_missing = np.zeros(n, dtype=bool)  # missing in under 1% of training
        self._rare = np.full(n, np.nan, dtype=np.float32)  # the rare value of a 0/1 feature
        self._common = np.full(n, np.nan, dtype=np.float32)  # what it becomes in the alternative
        groups: dict[str, list[int]] = {}
        for j, name in enumerate(feature_names):
            if "=" in name:
                groups.setdefault(name.split("=", 1)[0], []).append(j)
        self._zeroed: dict[int, list[int]] = {}
        for j, name in enumerate(feature_names):
            stats = reference.get(name) or {}
            if stats.get("min") is None:
                continue
            self._low[j], self._high[j] = float(stats["min"]), float(stats["max"])
            self._p01[j], self._p99[j] = float(stats["p01"]), float(stats["p99"])
            # a reference without the 50th percentile (older bundles): the 1st instead
            self._p50[j] = float(stats.get("p50", stats["p01"]))
            share = stats.get("missing_share")
            self._rarely_missing[j] = share is not None and float(share) < RARE_SHARE
            if binary[j] and stats["min"] == 0 and stats["max"] == 1:
                # p99 = 0: fewer than 1% of training episodes have a 1 (p01 = 1: a 0)
                if float(stats["p99"]) == 0.0:
                    self._rare[j], self._common[j] = 1.0, 0.0
                elif float(stats["p01"]) == 1.0:
                    self._rare[j], self._common[j] = 0.0, 1.0
                if "=" in name and not np.isnan(self._rare[j]):
                    self._zeroed[j] = groups[name.split("=", 1)[0]]

    def alternatives(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of X each alternative belongs to, the alternative rows), at most 4 per row."""
        X = np.asarray(X, dtype=np.float32)
        with np.errstate(invalid="ignore"):
            outside = np.less(X, self._low) | np.greater(X, self._high)
        missing = np.isnan(X) & self._rarely_missing
        rare = np.equal(X, self._rare)
        rows: list[int] = []
        alts: list[np.ndarray] = []
        for i in np.flatnonzero(outside.any(axis=1) | missing.any(axis=1) | rare.any(axis=1)):
            changed = outside[i] | missing[i]
            if outside[i].any():
                edges: tuple[np.ndarray, ...] = (self._p01, self._p50, self._p99)
            else:
                edges = (self._p50,) if missing[i].any() else ()
            for edge in edges:
                alt = X[i].copy()
                alt[changed] = edge[changed]
                rows.append(int(i))
                alts.append(alt)
            if rare[i].any():
                alt = X[i].copy()
                alt[rare[i]] = self._common[rare[i]]
                for j in np.flatnonzero(rare[i]):
                    if int(j) in self._zeroed:
                        alt[self._zeroed[int(j)]] = 0.0  # a rare one-hot level as an unseen one
                rows.append(int(i))
                alts.append(alt)
        if not rows:
            return np.zeros(0, dtype=np.intp), np.zeros((0, X.shape[1]), dtype=np.float32)
        return np.asarray(rows, dtype=np.intp), np.asarray(alts, dtype=np.float32)

    @staticmethod
    def widen(
        low: np.ndarray,
        high: np.ndarray,
        rows: np.ndarray,
        alt_low: np.ndarray,
        alt_high: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
        np.minimum.at(low, rows, alt_low)
        np.maximum.at(high, rows, alt_high)
        return low, high
