"""Reliability of the scoring service as a hospital runs it: a real `ctit serve` process.

- the audit log keeps every acknowledged score when the server is killed (-9) under load;
- patient identifiers appear in no log line of a full serving session at debug level;
- the HTTP API survives property-based fuzzing from its own OpenAPI schema (no 500s).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from serving.http.app import create_app
from serving.scoring.scorer import Scorer
from serving.settings import ServingSettings

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _with_ids(record: dict[str, Any], i: int) -> dict[str, Any]:
    patient = {**record["patient"], "patient_id": f"PATIENT-{i:05d}-ZQX"}
    return {
        **record,
        "patient": patient,
        "episode": {**record["episode"], "episode_id": f"EPI-{i:05d}-ZQX"},
    }


def test_audit_keeps_every_acknowledged_score_after_kill_9(
    model_dir: Path, training_records, tmp_path: Path, serve_process
) -> None:
    records, _ = training_records
    server = serve_process(model_dir, tmp_path, "--verbose", env={"CTIT_API_TOKEN": TOKEN})
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            i = worker
            while not stop.is_set():
                body = _with_ids(records[i % len(records)], i)
                try:
                    answer = client.post("/v1/score", json=body)
                except httpx.HTTPError:
                    return  # the server is gone: nothing more can be acknowledged
                if answer.status_code == 200:
                    with lock:
                        acknowledged.append(answer.json()["episode_id"])
                i += 4

    workers = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL while the workers are still sending
    stop.set()
    for worker in workers:
        worker.join(timeout=30)

    assert len(acknowledged) >= 150, "the server acknowledged too few scores before the kill"
    with sqlite3.connect(server.audit) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT count(*) FROM scores").fetchone()[0]
    # every acknowledged answer was written before it left; requests in flight may add a few more
    assert rows >= len(acknowledged)
    assert rows <= len(acknowledged) + 4


def test_no_patient_identifier_in_any_log_line(
    model_dir: Path, training_records, tmp_path: Path, serve_process
) -> None:
    records, _ = training_records
    server = serve_process(model_dir, tmp_path, "--verbose")
    ids: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(6):
                body = _with_ids(records[i], i)
                ids += [body["patient"]["patient_id"], body["episode"]["episode_id"]]
                assert client.post("/v1/score", json=body).status_code == 200
            batch = [_with_ids(records[i], i) for i in range(6, 9)]
            ids += [r["patient"]["patient_id"] for r in batch]
            assert client.post("/v1/score/batch", json={"records": batch}).status_code == 200
            bad = _with_ids(records[9], 9)
            ids.append(bad["patient"]["patient_id"])
            bad["labs"][0]["value"] = -5
            assert client.post("/v1/score", json=bad).status_code == 422
            broken = _with_ids(records[10], 10)
            ids.append(broken["patient"]["patient_id"])
            broken["episode"].pop("index_date")
            assert client.post("/v1/score", json=broken).status_code == 422
            hook = {
                "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                "hook": "patient-view",
                "context": {"userId": "Practitioner/1", "patientId": "PATIENT-HOOK-ZQX"},
            }
            ids.append("PATIENT-HOOK-ZQX")
            client.post("/cds-services/ctit-patient-view", json=hook)
    finally:
        server.stop()
    text = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "POST /v1/score" in text or "v1/score" in text, "the log should hold request lines"
    leaks = [i for i in ids if i in text]
    assert not leaks, f"patient identifiers in the log: {leaks}"


# -- property-based fuzzing of the API from its own OpenAPI schema ----------------------------


@pytest.fixture(scope="module")
def live_url(deployable_model, tmp_path_factory, live_server) -> Iterator[str]:
    settings_ = ServingSettings(
        model_uri="in-memory",
        api_token=TOKEN,
        audit_path=tmp_path_factory.mktemp("fuzz-audit") / "audit.db",
        audit_salt="pepper",
        max_batch_records=5,
    )
    server = live_server(create_app(settings_, scorer=Scorer(deployable_model, uri="mem")))
    yield server.url
    server.stop()


def _fuzz(operation, examples: int = 30) -> int:
    """Send `examples` generated requests to one operation; return how many were sent."""
    label = f"{operation.method.upper()} {operation.path}"
    sent = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        nonlocal sent
        case.headers = {**(case.headers or {}), **AUTH}
        response = case.call(timeout=30)
        sent += 1
        assert response.status_code < 500, f"{label}: {response.text[:500]}"
        assert "Traceback" not in response.text
        if response.status_code == 422:
            for problem in response.json()["detail"]:
                assert problem["loc"] and problem["msg"], (label, problem)

    check()
    return sent


def test_api_fuzz_never_fails_with_a_server_error(live_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{live_url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/score", "/v1/score/batch", "/v1/model"}
    for operation in operations:
        assert _fuzz(operation) > 0, f"{operation.method} {operation.path} was never called"
