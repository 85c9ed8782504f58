"""Regimen-history features: lines, cycles, days since the last dose and between the last two
cycle starts, drug-class exposure.

A regimen row counts when its start is on or before the cut-off. The current regimen is the one
with the latest such start (rows starting that same day together). Cycles in the current line:
the highest recorded `cycle` among the line's rows started so far, or the number of those rows when
no cycle number is recorded. When `line` is absent, rows of one regimen (by name, else by drugs)
form a line and `n_lines` counts the distinct regimens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.drugs import DRUG_CLASSES, classes_of
from data.table import Table, as_table
from features.timeline import (
    NAT,
    Timeline,
    ceil_seconds,
    column_values,
    datetime_ns,
    day_of,
    factorize,
    is_missing,
    patient_codes,
    range_reduce,
    sorted_by_key,
)

_CLASS_INDEX = {cls: i for i, cls in enumerate(DRUG_CLASSES)}


@dataclass(frozen=True)
class RegimenRecords:
    patient_id: np.ndarray
    seconds: np.ndarray
    day: np.ndarray
    classes: np.ndarray  # (rows, 14) 0/1
    line: np.ndarray
    cycle: np.ndarray
    regimen: np.ndarray  # identifier of the regimen: its name, else its drugs


def _float_column(table: Table, name: str) -> np.ndarray:
    if name not in table.names:
        return np.full(len(table), np.nan)
    values = column_values(table, name)
    if values.dtype.kind not in "fiub":
        series = table.series(name)
        try:
            values = pd.to_numeric(series, errors="raise").to_numpy()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"regimens.{name}: expected numbers, got {series.dtype}") from exc
    return values.astype(np.float64)


def _class_matrix(table: Table) -> np.ndarray:
    """Rows x 14 class indicators, from `classes` (or, failing that, from `drugs`)."""
    if "classes" in table.names:
        source, split = column_values(table, "classes", object), lambda text: text.split(";")
    else:
        source = column_values(table, "drugs", object)

        def split(text: str) -> list[str]:
            return [c for drug in text.split(";") for c in classes_of(drug)]

    codes, uniques = factorize(source)
    table = np.zeros((len(uniques), len(DRUG_CLASSES)), dtype=np.int64)
    for row, text in enumerate(uniques):
        for cls in split(str(text)):
            index = _CLASS_INDEX.get(cls.strip())
            if index is not None:
                table[row, index] = 1
    return table[codes]


def read_regimens(regimens: Table | pd.DataFrame | None) -> RegimenRecords | None:
    """Dated regimen rows as arrays (an undated row cannot be placed before the index)."""
    regimens = as_table(regimens, "regimens")
    if regimens is None or len(regimens) == 0:
        return None
    names = regimens.names
    for name in ("patient_id", "start_date", "drugs"):
        if name not in names:
            raise ValueError(f"regimens: missing required column {name!r}")
    ns = datetime_ns(regimens, "regimens", "start_date")
    keep = ns != NAT
    name = column_values(regimens, "drugs", object)
    if "regimen" in names:
        given = column_values(regimens, "regimen", object)
        named = ~is_missing(given) & (given != "")
        name = np.where(named, given, name)
    records = RegimenRecords(
        patient_id=column_values(regimens, "patient_id", object),
        seconds=ceil_seconds(ns),
        day=day_of(ns),
        classes=_class_matrix(regimens),
        line=_float_column(regimens, "line"),
        cycle=_float_column(regimens, "cycle"),
        regimen=name,
    )
    if keep.all():
        return records
    return RegimenRecords(**{k: v[keep] for k, v in records.__dict__.items()})


def _codes(values: np.ndarray) -> np.ndarray:
    return factorize(values)[0]


def regimen_features(
    records: RegimenRecords | None, timeline: Timeline
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(features, calendar day of the current regimen start or -1) for every episode."""
    n = timeline.n
    if records is None:
        records = RegimenRecords(
            *(np.empty(0, dtype=t) for t in (object, np.int64, np.int64)),
            np.zeros((0, len(DRUG_CLASSES)), dtype=np.int64),
            np.empty(0),
            np.empty(0),
            np.empty(0, dtype=object),
        )
    pcode = patient_codes(timeline, records.patient_id)
    own = pcode >= 0
    key = timeline.key(pcode, records.seconds)
    fields = {k: v for k, v in records.__dict__.items() if k != "patient_id"}
    if not own.all():  # rows of patients without an episode
        key, pcode = key[own], pcode[own]
        fields = {k: v[own] for k, v in fields.items()}
    order = sorted_by_key(key)
    if order is not None:
        key, pcode = key[order], pcode[order]
        fields = {k: v[order] for k, v in fields.items()}
    lo = np.searchsorted(key, timeline.patient_start_key, "left")
    hi = np.searchsorted(key, timeline.cutoff_key, "right")
    has = hi > lo
    last = np.maximum(hi - 1, 0)

    cumulative = np.zeros((len(key) + 1, len(DRUG_CLASSES)), dtype=np.int64)
    np.cumsum(fields["classes"], axis=0, out=cumulative[1:])
    exposed = (cumulative[hi] - cumulative[lo]) > 0
    tie_lo = np.searchsorted(key, key[last], "left") if len(key) else lo
    current = ((cumulative[hi] - cumulative[np.where(has, tie_lo, hi)]) > 0) & has[:, None]

    regimen_code = _codes(fields["regimen"]) if len(key) else np.empty(0, dtype=np.int64)
    n_regimens = int(regimen_code.max()) + 1 if len(key) else 1
    first = np.zeros(len(key) + 1, dtype=np.int64)
    if len(key):
        _, first_index = np.unique(pcode * n_regimens + regimen_code, return_index=True)
        first[first_index + 1] = 1
    distinct = np.cumsum(first)
    max_line = range_reduce(np.fmax, fields["line"], lo, hi)
    n_lines = np.where(np.isnan(max_line), (distinct[hi] - distinct[lo]), max_line)

    cycles = np.full(n, np.nan)
    if has.any():
        line = fields["line"]
        line_code = np.where(np.isnan(line), 0, _codes(np.where(np.isnan(line), -1.0, line)) + 1)
        # A row without a line belongs to its regimen's own group (offset past every line code).
        group_local = np.where(np.isnan(line), line_code.max() + 1 + regimen_code, line_code)
        group = pcode * (int(group_local.max()) + 1) + group_local
        by_group = np.lexsort((key, group))
        position = np.empty_like(by_group)
        position[by_group] = np.arange(len(by_group))
        group_sorted = group[by_group]
        start = np.searchsorted(group_sorted, group[last], "left")
        stop = position[last] + 1
        max_cycle = range_reduce(np.fmax, fields["cycle"][by_group], start, stop)
        counted = np.where(np.isnan(max_cycle), stop - start, max_cycle)
        cycles[has] = counted[has]

    start_day = np.where(has, fields["day"][last] if len(key) else -1, -1)
    days_since = np.where(has, timeline.index_day - start_day, np.nan)
    # the start before the current one (rows starting together count once)
    previous = tie_lo - 1
    has_previous = has & (previous >= lo)
    previous_day = fields["day"][np.maximum(previous, 0)] if len(key) else np.zeros(n)
    interval = np.where(has_previous, start_day - previous_day, np.nan)

    out: dict[str, np.ndarray] = {
        "n_lines": n_lines.astype(np.float64),
        "cycles_current_line": cycles,
        "days_since_last_dose": days_since.astype(np.float64),
        "cycle_interval_days": interval.astype(np.float64),
    }
    # one conversion per matrix, then one row per class
    exposed_rows, current_rows = exposed.T.astype(np.float64), current.T.astype(np.float64)
    for i, cls in enumerate(DRUG_CLASSES):
        out[f"exposed_{cls}"] = exposed_rows[i]
    for i, cls in enumerate(DRUG_CLASSES):
        out[f"current_{cls}"] = current_rows[i]
    return out, start_day.astype(np.int64)
