"""Discrimination, calibration and clinical-utility metrics with a vectorised patient bootstrap.

Every metric takes outcomes `y` (n,), probabilities `p` (n,) and case weights `w` (B, n) and returns
B values at once; the point estimate is the same function with all weights 1. A bootstrap resample
draws patients with replacement and weights each episode by its patient's draw count, so episodes
of one patient move together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import expit, logit

EPS = 1e-6
#: The headline metrics in the order every table shows them: (key, label, digits).
METRIC_LABELS = (
    ("auroc", "AUROC", 3),
    ("auprc", "AUPRC", 3),
    ("brier", "Brier score", 4),
    ("scaled_brier", "Scaled Brier", 3),
    ("calibration_intercept", "Calibration intercept", 3),
    ("calibration_slope", "Calibration slope", 3),
    ("oe_ratio", "Observed/expected", 3),
    ("ece", "ECE", 3),
    ("sensitivity", "Sensitivity", 3),
    ("specificity", "Specificity", 3),
    ("ppv", "PPV", 3),
    ("npv", "NPV", 3),
)
MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Episode weights (n_boot, n) from resampling patients with replacement."""
    codes, uniques = _codes(groups)
    rng = np.random.default_rng(seed)
    n_groups = len(uniques)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return counts[:, codes].astype(float)


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return codes, uniques


def _as_weights(w: np.ndarray | None, n: int) -> np.ndarray:
    if w is None:
        return np.ones((1, n))
    return np.atleast_2d(np.asarray(w, dtype=float))


def _level_sums(values: np.ndarray, levels: np.ndarray, n_levels: int) -> np.ndarray:
    """Sum the columns of `values` (B, n) within each level: returns (B, n_levels)."""
    n = values.shape[1]
    onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), levels)), shape=(n, n_levels))
    return np.asarray(values @ onehot)


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y and p must be 1-d and the same length, got {y.shape} and {p.shape}")
    if np.isnan(p).any():
        raise ValueError("p contains NaN")
    return y, p


def auroc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Weighted area under the ROC curve (ties count one half), one value per weight row."""
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    uniq, inv = np.unique(p, return_inverse=True)
    pos = _level_sums(w * y, inv, len(uniq))
    neg = _level_sums(w * (1 - y), inv, len(uniq))
    neg_below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * (neg_below + 0.5 * neg)).sum(axis=1) / total, np.nan)


def auprc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Weighted average precision (scikit-learn's step-wise definition)."""
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    uniq, inv = np.unique(-p, return_inverse=True)  # descending scores
    pos = _level_sums(w * y, inv, len(uniq))
    neg = _level_sums(w * (1 - y), inv, len(uniq))
    tp = np.cumsum(pos, axis=1)
    fp = np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        total = pos.sum(axis=1)
        return np.where(total > 0, (pos * precision).sum(axis=1) / total, np.nan)


