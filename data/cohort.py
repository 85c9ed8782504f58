"""The cohort contract: load, validate and normalise a cohort's tables (DESIGN.md, "Cohort").

A cohort is a directory of `NAME.csv` / `NAME.parquet` tables, or the same tables in memory (one
patient over HTTP). Validation collects every problem with its table, line and column; nothing in
the input is modified. Every input first becomes typed columns (`data.columns`: numpy arrays, text
as codes into its distinct values), so one implementation of each check serves a million rows and
one patient alike: per-row work is numpy, per-value Python work runs on distinct values (test
codes, units, drug lists, booleans) or on the rows that are reported, and the `Cohort`'s frames
are built once, at the end.
"""

from __future__ import annotations

import functools
import io
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import compute as pa_compute
from pyarrow import csv as pa_csv
from pyarrow import parquet as pa_parquet

from data import columns as cols
from data import drugs, units
from data.columns import Column, Texts
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
from data.table import Table, as_table

logger = logging.getLogger(__name__)

TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".pq")
# Past this many rows with the same problem, one more issue counts the rest (a million bad units
# would otherwise make an unreadable report).
MAX_ISSUES_PER_CHECK = 50

_SUBTYPE_KEYS = {s.lower(): s for s in SUBTYPES}
_SECONDS_PER_YEAR = 365.25 * 86400.0
_PRODUCTS = frozenset(TRANSFUSION_PRODUCTS)


_TABLE_NAMES = ("patients", "episodes", "labs", "regimens", "outcomes", "transfusions")


@dataclass(init=False, frozen=True, eq=False, repr=False)
class Cohort:
    """Validated, normalised cohort tables (new frames, never the input objects).

    Each table is held as numpy columns (`Cohort.table`, what the feature pipeline reads); its
    pandas frame (`cohort.labs`, ...) is built when first asked for, and from then on is the
    table. A frozen dataclass: `dataclasses.replace` gives a changed copy. See
    docs/ARCHITECTURE.md "data" for the columns of each table.
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

    def __init__(
        self,
        patients: pd.DataFrame | Table,
        episodes: pd.DataFrame | Table,
        labs: pd.DataFrame | Table,
        regimens: pd.DataFrame | Table,
        outcomes: pd.DataFrame | Table | None = None,
        warnings: tuple[Issue, ...] = (),
        transfusions: pd.DataFrame | Table | None = None,
        simulation: Mapping[str, object] | None = None,
        conversions: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        given = (patients, episodes, labs, regimens, outcomes, transfusions)
        tables = {name: as_table(v, name) for name, v in zip(_TABLE_NAMES, given, strict=True)}
        set_ = object.__setattr__
        set_(self, "_tables", {k: v for k, v in tables.items() if v is not None})
        set_(self, "warnings", tuple(warnings))
        set_(self, "simulation", simulation)
        set_(self, "conversions", MappingProxyType(dict(conversions or {})))

    def table(self, name: str) -> Table | None:
        """A table's numpy columns (None when absent), without building its frame."""
        if name not in _TABLE_NAMES:
            raise KeyError(f"no table {name!r} in a cohort (tables: {', '.join(_TABLE_NAMES)})")
        return self._tables.get(name)

    def __repr__(self) -> str:
        rows = ", ".join(f"{name}={len(table)} rows" for name, table in self._tables.items())
        return f"Cohort({rows}, warnings={len(self.warnings)})"


def _frame_of(name: str) -> property:
    def get(self: Cohort) -> pd.DataFrame | None:
        table = self._tables.get(name)
        return None if table is None else table.frame

    return property(get, doc=f"The {name} table as a pandas frame (None when absent).")


# Set after the dataclass is made: as class attributes in the body they would be field defaults.
for _name in _TABLE_NAMES:
    setattr(Cohort, _name, _frame_of(_name))


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
    """One raw table as typed columns (input order), the line of each row, where it came from."""

    table: str
    columns: dict[str, Column]
    n: int
    lines: np.ndarray
    origin: str

    def __contains__(self, name: str) -> bool:
        return name in self.columns


