"""Exact TreeSHAP for few rows from tables precomputed per leaf (path-dependent, as xgboost's).

XGBoost's `pred_contribs` runs Lundberg's TreeSHAP recursion for every row: about 2-3 ms for one
patient with 200 depth-6 trees, most of a request's budget. The recursion computes, for each leaf
`l` with value `v`, a Shapley value of the game

    g_l(S) = v * prod_{k in P_l, k in S} o_k * prod_{k in P_l, k not in S} z_k

where `P_l` are the distinct features split on along the leaf's path, `z_k` the product of the
cover ratios (child / parent `sum_hessian`) of the splits on `k`, and `o_k` is 1 when the row
follows every split on `k` towards the leaf, else 0. `o` is the only part that depends on the row,
and with at most `d` distinct features per path it takes at most 2**d patterns. So each leaf's
Shapley values are computed once for every pattern when the model loads (Fast TreeSHAP v2, Yang
2021); a row then needs only its patterns (one comparison per split on the path), a gather and a
sum. The base value is `g(empty set)` summed over leaves plus the booster's base margin.

`ShapTable.build` proves its answers against xgboost's own `pred_contribs` on probe rows and
declines (None) for what it does not reproduce (see `serving.predict.forest._Forest`): objectives
other than binary:logistic, DART, categorical or vector-leaf trees, tables above `max_bytes`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from math import factorial
from typing import Any

import numpy as np
import xgboost as xgb

log = logging.getLogger(__name__)

#: Largest table built (bytes); deeper or larger models keep xgboost's `pred_contribs`.
MAX_TABLE_BYTES = 256 * 2**20
#: Largest gap to xgboost's float32 contributions accepted on the probe rows (log-odds); the
#: table is float64, xgboost accumulates in float32 (gaps of a few 1e-6 for 200 trees).
TOLERANCE = 2e-5
_ROWS_PER_BLOCK = 32
_GATHER_BITS = np.uint64(0x0102040810204080)


def base_margin(learner: dict[str, Any]) -> np.float32:
    """The booster's base margin as xgboost computes it: -logf(1/p - 1) in float32."""
    p = np.float32(json.loads(learner["learner_model_param"]["base_score"])[0])
    inner = np.float32(np.float32(1.0) / p) - np.float32(1.0)
    return np.float32(-np.float32(math.log(float(inner))))


def plain_gbtree(learner: dict[str, Any]) -> bool:
    """A single-output binary:logistic gbtree without categorical or vector-leaf trees."""
    params = learner["learner_model_param"]
    gbm = learner["gradient_booster"]
    return (
        learner["objective"]["name"] == "binary:logistic"
        and gbm["name"] == "gbtree"
        and int(params["num_target"]) == 1
        and int(params["num_class"]) == 0
        and len(json.loads(params["base_score"])) == 1
        and not any(
            any(tree["split_type"]) or int(tree["tree_param"]["size_leaf_vector"]) > 1
            for tree in gbm["model"]["trees"]
        )
    )


@dataclass(frozen=True)
class _Leaf:
    value: float
    features: tuple[int, ...]  # distinct features on the path, in order of first split
    zeros: tuple[float, ...]  # their products of cover ratios
    splits: tuple[tuple[int, bool, int], ...]  # internal node number, goes left?, slot


def _leaves(tree: dict[str, Any], numbering: dict[int, int]) -> Iterator[_Leaf]:
    """Every leaf of one tree with its path (internal nodes numbered by `numbering`)."""
    left, right = tree["left_children"], tree["right_children"]
    feature, threshold, cover = tree["split_indices"], tree["split_conditions"], tree["sum_hessian"]
    stack: list[tuple[int, tuple[tuple[int, int, bool, float], ...]]] = [(0, ())]
    while stack:
        node, path = stack.pop()
        if left[node] == -1:
            features: list[int] = []
            zeros: list[float] = []
            splits = []
            for number, f, goes_left, ratio in path:
                if f not in features:
                    features.append(f)
                    zeros.append(1.0)
                slot = features.index(f)
                zeros[slot] *= ratio
                splits.append((number, goes_left, slot))
            yield _Leaf(float(threshold[node]), tuple(features), tuple(zeros), tuple(splits))
            continue
        parent = float(cover[node])
        for child, goes_left in ((left[node], True), (right[node], False)):
            step = (numbering[node], int(feature[node]), goes_left, float(cover[child]) / parent)
            stack.append((child, (*path, step)))


