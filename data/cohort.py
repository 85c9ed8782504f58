"""The cohort contract: load, validate and normalise a cohort's tables (DESIGN.md, "Cohort").

A cohort is a directory of `NAME.csv` / `NAME.parquet` tables, or the same tables in memory (one
patient over HTTP). Validation collects every problem with its table, line and column; nothing in
the input is modified. Every check is vectorised: per-row Python work happens only on distinct
values (test codes, units, drug lists, booleans) or on the rows that are reported.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes
from pandas.arrays import DatetimeArray
from pyarrow import compute as pa_compute
from pyarrow import csv as pa_csv
from pyarrow import parquet as pa_parquet

from data import drugs, units
from data.contract import (
    BOOLEAN_COLUMNS,
    DATE_COLUMNS,
    DATE_RANGE,
    REQUIRED_COLUMNS,
    REQUIRED_TABLES,
    SUBTYPES,
    TABLES,
    TEXT_COLUMNS,
    TRANSFUSION_PRODUCTS,
)
from data.issues import CohortError, Issue

try:  # pandas 2.x block internals (as pyarrow's to_pandas uses them), for `_frame_of_arrays`
    from pandas._libs.internals import BlockPlacement
    from pandas.core.internals import BlockManager
    from pandas.core.internals.blocks import new_block

    _BLOCKS = pd.__version__.startswith("2.")
except ImportError:  # another pandas: frames come from pd.DataFrame
    _BLOCKS = False

logger = logging.getLogger(__name__)

TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".pq")
# Past this many rows with the same problem, one more issue counts the rest (a million bad units
# would otherwise make an unreadable report).
MAX_ISSUES_PER_CHECK = 50

_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "nat", "<na>"})
_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})
_TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$")
_SUBTYPE_KEYS = {s.lower(): s for s in SUBTYPES}
_SECONDS_PER_YEAR = 365.25 * 86400.0
# Inputs up to this many rows take per-value fast paths (one patient over HTTP).
_SMALL = 256


@dataclass(frozen=True, eq=False)
class Cohort:
    """Validated, normalised cohort tables (new frames, never the input objects).

    See docs/ARCHITECTURE.md "data" for the columns of each frame.
    """

    patients: pd.DataFrame
    episodes: pd.DataFrame
    labs: pd.DataFrame
    regimens: pd.DataFrame
    outcomes: pd.DataFrame | None = None
    warnings: tuple[Issue, ...] = ()
    transfusions: pd.DataFrame | None = None
    # The simulator's true response probabilities (oracle.csv) when the directory has them.
    simulation: Mapping[str, object] | None = None
    conversions: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of `validate_cohort`: every error and warning, and a summary of what was read."""

    valid: bool
    errors: list[Issue]
    warnings: list[Issue]
    summary: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        """The `ctit validate --json` shape."""
        return {
            "valid": self.valid,
            "errors": [issue.as_dict() for issue in self.errors],
            "warnings": [issue.as_dict() for issue in self.warnings],
            "summary": self.summary,
        }


@dataclass
class _Source:
    """One raw table: its frame (RangeIndex), the line of each row, and where it came from."""

    table: str
    frame: pd.DataFrame
    lines: np.ndarray
    origin: str
    from_text: bool


class _Issues:
    """Collects errors and warnings; row checks turn masks into issues with lines."""

    def __init__(self) -> None:
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []

    def add(
        self,
        table: str,
        message: str,
        column: str | None = None,
        line: int | None = None,
        warning: bool = False,
    ) -> None:
        (self.warnings if warning else self.errors).append(Issue(table, line, column, message))

    def rows(
        self,
        src: _Source,
        mask: np.ndarray,
        column: str | None,
        describe: Callable[[int], str],
        warning: bool = False,
    ) -> int:
        """Report each masked row (`describe(position)` gives the reason); returns the count."""
        positions = np.flatnonzero(mask)
        target = self.warnings if warning else self.errors
        shown = positions[:MAX_ISSUES_PER_CHECK]
        for pos in shown:
            target.append(Issue(src.table, int(src.lines[pos]), column, describe(int(pos))))
        rest = len(positions) - len(shown)
        if rest:
            pos = int(positions[len(shown)])
            target.append(
                Issue(
                    src.table,
                    int(src.lines[pos]),
                    column,
                    f"{describe(pos)}; and {rest - 1} more rows with the same problem",
                )
            )
        return len(positions)


# ---------------------------------------------------------------------------------------------
# Public API


def load_cohort(path: str | Path) -> Cohort:
    """Load, validate and normalise a cohort directory.

    Raises:
        CohortError: listing every problem found (and the warnings).
    """
    issues = _Issues()
    sources = _read_directory(Path(path), issues)
    cohort, _ = _build(sources, issues)
    if issues.errors or cohort is None:
        raise CohortError(issues.errors, issues.warnings)
    simulation = _simulation_summary(Path(path))
    if simulation is not None:
        cohort = dataclasses.replace(cohort, simulation=simulation)
    return cohort


def _simulation_summary(directory: Path) -> dict[str, object] | None:
    """Facts of the simulator's `oracle.csv` beside a simulated cohort (not a contract table):
    the mean true response probability with and without hetrombopag over all episodes."""
    path = directory / "oracle.csv"
    if not path.is_file():
        return None
    try:
        oracle = pd.read_csv(path, usecols=["p_response", "p_response_untreated"])
    except (ValueError, OSError, pd.errors.ParserError):
        return None
    treated = float(oracle["p_response"].mean())
    untreated = float(oracle["p_response_untreated"].mean())
    return {
        "source": "simulated (data.simulator oracle.csv)",
        "episodes": len(oracle),
        "response_with_hetrombopag": round(treated, 4),
        "response_untreated": round(untreated, 4),
        "mean_benefit": round(treated - untreated, 4),
    }


def validate_cohort(path: str | Path) -> ValidationReport:
    """Validate a cohort directory without raising: every error, every warning and a summary."""
    issues = _Issues()
    directory = Path(path)
    sources = _read_directory(directory, issues)
    _, summary = _build(sources, issues, with_summary=True)
    summary = {"directory": str(directory), **summary}
    return ValidationReport(not issues.errors, issues.errors, issues.warnings, summary)


def cohort_from_tables(tables: Mapping[str, pd.DataFrame | list[dict] | None]) -> Cohort:
    """Validate and normalise in-memory contract tables (the HTTP and FHIR path).

    Values are DataFrames or lists of row dicts; lines in issues are 0-based row indices.
    `patients` and `episodes` are required; an absent `labs`, `regimens` or `outcomes` table
    means no rows (a single patient may have no regimen on record).

    Raises:
        CohortError: listing every problem found.
    """
    small = _small_cohort(tables)
    if small is not None:
        return small
    return _cohort_from_tables_general(tables)


def _cohort_from_tables_general(
    tables: Mapping[str, pd.DataFrame | list[dict] | None],
) -> Cohort:
    """`cohort_from_tables` through pandas, for every input (the small path's reference)."""
    issues = _Issues()
    sources: dict[str, _Source] = {}
    for name, value in tables.items():
        if name not in TABLES:
            issues.add(
                name, f"unknown table {name!r} ignored (tables: {', '.join(TABLES)})", warning=True
            )
            continue
        if value is None:
            continue
        frame = _frame_of(name, value, issues)
        if frame is not None:
            sources[name] = _Source(name, frame, np.arange(len(frame)), "<memory>", False)
    for name in ("patients", "episodes"):
        if name not in sources and not any(i.table == name for i in issues.errors):
            issues.add(name, f"missing table {name!r}")
    for name in ("labs", "regimens"):
        if name not in sources and not any(i.table == name for i in issues.errors):
            empty = pd.DataFrame({c: pd.Series(dtype=object) for c in REQUIRED_COLUMNS[name]})
            sources[name] = _Source(name, empty, np.arange(0), "<memory>", False)
    cohort, _ = _build(sources, issues)
    if issues.errors or cohort is None:
        raise CohortError(issues.errors, issues.warnings)
    return cohort


def cohort_from_part(
    frames: Mapping[str, pd.DataFrame],
    lines: Mapping[str, np.ndarray],
    text_tables: Iterable[str] = (),
) -> Cohort:
    """Validate and normalise one part of a cohort whose rows were split by patient (Spark).

    Every check of `load_cohort` runs on the part's rows. Issues name each row by `lines[table]`,
    its line in the whole input table as `load_cohort` numbers it (CSV: header = 1; Parquet and
    frames: 0-based row). Tables in `text_tables` came from CSV: rows with every field empty are
    not data, as `load_cohort` reads them. A table absent or empty here is not an error (another
    part holds its rows; `no_rows_issue` is the check of the whole table).

    Raises:
        CohortError: listing every problem found in the part.
    """
    issues = _Issues()
    sources: dict[str, _Source] = {}
    text = set(text_tables)
    for name, frame in frames.items():
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r} (tables: {', '.join(TABLES)})")
        rows = np.asarray(lines[name], dtype=np.int64)
        if len(rows) != len(frame):
            raise ValueError(f"{name}: {len(frame)} rows but {len(rows)} line numbers")
        frame = frame.reset_index(drop=True)
        if name in text:
            frame, rows = _without_blank_rows(frame, rows)
        sources[name] = _Source(name, frame, rows, "<part>", False)
    for name in REQUIRED_TABLES:
        if name not in sources:
            empty = pd.DataFrame({c: pd.Series(dtype=object) for c in REQUIRED_COLUMNS[name]})
            sources[name] = _Source(name, empty, np.arange(0), "<part>", False)
    cohort, _ = _build(sources, issues, whole=False)
    if issues.errors or cohort is None:
        raise CohortError(issues.errors, issues.warnings)
    return cohort


