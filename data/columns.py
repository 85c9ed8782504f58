"""Typed columns for the cohort loader: every input becomes numpy arrays before any check.

A table's columns are held as numpy arrays (float64, int64, bool, datetime64[ns] or object) or,
for text given dictionary-encoded (Arrow dictionaries, pandas categoricals), as `Coded` (codes
into distinct values). Rows of dicts (one patient over HTTP), pandas frames, CSV and Parquet all
arrive in this one form, so the loader has one implementation of each check and normalisation,
and its cost per call is a few numpy or pyarrow calls (microseconds), not pandas Series
operations. Per-value Python work happens on distinct values only (`factorize`), except when
reading rows of dicts, which are Python objects already. The loader's output keeps the arrays
(`data.table.Table`); frames are built only at the edge, with the public `pd.DataFrame`.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes

NS = np.dtype("datetime64[ns]")
_NAT = np.datetime64("NaT", "ns")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "nat", "<na>"})


@dataclass(frozen=True)
class Coded:
    """Text held as codes into its distinct values (-1: missing), as read dictionary-encoded."""

    codes: np.ndarray
    uniques: np.ndarray  # object

    def __len__(self) -> int:
        return len(self.codes)

    def to_numpy(self) -> np.ndarray:
        """The values as an object array (None where missing)."""
        return np.append(self.uniques, None)[self.codes]

    def take(self, rows: np.ndarray) -> Coded:
        return Coded(self.codes[rows], self.uniques)


Column = np.ndarray | Coded


def value_at(column: Column, position: int) -> object:
    """The value of one row as given (for messages)."""
    if isinstance(column, Coded):
        code = column.codes[position]
        return None if code < 0 else column.uniques[code]
    value = column[position]
    if column.dtype.kind == "M":
        return pd.Timestamp(value)
    return value


def as_array(column: Column) -> np.ndarray:
    return column.to_numpy() if isinstance(column, Coded) else column


def take(column: Column, rows: np.ndarray) -> Column:
    return column.take(rows) if isinstance(column, Coded) else column[rows]


def is_na(value: object) -> bool:
    """None, NaN, NaT or pd.NA (a missing value as pandas sees one)."""
    if value is None or value is pd.NA:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def missing(column: Column) -> np.ndarray:
    """Rows holding no value (null, NaN, NaT, None)."""
    if isinstance(column, Coded):
        return column.codes < 0
    kind = column.dtype.kind
    if kind == "f":
        return np.isnan(column)
    if kind in "mM":
        return np.isnat(column)
    if kind == "O":
        return np.fromiter(map(is_na, column), dtype=bool, count=len(column))
    return np.zeros(len(column), dtype=bool)


# ---------------------------------------------------------------------------------------------
# Inputs to columns


def of_rows(rows: Sequence[Mapping[str, object]]) -> tuple[dict[str, Column], int]:
    """Columns of a list of row dicts (keys in order of first appearance; an absent key is NaN,
    as `pd.DataFrame(rows)` reads it), each typed as `array_of` infers it."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    nan = np.nan
    return {str(name): array_of([row.get(name, nan) for row in rows]) for name in names}, len(rows)


def array_of(values: list) -> np.ndarray:
    """A typed array of Python values: float64 (int64) when all are numbers or missing,
    bool when all are booleans, else object (values as given, None where missing)."""
    types = set(map(type, values))
    if types <= {int, float, type(None)} and types != {type(None)}:
        if float in types or type(None) in types:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        if all(_INT64_MIN <= v <= _INT64_MAX for v in values):
            return np.array(values, dtype=np.int64)
    elif types == {bool}:
        return np.array(values, dtype=bool)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def of_frame(frame: pd.DataFrame) -> dict[str, Column]:
    """Columns of a pandas frame (names as text), without copying what numpy can view."""
    columns: dict[str, Column] = {}
    for position, name in enumerate(frame.columns):
        columns[str(name)] = of_series(frame.iloc[:, position])
    return columns