def _empty_source(table: str, origin: str) -> _Source:
    empty = {c: np.zeros(0, dtype=object) for c in REQUIRED_COLUMNS[table]}
    return _Source(table, empty, 0, np.arange(0), origin)


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
        value: str | None = None,
        code: str | None = None,
    ) -> None:
        issue = Issue(table, line, column, message, value=value, code=code)
        (self.warnings if warning else self.errors).append(issue)

    def rows(
        self,
        src: _Source,
        mask: np.ndarray,
        column: str | None,
        describe: Callable[[int], str],
        warning: bool = False,
        code: str | None = None,
    ) -> int:
        """Report each masked row (`describe(position)` gives the reason); returns the count."""
        if not np.count_nonzero(mask):  # the usual case, and cheaper than mask.any() on few rows
            return 0
        positions = np.flatnonzero(mask)
        target = self.warnings if warning else self.errors
        shown = positions[:MAX_ISSUES_PER_CHECK]
        for pos in shown:
            line = int(src.lines[pos])
            target.append(Issue(src.table, line, column, describe(int(pos)), code=code))
        rest = len(positions) - len(shown)
        if rest:
            pos = int(positions[len(shown)])
            target.append(
                Issue(
                    src.table,
                    int(src.lines[pos]),
                    column,
                    f"{describe(pos)}; and {rest - 1} more rows with the same problem",
                    code=code,
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
    cohort, _ = _build(sources, issues, simulation=_simulation_summary(Path(path)))
    if issues.errors or cohort is None:
        raise CohortError(issues.errors, issues.warnings)
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
        source = _source_of(name, value, issues)
        if source is not None:
            sources[name] = source
    for name in ("patients", "episodes"):
        if name not in sources and not any(i.table == name for i in issues.errors):
            issues.add(name, f"missing table {name!r}")
    for name in ("labs", "regimens"):
        if name not in sources and not any(i.table == name for i in issues.errors):
            sources[name] = _empty_source(name, "<memory>")
    cohort, _ = _build(sources, issues, improbable=True)
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
        source = _Source(name, cols.of_frame(frame), len(frame), rows, "<part>")
        sources[name] = _without_blank_rows(source) if name in text else source
    for name in REQUIRED_TABLES:
        if name not in sources:
            sources[name] = _empty_source(name, "<part>")
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
    column_values = cols.take(cols.of_series(pd.Series(values).reset_index(drop=True)), order)
    src = _Source(table, {column: column_values}, len(order), np.asarray(lines)[order], "<part>")
    issues = _Issues()
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


def _source_of(name: str, value: object, issues: _Issues) -> _Source | None:
    """An in-memory table (a frame, a row dict or a list of them) as typed columns."""
    if isinstance(value, pd.DataFrame):
        return _Source(name, cols.of_frame(value), len(value), np.arange(len(value)), "<memory>")
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list | tuple):
        if not all(isinstance(row, Mapping) for row in value):
            issues.add(name, "rows must be objects (column -> value)")
            return None
        columns, n = cols.of_rows(value)
        if not columns:
            return (
                _empty_source(name, "<memory>")
                if not n
                else _Source(name, {}, n, np.arange(n), "<memory>")
            )
        return _Source(name, columns, n, np.arange(n), "<memory>")
    issues.add(name, f"expected a table (DataFrame or list of rows), got {type(value).__name__}")
    return None


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
        arrow = _dates_in_arrow(_without_stored_index(arrow), table)
        columns = cols.of_arrow(arrow)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        issues.add(table, f"{file.name} is not a readable Parquet file ({_first_line(exc)})")
        return None
    return _Source(table, columns, arrow.num_rows, np.arange(arrow.num_rows), file.name)


def _without_stored_index(arrow: pa.Table) -> pa.Table:
    """A frame's RangeIndex written by pandas is metadata, not a column; another stored index
    becomes a column named as pandas names it on `reset_index` (kept as an extra column)."""
    metadata = arrow.schema.pandas_metadata or {}
    for position, name in enumerate(metadata.get("index_columns", [])):
        if isinstance(name, str) and name in arrow.column_names:
            index = arrow.column_names.index(name)
            label = name if not name.startswith("__index_level_") else None
            label = label or (
                "index" if len(metadata["index_columns"]) == 1 else f"level_{position}"
            )
            column = arrow.column(index)
            arrow = arrow.remove_column(index).add_column(position, label, column)
    return arrow


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
    columns = _read_csv_fast(table, data)
    if columns is None:
        frame = _read_csv_exact(table, file, data, issues)
        if frame is None:
            return None
        columns = cols.of_frame(frame)
        columns = {name.strip(): column for name, column in columns.items()}
    del data
    n = len(next(iter(columns.values()))) if columns else 0
    return _without_blank_rows(_Source(table, columns, n, np.arange(n) + 2, file.name))


def _without_blank_rows(src: _Source) -> _Source:
    """Rows with every field empty are not data; drop them, keeping each row's line number."""
    if not src.columns or not src.n:
        return src
    blank = np.ones(src.n, dtype=bool)
    for column in src.columns.values():
        blank &= cols.missing(column)
        if not blank.any():
            return src
    keep = np.flatnonzero(~blank)
    columns = {name: cols.take(column, keep) for name, column in src.columns.items()}
    return _Source(src.table, columns, len(keep), src.lines[keep], src.origin)


def _read_csv_fast(table: str, data: bytes) -> dict[str, Column] | None:
    """pyarrow's multi-threaded reader; None when it cannot give exact line numbers or fails
    (the exact reader then reports the problem with its line)."""
    if b"\n\n" in data or b"\n\r\n" in data or data[:1] in (b"\n", b"\r"):
        return None  # pyarrow skips blank lines, which would shift line numbers
    try:
        # Text is read dictionary-encoded: no Python string per row.
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
        return cols.of_arrow(parsed)
    except Exception:  # any parse problem: the exact reader explains it
        logger.debug("fast CSV reader declined %s", table, exc_info=True)
        return None


def _read_csv_exact(table: str, file: Path, data: bytes, issues: _Issues) -> pd.DataFrame | None:
    try:
        return pd.read_csv(
            io.BytesIO(data),
            dtype=dict.fromkeys(TEXT_COLUMNS[table], "category"),
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


def _show(column: Column, pos: int) -> str:
    value = cols.value_at(column, pos)
    return repr(value) if isinstance(value, str) else repr(str(value))


# ---------------------------------------------------------------------------------------------
# Table normalisation


@dataclass
class _Parsed:
    """Normalised frames so far and facts needed across tables."""

    frames: dict[str, Table] = field(default_factory=dict)
    conversions: dict[tuple[str, str], int] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    #: Building the report of `validate_cohort` (adds its warnings), not a cohort to use.
    with_summary: bool = False
    #: Warn about improbable lab values (`validate_cohort`, and one patient's record).
    improbable: bool = False
    #: Known patient ids, and each one's birth date when the patients table gives them.
    patient_ids: frozenset[str] | None = None
    births: dict[str, np.datetime64] | None = None
    episode_ids: frozenset[str] | None = None


def _build(
    sources: Mapping[str, _Source],
    issues: _Issues,
    with_summary: bool = False,
    whole: bool = True,
    improbable: bool = False,
    simulation: Mapping[str, object] | None = None,
) -> tuple[Cohort | None, dict]:
    parsed = _Parsed(with_summary=with_summary, improbable=improbable or with_summary)
    ok = {name: _has_columns(src, issues) for name, src in sources.items()}
    if ok.get("patients"):
        parsed.frames["patients"] = _patients(sources["patients"], issues, parsed)
    if ok.get("episodes"):
        parsed.frames["episodes"] = _episodes(sources["episodes"], issues, parsed)
    if ok.get("labs"):
        parsed.frames["labs"] = _labs(sources["labs"], issues, parsed)
    if ok.get("regimens"):
        parsed.frames["regimens"] = _regimens(sources["regimens"], issues, parsed)
    if ok.get("outcomes"):
        parsed.frames["outcomes"] = _outcomes(sources["outcomes"], issues, parsed)
    if ok.get("transfusions"):
        parsed.frames["transfusions"] = _transfusions(sources["transfusions"], issues, parsed)
    for name in ("patients", "episodes"):
        if whole and ok.get(name) and len(parsed.frames[name]) == 0:
            issues.errors.append(no_rows_issue(name))
    summary: dict[str, object] = {}
    if with_summary:
        frames = {name: table.frame for name, table in parsed.frames.items()}
        summary = _summary_of(frames, parsed.conversions, sources)
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
        simulation=simulation,
    )
    return cohort, summary


def _has_columns(src: _Source, issues: _Issues) -> bool:
    missing = [c for c in REQUIRED_COLUMNS[src.table] if c not in src.columns]
    for column in missing:
        near = [c for c in src.columns if c.strip().lower() == column]
        hint = f" (found {near[0]!r}: column names are lower case)" if near else ""
        issues.add(src.table, f"missing required column {column!r}{hint}", column=column)
    return not missing


def _ids(src: _Source, column: str, issues: _Issues, unique: bool) -> Texts:
    text = cols.texts(src.columns[column])
    issues.rows(src, text.missing, column, lambda _: f"missing {column}")
    if unique and len(text.uniques) < src.n - int(text.missing.sum()):
        codes = text.codes
        first = np.full(len(text.uniques) + 1, -1, dtype=np.int64)
        present = np.flatnonzero(codes >= 0)
        # The first row of each id: reversed assignment leaves the earliest position.
        first[codes[present[::-1]]] = present[::-1]
        repeated = ~text.missing & (first[codes] != np.arange(src.n))
        issues.rows(
            src,
            repeated,
            column,
            lambda p: (
                f"duplicate {column} {text.values[p]!r} "
                f"(first on line {int(src.lines[first[codes[p]]])})"
            ),
        )
    return text


def _known(
    src: _Source,
    ids: Texts,
    known: frozenset[str] | None,
    column: str,
    what: str,
    issues: _Issues,
    warning: bool = False,
) -> np.ndarray:
    if known is None:
        return np.zeros(src.n, dtype=bool)
    inside = np.array([u in known for u in ids.uniques] + [True], dtype=bool)
    unknown = ~inside[ids.codes]
    if not np.count_nonzero(unknown):
        return unknown
    if warning:
        first = int(np.flatnonzero(unknown)[0])
        distinct = int((~inside).sum())
        issues.add(
            src.table,
            f"{int(unknown.sum())} rows for {distinct} {what}s not in the {what}s table "
            f"(first: {ids.values[first]!r}); kept but unused",
            column=column,
            line=int(src.lines[first]),
            warning=True,
        )
    else:
        issues.rows(
            src, unknown, column, lambda p: f"unknown {what} {ids.values[p]!r} (not in {what}s)"
        )
    return unknown


def _date_column(
    src: _Source, column: str, issues: _Issues, required: bool
) -> tuple[np.ndarray, np.ndarray]:
    raw = src.columns[column]
    values, missing, bad, had_offsets = cols.dates(raw)
    # Dates outside 1900-2200 are typing errors; pandas cannot even hold those beyond 1677-2262.
    # NaT compares false, so it is never outside.
    outside = (values < _EARLIEST) | (values >= _AFTER_LATEST)
    if np.count_nonzero(bad):
        far = np.zeros(src.n, dtype=bool)
        for p in np.flatnonzero(bad):
            far[p] = _year_outside(cols.value_at(raw, int(p)))
        outside = outside | far
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
_EARLIEST = np.datetime64(DATE_RANGE[0], "ns")
_AFTER_LATEST = np.datetime64("2201-01-01", "ns")
_YEAR = re.compile(r"\s*([+-]?\d{4,})-")


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
) -> np.ndarray:
    raw = src.columns[column]
    values, missing, bad = cols.numbers(raw)
    issues.rows(src, bad, column, lambda p: f"non-numeric value {_show(raw, p)}")
    if required:
        issues.rows(src, missing, column, lambda _: f"missing {column}")
    # NaN compares false: a missing value is never out of range.
    out = np.zeros(len(values), dtype=bool)
    if low is not None:
        out |= values < low
    if high is not None:
        out |= values > high
    if integer:
        out |= np.isfinite(values) & (values != np.round(values))
    out &= ~bad
    issues.rows(src, out, column, lambda p: f"{column} {values[p]:g} is not {what}")
    return values


