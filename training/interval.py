"""Fit the probability interval: patient-bootstrap refits of the deployed procedure.

Why this method: the interval is meant to say how far the deployed probability may lie from the
probability the same procedure would give with unlimited data like these (the large-sample
reference). That is the sampling variability of the procedure, which the bootstrap estimates
directly: resample patients with replacement (episodes of a patient move together), refit the
deployed configuration (the tuned settings and number of rounds, then the calibrator refitted on
the same resample of the inner out-of-fold predictions) and read the spread of the refits'
calibrated log-odds at each patient. Venn-ABERS would give calibration-set uncertainty only, and
the fold models of cross-validation share 60% of their data and differ by tuning, so their spread
is neither a sampling spread nor of known level (the issue measured 29% coverage for the old one).
The interval itself is built at scoring time (`serving.interval.BootstrapInterval.bounds`).

The tuning step is not repeated inside each resample (it would cost the tuning budget B times);
the interval is conditional on the tuned settings. The plain bootstrap also misses the
procedure's finite-sample bias (on the simulator the t interval covered the 30k reference 55-61%
of the time at 80% nominal), so the half-width multiplier is calibrated by a parametric
bootstrap (`calibrate_multiplier`): outcomes drawn from the deployed model's bias-corrected
probability, the procedure refitted, the multiplier set so that the nominal share of those
refits lies inside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost as xgb

from serving.bundle.calibrator import Calibrator
from serving.predict.interval import BootstrapInterval
from training.config import IntervalConfig

log = logging.getLogger(__name__)

Observer = Callable[[str, np.ndarray], None]


def patient_bootstrap_counts(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Episode weights (n_boot, n): each episode weighted by its patient's draw count."""
    uniques, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(uniques), np.full(len(uniques), 1.0 / len(uniques)), size=n_boot)
    return counts[:, codes].astype(np.int64)


