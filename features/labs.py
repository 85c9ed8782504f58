"""Lab features: last value and its age per analyte, and the platelet history before the index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.table import Table, as_table
from features.registry import (
    ANC_MIN_WINDOW,
    ANC_SLOPE_WINDOW,
    LAB_ANALYTES,
    PLT_COUNT_WINDOW,
    PLT_TREND_WINDOW,
    PLT_WINDOWS,
)
from features.timeline import (
    NAT,
    S_PER_DAY,
    Timeline,
    ceil_seconds,
    column_values,
    datetime_ns,
    day_of,
    factorize,
    patient_codes,
    range_reduce,
    segments,
    sorted_by_key,
)

LAB_COLUMNS = ("patient_id", "time", "test", "value")


@dataclass(frozen=True)
class LabRecords:
    """Lab rows of the episodes' patients, as arrays; `seconds` and `day` of each measurement."""

    patient_id: np.ndarray
    seconds: np.ndarray
    day: np.ndarray
    test: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class AnalyteSeries:
    """One analyte's measurements sorted by key."""

    key: np.ndarray
    seconds: np.ndarray
    day: np.ndarray
    value: np.ndarray
    # The block's place in the arrays shared by every analyte (for one search over all of them).
    start: int = 0
    shared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def read_labs(labs: Table | pd.DataFrame | None) -> LabRecords | None:
    """Dated, valued lab rows as arrays (rows without a time or a value are not measurements)."""
    labs = as_table(labs, "labs")
    if labs is None or len(labs) == 0:
        return None
    names = labs.names
    for name in LAB_COLUMNS:
        if name not in names:
            raise ValueError(f"labs: missing required column {name!r}")
    ns = datetime_ns(labs, "labs", "time")
    value = column_values(labs, "value")
    if value.dtype.kind not in "fiub":
        raise TypeError(f"labs.value: expected numbers of a normalised cohort, got {value.dtype}")
    value = value.astype(np.float64, copy=False)
    keep = (ns != NAT) & ~np.isnan(value)
    pids = column_values(labs, "patient_id", object)
    test = column_values(labs, "test", object)
    if not keep.all():
        ns, value, pids, test = ns[keep], value[keep], pids[keep], test[keep]
    return LabRecords(pids, ceil_seconds(ns), day_of(ns), test, value)


def analyte_series(
    records: LabRecords | None, timeline: Timeline, codes: list[str]
) -> dict[str, AnalyteSeries]:
    """Per requested test code (matched case-insensitively), its measurements sorted by key."""
    if records is None:
        empty = AnalyteSeries(*(np.empty(0, dtype=np.int64) for _ in range(3)), np.empty(0))
        return {code: empty for code in codes}
    pcode = patient_codes(timeline, records.patient_id)
    key = timeline.key(pcode, records.seconds)
    test_codes, uniques = factorize(records.test)
    # Slot of each requested code among the distinct tests (matched case-insensitively).
    slot_of: dict[str, int] = {code.strip().lower(): i for i, code in enumerate(codes)}
    unique_slot = np.fromiter(
        (slot_of.get(str(u).strip().lower(), len(codes)) for u in uniques.tolist()),
        dtype=np.int64,
        count=len(uniques),
    )
    slot = unique_slot[test_codes] if len(uniques) else np.empty(0, dtype=np.int64)
    slot[pcode < 0] = len(codes)  # patients without an episode
    # One stable sort by (slot, key): each analyte becomes a contiguous, key-sorted block.
    by_key = sorted_by_key(key)
    if by_key is None:
        order = np.argsort(slot.astype(np.int16), kind="stable")
    else:
        order = by_key[np.argsort(slot[by_key].astype(np.int16), kind="stable")]
    bounds = np.searchsorted(slot[order], np.arange(len(codes) + 1), "left")
    key, seconds = key[order], records.seconds[order]
    day, value = records.day[order], records.value[order]
    out: dict[str, AnalyteSeries] = {}
    for i, code in enumerate(codes):
        block = slice(bounds[i], bounds[i + 1])
        out[code] = AnalyteSeries(
            key[block], seconds[block], day[block], value[block], int(bounds[i]), (key, day, value)
        )
    return out


