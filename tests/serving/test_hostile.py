"""Hostile and careless input, round two (issue 16): one regression test per finding.

Every HTTP test talks to a real uvicorn server on 127.0.0.1; the log and audit greps run a real
`ctit serve` process. Findings: 1 non-finite numbers and lone surrogates (500s, identifiers in
the log); 2 memory quadratic in distinct codes; 3 extra keys moving data between patients;
4 dates outside pandas' range; 5 a deleted audit database; 6 injectable CDS card Markdown;
7 raw identifiers in the audit database; 8 deep nesting; 9 the smaller items; 10 clinical safety.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.fhir.cds_hooks import ORDER_SELECT, md_text
from serving.http.app import TimedHttpToolsProtocol, create_app
from serving.http.audit import AuditLog
from serving.scoring.scorer import Scorer
from serving.settings import MIB, ServingSettings

TOKEN = "hostile-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[1]
MIXED = ROOT / "fixtures" / "fhir" / "handwritten" / "mixed-units.json"
FHIR_ID = re.compile(r"Patient/[A-Za-z0-9\-\.]{1,64}")


def _settings(tmp: Path, **values: Any) -> ServingSettings:
    base = {
        "model_uri": "in-memory",
        "api_token": TOKEN,
        "audit_path": tmp / "audit.db",
        "audit_salt": "pepper",
        "max_body_bytes": 4 * MIB,
        "max_batch_bytes": 4 * MIB,
        "max_batch_records": 20,
        "login_attempts": 10_000,
        "public_url": "https://ctit.example/",
    }
    return ServingSettings(**{**base, **values})


@pytest.fixture(scope="module")
def server(deployable_model, live_server, tmp_path_factory) -> Iterator[Any]:
    settings = _settings(tmp_path_factory.mktemp("hostile"))
    app = create_app(settings, scorer=Scorer(deployable_model, uri="in-memory"))
    live = live_server(app, http=TimedHttpToolsProtocol)
    yield live
    live.stop()


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def _post_raw(client: httpx.Client, path: str, raw: bytes | str) -> httpx.Response:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return client.post(path, content=data, headers={"Content-Type": "application/json"})


def _with_marker(record: dict[str, Any], path: list[str | int], text: str) -> str:
    """The record's JSON text with the value at `path` replaced by raw JSON `text`."""
    marked = copy.deepcopy(record)
    target = marked
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = "__MARK__"
    return json.dumps(marked).replace('"__MARK__"', text)


# -- 1. non-finite numbers, lone surrogates, validation errors ---------------------------------


NON_FINITE = [
    (["labs", 0, "value"], "NaN"),
    (["episode", "dose_mg"], "Infinity"),
    (["episode", "age_years"], "1e309"),
    (["patient", "ecog"], "NaN"),
    (["labs", 1, "note"], "-Infinity"),
    (["patient", "patient_id"], '"\\ud800"'),
]


@pytest.mark.parametrize(("path", "text"), NON_FINITE)
def test_non_finite_numbers_and_lone_surrogates_are_422_with_their_path(
    client: httpx.Client, record: dict[str, Any], path: list[str | int], text: str
) -> None:
    record["patient"]["patient_id"] = "PID-NONFINITE-9931"
    record["labs"][1]["note"] = "x"
    answer = _post_raw(client, "/v1/score", _with_marker(record, path, text))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", *path]
    assert "PID-NONFINITE-9931" not in answer.text
    batch = json.loads(json.dumps({"records": [record, record]}))
    raw = _with_marker(batch, ["records", 1, *path], text)
    answer = _post_raw(client, "/v1/score/batch", raw)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "records", 1, *path]


def test_validation_errors_never_echo_the_input(
    client: httpx.Client, record: dict[str, Any]
) -> None:
    record["patient"]["patient_id"] = "PID-ECHO-4417"
    record["episode"].pop("index_date")
    record["patient"]["ecog"] = 9
    answer = client.post("/v1/score", json=record)
    assert answer.status_code == 422
    problems = answer.json()["detail"]
    assert {tuple(p["loc"]) for p in problems} == {
        ("body", "episode", "index_date"),
        ("body", "patient", "ecog"),
    }
    assert all(set(p) == {"loc", "msg", "type"} for p in problems)
    assert "PID-ECHO-4417" not in answer.text


