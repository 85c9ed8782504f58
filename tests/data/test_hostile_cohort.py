"""Careless cohorts (issue 16): dates outside 1900-2200, many distinct codes, improbable values."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from data.cohort import cohort_from_tables, validate_cohort
from data.issues import CohortError


def _write(tables: dict[str, pd.DataFrame], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(directory / f"{name}.csv", index=False)
    return directory


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("episodes", "index_date", "9999-12-31"),
        ("episodes", "index_date", "1899-12-31"),
        ("patients", "birth_date", "0001-01-01"),
        ("labs", "time", "2263-01-01"),
        ("labs", "time", "1677-09-25T08:00:00"),
        ("regimens", "start_date", "2201-01-01"),
    ],
)
def test_dates_outside_1900_to_2200_are_errors_naming_column_and_value(
    cohort_tables: dict[str, pd.DataFrame], tmp_path: Path, table: str, column: str, value: str
) -> None:
    cohort_tables[table].loc[0, column] = value
    report = validate_cohort(_write(cohort_tables, tmp_path / "c"))
    assert not report.valid
    found = [e for e in report.errors if e.table == table and e.column == column]
    assert found, report.errors
    assert found[0].line == 2
    assert value[:10] in found[0].message and "1900-01-01 to 2200-12-31" in found[0].message
    # the in-memory path (one patient over HTTP) says the same
    rows = {name: frame.to_dict("records") for name, frame in cohort_tables.items()}
    with pytest.raises(CohortError) as caught:
        cohort_from_tables(rows)
    assert any(e.column == column and value[:10] in e.message for e in caught.value.errors)


def test_the_first_and_last_accepted_days(cohort_tables: dict[str, pd.DataFrame]) -> None:
    cohort_tables["patients"].loc[0, "birth_date"] = "1900-01-01"
    rows = {name: frame.to_dict("records") for name, frame in cohort_tables.items()}
    cohort = cohort_from_tables(rows)
    assert str(cohort.patients["birth_date"].min().date()) == "1900-01-01"


def test_many_distinct_codes_and_units_take_memory_linear_in_rows(
    cohort_tables: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    n = 4000
    garbage = pd.DataFrame(
        {
            "patient_id": "P-a1",
            "time": "2024-03-01",
            "test": [f"X{i:05d}" for i in range(n)],
            "value": 1.0,
            "unit": [f"u{i:05d}" for i in range(n)],
        }
    )
    cohort_tables["labs"] = pd.concat([cohort_tables["labs"], garbage], ignore_index=True)
    directory = _write(cohort_tables, tmp_path / "c")
    tracemalloc.start()
    try:
        report = validate_cohort(directory)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.valid, report.errors[:3]
    # a dense (tests x units) float64 matrix alone would be 4001^2 x 8 bytes = 128 MB
    assert peak < 40 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


def test_validate_warns_about_improbable_values_as_the_api_does(
    cohort_tables: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    labs = cohort_tables["labs"]
    labs.loc[0, ["test", "value", "unit"]] = ["PLT", 4200, "10*3/uL"]
    labs.loc[1, ["test", "value", "unit"]] = ["ALB", 6.1, "g/dL"]  # 61 g/L
    report = validate_cohort(_write(cohort_tables, tmp_path / "c"))
    assert report.valid
    improbable = [w for w in report.warnings if "improbable" in w.message]
    assert [(w.line, w.column) for w in improbable] == [(2, "value"), (3, "value")]
    assert "PLT value 4200 10*3/uL" in improbable[0].message
    assert "0-1000" in improbable[0].message
    assert "= 61 g/L" in improbable[1].message and "15-55" in improbable[1].message
