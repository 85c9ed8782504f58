"""The deployable model: fitted feature pipeline, booster, calibrator and training reference as one.

Training builds a `DeployableModel` from its fitted parts; serving loads it and scores raw cohort
records with it. Everything a score needs travels in this object, so serving never re-implements a
feature. Explanations are the booster's own TreeSHAP (`pred_contribs`) in log-odds: with the bias
column (`base_value`) they add up to the booster's margin. The probability interval, with its stated
level, comes from bootstrap refits of the deployed procedure (`serving.interval`); the chance of
response by each day from an interval-censored AFT model reconciled with the probability
(`serving.survival`). A model saved without bootstrap refits falls back to the 10th-90th percentile
of the fold models' calibrated probabilities (no stated level: `interval_level` is None).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from data.drugs import known_drugs, normalise_drug
from features.registry import (
    GROUPS,
    LAB_ANALYTES,
    feature_label,
    feature_words,
    field_of,
    field_words,
    lower_first,
    number_text,
    unit_text,
    value_words,
)
from serving.interval import BootstrapInterval, SupportEnvelope
from serving.settings import ScoringOptions
from serving.survival import TimeToResponse, median_day
from serving.treeshap import ShapTable, base_margin, plain_gbtree

log = logging.getLogger(__name__)

FORMAT = "ctit-deployable"
FORMAT_VERSION = 1
INTERVAL_PERCENTILES = (10.0, 90.0)
REQUIRED_METADATA = ("name", "version", "label_definition")
_EPS = 1e-7


class ModelLoadError(RuntimeError):
    """A model cannot be loaded: missing, not a ctit model, or corrupted. Names the URI or path."""


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


def _reference_features(reference: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    nested = reference.get("features")
    if isinstance(nested, Mapping):
        return dict(nested)
    return {k: v for k, v in reference.items() if isinstance(v, Mapping) and "min" in v}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


#: At most this many rows go through `_Forest` (numpy); more go to xgboost's own predictor.
_FOREST_MAX_ROWS = 8


class _Forest:
    """The trees of several boosters as flat arrays: their margins for a few rows in one pass.

    XGBoost spends about 150 us of fixed cost per prediction call whatever the size of the model,
    and a patient needs one call per booster (the final model and every fold model). Here the
    trees of all boosters are walked together with numpy (one gather per tree level), and each
    booster's margin is summed as xgboost sums it: in float32, from the base margin, tree by tree
    in order; the answers are therefore the same to the bit. `build` proves that on probe rows
    (feature values at, just below and just above the split thresholds, and missing values) and
    declines (None: xgboost is used) for anything it does not reproduce: objectives other than
    binary:logistic, DART, categorical or vector-leaf trees, or any disagreement.
    """

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        missing: np.ndarray,
        value: np.ndarray,
        roots: np.ndarray,
        segments: list[tuple[int, int]],
        base: np.ndarray,
        depth: int,
    ) -> None:
        self.feature = feature
        self.threshold = threshold
        self.left = left
        self.right = right
        self.missing = missing
        self.value = value
        self.roots = roots
        self.segments = segments
        self.base = base
        self.depth = depth
        # children as one table, (right, left, missing) per node: one gather per level for the
        # next node instead of three plus two selects
        self._children = np.stack([right, left, missing], axis=1).ravel()

    @classmethod
    def build(cls, boosters: Sequence[xgb.Booster], aft: bool = False) -> _Forest | None:
        """The arrays of `boosters`, checked bitwise against xgboost; None if not reproducible.

        `aft`: the boosters are `survival:aft` models (margin = log time; base = log base_score).
        """
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("feature", "threshold", "left", "right", "missing", "value")
        }
        roots: list[int] = []
        segments: list[tuple[int, int]] = []
        bases: list[np.float32] = []
        depth = offset = 0
        n_features = boosters[0].num_features()
        for booster in boosters:
            learner = json.loads(bytes(booster.save_raw("json")))["learner"]
            objective = learner["objective"]["name"]
            if aft:
                if objective != "survival:aft":
                    return None
                learner = {**learner, "objective": {"name": "binary:logistic"}}  # same tree checks
            if not plain_gbtree(learner) or booster.num_features() != n_features:
                return None
            if aft:
                score = np.float32(json.loads(learner["learner_model_param"]["base_score"])[0])
                bases.append(np.float32(math.log(float(score))))
            else:
                bases.append(base_margin(learner))
            first_tree = len(roots)
            for tree in learner["gradient_booster"]["model"]["trees"]:
                left = np.asarray(tree["left_children"], dtype=np.intp)
                right = np.asarray(tree["right_children"], dtype=np.intp)
                nodes = np.arange(len(left))
                leaf = left == -1
                # Leaves point to themselves, so extra levels keep a finished walk in place.
                left = np.where(leaf, nodes, left) + offset
                right = np.where(leaf, nodes, right) + offset
                conditions = np.asarray(tree["split_conditions"], dtype=np.float32)
                parts["feature"].append(np.asarray(tree["split_indices"], dtype=np.intp))
                parts["threshold"].append(np.where(leaf, np.float32(0), conditions))
                parts["left"].append(left)
                parts["right"].append(right)
                parts["missing"].append(
                    np.where(np.asarray(tree["default_left"], dtype=bool), left, right)
                )
                parts["value"].append(np.where(leaf, conditions, np.float32(0)))
                depth = max(depth, _tree_depth(tree["left_children"], tree["right_children"]))
                roots.append(offset)
                offset += len(nodes)
            segments.append((first_tree, len(roots)))
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        forest = cls(
            feature=arrays["feature"],
            threshold=arrays["threshold"].astype(np.float32),
            left=arrays["left"],
            right=arrays["right"],
            missing=arrays["missing"],
            value=arrays["value"].astype(np.float32),
            roots=np.asarray(roots, dtype=np.intp),
            segments=segments,
            base=np.asarray(bases, dtype=np.float32),
            depth=depth,
        )
        probes = forest._probes(n_features)
        got = forest._probe_margins(probes)
        for k, booster in enumerate(boosters):
            expected = booster.inplace_predict(probes, predict_type="margin")
            if np.array_equal(got[k], expected):
                continue
            # xgboost's logf of the base score can be one float32 step from ours (seen for 1 in
            # ~60 bootstrap refits): the neighbours of the base margin are tried before giving up.
            base = forest.base[k]
            for step in (1, -1, 2, -2):
                forest.base[k] = _float32_steps(base, step)
                if np.array_equal(forest._probe_margins(probes)[k], expected):
                    break
            else:
                log.warning("numpy tree walk differs from xgboost; xgboost predicts alone")
                return None
        return forest

    def _probe_margins(self, probes: np.ndarray) -> np.ndarray:
        """Margins of the probe rows, walked `_FOREST_MAX_ROWS` at a time as in scoring."""
        return np.hstack(
            [
                self.margins(probes[start : start + _FOREST_MAX_ROWS])
                for start in range(0, len(probes), _FOREST_MAX_ROWS)
            ]
        )

    def _probes(self, n_features: int) -> np.ndarray:
        """Rows at, just below and just above split thresholds, with missing values mixed in."""
        rng = np.random.default_rng(0)
        internal = self.left != np.arange(len(self.left))
        rows = np.full((96, n_features), np.nan, dtype=np.float32)
        for j in range(n_features):
            cuts = self.threshold[internal & (self.feature == j)]
            if cuts.size == 0:
                rows[:, j] = rng.normal(size=len(rows)).astype(np.float32)
                continue
            picked = rng.choice(cuts, size=len(rows))
            step = rng.integers(-1, 2, size=len(rows))
            picked = np.where(step < 0, np.nextafter(picked, np.float32(-np.inf)), picked)
            rows[:, j] = np.where(step > 0, np.nextafter(picked, np.float32(np.inf)), picked)
        rows[rng.random(rows.shape) < 0.15] = np.nan
        rows[0] = np.nan
        return rows

    def margins(self, X: np.ndarray) -> np.ndarray:
        """Margins (one row per booster, one column per row of X), float32 like xgboost's."""
        node = np.broadcast_to(self.roots, (X.shape[0], len(self.roots)))
        flat = np.ascontiguousarray(X, dtype=np.float32).ravel()
        row_start = (np.arange(X.shape[0]) * X.shape[1])[:, None]
        for _ in range(self.depth):
            x = flat[row_start + self.feature[node]]
            way = (x < self.threshold[node]).view(np.int8) + 2 * np.isnan(x).view(np.int8)
            node = self._children[node * 3 + way]
        leaves = self.value[node]
        out = np.empty((len(self.segments), X.shape[0]), dtype=np.float32)
        for k, (start, end) in enumerate(self.segments):
            terms = np.empty((X.shape[0], end - start + 1), dtype=np.float32)
            terms[:, 0] = self.base[k]
            terms[:, 1:] = leaves[:, start:end]
            out[k] = np.add.accumulate(terms, axis=1, dtype=np.float32)[:, -1]
        return out


