"""Minimum sample size for a binary-outcome prediction model (Riley et al., BMJ 2020; 368:m441).

The four criteria of the paper for binary outcomes:
1. overall risk (the model intercept) estimated within +/- 0.05 (95% CI);
2. mean absolute prediction error (MAPE) <= 0.05 (van Smeden et al. 2019 approximation);
3. expected uniform shrinkage >= 0.9, given the anticipated Cox-Snell R2;
4. optimism in apparent Nagelkerke R2 <= 0.05.
The anticipated Cox-Snell R2 comes from an anticipated AUROC by the conversion of Riley et al.
(Stat Med 2021; pmsampsize): simulate a logistic linear predictor with that C statistic and read
the likelihood-ratio R2 of the fitted model.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy.special import expit, xlogy
from scipy.stats import norm

log = logging.getLogger(__name__)


def max_r2_cs(prevalence: float) -> float:
    """The largest Cox-Snell R2 a model can reach at this outcome prevalence."""
    phi = prevalence
    ln_l0 = phi * math.log(phi) + (1 - phi) * math.log(1 - phi)
    return 1 - math.exp(2 * ln_l0)


def r2_cs_from_auroc(auroc: float, prevalence: float, n: int = 1_000_000, seed: int = 1) -> float:
    """Cox-Snell R2 anticipated for a model of this AUROC (simulation, as pmsampsize does)."""
    rng = np.random.default_rng(seed)
    n_events = int(round(n * prevalence))
    mu = math.sqrt(2) * norm.ppf(auroc)
    lp = np.concatenate([rng.normal(mu, 1, n_events), rng.normal(0, 1, n - n_events)])
    y = np.concatenate([np.ones(n_events), np.zeros(n - n_events)])
    a, b = 0.0, 1.0
    for _ in range(100):
        p = expit(a + b * lp)
        r = y - p
        v = p * (1 - p)
        g0, g1 = r.sum(), (r * lp).sum()
        h00, h01, h11 = v.sum(), (v * lp).sum(), (v * lp * lp).sum()
        det = h00 * h11 - h01**2
        da, db = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        a, b = a + da, b + db
        if abs(da) + abs(db) < 1e-10:
            break
    p = np.clip(expit(a + b * lp), 1e-12, 1 - 1e-12)
    ll_model = float((xlogy(y, p) + xlogy(1 - y, 1 - p)).sum())
    ll_null = n_events * math.log(prevalence) + (n - n_events) * math.log(1 - prevalence)
    lr = 2 * (ll_model - ll_null)
    return 1 - math.exp(-lr / n)


def _n_for_shrinkage(p: int, r2: float, shrinkage: float) -> float:
    return p / ((shrinkage - 1) * math.log(1 - r2 / shrinkage))


#: Riley et al.'s four criteria, in words for messages.
CRITERION_WORDS = {
    "overall_risk": "the precision of the overall response rate",
    "mape": "the precision of individual predicted risks",
    "shrinkage": "the shrinkage needed against overfitting",
    "optimism": "the optimism of the apparent fit",
}


def riley_sample_size(
    n_predictors: int,
    prevalence: float,
    r2_cs: float,
    shrinkage: float = 0.9,
    optimism: float = 0.05,
    margin: float = 0.05,
    mape: float = 0.05,
) -> dict[str, Any]:
    """Minimum n under each of the four criteria and overall (the largest)."""
    if not 0 < prevalence < 1:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    if n_predictors < 1:
        raise ValueError("n_predictors must be at least 1")
    r2_max = max_r2_cs(prevalence)
    if not 0 < r2_cs < r2_max:
        raise ValueError(f"anticipated Cox-Snell R2 {r2_cs:.3f} must be in (0, {r2_max:.3f})")
    n_risk = (1.96 / margin) ** 2 * prevalence * (1 - prevalence)
    n_mape = math.exp(
        (-0.508 + 0.259 * math.log(prevalence) + 0.504 * math.log(n_predictors) - math.log(mape))
        / 0.544
    )
    n_shrinkage = _n_for_shrinkage(n_predictors, r2_cs, shrinkage)
    s_optimism = r2_cs / (r2_cs + optimism * r2_max)
    n_optimism = _n_for_shrinkage(n_predictors, r2_cs, s_optimism)
    criteria = {
        "overall_risk": math.ceil(n_risk),
        "mape": math.ceil(n_mape),
        "shrinkage": math.ceil(n_shrinkage),
        "optimism": math.ceil(n_optimism),
    }
    return {
        "criteria": criteria,
        "minimum_n": max(criteria.values()),
        "limiting_criterion": max(criteria, key=criteria.get),
        "r2_cs": r2_cs,
        "max_r2_cs": r2_max,
        "shrinkage_target": shrinkage,
    }


def assess_sample_size(
    y: np.ndarray, groups: np.ndarray, n_predictors: int, anticipated_auroc: float
) -> dict[str, Any]:
    """Events, events per candidate predictor and Riley's minimum n, with warnings when short."""
    y = np.asarray(y).astype(int)
    n = len(y)
    events = int(y.sum())
    prevalence = events / n if n else float("nan")
    out: dict[str, Any] = {
        "n_episodes": n,
        "n_patients": int(len(np.unique(np.asarray(groups).astype(str)))),
        "events": events,
        "non_events": n - events,
        "prevalence": prevalence,
        "n_predictors": n_predictors,
        "events_per_predictor": events / n_predictors if n_predictors else float("nan"),
        "minority_per_predictor": min(events, n - events) / n_predictors
        if n_predictors
        else float("nan"),
        "anticipated_auroc": anticipated_auroc,
        "warnings": [],
    }
    if not 0 < events < n:
        out["warnings"].append("only one outcome class: no sample size calculation possible")
        return out
    r2 = r2_cs_from_auroc(anticipated_auroc, prevalence, n=200_000)
    riley = riley_sample_size(n_predictors, prevalence, r2)
    out["riley"] = riley
    if n < riley["minimum_n"]:
        out["warnings"].append(
            f"{n} episodes is below Riley's minimum of {riley['minimum_n']} for "
            f"{n_predictors} candidate predictors (set by "
            f"{CRITERION_WORDS[riley['limiting_criterion']]}): "
            "expect overfitting; interpret with caution"
        )
    if out["minority_per_predictor"] < 10:
        out["warnings"].append(
            f"{out['minority_per_predictor']:.1f} events of the rarer class per candidate "
            "predictor (fewer than 10)"
        )
    for message in out["warnings"]:
        log.warning("sample size: %s", message)
    return out
