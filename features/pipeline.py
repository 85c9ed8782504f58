"""Features as of the index date: one row per episode, from a normalised `data.cohort.Cohort`.

`build_features` gives the raw values (categories as strings); `FeaturePipeline` learns category
levels at fit and turns a cohort into the all-numeric frame the model sees. Both run the same
vectorised numpy code for a cohort of one patient (scoring) and of many (training), so there is no
training/serving skew. Nothing dated after an episode's index date enters its features (see
`features.timeline` for the cut-off).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from data.cohort import Cohort
from data.contract import BOOLEAN_COLUMNS
from data.table import Table, as_table
from data.units import canonical_test
from features.clinical import StaticKind, clinical_features, extra_static
from features.labs import (
    analyte_series,
    lab_features,
    last_values,
    platelet_features,
    read_labs,
)
from features.notes import FeatureWarning
from features.prior import prior_episode_features
from features.regimens import read_regimens, regimen_features
from features.registry import LAB_ANALYTES, PLT_WINDOWS, spec_of
from features.timeline import build_timeline, episode_frame

logger = logging.getLogger(__name__)

ALL_FAMILIES: tuple[str, ...] = ("labs", "platelet_history", "regimen_history", "clinical")
# Families an experiment may add by name; not built unless asked for.
OPTIONAL_FAMILIES: tuple[str, ...] = ("prior_episode",)
_RESERVED_STATIC = {
    "patient_id",
    "episode_id",
    "index_date",
    "birth_date",
    "age_years",
    "dose_mg",
    "ecog",
    "subtype",
    "race",
    *BOOLEAN_COLUMNS,
}
# Characters XGBoost (and most tools) refuse in feature names, plus whitespace.
_UNSAFE = re.compile(r"[\[\]<>,\s\"']")


class CohortLike(Protocol):
    """What the pipeline reads of a `data.cohort.Cohort` (whose numpy columns it reads directly)."""

    patients: pd.DataFrame
    episodes: pd.DataFrame
    labs: pd.DataFrame
    regimens: pd.DataFrame


def _as_names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"FeatureConfig.{what}: expected a list of names, got the string {value!r}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"FeatureConfig.{what}: {name!r} is not a non-empty name")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"FeatureConfig.{what}: named more than once: {', '.join(duplicated)}")
    return names


@dataclass(frozen=True)
class FeatureConfig:
    """Which feature families to build, and which extra analytes and static columns to add.

    `extra_analytes` are lab test codes kept under their own code (not one of the canonical
    analytes), matched case-insensitively; `extra_static` are columns of the episodes or patients
    table (numbers, booleans or categories).
    """

    families: tuple[str, ...] = ALL_FAMILIES
    extra_analytes: tuple[str, ...] = ()
    extra_static: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("families", "extra_analytes", "extra_static"):
            object.__setattr__(self, name, _as_names(getattr(self, name), name))
        unknown = [f for f in self.families if f not in ALL_FAMILIES + OPTIONAL_FAMILIES]
        if unknown:
            raise ValueError(
                f"FeatureConfig.families: unknown {unknown}; choose from "
                f"{list(ALL_FAMILIES + OPTIONAL_FAMILIES)}"
            )
        for code in self.extra_analytes:
            alias = canonical_test(code)
            if alias is not None:
                raise ValueError(
                    f"FeatureConfig.extra_analytes: {code!r} is the standard analyte {alias}, "
                    "whose features are built already"
                )
        for column in self.extra_static:
            if column in _RESERVED_STATIC:
                raise ValueError(
                    f"FeatureConfig.extra_static: {column!r} is a standard column, used already"
                )


def safe_name(text: str) -> str:
    """A feature-name fragment valid for XGBoost (no [ ] < , or whitespace)."""
    return _UNSAFE.sub("_", text.strip())


def extra_lab_names(code: str) -> tuple[str, str]:
    base = f"lab_{safe_name(code)}"
    return f"{base}_last", f"{base}_days_since"


def static_name(column: str) -> str:
    return f"static_{safe_name(column)}"


@dataclass
class RawFeatures:
    """Raw per-episode columns (float arrays, or object arrays of strings for categories)."""

    episode_ids: np.ndarray
    columns: dict[str, np.ndarray]
    categorical: set[str]
    static_kinds: dict[str, StaticKind]
    warnings: list[FeatureWarning] = field(default_factory=list)


def _table(cohort: CohortLike, name: str) -> Table | None:
    """A table's columns: a `data.cohort.Cohort`'s numpy columns, or a view of a frame."""
    if isinstance(cohort, Cohort):
        return cohort.table(name)
    return as_table(getattr(cohort, name, None), name)


def compute_features(
    cohort: CohortLike,
    config: FeatureConfig,
    static_kinds: dict[str, StaticKind] | None = None,
) -> RawFeatures:
    """Every configured raw feature for every episode of `cohort`.

    `static_kinds` fixes how extra static columns are encoded (learned at fit); None infers it.
    """
    episodes = _table(cohort, "episodes")
    if episodes is None:
        raise ValueError("cohort has no episodes table")
    patients = _table(cohort, "patients")
    ids, pids, index_ns = episode_frame(episodes)
    families = set(config.families)
    want_labs = bool(families & {"labs", "platelet_history"}) or bool(config.extra_analytes)
    want_prior = "prior_episode" in families
    want_regimens = bool(families & {"regimen_history", "platelet_history"})
    labs = read_labs(_table(cohort, "labs")) if want_labs else None
    regimens = read_regimens(_table(cohort, "regimens")) if want_regimens else None
    seconds = [r.seconds for r in (labs, regimens) if r is not None]
    timeline = build_timeline(ids, pids, index_ns, seconds, lookback_days=max(PLT_WINDOWS))

    columns: dict[str, np.ndarray] = {}
    categorical: set[str] = set()
    warnings: list[FeatureWarning] = []
    series = {}
    if want_labs:
        codes = list(LAB_ANALYTES) + list(config.extra_analytes)
        series = analyte_series(labs, timeline, codes)

    if "labs" in families:
        columns.update(lab_features(series, timeline))
    if want_regimens:
        regimen_columns, cycle_start_day = regimen_features(regimens, timeline)
    if "platelet_history" in families:
        columns.update(platelet_features(series["PLT"], timeline, cycle_start_day))
    if "regimen_history" in families:
        columns.update(regimen_columns)
    if "clinical" in families:
        numeric, cats = clinical_features(patients, episodes, timeline)
        for name in ("age_years", "ecog"):
            columns[name] = numeric.pop(name)
        columns["subtype"] = cats["subtype"]
        categorical.add("subtype")
        columns.update(numeric)

    if want_prior:
        columns.update(prior_episode_features(ids, pids, index_ns, _table(cohort, "labs")))
    for code in config.extra_analytes:
        last, days = extra_lab_names(code)
        columns[last], columns[days] = last_values(series[code], timeline)
    statics, kinds = extra_static(
        patients, episodes, config.extra_static, static_kinds, ids, warnings
    )
    for column, values in statics.items():
        name = static_name(column)
        columns[name] = values
        if kinds[column] == "categorical":
            categorical.add(name)
    return RawFeatures(ids, columns, categorical, kinds, warnings)


def raw_frame(raw: RawFeatures) -> pd.DataFrame:
    """One row per episode, `episode_id` first: raw values, categories as strings, NaN missing."""
    frame = pd.DataFrame({"episode_id": raw.episode_ids, **raw.columns})
    for name in raw.categorical:
        frame[name] = frame[name].astype(object)
    return frame


def build_features(cohort: CohortLike, config: FeatureConfig | None = None) -> pd.DataFrame:
    """One row per episode, `episode_id` first: raw values, categories as strings, NaN missing."""
    raw = compute_features(cohort, config or FeatureConfig())
    if raw.warnings:  # the messages name episodes: they go to the caller, never to the log
        logger.warning("%d feature warning(s); see the returned warnings", len(raw.warnings))
    return raw_frame(raw)


@dataclass(frozen=True)
class _Categorical:
    raw: str
    levels: tuple[str, ...]
    positions: tuple[int, ...]


@dataclass(frozen=True)
class FeatureMatrix:
    """Model features as arrays: `X` (episodes x features, float64), the episodes' ids in the
    cohort's order, and the warnings (unseen categories, unparseable extra static values)."""

    episode_ids: np.ndarray
    X: np.ndarray
    warnings: list[FeatureWarning]