# -- 2. memory linear in rows ------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_during(call) -> tuple[Any, int]:
    """(call's result, highest RSS seen while it ran), sampling every 2 ms."""
    peak = _rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = call()
    finally:
        done.set()
        sampler.join()
    return result, peak


def _many_codes(record: dict[str, Any], n: int) -> dict[str, Any]:
    body = copy.deepcopy(record)
    when = body["labs"][0]["time"]
    body["labs"] += [
        {"time": when, "test": f"X{i:05d}", "value": 1, "unit": f"u{i:05d}"} for i in range(n)
    ]
    return body


def test_fifteen_thousand_distinct_codes_stay_under_100_mb(
    client: httpx.Client, record: dict[str, Any]
) -> None:
    warm = client.post("/v1/score", json=_many_codes(record, 500))  # first-use allocations
    assert warm.status_code == 200, warm.text
    body = json.dumps(_many_codes(record, 15_000)).encode("utf-8")
    assert len(body) < 1.5 * MIB
    before = _rss()
    answer, peak = _peak_rss_during(
        lambda: client.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
    )
    assert answer.status_code == 200, answer.text[:300]
    grown = (peak - before) / MIB
    # A dense matrix of 15k tests x 15k units alone is 1.8 GB.
    assert grown < 100, f"RSS grew by {grown:.0f} MB"


# -- 3. extra keys that clash with contract columns --------------------------------------------


@pytest.mark.parametrize(
    ("table", "key"),
    [("labs", "patient_id"), ("regimens", "patient_id"), ("labs", "episode_id"), ("labs", "test")],
)
def test_extra_keys_named_like_contract_columns_are_refused(
    client: httpx.Client, training_records, table: str, key: str
) -> None:
    records, _ = training_records
    a, b = records[0], records[1]
    if key == "test":  # a regimen row with a lab's column
        table = "regimens"
    a[table][0][key] = "r1"
    answer = client.post("/v1/score/batch", json={"records": [a, b]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "records", 0, table, 0, key]
    single = client.post("/v1/score", json=a)
    assert single.status_code == 422
    assert single.json()["detail"][0]["loc"] == ["body", table, 0, key]


def test_an_extra_key_that_is_no_contract_column_is_kept(
    client: httpx.Client, record: dict[str, Any]
) -> None:
    record["labs"][0]["analyser"] = "XN-1000"
    assert client.post("/v1/score", json=record).status_code == 200


# -- 4. dates bounded to 1900-2200 -------------------------------------------------------------


def _shift_years(record: dict[str, Any], year: int) -> dict[str, Any]:
    text = json.dumps(record)
    return json.loads(re.sub(r'"(20\d\d)-', lambda m: f'"{year + int(m.group(1)) - 2025}-', text))


def test_dates_outside_1900_to_2200_are_refused_naming_field_and_value(
    client: httpx.Client, record: dict[str, Any]
) -> None:
    late = copy.deepcopy(record)
    late["episode"]["index_date"] = "9999-12-31"
    answer = client.post("/v1/score", json=late)
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "episode", "index_date"]
    assert "9999-12-31" in problem["msg"] and "1900-01-01" in problem["msg"]
    early = copy.deepcopy(record)
    early["patient"]["birth_date"] = "0001-01-01"
    answer = client.post("/v1/score", json=early)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "patient", "birth_date"]
    for year in (2263, 1677):
        shifted = _shift_years(record, year)
        shifted["patient"].pop("birth_date", None)
        answer = client.post("/v1/score", json=shifted)
        assert answer.status_code == 422, (year, answer.text[:300])
        locs = {tuple(p["loc"]) for p in answer.json()["detail"]}
        assert ("body", "episode", "index_date") in locs


# -- 5. a deleted or replaced audit database ---------------------------------------------------