def of_series(values: pd.Series) -> Column:
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return Coded(
            np.asarray(values.cat.codes),
            np.asarray(values.cat.categories, dtype=object),
        )
    if ptypes.is_datetime64_any_dtype(dtype):
        if getattr(dtype, "tz", None) is not None:
            values = values.dt.tz_localize(None)
        return values.to_numpy(dtype=NS)
    if isinstance(dtype, pd.StringDtype):
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        return Coded(np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object))
    if isinstance(dtype, pd.api.extensions.ExtensionDtype):
        if ptypes.is_bool_dtype(dtype) and not values.hasnans:
            return values.to_numpy(dtype=bool)
        if ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype):
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        return values.to_numpy(dtype=object, na_value=None)
    return values.to_numpy()


def of_arrow(table: pa.Table) -> dict[str, Column]:
    """Columns of an Arrow table: dictionaries stay coded, timestamps become datetime64[ns]."""
    columns: dict[str, Column] = {}
    for name, chunked in zip(table.column_names, table.columns, strict=True):
        columns[str(name).strip()] = _of_arrow_column(chunked)
    return columns


def _of_arrow_column(chunked: pa.ChunkedArray) -> Column:
    kind = chunked.type
    if pa.types.is_dictionary(kind):
        array = chunked.unify_dictionaries().combine_chunks() if chunked.num_chunks else None
        if array is None:
            return Coded(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))
        codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        return Coded(codes, array.dictionary.to_numpy(zero_copy_only=False).astype(object))
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:
            chunked = chunked.cast(pa.timestamp(kind.unit))
        return chunked.cast(pa.timestamp("ns")).to_numpy().astype(NS, copy=False)
    if pa.types.is_date(kind):
        return chunked.cast(pa.timestamp("ns")).to_numpy().astype(NS, copy=False)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if chunked.null_count:
            return chunked.cast(pa.float64()).to_numpy()  # nulls become NaN, as pandas reads them
        return chunked.to_numpy()
    if pa.types.is_boolean(kind) and not chunked.null_count:
        return chunked.to_numpy()
    return chunked.to_pandas().to_numpy(dtype=object)


# ---------------------------------------------------------------------------------------------
# Distinct values


def factorize(column: Column) -> tuple[np.ndarray, list]:
    """(codes, distinct values in order of first appearance); missing values have code -1."""
    if isinstance(column, Coded):
        return column.codes, list(column.uniques)
    if column.dtype == object:
        # A dict, not pd.factorize: pandas 2's string hash stops at NUL, so it merges "a\x00b"
        # with "a" (and "\x00" with ""); and lists or dicts where text belongs are unhashable.
        index: dict[object, int] = {}
        uniques: list = []
        codes = np.empty(len(column), dtype=np.int64)
        for i, value in enumerate(column):
            if is_na(value):
                codes[i] = -1
                continue
            try:
                code = index.get(value)
            except TypeError:  # unhashable (a list or dict where text belongs): by its text
                value = str(value)
                code = index.get(value)
            if code is None:
                code = index[value] = len(uniques)
                uniques.append(value)
            codes[i] = code
        return codes, uniques
    codes, found = pd.factorize(column, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), list(found)


def clean_text(value: object) -> str | None:
    """Text of one value, stripped; None when missing or blank (1.0 reads as "1")."""
    if is_na(value):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


class Texts:
    """A text column cleaned: codes into `uniques` (distinct cleaned texts, -1 when missing), the
    missing rows, and `values` (str or None per row, made when asked: a large table's codes
    often suffice)."""

    def __init__(self, codes: np.ndarray, uniques: list[str]) -> None:
        self.codes = codes
        self.uniques = uniques
        self.missing = codes < 0

    @functools.cached_property
    def values(self) -> np.ndarray:
        return lookup([*self.uniques, None], self.codes)


