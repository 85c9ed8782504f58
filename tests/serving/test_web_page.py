"""The clinician page: its routes (in-process) and the page itself in headless Chromium."""

from __future__ import annotations

import re
import typing
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from data.drugs import known_drugs
from data.units import ANALYTES
from serving import web
from serving.schemas import PatientIn

FHIR_DIR = Path(__file__).parents[1] / "fixtures" / "fhir"
STATIC = resources.files("serving").joinpath("static")

RECORD = {
    "patient": {"patient_id": "P-web", "sex": "F", "birth_date": "1970-01-02", "subtype": "TNBC"},
    "episode": {"episode_id": "E-web", "index_date": "2025-03-10", "dose_mg": 7.5},
    "labs": [{"time": "2025-03-09T08:00:00", "test": "777-3", "value": 42, "unit": "10*3/uL"}],
    "regimens": [{"start_date": "2025-03-01", "drugs": ["gemcitabine", "carboplatin"], "line": 2}],
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    """The page's router alone: its routes need neither a model nor the rest of the service."""
    app = FastAPI()
    app.include_router(web.router)
    return TestClient(app)


# ------------------------------------------------------------------------------------ the files


class _Controls(HTMLParser):
    """Form controls, labels and URL-bearing attributes of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.label_data_for: set[str] = set()
        self.urls: list[str] = []
        self.options: dict[str, list[str]] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("input", "select", "textarea"):
            self.controls.append(a)
        if tag == "select":
            self._select = a.get("id")
        if tag == "option" and self._select:
            self.options.setdefault(self._select, []).append(a.get("value") or "")
        if tag == "label":
            if a.get("for"):
                self.label_for.add(a["for"])
            if a.get("data-for"):
                self.label_data_for.add(a["data-for"])
        self.urls += [a[k] for k in ("src", "href", "action") if a.get(k)]

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def _page() -> _Controls:
    parser = _Controls()
    parser.feed(STATIC.joinpath("index.html").read_text(encoding="utf-8"))
    return parser


def test_every_control_of_the_page_has_a_label():
    page = _page()
    assert len(page.controls) > 20
    for control in page.controls:
        if control.get("data-field"):  # row templates: labelled by data-for, wired in app.js
            assert control["data-field"] in page.label_data_for, control
        else:
            assert control.get("id") in page.label_for, control


def test_page_refers_only_to_relative_urls_and_nothing_outside():
    page = _page()
    assert page.urls, "the page links its script and style sheet"
    for url in page.urls:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:|//|/)", url, re.I), url
    for name in ("index.html", "app.js", "style.css"):
        text = STATIC.joinpath(name).read_text(encoding="utf-8")
        assert not re.search(r"https?://|url\(|@import", text, re.I), name
        assert 'fetch("/' not in text and "fetch('/" not in text, name


def test_select_options_follow_the_scoring_schema():
    options = _page().options
    subtype = typing.get_args(typing.get_args(PatientIn.model_fields["subtype"].annotation)[0])
    assert [v for v in options["subtype"] if v] == list(subtype)
    assert [v for v in options["ecog"] if v] == ["0", "1", "2", "3", "4"]  # schema: 0 <= ecog <= 4
    assert set(options["sex"]) - {""} <= {"F", "M"}


# ------------------------------------------------------------------------------------ the routes


def test_page_and_assets_are_served_with_a_strict_content_policy(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form id="score-form"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    script = client.get("/ui/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/style.css").headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("name", ["web.py", "..%2Fweb.py", "index.htm", "app.js.map"])
def test_only_the_listed_assets_are_served(client, name):
    response = client.get(f"/ui/static/{name}")
    assert response.status_code == 404


def test_options_list_each_analyte_with_its_accepted_units_canonical_first(client):
    body = client.get("/ui/options").json()
    by_alias = {a["alias"]: a for a in body["analytes"]}
    assert list(by_alias) == list(ANALYTES)
    plt = by_alias["PLT"]
    assert plt["canonical_unit"] == "10*9/L"
    assert plt["units"][0] == "10*9/L"
    assert {"10*3/uL", "K/uL", "/uL"} <= set(plt["units"])
    assert plt["loinc"] == ["777-3", "26515-7", "49497-1"]
    assert by_alias["HGB"]["units"] == ["g/L", "g/dL"]
    assert by_alias["ALT"]["units"] == ["U/L"]
    assert body["drugs"] == known_drugs()
    assert {"gemcitabine", "carboplatin", "trastuzumab deruxtecan"} <= set(body["drugs"])
    assert body["features"]["plt_last"]["unit"] == "10*9/L"


def test_parse_file_returns_a_scoring_record_as_given(client):
    body = client.post("/ui/parse-file", json=RECORD).json()
    assert body == {"records": [{"record": RECORD, "problems": []}], "warnings": []}


def test_parse_file_gives_one_record_per_episode_and_accepts_lists():
    two = {k: v for k, v in RECORD.items() if k != "episode"}
    two["episodes"] = [
        {"episode_id": "E-a", "index_date": "2025-03-10"},
        {"episode_id": "E-b", "index_date": "2025-06-01"},
    ]
    out = web.parse_patient_file([RECORD, two])["records"]
    assert [r["record"]["episode"]["episode_id"] for r in out] == ["E-web", "E-a", "E-b"]
    assert all("episodes" not in r["record"] for r in out)
    assert out[2]["record"]["labs"] == RECORD["labs"]
    wrapped = web.parse_patient_file({"records": [RECORD]})["records"]
    assert [r["record"] for r in wrapped] == [RECORD]


def test_parse_file_keeps_wrong_values_and_says_where_they_are(client):
    bad = {
        "patient": {"patient_id": "P-x", "ecog": 7},
        "episode": {"episode_id": "E-x", "index_date": "2025-13-01"},
        "labs": [
            {"time": "2025-03-09", "test": "PLT", "value": 40, "unit": "10*9/L"},
            {"time": "2025-03-09", "test": "PLT", "value": "4x2", "unit": "mmol/L"},
        ],
    }
    body = client.post("/ui/parse-file", json=bad).json()
    (entry,) = body["records"]
    assert entry["record"] == bad
    problems = {tuple(p["loc"]): p for p in entry["problems"]}
    assert set(problems) == {("patient", "ecog"), ("episode", "index_date"), ("labs", 1, "value")}
    assert problems[("episode", "index_date")]["given"] == "2025-13-01"
    assert problems[("labs", 1, "value")]["given"] == "4x2"
    assert problems[("patient", "ecog")]["given"] == "7"


def test_parse_file_reads_a_fhir_bundle_through_the_adapter(client):
    bundle = (FHIR_DIR / "augmented" / "anaemia-7-0001-ctit.json").read_bytes()
    response = client.post(
        "/ui/parse-file", content=bundle, headers={"content-type": "application/fhir+json"}
    )
    assert response.status_code == 200, response.text
    (entry,) = response.json()["records"]
    record = entry["record"]
    assert record["patient"]["patient_id"] == "80401638"
    assert record["episode"]["index_date"] == "2025-03-10"  # from the hetrombopag order
    assert record["episode"]["dose_mg"] == 7.5
    assert any(lab["test"] == "777-3" for lab in record["labs"])
    assert entry["problems"] == []
    assert any("kept under their own code" in w for w in response.json()["warnings"])


def test_parse_file_uses_the_given_index_date_when_the_bundle_has_no_order(client):
    bundle = (FHIR_DIR / "carebundle" / "anaemia-7-0000.json").read_bytes()
    response = client.post("/ui/parse-file?index_date=2025-03-10", content=bundle)
    (entry,) = response.json()["records"]
    assert entry["record"]["episode"]["index_date"] == "2025-03-10"


@pytest.mark.parametrize(
    ("content", "loc", "words"),
    [
        (b"{not json", ["body"], "not valid JSON"),
        (b"[1, 2]", ["body", 0], "not a patient record"),
        (b'{"labs": []}', ["body"], "not a patient record"),
        (b'{"records": {"patient": 1}}', ["body", "records"], "must be a list"),
        (b"[]", ["body"], "no patient episode"),
        (b'{"resourceType": "Observation", "status": "final"}', ["body"], "no Patient"),
    ],
)
def test_parse_file_rejects_what_is_not_a_patient_file(client, content, loc, words):
    response = client.post("/ui/parse-file", content=content)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert words in error["msg"]