def test_a_deleted_audit_database_stops_scoring_until_it_is_back(
    deployable_model, live_server, tmp_path: Path, record: dict[str, Any]
) -> None:
    settings = _settings(tmp_path)
    live = live_server(create_app(settings, scorer=Scorer(deployable_model, uri="in-memory")))
    path = settings.audit_path
    try:
        with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
            assert client.post("/v1/score", json=record).status_code == 200
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            assert client.get("/readyz").status_code == 503
            refused = client.post("/v1/score", json=record)
            assert refused.status_code == 503
            assert "audit" in refused.json()["detail"]
            assert client.post("/v1/score/batch", json={"records": [record]}).status_code == 503
            hook = _cds_request("mmol/L", "docetaxel")
            assert client.post(f"/cds-services/{ORDER_SELECT}", json=hook).status_code == 503
            bundle = MIXED.read_bytes()
            fhir = client.post(
                "/fhir/RiskAssessment/$score",
                params={"index_date": "2025-05-20"},
                content=bundle,
                headers={"Content-Type": "application/fhir+json"},
            )
            assert fhir.status_code == 503
            assert fhir.json()["resourceType"] == "OperationOutcome"
            path.touch()  # the operator puts a (new, empty) log back
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/score", json=record).status_code == 200
    finally:
        live.stop()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM scores").fetchone()[0] == 1


def test_a_replaced_audit_database_is_noticed_and_written_to(
    deployable_model, live_server, tmp_path: Path, record: dict[str, Any]
) -> None:
    settings = _settings(tmp_path)
    live = live_server(create_app(settings, scorer=Scorer(deployable_model, uri="in-memory")))
    path = settings.audit_path
    try:
        with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
            assert client.post("/v1/score", json=record).status_code == 200
            backup = tmp_path / "backup.db"  # a backup with a row of its own, one file
            restored = AuditLog(backup, salt="pepper")
            restored.record_score(
                model={"name": "m", "version": "1"},
                patient_id="P-backup",
                input_sha256="0" * 64,
                answers=[{"episode_id": "E-backup", "probability": 0.5}],
                endpoint="/backup",
                caller="test",
            )
            restored.close()
            os.replace(backup, path)  # only the main file: the old -wal and -shm stay beside it
            refused = client.post("/v1/score", json=record)  # replayed, they would erase the backup
            assert refused.status_code == 503 and "audit" in refused.json()["detail"]
            assert client.get("/readyz").status_code == 503
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink()
            after = time.time()
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/score", json=record).status_code == 200
    finally:
        live.stop()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT time, endpoint FROM scores ORDER BY id").fetchall()
    assert rows[0][1] == "/backup"  # the restored row is kept
    # the score made after the swap is in the file now at the path, not in an unlinked one
    assert any(dt.datetime.fromisoformat(t).timestamp() >= after - 1 for t, _ in rows[1:]), rows


# -- 6. CDS card text --------------------------------------------------------------------------

HOSTILE_TEXT = (
    "[click](javascript:alert(1)) ![t](https://tracker.example/p.png) "
    "<script>alert(2)</script> https://evil.example www.evil.example"
)


def _cds_request(unit: str, drug_text: str, user: str = "Practitioner/dr-1") -> dict[str, Any]:
    resources = [e["resource"] for e in json.loads(MIXED.read_text("utf-8"))["entry"]]
    for resource in resources:
        if resource.get("id") == "plt-bad-unit":
            resource["valueQuantity"]["unit"] = unit
            resource["valueQuantity"].pop("code", None)
        if resource.get("id") == "ms-1":
            resource.pop("medicationCodeableConcept", None)
            resource.pop("medicationReference", None)
            resource["medicationCodeableConcept"] = {"text": drug_text}

    def of(kind: str) -> dict[str, Any]:
        found = [r for r in resources if r["resourceType"] in kind.split("|")]
        if kind == "MedicationRequest":
            found = [r for r in found if r["id"] != "mr-hetrombopag"]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in found],
        }

    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Hetrombopag olamine 5 mg tablet"},
        "subject": {"reference": "Patient/pt-17"},
        "authoredOn": "2025-05-20",
    }
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return {
        "hook": "order-select",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": user,
            "patientId": "pt-17",
            "selections": ["MedicationRequest/draft-1"],
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": draft}],
            },
        },  # fmt: skip
        "prefetch": {
            "patient": patient,
            "labs": of("Observation"),
            "medicationRequests": of("MedicationRequest"),
            "medicationAdministrations": of("MedicationAdministration|Medication"),
            "medicationStatements": of("MedicationStatement"),
            "conditions": of("Condition"),
        },
    }