class FeaturePipeline(BaseEstimator):
    """Cohort -> model features: the scikit-learn estimator contract, picklable.

    `fit(cohort)` learns the levels of each categorical column (one-hot) and how extra static
    columns are encoded; `transform(cohort)` returns a float frame indexed by `episode_id` with
    columns `feature_names_`. A category not seen at fit time encodes as all zeros and is reported
    (`transform_with_warnings`, or `X.attrs["warnings"]`); a missing category stays NaN.
    """

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config

    def _config(self) -> FeatureConfig:
        return self.config if self.config is not None else FeatureConfig()

    def fit(self, cohort: CohortLike, y: Any = None) -> FeaturePipeline:
        """Learn category levels and static encodings from `cohort`; returns self."""
        return self._fit_raw(compute_features(cohort, self._config()))

    def _fit_raw(self, raw: RawFeatures) -> FeaturePipeline:
        names: list[str] = []
        numeric: list[tuple[int, str]] = []
        categorical: list[_Categorical] = []
        for column, values in raw.columns.items():
            if column in raw.categorical:
                levels = tuple(sorted({v for v in values if v is not None}))
                positions = tuple(range(len(names), len(names) + len(levels)))
                names += [f"{column}={safe_name(level)}" for level in levels]
                categorical.append(_Categorical(column, levels, positions))
            else:
                numeric.append((len(names), column))
                names.append(column)
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(
                f"feature names collide after cleaning: {', '.join(duplicated)}; rename the "
                "categories or columns that differ only in brackets, commas or spaces"
            )
        self.groups_ = {name: spec_of(name).group for name in names}
        self.feature_names_ = names
        self.categories_ = {c.raw: list(c.levels) for c in categorical}
        self.static_kinds_ = dict(raw.static_kinds)
        self._numeric_plan_ = numeric
        self._categorical_plan_ = categorical
        self._columns_ = pd.Index(names)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise NotFittedError("FeaturePipeline is not fitted yet; call fit(cohort) first")

    def transform_matrix(self, cohort: CohortLike) -> FeatureMatrix:
        """The model features as one float64 matrix (episodes x `feature_names_`, in the cohort's
        episode order), with the warnings: what `transform` gives, without building a frame."""
        self._check_fitted()
        return self._encode(compute_features(cohort, self._config(), self.static_kinds_))

    def _encode(self, raw: RawFeatures) -> FeatureMatrix:
        warnings = list(raw.warnings)
        ids = raw.episode_ids
        out = np.empty((len(self.feature_names_), len(ids)))
        if self._numeric_plan_:  # one copy of all numeric columns, not one per column
            positions, names = zip(*self._numeric_plan_, strict=True)
            out[list(positions)] = [raw.columns[column] for column in names]
        for plan in self._categorical_plan_:
            values = raw.columns[plan.raw]
            missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
            seen = missing.copy()
            for position, level in zip(plan.positions, plan.levels, strict=True):
                hit = values == level
                seen |= hit
                row = hit.astype(np.float64)
                row[missing] = np.nan
                out[position] = row
            for i in np.flatnonzero(~seen):
                warnings.append(
                    FeatureWarning(
                        ids[i],
                        f"{plan.raw} {values[i]!r} was not seen when the pipeline was fitted; "
                        "encoded as all zeros",
                    )
                )
        unseen = len(warnings) - len(raw.warnings)
        if unseen:  # the messages name episodes: they go to the caller, never to the log
            logger.warning("%d unseen category value(s) encoded as all zeros", unseen)
        return FeatureMatrix(ids, out.T, warnings)

    def transform_with_warnings(self, cohort: CohortLike) -> tuple[pd.DataFrame, list[str]]:
        """(features, warnings): warnings name unseen categories and unparseable static values."""
        return self._frame(self.transform_matrix(cohort))

    def _frame(self, matrix: FeatureMatrix) -> tuple[pd.DataFrame, list[str]]:
        frame = pd.DataFrame(
            matrix.X,
            index=pd.Index(matrix.episode_ids, name="episode_id", dtype=object),
            columns=self._columns_,
        )
        return frame, matrix.warnings

    def transform(self, cohort: CohortLike) -> pd.DataFrame:
        """Model features of every episode; warnings are logged and kept in `X.attrs`."""
        frame, warnings = self.transform_with_warnings(cohort)
        frame.attrs["warnings"] = warnings
        return frame

    def fit_transform(self, cohort: CohortLike, y: Any = None) -> pd.DataFrame:
        """`fit(cohort).transform(cohort)`, computing the features once."""
        return self.fit_transform_with_raw(cohort)[0]

    def fit_transform_with_raw(self, cohort: CohortLike) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(model features, raw features) of `cohort`, fitted on it, the features computed once.

        The model features are what `fit(cohort).transform(cohort)` gives (warnings in
        `X.attrs`); the raw ones what `build_features` gives.
        """
        raw = compute_features(cohort, self._config())
        self._fit_raw(raw)
        frame, warnings = self._frame(self._encode(raw))
        frame.attrs["warnings"] = warnings
        return frame, raw_frame(raw)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        self._check_fitted()
        return np.asarray(self.feature_names_, dtype=object)

    def group_of(self, name: str) -> str:
        """Clinical group of an output column (`labs`, `platelet_history`, ...)."""
        self._check_fitted()
        if name not in self.groups_:
            raise KeyError(f"{name!r} is not an output column of this pipeline")
        return self.groups_[name]