def last_values(
    series: AnalyteSeries, timeline: Timeline, upper_key: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(last value, calendar days from it to the index date) at or before `upper_key`."""
    upper = timeline.cutoff_key if upper_key is None else upper_key
    pos = np.searchsorted(series.key, upper, side="right") - 1
    safe = np.maximum(pos, 0)
    valid = pos >= 0
    if len(series.key):
        valid &= series.key[safe] >= timeline.patient_start_key
    else:
        valid[:] = False
    value = np.full(timeline.n, np.nan)
    days = np.full(timeline.n, np.nan)
    if valid.any():
        value[valid] = series.value[safe[valid]]
        days[valid] = timeline.index_day[valid] - series.day[safe[valid]]
    return value, days


def lab_features(series: dict[str, AnalyteSeries], timeline: Timeline) -> dict[str, np.ndarray]:
    """`<analyte>_last` and `<analyte>_days_since` for every canonical analyte, and the recent
    neutrophil trend (`anc_min_<w>d`, `anc_slope_<w>d`: recent myelosuppression)."""
    blocks = [series[alias] for alias in LAB_ANALYTES]
    shared = blocks[0].shared
    anc = window_stats(series["ANC"], timeline, (ANC_MIN_WINDOW, ANC_SLOPE_WINDOW))
    trend = {
        f"anc_min_{ANC_MIN_WINDOW}d": anc.minimum[0],
        f"anc_slope_{ANC_SLOPE_WINDOW}d": anc.slope[1],
    }
    if shared is None or len(shared[0]) == 0:
        empty = np.full(timeline.n, np.nan)
        return {
            f"{prefix}_{what}": empty.copy()
            for prefix, _, _ in LAB_ANALYTES.values()
            for what in ("last", "days_since")
        } | trend
    key, day, value = shared
    # One search per analyte block, then every analyte at once (same result as `last_values`).
    pos = np.stack(
        [np.searchsorted(b.key, timeline.cutoff_key, "right") - 1 + b.start for b in blocks]
    )
    starts = np.array([b.start for b in blocks])[:, None]
    safe = np.clip(pos, 0, len(key) - 1)
    valid = (pos >= starts) & (key[safe] >= timeline.patient_start_key[None, :])
    last = np.where(valid, value[safe], np.nan)
    days = np.where(valid, timeline.index_day[None, :] - day[safe], np.nan)
    out: dict[str, np.ndarray] = {}
    for i, (prefix, _, _) in enumerate(LAB_ANALYTES.values()):
        out[f"{prefix}_last"] = last[i]
        out[f"{prefix}_days_since"] = days[i]
    return out | trend


@dataclass(frozen=True)
class WindowStats:
    """Per window (rows, in the order asked) and episode (columns): the minimum, the
    least-squares slope per day and the number of measurements."""

    minimum: np.ndarray
    slope: np.ndarray
    count: np.ndarray


def window_stats(
    series: AnalyteSeries, timeline: Timeline, windows: tuple[int, ...]
) -> WindowStats:
    """Statistics of an analyte's values from midnight `window` days before the index day up to
    the cut-off, for several windows in one pass (NaN minimum and slope when a window is empty;
    NaN slope unless two measurements differ in time)."""
    n, k = timeline.n, len(windows)
    starts = [timeline.day_start_key(timeline.index_day - window) for window in windows]
    lo = np.searchsorted(series.key, np.concatenate(starts), "left")
    hi = np.tile(np.searchsorted(series.key, timeline.cutoff_key, "right"), k)
    owner, index, counts = segments(lo, hi)
    y = series.value[index]
    # Days relative to the index day keep the sums small and exact enough.
    x = (series.seconds[index] - np.tile(timeline.index_day, k)[owner] * S_PER_DAY) / S_PER_DAY
    minimum = np.full(n * k, np.nan)
    filled = counts > 0
    if len(y):
        minimum[filled] = np.minimum.reduceat(y, (np.cumsum(counts) - counts)[filled])
    size = np.maximum(counts, 1)
    x_mean = np.bincount(owner, weights=x, minlength=n * k) / size
    y_mean = np.bincount(owner, weights=y, minlength=n * k) / size
    xc = x - x_mean[owner]
    sxx = np.bincount(owner, weights=xc * xc, minlength=n * k)
    sxy = np.bincount(owner, weights=xc * (y - y_mean[owner]), minlength=n * k)
    slope = np.full(n * k, np.nan)
    defined = sxx > 0
    slope[defined] = sxy[defined] / sxx[defined]
    shape = (k, n)
    return WindowStats(
        minimum.reshape(shape), slope.reshape(shape), counts.astype(np.float64).reshape(shape)
    )


def _last_change(series: AnalyteSeries, timeline: Timeline, window: int) -> np.ndarray:
    """(last - previous value) / days between them, of the two latest measurements from midnight
    `window` days before the index day up to the cut-off (NaN with fewer than two at different
    times)."""
    out = np.full(timeline.n, np.nan)
    if len(series.key) == 0:
        return out
    lo = np.searchsorted(series.key, timeline.day_start_key(timeline.index_day - window), "left")
    last = np.searchsorted(series.key, timeline.cutoff_key, "right") - 1
    prev = last - 1
    safe_last, safe_prev = np.maximum(last, 0), np.maximum(prev, 0)
    days = (series.seconds[safe_last] - series.seconds[safe_prev]) / S_PER_DAY
    valid = (prev >= lo) & (days > 0)
    out[valid] = (series.value[safe_last[valid]] - series.value[safe_prev[valid]]) / days[valid]
    return out


def platelet_features(
    plt: AnalyteSeries, timeline: Timeline, cycle_start_day: np.ndarray
) -> dict[str, np.ndarray]:
    """Platelet history: window minima and slopes, the short-term slope and last change,
    measurement count, cycle nadir, pre-cycle PLT.

    `cycle_start_day` is the calendar day of the current regimen/cycle start (on or before the
    index date; -1 when there is none).
    """
    windows = (*PLT_WINDOWS, PLT_TREND_WINDOW)
    stats = window_stats(plt, timeline, windows)
    out: dict[str, np.ndarray] = {}
    for i, window in enumerate(PLT_WINDOWS):
        out[f"plt_min_{window}d"] = stats.minimum[i]
        out[f"plt_slope_{window}d"] = stats.slope[i]
    out[f"plt_slope_{PLT_TREND_WINDOW}d"] = stats.slope[windows.index(PLT_TREND_WINDOW)]
    out[f"plt_n_{PLT_COUNT_WINDOW}d"] = stats.count[windows.index(PLT_COUNT_WINDOW)]
    out["plt_change_last"] = _last_change(plt, timeline, PLT_COUNT_WINDOW)
    has_cycle = cycle_start_day >= 0
    start_key = timeline.day_start_key(np.where(has_cycle, cycle_start_day, timeline.index_day))
    cutoff = timeline.cutoff_key
    lo = np.searchsorted(plt.key, start_key, "left")
    hi = np.searchsorted(plt.key, cutoff, "right")
    hi = np.where(has_cycle, hi, lo)
    out["plt_nadir_cycle"] = range_reduce(np.minimum, plt.value, lo, hi)
    # The start day is included (the pre-cycle count is drawn that morning), but never past the
    # cut-off when the cycle starts on the index day itself.
    end_of_start_day = timeline.day_start_key(cycle_start_day + 1) - 1
    pre, _ = last_values(plt, timeline, np.minimum(end_of_start_day, cutoff))
    pre[~has_cycle] = np.nan
    out["plt_pre_cycle"] = pre
    return out