def test_cds_card_markdown_from_fhir_free_text_is_inert(client: httpx.Client) -> None:
    answer = client.post(
        f"/cds-services/{ORDER_SELECT}", json=_cds_request(HOSTILE_TEXT, HOSTILE_TEXT)
    )
    assert answer.status_code == 200, answer.text
    [card] = answer.json()["cards"]
    detail = card["detail"]
    assert "tracker" in detail, "the hostile text should reach the card (escaped)"
    for live in ("](", "![", "<script", "javascript:", "https://", "www.evil"):
        assert live not in detail, live
    urls = [card["source"].get("url")] + [link["url"] for link in card.get("links", [])]
    assert urls and all(url.startswith("https://ctit.example/") for url in urls), urls


def test_md_text_escapes_every_markdown_and_html_construct() -> None:
    assert md_text("a *b* _c_ `d` <i>&") == "a \\*b\\* \\_c\\_ \\`d\\` &lt;i&gt;&amp;"
    assert md_text("line one\n# heading\n\n- item") == "line one \\# heading - item"
    assert md_text("- starts a list") == "\\- starts a list"
    assert md_text("mail a@b.example") == "mail a\\@b.example"


# -- 8. deep nesting ---------------------------------------------------------------------------

DEEP = b"[" * 50_000 + b"]" * 50_000


@pytest.mark.parametrize(
    "path",
    [
        "/v1/score",
        "/v1/score/batch",
        "/ui/parse-file",
        "/fhir/RiskAssessment/$score",
        "/cds-services/ctit-patient-view",
        "/cds-services/ctit-patient-view/feedback",
    ],
)
def test_deep_nesting_is_400_on_every_json_entry_point(client: httpx.Client, path: str) -> None:
    answer = _post_raw(client, path, DEEP)
    assert answer.status_code == 400, answer.text[:300]
    assert "nested deeper" in answer.text


def test_deep_nesting_inside_a_valid_record_is_400(
    client: httpx.Client, record: dict[str, Any]
) -> None:
    record["patient"]["history"] = "__MARK__"
    raw = json.dumps(record).replace('"__MARK__"', "[" * 100 + "]" * 100)
    answer = _post_raw(client, "/v1/score", raw)
    assert answer.status_code == 400
    assert answer.json()["detail"][0]["type"] == "json_too_deep"
    ok = json.dumps(record).replace('"__MARK__"', "[" * 20 + "]" * 20)
    assert _post_raw(client, "/v1/score", ok).status_code == 200


# -- 9. smaller items --------------------------------------------------------------------------


def test_duplicate_json_keys_are_refused(client: httpx.Client, record: dict[str, Any]) -> None:
    text = json.dumps(record)
    doubled = text.replace('"patient": {', '"patient": {"patient_id": "first", ', 1)
    answer = _post_raw(client, "/v1/score", doubled)
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "patient", "patient_id"]
    assert problem["type"] == "duplicate_key"


def test_api_answers_are_not_stored_by_caches(client: httpx.Client, record: dict[str, Any]) -> None:
    bad = copy.deepcopy(record)
    bad["labs"][0]["value"] = -5
    answers = [
        client.post("/v1/score", json=record),
        client.post("/v1/score", json=bad),
        client.get("/v1/model"),
        client.get("/readyz"),
        client.get("/openapi.json"),
        client.post("/v1/score?format=fhir", json=record),
    ]
    for answer in answers:
        assert answer.headers.get("cache-control") == "no-store", answer.request.url


