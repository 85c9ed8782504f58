"""Splits: no patient on both sides, every episode evaluated once per repeat, stratified."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.validation import (
    SplitError,
    assert_disjoint_patients,
    inner_split,
    repeated_group_folds,
    site_folds,
    time_folds,
)


def _cohort(n_patients: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    episodes_per_patient = rng.integers(1, 4, n_patients)
    groups = np.repeat([f"P{i}" for i in range(n_patients)], episodes_per_patient)
    y = (rng.random(len(groups)) < 0.7).astype(int)
    return y, groups


@settings(max_examples=25, deadline=None)
@given(n_patients=st.integers(30, 120), seed=st.integers(0, 10_000), n_splits=st.integers(2, 5))
def test_folds_never_share_a_patient(n_patients: int, seed: int, n_splits: int) -> None:
    y, groups = _cohort(n_patients, seed)
    folds = repeated_group_folds(y, groups, n_splits=n_splits, n_repeats=2, seed=seed)
    assert len(folds) == 2 * n_splits
    for fold in folds:
        assert not set(groups[fold.train]) & set(groups[fold.test])
        assert len(fold.train) + len(fold.test) == len(y)
    for repeat in (0, 1):
        tested = np.concatenate([f.test for f in folds if f.repeat == repeat])
        assert sorted(tested) == list(range(len(y)))  # each episode evaluated exactly once


def test_repeats_shuffle_differently_and_folds_are_stratified() -> None:
    y, groups = _cohort(400, 1)
    folds = repeated_group_folds(y, groups, n_splits=5, n_repeats=2, seed=3)
    first = {tuple(sorted(f.test)) for f in folds if f.repeat == 0}
    second = {tuple(sorted(f.test)) for f in folds if f.repeat == 1}
    assert first != second
    for fold in folds:
        assert abs(y[fold.test].mean() - y.mean()) < 0.08


def test_too_few_patients_of_a_class_is_a_clear_error() -> None:
    y = np.array([1, 1, 1, 1, 0, 0])
    groups = np.array(["a", "b", "c", "d", "e", "e"])
    with pytest.raises(SplitError, match="only 1 patients with non-responders"):
        repeated_group_folds(y, groups, n_splits=3, n_repeats=1, seed=0)


def test_disjointness_guard_raises() -> None:
    groups = np.array(["a", "b", "a"])
    with pytest.raises(SplitError, match="straddle"):
        assert_disjoint_patients(groups, np.array([0, 1]), np.array([2]))


def test_inner_split_is_grouped_and_about_the_requested_size() -> None:
    y, groups = _cohort(300, 2)
    train, valid = inner_split(y, groups, 0.25, seed=5)
    assert not set(groups[train]) & set(groups[valid])
    assert 0.15 < len(valid) / len(y) < 0.35
    assert sorted(np.concatenate([train, valid])) == list(range(len(y)))


def test_site_folds_leave_one_site_out() -> None:
    y, groups = _cohort(60, 4)
    patient_site = {g: ("north" if int(g[1:]) % 2 else "south") for g in set(groups)}
    sites = np.array([patient_site[g] for g in groups])
    folds = site_folds(y, groups, sites)
    assert [f.name for f in folds] == ["site=north", "site=south"]
    for fold in folds:
        assert len(set(sites[fold.test])) == 1
        assert set(sites[fold.test]).isdisjoint(set(sites[fold.train]))
    with pytest.raises(SplitError, match="at least 2 sites"):
        site_folds(y, groups, np.array(["one"] * len(y)))


def test_time_folds_train_on_earlier_dates_only() -> None:
    y, groups = _cohort(200, 6)
    rng = np.random.default_rng(6)
    dates = np.datetime64("2023-01-01") + rng.integers(0, 700, len(y)).astype("timedelta64[D]")
    (fold,) = time_folds(y, groups, dates, test_fraction=0.3)
    assert dates[fold.train].max() <= dates[fold.test].min()
    assert not set(groups[fold.train]) & set(groups[fold.test])
    assert 0.2 < len(fold.test) / len(y) < 0.4
