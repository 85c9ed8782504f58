"""The training reference a model bundle carries: each feature's distribution and the cohort.

`summarise_reference` builds it at training time; the answers read it for their out-of-range and
missing-input warnings, the interval for its support envelope.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def summarise_reference(
    X: pd.DataFrame, cohort_summary: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The training distribution per feature (for out-of-range warnings) and the cohort summary."""
    features: dict[str, dict[str, float | None]] = {}
    for name in X.columns:
        values = pd.to_numeric(X[name], errors="coerce").to_numpy(dtype=np.float64)
        present = values[~np.isnan(values)]
        if present.size:
            q = np.quantile(present, [0.0, 0.01, 0.5, 0.99, 1.0])
            stats = dict(zip(("min", "p01", "p50", "p99", "max"), map(float, q), strict=True))
        else:
            stats = dict.fromkeys(("min", "p01", "p50", "p99", "max"))
        stats["missing_share"] = float(1 - present.size / max(len(values), 1))
        features[str(name)] = stats
    return {"features": features, "cohort_summary": dict(cohort_summary or {})}


def reference_features(reference: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    nested = reference.get("features")
    if isinstance(nested, Mapping):
        return dict(nested)
    return {k: v for k, v in reference.items() if isinstance(v, Mapping) and "min" in v}


def training_missing_share(reference: Mapping[str, Any]) -> dict[str, float]:
    """Share of training episodes in which each feature was missing (from the bundle's
    reference, `summarise_reference`); features without a stored share are absent."""
    out = {}
    for name, stats in reference_features(reference).items():
        share = stats.get("missing_share") if isinstance(stats, Mapping) else None
        if isinstance(share, int | float) and math.isfinite(share):
            out[name] = float(share)
    return out
