"""POST /v1/score?format=fhir answers the same score as a schema-valid FHIR R4 RiskAssessment."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from fastapi.testclient import TestClient

from serving.http.app import create_app
from serving.scoring.scorer import Scorer
from serving.settings import ServingSettings

SCHEMA = Path(__file__).resolve().parents[1] / "fixtures" / "schemas" / "fhir.schema.json"


def test_score_as_risk_assessment(deployable_model, record, tmp_path: Path) -> None:
    settings = ServingSettings(model_uri="m", audit_path=tmp_path / "a.db", audit_salt="s")
    app = create_app(settings, scorer=Scorer(deployable_model, uri="m"))
    definitions = json.loads(SCHEMA.read_text(encoding="utf-8"))["definitions"]
    validator = jsonschema.Draft6Validator(
        {"$ref": "#/definitions/RiskAssessment", "definitions": definitions}
    )
    with TestClient(app) as client:
        plain = client.post("/v1/score", json=record).json()
        fhir = client.post("/v1/score?format=fhir", json=record)
        bad = client.post("/v1/score?format=xml", json=record)
    assert fhir.status_code == 200
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    resource = fhir.json()
    assert resource["resourceType"] == "RiskAssessment"
    assert list(validator.iter_errors(resource)) == []
    assert resource["prediction"][0]["probabilityDecimal"] == round(plain["probability"], 4) or (
        abs(resource["prediction"][0]["probabilityDecimal"] - plain["probability"]) < 1e-4
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "format"]


def test_a_record_with_a_one_item_episodes_list_scores_as_fhir(
    deployable_model, record, tmp_path: Path
) -> None:
    # Found by the API fuzz test: `episodes: [one]` is a valid single-score request, and the
    # RiskAssessment must be built from that episode rather than fail with a 500.
    settings = ServingSettings(model_uri="m", audit_path=tmp_path / "a.db", audit_salt="s")
    app = create_app(settings, scorer=Scorer(deployable_model, uri="m"))
    listed = {
        **{k: v for k, v in record.items() if k != "episode"},
        "episodes": [record["episode"]],
    }
    with TestClient(app) as client:
        single = client.post("/v1/score?format=fhir", json=record)
        as_list = client.post("/v1/score?format=fhir", json=listed)
    assert single.status_code == as_list.status_code == 200, as_list.text
    resource = as_list.json()
    assert resource["identifier"][0]["value"] == record["episode"]["episode_id"]
    assert resource["prediction"] == single.json()["prediction"]
    assert resource.get("basis") == single.json().get("basis")