def test_sign_in_attempts_are_limited(deployable_model, live_server, tmp_path: Path) -> None:
    settings = _settings(tmp_path, login_attempts=3, login_window_s=60)
    live = live_server(create_app(settings, scorer=Scorer(deployable_model, uri="in-memory")))
    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            for _ in range(3):
                assert client.post("/ui/login", data={"token": "guess"}).status_code == 401
            blocked = client.post("/ui/login", data={"token": "guess"})
            assert blocked.status_code == 429
            assert int(blocked.headers["retry-after"]) >= 1
            # while blocked, even the right token is not tried
            assert client.post("/ui/login", data={"token": TOKEN}).status_code == 429
            wrong = {"Authorization": "Bearer guess"}
            assert client.get("/v1/model", headers=wrong).status_code == 429
            assert client.get("/healthz").status_code == 200
    finally:
        live.stop()


def test_a_wrong_bearer_token_counts_as_a_sign_in_attempt(
    deployable_model, live_server, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, login_attempts=2)
    live = live_server(create_app(settings, scorer=Scorer(deployable_model, uri="in-memory")))
    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            codes = [
                client.get("/v1/model", headers={"Authorization": "Bearer x"}).status_code
                for _ in range(3)
            ]
            assert codes == [401, 401, 429]
    finally:
        live.stop()


def test_salt_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="production mode needs CTIT_AUDIT_SALT"):
        ServingSettings.from_env({"CTIT_MODE": "production"}, model_uri="m")
    production = ServingSettings.from_env(
        {"CTIT_MODE": "production", "CTIT_AUDIT_SALT": "a-long-secret"}, model_uri="m"
    )
    assert production.mode == "production"
    salted = AuditLog(tmp_path / "salted.db", salt="a-long-secret")
    salted.close()
    with sqlite3.connect(tmp_path / "salted.db") as db:
        assert db.execute("SELECT count(*) FROM meta WHERE key = 'salt'").fetchone()[0] == 0
    with caplog.at_level("WARNING", logger="serving.http.audit"):
        AuditLog(tmp_path / "unsalted.db").close()
    assert "CTIT_AUDIT_SALT is not set" in caplog.text
    assert "recover short patient identifiers" in caplog.text


def test_schema_states_the_episode_one_of_rule_and_every_status(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["ScoreRequest"]
    branches = request["oneOf"]
    assert [b["required"] for b in branches] == [["episode"], ["episodes"]]
    score = schema["paths"]["/v1/score"]["post"]["responses"]
    assert {"200", "400", "401", "408", "413", "422", "429", "500", "503"} <= set(score)
    fhir = schema["paths"]["/fhir/RiskAssessment/$score"]["post"]
    assert "requestBody" in fhir
    assert "application/fhir+json" in fhir["responses"]["422"]["content"]


def test_schemathesis_checks_all_pass_over_the_whole_schema(server, tmp_path: Path) -> None:
    """`schemathesis run --checks all` (bounded examples) against the live server."""
    config = Path(__file__).with_name("schemathesis.toml")
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
        f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
        "--checks", "all", "--max-examples", "8", "--workers", "1", "--seed", "16",
        "--suppress-health-check", "all", "--phases", "examples,coverage,fuzzing",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path
    )
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, tail
    assert "passed" in done.stdout


def test_fhir_references_are_valid_for_any_patient_id(
    client: httpx.Client, record: dict[str, Any]
) -> None:
    for patient_id in ("MRN 12/34#ü", "x" * 100, "ok-id.1"):
        record["patient"]["patient_id"] = patient_id
        answer = client.post("/v1/score", params={"format": "fhir"}, json=record)
        assert answer.status_code == 200, answer.text
        subject = answer.json()["subject"]
        assert FHIR_ID.fullmatch(subject["reference"]), subject
        if patient_id == "ok-id.1":
            assert subject == {"reference": "Patient/ok-id.1"}
        else:
            assert subject["identifier"]["value"] == patient_id


# -- 10. clinical safety -----------------------------------------------------------------------


