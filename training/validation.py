"""Patient-grouped splits: repeated stratified group k-fold, by site, by time, inner split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


class SplitError(ValueError):
    """The cohort cannot be split as the experiment asks."""


@dataclass(frozen=True)
class Fold:
    """One outer split: positional indices into the labelled episodes."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray
    name: str = ""


def assert_disjoint_patients(groups: np.ndarray, train: np.ndarray, test: np.ndarray) -> None:
    """Raise if any patient has episodes on both sides of a split (the leakage guard)."""
    shared = set(groups[train]) & set(groups[test])
    if shared:
        # a count only: patient identifiers never go into messages that may reach a log
        raise SplitError(f"{len(shared)} patients straddle the split")


def _check_labels(y: np.ndarray, groups: np.ndarray, n_splits: int) -> None:
    y = np.asarray(y)
    if len(y) != len(groups):
        raise SplitError(f"y has {len(y)} rows but groups has {len(groups)}")
    if not np.isin(y, (0, 1)).all():
        raise SplitError("y must be 0/1")
    for value in (0, 1):
        n_patients = len(np.unique(groups[y == value]))
        if n_patients < n_splits:
            word = "responders" if value else "non-responders"
            raise SplitError(
                f"only {n_patients} patients with {word}; need at least {n_splits} for "
                f"{n_splits}-fold validation"
            )


def repeated_group_folds(
    y: np.ndarray, groups: np.ndarray, n_splits: int, n_repeats: int, seed: int
) -> list[Fold]:
    """Repeated StratifiedGroupKFold, a different shuffle seed per repeat, patients never shared."""
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    _check_labels(y, groups, n_splits)
    folds = []
    for repeat in range(n_repeats):
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + repeat)
        for k, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            assert_disjoint_patients(groups, train, test)
            folds.append(Fold(repeat, k, train, test, name=f"r{repeat}f{k}"))
    return folds


def site_folds(y: np.ndarray, groups: np.ndarray, sites: np.ndarray) -> list[Fold]:
    """Leave-one-site-out: each site is the test set once."""
    y = np.asarray(y).astype(int)
    sites = pd.Series(np.asarray(sites, dtype=object)).fillna("(missing)").to_numpy()
    levels = sorted(set(sites))
    if len(levels) < 2:
        raise SplitError("validation by site needs at least 2 sites in the cohort")
    folds = []
    for k, site in enumerate(levels):
        test = np.flatnonzero(sites == site)
        train = np.flatnonzero(sites != site)
        if len(np.unique(y[test])) < 2 or len(np.unique(y[train])) < 2:
            raise SplitError(f"site {site!r}: both classes are needed in train and test")
        assert_disjoint_patients(np.asarray(groups), train, test)
        folds.append(Fold(0, k, train, test, name=f"site={site}"))
    return folds


def time_folds(
    y: np.ndarray, groups: np.ndarray, index_dates: np.ndarray, test_fraction: float
) -> list[Fold]:
    """Train on earlier index dates, test on later ones; a patient whose episodes straddle the
    cut date is dropped from training so that no patient is on both sides."""
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    dates = pd.to_datetime(pd.Series(index_dates)).to_numpy()
    if pd.isna(dates).any():
        raise SplitError("validation by time needs an index_date for every episode")
    cut = np.quantile(dates.astype("datetime64[ns]").astype(np.int64), 1 - test_fraction)
    is_test = dates.astype("datetime64[ns]").astype(np.int64) > cut
    test = np.flatnonzero(is_test)
    test_patients = set(groups[test])
    train = np.flatnonzero(~is_test & ~np.isin(groups, list(test_patients)))
    if len(np.unique(y[test])) < 2 or len(np.unique(y[train])) < 2:
        raise SplitError("validation by time: both classes are needed before and after the cut")
    assert_disjoint_patients(groups, train, test)
    cut_date = pd.Timestamp(int(cut)).date().isoformat()
    return [Fold(0, 0, train, test, name=f"after {cut_date}")]


def inner_split(
    y: np.ndarray, groups: np.ndarray, valid_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training fold into inner-train and inner-valid by patient, stratified.

    Early stopping, tuning and the fold's calibrator use inner-valid; the evaluation fold is never
    passed here. Returns positions relative to the given arrays.
    """
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    n_splits = max(2, round(1 / valid_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train, valid = next(splitter.split(np.zeros(len(y)), y, groups))
    assert_disjoint_patients(groups, train, valid)
    return train, valid