def no_rows_issue(table: str) -> Issue:
    """The error of a required table without rows."""
    return Issue(table, None, None, f"table {table!r} has no rows")


def duplicate_issues(table: str, column: str, values: pd.Series, lines: np.ndarray) -> list[Issue]:
    """The duplicate-id errors of `load_cohort` for these values of a unique id column.

    For checks across parts of a cohort split by patient (an episode id given to two patients);
    `values` and `lines` hold the rows concerned, in any order.
    """
    order = np.argsort(np.asarray(lines), kind="stable")
    frame = pd.DataFrame({column: pd.Series(values).reset_index(drop=True).take(order)})
    issues = _Issues()
    src = _Source(table, frame.reset_index(drop=True), np.asarray(lines)[order], "<part>", False)
    _ids(src, column, issues, unique=True)
    return [i for i in issues.errors if i.message.startswith("duplicate ")]


def summarise(cohort: Cohort) -> dict[str, object]:
    """JSON-able summary of a loaded cohort (rows, patients, episodes, analytes, conversions)."""
    return _summary_of(
        {
            "patients": cohort.patients,
            "episodes": cohort.episodes,
            "labs": cohort.labs,
            "regimens": cohort.regimens,
            "outcomes": cohort.outcomes,
            "transfusions": cohort.transfusions,
        },
        cohort.conversions,
        {},
    ) | ({"simulation": dict(cohort.simulation)} if cohort.simulation else {})


# ---------------------------------------------------------------------------------------------
# Reading


def _frame_of(name: str, value: object, issues: _Issues) -> pd.DataFrame | None:
    if isinstance(value, pd.DataFrame):
        frame = value
    elif isinstance(value, Mapping):
        frame = pd.DataFrame([value])
    elif isinstance(value, list | tuple):
        if not all(isinstance(row, Mapping) for row in value):
            issues.add(name, "rows must be objects (column -> value)")
            return None
        frame = pd.DataFrame(list(value))
        if frame.empty and not len(frame.columns):
            frame = pd.DataFrame({c: pd.Series(dtype=object) for c in REQUIRED_COLUMNS[name]})
    else:
        issues.add(
            name, f"expected a table (DataFrame or list of rows), got {type(value).__name__}"
        )
        return None
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0:
        frame = frame.reset_index(drop=True)
    return frame


def tables_in_directory(
    directory: str, entries: Iterable[str]
) -> tuple[dict[str, str], list[Issue], list[Issue]]:
    """Which entry of a cohort directory holds which table: (table -> entry, errors, warnings).

    `entries` are the names in the directory (files, or on Spark also folders of part files such
    as `labs.parquet/`); the loader and `serving.spark` share this one reading of a directory.
    """
    issues = _Issues()
    files = sorted(e for e in entries if Path(e).suffix.lower() in TABLE_SUFFIXES)
    if not files:
        issues.add(
            "cohort",
            f"directory {directory} holds no tables (expected patients, episodes, labs, regimens "
            "and optionally outcomes and transfusions, each as .csv or .parquet)",
        )
        return {}, issues.errors, issues.warnings
    by_table: dict[str, list[str]] = {}
    for file in files:
        name = Path(file).stem
        if name not in TABLES:
            issues.add(name, f"{file} is not a contract table; ignored", warning=True)
            continue
        by_table.setdefault(name, []).append(file)
    chosen: dict[str, str] = {}
    for name, found in by_table.items():
        if len(found) > 1:
            issues.add(name, f"table given twice ({', '.join(found)}); keep one")
            continue
        chosen[name] = found[0]
    for name in REQUIRED_TABLES:
        if name not in by_table:
            issues.add(name, f"missing table {name!r} (expected {name}.csv or {name}.parquet)")
    return chosen, issues.errors, issues.warnings


def _read_directory(directory: Path, issues: _Issues) -> dict[str, _Source]:
    if not directory.exists():
        issues.add("cohort", f"directory {directory} does not exist")
        return {}
    if not directory.is_dir():
        issues.add("cohort", f"{directory} is not a directory (a cohort is a directory of tables)")
        return {}
    chosen, errors, warnings_ = tables_in_directory(
        str(directory), (f.name for f in directory.iterdir() if f.is_file())
    )
    sources: dict[str, _Source] = {}
    for name, entry in chosen.items():
        source = _read_file(name, directory / entry, issues)
        if source is not None:
            sources[name] = source
    # Directory-level problems first, in the order they were found, then each table's.
    issues.errors[:0] = errors
    issues.warnings[:0] = warnings_
    return sources


def _read_file(table: str, file: Path, issues: _Issues) -> _Source | None:
    if file.suffix.lower() == ".csv":
        return _read_csv(table, file, issues)
    try:
        schema = pa_parquet.read_schema(file)
        dates = DATE_COLUMNS[table]
        text = [
            f.name
            for f in schema
            if f.name in TEXT_COLUMNS[table] and f.name not in dates and pa.types.is_string(f.type)
        ]
        arrow = pa_parquet.read_table(file, read_dictionary=text)
        frame = _dates_in_arrow(arrow, table).to_pandas()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        issues.add(table, f"{file.name} is not a readable Parquet file ({_first_line(exc)})")
        return None
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    frame = frame.reset_index(drop=True) if frame.index.start != 0 else frame
    frame.columns = [str(c).strip() for c in frame.columns]
    return _Source(table, frame, np.arange(len(frame)), file.name, False)


def frame_from_arrow(table: str, arrow: pa.Table, from_csv: bool = False) -> pd.DataFrame:
    """A table given as Arrow (Spark hands its rows over so), typed as this loader reads files.

    Text columns become categoricals and ISO date text becomes timestamps, as the Parquet and
    fast CSV readers give them; `from_csv`: every column is text, and the other columns are
    read as numbers where they all parse, as the CSV reader infers them. Values that do not parse
    stay text, so the loader reports each with its row.
    """
    dates = DATE_COLUMNS[table]
    for index, spec in enumerate(arrow.schema):
        if not pa.types.is_string(spec.type) and not pa.types.is_large_string(spec.type):
            continue
        column = arrow.column(index)
        if spec.name in dates:
            continue
        if spec.name in TEXT_COLUMNS[table]:
            arrow = arrow.set_column(index, spec.name, pa_compute.dictionary_encode(column))
        elif from_csv:
            for kind in (pa.int64(), pa.float64()):
                try:
                    arrow = arrow.set_column(index, spec.name, column.cast(kind))
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
    return _dates_in_arrow(arrow, table).to_pandas(date_as_object=False)


