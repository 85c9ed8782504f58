"""CDS Hooks 2.0 service: discovery, cards, prefetch or fetch from a loopback FHIR server, 412,
feedback in the audit log; the FHIR-server allow-list (deny by default, exact origin, path at a
segment boundary, paging links and redirects kept on the server). Bodies are checked against
models of the 2.0 specification's shapes."""

from __future__ import annotations

import copy
import datetime as dt
import html
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit
from uuid import UUID, uuid4

import jsonschema
import pytest
from fastapi.testclient import TestClient
from pydantic import AnyUrl, BaseModel, ConfigDict, Field, model_validator

from serving.fhir.cds_hooks import ORDER_SELECT, PATIENT_VIEW, CdsSettings, allowed_fhir_server
from serving.fhir.convert import fhir_to_patient_records
from serving.http.app import create_app
from serving.http.audit import AuditLog
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
MIXED = ROOT / "fixtures" / "fhir" / "handwritten" / "mixed-units.json"
CAREBUNDLE = ROOT / "fixtures" / "fhir" / "carebundle" / "anaemia-7-0000.json"
PATIENT = "pt-17"
TOKEN = "secret-access-token"
AUTH = {
    "access_token": TOKEN,
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/*.read",
    "subject": "cds-service",
}


# --------------------------------------------------------------------------- CDS Hooks 2.0 shapes
# Written from the specification (cds-hooks.hl7.org 2.0): Discovery, HTTP request, CDS Service
# response (Card, Source, Suggestion, Action, Link) and Feedback. Unknown fields are refused, so
# a field the service invents fails here.


class Coding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    system: str | None = None
    display: str | None = None


class SpecService(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class SpecDiscovery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    services: list[SpecService]


class SpecAuthorization(BaseModel):
    model_config = ConfigDict(extra="forbid")
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


class SpecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hook: str
    hookInstance: UUID
    fhirServer: AnyUrl | None = None
    fhirAuthorization: SpecAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _auth_needs_server(self) -> SpecRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization without fhirServer")
        return self


class SpecSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    url: AnyUrl | None = None
    icon: AnyUrl | None = None
    topic: Coding | None = None


class SpecAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: list[str] | None = None


class SpecSuggestion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    uuid: UUID | None = None
    isRecommended: bool | None = None
    actions: list[SpecAction] | None = None


class SpecLink(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    url: AnyUrl
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class SpecCard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uuid: UUID | None = None
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: SpecSource
    suggestions: list[SpecSuggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[SpecLink] | None = None

    @model_validator(mode="after")
    def _selection(self) -> SpecCard:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are given")
        return self


class SpecResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cards: list[SpecCard]
    systemActions: list[SpecAction] | None = None


class SpecFeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    card: str
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, str]] | None = None
    overrideReason: dict[str, Any] | None = None
    outcomeTimestamp: dt.datetime


class SpecFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback: list[SpecFeedbackItem]


# --------------------------------------------------------------------------- data


def plain(markdown: str) -> str:
    """Card Markdown as read: backslash escapes and HTML entities undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", markdown))


def _resources() -> list[dict[str, Any]]:
    bundle = json.loads(MIXED.read_text(encoding="utf-8"))
    return [e["resource"] for e in bundle["entry"]]


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def _prefetch(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The prefetch a CDS client would send for the mixed-units patient (no hetrombopag order)."""

    def of(kind: str) -> list[dict[str, Any]]:
        return [r for r in resources if r["resourceType"] == kind]

    requests = [r for r in of("MedicationRequest") if r["id"] != "mr-hetrombopag"]
    return {
        "patient": of("Patient")[0],
        "labs": _searchset(of("Observation")),
        "medicationRequests": _searchset(requests),
        "medicationAdministrations": _searchset(of("MedicationAdministration") + of("Medication")),
        "medicationStatements": _searchset(of("MedicationStatement")),
        "conditions": _searchset(of("Condition")),
    }


DRAFT = {
    "resourceType": "MedicationRequest",
    "id": "draft-1",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {"text": "Hetrombopag olamine 5 mg tablet"},
    "subject": {"reference": f"Patient/{PATIENT}"},
    "authoredOn": "2025-05-20",
}


def _request(hook: str, prefetch: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": PATIENT}
    if hook == "order-select":
        context |= {
            "selections": ["MedicationRequest/draft-1"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection",
                            "entry": [{"resource": copy.deepcopy(DRAFT)}]},
        }  # fmt: skip
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid4()), "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    SpecRequest.model_validate(body)
    return body


# --------------------------------------------------------------------------- a loopback FHIR server


class FhirServer:
    """A tiny FHIR server on 127.0.0.1: reads and patient searches (with `code` filters) over a
    list of resources, three entries per page (to exercise `next` links); records every request
    it receives. `next_base` puts the `next` links on another base URL; `redirect` answers every
    Observation search with a 302 to that URL."""

    def __init__(
        self,
        resources: list[dict[str, Any]],
        fail: set[str] = frozenset(),
        next_base: str | None = None,
        redirect: str | None = None,
    ) -> None:
        self.resources = resources
        self.fail = set(fail)
        self.redirect = redirect
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.requests.append((self.path, self.headers.get("Authorization")))
                status, body = server.answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode("utf-8")
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", str(server.redirect))
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_port
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.next_base = next_base or self.base
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        if authorization != f"Bearer {TOKEN}":
            return 401, {"resourceType": "OperationOutcome"}
        parts = urlsplit(path)
        kind = parts.path.removeprefix("/fhir/")
        if kind.split("/")[0] in self.fail:
            return 500, {"resourceType": "OperationOutcome"}
        if self.redirect is not None and kind == "Observation":
            return 302, {"resourceType": "OperationOutcome"}
        if "/" in kind:
            kind, rid = kind.split("/", 1)
            found = [r for r in self.resources if r["resourceType"] == kind and r["id"] == rid]
            return (200, found[0]) if found else (404, {"resourceType": "OperationOutcome"})
        query = parse_qs(parts.query)
        patient = f"Patient/{query['patient'][0]}"
        matches = [
            r
            for r in self.resources
            if r["resourceType"] == kind
            and (r.get("subject") or r.get("patient") or {}).get("reference") == patient
        ]
        if "code" in query:
            wanted = set(query["code"][0].split(","))
            matches = [
                r
                for r in matches
                if {f"{c.get('system')}|{c.get('code')}" for c in r["code"]["coding"]} & wanted
            ]
        if kind == "MedicationAdministration":  # as _include=MedicationAdministration:medication
            matches += [r for r in self.resources if r["resourceType"] == "Medication"]
        page = int(query.get("page", ["1"])[0])
        bundle = _searchset(matches[(page - 1) * 3 : page * 3])
        if page * 3 < len(matches):
            rest = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "page")
            bundle["link"] = [
                {"relation": "next", "url": f"{self.next_base}/{kind}?{rest}&page={page + 1}"}
            ]
        return 200, bundle

    def __enter__(self) -> FhirServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.db", salt="test-salt")
    yield log
    log.close()


@pytest.fixture
def client(scorer, audit: AuditLog, tmp_path: Path) -> Iterator[TestClient]:
    settings = ServingSettings(
        model_uri="test", audit_path=tmp_path / "audit.db", public_url="https://ctit.example"
    )
    app = create_app(settings, scorer=scorer, audit=audit)
    with TestClient(app) as test_client:
        yield test_client


def allow(client: TestClient, *servers: str) -> None:
    """Put `servers` on the app's FHIR-server allow-list (ServingSettings.cds_fhir_servers)."""
    settings: ServingSettings = client.app.state.settings
    client.app.state.settings = ServingSettings.model_validate(
        {**settings.model_dump(), "cds_fhir_servers": servers}
    )


@pytest.fixture(scope="module")
def risk_validator() -> jsonschema.Draft6Validator:
    schema = json.loads((ROOT / "fixtures" / "schemas" / "fhir.schema.json").read_text())
    root = {"$ref": "#/definitions/RiskAssessment", "definitions": schema["definitions"]}
    return jsonschema.Draft6Validator(root)


def _expected(scorer, resources: list[dict[str, Any]]) -> dict[str, Any]:
    records, _ = fhir_to_patient_records(resources + [DRAFT], index_date="2025-05-20")
    return scorer.score(records[0])


# --------------------------------------------------------------------------- discovery


def test_discovery_lists_both_services_with_prefetch_templates(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    discovery = SpecDiscovery.model_validate(response.json())
    hooks = {service.id: service.hook for service in discovery.services}
    assert hooks == {PATIENT_VIEW: "patient-view", ORDER_SELECT: "order-select"}
    for service in discovery.services:
        prefetch = service.prefetch or {}
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        assert "http://loinc.org|777-3" in prefetch["labs"]
        assert prefetch["labs"].startswith("Observation?patient={{context.patientId}}&code=")
        assert prefetch["medicationRequests"].startswith("MedicationRequest?patient=")
        assert all("{{context.patientId}}" in template for template in prefetch.values())


# --------------------------------------------------------------------------- cards


def test_order_select_card_from_prefetch(client: TestClient, scorer, risk_validator) -> None:
    resources = _resources()
    response = client.post(
        f"/cds-services/{ORDER_SELECT}", json=_request("order-select", _prefetch(resources))
    )
    assert response.status_code == 200, response.text
    body = SpecResponse.model_validate(response.json())
    assert len(body.cards) == 1
    card = body.cards[0]
    expected = _expected(scorer, [r for r in resources if r.get("id") != "mr-hetrombopag"])
    assert f"{expected['probability']:.0%}" in card.summary
    assert "v7" in card.summary and len(card.summary) < 140
    assert card.indicator == ("warning" if expected["band"] == "low" else "info")
    assert card.source.url is not None and str(card.source.url).endswith("/v1/model")
    assert "**Top factors**" in plain(card.detail)
    assert expected["top_factors"][0]["text"] in plain(card.detail)
    assert "Observation/plt-bad-unit: unit 'mmol/L' is not accepted" in plain(card.detail)
    assert "Index date (first hetrombopag dose): 2025-05-20" in plain(card.detail)
    assessment = card.suggestions[0].actions[0].resource
    assert not list(risk_validator.iter_errors(assessment))
    assert assessment["prediction"][0]["probabilityDecimal"] == round(expected["probability"], 4)
    assert assessment["subject"] == {"reference": f"Patient/{PATIENT}"}


def test_order_select_without_a_hetrombopag_draft_gives_no_card(client: TestClient) -> None:
    body = _request("order-select", None)
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = {
        "text": "gemcitabine 1000 mg/m2"
    }
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_patient_view_card_only_for_ctit(client: TestClient, scorer) -> None:
    resources = _resources()
    prefetch = _prefetch(resources)
    response = client.post(f"/cds-services/{PATIENT_VIEW}", json=_request("patient-view", prefetch))
    assert response.status_code == 200
    # no hetrombopag order in this prefetch: index date is today, and the latest PLT (34) < 100
    cards = SpecResponse.model_validate(response.json()).cards
    assert len(cards) == 1
    assert "index date = today" in plain(cards[0].detail)
    # a generator patient with a normal platelet count gets no card
    bundle = json.loads(CAREBUNDLE.read_text(encoding="utf-8"))
    others = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in others if r["resourceType"] == "Patient")
    patient["id"] = PATIENT
    for resource in others:
        if "subject" in resource:
            resource["subject"] = {"reference": f"Patient/{PATIENT}"}
    quiet = _prefetch(others + [{"resourceType": "Medication", "id": "unused"}])
    response = client.post(f"/cds-services/{PATIENT_VIEW}", json=_request("patient-view", quiet))
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_missing_prefetch_without_fhir_server_is_412(client: TestClient) -> None:
    allow(client, "https://ehr.example/fhir")
    prefetch = _prefetch(_resources())
    del prefetch["labs"], prefetch["conditions"]
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=_request("order-select", prefetch))
    assert response.status_code == 412
    detail = response.json()["detail"]
    assert "labs" in detail and "no fhirServer" in detail
    assert "conditions" not in detail  # optional: would only be a note on the card


def test_null_prefetch_means_no_data_not_a_fetch(client: TestClient) -> None:
    prefetch = _prefetch(_resources()) | {"conditions": None, "medicationStatements": None}
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=_request("order-select", prefetch))
    assert response.status_code == 200
    detail = plain(response.json()["cards"][0]["detail"])
    assert "no coded condition for bone_mets, liver_mets, marrow_involvement" in detail


# --------------------------------------------------------------------------- fetching


def test_fetching_is_disabled_by_default(client: TestClient) -> None:
    assert client.app.state.settings.cds_fhir_servers == ()
    resources = _resources()
    with FhirServer(resources) as server:
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
        assert response.status_code == 412
        detail = response.json()["detail"]
        assert detail.startswith("required data missing: patient, labs, medicationRequests (")
        assert "fetching from the FHIR server is disabled" in detail
        assert "CTIT_CDS_FHIR_SERVERS" in detail
        # only optional keys missing: a card that says what is missing, still no call
        prefetch = _prefetch(resources)
        del prefetch["conditions"]
        body = _request("order-select", prefetch, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
        assert response.status_code == 200
        card_detail = plain(response.json()["cards"][0]["detail"])
        assert "conditions not available (not prefetched, and fetching" in card_detail
    assert server.requests == []


def test_missing_prefetch_is_fetched_from_the_fhir_server(client: TestClient, scorer) -> None:
    resources = [r for r in _resources() if r.get("id") != "mr-hetrombopag"]
    with FhirServer(resources) as server:
        allow(client, "https://ehr.example/fhir", server.base)
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 200, response.text
    card = SpecResponse.model_validate(response.json()).cards[0]
    expected = _expected(scorer, resources)
    assessment = card.suggestions[0].actions[0].resource
    assert assessment["prediction"][0]["probabilityDecimal"] == round(expected["probability"], 4)
    paths = [path for path, _ in server.requests]
    assert f"/fhir/Patient/{PATIENT}" in paths
    assert any(p.startswith(f"/fhir/Observation?patient={PATIENT}&code=") for p in paths)
    assert any("page=2" in p for p in paths)  # followed the next link
    assert {auth_header for _, auth_header in server.requests} == {f"Bearer {TOKEN}"}
    # every lab reached the score: same as the prefetch path
    assert re.search(r"Observation/plt-3", json.dumps(assessment["basis"]))


def test_a_server_below_the_allowed_path_is_fetched_from(client: TestClient) -> None:
    with FhirServer(_resources()) as server:
        allow(client, f"http://127.0.0.1:{server.port}/")  # the whole server, written with a /
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 200, response.text
    assert f"/fhir/Patient/{PATIENT}" in [path for path, _ in server.requests]


def test_pages_left_unread_are_noted_on_the_card(client: TestClient) -> None:
    client.app.state.cds_settings = CdsSettings(max_pages=1)
    with FhirServer(_resources()) as server:
        allow(client, server.base)
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 200
    assert "labs: only the first 1 result pages were read" in plain(
        response.json()["cards"][0]["detail"]
    )


def test_unreachable_required_data_is_412_and_optional_data_a_note(client: TestClient) -> None:
    resources = _resources()
    with FhirServer(resources, fail={"Observation"}) as server:
        allow(client, server.base)
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 412
    assert "labs (FHIR server answered HTTP 500)" in response.json()["detail"]
    with FhirServer(resources, fail={"Condition"}) as server:
        allow(client, server.base)
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 200
    assert "conditions not available (FHIR server answered HTTP 500)" in plain(
        response.json()["cards"][0]["detail"]
    )


def test_fhir_server_outside_the_allowed_list_is_not_called(client: TestClient) -> None:
    with FhirServer(_resources()) as server:
        allowed = server.base
        port = server.port
        refused = [
            f"http://localhost:{port}/fhir",  # same machine, another host name
            f"http://127.0.0.1:{port}/fhir-other",  # not at a path-segment boundary
            f"http://127.0.0.1:{port}/",  # above the allowed path
            f"http://127.0.0.1:{port}/fhir/../admin",  # climbs out of the allowed path
            f"http://127.0.0.1:{port}/fhir/%2e%2e/admin",
            f"http://127.0.0.1:{port}@localhost:{port}/fhir",  # user info hides the host
            f"https://127.0.0.1:{port}/fhir",  # another scheme
            "https://ehr.example.evil.com/fhir",
        ]
        allow(client, allowed)
        for fhir_server in refused:
            body = _request("order-select", None, fhirServer=fhir_server, fhirAuthorization=AUTH)
            response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
            assert response.status_code == 412, fhir_server
            assert "fhirServer" in response.json()["detail"], fhir_server
        allow(client, "https://ehr.example/fhir")
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
        assert response.status_code == 412
        assert "not an allowed FHIR server" in response.json()["detail"]
    assert server.requests == []


@pytest.mark.parametrize(
    ("fhir_server", "allowed"),
    [
        ("https://ehr.example", True),
        ("https://ehr.example/", True),
        ("HTTPS://EHR.example:443/", True),
        ("https://ehr.example/fhir/r4", True),
        ("https://ehr.example.evil.com", False),
        ("https://ehr.example:8443", False),
        ("http://ehr.example", False),
        ("https://evil.example/ehr.example", False),
        ("https://ehr.example@evil.example", False),
        ("https://ehr.example/fhir?x=1", False),
        ("ftp://ehr.example", False),
    ],
)
def test_allowed_fhir_server_matches_the_origin_exactly(fhir_server: str, allowed: bool) -> None:
    if allowed:
        assert allowed_fhir_server(fhir_server, ("https://ehr.example",)).startswith(
            "https://ehr.example"
        )
    else:
        with pytest.raises(ValueError, match="fhirServer"):
            allowed_fhir_server(fhir_server, ("https://ehr.example",))


@pytest.mark.parametrize(
    ("fhir_server", "allowed"),
    [
        ("https://ehr.example/fhir", True),
        ("https://ehr.example/fhir/", True),
        ("https://ehr.example:443/fhir/r4", True),
        ("https://ehr.example/fhir-other", False),
        ("https://ehr.example/fhirx/r4", False),
        ("https://ehr.example/", False),
        ("https://ehr.example/other/fhir", False),
        ("https://ehr.example/fhir/../admin", False),
        ("https://ehr.example:8443/fhir", False),
        ("http://ehr.example/fhir", False),
    ],
)
def test_allowed_path_ends_at_a_segment_boundary(fhir_server: str, allowed: bool) -> None:
    servers = ("https://ehr.example/fhir", "http://ehr.example:8080/fhir")
    if allowed:
        assert allowed_fhir_server(fhir_server, servers) == fhir_server.replace(":443", "").rstrip(
            "/"
        )
    else:
        with pytest.raises(ValueError, match="fhirServer"):
            allowed_fhir_server(fhir_server, servers)


def test_default_ports_are_normalised_both_ways() -> None:
    assert allowed_fhir_server("http://ehr.example/fhir", ("http://ehr.example:80/fhir",))
    assert allowed_fhir_server("https://ehr.example:443/fhir", ("https://ehr.example/fhir",))
    with pytest.raises(ValueError, match="not an allowed"):
        allowed_fhir_server("http://ehr.example:443/fhir", ("https://ehr.example/fhir",))


def test_next_link_to_another_host_is_not_followed(client: TestClient) -> None:
    resources = _resources()
    with (
        FhirServer(resources) as elsewhere,
        FhirServer(resources, next_base=elsewhere.base) as server,
    ):
        allow(client, server.base, elsewhere.base)  # even when both are allowed
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 412
    detail = response.json()["detail"]
    assert "labs (a next link points away from the FHIR server" in detail
    assert elsewhere.requests == []
    assert not any("page=2" in path for path, _ in server.requests)
    assert f"/fhir/Patient/{PATIENT}" in [path for path, _ in server.requests]


def test_next_link_under_another_host_name_of_the_same_server_is_not_followed(
    client: TestClient,
) -> None:
    server = FhirServer(_resources())
    server.next_base = f"http://localhost:{server.port}/fhir"  # the same socket, another name
    with server:
        allow(client, server.base)
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 412
    assert "a next link points away from the FHIR server" in response.json()["detail"]
    assert not any("page=2" in path for path, _ in server.requests)


def test_redirect_is_not_followed(client: TestClient) -> None:
    resources = _resources()
    with (
        FhirServer(resources) as elsewhere,
        FhirServer(resources, redirect=f"{elsewhere.base}/Observation") as server,
    ):
        allow(client, server.base, elsewhere.base)
        body = _request("order-select", None, fhirServer=server.base, fhirAuthorization=AUTH)
        response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 412
    assert (
        "labs (FHIR server answered HTTP 302 (redirects are not followed))"
        in (response.json()["detail"])
    )
    assert elsewhere.requests == []


# --------------------------------------------------------------------------- settings


def test_fhir_servers_are_read_from_the_environment_and_normalised() -> None:
    env = {"CTIT_CDS_FHIR_SERVERS": " HTTPS://EHR.example:443/fhir/ ,http://10.1.2.3:8080/r4,"}
    settings = ServingSettings.from_env(env, model_uri="m")
    assert settings.cds_fhir_servers == ("https://ehr.example/fhir", "http://10.1.2.3:8080/r4")
    assert ServingSettings(model_uri="m").cds_fhir_servers == ()
    assert (
        ServingSettings.from_env({"CTIT_CDS_FHIR_SERVERS": ""}, model_uri="m").cds_fhir_servers
        == ()
    )
    # `ctit serve --workers N` hands settings to its workers as JSON
    again = ServingSettings.model_validate_json(json.dumps(settings.model_dump(mode="json")))
    assert again.cds_fhir_servers == settings.cds_fhir_servers


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("ftp://ehr.example/fhir", "is not an http\\(s\\) URL"),
        ("ehr.example/fhir", "is not an http\\(s\\) URL"),
        ("https:///fhir", "has no host"),
        ("https://ehr.example:99999/fhir", "is not a valid URL"),
        ("https://user:pw@ehr.example/fhir", "carries user info"),
        ("https://ehr.example/fhir?_format=json", "has a query or fragment"),
        ("https://ehr.example/fhir/../admin", "'..' path segments"),
    ],
)
def test_bad_fhir_server_settings_are_refused(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"cds_fhir_servers(.|\\n)*{reason}"):
        ServingSettings.from_env({"CTIT_CDS_FHIR_SERVERS": value}, model_uri="m")


def test_wrong_hook_and_unknown_service(client: TestClient) -> None:
    prefetch = _prefetch(_resources())
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=_request("patient-view", prefetch))
    assert response.status_code == 400
    assert "answers the 'order-select' hook" in response.json()["detail"]
    response = client.post("/cds-services/nope", json=_request("patient-view", prefetch))
    assert response.status_code == 404


# --------------------------------------------------------------------------- audit and feedback


def test_card_is_audited_and_feedback_stored_with_model_version(
    client: TestClient, audit: AuditLog
) -> None:
    prefetch = _prefetch(_resources())
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=_request("order-select", prefetch))
    card = response.json()["cards"][0]
    scores = audit.rows("scores")
    assert len(scores) == 1
    assert scores[0]["endpoint"] == f"/cds-services/{ORDER_SELECT}"
    assert scores[0]["model_version"] == "7"
    assert json.loads(scores[0]["output"])["cds_card_uuid"] == card["uuid"]
    assert PATIENT not in json.dumps(scores[0])

    now = dt.datetime(2025, 5, 20, 10, 30, tzinfo=dt.UTC).isoformat()
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": now,
            },
            {
                "card": "6b3a9f55-0000-4000-8000-000000000000",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "not-relevant", "system": "http://example.org/reasons"},
                    "userComment": "patient Jane Doe declined",
                },
                "outcomeTimestamp": now,
            },
        ]
    }
    SpecFeedback.model_validate(feedback)
    response = client.post(f"/cds-services/{ORDER_SELECT}/feedback", json=feedback)
    assert response.status_code == 200
    rows = audit.rows("feedback")
    assert [row["model_version"] for row in rows] == ["7", "7"]
    assert rows[0]["patient_hash"] == audit.hash_id(PATIENT)
    assert rows[0]["episode_hash"] == audit.hash_id(f"{PATIENT}-20250520")
    first, second = (json.loads(row["feedback"]) for row in rows)
    assert first["outcome"] == "accepted" and first["card_known"] is True
    assert first["acceptedSuggestions"] == [card["suggestions"][0]["uuid"]]
    assert second["card_known"] is False and second["overrideReason"]["code"] == "not-relevant"
    assert "display" not in second["overrideReason"]
    assert "Jane Doe" not in rows[1]["feedback"]


def test_malformed_feedback_is_refused(client: TestClient, audit: AuditLog) -> None:
    bad = {"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": "2025-05-20"}]}
    response = client.post(f"/cds-services/{ORDER_SELECT}/feedback", json=bad)
    assert response.status_code == 422
    assert audit.rows("feedback") == []


def test_draft_without_authored_on_scores_as_of_today(client: TestClient) -> None:
    body = _request("order-select", _prefetch(_resources()))
    del body["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"]
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 200
    detail = plain(response.json()["cards"][0]["detail"])
    today = dt.date.today().isoformat()
    assert f"has no authoredOn; index date = today ({today})" in detail
    assert f"Index date (first hetrombopag dose): {today}" in detail


def test_data_that_break_the_contract_give_a_card_saying_why(client: TestClient) -> None:
    body = _request("order-select", _prefetch(_resources()))
    body["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"] = "1960-01-01"
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=body)
    assert response.status_code == 200
    card = SpecResponse.model_validate(response.json()).cards[0]
    assert card.indicator == "warning"
    assert card.summary.startswith("Hetrombopag response: no estimate")
    assert "index_date is not after birth_date" in plain(card.detail)