def test_no_platelet_count_on_or_before_the_index_date_is_not_estimable(
    client: httpx.Client, record: dict[str, Any]
) -> None:
    index = record["episode"]["index_date"]
    no_labs = {**copy.deepcopy(record), "labs": []}
    no_plt = copy.deepcopy(record)
    no_plt["labs"] = [lab for lab in record["labs"] if lab["test"] not in ("PLT", "777-3")]
    late_plt = copy.deepcopy(no_plt)
    late_plt["labs"].append({"time": f"{index}T23:00:00", "test": "PLT", "value": 50,
                             "unit": "10*9/L"})  # fmt: skip
    late_plt["labs"].append({"time": "2030-01-01", "test": "PLT", "value": 50, "unit": "10*9/L"})
    for body in (no_labs, no_plt):
        answer = client.post("/v1/score", json=body)
        assert answer.status_code == 422, answer.text
        [problem] = answer.json()["detail"]
        assert problem["type"] == "not_estimable" and problem["loc"] == ["body", "labs"]
    answer = client.post("/v1/score/batch", json={"records": [record, no_plt]})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "records", 1, "labs"]
    assert client.post("/v1/score", json=record).status_code == 200


@pytest.fixture(scope="module")
def wbc_server(training_records_module, model_builder, live_server, tmp_path_factory):
    """A server whose model was trained with a WBC for every episode."""
    records, y = training_records_module
    for one in records:
        when = one["labs"][-1]["time"]
        one["labs"].append({"time": when, "test": "WBC", "value": 4.2, "unit": "10*9/L"})
    model = model_builder(records, y, n_folds=2)
    settings = _settings(tmp_path_factory.mktemp("wbc"))
    live = live_server(create_app(settings, scorer=Scorer(model, uri="in-memory")))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def training_records_module(_training_records_once):
    records, y = _training_records_once
    return copy.deepcopy(records), y.copy()


def test_inputs_rarely_missing_in_training_are_warned_on_json_and_fhir(
    wbc_server, record: dict[str, Any]
) -> None:
    for key in ("ecog", "subtype"):
        record["patient"].pop(key)
    with httpx.Client(base_url=wbc_server.url, headers=AUTH, timeout=60) as client:
        answer = client.post("/v1/score", json=record)
        assert answer.status_code == 200, answer.text
        warnings = answer.json()["warnings"]
        lab = [w for w in warnings if w["code"] == "missing_lab"]
        assert [w["feature"] for w in lab] == ["wbc_last"]
        assert "white cell count (WBC)" in lab[0]["message"]
        fields = {w["feature"] for w in warnings if w["code"] == "missing_field"}
        assert fields == {"ecog", "subtype"}
        fhir = client.post("/v1/score", params={"format": "fhir"}, json=record).json()
        notes = " ".join(note["text"] for note in fhir["note"])
        assert "ECOG performance status not given" in notes
        assert "breast-cancer subtype not given" in notes
        assert "no white cell count (WBC)" in notes
        record["patient"]["ecog"] = 1
        record["patient"]["subtype"] = "TNBC"
        record["labs"].append(
            {"time": record["labs"][-1]["time"], "test": "WBC", "value": 4.0, "unit": "10*9/L"}
        )
        complete = client.post("/v1/score", json=record).json()["warnings"]
        assert not [w for w in complete if w["code"] in ("missing_lab", "missing_field")]


# -- 7. identifiers in the audit database and the server log (a real `ctit serve`) -------------


