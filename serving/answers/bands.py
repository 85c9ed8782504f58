"""Risk bands: a calibrated probability of response in words (`low`, `intermediate`, `high`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RiskBands:
    """Probability of response -> band label; `thresholds` are the experiment's cut points.

    A probability equal to a threshold falls in the upper band.
    """

    thresholds: tuple[float, ...] = (0.5, 0.75)
    labels: tuple[str, ...] = ("low", "intermediate", "high")
    operating_threshold: float = 0.5

    def __post_init__(self) -> None:
        thresholds = tuple(float(t) for t in self.thresholds)
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "labels", tuple(self.labels))
        if len(self.labels) != len(thresholds) + 1:
            raise ValueError("RiskBands needs one more label than thresholds")
        if any(not 0 < t < 1 for t in thresholds) or list(thresholds) != sorted(set(thresholds)):
            raise ValueError("RiskBands thresholds must be increasing and inside (0, 1)")
        if not 0 < self.operating_threshold < 1:
            raise ValueError("operating_threshold must be inside (0, 1)")

    def band_of(self, probability: float) -> str:
        return self.labels[int(np.searchsorted(self.thresholds, probability, side="right"))]

    def bands(self, probabilities: np.ndarray) -> np.ndarray:
        index = np.searchsorted(np.asarray(self.thresholds), probabilities, side="right")
        return np.asarray(self.labels, dtype=object)[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "labels": list(self.labels),
            "operating_threshold": self.operating_threshold,
        }
