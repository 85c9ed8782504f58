"""Margins of several boosters for a few rows in one numpy pass, bitwise equal to xgboost's.

A single patient costs one xgboost call per booster (the final model, every fold model or
bootstrap refit, the time model); `_Forest` walks them all at once and proves itself against
xgboost when built (see its docstring). `percentiles` is `np.percentile` without its overhead.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence

import numpy as np
import xgboost as xgb

from serving.predict.treeshap import base_margin, plain_gbtree

log = logging.getLogger(__name__)

#: At most this many rows go through `_Forest` (numpy); more go to xgboost's own predictor.
FOREST_MAX_ROWS = 8


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
        learners = [_learner(booster, aft) for booster in boosters]
        n_features = boosters[0].num_features()
        if any(
            learner is None or booster.num_features() != n_features
            for learner, booster in zip(learners, boosters, strict=True)
        ):
            return None
        forest = cls._flatten(learners, aft)  # type: ignore[arg-type]
        return forest if forest._agrees_with(boosters, n_features) else None

    @classmethod
    def _flatten(cls, learners: Sequence[dict], aft: bool) -> _Forest:
        """The trees of all learners as one set of node arrays, each booster a segment."""
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("feature", "threshold", "left", "right", "missing", "value")
        }
        roots: list[int] = []
        segments: list[tuple[int, int]] = []
        bases: list[np.float32] = []
        depth = offset = 0
        for learner in learners:
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
        return cls(
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

    def _agrees_with(self, boosters: Sequence[xgb.Booster], n_features: int) -> bool:
        """Whether every booster's margins on the probe rows equal this walk's, bit for bit."""
        probes = self._probes(n_features)
        got = self._probe_margins(probes)
        for k, booster in enumerate(boosters):
            expected = booster.inplace_predict(probes, predict_type="margin")
            if np.array_equal(got[k], expected):
                continue
            # xgboost's logf of the base score can be one float32 step from ours (seen for 1 in
            # ~60 bootstrap refits): the neighbours of the base margin are tried before giving up.
            base = self.base[k]
            for step in (1, -1, 2, -2):
                self.base[k] = _float32_steps(base, step)
                if np.array_equal(self._probe_margins(probes)[k], expected):
                    break
            else:
                log.warning("numpy tree walk differs from xgboost; xgboost predicts alone")
                return False
        return True

    def _probe_margins(self, probes: np.ndarray) -> np.ndarray:
        """Margins of the probe rows, walked `FOREST_MAX_ROWS` at a time as in scoring."""
        return np.hstack(
            [
                self.margins(probes[start : start + FOREST_MAX_ROWS])
                for start in range(0, len(probes), FOREST_MAX_ROWS)
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


def percentiles(values: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
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


def _learner(booster: xgb.Booster, aft: bool) -> dict | None:
    """The booster's learner as JSON, or None for what the walk does not reproduce."""
    learner = json.loads(bytes(booster.save_raw("json")))["learner"]
    if aft:
        if learner["objective"]["name"] != "survival:aft":
            return None
        checked = {**learner, "objective": {"name": "binary:logistic"}}  # same tree checks
        return learner if plain_gbtree(checked) else None
    return learner if plain_gbtree(learner) else None