def fit_bootstrap_interval(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    params: dict[str, Any],
    n_rounds: int,
    p_inner_raw: np.ndarray,
    calibration_method: str,
    config: IntervalConfig,
    observer: Observer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BootstrapInterval | None:
    """B refits of the deployed configuration on patient-bootstrap resamples (None when B = 0).

    Args:
        X, y, groups: every labelled episode (the data the deployed booster is fitted on).
        params, n_rounds: the deployed booster's tuned settings and rounds.
        p_inner_raw: the deployed configuration's inner out-of-fold raw predictions (one per
            episode, as the deployed calibrator was fitted on), resampled for each refit's
            calibrator.
    """
    if config.n_bootstrap == 0:
        return None
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(int)
    p_inner_raw = np.asarray(p_inner_raw, dtype=np.float64)
    if p_inner_raw.shape != y.shape:
        raise ValueError("p_inner_raw must have one prediction per episode")
    weights = patient_bootstrap_counts(groups, config.n_bootstrap, config.seed)
    if observer is not None:
        observer("interval_bootstrap", np.arange(len(y)))
    matrix = xgb.DMatrix(X, label=y, missing=np.nan, nthread=int(params.get("nthread", 1)))
    boosters, calibrators = [], []
    for b, w in enumerate(weights):
        matrix.set_weight(w.astype(np.float32))
        fitted = xgb.train({**params, "seed": config.seed + b}, matrix, num_boost_round=n_rounds)
        rows = np.repeat(np.arange(len(y)), w)
        if len(np.unique(y[rows])) < 2:  # one class only (tiny cohorts): the full data
            rows = np.arange(len(y))
        calibrators.append(Calibrator(calibration_method).fit(p_inner_raw[rows], y[rows]))
        boosters.append(fitted)
        if progress is not None:
            progress(b + 1, len(weights))
    log.info("interval: %d bootstrap refits of %d rounds", len(boosters), n_rounds)
    interval = BootstrapInterval(
        boosters=boosters,
        calibrators=calibrators,
        level=config.level,
        meta={"n_rounds": int(n_rounds), "n_episodes": int(len(y)), "seed": config.seed},
    )
    if config.n_calibration:
        multiplier, used = calibrate_multiplier(
            interval, X, groups, params, n_rounds, p_inner_raw, y, calibration_method, config
        )
        if used:  # else Student's t stays, and the meaning says so
            interval = BootstrapInterval(
                boosters=boosters,
                calibrators=calibrators,
                level=config.level,
                meta={
                    **interval.meta,
                    "n_calibration": used,
                    "t_multiplier": interval.t_multiplier,
                    "bias_corrected": True,
                },
                multiplier=multiplier,
            )
    return interval


def calibrate_multiplier(
    interval: BootstrapInterval,
    X: np.ndarray,
    groups: np.ndarray,
    params: dict[str, Any],
    n_rounds: int,
    p_inner_raw: np.ndarray,
    y: np.ndarray,
    calibration_method: str,
    config: IntervalConfig,
) -> tuple[float, int]:
    """The half-width multiplier that makes the interval cover a known truth at the level, and
    the number of parametric refits it rests on (0: none could be fitted, Student's t returned).

    A parametric bootstrap (Beran's prepivoting): outcomes are drawn from a stand-in truth on
    the training episodes, and the procedure (inner out-of-fold predictions, calibrator, refit;
    settings and rounds as deployed) is refitted `n_calibration` times. The multiplier is the
    `level` quantile of |logit p* - logit truth| over refits and the episodes whose bootstrap
    refits differ, in units of the bootstrap standard deviation at each episode. (Where the refits
    agree to the bit, an isotonic calibrator's flat ends, no multiplier widens the interval, and
    those episodes would only swamp the quantile with infinite ratios.) Unlike the plain
    bootstrap, this sees the procedure's finite-sample bias (shrinkage towards the mean,
    calibration refitted on weaker inner models).

    The stand-in truth is the deployed probability p0 corrected by the bootstrap's own bias
    estimate (Efron): p0 - (mean of the refits' probabilities - p0), on the probability scale (the
    log-odds of refits at exactly 0 or 1, as isotonic calibrators give, are arbitrary), and capped
    at half the distance from p0 to 0 or 1, so that the truth never reaches a bound (outcomes
    drawn there would be certain, and the log-odds gaps meaningless). Taking p0 itself as the
    truth shows too little of that bias, because p0 is already shrunk: a truth as smooth as the
    fitted model has less structure for the refits to miss than the real one. The correction
    costs no refits (the bootstrap refits are at hand). On the simulator (3k training patients,
    30k reference, five training seeds) it raised the reference coverage of the 80% interval in
    every cohort, from 73.5% to 76.9% on average (README).
    """
    from training.procedure import ProcedureError, inner_folds, inner_oof_predictions

    y = np.asarray(y).astype(int)
    nthread = int(params.get("nthread", 1))
    deployed_calibrator = Calibrator(calibration_method).fit(p_inner_raw, y)
    dall = xgb.DMatrix(X, label=y, missing=np.nan, nthread=nthread)
    margin = xgb.train(params, dall, num_boost_round=n_rounds).predict(dall, output_margin=True)
    p0 = deployed_calibrator.transform_margin(margin)
    refits = interval.logits(interval.margins(X))
    spread = np.std(refits, axis=0, ddof=1)
    varies = spread > _SAME_SPREAD
    if not varies.any():
        log.warning("interval: the bootstrap refits agree everywhere; Student's t multiplier")
        return interval.t_multiplier, 0
    p_truth = bias_corrected_probability(p0, 1 / (1 + np.exp(-refits)))
    truth = _logit(p_truth)
    rng = np.random.default_rng(config.seed + 7919)
    ratios = []
    for m in range(config.n_calibration):
        y_star = (rng.random(len(p_truth)) < p_truth).astype(int)
        if y_star.min() == y_star.max():
            continue
        try:
            folds = inner_folds(y_star, groups, 3, config.seed + m)
        except ProcedureError:  # too few patients of a class in this draw
            continue
        run = {**params, "seed": config.seed + 100 + m}
        p_oof, _ = inner_oof_predictions(X, y_star, folds, run, n_rounds, nthread)
        calibrator = Calibrator(calibration_method).fit(p_oof, y_star)
        dstar = xgb.DMatrix(X, label=y_star, missing=np.nan, nthread=nthread)
        refit = xgb.train(run, dstar, num_boost_round=n_rounds)
        p_star = calibrator.transform_margin(refit.predict(dstar, output_margin=True))
        gap = np.abs(_logit(p_star) - truth)
        ratios.append(gap[varies] / spread[varies])
    pooled = np.concatenate(ratios) if ratios else np.empty(0)
    pooled = pooled[np.isfinite(pooled)]  # a calibrator's NaN would void the whole quantile
    multiplier = float(np.quantile(pooled, config.level)) if pooled.size else 0.0
    if not multiplier > 0:  # no refit could be fitted, or the refits hit the truth exactly
        log.warning(
            "interval: no parametric refit could be fitted, or they give no width; "
            "Student's t multiplier"
        )
        return interval.t_multiplier, 0
    log.info(
        "interval: multiplier %.3f from %d parametric refits (Student's t: %.3f)",
        multiplier,
        len(ratios),
        interval.t_multiplier,
    )
    return multiplier, len(ratios)


def bias_corrected_probability(p0: np.ndarray, refit_probabilities: np.ndarray) -> np.ndarray:
    """Efron's bootstrap bias correction, p0 + (p0 - mean of the refits' probabilities; rows:
    refits), the correction capped at half the distance from p0 (within [1e-6, 1 - 1e-6]) to 0
    or 1: the result stays strictly inside (0, 1)."""
    p0 = np.clip(np.asarray(p0, dtype=np.float64), _EPS, 1 - _EPS)
    correction = p0 - np.asarray(refit_probabilities, dtype=np.float64).mean(axis=0)
    return p0 + np.clip(correction, -p0 / 2, (1 - p0) / 2)


#: p0 is kept this far from 0 and 1, so the stand-in truth lies in [5e-7, 1 - 5e-7]: strictly
#: inside the log-odds clip below, where refits at exactly 0 or 1 end up (a truth at that clip
#: would give them gaps of exactly 0).
_EPS = 1e-6
#: The log-odds clip, as in serving (`serving.predict.interval`).
_LOGIT_EPS = 1e-7
#: A bootstrap standard deviation of the log-odds below this is taken as no spread at all.
_SAME_SPREAD = 1e-3


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _LOGIT_EPS, 1 - _LOGIT_EPS)
    return np.log(p / (1 - p))
