"""Clinical and demographic columns of patients and episodes, and extra static columns."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from data.contract import BOOLEAN_COLUMNS
from data.table import Table, as_table
from features.notes import FeatureWarning
from features.timeline import (
    NAT,
    NS_PER_DAY,
    Timeline,
    column_values,
    datetime_ns,
    factorize,
    is_missing,
    lookup,
)

# Race values read as Asian ancestry: the word itself, common national groups, and the CDC race
# code 2028-9 used by FHIR US Core.
_ASIAN = {"asian", "chinese", "japanese", "korean", "east asian", "south asian", "2028-9"}
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}
_DAYS_PER_YEAR = 365.25

StaticKind = str  # "numeric" | "boolean" | "categorical"


def _rows(table: Table | None, ids: np.ndarray, name: str) -> np.ndarray:
    """Position of each id in `table[name]` (-1 when absent)."""
    if table is None or len(table) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    return lookup(column_values(table, name, object), ids, f"patients.{name}")


def _take(values: np.ndarray, rows: np.ndarray, fill: object) -> np.ndarray:
    found = rows >= 0
    if values.dtype.kind in "fiub":
        out = np.full(len(rows), np.nan)
    else:
        out = np.full(len(rows), fill, dtype=object)
    if found.any():
        out[found] = values[rows[found]]
    return out


def numeric_column(table: Table, table_name: str, name: str) -> np.ndarray:
    """A normalised numeric (or boolean as 1.0/0.0) column as float64."""
    values = column_values(table, name)
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    series = table.series(name)
    converted = pd.to_numeric(series, errors="coerce")
    bad = converted.isna() & series.notna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise TypeError(
            f"{table_name}: row {first}: {name}: expected a number, got {series.iloc[first]!r}"
        )
    return converted.to_numpy(dtype=np.float64)


def _by_distinct(values: np.ndarray, encode: Callable[[object], object]) -> np.ndarray:
    """`encode` applied once per distinct value (missing values mapped to None first)."""
    missing = is_missing(values)
    if missing.any():
        values = np.where(missing, None, values)
    codes, uniques = factorize(values.astype(object))
    encoded = [encode(u) for u in uniques.tolist()]
    table = np.empty(len(encoded), dtype=object)
    table[:] = encoded
    return table[codes]


def _asian(value: object) -> float:
    if not isinstance(value, str) or not value.strip():
        return np.nan
    text = " ".join(value.strip().lower().split())
    return 1.0 if text in _ASIAN or "asian" in text.split() else 0.0


def _is_asian(race: np.ndarray) -> np.ndarray:
    return _by_distinct(race, _asian).astype(np.float64)


def clinical_features(
    patients: Table | pd.DataFrame | None,
    episodes: Table | pd.DataFrame,
    timeline: Timeline,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(numeric features, categorical features as strings or None) from patients and episodes."""
    n = timeline.n
    patients, episodes = as_table(patients, "patients"), as_table(episodes, "episodes")
    episode_columns = set(episodes.names)
    patient_columns = set(patients.names) if patients is not None else set()
    rows = _rows(patients, timeline_patient_ids(episodes), "patient_id")
    numeric: dict[str, np.ndarray] = {}

    age = (
        numeric_column(episodes, "episodes", "age_years")
        if "age_years" in episode_columns
        else np.full(n, np.nan)
    )
    if np.isnan(age).any() and "birth_date" in patient_columns:
        birth = _take(datetime_ns(patients, "patients", "birth_date"), rows, None)
        known_birth = ~np.isnan(birth) & (birth != float(NAT))
        from_birth = (timeline.index_ns - birth) / NS_PER_DAY / _DAYS_PER_YEAR
        age = np.where(np.isnan(age) & known_birth, from_birth, age)
    numeric["age_years"] = age

    def patient_numeric(column: str) -> np.ndarray:
        if column not in patient_columns:
            return np.full(n, np.nan)
        return _take(numeric_column(patients, "patients", column), rows, np.nan)

    numeric["ecog"] = patient_numeric("ecog")
    for column in BOOLEAN_COLUMNS:
        numeric[column] = patient_numeric(column)
    if "race" in patient_columns:
        race = _take(column_values(patients, "race", object), rows, None)
        numeric["race_asian"] = _is_asian(race)
    else:
        numeric["race_asian"] = np.full(n, np.nan)
    numeric["dose_mg"] = (
        numeric_column(episodes, "episodes", "dose_mg")
        if "dose_mg" in episode_columns
        else np.full(n, np.nan)
    )

    categorical: dict[str, np.ndarray] = {}
    if "subtype" in patient_columns:
        subtype = _take(column_values(patients, "subtype", object), rows, None)
        categorical["subtype"] = clean_levels(subtype)
    else:
        categorical["subtype"] = np.full(n, None, dtype=object)
    return numeric, categorical


