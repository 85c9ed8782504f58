"""The index-date cut-off and the sorted keys every feature family searches.

Each record is located by one int64 key, `patient_code * span + seconds since origin`, so that
"the records of this patient on or before this episode's cut-off" is one `searchsorted` over an
array sorted by key: the same numpy code serves a cohort of one patient and of a million, with no
per-episode Python loop and no groupby. Only the hashing of values (`factorize`, `lookup`,
`is_missing`, the patients of `build_timeline`) uses a dict below `SMALL` values instead of pandas'
hash tables (which cost about 0.27 ms more per scored patient), with the same results (tested
against pandas).

The cut-off (leakage guard): an index date without a time of day (midnight) includes the whole
index day; an index with a time includes records at or before that time. Record times are rounded
up to the second and the cut-off down, so a sub-second timestamp can only ever be excluded, never
leak in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api.types import is_datetime64_any_dtype

from data.table import Table, as_table

NS_PER_S = 1_000_000_000
S_PER_DAY = 86_400
NS_PER_DAY = NS_PER_S * S_PER_DAY
NAT = np.iinfo(np.int64).min
_KEY_LIMIT = 2**62


def column_values(table: Table, name: str, dtype: type | None = None) -> np.ndarray:
    """A column as a numpy array, as `dtype` when given (KeyError when absent)."""
    return table.get(name, dtype)


def datetime_ns(table: Table, name: str, column_name: str) -> np.ndarray:
    """Int64 nanoseconds of a datetime column (NaT as the int64 minimum)."""
    values = column_values(table, column_name)
    if values.dtype.kind != "M":  # timezone-aware, or not dates at all
        series = table.series(column_name)
        if isinstance(series.dtype, pd.DatetimeTZDtype) or not is_datetime64_any_dtype(
            series.dtype
        ):
            raise TypeError(
                f"{name}.{column_name}: expected timezone-naive datetime64 values of a "
                f"normalised cohort (data.cohort.load_cohort), got {series.dtype}"
            )
        values = series.to_numpy()
    if values.dtype != np.dtype("datetime64[ns]"):
        values = values.astype("datetime64[ns]")
    return values.view(np.int64)


def ceil_seconds(ns: np.ndarray) -> np.ndarray:
    """Record times in whole seconds, rounded up (leakage-safe for sub-second times)."""
    return -((-ns) // NS_PER_S)


def day_of(ns: np.ndarray) -> np.ndarray:
    """Calendar day number (days since 1970-01-01) of int64 nanosecond times."""
    return ns // NS_PER_DAY


@dataclass(frozen=True)
class Timeline:
    """Episodes, their patients and cut-offs, and the key space shared by all record tables."""

    episode_ids: np.ndarray
    patient_ids: np.ndarray  # sorted unique patient ids of the episodes
    patient_code: np.ndarray  # per episode, position in patient_ids
    index_ns: np.ndarray
    index_day: np.ndarray  # calendar day number of the index date
    cutoff_s: np.ndarray  # last included second
    origin_s: int
    span: int
    patient_start_key: np.ndarray  # key of the first possible record of the episode's patient
    cutoff_key: np.ndarray  # key of the episode's cut-off

    @property
    def n(self) -> int:
        return len(self.episode_ids)

    def key(self, codes: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        return codes * self.span + (seconds - self.origin_s)

    def day_start_key(self, day: np.ndarray) -> np.ndarray:
        """Key of midnight starting calendar `day`, clamped into the episode's patient range."""
        seconds = np.maximum(day * S_PER_DAY, self.origin_s)
        return self.key(self.patient_code, seconds)