def _weights(d: int) -> np.ndarray:
    """Shapley weights |S|! (d - |S| - 1)! / d! for |S| = 0..d-1."""
    return np.array([factorial(s) * factorial(d - s - 1) / factorial(d) for s in range(d)])


def _pattern_values(zeros: np.ndarray) -> np.ndarray:
    """Shapley values per pattern: shape (leaves, 2**d, d) for leaves with d distinct features.

    For pattern `o` (bit k set: the row follows the splits on feature k) and feature j:
    (o_j - z_j) * prod_{k not j, o_k = 0} z_k * sum_s w(s) e_{|A|-s}(z_A), A = {k != j: o_k = 1},
    with e the elementary symmetric polynomials (subsets S of A taken as "present").
    """
    n, d = zeros.shape
    weights = _weights(d)
    out = np.zeros((n, 2**d, d))
    for pattern in range(2**d):
        ones = [k for k in range(d) if pattern >> k & 1]
        for j in range(d):
            present = [k for k in ones if k != j]
            absent = [k for k in range(d) if k != j and k not in ones]
            # e[t] = sum over subsets T of `present` of size t of prod z_T
            e = [np.ones(n)] + [np.zeros(n) for _ in present]
            for k in present:
                for t in range(len(e) - 1, 0, -1):
                    e[t] = e[t] + zeros[:, k] * e[t - 1]
            # |S| = s features present means |A| - s of them take their zero fraction
            total = sum(weights[s] * e[len(present) - s] for s in range(len(present) + 1))
            scale = np.prod(zeros[:, absent], axis=1) if absent else 1.0
            own = (1.0 if j in ones else 0.0) - zeros[:, j]
            out[:, pattern, j] = own * scale * total
    return out


def _flatten(trees: list[dict[str, Any]]) -> tuple[list[tuple[int, float, bool]], list[_Leaf]]:
    """The internal nodes of all trees, numbered in order (split feature, threshold, missing
    goes left), and every leaf with its path over those numbers."""
    leaves: list[_Leaf] = []
    nodes: list[tuple[int, float, bool]] = []
    for tree in trees:
        numbering = {}
        for node, left in enumerate(tree["left_children"]):
            if left != -1:
                numbering[node] = len(nodes)
                nodes.append(
                    (
                        int(tree["split_indices"][node]),
                        float(tree["split_conditions"][node]),
                        bool(tree["default_left"][node]),
                    )
                )
        leaves.extend(_leaves(tree, numbering))
    return nodes, leaves


