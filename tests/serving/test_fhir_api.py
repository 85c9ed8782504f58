"""POST /fhir/RiskAssessment/$score: FHIR Bundle in, schema-valid RiskAssessments out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient

from serving.fhir.api import SCORE_PATH
from serving.fhir.convert import fhir_to_patient_records
from serving.http.app import create_app
from serving.http.audit import AuditLog
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
MIXED = ROOT / "fixtures" / "fhir" / "handwritten" / "mixed-units.json"
AUGMENTED = ROOT / "fixtures" / "fhir" / "augmented" / "anaemia-7-0001-ctit.json"


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.db", salt="test-salt")
    yield log
    log.close()


@pytest.fixture
def client(scorer, audit: AuditLog, tmp_path: Path) -> Iterator[TestClient]:
    settings = ServingSettings(model_uri="test", audit_path=tmp_path / "audit.db")
    with TestClient(create_app(settings, scorer=scorer, audit=audit)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft6Validator]:
    schema = json.loads((ROOT / "fixtures" / "schemas" / "fhir.schema.json").read_text())
    return {
        name: jsonschema.Draft6Validator(
            {"$ref": f"#/definitions/{name}", "definitions": schema["definitions"]}
        )
        for name in ("Bundle", "RiskAssessment", "OperationOutcome")
    }


def _post(client: TestClient, body: bytes, query: str = ""):
    return client.post(
        SCORE_PATH + query, content=body, headers={"content-type": "application/fhir+json"}
    )


def test_two_bundles_in_one_list_give_two_valid_risk_assessments(
    client: TestClient, scorer, audit: AuditLog, validators
) -> None:
    mixed, augmented = (json.loads(p.read_text()) for p in (MIXED, AUGMENTED))
    response = _post(client, json.dumps([mixed, augmented]).encode())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    bundle = response.json()
    assert not list(validators["Bundle"].iter_errors(bundle))
    resources = [entry["resource"] for entry in bundle["entry"]]
    assessments = [r for r in resources if r["resourceType"] == "RiskAssessment"]
    assert [a["subject"]["reference"] for a in assessments] == [
        "Patient/pt-17",
        "Patient/80401638",
    ]
    records, _ = fhir_to_patient_records([mixed, augmented])
    for assessment, record in zip(assessments, records, strict=True):
        assert not list(validators["RiskAssessment"].iter_errors(assessment))
        expected = round(scorer.score(record)["probability"], 4)
        assert assessment["prediction"][0]["probabilityDecimal"] == expected
    outcome = resources[-1]
    assert outcome["resourceType"] == "OperationOutcome"
    assert not list(validators["OperationOutcome"].iter_errors(outcome))
    assert any("plt-bad-unit" in issue["diagnostics"] for issue in outcome["issue"])
    assert {issue["severity"] for issue in outcome["issue"]} == {"warning"}
    rows = audit.rows("scores")
    assert [row["endpoint"] for row in rows] == [SCORE_PATH, SCORE_PATH]
    assert rows[0]["patient_hash"] == audit.hash_id("pt-17")


def test_index_date_query_sets_the_episode(client: TestClient) -> None:
    response = _post(client, MIXED.read_bytes(), "?index_date=2025-05-17")
    assessment = response.json()["entry"][0]["resource"]
    assert assessment["identifier"][0]["value"] == "pt-17-20250517"
    # Observations after 2025-05-17 are not in the basis (nothing after the index date is used)
    references = [b["reference"] for b in assessment["basis"]]
    assert references == ["Observation/plt-1", "Observation/plt-2"]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"{not json", 400, "body: not valid JSON"),
        (b'{"patient": {"patient_id": "P1"}}', 400, "body: not FHIR"),
        (b'{"resourceType": "Bundle", "type": "history"}', 400, "Bundle.type 'history'"),
    ],
)
def test_unreadable_input_is_an_operation_outcome(
    client: TestClient, validators, body: bytes, status: int, text: str
) -> None:
    response = _post(client, body)
    assert response.status_code == status
    outcome = response.json()
    assert not list(validators["OperationOutcome"].iter_errors(outcome))
    assert outcome["issue"][0]["severity"] == "error"
    assert text in outcome["issue"][0]["diagnostics"]


def test_a_record_that_breaks_the_contract_is_422_naming_the_patient(
    client: TestClient, audit: AuditLog
) -> None:
    response = _post(client, MIXED.read_bytes(), "?index_date=1960-01-01")
    assert response.status_code == 422
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Patient/pt-17"]
    assert "index_date is not after birth_date" in issue["diagnostics"]
    assert audit.rows("scores") == []