def test_planted_identifiers_reach_neither_the_audit_database_nor_the_log(
    model_dir: Path, record: dict[str, Any], tmp_path: Path, serve_process
) -> None:
    planted: list[str] = []

    def plant(label: str) -> str:
        planted.append(f"MRN-PLANT-{label}")
        return planted[-1]

    server = serve_process(
        model_dir,
        tmp_path,
        "--verbose",
        env={"CTIT_API_TOKEN": TOKEN},
        audit=tmp_path / "audit" / "audit.db",  # its own folder: every file in it is read
    )
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
            scored = copy.deepcopy(record)
            scored["patient"]["patient_id"] = plant("patient")
            scored["episode"]["episode_id"] = plant("episode")
            scored["labs"][0]["note"] = plant("lab-note")
            scored["regimens"][0]["drugs"].append(plant("drug"))
            assert client.post("/v1/score", json=scored).status_code == 200
            batch = copy.deepcopy(record)
            batch["patient"]["patient_id"] = plant("batch")
            assert client.post("/v1/score/batch", json={"records": [batch]}).status_code == 200
            nan = copy.deepcopy(record)
            nan["patient"]["patient_id"] = plant("nan")
            raw = _with_marker(nan, ["labs", 0, "value"], "NaN")
            assert _post_raw(client, "/v1/score", raw).status_code == 422
            invalid = copy.deepcopy(record)
            invalid["patient"]["patient_id"] = plant("invalid")
            invalid["episode"].pop("index_date")
            assert client.post("/v1/score", json=invalid).status_code == 422
            hook = _cds_request("mmol/L", "docetaxel", user=f"Patient/{plant('user')}")
            cards = client.post(f"/cds-services/{ORDER_SELECT}", json=hook)
            assert cards.status_code == 200, cards.text
            card = cards.json()["cards"][0]["uuid"]
            feedback = {
                "feedback": [
                    {
                        "card": card,
                        "outcome": "overridden",
                        "overrideReason": {
                            "reason": {
                                "code": "other",
                                "system": "http://example.org/r",
                                "display": f"{plant('display')} Jane Roe",
                            },
                            "userComment": plant("comment"),
                        },  # fmt: skip
                        "outcomeTimestamp": "2025-05-20T10:00:00Z",
                    },
                    {
                        "card": plant("card"),
                        "outcome": "accepted",
                        "outcomeTimestamp": "2025-05-20T10:00:00Z",
                    },
                ]
            }
            done = client.post(f"/cds-services/{ORDER_SELECT}/feedback", json=feedback)
            assert done.status_code == 200, done.text
    finally:
        server.stop()
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "/v1/score" in log, "the log should hold the request lines"
    assert "Traceback" not in log
    stored = b"".join(path.read_bytes() for path in server.audit.parent.iterdir())
    with sqlite3.connect(server.audit) as db:
        assert db.execute("SELECT count(*) FROM scores").fetchone()[0] == 3
        assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == 2
        callers = {row[0] for row in db.execute("SELECT caller FROM scores")}
    assert any(caller.startswith("cds-user:") for caller in callers)
    assert not [p for p in planted if p in log], "identifiers in the server log"
    assert not [p for p in planted if p.encode() in stored], "identifiers in the audit database"


def test_slow_clients_are_cut_off(model_dir: Path, tmp_path: Path, serve_process) -> None:
    env = {"CTIT_API_TOKEN": TOKEN, "CTIT_HEADER_TIMEOUT_S": "1", "CTIT_BODY_TIMEOUT_S": "1"}
    server = serve_process(model_dir, tmp_path, "--verbose", env=env)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as head:
            head.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Ty")
            started = time.monotonic()
            assert head.recv(1024) == b"", "the half-sent head should be closed"
            assert time.monotonic() - started < 15
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as body:
            body.sendall(
                b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 500\r\n\r\n".encode()
                + b'{"patient": '
            )
            answer = body.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        server.stop()


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and read until the server closes it or goes quiet."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(data)
        conn.settimeout(5)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_an_endless_request_head_is_cut_off_at_64_kib_with_431(server) -> None:
    head = b"GET /v1/model HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (80 * 1024)
    answer = _raw_exchange(server.port, head)  # the head never ends
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in answer.lower()


def test_heads_under_the_limit_and_large_bodies_are_served(server, record) -> None:
    # Each of three keep-alive requests has a 40 KiB head (120 KiB in all on the connection),
    # and the last sends its body of over 150 KiB in the same write as its head: none is taken
    # for an overlong head.
    pad = b"X-Padding: " + b"a" * (40 * 1024) + b"\r\n"
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    get = b"GET /v1/model HTTP/1.1\r\nHost: x\r\n" + auth + pad + b"\r\n"
    body = json.dumps(record).encode() + b" " * 150_000  # JSON allows trailing white space
    post = (
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth
        + pad
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    answer = _raw_exchange(server.port, get + get + post)
    statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"200", b"200"], answer[:300]
