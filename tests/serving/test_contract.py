"""The request models are the cohort contract's (data.contract), and the answers name the
unknown drugs the loader found (Cohort.warnings) rather than finding them again."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from data.cohort import cohort_from_tables
from data.contract import EPISODES, LABS, PATIENTS, REGIMENS, Table
from serving.answers.warnings import unknown_drug_warnings
from serving.request.records import RecordBatch, validate_record
from serving.request.schemas import (
    CONTRACT_COLUMNS,
    EXAMPLE_RECORD,
    EpisodeIn,
    LabIn,
    PatientIn,
    RegimenIn,
    ScoreRequest,
)

ROWS = [(PatientIn, PATIENTS), (EpisodeIn, EPISODES), (LabIn, LABS), (RegimenIn, REGIMENS)]


@pytest.mark.parametrize(("model", "table"), ROWS)
def test_row_fields_are_the_contract_columns(model: Any, table: Table) -> None:
    own = [c for c in table.columns if table is PATIENTS or c.name != "patient_id"]
    assert list(model.model_fields) == [c.name for c in own]
    schema = model.model_json_schema()
    assert sorted(schema.get("required", [])) == sorted(c.name for c in own if c.required)
    for column in own:
        field = model.model_fields[column.name]
        assert column.description in (field.description or "")
        if column.unit:
            assert column.unit in field.description
    assert set(model.model_fields) <= CONTRACT_COLUMNS


@pytest.mark.parametrize(
    ("model", "row", "ok"),
    [
        (PatientIn, {"patient_id": "P", "ecog": 4}, True),
        (PatientIn, {"patient_id": "P", "ecog": 5}, False),  # contract maximum 4
        (EpisodeIn, {"episode_id": "E", "index_date": "2025-01-01", "dose_mg": 100}, True),
        (EpisodeIn, {"episode_id": "E", "index_date": "2025-01-01", "dose_mg": 0}, False),
        (EpisodeIn, {"episode_id": "E", "index_date": "2025-01-01", "age_years": 121}, False),
        (RegimenIn, {"start_date": "2025-01-01", "drugs": "a; b", "line": 30}, True),
        (RegimenIn, {"start_date": "2025-01-01", "drugs": ["a"], "line": 31}, False),
        (RegimenIn, {"start_date": "2025-01-02", "end_date": "2025-01-01", "drugs": "a"}, False),
        (
            LabIn,
            {"time": "2025-01-01T08:00:00+02:00", "test": "PLT", "value": 3, "unit": "x"},
            True,
        ),
        (LabIn, {"time": "2025-01-01", "test": "PLT", "value": 3, "unit": "x", "units": 1}, False),
    ],
)
def test_bounds_and_request_rules(model: Any, row: dict[str, Any], ok: bool) -> None:
    if ok:
        model.model_validate(row)
    else:
        with pytest.raises(ValidationError):
            model.model_validate(row)


def test_request_rules_kept_by_hand() -> None:
    regimen = RegimenIn.model_validate({"start_date": "2025-01-01", "drugs": "a; b ;"})
    assert regimen.drugs == ["a", "b"]
    lab = LabIn.model_validate(
        {"time": "2025-01-01T08:00:00+02:00", "test": "PLT", "value": 3, "unit": "x"}
    )
    assert lab.time.tzinfo is None and lab.time.hour == 8
    with pytest.raises(ValidationError, match="string_too_long|at most 128"):
        PatientIn.model_validate({"patient_id": "x" * 129})


def test_the_example_record_is_valid() -> None:
    ScoreRequest.model_validate(EXAMPLE_RECORD)


def _cohort(regimens: list[dict[str, Any]]) -> Any:
    record = {**EXAMPLE_RECORD, "regimens": regimens}
    batch = RecordBatch.from_requests([validate_record(record)], keep_ids=True)
    return cohort_from_tables(batch.tables)


def test_unknown_drugs_come_from_the_loaders_warnings() -> None:
    cohort = _cohort(
        [
            {"start_date": "2025-03-01", "drugs": ["gemcitabine", "zz-drug's"]},
            {"start_date": "2025-03-20", "drugs": ["later-drug"]},  # after the index date
        ]
    )
    assert [w.column for w in cohort.warnings].count("drugs") == 2
    warnings = unknown_drug_warnings(cohort)
    assert [w["message"] for w in warnings["E1"]] == [
        'unknown drug "zz-drug\'s": no drug class, so its exposure is not counted'
    ]
    # The loader is the one that finds them: without its warnings, nothing is found again.
    assert unknown_drug_warnings(dataclasses.replace(cohort, warnings=())) == {}