def lookup(table: list, codes: np.ndarray) -> np.ndarray:
    """`table[code]` for each code as an object array (code -1 picks the last entry)."""
    values = np.empty(len(table), dtype=object)
    values[:] = table
    return values[codes]


def texts(column: Column) -> Texts:
    if isinstance(column, np.ndarray) and column.dtype == object:
        return _texts_of_objects(column)
    codes, found = factorize(column)
    cleaned = [clean_text(u) for u in found]
    # Cleaning may merge distinct inputs (" a" and "a"): renumber by cleaned text.
    index: dict[str, int] = {}
    remap = np.empty(len(cleaned) + 1, dtype=_code_dtype(len(cleaned)))
    for i, text in enumerate(cleaned):
        remap[i] = -1 if text is None else index.setdefault(text, len(index))
    remap[-1] = -1
    return Texts(remap[codes], list(index))


def _texts_of_objects(column: np.ndarray) -> Texts:
    """`texts` of Python values: one pass, each distinct value cleaned once."""
    code_of: dict[object, int] = {}
    index: dict[str, int] = {}
    codes = []
    for value in column.tolist():
        try:
            code = code_of.get(value)
        except TypeError:  # unhashable (a list or dict where text belongs): by its text
            value = str(value)
            code = code_of.get(value)
        if code is None:
            text = clean_text(value)
            code = code_of[value] = -1 if text is None else index.setdefault(text, len(index))
        codes.append(code)
    return Texts(np.array(codes, dtype=np.int64), list(index))


def _code_dtype(n_uniques: int) -> type:
    """Codes of a large table take half the memory as int32."""
    return np.int32 if n_uniques < 2**31 - 1 else np.int64


# ---------------------------------------------------------------------------------------------
# Parsers: new values plus masks of missing and unreadable rows


def missing_token(values: np.ndarray) -> np.ndarray:
    """Rows holding no value or a missing-value token ("", "NA", "null", ...)."""
    return np.fromiter(
        (is_na(v) or (isinstance(v, str) and v.strip().lower() in MISSING_TOKENS) for v in values),
        dtype=bool,
        count=len(values),
    )


def numbers(column: Column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing, not a finite number)."""
    if isinstance(column, Coded):
        parsed, gone, bad = numbers(np.asarray(column.uniques, dtype=object))
        codes = column.codes
        return (
            np.append(parsed, np.nan)[codes],
            np.append(gone, True)[codes],
            np.append(bad, False)[codes],
        )
    if column.dtype.kind in "biuf":
        out = column.astype(np.float64)
        return out, np.isnan(out), np.isinf(out)
    out = np.asarray(pd.to_numeric(column, errors="coerce"), dtype=np.float64)
    nan = np.isnan(out)
    gone = np.zeros(len(out), dtype=bool)
    if nan.any():
        gone[nan] = missing_token(column[nan])
    return out, gone, (nan & ~gone) | np.isinf(out)


def dates(column: Column) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(datetime64[ns] values, missing, unparseable, had UTC offsets).

    ISO 8601 text is parsed by Arrow (as the file readers do); a column Arrow cannot read whole
    goes to pandas' more tolerant parser, which also drops UTC offsets (keeping local time).
    """
    if isinstance(column, Coded):
        parsed, gone, bad, offsets = dates(np.asarray(column.uniques, dtype=object))
        codes = column.codes
        return (
            np.append(parsed, _NAT)[codes],
            np.append(gone, True)[codes],
            np.append(bad, False)[codes],
            offsets,
        )
    if column.dtype.kind == "M":
        out = column.astype(NS, copy=False)
        return out, np.isnat(out), np.zeros(len(out), dtype=bool), False
    if column.dtype == object:
        plain = _plain_dates(column)
        if plain is not None:
            return plain, np.isnat(plain), np.zeros(len(plain), dtype=bool), False
        try:
            arrow = pa.array(column, type=pa.string(), from_pandas=True)
            out = arrow.cast(pa.timestamp("ns")).to_numpy(zero_copy_only=False)
            out = out.astype(NS, copy=False)
            return out, np.isnat(out), np.zeros(len(out), dtype=bool), False
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    return _dates_pandas(column)