def episode_frame(
    episodes: Table | pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(episode ids, patient ids, index times in ns) of the episodes table, checked."""
    episodes = as_table(episodes, "episodes")
    names = episodes.names
    for column in ("episode_id", "patient_id", "index_date"):
        if column not in names:
            raise ValueError(f"episodes: missing required column {column!r}")
    ids = column_values(episodes, "episode_id", object)
    pids = column_values(episodes, "patient_id", object)
    index_ns = datetime_ns(episodes, "episodes", "index_date")
    if len(ids) > 1:
        lookup(ids, ids[:0], "episodes.episode_id")  # raises on a duplicate id
    missing = index_ns == NAT
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise ValueError(f"episodes: row {first}: index_date is missing (episode {ids[first]!r})")
    return ids, pids, index_ns


def build_timeline(
    ids: np.ndarray,
    pids: np.ndarray,
    index_ns: np.ndarray,
    record_seconds: list[np.ndarray],
    lookback_days: int,
) -> Timeline:
    """Timeline of the episodes, with a key space covering every record time given."""
    if len(pids) <= SMALL:
        patient_ids = np.array(sorted(set(pids.tolist())), dtype=object)
        patient_code = lookup(patient_ids, pids, "patients")
    else:
        patient_ids, patient_code = np.unique(pids, return_inverse=True)
        patient_code = patient_code.astype(np.int64)
    index_day = day_of(index_ns)
    is_date = index_ns % NS_PER_DAY == 0
    # A date-only index includes the whole index day; a time is an inclusive cut-off.
    cutoff_ns = np.where(is_date, index_ns + (NS_PER_DAY - 1), index_ns)
    cutoff_s = cutoff_ns // NS_PER_S
    lows = [int(index_day.min()) * S_PER_DAY - (lookback_days + 1) * S_PER_DAY] if len(ids) else []
    highs = [int(cutoff_s.max())] if len(ids) else []
    for seconds in record_seconds:
        if len(seconds):
            lows.append(int(seconds.min()))
            highs.append(int(seconds.max()))
    origin = min(lows) if lows else 0
    span = (max(highs) - origin + 2) if highs else 2
    if span * max(len(patient_ids), 1) >= _KEY_LIMIT:
        raise ValueError(
            f"record times span {span / S_PER_DAY / 365.25:.0f} years over {len(patient_ids)} "
            "patients: too wide for the feature index; check the dates in labs and regimens"
        )
    return Timeline(
        episode_ids=ids,
        patient_ids=patient_ids,
        patient_code=patient_code,
        index_ns=index_ns,
        index_day=index_day,
        cutoff_s=cutoff_s,
        origin_s=origin,
        span=span,
        patient_start_key=patient_code * span,
        cutoff_key=patient_code * span + (cutoff_s - origin),
    )


def patient_codes(timeline: Timeline, pids: np.ndarray) -> np.ndarray:
    """Code of each record's patient in the timeline (-1 for patients without an episode)."""
    known = timeline.patient_ids
    if len(known) == 1:
        return np.where(pids == known[0], 0, -1).astype(np.int64)
    return lookup(known, pids, "patients")


def sorted_by_key(keys: np.ndarray) -> np.ndarray | None:
    """A stable order that sorts `keys`, or None when they are already sorted."""
    if len(keys) < 2 or bool(np.all(keys[1:] >= keys[:-1])):
        return None
    return np.argsort(keys, kind="stable")


def segments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten the ranges [lo, hi) into (owner of each element, element index, range length)."""
    counts = np.maximum(hi - lo, 0)
    owner = np.repeat(np.arange(len(lo)), counts)
    starts = np.cumsum(counts) - counts
    index = np.arange(int(counts.sum())) - np.repeat(starts - lo, counts)
    return owner, index, counts


def range_reduce(ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`ufunc.reduce(values[lo:hi])` for every range, NaN for empty ranges (ranges may overlap)."""
    out = np.full(len(lo), np.nan)
    nonempty = hi > lo
    if not nonempty.any():
        return out
    padded = np.append(values.astype(np.float64, copy=False), np.nan)
    bounds = np.column_stack((lo[nonempty], hi[nonempty])).ravel()
    out[nonempty] = ufunc.reduceat(padded, bounds)[::2]
    return out


# Below this many values, plain dict lookups beat pandas' hash tables (one patient's records);
# both give the same codes, in order of first appearance.
SMALL = 64


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes in order of first appearance, uniques) of hashable values without missing ones."""
    if len(values) > SMALL:
        codes, uniques = pd.factorize(values, use_na_sentinel=False)
        return codes.astype(np.int64), np.asarray(uniques, dtype=values.dtype)
    seen: dict[object, int] = {}
    codes = np.fromiter(
        (seen.setdefault(v, len(seen)) for v in values.tolist()), dtype=np.int64, count=len(values)
    )
    return codes, np.array(list(seen), dtype=values.dtype)


def is_missing(values: np.ndarray) -> np.ndarray:
    """`pd.isna(values)` of a 1-D array; a few strings and Nones are checked in plain Python."""
    if len(values) <= SMALL and values.dtype == object:
        items = values.tolist()
        if all(type(v) is str or v is None for v in items):
            return np.array([v is None for v in items], dtype=bool)
    return pd.isna(values)


def lookup(keys: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Position of each wanted value in `keys` (-1 when absent); `keys` must be unique."""
    if len(keys) <= SMALL and len(wanted) <= SMALL:
        table: dict[object, int] = {}
        for i, key in enumerate(keys.tolist()):
            if key in table:
                raise ValueError(f"{what}: {key!r} appears more than once")
            table[key] = i
        return np.fromiter(
            (table.get(w, -1) for w in wanted.tolist()), dtype=np.int64, count=len(wanted)
        )
    index = pd.Index(keys)
    if not index.is_unique:
        raise ValueError(f"{what}: {index[index.duplicated()][0]!r} appears more than once")
    return index.get_indexer(wanted).astype(np.int64)