def _dates_in_arrow(arrow: pa.Table, table: str) -> pa.Table:
    """Parse ISO 8601 text date columns in arrow (fast); a column that does not parse whole is
    left as text for the pandas parser, which reports each bad value."""
    for name in DATE_COLUMNS[table]:
        index = arrow.schema.get_field_index(name)
        if index < 0 or not pa.types.is_string(arrow.schema.field(index).type):
            continue
        try:
            parsed = arrow.column(index).cast(pa.timestamp("ns"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        arrow = arrow.set_column(index, name, parsed)
    return arrow


def _read_csv(table: str, file: Path, issues: _Issues) -> _Source | None:
    try:
        data = file.read_bytes()
    except OSError as exc:
        issues.add(table, f"{file.name} cannot be read ({exc.strerror or exc})")
        return None
    frame = _read_csv_fast(table, data)
    if frame is None:
        frame = _read_csv_exact(table, file, data, issues)
        if frame is None:
            return None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame, lines = _without_blank_rows(frame, np.arange(len(frame)) + 2)
    return _Source(table, frame, lines, file.name, True)


def _without_blank_rows(frame: pd.DataFrame, lines: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with every field empty are not data; drop them, keeping each row's line number."""
    if len(frame.columns) and len(frame):
        blank = frame.isna().all(axis=1).to_numpy()
        if blank.any():
            return frame.loc[~blank].reset_index(drop=True), lines[~blank]
    return frame, lines


def _read_csv_fast(table: str, data: bytes) -> pd.DataFrame | None:
    """pyarrow's multi-threaded reader; None when it cannot give exact line numbers or fails
    (the exact reader then reports the problem with its line)."""
    if b"\n\n" in data or b"\n\r\n" in data or data[:1] in (b"\n", b"\r"):
        return None  # pyarrow skips blank lines, which would shift line numbers
    try:
        # Dictionary-encoded text becomes pandas categoricals: no Python string per row.
        types = dict.fromkeys(TEXT_COLUMNS[table], pa.dictionary(pa.int32(), pa.string()))
        types.update(dict.fromkeys(DATE_COLUMNS[table], pa.timestamp("ns")))
        parsed = pa_csv.read_csv(
            io.BytesIO(data),
            convert_options=pa_csv.ConvertOptions(
                column_types=types,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
        return parsed.to_pandas()
    except Exception:  # any parse problem: the exact reader explains it
        logger.debug("fast CSV reader declined %s", table, exc_info=True)
        return None


def _read_csv_exact(table: str, file: Path, data: bytes, issues: _Issues) -> pd.DataFrame | None:
    try:
        return pd.read_csv(
            io.BytesIO(data),
            dtype=dict.fromkeys(TEXT_COLUMNS[table], str),
            keep_default_na=False,
            na_values=[""],
            skip_blank_lines=False,
            low_memory=False,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        issues.add(
            table,
            f"{file.name} is not UTF-8 text (invalid byte at line {line}, byte offset {exc.start})",
        )
    except pd.errors.EmptyDataError:
        issues.add(table, f"{file.name} is empty (expected a header line with the column names)")
    except (pd.errors.ParserError, ValueError) as exc:
        line = _parser_error_line(str(exc))
        issues.add(table, f"{file.name} cannot be parsed as CSV: {_first_line(exc)}", line=line)
    return None


def _parser_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Column parsers: each returns new values plus masks of missing and bad rows.


def _missing_token(values: pd.Series) -> np.ndarray:
    """Rows holding NaN/None or a missing-value token ("", "NA", "null", ...).

    Called only on the rows a parser could not read, so a Python pass over them is cheap.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if values.dtype != object:
        return values.isna().to_numpy()
    return np.fromiter(
        (
            v is None
            or v is pd.NA
            or (isinstance(v, float) and v != v)
            or (isinstance(v, str) and v.strip().lower() in _MISSING_TOKENS)
            for v in values.to_numpy()
        ),
        dtype=bool,
        count=len(values),
    )


def _text(values: pd.Series, from_text: bool) -> tuple[pd.Series, np.ndarray]:
    """Text column as object dtype (str or None); missing rows masked."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = [_clean_text(c) for c in values.cat.categories] + [None]
        cleaned = np.array(categories, dtype=object)
        codes = values.cat.codes.to_numpy()
        missing = np.array([c is None for c in categories], dtype=bool)[codes]
        return pd.Series(cleaned[codes], dtype=object), missing
    if from_text and values.dtype == object:
        # read_csv: already str or NaN; empty fields are NaN; only whitespace-only is left to catch.
        missing = values.isna().to_numpy()
        return values, missing
    if values.dtype != object:
        values = values.astype(object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    cleaned = np.array([_clean_text(u) for u in uniques] + [None], dtype=object)
    out = cleaned[codes]  # -1 picks the trailing None
    missing = np.array([c is None for c in cleaned], dtype=bool)[codes]
    return pd.Series(out, dtype=object), missing


def _clean_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _dates(values: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray, bool]:
    """(datetime64[ns] values, missing, unparseable, had UTC offsets)."""
    if ptypes.is_datetime64_any_dtype(values.dtype):
        if getattr(values.dtype, "tz", None) is not None:
            values = values.dt.tz_localize(None)
        out = values.astype("datetime64[ns]")
        missing = out.isna().to_numpy()
        return out, missing, np.zeros(len(out), dtype=bool), False
    if len(values) <= _SMALL and values.dtype == object:
        quick = _dates_small(values)
        if quick is not None:
            return quick
    had_offsets = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = pd.to_datetime(values, format="ISO8601", errors="coerce")
        except (ValueError, TypeError, OverflowError):
            parsed = None
        if parsed is None or parsed.dtype != "datetime64[ns]":
            # UTC offsets: keep the local wall-clock time the hospital recorded.
            had_offsets = True
            stripped = values.astype(str).str.strip().str.replace(_TZ_SUFFIX, "", regex=True)
            stripped[values.isna()] = None
            parsed = pd.to_datetime(stripped, format="ISO8601", errors="coerce")
    nat = parsed.isna().to_numpy()
    missing = np.zeros(len(parsed), dtype=bool)
    if nat.any():
        missing[nat] = _missing_token(values[nat])
    return parsed, missing, nat & ~missing, had_offsets


def _dates_small(values: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray, bool] | None:
    """numpy's ISO 8601 parser for a few values (the one-patient HTTP path); None when any value
    needs pandas' more tolerant parser."""
    items = values.tolist()
    if not all(v is None or (isinstance(v, str) and v) for v in items):
        return None
    if not all(v is None or _year_within(v) for v in items):
        return None  # numpy's nanoseconds would wrap; pandas and `_date_column` report it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parsed = np.array(items, dtype="datetime64[ns]")
    except (ValueError, TypeError, DeprecationWarning, UserWarning):
        return None
    missing = np.isnat(parsed)
    return pd.Series(parsed), missing, np.zeros(len(parsed), dtype=bool), False


def _numbers(values: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(float64 values, missing, not a finite number)."""
    if ptypes.is_bool_dtype(values.dtype) or ptypes.is_numeric_dtype(values.dtype):
        out = values.astype("float64")
        arr = out.to_numpy()
        missing = np.isnan(arr)
        return out, missing, np.isinf(arr)
    out = pd.to_numeric(values, errors="coerce").astype("float64")
    arr = out.to_numpy()
    nan = np.isnan(arr)
    missing = np.zeros(len(arr), dtype=bool)
    if nan.any():
        missing[nan] = _missing_token(values[nan])
    return out, missing, (nan & ~missing) | np.isinf(arr)


def _booleans(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(float 1.0/0.0/NaN, bad) from true/false/1/0/yes/no (any case) or booleans."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parsed = np.array([_boolean(u) for u in uniques] + [np.nan], dtype=float)
    bad_u = np.array([_boolean(u) is None for u in uniques] + [False], dtype=bool)
    parsed[np.flatnonzero(bad_u)] = np.nan
    return pd.Series(parsed[codes], dtype="float64"), bad_u[codes]


def _boolean(value: object) -> float | None:
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
    if text in _MISSING_TOKENS:
        return np.nan
    return None


def _show(values: pd.Series | np.ndarray, pos: int) -> str:
    value = values.iloc[pos] if isinstance(values, pd.Series) else values[pos]
    return repr(value) if isinstance(value, str) else repr(str(value))


# ---------------------------------------------------------------------------------------------
# Table normalisation


@dataclass
class _Parsed:
    """Normalised frames so far and facts needed across tables."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    conversions: dict[tuple[str, str], int] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    #: Building the report of `validate_cohort` (adds its warnings), not a cohort to use.
    with_summary: bool = False


def _build(
    sources: Mapping[str, _Source],
    issues: _Issues,
    with_summary: bool = False,
    whole: bool = True,
) -> tuple[Cohort | None, dict]:
    parsed = _Parsed(with_summary=with_summary)
    ok = {name: _has_columns(src, issues) for name, src in sources.items()}
    patient_ids: pd.Index | None = None
    if ok.get("patients"):
        parsed.frames["patients"] = _patients(sources["patients"], issues)
        patient_ids = pd.Index(parsed.frames["patients"]["patient_id"].dropna().unique())
    episode_ids: pd.Index | None = None
    if ok.get("episodes"):
        parsed.frames["episodes"] = _episodes(
            sources["episodes"], issues, patient_ids, parsed.frames.get("patients")
        )
        episode_ids = pd.Index(parsed.frames["episodes"]["episode_id"].dropna().unique())
    if ok.get("labs"):
        parsed.frames["labs"] = _labs(sources["labs"], issues, patient_ids, parsed)
    if ok.get("regimens"):
        parsed.frames["regimens"] = _regimens(sources["regimens"], issues, patient_ids, parsed)
    if ok.get("outcomes"):
        parsed.frames["outcomes"] = _outcomes(sources["outcomes"], issues, episode_ids)
    if ok.get("transfusions"):
        parsed.frames["transfusions"] = _transfusions(sources["transfusions"], issues, patient_ids)
    for name in ("patients", "episodes"):
        if whole and ok.get(name) and len(parsed.frames[name]) == 0:
            issues.errors.append(no_rows_issue(name))
    summary: dict[str, object] = {}
    if with_summary:
        summary = _summary_of(parsed.frames, parsed.conversions, sources)
        summary.update(parsed.extra)
    required_ok = all(ok.get(name) for name in REQUIRED_TABLES)
    if issues.errors or not required_ok:
        return None, summary
    cohort = Cohort(
        patients=parsed.frames["patients"],
        episodes=parsed.frames["episodes"],
        labs=parsed.frames["labs"],
        regimens=parsed.frames["regimens"],
        outcomes=parsed.frames.get("outcomes"),
        warnings=tuple(issues.warnings),
        conversions=MappingProxyType(dict(parsed.conversions)),
        transfusions=parsed.frames.get("transfusions"),
    )
    return cohort, summary


def _has_columns(src: _Source, issues: _Issues) -> bool:
    present = set(src.frame.columns)
    missing = [c for c in REQUIRED_COLUMNS[src.table] if c not in present]
    for column in missing:
        near = [c for c in src.frame.columns if str(c).strip().lower() == column]
        hint = f" (found {near[0]!r}: column names are lower case)" if near else ""
        issues.add(src.table, f"missing required column {column!r}{hint}", column=column)
    return not missing


def _ids(src: _Source, column: str, issues: _Issues, unique: bool) -> tuple[pd.Series, np.ndarray]:
    values, missing = _text(src.frame[column], src.from_text)
    issues.rows(src, missing, column, lambda _: f"missing {column}")
    if unique:
        repeated = values.duplicated(keep="first").to_numpy() & ~missing
        if repeated.any():
            first_pos = pd.Series(np.arange(len(values)), index=values.to_numpy())
            first_pos = first_pos[~first_pos.index.duplicated(keep="first")]
            issues.rows(
                src,
                repeated,
                column,
                lambda p: (
                    f"duplicate {column} {values.iloc[p]!r} "
                    f"(first on line {int(src.lines[first_pos[values.iloc[p]]])})"
                ),
            )
    return values, missing


def _known(
    src: _Source,
    values: pd.Series,
    missing: np.ndarray,
    known: pd.Index | None,
    column: str,
    what: str,
    issues: _Issues,
    warning: bool = False,
) -> np.ndarray:
    if known is None:
        return np.zeros(len(values), dtype=bool)
    unknown = ~values.isin(known).to_numpy() & ~missing
    if warning and unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        distinct = values[unknown].nunique()
        issues.add(
            src.table,
            f"{int(unknown.sum())} rows for {distinct} {what}s not in the {what}s table "
            f"(first: {values.iloc[first]!r}); kept but unused",
            column=column,
            line=int(src.lines[first]),
            warning=True,
        )
    elif unknown.any():
        issues.rows(
            src, unknown, column, lambda p: f"unknown {what} {values.iloc[p]!r} (not in {what}s)"
        )
    return unknown


def _date_column(
    src: _Source, column: str, issues: _Issues, required: bool
) -> tuple[pd.Series, np.ndarray]:
    raw = src.frame[column]
    values, missing, bad, had_offsets = _dates(raw)
    # Dates outside 1900-2200 are typing errors; pandas cannot even hold those beyond 1677-2262.
    stamps = values.to_numpy(dtype="datetime64[ns]")
    with np.errstate(invalid="ignore"):
        early_late = ~np.isnat(stamps) & ((stamps < _EARLIEST) | (stamps >= _AFTER_LATEST))
    far = (
        bad & np.array([_year_outside(v) for v in raw.to_numpy()], dtype=bool) if bad.any() else bad
    )
    outside = early_late | far
    issues.rows(
        src,
        outside,
        column,
        lambda p: f"{column} {_show(raw, p)} is outside {DATE_RANGE[0]} to {DATE_RANGE[1]}",
    )
    bad = bad & ~outside
    issues.rows(src, bad, column, lambda p: f"unparseable date {_show(raw, p)} (use ISO 8601)")
    if required:
        issues.rows(src, missing, column, lambda _: f"missing {column}")
    if had_offsets:
        issues.add(
            src.table,
            "times with a UTC offset: the offset is dropped and the local time kept",
            column=column,
            warning=True,
        )
    return values, missing | bad | outside


#: Dates accepted anywhere in a cohort (first and last day).
_EARLIEST = np.datetime64(DATE_RANGE[0])
_AFTER_LATEST = np.datetime64("2201-01-01")
_YEAR = re.compile(r"\s*([+-]?\d{4,})-")


def _year_within(text: str) -> bool:
    """Whether ISO text starts with a plain four-digit year inside `DATE_RANGE`."""
    return text[4:5] == "-" and text[:4].isdigit() and "1900" <= text[:4] <= "2200"


def _year_outside(value: object) -> bool:
    """Whether a date given as text has a year outside `DATE_RANGE` (for unparseable values)."""
    match = _YEAR.match(value) if isinstance(value, str) else None
    return match is not None and not 1900 <= int(match.group(1)) <= 2200


def _number_column(
    src: _Source,
    column: str,
    issues: _Issues,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    required: bool = False,
    what: str = "",
) -> pd.Series:
    raw = src.frame[column]
    values, missing, bad = _numbers(raw)
    issues.rows(src, bad, column, lambda p: f"non-numeric value {_show(raw, p)}")
    if required:
        issues.rows(src, missing, column, lambda _: f"missing {column}")
    arr = values.to_numpy()
    with np.errstate(invalid="ignore"):
        out = np.zeros(len(arr), dtype=bool)
        if low is not None:
            out |= arr < low
        if high is not None:
            out |= arr > high
        if integer:
            out |= np.isfinite(arr) & (arr != np.round(arr))
    out &= ~bad
    if out.any():
        issues.rows(src, out, column, lambda p: f"{column} {arr[p]:g} is not {what}")
    return values


def _assemble(src: _Source, columns: dict[str, pd.Series | np.ndarray]) -> pd.DataFrame:
    """New frame: normalised columns in the input order, then unknown extra columns as given."""
    data: dict[str, object] = {}
    for name in src.frame.columns:
        if name in columns:
            value = columns[name]
            data[name] = value.to_numpy() if isinstance(value, pd.Series) else value
        else:
            data[name] = src.frame[name].to_numpy()
    for name, value in columns.items():
        if name not in data:
            data[name] = value.to_numpy() if isinstance(value, pd.Series) else value
    return pd.DataFrame(data, copy=False)


def _patients(src: _Source, issues: _Issues) -> pd.DataFrame:
    frame = src.frame
    columns: dict[str, pd.Series | np.ndarray] = {}
    columns["patient_id"], _ = _ids(src, "patient_id", issues, unique=True)
    for name in ("sex", "race", "site"):
        if name in frame:
            columns[name], _ = _text(frame[name], src.from_text)
    if "birth_date" in frame:
        columns["birth_date"], _ = _date_column(src, "birth_date", issues, required=False)
    if "ecog" in frame:
        columns["ecog"] = _number_column(
            src, "ecog", issues, low=0, high=5, integer=True, what="an ECOG score 0-5"
        )
    if "subtype" in frame:
        columns["subtype"] = _subtypes(src, issues)
    for name in BOOLEAN_COLUMNS:
        if name in frame:
            raw = frame[name]
            values, bad = _booleans(raw)
            issues.rows(
                src,
                bad,
                name,
                lambda p, raw=raw: f"bad boolean {_show(raw, p)} (use true/false/1/0)",
            )
            columns[name] = values
    return _assemble(src, columns)


def _subtypes(src: _Source, issues: _Issues) -> np.ndarray:
    raw, missing = _text(src.frame["subtype"], src.from_text)
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    mapped = []
    for u in uniques:
        key = u.replace("\u2212", "-").replace(" ", "").lower()
        mapped.append(_SUBTYPE_KEYS.get(key, u))
        if key not in _SUBTYPE_KEYS:
            rows = np.flatnonzero(codes == len(mapped) - 1)
            issues.add(
                "patients",
                f"unknown subtype {u!r} kept as given in {len(rows)} rows "
                f"(known: {', '.join(SUBTYPES)})",
                column="subtype",
                line=int(src.lines[rows[0]]),
                warning=True,
            )
    return np.array([*mapped, None], dtype=object)[codes]


def _episodes(
    src: _Source, issues: _Issues, patient_ids: pd.Index | None, patients: pd.DataFrame | None
) -> pd.DataFrame:
    frame = src.frame
    columns: dict[str, pd.Series | np.ndarray] = {}
    columns["episode_id"], _ = _ids(src, "episode_id", issues, unique=True)
    pid, pid_missing = _ids(src, "patient_id", issues, unique=False)
    columns["patient_id"] = pid
    _known(src, pid, pid_missing, patient_ids, "patient_id", "patient", issues)
    index_date, index_bad = _date_column(src, "index_date", issues, required=True)
    columns["index_date"] = index_date
    if "dose_mg" in frame:
        columns["dose_mg"] = _number_column(
            src, "dose_mg", issues, low=0, what="a dose in mg (>= 0)"
        )
    age = (
        _number_column(src, "age_years", issues, low=0, high=120, what="an age in years 0-120")
        if "age_years" in frame
        else pd.Series(np.full(len(frame), np.nan))
    )
    if patients is not None and "birth_date" in patients and age.isna().any():
        known = patients.drop_duplicates("patient_id")
        position = pd.Index(known["patient_id"]).get_indexer(pid.to_numpy())
        births = np.append(known["birth_date"].to_numpy(), np.datetime64("NaT", "ns"))
        birth = births[position]  # -1 (unknown patient) picks the trailing NaT
        span = index_date.to_numpy() - birth
        derived = np.where(
            np.isnat(span),
            np.nan,
            span.astype("timedelta64[s]").astype(np.int64) / _SECONDS_PER_YEAR,
        )
        negative = (derived < 0) & ~index_bad & age.isna().to_numpy()
        issues.rows(
            src,
            negative,
            "index_date",
            lambda p: (
                f"index_date {index_date.iloc[p].date()} is before the patient's "
                f"birth_date {pd.Timestamp(birth[p]).date()}"
            ),
        )
        age = age.where(age.notna(), pd.Series(derived, index=age.index))
    columns["age_years"] = age.astype("float64")
    return _assemble(src, columns)


def _labs(
    src: _Source, issues: _Issues, patient_ids: pd.Index | None, parsed: _Parsed
) -> pd.DataFrame:
    frame = src.frame
    pid, pid_missing = _ids(src, "patient_id", issues, unique=False)
    _known(src, pid, pid_missing, patient_ids, "patient_id", "patient", issues, warning=True)
    time, _ = _date_column(src, "time", issues, required=True)
    raw_value = frame["value"]
    value, value_missing, value_bad = _numbers(raw_value)
    issues.rows(src, value_bad, "value", lambda p: f"non-numeric value {_show(raw_value, p)}")
    issues.rows(src, value_missing, "value", lambda _: "missing value")

    tcodes, tuniq = pd.factorize(frame["test"], use_na_sentinel=True)
    test_text = [_clean_text(u) for u in tuniq]
    analytes = [units.canonical_test(t) if t is not None else None for t in test_text]
    no_test = np.array([t is None for t in test_text] + [True])[tcodes]
    issues.rows(src, no_test, "test", lambda _: "missing test code")
    ucodes, uuniq = pd.factorize(frame["unit"], use_na_sentinel=True)
    unit_text = [_clean_text(u) for u in uuniq]

    is_known_u = np.array([a is not None for a in analytes] + [False])
    known = is_known_u[tcodes]
    # Factors only for the (test, unit) pairs that occur: linear in the rows, however many
    # distinct codes and units there are. Code -1 (missing) maps to the trailing sentinel.
    nt, nu = len(tuniq) + 1, len(uuniq) + 1
    pair_key = (tcodes % nt).astype(np.int64) * nu + (ucodes % nu)
    pair_uniq, pcodes = np.unique(pair_key, return_inverse=True)
    pcodes = pcodes.reshape(-1)
    pair_t, pair_u = np.divmod(pair_uniq, nu)
    analyte_ext, unit_ext = analytes + [None], unit_text + [None]
    factor = units.pair_factors(
        [analyte_ext[t] for t in pair_t.tolist()], [unit_ext[u] for u in pair_u.tolist()]
    )[pcodes]
    no_unit = known & (np.array([u is None for u in unit_text] + [True])[ucodes])
    bad_unit = known & np.isnan(factor) & ~no_unit

    def _accepted(p: int) -> str:
        return ", ".join(units.accepted_units(analytes[tcodes[p]]))

    issues.rows(
        src,
        no_unit,
        "unit",
        lambda p: f"missing unit for {analytes[tcodes[p]]} (accepted: {_accepted(p)})",
    )
    issues.rows(
        src,
        bad_unit,
        "unit",
        lambda p: (
            f"unknown unit {unit_text[ucodes[p]]!r} for {analytes[tcodes[p]]} "
            f"(accepted: {_accepted(p)})"
        ),
    )
    factor = np.where(known, factor, 1.0)
    raw_arr = value.to_numpy()
    converted = raw_arr * factor
    limits = np.array(
        [units.ANALYTES[a].limit if a is not None else np.inf for a in analytes] + [np.inf]
    )[tcodes]
    checkable = known & ~np.isnan(converted)
    negative = checkable & (converted < 0)
    impossible = checkable & (converted > limits)

    def _describe_value(p: int) -> str:
        analyte = analytes[tcodes[p]]
        canonical = units.CANONICAL_UNITS[analyte]
        given = f"{raw_arr[p]:g} {unit_text[ucodes[p]]}"
        as_canonical = "" if factor[p] == 1.0 else f" = {converted[p]:g} {canonical}"
        return given + as_canonical

    issues.rows(
        src,
        negative,
        "value",
        lambda p: f"negative {analytes[tcodes[p]]} value {_describe_value(p)}",
    )
    issues.rows(
        src,
        impossible,
        "value",
        lambda p: (
            f"physiologically impossible {analytes[tcodes[p]]} value {_describe_value(p)} "
            f"(above {limits[p]:g} {units.CANONICAL_UNITS[analytes[tcodes[p]]]})"
        ),
    )

    if parsed.with_summary:  # `ctit validate`: the HTTP answers' improbable-value warnings
        low = np.array(
            [units.IMPROBABLE.get(a, (-np.inf, np.inf))[0] if a else -np.inf for a in analytes]
            + [-np.inf]
        )[tcodes]
        high = np.array(
            [units.IMPROBABLE.get(a, (-np.inf, np.inf))[1] if a else np.inf for a in analytes]
            + [np.inf]
        )[tcodes]
        improbable = checkable & ~negative & ~impossible & ((converted < low) | (converted > high))
        issues.rows(
            src,
            improbable,
            "value",
            lambda p: (
                f"improbable {analytes[tcodes[p]]} value {_describe_value(p)}: outside the usual "
                f"range {low[p]:g}-{high[p]:g} {units.CANONICAL_UNITS[analytes[tcodes[p]]]} "
                "(check the value and unit)"
            ),
            warning=True,
        )

    # Unknown tests are kept under their own code and unit, with one warning per code.
    counts = np.bincount(tcodes[tcodes >= 0], minlength=len(tuniq))
    firsts = _first_positions(tcodes, len(tuniq))
    unknown_tests: dict[str, int] = {}
    first_of: dict[str, int] = {}
    for i, (code, analyte) in enumerate(zip(test_text, analytes, strict=True)):
        if analyte is None and code is not None and counts[i]:
            unknown_tests[code] = unknown_tests.get(code, 0) + int(counts[i])
            first_of[code] = min(first_of.get(code, firsts[i]), firsts[i])
    for code, count in unknown_tests.items():
        first = first_of[code]
        issues.add(
            "labs",
            f"test {code!r} is not a known analyte: {count} rows kept under their own code, "
            "units as given",
            column="test",
            line=int(src.lines[first]),
            warning=True,
        )
    parsed.extra["unknown_tests"] = unknown_tests

    canonical_unit = [units.CANONICAL_UNITS[a] if a is not None else None for a in analytes]
    converts = known & ~np.isnan(factor)
    pair = np.bincount(pcodes[converts], minlength=len(pair_uniq))
    for p in np.flatnonzero(pair):  # in (test, unit) order, as the pairs are sorted
        t, u = int(pair_t[p]), int(pair_u[p])
        if unit_text[u] != canonical_unit[t]:
            key = (analytes[t], unit_text[u])
            parsed.conversions[key] = parsed.conversions.get(key, 0) + int(pair[p])

    test_out = np.array(
        [a if a is not None else t for a, t in zip(analytes, test_text, strict=True)] + [None],
        dtype=object,
    )[tcodes]
    unit_out_u = np.array(unit_text + [None], dtype=object)[ucodes]
    unit_canon = np.array(canonical_unit + [None], dtype=object)[tcodes]
    unit_out = np.where(known, unit_canon, unit_out_u)

    columns: dict[str, pd.Series | np.ndarray] = {
        "patient_id": pid,
        "time": time,
        "test": test_out,
        "value": converted,
        "unit": unit_out,
    }
    labs = _assemble(src, columns)
    order = _patient_time_order(pid, time)
    if order is not None:
        labs = labs.take(order).reset_index(drop=True)
    return labs


def _first_positions(codes: np.ndarray, n_uniques: int) -> np.ndarray:
    """Position of the first row of each factorised code (codes are numbered by appearance)."""
    if not len(codes):
        return np.zeros(n_uniques, dtype=np.int64)
    running = np.maximum.accumulate(codes)
    new = np.empty(len(codes), dtype=bool)
    new[0] = codes[0] >= 0
    new[1:] = running[1:] > running[:-1]
    return np.flatnonzero(new)[:n_uniques]


def _patient_time_order(pid: pd.Series, time: pd.Series) -> np.ndarray | None:
    """Row order sorting by (patient_id, time), stable; None when already sorted."""
    if len(pid) < 2:
        return None
    codes, uniques = pd.factorize(pid, use_na_sentinel=True)
    rank = np.empty(len(uniques) + 1, dtype=np.int64)
    rank[:-1] = np.argsort(np.argsort(np.asarray(uniques, dtype=object).astype(str), kind="stable"))
    rank[-1] = len(uniques)
    key1 = rank[codes]
    key2 = time.to_numpy().view("int64")  # NaT is the smallest int64
    d1 = np.diff(key1)
    if (d1 >= 0).all() and (np.diff(key2)[d1 == 0] >= 0).all():
        return None
    valid = ~np.isnat(time.to_numpy())
    seconds, remainder = np.divmod(key2, 10**9)
    if valid.any() and not remainder[valid].any():
        # Whole-second times (the usual case): one int64 key and numpy's radix sort.
        low = seconds[valid].min()
        span = np.where(valid, seconds - low + 1, 0)
        if span.max() < 2**34 and len(rank) < 2**28:
            return np.argsort(key1 * 2**34 + span, kind="stable")
    return np.lexsort((key2, key1))


def _regimens(
    src: _Source, issues: _Issues, patient_ids: pd.Index | None, parsed: _Parsed
) -> pd.DataFrame:
    frame = src.frame
    columns: dict[str, pd.Series | np.ndarray] = {}
    pid, pid_missing = _ids(src, "patient_id", issues, unique=False)
    columns["patient_id"] = pid
    _known(src, pid, pid_missing, patient_ids, "patient_id", "patient", issues, warning=True)
    start, start_bad = _date_column(src, "start_date", issues, required=True)
    columns["start_date"] = start
    if "end_date" in frame:
        end, end_bad = _date_column(src, "end_date", issues, required=False)
        before = (end < start).to_numpy() & ~start_bad & ~end_bad
        issues.rows(
            src,
            before,
            "end_date",
            lambda p: f"end_date {end.iloc[p].date()} is before start_date {start.iloc[p].date()}",
        )
    else:
        end = pd.Series(pd.NaT, index=start.index, dtype="datetime64[ns]")
    columns["end_date"] = end
    drug_names, drug_classes = _drug_columns(src, issues, parsed)
    columns["drugs"] = drug_names
    columns["classes"] = drug_classes
    columns["regimen"] = (
        _text(frame["regimen"], src.from_text)[0]
        if "regimen" in frame
        else np.full(len(frame), None, dtype=object)
    )
    for name in ("line", "cycle"):
        columns[name] = (
            _number_column(src, name, issues, low=0, what=f"a {name} number (>= 0)")
            if name in frame
            else np.full(len(frame), np.nan)
        )
    return _assemble(src, columns)


def _drug_columns(src: _Source, issues: _Issues, parsed: _Parsed) -> tuple[np.ndarray, np.ndarray]:
    raw = src.frame["drugs"]
    if not src.from_text and raw.dtype == object:
        raw = raw.map(lambda v: ";".join(map(str, v)) if isinstance(v, list | tuple) else v)
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    names: list[str | None] = []
    classes: list[str | None] = []
    unknown: dict[str, int] = {}
    for i, text in enumerate(uniques):
        parts = [p.strip() for p in str(text).split(";") if p.strip()]
        generics = list(dict.fromkeys(drugs.normalise_drug(p) for p in parts))
        if not generics:
            names.append(None)
            classes.append(None)
            continue
        names.append(";".join(generics))
        classes.append(";".join(sorted({c for g in generics for c in drugs.classes_of(g)})))
        for g in generics:
            if not drugs.is_known(g):
                unknown.setdefault(g, i)
    name_arr = np.array([*names, None], dtype=object)
    empty = np.array([n is None for n in names] + [True])[codes]
    issues.rows(src, empty, "drugs", lambda _: "no drug given (generic names separated by ';')")
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    firsts = _first_positions(codes, len(uniques))
    for drug in unknown:
        holding = [i for i, n in enumerate(names) if n and drug in n.split(";")]
        n_rows = int(counts[holding].sum())
        first = int(firsts[holding].min())
        hint = " (separate drugs with ';')" if re.search(r"[,+]", drug) else ""
        issues.add(
            "regimens",
            f"unknown drug {drug!r} in {n_rows} rows: no drug class assigned{hint}",
            column="drugs",
            line=int(src.lines[first]),
            warning=True,
        )
    parsed.extra["unknown_drugs"] = sorted(unknown)
    return name_arr[codes], np.array([*classes, None], dtype=object)[codes]


def _outcomes(src: _Source, issues: _Issues, episode_ids: pd.Index | None) -> pd.DataFrame:
    columns: dict[str, pd.Series | np.ndarray] = {}
    eid, eid_missing = _ids(src, "episode_id", issues, unique=True)
    columns["episode_id"] = eid
    if episode_ids is not None:
        unknown = ~eid.isin(episode_ids).to_numpy() & ~eid_missing
        issues.rows(
            src, unknown, "episode_id", lambda p: f"outcome for unknown episode {eid.iloc[p]!r}"
        )
    raw = src.frame["response"]
    if ptypes.is_bool_dtype(raw.dtype):
        raw = raw.astype("float64")
    values, missing, bad = _numbers(raw)
    arr = values.to_numpy()
    not01 = bad | missing | ~np.isin(arr, (0.0, 1.0))
    issues.rows(src, not01, "response", lambda p: f"response must be 0 or 1, got {_show(raw, p)}")
    columns["response"] = pd.Series(np.where(not01, np.nan, arr)).astype("Int64")
    frame = _assemble(src, columns)
    frame["response"] = frame["response"].astype("Int64")
    return frame


def _transfusions(src: _Source, issues: _Issues, patient_ids: pd.Index | None) -> pd.DataFrame:
    """Transfusions: patient_id, time, product (platelets | red_cells), optional units (> 0)."""
    frame = src.frame
    columns: dict[str, pd.Series | np.ndarray] = {}
    pid, pid_missing = _ids(src, "patient_id", issues, unique=False)
    columns["patient_id"] = pid
    _known(src, pid, pid_missing, patient_ids, "patient_id", "patient", issues)
    columns["time"], _ = _date_column(src, "time", issues, required=True)
    raw = frame["product"]
    product, missing = _text(raw, src.from_text)
    product = product.str.strip().str.lower()
    bad = ~product.isin(TRANSFUSION_PRODUCTS).to_numpy() & ~missing
    issues.rows(src, missing, "product", lambda _: "missing product")
    issues.rows(
        src,
        bad,
        "product",
        lambda p: f"product must be one of {', '.join(TRANSFUSION_PRODUCTS)}, got {_show(raw, p)}",
    )
    columns["product"] = product.where(~bad)
    columns["units"] = (
        _number_column(src, "units", issues, low=1e-9, what="a number of units (> 0)")
        if "units" in frame
        else np.full(len(frame), np.nan)
    )
    return _assemble(src, columns)


# ---------------------------------------------------------------------------------------------
# Summary


def _summary_of(
    frames: Mapping[str, pd.DataFrame | None],
    conversions: Mapping[tuple[str, str], int],
    sources: Mapping[str, _Source],
) -> dict[str, object]:
    tables = {
        name: {"file": src.origin, "rows": len(src.frame)} for name, src in sources.items()
    } or {name: {"rows": len(f)} for name, f in frames.items() if f is not None}
    summary: dict[str, object] = {"tables": tables}
    patients = frames.get("patients")
    episodes = frames.get("episodes")
    labs = frames.get("labs")
    regimens = frames.get("regimens")
    outcomes = frames.get("outcomes")
    summary["patients"] = int(patients["patient_id"].nunique()) if patients is not None else None
    summary["episodes"] = int(episodes["episode_id"].nunique()) if episodes is not None else None
    summary["lab_rows"] = len(labs) if labs is not None else None
    if labs is not None:
        known = labs["test"].isin(list(units.ANALYTES))
        counts = labs.loc[known, "test"].value_counts()
        summary["analytes"] = {a: int(counts[a]) for a in units.ANALYTES if a in counts.index}
    summary["regimen_rows"] = len(regimens) if regimens is not None else None
    summary["outcomes"] = len(outcomes) if outcomes is not None else None
    transfusions = frames.get("transfusions")
    summary["transfusions"] = len(transfusions) if transfusions is not None else None
    summary["conversions"] = [
        {
            "analyte": analyte,
            "from_unit": unit,
            "to_unit": units.CANONICAL_UNITS[analyte],
            "factor": units.unit_factor(analyte, unit),
            "rows": rows,
        }
        for (analyte, unit), rows in sorted(conversions.items())
    ]
    return summary


# ---------------------------------------------------------------------------------------------
# Small inputs (one patient over HTTP): the same result without pandas' per-call overhead.
#
# `_small_cohort` takes lists of row dicts of at most `_SMALL` rows, holds each column as the
# Python values `pd.DataFrame(rows)` would hold (same dtype inference) and repeats every check and
# conversion of the pandas path above in plain Python and numpy. It handles valid inputs and the
# warnings they may carry; anything else (an error to report, an unusual value type, a DataFrame)
# declines and the pandas path answers, so errors always come from that one place.
# tests/data/test_cohort_small.py proves the two paths equal on random inputs.


class _Decline(Exception):
    """The small path does not handle this input; the pandas path will."""


_NAN = float("nan")
_NS = np.dtype("datetime64[ns]")
_INFINITIES = frozenset({float("inf"), float("-inf")})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_OBJECT_TYPES = frozenset({str, int, float, bool, type(None), list, tuple, dict})


@dataclass
class _Rows:
    """One small in-memory table as columns of the values pandas would hold."""

    table: str
    names: list[str]
    values: dict[str, list]
    kinds: dict[str, str]  # "int", "float", "bool" or "object": the dtype pandas infers
    n: int


def _small_cohort(tables: Mapping[str, object]) -> Cohort | None:
    """The Cohort of small, valid row-dict tables; None when the pandas path must answer."""
    try:
        return _small_build(tables)
    except _Decline:
        return None


def _small_build(tables: Mapping[str, object]) -> Cohort:
    if not isinstance(tables, Mapping) or pd.get_option("future.infer_string"):
        raise _Decline
    rows: dict[str, _Rows] = {}
    for name, value in tables.items():
        if name not in REQUIRED_TABLES:  # outcomes and unknown tables: pandas path
            raise _Decline
        if value is not None:
            rows[name] = _small_rows(name, value)
    for name in ("labs", "regimens"):
        if name not in rows:
            rows[name] = _small_rows(name, [])
    if "patients" not in rows or "episodes" not in rows:
        raise _Decline
    for src in rows.values():
        if any(c not in src.values for c in REQUIRED_COLUMNS[src.table]):
            raise _Decline
    if not rows["patients"].n or not rows["episodes"].n:
        raise _Decline
    found: list[Issue] = []
    patients, pids, births = _small_patients(rows["patients"], found)
    known = set(pids)
    episodes = _small_episodes(rows["episodes"], known, pids, births)
    conversions: dict[tuple[str, str], int] = {}
    labs = _small_labs(rows["labs"], known, found, conversions)
    regimens = _small_regimens(rows["regimens"], known, found)
    return Cohort(
        patients=patients,
        episodes=episodes,
        labs=labs,
        regimens=regimens,
        outcomes=None,
        warnings=tuple(found),
        conversions=MappingProxyType(dict(conversions)),
    )


def _small_rows(table: str, value: object) -> _Rows:
    """Columns of a list of row dicts, with the dtypes `pd.DataFrame(rows)` infers."""
    if type(value) is not list or len(value) > _SMALL:
        raise _Decline
    if not value:
        names = list(REQUIRED_COLUMNS[table])
        return _Rows(table, names, {c: [] for c in names}, dict.fromkeys(names, "object"), 0)
    seen: dict[str, None] = {}
    for row in value:
        if type(row) is not dict:
            raise _Decline
        for key in row:
            if type(key) is not str:
                raise _Decline
            seen[key] = None
    if not seen:
        raise _Decline
    values: dict[str, list] = {}
    kinds: dict[str, str] = {}
    for name in seen:
        kinds[name], values[name] = _infer([row.get(name, _NAN) for row in value])
    return _Rows(table, list(seen), values, kinds, len(value))


def _infer(column: list) -> tuple[str, list]:
    """(kind, values) as pandas infers an object column built from records."""
    types = set(map(type, column))
    if types <= {int, float, type(None)} and types != {type(None)}:
        if int in types and not all(
            _INT64_MIN <= v <= _INT64_MAX for v in column if type(v) is int
        ):
            raise _Decline
        if types == {int}:
            return "int", column
        return "float", [_NAN if v is None else float(v) for v in column]
    if types == {bool}:
        return "bool", column
    if types <= _OBJECT_TYPES:
        return "object", column
    raise _Decline


def _is_na(value: object) -> bool:
    return value is None or (type(value) is float and value != value)


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _small_array(src: _Rows, name: str) -> np.ndarray:
    """A column given as is: what `frame[name].to_numpy()` gives."""
    kind = src.kinds[name]
    if kind == "int":
        return np.array(src.values[name], dtype=np.int64)
    if kind == "float":
        return np.array(src.values[name], dtype=np.float64)
    if kind == "bool":
        return np.array(src.values[name], dtype=bool)
    return _objects(src.values[name])


def _small_assemble(
    src: _Rows, columns: dict[str, np.ndarray], order: list[int] | None = None
) -> pd.DataFrame:
    """As `_assemble`: normalised columns in the input order, then the new ones."""
    data: dict[str, np.ndarray] = {}
    for name in src.names:
        data[name] = columns[name] if name in columns else _small_array(src, name)
    for name, value in columns.items():
        if name not in data:
            data[name] = value
    if order is not None:
        data = {name: value[order] for name, value in data.items()}
    return _frame_of_arrays(data)


_BLOCK_KINDS = frozenset("biufO")


def _frame_of_arrays(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """`pd.DataFrame(columns)` for equal-length 1-D numpy arrays with string names, built faster.

    The same values, dtypes, RangeIndex and object Index of the names, with the columns of each
    dtype copied into one block (as pandas consolidates them), without pandas' per-column
    inference and per-column blocks (about 15 us instead of 60-90 us for a small table), through
    pandas' block internals as pyarrow's `to_pandas` does (pandas 2.x; tests compare the frames);
    any other input is left to `pd.DataFrame`.
    """
    if not _BLOCKS:
        return pd.DataFrame(dict(columns), copy=False)
    names = list(columns)
    arrays = list(columns.values())
    n = len(arrays[0]) if arrays else 0
    # Columns of one dtype share a block, as pandas consolidates them.
    groups: dict[np.dtype, list[int]] = {}
    for i, values in enumerate(arrays):
        if (
            type(values) is not np.ndarray
            or values.ndim != 1
            or len(values) != n
            or not (values.dtype.kind in _BLOCK_KINDS or values.dtype == _NS)
        ):
            return pd.DataFrame(dict(columns), copy=False)
        groups.setdefault(values.dtype, []).append(i)
    if not groups or any(type(name) is not str for name in names):
        return pd.DataFrame(dict(columns), copy=False)
    blocks = []
    for dtype, positions in groups.items():
        if len(positions) == 1:
            stacked = arrays[positions[0]].reshape(1, n)
        else:
            stacked = np.empty((len(positions), n), dtype=dtype)
            for row, i in enumerate(positions):
                stacked[row] = arrays[i]
        if dtype == _NS:
            stacked = DatetimeArray._simple_new(stacked, dtype=_NS)
        placement = BlockPlacement(np.array(positions, dtype=np.intp))
        blocks.append(new_block(stacked, placement, ndim=2))
    labels = np.empty(len(names), dtype=object)
    labels[:] = names
    axes = [pd.Index._simple_new(labels), pd.RangeIndex._simple_new(range(n))]
    return pd.DataFrame._from_mgr(BlockManager(tuple(blocks), axes, verify_integrity=False), axes)


def _small_text(src: _Rows, name: str) -> list[str | None]:
    """As `_text` (and `_clean_text` on the distinct values) for text given as str or missing."""
    if src.kinds[name] != "object":
        raise _Decline
    out: list[str | None] = []
    for value in src.values[name]:
        if type(value) is str:
            out.append(value.strip() or None)
        elif _is_na(value):
            out.append(None)
        else:
            raise _Decline
    return out


def _small_ids(src: _Rows, name: str, unique: bool) -> list[str]:
    values = _small_text(src, name)
    if None in values or (unique and len(set(values)) < len(values)):
        raise _Decline
    return values  # type: ignore[return-value]


def _small_dates(src: _Rows, name: str, required: bool) -> np.ndarray:
    """As `_dates_small`, the path `_dates` takes for a few text dates."""
    values = src.values[name]
    if src.kinds[name] == "float" and all(v != v for v in values):
        # Only NaN: pandas parses no date and counts every row as missing.
        if required:
            raise _Decline
        return np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
    if src.kinds[name] != "object":
        raise _Decline
    if not all(v is None or (type(v) is str and v) for v in values):
        # NaN (a key absent from some rows) sends the pandas path to `pd.to_datetime`, which
        # agrees with numpy on plain ISO dates and times inside the nanosecond range.
        if not all(_is_na(v) or (type(v) is str and _small_iso(v)) for v in values):
            raise _Decline
        values = [None if _is_na(v) else v for v in values]
    if not all(v is None or _year_within(v) for v in values):
        raise _Decline  # numpy's nanoseconds would wrap; `_date_column` reports the date
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parsed = np.array(values, dtype="datetime64[ns]")
    except Exception as exc:  # the pandas path parses or reports it
        raise _Decline from exc
    if required and np.isnat(parsed).any():
        raise _Decline
    return parsed


_PLAIN_ISO = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:T(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,9})?)?)?"
)


def _small_iso(text: str) -> bool:
    return _PLAIN_ISO.fullmatch(text) is not None and "1900" <= text[:4] <= "2200"


def _small_numbers(
    src: _Rows,
    name: str,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    required: bool = False,
) -> np.ndarray:
    """As `_number_column` for numbers (or nothing) given as numbers, with nothing to report."""
    kind = src.kinds[name]
    values = src.values[name]
    if kind in ("int", "float", "bool"):
        arr = np.array(values, dtype=np.float64)
        if any(v in _INFINITIES for v in arr.tolist()):
            raise _Decline
    elif all(v is None for v in values):
        arr = np.full(len(values), np.nan)
    else:
        raise _Decline
    # The checks on the float64 values themselves (NaN compares false), one Python pass.
    for number in arr.tolist():
        if number != number:
            if required:
                raise _Decline
        elif (
            (low is not None and number < low)
            or (high is not None and number > high)
            or (integer and not number.is_integer())
        ):
            raise _Decline
    return arr


def _small_unknown_patients(src: _Rows, pid: list[str], known: set[str], found: list) -> None:
    """As `_known(..., warning=True)`."""
    unknown = [i for i, p in enumerate(pid) if p not in known]
    if unknown:
        first = unknown[0]
        distinct = len({pid[i] for i in unknown})
        found.append(
            Issue(
                src.table,
                first,
                "patient_id",
                f"{len(unknown)} rows for {distinct} patients not in the patients table "
                f"(first: {pid[first]!r}); kept but unused",
            )
        )


def _small_patients(
    src: _Rows, found: list[Issue]
) -> tuple[pd.DataFrame, list[str], np.ndarray | None]:
    columns: dict[str, np.ndarray] = {}
    pids = _small_ids(src, "patient_id", unique=True)
    columns["patient_id"] = _objects(pids)
    for name in ("sex", "race", "site"):
        if name in src.values:
            columns[name] = _objects(_small_text(src, name))
    births = None
    if "birth_date" in src.values:
        births = columns["birth_date"] = _small_dates(src, "birth_date", required=False)
    if "ecog" in src.values:
        columns["ecog"] = _small_numbers(src, "ecog", low=0, high=5, integer=True)
    if "subtype" in src.values:
        columns["subtype"] = _small_subtypes(src, found)
    for name in BOOLEAN_COLUMNS:
        if name in src.values:
            parsed = []
            for value in src.values[name]:
                flag = np.nan if _is_na(value) else _boolean(value)
                if flag is None:
                    raise _Decline
                parsed.append(flag)
            columns[name] = np.array(parsed, dtype=np.float64)
    return _small_assemble(src, columns), pids, births


def _small_subtypes(src: _Rows, found: list[Issue]) -> np.ndarray:
    text = _small_text(src, "subtype")
    mapped: dict[str, str] = {}
    for i, value in enumerate(text):
        if value is None or value in mapped:
            continue
        key = value.replace("\u2212", "-").replace(" ", "").lower()
        mapped[value] = _SUBTYPE_KEYS.get(key, value)
        if key not in _SUBTYPE_KEYS:
            found.append(
                Issue(
                    "patients",
                    i,
                    "subtype",
                    f"unknown subtype {value!r} kept as given in {text.count(value)} rows "
                    f"(known: {', '.join(SUBTYPES)})",
                )
            )
    return _objects([None if v is None else mapped[v] for v in text])


def _small_episodes(
    src: _Rows, known: set[str], pids: list[str], births: np.ndarray | None
) -> pd.DataFrame:
    columns: dict[str, np.ndarray] = {}
    columns["episode_id"] = _objects(_small_ids(src, "episode_id", unique=True))
    pid = _small_ids(src, "patient_id", unique=False)
    if any(p not in known for p in pid):
        raise _Decline
    columns["patient_id"] = _objects(pid)
    index_date = columns["index_date"] = _small_dates(src, "index_date", required=True)
    if "dose_mg" in src.values:
        columns["dose_mg"] = _small_numbers(src, "dose_mg", low=0)
    age = (
        _small_numbers(src, "age_years", low=0, high=120)
        if "age_years" in src.values
        else np.full(src.n, np.nan)
    )
    if births is not None and np.isnan(age).any():
        position = {p: i for i, p in enumerate(pids)}
        birth = births[[position[p] for p in pid]]
        span = index_date - birth
        derived = np.where(
            np.isnat(span),
            np.nan,
            span.astype("timedelta64[s]").astype(np.int64) / _SECONDS_PER_YEAR,
        )
        if ((derived < 0) & np.isnan(age)).any():
            raise _Decline
        age = np.where(np.isnan(age), derived, age)
    columns["age_years"] = age.astype("float64")
    return _small_assemble(src, columns)


def _small_labs(
    src: _Rows,
    known: set[str],
    found: list[Issue],
    conversions: dict[tuple[str, str], int],
) -> pd.DataFrame:
    pid = _small_ids(src, "patient_id", unique=False)
    _small_unknown_patients(src, pid, known, found)
    time = _small_dates(src, "time", required=True)
    value = _small_numbers(src, "value", required=True)
    tests = _small_text(src, "test")
    unit_text = _small_text(src, "unit")
    if None in tests:
        raise _Decline
    analyte_of: dict[str, str | None] = {}
    factor_of: dict[tuple[str, str], float | None] = {}
    analytes = []
    factors = []
    for code, unit in zip(tests, unit_text, strict=True):
        if code not in analyte_of:
            analyte_of[code] = units.canonical_test(code)
        analyte = analyte_of[code]
        analytes.append(analyte)
        if analyte is None:
            factors.append(1.0)
            continue
        if unit is None:
            raise _Decline
        pair = (analyte, unit)
        if pair not in factor_of:
            factor_of[pair] = units.unit_factor(analyte, unit)
        factor = factor_of[pair]
        if factor is None:
            raise _Decline
        factors.append(factor)
    converted = value * np.array(factors, dtype=np.float64)
    for analyte, number in zip(analytes, converted.tolist(), strict=True):
        if analyte is not None and (number < 0 or number > units.ANALYTES[analyte].limit):
            raise _Decline

    # Warnings for unknown tests, in order of first appearance (as the pandas path).
    unknown_tests: dict[str, list[int]] = {}
    for i, (code, analyte) in enumerate(zip(tests, analytes, strict=True)):
        if analyte is None:
            unknown_tests.setdefault(code, [0, i])[0] += 1
    for code, (count, first) in unknown_tests.items():
        found.append(
            Issue(
                "labs",
                first,
                "test",
                f"test {code!r} is not a known analyte: {count} rows kept under their own code, "
                "units as given",
            )
        )

    # Conversions, counted by (distinct test code as given, distinct unit as given) in order of
    # first appearance, as the pandas path counts them.
    raw_tests: dict[object, int] = {}
    raw_units: dict[object, int] = {}
    pairs: dict[tuple[int, int], list] = {}
    for raw_test, raw_unit, analyte, unit in zip(
        src.values["test"], src.values["unit"], analytes, unit_text, strict=True
    ):
        t = raw_tests.setdefault(raw_test, len(raw_tests))
        if _is_na(raw_unit):
            raise _Decline  # only unknown tests may lack a unit; then nothing is converted
        u = raw_units.setdefault(raw_unit, len(raw_units))
        if analyte is not None:
            pairs.setdefault((t, u), [analyte, unit, 0])[2] += 1
    for _, (analyte, unit, count) in sorted(pairs.items()):
        if unit != units.CANONICAL_UNITS[analyte]:
            key = (analyte, unit)
            conversions[key] = conversions.get(key, 0) + count

    test_out = [a if a is not None else t for a, t in zip(analytes, tests, strict=True)]
    unit_out = [
        units.CANONICAL_UNITS[a] if a is not None else u
        for a, u in zip(analytes, unit_text, strict=True)
    ]
    columns = {
        "patient_id": _objects(pid),
        "time": time,
        "test": _objects(test_out),
        "value": converted,
        "unit": _objects(unit_out),
    }
    order = None
    if src.n >= 2:
        if any("\x00" in p for p in pid):
            raise _Decline  # numpy's text order differs from Python's there
        keys = list(zip(pid, time.view("int64").tolist(), strict=True))
        if any(keys[i] > keys[i + 1] for i in range(len(keys) - 1)):
            order = sorted(range(src.n), key=keys.__getitem__)
    return _small_assemble(src, columns, order)


def _small_regimens(src: _Rows, known: set[str], found: list[Issue]) -> pd.DataFrame:
    columns: dict[str, np.ndarray] = {}
    pid = _small_ids(src, "patient_id", unique=False)
    columns["patient_id"] = _objects(pid)
    _small_unknown_patients(src, pid, known, found)
    start = columns["start_date"] = _small_dates(src, "start_date", required=True)
    if "end_date" in src.values:
        end = _small_dates(src, "end_date", required=False)
        if (end < start).any():
            raise _Decline
    else:
        end = np.full(src.n, np.datetime64("NaT"), dtype="datetime64[ns]")
    columns["end_date"] = end
    if src.kinds["drugs"] != "object":
        raise _Decline
    per_text: dict[str, tuple[str, str, list[str]]] = {}
    names: list[str] = []
    classes: list[str] = []
    unknown: dict[str, None] = {}
    for value in src.values["drugs"]:
        text = ";".join(map(str, value)) if isinstance(value, list | tuple) else value
        if type(text) is not str:
            raise _Decline
        if text not in per_text:
            parts = [p.strip() for p in text.split(";") if p.strip()]
            generics = list(dict.fromkeys(drugs.normalise_drug(p) for p in parts))
            if not generics:
                raise _Decline
            per_text[text] = (
                ";".join(generics),
                ";".join(sorted({c for g in generics for c in drugs.classes_of(g)})),
                [g for g in generics if not drugs.is_known(g)],
            )
            unknown.update(dict.fromkeys(per_text[text][2]))
        name, drug_classes, _ = per_text[text]
        names.append(name)
        classes.append(drug_classes)
    for drug in unknown:
        holding = [i for i, n in enumerate(names) if drug in n.split(";")]
        hint = " (separate drugs with ';')" if re.search(r"[,+]", drug) else ""
        found.append(
            Issue(
                "regimens",
                holding[0],
                "drugs",
                f"unknown drug {drug!r} in {len(holding)} rows: no drug class assigned{hint}",
            )
        )
    columns["drugs"] = _objects(names)
    columns["classes"] = _objects(classes)
    columns["regimen"] = (
        _objects(_small_text(src, "regimen"))
        if "regimen" in src.values
        else np.full(src.n, None, dtype=object)
    )
    for name in ("line", "cycle"):
        columns[name] = (
            _small_numbers(src, name, low=0) if name in src.values else np.full(src.n, np.nan)
        )
    return _small_assemble(src, columns)