#: Plain ISO 8601 dates and times (no offset, year 1900-2200), which numpy parses exactly as Arrow.
_PLAIN_ISO = re.compile(
    r"(?:19\d\d|2[01]\d\d|2200)-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:T(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,9})?)?)?"
)


def _plain_dates(column: np.ndarray) -> np.ndarray | None:
    """numpy's parser for text that is all plain ISO 8601 (or missing): a few microseconds for
    one patient where Arrow's costs tens; None when any value needs Arrow or pandas."""
    if not _numpy_agrees_with_arrow():
        return None
    values = column.tolist()
    for i, value in enumerate(values):
        if type(value) is not str:
            if not is_na(value):
                return None
            values[i] = None
        elif _PLAIN_ISO.fullmatch(value) is None:
            return None
    try:
        return np.array(values, dtype=NS)
    except ValueError:  # 2025-02-30
        return None


@functools.cache
def _numpy_agrees_with_arrow() -> bool:
    """The numpy kernel steps aside unless it parses these samples exactly as Arrow does."""
    samples = [
        "1900-01-01",
        "2200-12-31",
        "2025-03-10",
        "2024-02-29T23:59",
        "2025-03-10T08:00:00",
        "2025-03-10T08:00:00.5",
        "2025-03-10T08:00:00.123456789",
        None,
    ]
    try:
        arrow = pa.array(samples, type=pa.string()).cast(pa.timestamp("ns"))
        mine = np.array(samples, dtype=NS)
    except (ValueError, pa.ArrowException):
        return False
    ok = all(_PLAIN_ISO.fullmatch(s) for s in samples if s is not None)
    return ok and np.array_equal(arrow.to_numpy(zero_copy_only=False), mine, equal_nan=True)


def _dates_pandas(column: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    values = pd.Series(column, dtype=object if column.dtype.kind in "OUS" else None)
    had_offsets = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = pd.to_datetime(values, format="ISO8601", errors="coerce")
        except (ValueError, TypeError, OverflowError):
            parsed = None
        if parsed is None or not (
            ptypes.is_datetime64_dtype(parsed.dtype) and getattr(parsed.dtype, "tz", None) is None
        ):
            # UTC offsets: keep the local wall-clock time the hospital recorded.
            had_offsets = True
            stripped = values.astype(str).str.strip().str.replace(_TZ_SUFFIX, "", regex=True)
            stripped[values.isna()] = None
            parsed = pd.to_datetime(stripped, format="ISO8601", errors="coerce")
    out = parsed.to_numpy(dtype=NS)
    nat = np.isnat(out)
    gone = np.zeros(len(out), dtype=bool)
    if nat.any():
        gone[nat] = missing_token(column[nat])
    return out, gone, nat & ~gone, had_offsets


_TZ_SUFFIX = r"(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})


def booleans(column: Column) -> tuple[np.ndarray, np.ndarray]:
    """(float 1.0/0.0/NaN, unreadable) from true/false/1/0/yes/no (any case) or booleans."""
    if not isinstance(column, Coded) and column.dtype.kind in "biuf":
        out = column.astype(np.float64)
        bad = ~np.isnan(out) & (out != 0.0) & (out != 1.0)
        out[bad] = np.nan
        return out, bad
    codes, found = factorize(column)
    parsed = [boolean(u) for u in found]
    bad = np.array([p is None for p in parsed] + [False], dtype=bool)
    out = np.array([np.nan if p is None else p for p in parsed] + [np.nan], dtype=np.float64)
    return out[codes], bad[codes]


def boolean(value: object) -> float | None:
    """1.0, 0.0, NaN (unknown) or None (not a boolean) for one value."""
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        if np.isnan(value):
            return np.nan
        return float(value) if value in (0, 1) else None
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    if text in MISSING_TOKENS:
        return np.nan
    return None