def _assemble(
    src: _Source, columns: dict[str, np.ndarray], order: np.ndarray | None = None
) -> Table:
    """New table: normalised columns in the input order, then unknown extra columns as given."""
    data: dict[str, np.ndarray] = {}
    for name, given in src.columns.items():
        data[name] = columns.pop(name) if name in columns else cols.as_array(given)
    data.update(columns)
    columns.clear()
    if order is not None:
        for name in data:  # one column at a time: the unsorted copy goes as its sorted one comes
            data[name] = data[name][order]
    return Table(data, src.n)


def _patients(src: _Source, issues: _Issues, parsed: _Parsed) -> Table:
    columns: dict[str, np.ndarray] = {}
    ids = _ids(src, "patient_id", issues, unique=True)
    columns["patient_id"] = ids.values
    parsed.patient_ids = frozenset(ids.uniques)
    for name in ("sex", "race", "site"):
        if name in src:
            columns[name] = cols.texts(src.columns[name]).values
    if "birth_date" in src:
        births, _ = _date_column(src, "birth_date", issues, required=False)
        columns["birth_date"] = births
        # The first row of each patient (a duplicated id is an error already).
        first: dict[str, np.datetime64] = {}
        for pid, birth in zip(ids.values.tolist(), births, strict=True):
            if pid is not None and pid not in first:
                first[pid] = birth
        parsed.births = first
    if "ecog" in src:
        columns["ecog"] = _number_column(
            src, "ecog", issues, low=0, high=5, integer=True, what="an ECOG score 0-5"
        )
    if "subtype" in src:
        columns["subtype"] = _subtypes(src, issues)
    for name in BOOLEAN_COLUMNS:
        if name in src:
            raw = src.columns[name]
            values, bad = cols.booleans(raw)
            issues.rows(
                src,
                bad,
                name,
                lambda p, raw=raw: f"bad boolean {_show(raw, p)} (use true/false/1/0)",
            )
            columns[name] = values
    return _assemble(src, columns)


