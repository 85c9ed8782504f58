"""A model's features in the registry's words, with the training range each was seen in.

The wording of a feature (clinical name, unit, value in a sentence) is owned by
`features.registry`; `FeatureWords` only looks it up once per model feature so that the answers
of many episodes reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features.registry import (
    feature_label,
    feature_words,
    lower_first,
    number_text,
    unit_text,
    value_words,
)
from serving.bundle.reference import reference_features, training_missing_share


def number(value: float) -> str:
    """A number as the answers write it ("NA" when missing)."""
    return "NA" if math.isnan(value) else number_text(value)


class FeatureWords:
    """The model's features in words: label, unit and group of each, their training range
    (`low`, `high`, NaN when unknown) and the share of training episodes missing each."""

    def __init__(
        self, names: Sequence[str], groups: Sequence[str], reference: Mapping[str, Any]
    ) -> None:
        self.names = [str(n) for n in names]
        self.groups = [str(g) for g in groups]
        self.column = {name: j for j, name in enumerate(self.names)}
        stats = reference_features(reference)
        self.low = np.asarray([_stat(stats, name, "min") for name in self.names])
        self.high = np.asarray([_stat(stats, name, "max") for name in self.names])
        #: (clinical name starting lower-case, unit) of each feature.
        self.labels = [
            (lower_first(feature_label(n)), feature_words(n)["unit"]) for n in self.names
        ]
        #: Whether each feature is a 0/1 flag (one-hot levels included).
        self.binary = [
            unit == "0/1" or "=" in n
            for n, (_label, unit) in zip(self.names, self.labels, strict=True)
        ]
        self.missing_share = training_missing_share(reference)

    def value_words(self, j: int, value: float, x: np.ndarray) -> str:
        """Feature `j` of row `x` in a sentence (a last lab value says how old it is)."""
        name = self.names[j]
        days_since = None
        if name.endswith("_last"):
            age = self.column.get(name.removesuffix("_last") + "_days_since")
            if age is not None:
                days_since = float(x[age])
        return value_words(name, value, days_since)

    def out_of_range_words(self, j: int, value: float) -> str:
        """'albumin 61 g/L: above the highest value seen in training (52 g/L); the model
        extrapolates' (a 0/1 feature: 'not seen in training')."""
        name = self.names[j]
        words = value_words(name, value)
        if self.binary[j]:
            return f"{words}: not seen in training; the model extrapolates"
        side, bound = ("below the lowest", self.low[j])
        if value > self.high[j]:
            side, bound = ("above the highest", self.high[j])
        limit = f"{number(float(bound))} {unit_text(self.labels[j][1])}".rstrip()
        return f"{words}: {side} value seen in training ({limit}); the model extrapolates"


def _stat(stats: Mapping[str, Mapping[str, Any]], name: str, key: str) -> float:
    value = (stats.get(name) or {}).get(key)
    return np.nan if value is None else float(value)