def _percentiles(values: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """np.percentile(values, q, axis=0) with linear interpolation, without its overhead."""
    ordered = np.sort(values, axis=0)
    out = []
    for q in qs:
        position = (ordered.shape[0] - 1) * q / 100.0
        below = math.floor(position)
        above = min(below + 1, ordered.shape[0] - 1)
        out.append(ordered[below] + (position - below) * (ordered[above] - ordered[below]))
    return out


def _float32_steps(value: np.float32, steps: int) -> np.float32:
    """`value` moved `steps` float32 representable numbers up (negative: down)."""
    out = np.float32(value)
    direction = np.float32(np.inf if steps > 0 else -np.inf)
    for _ in range(abs(steps)):
        out = np.nextafter(out, direction)
    return out


def _tree_depth(left: Sequence[int], right: Sequence[int]) -> int:
    """Edges on the longest path from the root to a leaf (-1 marks a leaf's children)."""
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, level = stack.pop()
        if left[node] == -1:
            deepest = max(deepest, level)
        else:
            stack.extend(((left[node], level + 1), (right[node], level + 1)))
    return deepest


class Answer(dict):
    """One episode's answer (a plain dict to JSON) that also carries the model's input row.

    `model_input` is `(feature_names, float32 row)`: exactly what the booster saw, for the audit
    log's monitoring table (`serving.audit`); it never appears in the JSON. A copy of the dict
    (`dict(answer)`, `{**answer}`) does not keep it.
    """

    __slots__ = ("model_input",)


@dataclass
class _Prepared:
    """Model features of some episodes as one float32 matrix."""

    episode_ids: list[str]
    X: np.ndarray
    notes: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class DeployableModel:
    """Everything a score needs: pipeline, booster, calibrator, fold models, bands and reference."""

    pipeline: Any
    booster: xgb.Booster
    calibrator: Calibrator
    fold_boosters: list[xgb.Booster] = field(default_factory=list)
    bands: RiskBands = field(default_factory=RiskBands)
    reference: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    interval_model: BootstrapInterval | None = None
    time_model: TimeToResponse | None = None

    def __post_init__(self) -> None:
        missing = [key for key in REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise ValueError(f"DeployableModel metadata lacks {', '.join(missing)}")
        self.feature_names: list[str] = [str(n) for n in self.pipeline.feature_names_]
        extra = [] if self.interval_model is None else self.interval_model.boosters
        if self.time_model is not None:
            extra = [*extra, self.time_model.booster]
        for booster in (self.booster, *self.fold_boosters, *extra):
            if booster.num_features() != len(self.feature_names):
                raise ValueError(
                    f"a booster expects {booster.num_features()} features but the pipeline "
                    f"gives {len(self.feature_names)}"
                )
            names = booster.feature_names
            if names is not None and list(names) != self.feature_names:
                raise ValueError("booster feature names differ from the pipeline's feature_names_")
            # One thread per call: a second core only spins for single rows (PERFORMANCE.md).
            booster.set_param({"nthread": 1})
        self.groups: list[str] = [str(self.pipeline.group_of(n)) for n in self.feature_names]
        self._column = {name: j for j, name in enumerate(self.feature_names)}
        reference = _reference_features(self.reference)
        lows, highs = [], []
        for name in self.feature_names:
            stats = reference.get(name) or {}
            lows.append(np.nan if stats.get("min") is None else float(stats["min"]))
            highs.append(np.nan if stats.get("max") is None else float(stats["max"]))
        self._low = np.asarray(lows)
        self._high = np.asarray(highs)
        self._labels = [self._label_of(name) for name in self.feature_names]
        self._known_drugs = frozenset(known_drugs())
        self._info = {key: str(self.metadata[key]) for key in REQUIRED_METADATA}
        # A single patient: every booster in one numpy pass instead of one xgboost call each.
        # The interval needs the bootstrap refits (or, without them, the fold models).
        self._interval_boosters = (
            self.interval_model.boosters if self.interval_model is not None else self.fold_boosters
        )
        self._forest = _Forest.build([self.booster, *self._interval_boosters])
        self._aft_forest = (
            None if self.time_model is None else _Forest.build([self.time_model.booster], aft=True)
        )
        self._support = SupportEnvelope(
            self.feature_names,
            reference,
            [unit == "0/1" or "=" in name for name, (_d, unit, _g) in zip(
                self.feature_names, self._labels, strict=True
            )],
        )  # fmt: skip
        self._shap: ShapTable | None = None
        self._shap_built = False

    # -- identity -------------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, str]:
        """`name`, `version` and `label_definition`, as every answer carries them."""
        return {key: str(self.metadata[key]) for key in REQUIRED_METADATA}

    # -- features -------------------------------------------------------------------------------

    def prepare(self, cohort: Any) -> _Prepared:
        """The model features of every episode of the cohort, in the cohort's episode order."""
        matrix = self.pipeline.transform_matrix(cohort)  # columns: self.feature_names
        messages = matrix.warnings
        episode_ids = [str(e) for e in matrix.episode_ids.tolist()]
        X = np.ascontiguousarray(matrix.X, dtype=np.float32)
        notes: dict[str, list[str]] = {}
        if messages:
            known = set(episode_ids)
            for message in messages:  # FeatureWarning: the episode it is about, and its text
                episode_id = getattr(message, "episode_id", None)
                if episode_id in known:
                    notes.setdefault(episode_id, []).append(message.text)
        return _Prepared(episode_ids, X, notes)

    # -- predictions ----------------------------------------------------------------------------

    def predict_matrix(self, X: np.ndarray, interval: bool = True) -> dict[str, np.ndarray]:
        """Margin, calibrated probability, interval and band of each row of a float32 matrix.

        The interval costs one prediction per fold model; without it (`interval=False`) the
        interval columns are NaN.
        """
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[0] == 0:
            empty = np.empty(0)
            return {
                "margin": empty,
                "probability": empty,
                "interval_low": empty,
                "interval_high": empty,
                "band": np.empty(0, dtype=object),
            }
        small = self._forest is not None and X.shape[0] <= _FOREST_MAX_ROWS
        margins = self._forest.margins(X) if small else None
        if margins is not None:
            margin = margins[0].astype(np.float64)
        else:
            margin = self.booster.inplace_predict(X, predict_type="margin").astype(np.float64)
        probability = self.calibrator.transform_margin(margin)
        if not interval:
            low = high = np.full_like(probability, np.nan)
        elif self.interval_model is not None:
            boot = margins[1:] if margins is not None else self.interval_model.margins(X)
            low, high = self.interval_model.bounds(probability, boot)
            rows, alternatives = self._support.alternatives(X)
            if rows.size:
                low, high = SupportEnvelope.widen(low, high, rows, *self._bootstrap(alternatives))
        elif len(self.fold_boosters) >= 2:
            if margins is not None:
                fold_margins = margins[1:]
            else:
                fold_margins = np.vstack(
                    [b.inplace_predict(X, predict_type="margin") for b in self.fold_boosters]
                )
            folds = self.calibrator.transform_margin(fold_margins)
            low, high = _percentiles(folds, INTERVAL_PERCENTILES)
            low = np.minimum(low, probability)
            high = np.maximum(high, probability)
        else:
            low = high = probability
        return {
            "margin": margin,
            "probability": probability,
            "interval_low": low,
            "interval_high": high,
            "band": self.bands.bands(probability),
        }

    def _bootstrap(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap interval alone (no support envelope) of each row."""
        assert self.interval_model is not None
        if self._forest is not None and X.shape[0] <= 4 * _FOREST_MAX_ROWS:
            chunks = range(0, X.shape[0], _FOREST_MAX_ROWS)
            margins = np.hstack([self._forest.margins(X[k : k + _FOREST_MAX_ROWS]) for k in chunks])
            margin, boot = margins[0].astype(np.float64), margins[1:]
        else:
            margin = self.booster.inplace_predict(X, predict_type="margin").astype(np.float64)
            boot = self.interval_model.margins(X)
        return self.interval_model.bounds(self.calibrator.transform_margin(margin), boot)

    @property
    def interval_level(self) -> float | None:
        """The interval's nominal coverage (None: a fold-percentile interval, no stated level)."""
        return None if self.interval_model is None else self.interval_model.level

    def response_curves(self, X: np.ndarray, probability: np.ndarray) -> np.ndarray | None:
        """P(response by day d), d = 1..horizon, per row (None without a time model)."""
        if self.time_model is None or X.shape[0] == 0:
            return None
        if self._aft_forest is not None and X.shape[0] <= _FOREST_MAX_ROWS:
            mu = self._aft_forest.margins(X)[0].astype(np.float64)
        else:
            mu = self.time_model.location(X)
        return self.time_model.curves(probability, mu)

    def describe_uncertainty(self) -> dict[str, Any]:
        """What /v1/model says about `interval` and `response_by_day` (meaning, level, evidence)."""
        if self.interval_model is not None:
            interval = self.interval_model.meaning()
        else:
            interval = (
                "10th-90th percentile of the CV fold models' calibrated probabilities "
                f"({len(self.fold_boosters)} fold models), widened to contain the probability; "
                "no stated coverage"
            )
        out: dict[str, Any] = {"interval": interval, "interval_level": self.interval_level}
        time = self.metadata.get("time_to_response") or {}
        out["time_to_response"] = (
            None
            if self.time_model is None
            else {
                "meaning": self.time_model.meaning(),
                "horizon_days": self.time_model.horizon_days,
                "distribution": self.time_model.distribution,
                "scale": self.time_model.scale,
                "metrics": time.get("metrics", {}),
            }
        )
        return out

    def predict_proba(self, cohort: Any, interval: bool = True) -> pd.DataFrame:
        """Fast scores without explanations, one row per episode (index `episode_id`)."""
        prepared = self.prepare(cohort)
        out = pd.DataFrame(self.predict_matrix(prepared.X, interval), index=prepared.episode_ids)
        out.index.name = "episode_id"
        return out[["probability", "interval_low", "interval_high", "band", "margin"]]

    def warm(self) -> None:
        """Build the precomputed TreeSHAP table now (the first explanation would otherwise)."""
        if not self._shap_built:
            try:
                self._shap = ShapTable.build(self.booster)
            except Exception as exc:  # noqa: BLE001 - xgboost explains instead; never fail a load
                log.warning("no precomputed TreeSHAP (%s); xgboost explains", type(exc).__name__)
                self._shap = None
            self._shap_built = True

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Exact TreeSHAP in log-odds, one column per feature plus the bias column last.

        From the precomputed table (`serving.treeshap`, proven against xgboost's `pred_contribs`
        when built), else from `pred_contribs` itself.
        """
        self.warm()
        if self._shap is not None:
            return self._shap.contributions(X)
        matrix = xgb.DMatrix(np.ascontiguousarray(X, dtype=np.float32), missing=np.nan, nthread=1)
        return self.booster.predict(matrix, pred_contribs=True, validate_features=False)

    def score(
        self,
        cohort: Any,
        explain: bool = True,
        options: ScoringOptions | None = None,
    ) -> list[dict[str, Any]]:
        """The answer of DESIGN.md "One patient over HTTP" for every episode of the cohort."""
        prepared = self.prepare(cohort)
        return self.answers(prepared, cohort, explain, options or ScoringOptions())

    def answers(
        self, prepared: _Prepared, cohort: Any, explain: bool, options: ScoringOptions
    ) -> list[dict[str, Any]]:
        """Answers for already prepared features (`cohort` gives the regimens for drug checks)."""
        X = prepared.X
        pred = self.predict_matrix(X)
        curves = self.response_curves(X, pred["probability"])
        level = self.interval_level
        contribs = self.contributions(X) if explain and X.shape[0] else None
        unknown = self._unknown_drugs(cohort) if explain else {}
        model = self.info
        names = tuple(self.feature_names)
        # Python floats and strings once for all episodes (indexing numpy per value is slower).
        probability = pred["probability"].tolist()
        low, high = pred["interval_low"].tolist(), pred["interval_high"].tolist()
        band, margin = pred["band"].tolist(), pred["margin"].tolist()
        out = []
        for i, episode_id in enumerate(prepared.episode_ids):
            answer = Answer(
                {
                    "episode_id": episode_id,
                    "probability": probability[i],
                    "interval": [low[i], high[i]],
                    "interval_level": level,
                    "response_by_day": None,
                    "median_days_to_response": None,
                    "band": str(band[i]),
                    "margin": margin[i],
                    "base_value": None,
                    "contributions": None,
                    "group_contributions": None,
                    "top_factors": None,
                    "warnings": [],
                    "model": model,
                }
            )
            answer.model_input = (names, X[i])
            if curves is not None:
                answer["response_by_day"] = curves[i].tolist()
                answer["median_days_to_response"] = median_day(curves[i])
            if contribs is not None:
                row = contribs[i]
                answer["base_value"] = float(row[-1])
                values = row[:-1].astype(np.float64)
                answer["contributions"] = dict(
                    zip(self.feature_names, values.tolist(), strict=True)
                )
                groups = dict.fromkeys(GROUPS, 0.0)
                for group, value in zip(self.groups, values.tolist(), strict=True):
                    groups[group] = groups.get(group, 0.0) + value
                answer["group_contributions"] = groups
                answer["top_factors"] = self._factors(X[i], values, options.top_factors)
                answer["warnings"] = (
                    [
                        {"code": "unseen_category", "message": note, "feature": None}
                        for note in prepared.notes.get(episode_id, [])
                    ]
                    + self._warnings(X[i], options)
                    + unknown.get(episode_id, [])
                )
                answer["warnings"] += missing_input_warnings(self, X[i], answer["warnings"])
            out.append(answer)
        return out

    # -- explanations in words ------------------------------------------------------------------

    def _label_of(self, name: str) -> tuple[str, str, str]:
        """(clinical name, unit, group) of a feature, for plain-word factors and warnings
        (the wording is `features.registry`'s, shared with the page and the report)."""
        unit = feature_words(name)["unit"]
        return lower_first(feature_label(name)), unit, self.pipeline.group_of(name)

    def _value_words(self, j: int, value: float, x: np.ndarray) -> str:
        name = self.feature_names[j]
        days_since = None
        if name.endswith("_last"):
            age = self._column.get(name.removesuffix("_last") + "_days_since")
            if age is not None:
                days_since = float(x[age])
        return value_words(name, value, days_since)

    def _factors(self, x: np.ndarray, values: np.ndarray, k: int) -> list[dict[str, Any]]:
        order = np.argsort(-np.abs(values), kind="stable")[:k]
        factors = []
        for j in order:
            contribution = float(values[j])
            if contribution == 0.0:
                break
            effect = "raises" if contribution > 0 else "lowers"
            factors.append(
                {
                    "feature": self.feature_names[j],
                    "group": self.groups[j],
                    "value": _finite(float(x[j])),
                    "contribution": contribution,
                    "text": f"{self._value_words(int(j), float(x[j]), x)}: "
                    f"{effect} the chance of response",
                }
            )
        return factors

    # -- warnings -------------------------------------------------------------------------------

    def _warnings(self, x: np.ndarray, options: ScoringOptions) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for alias in options.key_labs:
            if alias not in LAB_ANALYTES:
                continue
            prefix, name, _unit = LAB_ANALYTES[alias]
            last = self._column.get(f"{prefix}_last")
            age = self._column.get(f"{prefix}_days_since")
            if last is None:
                continue
            if math.isnan(float(x[last])):
                out.append(
                    {
                        "code": "missing_lab",
                        "message": f"no {name} on or before the index date",
                        "feature": f"{prefix}_last",
                    }
                )
                continue
            days = float(x[age]) if age is not None else math.nan
            if alias == "PLT" and days > options.baseline_window_days:
                out.append(
                    {
                        "code": "missing_baseline",
                        "message": f"no platelet count in the {options.baseline_window_days} days "
                        f"up to the index date (the last is {_number(days)} days old): the "
                        "response label needs a baseline",
                        "feature": "plt_days_since",
                    }
                )
            elif days > options.stale_lab_days:
                out.append(
                    {
                        "code": "stale_lab",
                        "message": f"the last {name} is {_number(days)} days old "
                        f"(more than {options.stale_lab_days})",
                        "feature": f"{prefix}_days_since",
                    }
                )
        with np.errstate(invalid="ignore"):
            outside = np.flatnonzero((x < self._low) | (x > self._high))
        for j in outside:
            name = self.feature_names[j]
            out.append(
                {
                    "code": "out_of_range",
                    "message": self._out_of_range_words(int(j), float(x[j])),
                    "feature": name,
                }
            )
        return out

    def _out_of_range_words(self, j: int, value: float) -> str:
        """'albumin 61 g/L: above the highest value seen in training (52 g/L); the model
        extrapolates' (a 0/1 feature: 'not seen in training')."""
        name = self.feature_names[j]
        _description, unit, _group = self._labels[j]
        words = value_words(name, value)
        if unit == "0/1" or "=" in name:
            return f"{words}: not seen in training; the model extrapolates"
        side, bound = ("below the lowest", self._low[j])
        if value > self._high[j]:
            side, bound = ("above the highest", self._high[j])
        limit = f"{_number(float(bound))} {unit_text(unit)}".rstrip()
        return f"{words}: {side} value seen in training ({limit}); the model extrapolates"

    def _unknown_drugs(self, cohort: Any) -> dict[str, list[dict[str, Any]]]:
        """Unknown drug names given up to each episode's index date (their class is not counted)."""
        regimens = cohort.regimens
        if regimens is None or len(regimens) == 0:
            return {}
        names: dict[str, list[tuple[Any, str]]] = {}
        for patient_id, start, drugs in zip(
            regimens["patient_id"], regimens["start_date"], regimens["drugs"], strict=True
        ):
            if not isinstance(drugs, str):
                continue
            for drug in drugs.split(";"):
                drug = drug.strip()
                if drug and normalise_drug(drug) not in self._known_drugs:
                    names.setdefault(str(patient_id), []).append((start, drug))
        if not names:
            return {}
        out: dict[str, list[dict[str, Any]]] = {}
        episodes = cohort.episodes
        for episode_id, patient_id, index_date in zip(
            episodes["episode_id"], episodes["patient_id"], episodes["index_date"], strict=True
        ):
            # only what the features could have seen: regimens started on or before the index
            given = {drug for start, drug in names.get(str(patient_id), ()) if start <= index_date}
            for drug in sorted(given):
                out.setdefault(str(episode_id), []).append(
                    {
                        "code": "unknown_drug",
                        "message": f"unknown drug {drug!r}: no drug class, so its exposure is "
                        "not counted",
                        "feature": None,
                    }
                )
        return out

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the model to a directory with a manifest of SHA-256 digests; returns the path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        blobs: dict[str, bytes] = {
            "booster.ubj": bytes(self.booster.save_raw("ubj")),
            "pipeline.pkl": pickle.dumps(self.pipeline, protocol=pickle.HIGHEST_PROTOCOL),
            "calibrator.json": _dumps(self.calibrator.to_dict()),
            "bands.json": _dumps(self.bands.to_dict()),
            "reference.json": _dumps(self.reference),
            "metadata.json": _dumps(self.metadata),
        }
        for k, booster in enumerate(self.fold_boosters):
            blobs[f"fold_{k:02d}.ubj"] = bytes(booster.save_raw("ubj"))
        if self.interval_model is not None:
            blobs.update(self.interval_model.to_blobs(_dumps))
        if self.time_model is not None:
            blobs.update(self.time_model.to_blobs(_dumps))
        for name, blob in blobs.items():
            (directory / name).write_bytes(blob)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_folds": len(self.fold_boosters),
            "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
        }
        (directory / "manifest.json").write_bytes(_dumps(manifest))
        return directory

    @classmethod
    def load(cls, directory: str | Path, uri: str | None = None) -> DeployableModel:
        """Read a saved model, checking every file against the manifest.

        Raises:
            ModelLoadError: naming `uri` (or the directory) and what is wrong.
        """
        directory = Path(directory)
        where = uri or str(directory)
        manifest_path = directory / "manifest.json"
        if not directory.is_dir():
            raise ModelLoadError(f"model {where}: no such directory")
        if not manifest_path.is_file():
            raise ModelLoadError(f"model {where}: not a ctit deployable model (no manifest.json)")
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except ValueError as exc:
            raise ModelLoadError(f"model {where}: manifest.json is corrupted ({exc})") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(
                f"model {where}: unsupported format {manifest.get('format')!r} "
                f"version {manifest.get('format_version')!r} (this code reads {FORMAT} "
                f"version {FORMAT_VERSION})"
            )
        blobs: dict[str, bytes] = {}
        for name, digest in manifest.get("files", {}).items():
            path = directory / name
            if not path.is_file():
                raise ModelLoadError(f"model {where}: file {name} is missing")
            blob = path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != digest:
                raise ModelLoadError(
                    f"model {where}: file {name} is corrupted (SHA-256 differs from the manifest)"
                )
            blobs[name] = blob
        try:
            boosters = {}
            for name, blob in blobs.items():
                if name == "booster.ubj" or (name.startswith("fold_") and name.endswith(".ubj")):
                    booster = xgb.Booster()
                    booster.load_model(bytearray(blob))
                    boosters[name] = booster
            # The pipeline pickle is trusted once its digest matches the manifest written with it.
            pipeline = pickle.load(io.BytesIO(blobs["pipeline.pkl"]))
            bands = json.loads(blobs["bands.json"])
            return cls(
                pipeline=pipeline,
                booster=boosters["booster.ubj"],
                calibrator=Calibrator.from_dict(json.loads(blobs["calibrator.json"])),
                fold_boosters=[boosters[n] for n in sorted(boosters) if n.startswith("fold_")],
                bands=RiskBands(
                    thresholds=tuple(bands["thresholds"]),
                    labels=tuple(bands["labels"]),
                    operating_threshold=float(bands["operating_threshold"]),
                ),
                reference=json.loads(blobs["reference.json"]),
                metadata=json.loads(blobs["metadata.json"]),
                interval_model=BootstrapInterval.from_blobs(blobs, Calibrator.from_dict),
                time_model=TimeToResponse.from_blobs(blobs),
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # any failure to rebuild is a broken artifact, named as such
            raise ModelLoadError(
                f"model {where}: cannot be rebuilt ({type(exc).__name__}: {exc})"
            ) from exc


def _dumps(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=_json_default).encode("utf-8")


def _number(value: float) -> str:
    return "NA" if math.isnan(value) else number_text(value)


RARELY_MISSING = 0.05


def training_missing_share(model: DeployableModel) -> dict[str, float]:
    """Share of training episodes in which each feature was missing (from the model bundle's
    reference, `summarise_reference`); features without a stored share are absent."""
    out = {}
    for name, stats in _reference_features(model.reference).items():
        share = stats.get("missing_share") if isinstance(stats, Mapping) else None
        if isinstance(share, int | float) and math.isfinite(share):
            out[name] = float(share)
    return out


def missing_input_warnings(
    model: DeployableModel, x: np.ndarray, already: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """`missing_lab` / `missing_field` warnings for features missing in this row that were
    missing in under `RARELY_MISSING` of the training episodes.

    One `missing_lab` per analyte without any value (unless the key-lab check already warned),
    then one per other lab feature missing while its analyte is present (a trend needs two
    values); one `missing_field` per clinical field, listing it by name, so a clinician sees which
    inputs the model had to treat as unknown.
    """
    shares = _missing_shares(model)
    warned = {w.get("feature") for w in already if w.get("code") == "missing_lab"}
    out: list[dict[str, Any]] = []
    fields: dict[str, float] = {}
    absent_analytes: set[str] = set()
    for alias, (prefix, name, _unit) in LAB_ANALYTES.items():
        j = model._column.get(f"{prefix}_last")
        if j is None or not math.isnan(float(x[j])):
            continue
        absent_analytes.add(prefix)
        share = shares.get(f"{prefix}_last")
        if share is None or share >= RARELY_MISSING or f"{prefix}_last" in warned:
            continue
        out.append(
            {
                "code": "missing_lab",
                "message": f"no {name} ({alias}) on or before the index date; measured in "
                f"{_percent(1 - share)} of the training episodes",
                "feature": f"{prefix}_last",
            }
        )
    for j, feature in enumerate(model.feature_names):
        if not math.isnan(float(x[j])):
            continue
        share = shares.get(feature)
        if share is None or share >= RARELY_MISSING:
            continue
        group = model.groups[j]
        if group in ("labs", "platelet_history"):
            prefix = feature.split("_", 1)[0]
            if prefix in absent_analytes or feature in warned:
                continue
            description = model._labels[j][0]
            out.append(
                {
                    "code": "missing_lab",
                    "message": f"{description} could not be computed from the labs given; "
                    f"available in {_percent(1 - share)} of the training episodes",
                    "feature": feature,
                }
            )
        elif group == "clinical":
            field_name = field_of(feature)
            fields[field_name] = min(share, fields.get(field_name, 1.0))
    for field_name, share in fields.items():
        out.append(
            {
                "code": "missing_field",
                "message": f"{field_words(field_name)} not given; recorded for "
                f"{_percent(1 - share)} of the training episodes (the model treats it as unknown)",
                "feature": field_name,
            }
        )
    return out


def _missing_shares(model: DeployableModel) -> dict[str, float]:
    cached = getattr(model, "_missing_share_cache", None)
    if cached is None:
        cached = training_missing_share(model)
        model._missing_share_cache = cached
    return cached


def _percent(share: float) -> str:
    value = 100 * share
    return f"{value:.0f}%" if value < 99.5 or value == 100 else ">99%"


def episodes_without_platelets(model: DeployableModel, prepared: _Prepared) -> list[int]:
    """Rows (positions) of episodes with no platelet count on or before the index date.

    Such an episode is not estimable: the response label is defined from the platelet count at
    the index date, and a score without one would be a guess (a record with no labs at all scored
    0.71). Uses the model's `plt_last` feature, the same cut-off as every other feature.
    """
    j = model._column.get("plt_last")
    if j is None or prepared.X.shape[0] == 0:
        return []
    return np.flatnonzero(np.isnan(prepared.X[:, j])).tolist()