def _subtypes(src: _Source, issues: _Issues) -> np.ndarray:
    text = cols.texts(src.columns["subtype"])
    mapped = []
    for i, u in enumerate(text.uniques):
        key = u.replace("\u2212", "-").replace(" ", "").lower()
        mapped.append(_SUBTYPE_KEYS.get(key, u))
        if key not in _SUBTYPE_KEYS:
            rows = np.flatnonzero(text.codes == i)
            issues.add(
                "patients",
                f"unknown subtype {u!r} kept as given in {len(rows)} rows "
                f"(known: {', '.join(SUBTYPES)})",
                column="subtype",
                line=int(src.lines[rows[0]]),
                warning=True,
            )
    return np.array([*mapped, None], dtype=object)[text.codes]


def _episodes(src: _Source, issues: _Issues, parsed: _Parsed) -> Table:
    columns: dict[str, np.ndarray] = {}
    eids = _ids(src, "episode_id", issues, unique=True)
    columns["episode_id"] = eids.values
    parsed.episode_ids = frozenset(eids.uniques)
    pid = _ids(src, "patient_id", issues, unique=False)
    columns["patient_id"] = pid.values
    _known(src, pid, parsed.patient_ids, "patient_id", "patient", issues)
    index_date, index_bad = _date_column(src, "index_date", issues, required=True)
    columns["index_date"] = index_date
    if "dose_mg" in src:
        columns["dose_mg"] = _number_column(
            src, "dose_mg", issues, low=0, what="a dose in mg (>= 0)"
        )
    age = (
        _number_column(src, "age_years", issues, low=0, high=120, what="an age in years 0-120")
        if "age_years" in src
        else np.full(src.n, np.nan)
    )
    no_age = np.isnan(age)
    if parsed.births is not None and no_age.any():
        nat = np.datetime64("NaT", "ns")
        by_code = np.array([parsed.births.get(u, nat) for u in pid.uniques] + [nat], dtype=cols.NS)
        birth = by_code[pid.codes]
        span = index_date - birth
        derived = np.where(
            np.isnat(span),
            np.nan,
            span.astype("timedelta64[s]").astype(np.int64) / _SECONDS_PER_YEAR,
        )
        negative = (derived < 0) & ~index_bad & no_age
        issues.rows(
            src,
            negative,
            "index_date",
            lambda p: (
                f"index_date {pd.Timestamp(index_date[p]).date()} is before the patient's "
                f"birth_date {pd.Timestamp(birth[p]).date()}"
            ),
        )
        age = np.where(no_age, derived, age)
    columns["age_years"] = age.astype(np.float64)
    return _assemble(src, columns)


