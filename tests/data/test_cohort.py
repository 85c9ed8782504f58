"""Cohort loading and validation: the fixture is accepted, every kind of error is reported with
its table, line and column, CSV and Parquet alike, and nothing in the input changes."""

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from data.cohort import (
    MAX_ISSUES_PER_CHECK,
    Cohort,
    cohort_from_tables,
    load_cohort,
    validate_cohort,
)
from data.issues import CohortError, Issue


def _write(tables: dict[str, pd.DataFrame], directory: Path, fmt: str = "csv") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if fmt == "csv":
            frame.to_csv(directory / f"{name}.csv", index=False)
        else:
            frame.to_parquet(directory / f"{name}.parquet", index=False)
    return directory


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _where(issues: list[Issue]) -> set[tuple[str, int | None, str | None]]:
    return {(i.table, i.line, i.column) for i in issues}


def _errors(tables: dict[str, pd.DataFrame], tmp_path: Path, fmt: str = "csv") -> list[Issue]:
    report = validate_cohort(_write(tables, tmp_path / f"cohort_{fmt}", fmt))
    assert not report.valid
    return report.errors


# --- the fixture is accepted and normalised --------------------------------------------------


@pytest.mark.parametrize("source", ["csv", "parquet", "memory"])
def test_fixture_is_valid_and_normalised(cohort_tables, tmp_path: Path, source: str) -> None:
    if source == "memory":
        cohort = cohort_from_tables(cohort_tables)
    else:
        cohort = load_cohort(_write(cohort_tables, tmp_path / source, source))
    assert isinstance(cohort, Cohort)
    labs = cohort.labs
    assert list(labs.columns[:5]) == ["patient_id", "time", "test", "value", "unit"]
    assert labs["time"].dtype == "datetime64[ns]"
    assert labs["value"].dtype == "float64"
    # Sorted by patient, then time.
    keys = list(zip(labs["patient_id"], labs["time"], strict=True))
    assert keys == sorted(keys)

    def value(patient: str, time: str, test: str) -> tuple[float, str]:
        row = labs[(labs.patient_id == patient) & (labs.time == time) & (labs.test == test)]
        assert len(row) == 1
        return float(row["value"].iloc[0]), row["unit"].iloc[0]

    assert value("P-a1", "2024-03-09 08:00", "PLT") == (pytest.approx(42.0), "10*9/L")
    assert value("P-a1", "2024-03-09 08:00", "HGB") == (pytest.approx(105.0), "g/L")
    assert value("P-a1", "2024-03-09 08:00", "CREA") == (pytest.approx(70.736), "umol/L")
    assert value("P-a1", "2024-03-09 08:00", "ALB") == (38.0, "g/L")
    assert value("P-a1", "2024-02-18", "PLT") == (180.0, "10*9/L")
    assert value("P-a1", "2024-03-15", "PLT") == (110.0, "10*9/L")
    assert value("P-b2", "2024-06-01", "ALT") == (35.0, "U/L")
    assert value("P-b2", "2024-06-01", "TBIL") == (pytest.approx(17.104), "umol/L")
    assert value("P-b2", "2024-06-01", "FERRITIN") == (450.0, "ng/mL")  # kept as given
    assert value("P-c3", "2024-07-12", "WBC") == (3.1, "10*9/L")
    assert value("P-c3", "2024-07-12", "ANC") == (1.6, "10*9/L")
    assert set(labs["test"]) == {
        "PLT",
        "HGB",
        "CREA",
        "ALB",
        "ALT",
        "TBIL",
        "FERRITIN",
        "WBC",
        "ANC",
    }
    assert dict(cohort.conversions) == {
        ("PLT", "10*3/uL"): 1,
        ("PLT", "/uL"): 1,
        ("PLT", "10^9/L"): 1,
        ("PLT", "K/uL"): 1,
        ("HGB", "g/dL"): 1,
        ("CREA", "mg/dL"): 1,
        ("TBIL", "mg/dL"): 1,
        ("WBC", "10*3/uL"): 1,
        ("ANC", "10*3/uL"): 1,
    }

    patients = cohort.patients.set_index("patient_id")
    assert patients["bone_mets"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert patients["liver_mets"].tolist()[:3] == [0.0, 1.0, 0.0]
    assert np.isnan(patients.loc["P-d4", "liver_mets"])
    assert patients["ecog"].tolist()[:3] == [1.0, 0.0, 2.0]
    assert patients["birth_date"].dtype == "datetime64[ns]"
    assert patients["subtype"].tolist() == ["HER2+", "HR+/HER2-", "TNBC", "HR+/HER2-"]

    episodes = cohort.episodes.set_index("episode_id")
    assert episodes["index_date"].dtype == "datetime64[ns]"
    # Age from birth_date: 1973-05-02 to 2024-03-10 is 18,575 days.
    assert episodes.loc["E-1", "age_years"] == pytest.approx(18575 / 365.25)
    assert np.isnan(episodes.loc["E-4", "dose_mg"])

    regimens = cohort.regimens
    assert regimens["drugs"].tolist() == [
        "docetaxel;trastuzumab;pertuzumab",
        "trastuzumab emtansine",
        "trastuzumab deruxtecan",
        "palbociclib;letrozole",
        "gemcitabine;carboplatin",
        "gemcitabine;cisplatin",
        "capecitabine",
    ]
    assert regimens["classes"].tolist() == [
        "anti_her2;taxane",
        "adc;anti_her2",
        "adc;anti_her2",
        "cdk46;endocrine",
        "gemcitabine;platinum",
        "gemcitabine;platinum",
        "antimetabolite",
    ]
    assert pd.isna(regimens["end_date"].iloc[1])
    assert np.isnan(regimens["line"].iloc[6])
    assert cohort.outcomes is None
    unknown_test = [w for w in cohort.warnings if w.column == "test"]
    assert len(unknown_test) == 1 and "FERRITIN" in unknown_test[0].message
    expected_line = {"csv": 18, "parquet": 16, "memory": 16}[source]
    assert unknown_test[0].line == expected_line


def test_validate_summary_of_the_fixture(cohort_dir: Path) -> None:
    report = validate_cohort(cohort_dir)
    assert report.valid and report.errors == []
    summary = report.summary
    assert summary["tables"]["labs"] == {"file": "labs.csv", "rows": 25}
    assert (summary["patients"], summary["episodes"], summary["lab_rows"]) == (4, 5, 25)
    assert summary["analytes"]["PLT"] == 17
    assert summary["unknown_tests"] == {"FERRITIN": 1}
    conversion = next(c for c in summary["conversions"] if c["from_unit"] == "/uL")
    assert conversion == {
        "analyte": "PLT",
        "from_unit": "/uL",
        "to_unit": "10*9/L",
        "factor": 0.001,
        "rows": 1,
    }
    as_json = json.loads(json.dumps(report.as_dict()))
    assert set(as_json) == {"valid", "errors", "warnings", "summary"}


def test_input_files_and_frames_are_unchanged(cohort_tables, tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        directory = _write(cohort_tables, tmp_path / fmt, fmt)
        before = _digest(directory)
        load_cohort(directory)
        validate_cohort(directory)
        assert _digest(directory) == before
    copies = {name: frame.copy(deep=True) for name, frame in cohort_tables.items()}
    cohort = cohort_from_tables(cohort_tables)
    for name, frame in cohort_tables.items():
        pd.testing.assert_frame_equal(frame, copies[name])
    assert cohort.labs is not cohort_tables["labs"]


def test_records_as_lists_of_dicts_and_absent_optional_tables() -> None:
    cohort = cohort_from_tables(
        {
            "patients": [{"patient_id": "P1", "bone_mets": True, "ecog": 1}],
            "episodes": [{"episode_id": "E1", "patient_id": "P1", "index_date": "2025-03-10"}],
            "labs": [
                {
                    "patient_id": "P1",
                    "time": "2025-03-09T08:00:00",
                    "test": "777-3",
                    "value": 42,
                    "unit": "10*3/uL",
                }
            ],
            "regimens": [
                {
                    "patient_id": "P1",
                    "start_date": "2025-03-08",
                    "drugs": ["Gemcitabine", "carboplatin"],
                }
            ],
        }
    )
    assert cohort.patients["bone_mets"].tolist() == [1.0]
    assert cohort.regimens["drugs"].tolist() == ["gemcitabine;carboplatin"]
    assert cohort.regimens["classes"].tolist() == ["gemcitabine;platinum"]
    minimal = cohort_from_tables(
        {
            "patients": [{"patient_id": 7}],
            "episodes": [{"episode_id": 1, "patient_id": 7, "index_date": "2025-03-10"}],
        }
    )
    assert minimal.episodes["patient_id"].tolist() == ["7"]
    assert len(minimal.labs) == 0 and len(minimal.regimens) == 0
    assert list(minimal.labs.columns[:5]) == ["patient_id", "time", "test", "value", "unit"]


def test_extra_columns_are_kept(cohort_tables) -> None:
    cohort_tables["labs"]["lab_site"] = "central"
    cohort_tables["patients"]["bmi"] = [22.0, 25.5, None, 30.1]
    cohort = cohort_from_tables(cohort_tables)
    assert set(cohort.labs["lab_site"]) == {"central"}
    assert cohort.patients["bmi"].iloc[1] == 25.5


def test_timezone_offsets_keep_local_time(cohort_tables) -> None:
    labs = cohort_tables["labs"]
    labs.loc[2, "time"] = "2024-03-09T08:00:00+08:00"
    cohort = cohort_from_tables(cohort_tables)
    assert pd.Timestamp("2024-03-09 08:00") in set(cohort.labs["time"])
    assert any("UTC offset" in w.message for w in cohort.warnings)


# --- every kind of error, with its exact table, line and column ------------------------------


def test_missing_table_and_missing_column(cohort_tables, tmp_path: Path) -> None:
    del cohort_tables["regimens"]
    cohort_tables["labs"] = cohort_tables["labs"].drop(columns="unit")
    errors = _errors(cohort_tables, tmp_path)
    assert ("regimens", None, None) in _where(errors)
    assert ("labs", None, "unit") in _where(errors)
    assert any("missing table 'regimens'" in e.message for e in errors)


def test_wrong_case_column_gets_a_hint(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["patients"] = cohort_tables["patients"].rename(
        columns={"patient_id": "Patient_ID"}
    )
    errors = _errors(cohort_tables, tmp_path)
    message = next(e.message for e in errors if e.column == "patient_id")
    assert "found 'Patient_ID'" in message


def test_duplicate_ids(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["patients"].loc[2, "patient_id"] = "P-a1"  # CSV line 4
    cohort_tables["episodes"].loc[4, "episode_id"] = "E-2"  # CSV line 6
    errors = _errors(cohort_tables, tmp_path)
    duplicate = next(e for e in errors if e.table == "patients")
    assert (duplicate.line, duplicate.column) == (4, "patient_id")
    assert duplicate.message == "duplicate patient_id 'P-a1' (first on line 2)"
    assert ("episodes", 6, "episode_id") in _where(errors)


def test_unparseable_date_names_the_value(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["episodes"].loc[1, "index_date"] = "2024-13-45"
    cohort_tables["labs"].loc[3, "time"] = "yesterday"
    errors = _errors(cohort_tables, tmp_path)
    assert ("episodes", 3, "index_date") in _where(errors)
    assert ("labs", 5, "time") in _where(errors)
    message = next(e.message for e in errors if e.table == "episodes")
    assert "'2024-13-45'" in message


def test_missing_required_values(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["episodes"].loc[0, "index_date"] = None
    cohort_tables["labs"].loc[6, "value"] = None
    errors = _errors(cohort_tables, tmp_path)
    assert Issue("episodes", 2, "index_date", "missing index_date") in errors
    assert Issue("labs", 8, "value", "missing value") in errors


def test_non_numeric_values(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["labs"]["value"] = cohort_tables["labs"]["value"].astype(object)
    cohort_tables["labs"].loc[4, "value"] = "abc"
    cohort_tables["episodes"]["dose_mg"] = cohort_tables["episodes"]["dose_mg"].astype(object)
    cohort_tables["episodes"].loc[0, "dose_mg"] = "7,5"
    errors = _errors(cohort_tables, tmp_path)
    assert Issue("labs", 6, "value", "non-numeric value 'abc'") in errors
    assert Issue("episodes", 2, "dose_mg", "non-numeric value '7,5'") in errors


def test_negative_and_impossible_lab_values(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["labs"].loc[1, "value"] = -5  # PLT 10^9/L, line 3
    cohort_tables["labs"].loc[2, "value"] = 6_000_000  # /uL = 6000 x10^9/L, line 4
    cohort_tables["labs"].loc[16, "value"] = -3  # FERRITIN: unknown test, not checked
    errors = _errors(cohort_tables, tmp_path)
    assert _where(errors) == {("labs", 3, "value"), ("labs", 4, "value")}
    messages = {e.line: e.message for e in errors}
    assert messages[3] == "negative PLT value -5 10^9/L"
    assert "6e+06 /uL = 6000 10*9/L" in messages[4]
    assert "above 5000" in messages[4]


def test_plt_at_the_physiological_limit_is_accepted(cohort_tables) -> None:
    cohort_tables["labs"].loc[1, "value"] = 5000
    cohort_tables["labs"].loc[12, "value"] = 0
    cohort_from_tables(cohort_tables)


def test_unknown_unit_for_a_known_analyte_lists_the_accepted_ones(
    cohort_tables, tmp_path: Path
) -> None:
    cohort_tables["labs"].loc[3, "unit"] = "mmol/L"  # HGB, line 5
    cohort_tables["labs"].loc[5, "unit"] = None  # ALB, line 7
    cohort_tables["labs"].loc[16, "unit"] = "weird"  # FERRITIN: kept as given
    errors = _errors(cohort_tables, tmp_path)
    assert Issue("labs", 5, "unit", "unknown unit 'mmol/L' for HGB (accepted: g/L, g/dL)") in errors
    assert Issue("labs", 7, "unit", "missing unit for ALB (accepted: g/L, g/dL)") in errors
    assert len(errors) == 2


def test_references_to_unknown_patients_and_episodes(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["episodes"].loc[2, "patient_id"] = "P-zz"
    cohort_tables["outcomes"] = pd.DataFrame({"episode_id": ["E-1", "E-9"], "response": [1, 0]})
    errors = _errors(cohort_tables, tmp_path)
    assert Issue("episodes", 4, "patient_id", "unknown patient 'P-zz' (not in patients)") in errors
    assert Issue("outcomes", 3, "episode_id", "outcome for unknown episode 'E-9'") in errors


def test_labs_and_regimens_of_unknown_patients_are_warnings(cohort_tables) -> None:
    labs = cohort_tables["labs"]
    labs.loc[len(labs)] = ["P-x", "2024-01-01", "PLT", 100, "10*9/L"]
    cohort = cohort_from_tables(cohort_tables)
    assert any(w.table == "labs" and w.column == "patient_id" for w in cohort.warnings)


def test_response_bad_boolean_and_ecog(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["outcomes"] = pd.DataFrame(
        {"episode_id": ["E-1", "E-2", "E-3"], "response": ["1", "2", "yes"]}
    )
    cohort_tables["patients"].loc[1, "bone_mets"] = "maybe"
    cohort_tables["patients"].loc[0, "ecog"] = 7
    cohort_tables["patients"].loc[2, "ecog"] = 1.5
    errors = _errors(cohort_tables, tmp_path)
    assert Issue("outcomes", 3, "response", "response must be 0 or 1, got '2'") in errors
    assert Issue("outcomes", 4, "response", "response must be 0 or 1, got 'yes'") in errors
    assert Issue("patients", 3, "bone_mets", "bad boolean 'maybe' (use true/false/1/0)") in errors
    assert Issue("patients", 2, "ecog", "ecog 7 is not an ECOG score 0-5") in errors
    assert Issue("patients", 4, "ecog", "ecog 1.5 is not an ECOG score 0-5") in errors


def test_regimen_problems_and_unknown_drugs(cohort_tables, tmp_path: Path) -> None:
    regimens = cohort_tables["regimens"]
    regimens.loc[0, "end_date"] = "2023-09-01"  # before its start, line 2
    regimens.loc[3, "drugs"] = None  # line 5
    regimens.loc[6, "drugs"] = "capecitabine;wonderdrug"  # warning, line 8
    errors = _errors(cohort_tables, tmp_path)
    assert ("regimens", 2, "end_date") in _where(errors)
    assert ("regimens", 5, "drugs") in _where(errors)
    warnings = validate_cohort(tmp_path / "cohort_csv").warnings
    unknown = next(w for w in warnings if "wonderdrug" in w.message)
    assert (unknown.table, unknown.line, unknown.column) == ("regimens", 8, "drugs")


def test_comma_separated_drugs_get_a_hint(cohort_tables) -> None:
    cohort_tables["regimens"].loc[6, "drugs"] = "capecitabine, docetaxel"
    cohort = cohort_from_tables(cohort_tables)
    assert any("separate drugs with ';'" in w.message for w in cohort.warnings)


def test_every_problem_is_reported_not_only_the_first(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["patients"].loc[3, "patient_id"] = "P-a1"
    cohort_tables["episodes"].loc[0, "index_date"] = "not a date"
    cohort_tables["labs"].loc[0, "unit"] = "furlongs"
    cohort_tables["regimens"].loc[0, "start_date"] = "2024-02-30"
    errors = _errors(cohort_tables, tmp_path)
    assert {e.table for e in errors} >= {"patients", "episodes", "labs", "regimens"}


def test_parquet_lines_are_row_indices(cohort_tables, tmp_path: Path) -> None:
    # Numbers stored as text in Parquet are parsed like CSV fields.
    cohort_tables["labs"]["value"] = cohort_tables["labs"]["value"].astype(str)
    cohort_tables["labs"].loc[4, "value"] = "abc"
    cohort_tables["episodes"].loc[1, "patient_id"] = "P-zz"
    errors = _errors(cohort_tables, tmp_path, "parquet")
    assert _where(errors) == {("labs", 4, "value"), ("episodes", 1, "patient_id")}


def test_in_memory_errors_raise_with_row_indices(cohort_tables) -> None:
    cohort_tables["labs"].loc[3, "unit"] = "mmol/L"
    with pytest.raises(CohortError) as info:
        cohort_from_tables(cohort_tables)
    assert _where(info.value.errors) == {("labs", 3, "unit")}
    assert "labs:3: unit: unknown unit 'mmol/L' for HGB" in str(info.value)
    with pytest.raises(CohortError, match="missing table 'episodes'"):
        cohort_from_tables({"patients": [{"patient_id": "P1"}]})


def test_load_cohort_raises_with_every_error(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["labs"].loc[0, "unit"] = "furlongs"
    cohort_tables["labs"].loc[1, "unit"] = "furlongs"
    with pytest.raises(CohortError) as info:
        load_cohort(_write(cohort_tables, tmp_path / "c"))
    assert _where(info.value.errors) == {("labs", 2, "unit"), ("labs", 3, "unit")}
    assert any("FERRITIN" in w.message for w in info.value.warnings)


def test_many_identical_problems_are_capped(cohort_tables) -> None:
    n = MAX_ISSUES_PER_CHECK + 10
    cohort_tables["labs"] = pd.DataFrame(
        {
            "patient_id": ["P-a1"] * n,
            "time": ["2024-01-01"] * n,
            "test": ["PLT"] * n,
            "value": [100.0] * n,
            "unit": ["bad"] * n,
        }
    )
    with pytest.raises(CohortError) as info:
        cohort_from_tables(cohort_tables)
    errors = info.value.errors
    assert len(errors) == MAX_ISSUES_PER_CHECK + 1
    assert errors[-1].line == MAX_ISSUES_PER_CHECK
    assert errors[-1].message.endswith("and 9 more rows with the same problem")


def test_blank_lines_keep_csv_line_numbers(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["labs"].loc[3, "unit"] = "mmol/L"  # line 5 without the blank line
    directory = _write(cohort_tables, tmp_path / "c")
    text = (directory / "labs.csv").read_text().splitlines()
    (directory / "labs.csv").write_text("\n".join(text[:2] + [""] + text[2:]) + "\n")
    errors = validate_cohort(directory).errors
    assert _where(errors) == {("labs", 6, "unit")}


# --- unreadable files and directories ----------------------------------------------------------


def test_file_that_is_not_utf8(cohort_dir: Path) -> None:
    path = cohort_dir / "patients.csv"
    path.write_bytes(path.read_bytes() + "P-\xe9,F\n".encode("latin-1"))
    report = validate_cohort(cohort_dir)
    error = next(e for e in report.errors if e.table == "patients")
    assert "patients.csv is not UTF-8" in error.message
    assert "line 6" in error.message


def test_truncated_csv(cohort_dir: Path) -> None:
    path = cohort_dir / "labs.csv"
    path.write_text(path.read_text() + 'P-d4,2025-01-26,PLT,"12')
    errors = validate_cohort(cohort_dir).errors
    assert len(errors) == 1 and errors[0].table == "labs"
    assert "labs.csv cannot be parsed as CSV" in errors[0].message


def test_csv_with_too_many_fields(cohort_dir: Path) -> None:
    path = cohort_dir / "episodes.csv"
    path.write_text(path.read_text() + "E-9,P-a1,2024-01-01,5,extra,more\n")
    errors = validate_cohort(cohort_dir).errors
    assert (errors[0].table, errors[0].line) == ("episodes", 7)


def test_empty_csv(cohort_dir: Path) -> None:
    (cohort_dir / "regimens.csv").write_text("")
    errors = validate_cohort(cohort_dir).errors
    assert errors == [
        Issue(
            "regimens",
            None,
            None,
            "regimens.csv is empty (expected a header line with the column names)",
        )
    ]


def test_truncated_parquet(cohort_tables, tmp_path: Path) -> None:
    directory = _write(cohort_tables, tmp_path / "p", "parquet")
    path = directory / "labs.parquet"
    path.write_bytes(path.read_bytes()[:200])
    errors = validate_cohort(directory).errors
    assert len(errors) == 1
    assert errors[0].table == "labs"
    assert "labs.parquet is not a readable Parquet file" in errors[0].message


def test_missing_and_empty_directories(tmp_path: Path) -> None:
    report = validate_cohort(tmp_path / "nope")
    assert not report.valid
    assert "does not exist" in report.errors[0].message
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    report = validate_cohort(tmp_path / "empty")
    assert "holds no tables" in report.errors[0].message
    with pytest.raises(CohortError, match="does not exist"):
        load_cohort(tmp_path / "nope")


def test_table_given_twice_and_extra_files(cohort_tables, tmp_path: Path) -> None:
    directory = _write(cohort_tables, tmp_path / "c")
    cohort_tables["labs"].to_parquet(directory / "labs.parquet")
    (directory / "oracle.csv").write_text("episode_id,p\nE-1,0.5\n")
    report = validate_cohort(directory)
    assert any("given twice" in e.message for e in report.errors)
    assert any(w.table == "oracle" and "ignored" in w.message for w in report.warnings)


def test_outcomes_are_read(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["outcomes"] = pd.DataFrame({"episode_id": ["E-1", "E-3"], "response": [0, 1]})
    for fmt in ("csv", "parquet"):
        cohort = load_cohort(_write(cohort_tables, tmp_path / fmt, fmt))
        assert str(cohort.outcomes["response"].dtype) == "Int64"
        assert cohort.outcomes.set_index("episode_id")["response"].to_dict() == {"E-1": 0, "E-3": 1}


def test_both_csv_readers_give_the_same_cohort(cohort_dir: Path, tmp_path: Path) -> None:
    # A blank line sends a file to the exact (line-preserving) reader; the result is the same.
    fast = load_cohort(cohort_dir)
    for name in ("patients", "episodes", "labs", "regimens"):
        text = (cohort_dir / f"{name}.csv").read_text().splitlines()
        (cohort_dir / f"{name}.csv").write_text("\n".join(text[:2] + [""] + text[2:]) + "\n")
    exact = load_cohort(cohort_dir)
    for name in ("patients", "episodes", "labs", "regimens"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(exact, name))


def test_age_given_or_derived_and_checked(cohort_tables, tmp_path: Path) -> None:
    cohort_tables["episodes"]["age_years"] = [50.0, None, 38.0, 56.0, 130.0]
    cohort_tables["patients"].loc[3, "birth_date"] = "2026-01-01"  # after E-4's index date
    errors = _errors(cohort_tables, tmp_path)
    assert Issue("episodes", 6, "age_years", "age_years 130 is not an age in years 0-120") in errors
    assert len(errors) == 1  # E-4 has its age given, so its birth date is not used
    cohort_tables["episodes"].loc[3, "age_years"] = None
    cohort_tables["episodes"].loc[4, "age_years"] = 51.0
    errors = _errors(cohort_tables, tmp_path / "again")
    assert _where(errors) == {("episodes", 5, "index_date")}
    cohort_tables["patients"].loc[3, "birth_date"] = "1968-07-07"
    ages = cohort_from_tables(cohort_tables).episodes.set_index("episode_id")["age_years"]
    assert ages["E-1"] == 50.0  # given
    assert ages["E-2"] == pytest.approx(
        (pd.Timestamp("2024-06-01") - pd.Timestamp("1960-01-15")).days / 365.25
    )


def test_bad_transfusions_table_names_table_line_and_column(cohort_tables, tmp_path: Path) -> None:
    patient = str(cohort_tables["patients"]["patient_id"].iloc[0])
    cohort_tables["transfusions"] = pd.DataFrame(
        {
            "patient_id": [patient, patient, "NOBODY", patient, patient, None],
            "time": ["2024-03-01", "2024-03-02", "2024-03-03", "03/04/2024x", "2024-03-05",
                     "2024-03-06"],
            "product": ["platelets", "Red_Cells", "platelets", "platelets", "plasma", "platelets"],
            "units": [1, 2, 1, 1, 1, -1],
        }
    )  # fmt: skip
    for fmt in ("csv", "parquet"):
        errors = _errors(cohort_tables, tmp_path, fmt)
        offset = 2 if fmt == "csv" else 0  # CSV lines count the header; parquet rows from 0
        where = {(i.line, i.column) for i in errors if i.table == "transfusions"}
        assert (3 + offset - 1, "patient_id") in where  # unknown patient "NOBODY" (row 2)
        assert (3 + offset, "time") in where  # unparseable time (row 3)
        assert (4 + offset, "product") in where  # plasma (row 4)
        assert (5 + offset, "patient_id") in where  # missing patient (row 5)
        assert (5 + offset, "units") in where  # negative units (row 5)
        rows_ok = {offset + 0, offset + 1}  # platelets and Red_Cells (case-insensitive) pass
        assert not {w for w in where if w[0] in rows_ok}
        message = {(i.line, i.column): i.message for i in errors if i.table == "transfusions"}
        assert "plasma" in message[(4 + offset, "product")]
        assert "platelets" in message[(4 + offset, "product")]


def test_transfusions_table_is_optional_and_normalised(cohort_tables, tmp_path: Path) -> None:
    patient = str(cohort_tables["patients"]["patient_id"].iloc[0])
    assert load_cohort(_write(cohort_tables, tmp_path / "none")).transfusions is None
    cohort_tables["transfusions"] = pd.DataFrame(
        {"patient_id": [patient], "time": ["2024-03-01T10:30"], "product": [" Platelets "]}
    )
    cohort = load_cohort(_write(cohort_tables, tmp_path / "one"))
    row = cohort.transfusions.iloc[0]
    assert row["product"] == "platelets"
    assert row["time"] == pd.Timestamp("2024-03-01 10:30")
    assert np.isnan(row["units"])


# --- one patient's records (the HTTP path), with hand-checked values -------------------------

# examples/patient.json as of this test (the hand-checked values below refer to it).
RECORD: dict[str, Any] = {
    "patient": {
        "patient_id": "P1",
        "sex": "F",
        "birth_date": "1973-05-02",
        "race": "Asian",
        "ecog": 0,
        "subtype": "HR+/HER2-",
        "bone_mets": True,
        "liver_mets": False,
        "marrow_involvement": False,
        "splenomegaly": False,
        "prior_radiotherapy": False,
    },
    "episode": {"episode_id": "E1", "index_date": "2025-03-10", "dose_mg": 7.5},
    "labs": [
        {"time": "2025-02-17T08:00:00", "test": "777-3", "value": 186, "unit": "10*3/uL"},
        {"time": "2025-02-17T08:00:00", "test": "718-7", "value": 10.8, "unit": "g/dL"},
        {"time": "2025-02-17T08:00:00", "test": "6690-2", "value": 5.9, "unit": "10*3/uL"},
        {"time": "2025-02-17T08:00:00", "test": "751-8", "value": 3.9, "unit": "10*3/uL"},
        {"time": "2025-02-28T08:00:00", "test": "PLT", "value": 96, "unit": "10*9/L"},
        {"time": "2025-03-10T08:00:00", "test": "777-3", "value": 64, "unit": "10*3/uL"},
        {"time": "2025-03-10T08:00:00", "test": "718-7", "value": 10.4, "unit": "g/dL"},
        {"time": "2025-03-10T08:00:00", "test": "WBC", "value": 5.2, "unit": "10*9/L"},
        {"time": "2025-03-10T08:00:00", "test": "ANC", "value": 3.4, "unit": "10*9/L"},
        {"time": "2025-03-10T08:00:00", "test": "ALT", "value": 21, "unit": "U/L"},
        {"time": "2025-03-10T08:00:00", "test": "AST", "value": 24, "unit": "U/L"},
        {"time": "2025-03-10T08:00:00", "test": "TBIL", "value": 0.5, "unit": "mg/dL"},
        {"time": "2025-03-10T08:00:00", "test": "CREA", "value": 0.8, "unit": "mg/dL"},
        {"time": "2025-03-10T08:00:00", "test": "ALB", "value": 40, "unit": "g/L"},
    ],
    "regimens": [
        {
            "start_date": "2024-06-03",
            "end_date": "2024-10-20",
            "drugs": ["palbociclib", "letrozole"],
            "line": 1,
            "cycle": 6,
        },
        {
            "start_date": "2024-12-02",
            "end_date": "2024-12-22",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 1,
        },
        {
            "start_date": "2024-12-23",
            "end_date": "2025-01-12",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 2,
        },
        {
            "start_date": "2025-01-27",
            "end_date": "2025-02-16",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 3,
        },
        {
            "start_date": "2025-02-17",
            "end_date": "2025-03-09",
            "drugs": ["capecitabine"],
            "line": 2,
            "cycle": 4,
        },
    ],
}


def _record_tables() -> dict[str, list[dict[str, Any]]]:
    """RECORD as contract tables (as `serving.records` makes them, absent keys left out)."""
    record = copy.deepcopy(RECORD)
    pid = record["patient"]["patient_id"]
    episode = {"patient_id": pid, **record["episode"]}
    labs = [{"patient_id": pid, **lab} for lab in record["labs"]]
    regimens = [{"patient_id": pid, **r, "drugs": ";".join(r["drugs"])} for r in record["regimens"]]
    return {
        "patients": [record["patient"]],
        "episodes": [episode],
        "labs": labs,
        "regimens": regimens,
    }


def test_one_patient_record_is_normalised() -> None:
    tables = _record_tables()
    tables["regimens"].append(  # no end_date or cycle key: missing there
        {"patient_id": "P1", "start_date": "2025-03-10", "drugs": "capecitabine", "line": 2}
    )
    cohort = cohort_from_tables(tables)
    labs = cohort.labs
    # Hand-checked: CREA 0.8 mg/dL x 88.42 = 70.736 umol/L; HGB 10.8 and 10.4 g/dL x 10 in g/L.
    assert labs["value"][labs["test"] == "CREA"].tolist() == pytest.approx([70.736])
    assert labs["value"][labs["test"] == "HGB"].tolist() == pytest.approx([108.0, 104.0])
    assert labs["unit"][labs["test"] == "HGB"].tolist() == ["g/L", "g/L"]
    assert dict(cohort.conversions) == {
        ("PLT", "10*3/uL"): 2,  # counted although the factor is 1: the unit is not canonical
        ("HGB", "g/dL"): 2,
        ("WBC", "10*3/uL"): 1,
        ("ANC", "10*3/uL"): 1,
        ("TBIL", "mg/dL"): 1,
        ("CREA", "mg/dL"): 1,
    }
    assert cohort.regimens["end_date"].isna().tolist() == [False] * 5 + [True]
    assert cohort.regimens["cycle"].isna().tolist() == [False] * 5 + [True]
    # 1973-05-02 to 2025-03-10: 18940 days (52 years of 18993 days less 53) / 365.25.
    assert cohort.episodes["age_years"].iloc[0] == pytest.approx(18940 / 365.25)
    assert cohort.patients["bone_mets"].tolist() == [1.0]
    assert cohort.patients["liver_mets"].tolist() == [0.0]
    for frame, column in [
        (cohort.episodes, "index_date"),
        (cohort.labs, "time"),
        (cohort.regimens, "start_date"),
        (cohort.regimens, "end_date"),
        (cohort.patients, "birth_date"),
    ]:
        assert frame[column].dtype == "datetime64[ns]", column
    assert cohort.labs["value"].dtype == "float64"
    assert cohort.regimens["line"].dtype == "float64"
    assert cohort.regimens["drugs"].tolist()[0] == "palbociclib;letrozole"


def test_one_patient_warnings_in_order() -> None:
    tables = _record_tables()
    tables["patients"][0]["subtype"] = "luminal"
    tables["labs"].append({"patient_id": "P1", "time": "2025-03-01", "test": "FERR", "value": 3,
                           "unit": "ng/mL"})  # fmt: skip
    tables["labs"].append({"patient_id": "X9", "time": "2025-01-01", "test": "PLT", "value": 50,
                           "unit": "/uL"})  # fmt: skip
    tables["regimens"][0]["drugs"] = "docetaxel;wonderdrug, placebo"
    cohort = cohort_from_tables(tables)
    assert [(w.table, w.line, w.column) for w in cohort.warnings] == [
        ("patients", 0, "subtype"),
        ("labs", 15, "patient_id"),
        ("labs", 14, "test"),
        ("regimens", 0, "drugs"),
    ]
    assert cohort.labs["patient_id"].iloc[0] == "P1"  # sorted by patient, then time
    assert cohort.labs["patient_id"].iloc[-1] == "X9"
    assert cohort.labs["value"].iloc[-1] == 0.05


def test_one_patient_errors_name_table_row_and_column() -> None:
    tables = _record_tables()
    tables["labs"][0]["unit"] = "furlongs"
    tables["episodes"][0]["index_date"] = "10/03/2025"
    with pytest.raises(CohortError) as caught:
        cohort_from_tables(tables)
    assert [(i.table, i.line, i.column) for i in caught.value.errors] == [
        ("episodes", 0, "index_date"),
        ("labs", 0, "unit"),
    ]
    assert caught.value.errors[1].message.startswith("unknown unit 'furlongs' for PLT")


def test_one_patient_with_a_given_outcome() -> None:
    tables = _record_tables()
    tables["outcomes"] = [{"episode_id": "E1", "response": 1}]
    outcomes = cohort_from_tables(tables).outcomes
    assert outcomes["response"].tolist() == [1]
    assert outcomes["response"].dtype == "Int64"
