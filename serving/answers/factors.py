"""The top factors of an answer: the largest SHAP contributions, each in plain words."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from serving.answers.words import FeatureWords


def top_factors(
    words: FeatureWords, x: np.ndarray, values: np.ndarray, k: int
) -> list[dict[str, Any]]:
    """Up to `k` features of row `x` by absolute contribution (log-odds), zero ones left out:
    `{feature, group, value, contribution, text}`, e.g. "platelet count 32 ×10⁹/L two days
    before the index date: lowers the chance of response"."""
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    factors = []
    for j in order:
        contribution = float(values[j])
        if contribution == 0.0:
            break
        effect = "raises" if contribution > 0 else "lowers"
        value = float(x[j])
        factors.append(
            {
                "feature": words.names[j],
                "group": words.groups[j],
                "value": None if math.isnan(value) else value,
                "contribution": contribution,
                "text": f"{words.value_words(int(j), value, x)}: {effect} the chance of response",
            }
        )
    return factors