def _labs(src: _Source, issues: _Issues, parsed: _Parsed) -> Table:
    pid = _ids(src, "patient_id", issues, unique=False)
    _known(src, pid, parsed.patient_ids, "patient_id", "patient", issues, warning=True)
    time, _ = _date_column(src, "time", issues, required=True)
    raw_value = src.columns["value"]
    value, value_missing, value_bad = cols.numbers(raw_value)
    issues.rows(src, value_bad, "value", lambda p: f"non-numeric value {_show(raw_value, p)}")
    issues.rows(src, value_missing, "value", lambda _: "missing value")

    test = cols.texts(src.columns["test"])
    tcodes, test_text = test.codes, test.uniques
    analytes = [_canonical_test(t) for t in test_text]
    issues.rows(src, test.missing, "test", lambda _: "missing test code")
    unit = cols.texts(src.columns["unit"])
    ucodes, unit_text = unit.codes, unit.uniques

    known = np.array([a is not None for a in analytes] + [False])[tcodes]
    # Factors only for the (test, unit) pairs that occur: linear in the rows, however many
    # distinct codes and units there are. Code -1 (missing) maps to the trailing sentinel.
    nt, nu = len(test_text) + 1, len(unit_text) + 1
    pair_key = tcodes.astype(np.int64)
    pair_key %= nt
    pair_key *= nu
    pair_key += ucodes % nu
    pair_uniq, pcodes = _pairs(pair_key, nt * nu)
    pair_key = None
    pair_t, pair_u = np.divmod(pair_uniq, nu)
    analyte_ext, unit_ext = [*analytes, None], [*unit_text, None]
    pair_factor = units.pair_factors(
        [analyte_ext[t] for t in pair_t.tolist()], [unit_ext[u] for u in pair_u.tolist()]
    )
    factor = pair_factor[pcodes]
    no_unit = known & unit.missing
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
    converted = value * factor
    limits = np.array(
        [units.ANALYTES[a].limit if a is not None else np.inf for a in analytes] + [np.inf]
    )[tcodes]
    checkable = known & ~np.isnan(converted)
    negative = checkable & (converted < 0)
    impossible = checkable & (converted > limits)

    def _describe_value(p: int) -> str:
        analyte = analytes[tcodes[p]]
        canonical = units.CANONICAL_UNITS[analyte]
        given = f"{value[p]:g} {unit_text[ucodes[p]]}"
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

    if parsed.improbable:  # `ctit validate` and the HTTP answers' improbable-value warnings
        ranges = [units.IMPROBABLE.get(a, (-np.inf, np.inf)) if a else None for a in analytes]
        low = np.array([r[0] if r else -np.inf for r in ranges] + [-np.inf])[tcodes]
        high = np.array([r[1] if r else np.inf for r in ranges] + [np.inf])[tcodes]
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
            code="improbable_value",
        )

    # Unknown tests are kept under their own code and unit, with one warning per code.
    unknown_tests: dict[str, int] = {}
    if None in analytes:
        counts = np.bincount(tcodes + 1, minlength=len(test_text) + 1)[1:]
        firsts = _first_positions(tcodes, len(test_text))
        for i, (code, analyte) in enumerate(zip(test_text, analytes, strict=True)):
            if analyte is None and counts[i]:
                unknown_tests[code] = int(counts[i])
                issues.add(
                    "labs",
                    f"test {code!r} is not a known analyte: {int(counts[i])} rows kept under "
                    "their own code, units as given",
                    column="test",
                    line=int(src.lines[firsts[i]]),
                    warning=True,
                )
    parsed.extra["unknown_tests"] = unknown_tests

    canonical_unit = [units.CANONICAL_UNITS[a] if a is not None else None for a in analytes]
    converts = ~np.isnan(pair_factor) & (pair_t < len(test_text))
    converts &= np.array([a is not None for a in analyte_ext])[pair_t]
    pair_rows = np.bincount(pcodes, minlength=len(pair_uniq))
    for p in np.flatnonzero(converts & (pair_rows > 0)):  # in (test, unit) order: pairs sorted
        t, u = int(pair_t[p]), int(pair_u[p])
        if unit_text[u] != canonical_unit[t]:
            key = (analytes[t], unit_text[u])
            parsed.conversions[key] = parsed.conversions.get(key, 0) + int(pair_rows[p])

    test_out = cols.lookup(
        [*(a if a is not None else t for a, t in zip(analytes, test_text, strict=True)), None],
        tcodes,
    )
    # A known analyte's unit is its canonical one; another test keeps the unit as given.
    unit_code = np.where(known, tcodes, ucodes + nt)
    unit_out = cols.lookup([*canonical_unit, None, *unit_text, None], unit_code)
    # Large tables: let each temporary go before the sort copies the columns.
    unit_code = factor = limits = known = checkable = negative = impossible = pcodes = None
    order = _patient_time_order(pid, time)
    columns = {
        "patient_id": pid.values,
        "time": time,
        "test": test_out,
        "value": converted,
        "unit": unit_out,
    }
    pid = time = test_out = converted = unit_out = value = test = unit = tcodes = ucodes = None
    return _assemble(src, columns, order)