def _paths(
    leaves: list[_Leaf], n_nodes: int, n_features: int, depth: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per leaf: the edge of each split of its path (2 * node + 1 when it goes right; padded
    with an edge never followed), the feature slot of each split (-1: padding), and the feature
    of each slot (`n_features`: none)."""
    n_leaves = len(leaves)
    never = 2 * n_nodes  # the padding edge, never followed
    path_edge = np.full((n_leaves, 8), never, dtype=np.int32)
    slot = np.full((n_leaves, max(depth, 1)), -1, dtype=np.int64)
    slot_feature = np.full((n_leaves, width), n_features, dtype=np.intp)
    for i, leaf in enumerate(leaves):
        for k, (node, goes_left, leaf_slot) in enumerate(leaf.splits):
            path_edge[i, k] = 2 * node + (0 if goes_left else 1)
            slot[i, k] = leaf_slot
        slot_feature[i, : len(leaf.features)] = leaf.features
    return path_edge, slot, slot_feature


def _folded_rows(slot: np.ndarray, widths: np.ndarray, block: np.ndarray, depth: int) -> np.ndarray:
    """For each leaf and followed-bits byte (bit k: split k of the path followed), the row of
    the leaf's distinct-feature pattern in the values table (leaf `i` starts at `block[i]`)."""
    codes = np.arange(2 ** max(depth, 1), dtype=np.int64)
    pattern = np.broadcast_to((np.int64(1) << widths) - 1, (len(codes), len(widths))).T.copy()
    for k in range(slot.shape[1]):
        missed = (codes >> k & 1) == 0
        clear = np.where(slot[:, k] >= 0, np.int64(1) << np.maximum(slot[:, k], 0), 0)
        pattern[:, missed] &= ~clear[:, None]
    return (block[:, None] + pattern).ravel()


def _leaf_values(
    leaves: list[_Leaf], widths: np.ndarray, block: np.ndarray, width: int, base: float
) -> tuple[np.ndarray, float]:
    """Every leaf's Shapley values per pattern (leaf `i` from row `block[i]`, 2**widths[i] rows),
    and the base value: `base` (the base margin) plus each leaf's g of the empty set."""
    values = np.zeros((int(np.sum(2**widths)), width))
    bias = base
    for d in np.unique(widths):
        members = np.flatnonzero(widths == d)
        leaf_values = np.array([leaves[i].value for i in members])
        if d == 0:  # a tree that is a single leaf: all of it is base value
            bias += float(leaf_values.sum())
            continue
        zeros = np.array([leaves[i].zeros for i in members])
        bias += float(np.sum(leaf_values * np.prod(zeros, axis=1)))
        rows = block[members][:, None] + np.arange(2**d)[None, :]
        values[rows, :d] = _pattern_values(zeros) * leaf_values[:, None, None]
    return values, bias


class ShapTable:
    """Precomputed Shapley values of every leaf of one booster, per pattern of followed splits.

    Per row: each internal node's direction (one comparison per node), then each leaf's path as a
    byte of "followed" bits, which indexes the leaf's precomputed values directly (one row of
    `values` per leaf and byte, so a row touches one cache line per leaf).
    """

    def __init__(
        self,
        node_feature: np.ndarray,
        node_threshold: np.ndarray,
        node_missing_left: np.ndarray,
        path_edge: np.ndarray,
        slot_feature: np.ndarray,
        values: np.ndarray,
        bias: float,
        n_features: int,
    ) -> None:
        self.node_feature = node_feature  # (nodes,) split feature of every internal node
        self.node_threshold = node_threshold  # (nodes,) float32
        self.node_missing_left = node_missing_left  # (nodes,) bool
        self.path_edge = path_edge  # (leaves, 8): 2 * node + (1 if the path goes right), padded
        self.slot_feature = slot_feature  # (leaves, width): feature per slot; n_features = none
        self.values = values  # (leaves * 2**depth, width) float64: per leaf and followed-bits byte
        self.bias = bias
        self.n_features = n_features
        codes = values.shape[0] // max(path_edge.shape[0], 1)
        self._leaf_base = np.arange(path_edge.shape[0], dtype=np.intp) * codes

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    @classmethod
    def build(cls, booster: xgb.Booster, max_bytes: int = MAX_TABLE_BYTES) -> ShapTable | None:
        """The table of `booster`, checked against `pred_contribs`; None when not reproducible."""
        learner = json.loads(bytes(booster.save_raw("json")))["learner"]
        if not plain_gbtree(learner):
            return None
        nodes, leaves = _flatten(learner["gradient_booster"]["model"]["trees"])
        widths = np.array([len(leaf.features) for leaf in leaves], dtype=np.int64)
        depth = max((len(leaf.splits) for leaf in leaves), default=0)
        width = max(int(widths.max(initial=0)), 1)
        size = (int(np.sum(2**widths)) + len(leaves) * 2**depth) * width * 8
        if depth > 8 or size > max_bytes:
            log.info("SHAP table would take %d MB; xgboost computes contributions", size >> 20)
            return None
        n_features = booster.num_features()
        path_edge, slot, slot_feature = _paths(leaves, len(nodes), n_features, depth, width)
        block = np.zeros(len(leaves), dtype=np.int64)
        block[1:] = np.cumsum(2**widths)[:-1]
        values, bias = _leaf_values(leaves, widths, block, width, float(base_margin(learner)))
        node_array = np.array(nodes, dtype=object).reshape(-1, 3)
        shap_table = cls(
            node_feature=np.asarray(node_array[:, 0], dtype=np.intp),
            node_threshold=np.asarray(node_array[:, 1], dtype=np.float32),
            node_missing_left=np.asarray(node_array[:, 2], dtype=bool),
            path_edge=path_edge,
            slot_feature=slot_feature,
            # folded: row = leaf * 2**depth + followed-bits byte
            values=values[_folded_rows(slot, widths, block, depth)],
            bias=bias,
            n_features=n_features,
        )
        if not shap_table._agrees_with(booster):
            log.warning("precomputed TreeSHAP differs from xgboost; xgboost explains alone")
            return None
        return shap_table

    def _agrees_with(self, booster: xgb.Booster) -> bool:
        """Equal to `pred_contribs` within TOLERANCE on rows at and beside every threshold."""
        rng = np.random.default_rng(1)
        rows = np.full((64, self.n_features), np.nan, dtype=np.float32)
        for j in range(self.n_features):
            cuts = self.node_threshold[self.node_feature == j]
            if cuts.size:
                picked = rng.choice(cuts, size=len(rows))
                below = np.nextafter(picked, np.float32(-np.inf))
                rows[:, j] = np.where(rng.random(len(rows)) < 0.5, picked, below)
            else:
                rows[:, j] = rng.normal(size=len(rows)).astype(np.float32)
        rows[rng.random(rows.shape) < 0.15] = np.nan
        rows[0] = np.nan
        matrix = xgb.DMatrix(rows, missing=np.nan, nthread=1)
        expected = booster.predict(matrix, pred_contribs=True, validate_features=False)
        return bool(np.max(np.abs(self.contributions(rows) - expected)) <= TOLERANCE)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Contributions per feature plus the bias column last, like `pred_contribs` (float64)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = np.empty((X.shape[0], self.n_features + 1))
        for first in range(0, X.shape[0], _ROWS_PER_BLOCK):
            out[first : first + _ROWS_PER_BLOCK] = self._block(X[first : first + _ROWS_PER_BLOCK])
        return out

    def _block(self, X: np.ndarray) -> np.ndarray:
        n, edges = X.shape[0], 2 * self.node_feature.shape[0]
        x = X[:, self.node_feature]  # (rows, nodes)
        went_left = np.where(np.isnan(x), self.node_missing_left, x < self.node_threshold)
        follows = np.zeros((n, edges + 1), dtype=bool)  # the last edge: padding, never followed
        follows[:, 0:edges:2] = went_left
        follows[:, 1:edges:2] = ~went_left
        # (rows, leaves, 8): 1 where the row follows the leaf's k-th split
        followed = np.ascontiguousarray(np.take(follows, self.path_edge, axis=1))
        # eight 0/1 bytes -> one byte with bit k from byte k (little-endian multiply trick)
        code = (followed.view(np.uint64)[..., 0] * _GATHER_BITS) >> np.uint64(56)
        rows = self._leaf_base + code.astype(np.intp)  # (rows, leaves)
        gathered = np.take(self.values, rows, axis=0)  # (rows, leaves, width)
        columns = self.n_features + 1
        target = self.slot_feature + (np.arange(n) * columns)[:, None, None]
        out = np.bincount(target.ravel(), weights=gathered.ravel(), minlength=n * columns)
        out = out.reshape(n, columns)
        out[:, -1] = self.bias
        return out