def timeline_patient_ids(episodes: Table) -> np.ndarray:
    return column_values(episodes, "patient_id", object)


def _level(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def clean_levels(values: np.ndarray) -> np.ndarray:
    """Category values as stripped strings, None for missing or blank."""
    out = np.empty(len(values), dtype=object)
    out[:] = _by_distinct(np.asarray(values, dtype=object), _level) if len(values) else []
    return out


def static_kind(values: pd.Series) -> StaticKind:
    """How an extra static column is encoded: numeric, boolean (0/1) or categorical (one-hot)."""
    if values.dtype.kind in "fiub":
        return "numeric"
    present = [v for v in clean_levels(values.to_numpy(dtype=object)) if v is not None]
    lowered = {v.lower() for v in present}
    if lowered and lowered <= (_TRUE | _FALSE):
        return "boolean"
    if pd.to_numeric(pd.Series(present, dtype=object), errors="coerce").notna().all():
        return "numeric"
    return "categorical"


def static_values(
    values: np.ndarray,
    kind: StaticKind,
    name: str,
    episode_ids: np.ndarray,
    warnings: list[FeatureWarning],
) -> np.ndarray:
    """Encode an extra static column as `kind`; misfit values become NaN, with a warning."""
    if kind == "categorical":
        return clean_levels(values)
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    levels = clean_levels(values)
    out = np.full(len(values), np.nan)
    for i, value in enumerate(levels):
        if value is None:
            continue
        if kind == "boolean":
            low = value.lower()
            parsed = 1.0 if low in _TRUE else 0.0 if low in _FALSE else None
        else:
            try:
                parsed = float(value)
            except ValueError:
                parsed = None
        if parsed is None:
            text = f"{name}={value!r} is not {kind}; encoded as missing"
            warnings.append(FeatureWarning(episode_ids[i], text))
        else:
            out[i] = parsed
    return out


def extra_static(
    patients: Table | pd.DataFrame | None,
    episodes: Table | pd.DataFrame,
    columns: tuple[str, ...],
    kinds: dict[str, StaticKind] | None,
    episode_ids: np.ndarray,
    warnings: list[FeatureWarning],
) -> tuple[dict[str, np.ndarray], dict[str, StaticKind]]:
    """Extra static columns (episodes first, then patients), encoded by kind (learned when None)."""
    patients, episodes = as_table(patients, "patients"), as_table(episodes, "episodes")
    rows = None
    out: dict[str, np.ndarray] = {}
    used: dict[str, StaticKind] = {}
    for column in columns:
        if column in episodes.names:
            series = episodes.series(column)
            values = column_values(episodes, column)
        elif patients is not None and column in patients.names:
            if rows is None:
                rows = _rows(patients, timeline_patient_ids(episodes), "patient_id")
            series = patients.series(column)
            values = _take(column_values(patients, column), rows, None)
        elif kinds is not None:
            # A fitted model scoring a record without this field: missing, said per episode.
            used[column] = kinds[column]
            out[column] = static_values(
                np.full(len(episode_ids), None, dtype=object), kinds[column], column,
                episode_ids, warnings,
            )  # fmt: skip
            warnings.extend(
                FeatureWarning(e, f"{column} was not given; the model treats it as missing")
                for e in episode_ids
            )
            continue
        else:
            raise ValueError(
                f"extra_static: column {column!r} is in neither the episodes nor the patients table"
            )
        kind = static_kind(series) if kinds is None else kinds[column]
        used[column] = kind
        out[column] = static_values(values, kind, column, episode_ids, warnings)
    return out, used
