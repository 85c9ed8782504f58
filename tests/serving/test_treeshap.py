"""The precomputed TreeSHAP table equals xgboost's `pred_contribs` and Shapley's definition."""

from __future__ import annotations

import itertools
import json
from math import factorial

import numpy as np
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.predict.treeshap import ShapTable, _pattern_values


def _train(depth: int, trees: int = 30, seed: int = 0, n: int = 600, **params) -> tuple:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[:, 5] = np.round(X[:, 5])  # a coarse feature: thresholds that rows hit exactly
    X[rng.random(X.shape) < 0.2] = np.nan
    signal = np.nan_to_num(X[:, 0]) - 0.7 * np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2])
    y = (signal + rng.normal(size=n) > 0).astype(int)
    config = {"max_depth": depth, "eta": 0.3, "objective": "binary:logistic", "nthread": 1}
    booster = xgb.train({**config, **params}, xgb.DMatrix(X, y, missing=np.nan), trees)
    return booster, X


def _reference(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(X, missing=np.nan, nthread=1), pred_contribs=True)


@pytest.mark.parametrize("depth", [1, 2, 4, 6])
def test_table_equals_pred_contribs_and_adds_up_to_the_margin(depth: int) -> None:
    booster, X = _train(depth)
    table = ShapTable.build(booster)
    assert table is not None
    got = table.contributions(X)  # 600 rows: several blocks
    assert got.shape == (len(X), X.shape[1] + 1)
    assert np.abs(got - _reference(booster, X)).max() < 2e-5
    margin = booster.predict(xgb.DMatrix(X, missing=np.nan), output_margin=True)
    assert np.abs(got.sum(axis=1) - margin).max() < 2e-5
    one = table.contributions(X[7:8])
    assert np.array_equal(one, got[7:8])


def test_rows_exactly_on_thresholds_and_all_missing() -> None:
    booster, X = _train(5, seed=3)
    table = ShapTable.build(booster)
    tree = json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]
    cuts = [
        (f, c)
        for t in tree["model"]["trees"]
        for f, c, left in zip(
            t["split_indices"], t["split_conditions"], t["left_children"], strict=True
        )
        if left != -1
    ]
    rows = np.full((len(cuts) + 1, X.shape[1]), np.nan, dtype=np.float32)
    for i, (f, c) in enumerate(cuts):
        rows[i, f] = c  # exactly at the threshold: goes right (x < threshold is false)
    assert np.abs(table.contributions(rows) - _reference(booster, rows)).max() < 2e-5


def test_a_hand_computed_stump() -> None:
    # One split on feature 0: leaves a (left) and b (right) with covers ca, cb.
    X = np.array([[0.0], [0.0], [0.0], [1.0], [1.0], [1.0], [1.0], [1.0]], dtype=np.float32)
    y = np.array([1, 1, 0, 0, 0, 0, 1, 0])
    params = {"max_depth": 1, "objective": "binary:logistic", "nthread": 1, "min_child_weight": 0}
    booster = xgb.train(params, xgb.DMatrix(X, y), 1)
    learner = json.loads(bytes(booster.save_raw("json")))["learner"]
    tree = learner["gradient_booster"]["model"]["trees"][0]
    assert tree["left_children"][0] == 1 and tree["right_children"][0] == 2
    a, b = tree["split_conditions"][1], tree["split_conditions"][2]
    ca, cb = tree["sum_hessian"][1], tree["sum_hessian"][2]
    za, zb = ca / (ca + cb), cb / (ca + cb)
    table = ShapTable.build(booster)
    left, right = table.contributions(np.array([[0.0], [1.0]], dtype=np.float32))
    # Row going left: phi = a (1 - za) + b (0 - zb); bias = a za + b zb + base margin.
    assert left[0] == pytest.approx(a * (1 - za) - b * zb, abs=1e-6)
    assert right[0] == pytest.approx(-a * za + b * (1 - zb), abs=1e-6)
    margin = booster.predict(xgb.DMatrix(X[:1]), output_margin=True)[0]
    assert left[1] == pytest.approx(margin - a + a * za + b * zb, abs=1e-5)
    assert left.sum() == pytest.approx(margin, abs=1e-5)


def _brute_force(zeros: np.ndarray, pattern: int) -> np.ndarray:
    """Shapley values of g(S) = prod_{k in S} o_k prod_{k not in S} z_k by enumeration."""
    d = len(zeros)
    ones = [pattern >> k & 1 for k in range(d)]

    def g(subset: set[int]) -> float:
        return float(np.prod([ones[k] if k in subset else zeros[k] for k in range(d)]))

    phi = np.zeros(d)
    for j in range(d):
        others = [k for k in range(d) if k != j]
        for size in range(d):
            weight = factorial(size) * factorial(d - size - 1) / factorial(d)
            for subset in itertools.combinations(others, size):
                phi[j] += weight * (g({*subset, j}) - g(set(subset)))
    return phi


@settings(max_examples=40, deadline=None)
@given(
    zeros=st.lists(st.floats(0.01, 0.99), min_size=1, max_size=5),
    data=st.data(),
)
def test_pattern_values_are_the_shapley_values_of_the_leaf_game(zeros, data) -> None:
    z = np.array(zeros)
    pattern = data.draw(st.integers(0, 2 ** len(z) - 1))
    got = _pattern_values(z[None, :])[0, pattern]
    assert np.allclose(got, _brute_force(z, pattern), atol=1e-12)
    # efficiency: the values add up to g(all) - g(empty set)
    ones = np.array([pattern >> k & 1 for k in range(len(z))], dtype=float)
    assert got.sum() == pytest.approx(np.prod(ones) - np.prod(z), abs=1e-12)


@pytest.fixture(scope="module")
def shared() -> tuple[xgb.Booster, ShapTable]:
    booster, _ = _train(6, trees=20, seed=5)
    table = ShapTable.build(booster)
    assert table is not None
    return booster, table


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.one_of(st.none(), st.floats(-3, 3)), min_size=6, max_size=6), min_size=1
    )
)
def test_any_row_matches_xgboost(shared, rows) -> None:
    booster, table = shared
    X = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float32)
    assert np.abs(table.contributions(X) - _reference(booster, X)).max() < 2e-5


def test_declines_what_it_does_not_reproduce() -> None:
    booster, X = _train(3, trees=5, booster="dart", rate_drop=0.1)
    assert ShapTable.build(booster) is None
    multi = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "nthread": 1, "max_depth": 2},
        xgb.DMatrix(X, np.arange(len(X)) % 3, missing=np.nan),
        3,
    )
    assert ShapTable.build(multi) is None
    plain, _ = _train(6)
    assert ShapTable.build(plain, max_bytes=1024) is None  # over the memory cap
