"""The HTTP service on a real uvicorn server (127.0.0.1, a free port, in a thread)."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.http.app import create_app
from serving.http.audit import AuditLog
from serving.scoring.scorer import Scorer
from serving.settings import ServingSettings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def audit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.db"


@pytest.fixture(scope="module")
def server(deployable_model, audit_path: Path, live_server) -> Iterator:
    settings = ServingSettings(
        model_uri="in-memory",
        api_token=TOKEN,
        audit_path=audit_path,
        audit_salt="pepper",
        max_body_bytes=64 * 1024,
        max_batch_bytes=512 * 1024,
        max_batch_records=20,
    )
    app = create_app(settings, scorer=Scorer(deployable_model, uri="in-memory"))
    live = live_server(app)
    yield live
    live.stop()


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_health_is_open_and_ready(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 401  # readiness names the model: token only
    ready = client.get("/readyz", headers=AUTH)
    assert ready.status_code == 200 and ready.json()["model"]["version"] == "7"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/score"),
        ("POST", "/v1/score/batch"),
        ("GET", "/v1/model"),
        ("GET", "/v1/contract"),
    ],
)
def test_token_is_required_route_by_route(client: httpx.Client, method: str, path: str, record):
    body = {"records": [record]} if path.endswith("batch") else record
    kwargs = {"json": body} if method == "POST" else {}
    missing = client.request(method, path, **kwargs)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.request(method, path, headers={"Authorization": "Bearer nope"}, **kwargs)
    assert wrong.status_code == 401
    basic = client.request(method, path, headers={"Authorization": f"Basic {TOKEN}"}, **kwargs)
    assert basic.status_code == 401
    assert client.request(method, path, headers=AUTH, **kwargs).status_code == 200


def test_score_answers_the_design_shape(client: httpx.Client, scorer: Scorer, record) -> None:
    response = client.post("/v1/score", json=record, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    for key in (
        "episode_id",
        "probability",
        "interval",
        "band",
        "margin",
        "base_value",
        "contributions",
        "group_contributions",
        "top_factors",
        "warnings",
        "model",
    ):
        assert key in answer
    assert answer["episode_id"] == record["episode"]["episode_id"]
    assert answer["probability"] == pytest.approx(scorer.score(record)["probability"], abs=1e-12)
    total = answer["base_value"] + sum(answer["contributions"].values())
    assert total == pytest.approx(answer["margin"], abs=1e-4)
    assert answer["model"] == {
        "name": "ctit-response",
        "version": "7",
        "label_definition": "plt100_or_rise50_d14",
    }


def test_batch_answers_every_episode_in_order(client: httpx.Client, training_records) -> None:
    records = training_records[0][:6]
    response = client.post("/v1/score/batch", json={"records": records}, headers=AUTH)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["episode_id"] for r in results] == [r["episode"]["episode_id"] for r in records]
    single = client.post("/v1/score", json=records[2], headers=AUTH).json()
    assert results[2]["probability"] == single["probability"]
    fast = client.post(
        "/v1/score/batch", json={"records": records, "explain": False}, headers=AUTH
    ).json()["results"]
    assert fast[2]["contributions"] is None
    assert fast[2]["probability"] == single["probability"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (lambda r: r["labs"][2].update(unit="mmol/L"), ["body", "labs", 2, "unit"]),
        (lambda r: r["labs"][3].update(value=-4), ["body", "labs", 3, "value"]),
        (lambda r: r["episode"].pop("index_date"), ["body", "episode", "index_date"]),
        (lambda r: r["labs"][0].update(value="lots"), ["body", "labs", 0, "value"]),
    ],
)
def test_bad_input_is_422_with_the_field_path(client: httpx.Client, record, change, loc) -> None:
    change(record)
    response = client.post("/v1/score", json=record, headers=AUTH)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert loc in [d["loc"] for d in detail], detail
    assert all(d["msg"] for d in detail)


def test_batch_422_paths_name_the_record(client: httpx.Client, training_records) -> None:
    records = copy.deepcopy(training_records[0][:3])
    records[1]["labs"][0]["unit"] = "furlongs"
    response = client.post("/v1/score/batch", json={"records": records}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "records", 1, "labs", 0, "unit"]


def test_large_bodies_are_refused_with_413(client: httpx.Client, record, training_records) -> None:
    big = copy.deepcopy(record)
    big["patient"]["note"] = "x" * (70 * 1024)
    declared = client.post("/v1/score", json=big, headers=AUTH)
    assert declared.status_code == 413
    assert "larger than 65536 bytes" in declared.json()["detail"]

    payload = json.dumps(big).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    streamed = client.post(
        "/v1/score", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413

    many = {"records": training_records[0][:21]}
    too_many = client.post("/v1/score/batch", json=many, headers=AUTH)
    assert too_many.status_code == 413 and "at most 20" in too_many.json()["detail"]
    # The batch route has its own, larger limit.
    assert client.post("/v1/score/batch", json={"records": [big]}, headers=AUTH).status_code == 200


def test_every_score_is_audited_without_identifiers(
    client: httpx.Client, audit_path: Path, record
) -> None:
    record["patient"]["patient_id"] = "PATIENT-RAW-ID-123"
    record["episode"]["episode_id"] = "EPISODE-RAW-ID-456"
    before = len(AuditLog(audit_path, salt="pepper").rows())
    response = client.post("/v1/score", json=record, headers={**AUTH, "X-Caller": "ward-7"})
    assert response.status_code == 200
    log = AuditLog(audit_path, salt="pepper")
    rows = log.rows()
    assert len(rows) == before + 1
    row = rows[-1]
    assert row["model_name"] == "ctit-response" and row["model_version"] == "7"
    assert row["patient_hash"] == log.hash_id("PATIENT-RAW-ID-123")
    assert row["episode_hash"] == log.hash_id("EPISODE-RAW-ID-456")
    assert row["caller"] == "ward-7" and row["endpoint"] == "/v1/score"
    assert json.loads(row["output"])["probability"] == response.json()["probability"]
    assert row["input_hash"] == hashlib.sha256(response.request.content).hexdigest()
    assert "PATIENT-RAW-ID-123" not in row["output"] and "EPISODE-RAW-ID-456" not in row["output"]
    with sqlite3.connect(audit_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw = b"".join(p.read_bytes() for p in audit_path.parent.glob("audit.db*"))
    assert b"PATIENT-RAW-ID-123" not in raw and b"EPISODE-RAW-ID-456" not in raw
    log.close()


def test_batch_scores_are_audited_per_episode(
    client: httpx.Client, audit_path: Path, training_records
) -> None:
    log = AuditLog(audit_path, salt="pepper")
    before = len(log.rows())
    records = training_records[0][:4]
    assert client.post("/v1/score/batch", json={"records": records}, headers=AUTH).is_success
    rows = log.rows()[before:]
    assert [r["episode_hash"] for r in rows] == [
        log.hash_id(r["episode"]["episode_id"]) for r in records
    ]
    assert {r["endpoint"] for r in rows} == {"/v1/score/batch"}
    log.close()


def test_model_card(client: httpx.Client) -> None:
    card = client.get("/v1/model", headers=AUTH).json()
    assert card["name"] == "ctit-response" and card["version"] == "7"
    assert card["label_definition"] == "plt100_or_rise50_d14"
    assert card["metrics"]["auroc"]["estimate"] == 0.8
    plt = next(f for f in card["features"] if f["name"] == "plt_last")
    assert plt["group"] == "labs" and plt["unit"] == "10*9/L" and plt["direction"] == 1
    assert card["training_cohort"]["episodes"] == 240
    assert card["bands"]["thresholds"] == [0.5, 0.75]


def test_contract_is_served_as_declared(client: httpx.Client) -> None:
    from data.contract import contract_as_dict

    body = client.get("/v1/contract", headers=AUTH).json()
    assert body == contract_as_dict()
    patients = next(t for t in body["tables"] if t["name"] == "patients")
    assert {"name": "ecog", "kind": "integer", "minimum": 0, "maximum": 4}.items() <= next(
        c for c in patients["columns"] if c["name"] == "ecog"
    ).items()


def test_openapi_documents_the_example(client: httpx.Client) -> None:
    assert client.get("/openapi.json").status_code == 401
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert "/v1/score" in spec["paths"] and "/v1/score/batch" in spec["paths"]
    schema = spec["components"]["schemas"]["ScoreRequest"]
    example = schema["examples"][0]
    assert example["episode"]["index_date"] and example["labs"][0]["unit"]
    assert client.get("/docs", headers=AUTH).status_code == 200


def test_missing_model_stops_the_service_at_start(tmp_path: Path) -> None:
    from serving.bundle.store import ModelLoadError

    settings = ServingSettings(model_uri=str(tmp_path / "gone"), audit_path=tmp_path / "a.db")
    with pytest.raises(ModelLoadError, match="gone: no such file"):
        create_app(settings)


def test_an_internal_failure_is_500_without_patient_data_in_the_log(
    server, client: httpx.Client, record, monkeypatch, caplog
) -> None:
    class Broken:
        model = server.app.state.scorer.model

        def score(self, body):
            raise KeyError(body.patient.patient_id)

    record["patient"]["patient_id"] = "SECRET-ID-789"
    monkeypatch.setattr(server.app.state, "scorer", Broken())
    with caplog.at_level("DEBUG"):
        response = client.post("/v1/score", json=record, headers=AUTH)
    assert response.status_code == 500
    assert "SECRET-ID-789" not in response.text
    assert "scoring failed with KeyError" in caplog.text
    assert "SECRET-ID-789" not in caplog.text


# -- audit log and settings (units) ----------------------------------------------------------------


def test_audit_log_group_commits_concurrent_writers(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db", salt="pepper")
    assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    answer = {"episode_id": "E", "probability": 0.5}

    def write(i: int) -> None:
        log.record_score(
            model={"name": "m", "version": "1"},
            patient_id=f"P{i}",
            input_sha256="h",
            answers=[dict(answer, episode_id=f"E{i}")],
            endpoint="/v1/score",
            caller="t",
        )

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = log.rows()
    assert sorted(r["patient_hash"] for r in rows) == sorted(
        log.hash_id(f"P{i}") for i in range(40)
    )
    assert log.hash_id("P1") == hashlib.sha256(b"pepperP1").hexdigest()
    log.close()
    assert not log.check()
    with pytest.raises(RuntimeError, match="is closed"):
        write(99)


def test_audit_salt_is_kept_when_not_configured(tmp_path: Path) -> None:
    first = AuditLog(tmp_path / "a.db")
    digest = first.hash_id("P1")
    first.record_feedback(
        model_version="3", patient_id="P1", episode_id="E1", feedback={"useful": True}, caller="c"
    )
    first.close()
    again = AuditLog(tmp_path / "a.db", synchronous="NORMAL")
    assert again.hash_id("P1") == digest != hashlib.sha256(b"P1").hexdigest()
    (row,) = again.rows("feedback")
    assert row["patient_hash"] == digest and json.loads(row["feedback"]) == {"useful": True}
    assert again._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    again.close()


def test_settings_read_the_environment_and_cli_values_win(tmp_path: Path) -> None:
    env = {
        "CTIT_API_TOKEN": "tok-SECRET-1",
        "CTIT_AUDIT_DB": str(tmp_path / "x.db"),
        "CTIT_MAX_BATCH_RECORDS": "7",
        "CTIT_AUDIT_SYNCHRONOUS": "NORMAL",
        "UNRELATED": "ignored",
    }
    settings = ServingSettings.from_env(env, model_uri="m", port=9001, audit_path=None)
    assert settings.api_token.get_secret_value() == "tok-SECRET-1"
    assert "SECRET" not in repr(settings)
    assert settings.audit_path == tmp_path / "x.db" and settings.max_batch_records == 7
    assert settings.port == 9001 and settings.audit_synchronous == "NORMAL"
    override = ServingSettings.from_env(env, model_uri="m", audit_path=tmp_path / "cli.db")
    assert override.audit_path == tmp_path / "cli.db"
    with pytest.raises(ValueError, match="max_batch_records"):
        ServingSettings.from_env({"CTIT_MAX_BATCH_RECORDS": "none"}, model_uri="m")