def brier(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    return (w * (p - y) ** 2).sum(axis=1) / w.sum(axis=1)


def scaled_brier(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """1 - Brier / Brier of the prevalence-only model (Brier skill score)."""
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    prevalence = (w * y).sum(axis=1) / w.sum(axis=1)
    reference = prevalence * (1 - prevalence)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(reference > 0, 1 - brier(y, p, w) / reference, np.nan)


def oe_ratio(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Observed / expected number of responders."""
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    return (w * y).sum(axis=1) / (w * p).sum(axis=1)


def ece(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error over equal-width probability bins."""
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    gap = _level_sums(w * (y - p), bins, n_bins)
    return np.abs(gap).sum(axis=1) / w.sum(axis=1)


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1 - EPS))


def calibration_intercept(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, n_iter: int = 50
) -> np.ndarray:
    """Calibration-in-the-large: a in logit P(y) = a + logit(p) (offset), by Newton's method."""
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    offset = _logit(p)
    a = np.zeros(w.shape[0])
    for _ in range(n_iter):
        mu = expit(a[:, None] + offset)
        grad = (w * (y - mu)).sum(axis=1)
        hess = (w * mu * (1 - mu)).sum(axis=1)
        step = grad / np.maximum(hess, 1e-12)
        a = a + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return a


def calibration_slope(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, n_iter: int = 50
) -> np.ndarray:
    """b in the logistic recalibration logit P(y) = a + b logit(p), by Newton's method."""
    return _recalibration(y, p, w, n_iter)[1]


def _recalibration(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None, n_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    x = _logit(p)
    a = np.zeros(w.shape[0])
    b = np.ones(w.shape[0])
    for _ in range(n_iter):
        mu = expit(a[:, None] + b[:, None] * x)
        r = w * (y - mu)
        v = w * mu * (1 - mu)
        g0, g1 = r.sum(axis=1), (r * x).sum(axis=1)
        h00, h01, h11 = v.sum(axis=1), (v * x).sum(axis=1), (v * x * x).sum(axis=1)
        det = h00 * h11 - h01**2
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        da = (h11 * g0 - h01 * g1) / det
        db = (h00 * g1 - h01 * g0) / det
        a, b = a + da, b + db
        if max(np.max(np.abs(da)), np.max(np.abs(db))) < 1e-10:
            break
    return a, b


def _confusion(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    y, p = _check(y, p)
    w = _as_weights(w, len(y))
    pred = (p >= threshold).astype(float)
    tp = (w * y * pred).sum(axis=1)
    fp = (w * (1 - y) * pred).sum(axis=1)
    fn = (w * y * (1 - pred)).sum(axis=1)
    tn = (w * (1 - y) * (1 - pred)).sum(axis=1)
    return tp, fp, fn, tn


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / b, np.nan)


def threshold_metrics(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None, threshold: float
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV when p >= threshold predicts response."""
    tp, fp, fn, tn = _confusion(y, p, w, threshold)
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of acting on p >= t, for each threshold t (decision curve analysis)."""
    y, p = _check(y, p)
    thresholds = np.asarray(thresholds, dtype=float)
    pred = p[None, :] >= thresholds[:, None]
    n = len(y)
    tp = (pred & (y[None, :] == 1)).sum(axis=1)
    fp = (pred & (y[None, :] == 0)).sum(axis=1)
    return tp / n - fp / n * thresholds / (1 - thresholds)


def net_benefit_treat_all(y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    prevalence = float(np.mean(y))
    thresholds = np.asarray(thresholds, dtype=float)
    return prevalence - (1 - prevalence) * thresholds / (1 - thresholds)


@dataclass(frozen=True)
class MetricSettings:
    threshold: float = 0.5
    ece_bins: int = 10


def metric_functions(settings: MetricSettings) -> dict[str, MetricFn]:
    """The named metrics a model is scored on, each vectorised over weight rows."""
    t = settings.threshold
    return {
        "auroc": auroc,
        "auprc": auprc,
        "brier": brier,
        "scaled_brier": scaled_brier,
        "calibration_intercept": calibration_intercept,
        "calibration_slope": calibration_slope,
        "oe_ratio": oe_ratio,
        "ece": lambda y, p, w: ece(y, p, w, n_bins=settings.ece_bins),
        "sensitivity": lambda y, p, w: threshold_metrics(y, p, w, t)["sensitivity"],
        "specificity": lambda y, p, w: threshold_metrics(y, p, w, t)["specificity"],
        "ppv": lambda y, p, w: threshold_metrics(y, p, w, t)["ppv"],
        "npv": lambda y, p, w: threshold_metrics(y, p, w, t)["npv"],
    }


def evaluate(
    y: np.ndarray,
    predictions: np.ndarray,
    weights: np.ndarray,
    settings: MetricSettings,
    names: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Estimate and percentile 95% CI of each metric.

    `predictions` is (R, n): one row of out-of-fold probabilities per cross-validation repeat. Each
    metric is averaged over repeats, both for the estimate and within every bootstrap resample, so
    the interval reflects patient sampling and not the split noise alone.
    """
    y = np.asarray(y, dtype=float)
    predictions = np.atleast_2d(np.asarray(predictions, dtype=float))
    functions = metric_functions(settings)
    out: dict[str, dict[str, float]] = {}
    ones = np.ones((1, len(y)))
    for name in names or list(functions):
        fn = functions[name]
        estimate = np.mean([fn(y, p, ones)[0] for p in predictions])
        boot = np.mean([fn(y, p, weights) for p in predictions], axis=0)
        boot = boot[np.isfinite(boot)]
        low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (np.nan, np.nan)
        out[name] = {"estimate": float(estimate), "low": float(low), "high": float(high)}
    return out


def paired_difference(
    fn: MetricFn,
    y: np.ndarray,
    predictions_a: np.ndarray,
    predictions_b: np.ndarray,
    weights: np.ndarray,
) -> dict[str, float]:
    """Metric of A minus metric of B on the same episodes, with a paired percentile 95% CI.

    Both models are scored on every bootstrap resample together, so the interval reflects the
    correlation of their errors (the right comparison for two models of one cohort). Each
    argument `predictions_*` is (R, n), averaged over repeats as in `evaluate`.
    """
    y = np.asarray(y, dtype=float)
    a = np.atleast_2d(np.asarray(predictions_a, dtype=float))
    b = np.atleast_2d(np.asarray(predictions_b, dtype=float))
    ones = np.ones((1, len(y)))
    estimate = np.mean(
        [fn(y, pa, ones)[0] - fn(y, pb, ones)[0] for pa, pb in zip(a, b, strict=True)]
    )
    boot = np.mean(
        [fn(y, pa, weights) - fn(y, pb, weights) for pa, pb in zip(a, b, strict=True)], axis=0
    )
    boot = boot[np.isfinite(boot)]
    low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (np.nan, np.nan)
    return {"estimate": float(estimate), "low": float(low), "high": float(high)}