_canonical_test = functools.lru_cache(maxsize=65536)(units.canonical_test)


def _pairs(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, each row's position among them), as `np.unique(key,
    return_inverse=True)`; through a table of all `size` keys when that is not much larger than
    the rows (linear time), else by sorting (memory linear in the rows however large `size`)."""
    if size > 4 * len(key) + 4096:
        distinct, inverse = np.unique(key, return_inverse=True)
        return distinct, inverse.reshape(-1)
    present = np.zeros(size, dtype=bool)
    present[key] = True
    distinct = np.flatnonzero(present)
    position = np.zeros(size, dtype=np.int64)
    position[distinct] = np.arange(len(distinct))
    return distinct, position[key]


def _first_positions(codes: np.ndarray, n_uniques: int) -> np.ndarray:
    """Position of the first row of each code (codes are numbered by first appearance)."""
    first = np.zeros(n_uniques, dtype=np.int64)
    present = np.flatnonzero(codes >= 0)[::-1]
    first[codes[present]] = present
    return first


def _patient_time_order(pid: Texts, time: np.ndarray) -> np.ndarray | None:
    """Row order sorting by (patient_id, time), stable; None when already sorted."""
    if len(time) < 2:
        return None
    rank = np.empty(len(pid.uniques) + 1, dtype=np.int64)
    if len(pid.uniques) > 1:
        rank[:-1] = np.argsort(np.argsort(np.array(pid.uniques, dtype=str), kind="stable"))
    else:  # one patient (a request): nothing to rank
        rank[:-1] = 0
    rank[-1] = len(pid.uniques)
    key1 = rank[pid.codes]
    key2 = time.view(np.int64)  # NaT is the smallest int64
    d1 = np.diff(key1)
    if (d1 >= 0).all() and (np.diff(key2)[d1 == 0] >= 0).all():
        return None
    valid = ~np.isnat(time)
    seconds, remainder = np.divmod(key2, 10**9)
    if valid.any() and not np.count_nonzero((remainder != 0) & valid):
        # Whole-second times (the usual case): one int64 key and numpy's radix sort. In place:
        # a large table's temporaries cost memory and, on first touch, time.
        remainder = None
        low = seconds[valid].min()
        seconds -= low - 1
        seconds[~valid] = 0
        if seconds.max() < 2**34 and len(rank) < 2**28:
            key1 *= 2**34
            key1 += seconds
            return np.argsort(key1, kind="stable")
    return np.lexsort((key2, key1))


def _regimens(src: _Source, issues: _Issues, parsed: _Parsed) -> Table:
    columns: dict[str, np.ndarray] = {}
    pid = _ids(src, "patient_id", issues, unique=False)
    columns["patient_id"] = pid.values
    _known(src, pid, parsed.patient_ids, "patient_id", "patient", issues, warning=True)
    start, start_bad = _date_column(src, "start_date", issues, required=True)
    columns["start_date"] = start
    if "end_date" in src:
        end, end_bad = _date_column(src, "end_date", issues, required=False)
        before = (end < start) & ~start_bad & ~end_bad
        issues.rows(
            src,
            before,
            "end_date",
            lambda p: (
                f"end_date {pd.Timestamp(end[p]).date()} is before start_date "
                f"{pd.Timestamp(start[p]).date()}"
            ),
        )
    else:
        end = np.full(src.n, np.datetime64("NaT", "ns"))
    columns["end_date"] = end
    columns["drugs"], columns["classes"] = _drug_columns(src, issues, parsed)
    columns["regimen"] = (
        cols.texts(src.columns["regimen"]).values
        if "regimen" in src
        else np.full(src.n, None, dtype=object)
    )
    for name in ("line", "cycle"):
        columns[name] = (
            _number_column(src, name, issues, low=0, what=f"a {name} number (>= 0)")
            if name in src
            else np.full(src.n, np.nan)
        )
    return _assemble(src, columns)


def _drug_columns(src: _Source, issues: _Issues, parsed: _Parsed) -> tuple[np.ndarray, np.ndarray]:
    raw = src.columns["drugs"]
    if isinstance(raw, np.ndarray) and raw.dtype == object:
        # A request gives a list of names; a table, names separated by ';'.
        listed = [";".join(map(str, v)) if isinstance(v, list | tuple) else v for v in raw]
        raw = cols.array_of(listed)
    codes, uniques = cols.factorize(raw)
    names: list[str | None] = []
    classes: list[str | None] = []
    unknown: dict[str, int] = {}
    for i, text in enumerate(uniques):
        generic_names, drug_classes, not_known = _drug_list(str(text))
        names.append(generic_names)
        classes.append(drug_classes)
        for g in not_known:
            unknown.setdefault(g, i)
    name_arr = np.array([*names, None], dtype=object)
    empty = np.array([n is None for n in names] + [True])[codes]
    issues.rows(src, empty, "drugs", lambda _: "no drug given (generic names separated by ';')")
    if unknown:
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
                value=drug,
                code="unknown_drug",
            )
    parsed.extra["unknown_drugs"] = sorted(unknown)
    return name_arr[codes], np.array([*classes, None], dtype=object)[codes]


@functools.lru_cache(maxsize=4096)
def _drug_list(text: str) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(generic names joined by ';', sorted classes joined by ';', unknown names) of one drug
    list as written; None, None when it names no drug. Cached: regimens repeat a few lists."""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    generics = list(dict.fromkeys(drugs.normalise_drug(p) for p in parts))
    if not generics:
        return None, None, ()
    classes = sorted({c for g in generics for c in drugs.classes_of(g)})
    return (
        ";".join(generics),
        ";".join(classes),
        tuple(g for g in generics if not drugs.is_known(g)),
    )


def _outcomes(src: _Source, issues: _Issues, parsed: _Parsed) -> Table:
    columns: dict[str, np.ndarray] = {}
    eid = _ids(src, "episode_id", issues, unique=True)
    columns["episode_id"] = eid.values
    if parsed.episode_ids is not None:
        inside = np.array([u in parsed.episode_ids for u in eid.uniques] + [True], dtype=bool)
        unknown = ~inside[eid.codes]
        issues.rows(
            src, unknown, "episode_id", lambda p: f"outcome for unknown episode {eid.values[p]!r}"
        )
    raw = src.columns["response"]
    values, missing, bad = cols.numbers(raw)
    not01 = bad | missing | ~np.isin(values, (0.0, 1.0))
    issues.rows(src, not01, "response", lambda p: f"response must be 0 or 1, got {_show(raw, p)}")
    columns["response"] = pd.array(np.where(not01, np.nan, values), dtype="Int64")
    return _assemble(src, columns)


def _transfusions(src: _Source, issues: _Issues, parsed: _Parsed) -> Table:
    """Transfusions: patient_id, time, product (platelets | red_cells), optional units (> 0)."""
    columns: dict[str, np.ndarray] = {}
    pid = _ids(src, "patient_id", issues, unique=False)
    columns["patient_id"] = pid.values
    _known(src, pid, parsed.patient_ids, "patient_id", "patient", issues)
    columns["time"], _ = _date_column(src, "time", issues, required=True)
    raw = src.columns["product"]
    product = cols.texts(raw)
    lowered = [u.lower() for u in product.uniques]
    accepted = np.array([u in _PRODUCTS for u in lowered] + [True], dtype=bool)
    bad = ~accepted[product.codes]
    issues.rows(src, product.missing, "product", lambda _: "missing product")
    issues.rows(
        src,
        bad,
        "product",
        lambda p: f"product must be one of {', '.join(TRANSFUSION_PRODUCTS)}, got {_show(raw, p)}",
    )
    kept = [u if u in _PRODUCTS else None for u in lowered]
    columns["product"] = np.array([*kept, None], dtype=object)[product.codes]
    columns["units"] = (
        _number_column(src, "units", issues, low=1e-9, what="a number of units (> 0)")
        if "units" in src
        else np.full(src.n, np.nan)
    )
    return _assemble(src, columns)


# ---------------------------------------------------------------------------------------------
# Summary


def _summary_of(
    frames: Mapping[str, pd.DataFrame | None],
    conversions: Mapping[tuple[str, str], int],
    sources: Mapping[str, _Source],
) -> dict[str, object]:
    tables = {name: {"file": src.origin, "rows": src.n} for name, src in sources.items()} or {
        name: {"rows": len(f)} for name, f in frames.items() if f is not None
    }
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
