"""The clinician page: its routes (in-process) and the page itself in headless Chromium."""

from __future__ import annotations

import html
import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from data.cohort import SUBTYPES
from data.drugs import known_drugs
from data.units import ANALYTES
from features.registry import feature_label
from serving.http import web
from serving.http.app import create_app
from serving.settings import ServingSettings

FHIR_DIR = Path(__file__).parents[1] / "fixtures" / "fhir"
STATIC = resources.files("serving.http").joinpath("static")

RECORD = {
    "patient": {"patient_id": "P-web", "sex": "F", "birth_date": "1970-01-02", "subtype": "TNBC"},
    "episode": {"episode_id": "E-web", "index_date": "2025-03-10", "dose_mg": 7.5},
    "labs": [{"time": "2025-03-09T08:00:00", "test": "777-3", "value": 42, "unit": "10*3/uL"}],
    "regimens": [{"start_date": "2025-03-01", "drugs": ["gemcitabine", "carboplatin"], "line": 2}],
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    """The page's router alone: its routes need neither a model nor the rest of the service."""
    app = FastAPI(docs_url=None, redoc_url=None)  # /docs is the router's (as in create_app)
    app.state.settings = ServingSettings(model_uri="unused")  # no token required
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
    # the subtypes the cohort contract knows (the schema takes free text; the loader warns)
    assert [v for v in options["subtype"] if v] == list(SUBTYPES)
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


def test_the_clinical_labels_of_the_page_are_the_registry_labels(client):
    page = client.get("/").text
    assert "{{" not in page
    for name in ("ecog", "subtype", "bone_mets", "marrow_involvement", "prior_radiotherapy"):
        assert f'<label for="{name}">{html.escape(feature_label(name))}</label>' in page
    assert '<label for="marrow_involvement">Bone-marrow involvement</label>' in page


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


def test_parse_file_echoes_an_integer_beyond_64_bits(client):
    # a numeric MRN or a mistyped value: echoed for the person to correct, never a 500
    big = {**RECORD, "patient": {**RECORD["patient"], "patient_id": 2**64}}
    response = client.post("/ui/parse-file", json=big)
    assert response.status_code == 200
    assert response.json()["records"][0]["record"]["patient"]["patient_id"] == 2**64


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


def test_parse_file_needs_the_token_when_the_service_has_one():
    app = FastAPI()
    app.state.settings = ServingSettings(model_uri="unused", api_token="s3cret")
    app.include_router(web.router)
    client = TestClient(app)
    assert client.post("/ui/parse-file", json=RECORD).status_code == 401
    wrong = client.post("/ui/parse-file", json=RECORD, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = client.post("/ui/parse-file", json=RECORD, headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200
    # This router alone does not guard the page; create_app's AccessGate does, for every route
    # but /healthz (tests/serving/test_access.py).
    assert client.get("/").status_code == 200
    assert client.get("/ui/options").status_code == 200


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


# ------------------------------------------------------------------------------------ the browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "web"

browser = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="headless Chromium and chromedriver are not installed at /usr/bin",
)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` under a real uvicorn server on a free port of 127.0.0.1; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def chrome(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--lang=en-US",
        "--window-size=1400,1200",
        f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every URL the browser asked for since the last call (Chrome performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def wait_for(driver: webdriver.Chrome, condition, timeout: float = 20):
    # a form post reloads the page: elements found mid-navigation go stale, so poll again
    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(condition)


def open_page(driver: webdriver.Chrome, url: str) -> None:
    driver.get(url)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#labs-body option[value=PLT]"))


def screenshot(driver: webdriver.Chrome, name: str, element=None) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if element is not None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


@pytest.fixture(scope="module")
def router_url() -> Iterator[str]:
    """The page's router alone under uvicorn (for the page's own logic)."""
    app = FastAPI()
    app.state.settings = ServingSettings(model_uri="unused")
    app.include_router(web.router)
    with serve(app) as url:
        yield url


@browser
@pytest.mark.browser
def test_page_helpers_compute_the_waterfall_on_the_probability_scale(chrome, router_url):
    open_page(chrome, router_url)
    ln3 = math.log(3)
    wf = chrome.execute_script(
        "return window.ctit.waterfallSteps(0, {a: arguments[0], b: -arguments[0], c: 0.5}, 8)", ln3
    )
    assert wf["base"]["p"] == pytest.approx(0.5)
    # Ordered by |log-odds|: a (ln 3 ~ 1.10), b (-1.10), c (0.5); ties broken by name.
    assert [s["name"] for s in wf["steps"]] == ["a", "b", "c"]
    a, b, c = wf["steps"]
    assert (a["start"], a["end"]) == pytest.approx((0.5, 0.75))  # odds 1 -> 3
    assert (b["start"], b["end"]) == pytest.approx((0.75, 0.5))  # odds 3 -> 1
    assert c["end"] == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert wf["final"]["logodds"] == pytest.approx(0.5)
    many = {f"f{i}": 0.1 * (i + 1) for i in range(10)}
    pooled = chrome.execute_script("return window.ctit.waterfallSteps(-1, arguments[0], 8)", many)
    assert len(pooled["steps"]) == 9
    assert pooled["steps"][0]["name"] == "f9"
    other = pooled["steps"][-1]
    assert other["kind"] == "other" and other["count"] == 2
    assert other["logodds"] == pytest.approx(0.1 + 0.2)
    assert pooled["final"]["logodds"] == pytest.approx(-1 + sum(many.values()))
    nine = {f"f{i}": 0.1 for i in range(9)}  # one more than the limit: shown, not pooled
    assert (
        len(
            chrome.execute_script(
                "return window.ctit.waterfallSteps(0, arguments[0], 8).steps", nine
            )
        )
        == 9
    )


@browser
@pytest.mark.browser
def test_page_helpers_map_the_waterfall_through_the_calibration_curve(chrome, router_url):
    open_page(chrome, router_url)
    curve = {"margin": [-2, 0, 2], "probability": [0.1, 0.3, 0.9]}
    at = chrome.execute_script(
        "var f = window.ctit.calibrationMap(arguments[0]);"
        "return arguments[1].map(function (m) { return f(m); });",
        curve,
        [-5, -2, -1, 0, 0.5, 2, 7],
    )
    # Linear between knots, clamped at the ends.
    assert at == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.45, 0.9, 0.9])
    for bad in (
        None,
        {"margin": [0, 1], "probability": [0.2]},
        {"margin": [0], "probability": [0.2]},
        {"margin": [1, 0], "probability": [0.2, 0.3]},
        {"margin": [0, 1], "probability": [0.2, 1.5]},
    ):
        assert chrome.execute_script("return window.ctit.calibrationMap(arguments[0])", bad) is None
    # Base 0, steps +1 (a) and -0.5 (b): cumulative margins 0 -> 1 -> 0.5 through the curve; the
    # last bar ends at the given calibrated probability, not at the curve's 0.45.
    wf = chrome.execute_script(
        "var f = window.ctit.calibrationMap(arguments[0]);"
        "return window.ctit.waterfallSteps(0, {a: 1, b: -0.5}, 8, f, 0.4512);",
        curve,
    )
    assert wf["base"]["p"] == pytest.approx(0.3)
    a, b = wf["steps"]
    assert (a["start"], a["end"]) == pytest.approx((0.3, 0.6))
    assert (b["start"], b["end"]) == pytest.approx((0.6, 0.4512))
    assert wf["final"] == pytest.approx({"logodds": 0.5, "p": 0.4512})


@browser
@pytest.mark.browser
def test_without_the_model_card_the_chart_says_it_is_uncalibrated(chrome, router_url):
    open_page(chrome, router_url)  # the router alone: GET v1/model is not there (404)
    wait_for(chrome, lambda d: "unavailable" in d.find_element(By.ID, "model-line").text)
    answer = {
        "episode_id": "E-1",
        "probability": 0.31,
        "interval": [0.2, 0.4],
        "band": "low",
        "margin": -2.0,
        "base_value": -1.0,
        "contributions": {"plt_last": -0.75, "alb_last": -0.25},
        "top_factors": [],
        "warnings": [],
        "model": {"name": "m", "version": "1", "label_definition": "x"},
    }
    chrome.execute_script("window.ctit.renderResult(arguments[0])", answer)
    chart = chrome.find_element(By.ID, "waterfall")
    assert chart.get_attribute("data-scale") == "logistic"
    final = 1 / (1 + math.exp(2.0))
    assert float(chart.get_attribute("data-final-probability")) == pytest.approx(final)
    assert float(chart.get_attribute("data-base-probability")) == pytest.approx(
        1 / (1 + math.exp(1.0))
    )
    note = chrome.find_element(By.ID, "chart-note").text
    assert "calibration could not be loaded" in note
    assert f"end at {100 * final:.1f}%" in note
    assert "Uncalibrated probability of response" in chart.text


@browser
@pytest.mark.browser
def test_page_builds_its_field_lists_from_the_contract(chrome, router_url):
    from data.contract import EPISODES, PATIENTS

    open_page(chrome, router_url)
    fields = chrome.execute_script("return window.ctit.fields()")
    assert fields["tristate"] == list(PATIENTS.names("boolean"))
    # every patient column with an input on the form, in the contract's order (site has none)
    assert fields["patient"] == [n for n in PATIENTS.names() if n != "site"]
    assert fields["episode"] == [n for n in EPISODES.names() if n != "patient_id"]


@browser
@pytest.mark.browser
def test_page_helpers_parse_numbers_and_error_locations(chrome, router_url):
    open_page(chrome, router_url)
    parse = "return window.ctit.parseNumber(arguments[0])"
    assert chrome.execute_script(parse, " 42 ") == 42
    assert chrome.execute_script(parse, "4.2") == 4.2
    assert chrome.execute_script(parse, "1e3") == 1000
    for text in ("4,2", "4x2", "", "--1", "1.2.3"):
        assert chrome.execute_script(f"return isNaN({parse[7:]})", text), text
    target = "return window.ctit.locToTarget(arguments[0])"
    assert chrome.execute_script(target, ["body", "labs", 3, "unit"]) == {
        "section": "labs",
        "index": 3,
        "field": "unit",
    }
    assert chrome.execute_script(target, ["body", "regimens", 0, "drugs", 1]) == {
        "section": "regimens",
        "index": 0,
        "field": "drugs",
        "sub": 1,
    }
    assert chrome.execute_script(target, ["body", "episodes", "index_date"]) == {
        "section": "episode",
        "field": "index_date",
    }
    assert chrome.execute_script(target, ["body"]) is None
    shown = "return arguments[0].map(window.ctit.formatProbability)"
    assert chrome.execute_script(shown, [0.004, 0.005, 0.424, 0.5, 0.995, 0.996]) == [
        "<1%",
        "1%",
        "42%",
        "50%",
        ">99%",
        ">99%",
    ]


@browser
@pytest.mark.browser
def test_every_field_in_the_live_page_has_a_label_and_buttons_are_buttons(chrome, router_url):
    open_page(chrome, router_url)
    chrome.find_element(By.ID, "add-lab").click()
    chrome.find_element(By.ID, "add-regimen").click()
    unlabelled = chrome.execute_script(
        """return Array.from(document.querySelectorAll('input, select, textarea'))
             .filter(e => !e.closest('template') && e.type !== 'hidden')
             .filter(e => !(e.labels && e.labels.length && e.labels[0].textContent.trim()))
             .map(e => e.id || e.outerHTML)"""
    )
    assert unlabelled == []
    labels = chrome.execute_script(
        "return Array.from(document.querySelectorAll('#labs-body label')).map(l => l.textContent)"
    )
    assert "Value, lab row 2" in labels
    # Actions are <button>s: no click handlers on links without a target or on focusable divs.
    fake = "[onclick], a:not([href]), div[tabindex]:not([tabindex='-1']), span[tabindex]"
    assert chrome.execute_script(f'return document.querySelectorAll("{fake}").length') == 0
    types = chrome.execute_script(
        "return Array.from(document.querySelectorAll('button')).map(b => b.type)"
    )
    assert types.count("submit") == 1


# ------------------------------------------------------------------------------ end to end


@contextmanager
def service(model_dir: Path, directory: Path, token: str | None = None) -> Iterator[str]:
    """The real service: `create_app` loading the saved model, under uvicorn on 127.0.0.1."""
    settings = ServingSettings(
        model_uri=str(model_dir), audit_path=directory / "audit.db", api_token=token
    )
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def service_url(model_dir, tmp_path_factory) -> Iterator[str]:
    """The service with the small model of tests/serving/conftest.py (`model_dir`, `scorer`)."""
    with service(model_dir, tmp_path_factory.mktemp("service")) as url:
        yield url


def _field(driver, row, name):
    return row.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]')


def _lab_rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#labs-body .lab-row")


def _fill_lab(driver, row, test, value, unit, date, clock=None):
    Select(_field(driver, row, "test")).select_by_value(test)
    Select(_field(driver, row, "unit")).select_by_value(unit)
    _field(driver, row, "value").send_keys(value)
    _field(driver, row, "date").send_keys(date)  # mm dd yyyy: the browser runs with --lang=en-US
    if clock:
        _field(driver, row, "clock").send_keys(clock)


def _error_next_to(driver, element) -> str:
    """The visible error message tied to a field (aria-describedby), in the same container."""
    ids = (element.get_attribute("aria-describedby") or "").split()
    assert element.get_attribute("aria-invalid") == "true"
    for span_id in ids:
        span = driver.find_element(By.ID, span_id)
        if span.is_displayed() and span.text:
            parent = element.find_element(By.XPATH, "..")
            assert span.find_element(By.XPATH, "..") == parent  # next to the field
            return span.text
    raise AssertionError(f"no visible error next to {element.get_attribute('id')}")


def _assert_local_only(driver, base_url: str) -> None:
    """No network request went anywhere but this server (browser-internal schemes stay local)."""
    urls = requested_urls(driver)
    assert any(u.startswith(base_url) for u in urls), "the performance log recorded the page"
    network = [u for u in urls if re.match(r"^(https?|wss?|ftp)://", u, re.I)]
    assert [u for u in network if not u.startswith(base_url)] == []


def percent(p: float) -> str:
    """The page's rendering of a probability (whole percent; <1% and >99% at the ends)."""
    return "<1%" if p < 0.005 else ">99%" if p >= 0.995 else f"{round(100 * p)}%"


EXPECTED_BODY = {
    "patient": {
        "patient_id": "P-web",
        "sex": "F",
        "birth_date": "1970-01-02",
        "race": "Asian",
        "subtype": "HER2+",
        "ecog": 1,
        "bone_mets": True,
        "marrow_involvement": False,
    },
    "episode": {
        "episode_id": "form-episode",
        "index_date": "2025-03-10",
        "dose_mg": 7.5,
    },
    "labs": [
        {"time": "2025-03-09T08:00:00", "test": "PLT", "value": 32, "unit": "10*9/L"},
        {"time": "2025-03-09", "test": "HGB", "value": 9.8, "unit": "g/dL"},
        {"time": "2025-02-27", "test": "PLT", "value": 61000, "unit": "/uL"},
    ],
    "regimens": [
        {"drugs": ["gemcitabine", "carboplatin"], "start_date": "2025-03-01", "line": 2, "cycle": 3}
    ],
}


@browser
@pytest.mark.browser
def test_clinician_fills_the_form_and_sees_the_result_and_chart(chrome, service_url, scorer):
    requested_urls(chrome)  # start the network record here
    open_page(chrome, service_url)
    info = scorer.model.info
    model_line = chrome.find_element(By.ID, "model-line")
    wait_for(chrome, lambda d: info["name"] in model_line.text)
    assert f"version {info['version']}" in model_line.text
    find = chrome.find_element
    find(By.ID, "patient_id").send_keys("P-web")
    find(By.ID, "index_date").send_keys("03102025")
    find(By.ID, "dose_mg").send_keys("7.5")
    find(By.ID, "birth_date").send_keys("01021970")
    Select(find(By.ID, "sex")).select_by_value("F")
    find(By.CSS_SELECTOR, "#clinical-section > summary").click()  # folded away until opened
    Select(find(By.ID, "ecog")).select_by_value("1")
    Select(find(By.ID, "subtype")).select_by_value("HER2+")
    Select(find(By.ID, "bone_mets")).select_by_value("true")
    Select(find(By.ID, "marrow_involvement")).select_by_value("false")
    find(By.ID, "race").send_keys("Asian")
    # The unit list follows the test: accepted units of that analyte only, canonical first.
    (row,) = _lab_rows(chrome)
    units = [o.get_attribute("value") for o in Select(_field(chrome, row, "unit")).options]
    assert units == ["10*9/L", "10*3/uL", "10^9/L", "10^3/uL", "K/uL", "/uL", "10*3/mm3"]
    _fill_lab(chrome, row, "PLT", "32", "10*9/L", "03092025", "0800AM")
    find(By.ID, "add-lab").click()
    _fill_lab(chrome, _lab_rows(chrome)[1], "HGB", "9.8", "g/dL", "03092025")
    hgb_units = Select(_field(chrome, _lab_rows(chrome)[1], "unit")).options
    assert [o.get_attribute("value") for o in hgb_units] == ["g/L", "g/dL"]
    find(By.ID, "add-lab").click()
    _fill_lab(chrome, _lab_rows(chrome)[2], "PLT", "61000", "/uL", "02272025")
    # Drug names come from the drug table (datalist autocomplete).
    drug_list = chrome.execute_script(
        "return Array.from(document.querySelectorAll('#drug-options option')).map(o => o.value)"
    )
    assert drug_list == known_drugs()
    regimen = find(By.CSS_SELECTOR, "#regimens-body .regimen-row")
    assert _field(chrome, regimen, "drug").get_attribute("list") == "drug-options"
    _field(chrome, regimen, "drug").send_keys("gemcitabine")
    regimen.find_element(By.CSS_SELECTOR, '[data-action="add-drug"]').click()
    chrome.switch_to.active_element.send_keys("carboplatin")  # focus moved to the new drug field
    _field(chrome, regimen, "start_date").send_keys("03012025")
    _field(chrome, regimen, "line").send_keys("2")
    _field(chrome, regimen, "cycle").send_keys("3" + Keys.ENTER)  # Enter submits the form

    wait_for(
        chrome,
        lambda d: (
            d.find_elements(By.ID, "waterfall") or d.find_element(By.ID, "error-summary").text
        ),
    )
    assert not find(By.ID, "error-summary").is_displayed(), find(By.ID, "error-summary").text
    body = chrome.execute_script("return window.ctit.collectForm().body")
    assert body == EXPECTED_BODY
    answer = scorer.score(body)
    assert find(By.ID, "result-probability").text == percent(answer["probability"])
    low, high = answer["interval"]
    interval = find(By.ID, "result-interval").text
    assert f"{percent(low)} to {percent(high)}" in interval
    assert answer["band"] in find(By.ID, "result-band").text.lower()
    warnings = [
        " ".join(li.get_attribute("textContent").split())
        for li in find(By.ID, "result-warnings").find_elements(By.TAG_NAME, "li")
    ]
    assert warnings == [" ".join(w["message"].split()) for w in answer["warnings"]]
    factors = [li.text for li in find(By.ID, "result-factors").find_elements(By.TAG_NAME, "li")]
    assert factors == [" ".join(f["text"].split()) for f in answer["top_factors"]]
    model_box = find(By.ID, "result-model").text
    assert f"{info['name']}, version {info['version']}" in model_box
    assert info["label_definition"] in model_box
    link = find(By.ID, "result-model").find_element(By.TAG_NAME, "a")
    assert link.get_attribute("href") == service_url + "v1/model"

    # The waterfall: baseline, the 8 largest contributions, the rest pooled, the model output.
    # Log-odds are for reviewers: drawn only once the toggle is on.
    assert not find(By.ID, "waterfall").find_elements(By.CSS_SELECTOR, "text.logodds")
    assert "log-odds" not in find(By.ID, "chart-note").text
    find(By.ID, "show-logodds").click()
    chart = find(By.ID, "waterfall")
    assert "Calibrated probability of response" in chart.text
    assert "uncalibrated" not in chart.text.lower()
    assert chart.get_attribute("data-scale") == "calibrated"
    rows = chart.find_elements(By.CSS_SELECTOR, "g.wf-row")
    contributions = sorted(answer["contributions"].items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    assert len(rows) == 1 + 8 + 1 + 1
    shown = [r.find_element(By.CSS_SELECTOR, "text.logodds").text for r in rows]

    def logodds(x: float) -> str:
        return ("+" if x > 0 else "−" if x < 0 else "±") + f"{abs(x):.2f}"

    assert shown[0] == logodds(answer["base_value"])
    assert shown[1:9] == [logodds(v) for _, v in contributions[:8]]
    assert shown[9] == logodds(sum(v for _, v in contributions[8:]))
    assert shown[10] == logodds(answer["margin"])
    # It starts at the calibrated baseline and ends at the calibrated probability of the headline.
    calibrator = scorer.model.calibrator
    base = float(calibrator.transform_margin(answer["base_value"]))
    assert float(chart.get_attribute("data-base-probability")) == pytest.approx(base, abs=1e-5)
    assert float(chart.get_attribute("data-final-probability")) == answer["probability"]
    ends = [float(r.get_attribute("data-end")) for r in rows]
    assert ends[0] == pytest.approx(base, abs=1e-5)
    assert ends[-1] == ends[-2] == answer["probability"]  # the last step ends at the headline
    cumulative = answer["base_value"]
    for row, (_, value) in zip(rows[1:9], contributions[:8], strict=True):
        cumulative += value  # each step ends at the calibrator of the cumulative margin
        expected = float(calibrator.transform_margin(cumulative))
        assert float(row.get_attribute("data-end")) == pytest.approx(expected, abs=0.002)
    labels = [r.find_elements(By.TAG_NAME, "text")[1].text for r in (rows[0], rows[-1])]
    assert labels == [percent(base), find(By.ID, "result-probability").text]
    table = [
        [td.get_attribute("textContent") for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in find(By.CSS_SELECTOR, "table.chart-table").find_elements(
            By.CSS_SELECTOR, "tbody tr"
        )
    ]
    assert table[0][0] == "Average patient (calibrated baseline)"
    assert table[0][2] == f"{100 * base:.1f}%"
    assert table[-1][0] == "This patient (calibrated probability)"
    assert table[-1][2] == f"{100 * answer['probability']:.1f}%"
    assert table[-2][2].endswith(f"→ {100 * answer['probability']:.1f}%")
    note = find(By.ID, "chart-note").text
    assert f"calibrated probability ({100 * answer['probability']:.1f}%" in note
    assert "log-odds" in note and "could not be loaded" not in note
    for bar in chart.find_elements(By.CSS_SELECTOR, "g.wf-row[data-kind=raise] rect"):
        assert "bar-raise" in bar.get_attribute("class")
    assert find(By.ID, "result").get_attribute("aria-live") == "polite"
    screenshot(chrome, "result", find(By.ID, "result-heading"))
    screenshot(chrome, "result-chart", chart)
    chrome.execute_script("window.scrollTo(0, 0)")
    screenshot(chrome, "filled-form-top")
    _assert_local_only(chrome, service_url)


@browser
@pytest.mark.browser
def test_invalid_input_is_shown_by_the_field_and_nothing_typed_is_lost(chrome, service_url, scorer):
    requested_urls(chrome)
    open_page(chrome, service_url)
    find = chrome.find_element
    (row,) = _lab_rows(chrome)
    _fill_lab(chrome, row, "PLT", "4x2", "10*9/L", "03092025")
    find(By.ID, "dose_mg").send_keys("7.5")
    find(By.ID, "submit").click()
    # Client-side checks: the index date is required, the value must be a number.
    summary = wait_for(chrome, lambda d: d.find_element(By.ID, "error-summary"))
    assert summary.is_displayed() and summary.get_attribute("role") == "alert"
    assert chrome.switch_to.active_element == summary
    assert "Enter the index date" in _error_next_to(chrome, find(By.ID, "index_date"))
    assert "Enter a number" in _error_next_to(chrome, _field(chrome, row, "value"))
    assert find(By.ID, "result-placeholder").is_displayed()  # nothing was sent
    screenshot(chrome, "client-side-errors", summary)

    # The server's checks: a negative platelet count comes back as a 422 for labs[0].value.
    find(By.ID, "index_date").send_keys("03102025")
    value = _field(chrome, row, "value")
    value.clear()
    value.send_keys("-5")
    find(By.ID, "submit").click()
    wait_for(chrome, lambda d: value.get_attribute("aria-invalid") == "true")
    body = chrome.execute_script("return window.ctit.collectForm().body")
    answer = httpx.post(service_url + "v1/score", json=body)
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "labs", 0, "value"]
    assert _error_next_to(chrome, value) == error["msg"]
    link = find(By.CSS_SELECTOR, "#error-list a")
    assert link.get_attribute("href").endswith("#" + value.get_attribute("id"))
    # Everything typed is still there.
    assert value.get_attribute("value") == "-5"
    assert find(By.ID, "index_date").get_attribute("value") == "2025-03-10"
    assert find(By.ID, "dose_mg").get_attribute("value") == "7.5"
    assert _field(chrome, row, "date").get_attribute("value") == "2025-03-09"
    screenshot(chrome, "server-error-by-field", value)
    link.click()
    assert chrome.switch_to.active_element == value
    # Editing the field clears its own mark.
    value.send_keys(Keys.BACKSPACE * 2 + "40")
    assert value.get_attribute("aria-invalid") is None
    _assert_local_only(chrome, service_url)


def _load_file(driver, path: Path) -> str:
    driver.find_element(By.ID, "patient-file").send_keys(str(path))
    status = wait_for(
        driver, lambda d: d.find_element(By.ID, "file-status").text.startswith("Loaded")
    )
    assert status
    return driver.find_element(By.ID, "file-status").text


@browser
@pytest.mark.browser
def test_patient_file_fills_the_form_and_an_unknown_unit_is_marked_by_its_field(
    chrome, service_url, tmp_path
):
    record = {
        "patient": {**RECORD["patient"], "site": "north"},
        "episode": RECORD["episode"],
        "labs": [
            {"time": "2025-03-09T08:00:00", "test": "777-3", "value": 42, "unit": "10*3/uL"},
            {"time": "2025-03-09", "test": "PLT", "value": 38, "unit": "mmol/L"},
        ],
        "regimens": [{"start_date": "2025-03-01", "drugs": "gemcitabine;carboplatin", "line": 2}],
    }
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    requested_urls(chrome)
    open_page(chrome, service_url)
    assert "P-web" in _load_file(chrome, path)
    find = chrome.find_element
    assert find(By.ID, "patient_id").get_attribute("value") == "P-web"
    assert find(By.ID, "index_date").get_attribute("value") == "2025-03-10"
    assert find(By.ID, "subtype").get_attribute("value") == "TNBC"
    first, second = _lab_rows(chrome)
    assert _field(chrome, first, "test").get_attribute("value") == "PLT"  # LOINC 777-3
    assert _field(chrome, first, "unit").get_attribute("value") == "10*3/uL"
    assert _field(chrome, first, "clock").get_attribute("value") == "08:00"
    unit = _field(chrome, second, "unit")
    assert unit.get_attribute("value") == "mmol/L"  # kept, and flagged in the list
    assert "not an accepted unit" in Select(unit).first_selected_option.text
    drugs = find(By.CSS_SELECTOR, "#regimens-body").find_elements(By.CSS_SELECTOR, "[list]")
    assert [d.get_attribute("value") for d in drugs] == ["gemcitabine", "carboplatin"]

    find(By.ID, "submit").click()
    wait_for(chrome, lambda d: unit.get_attribute("aria-invalid") == "true")
    body = chrome.execute_script("return window.ctit.collectForm().body")
    assert body["patient"]["site"] == "north"  # fields the form has no input for are kept
    (error,) = httpx.post(service_url + "v1/score", json=body).json()["detail"]
    assert error["loc"] == ["body", "labs", 1, "unit"]
    assert _error_next_to(chrome, unit) == error["msg"]
    assert "mmol/L" in error["msg"]
    screenshot(chrome, "file-unknown-unit", unit)
    Select(unit).select_by_value("10*9/L")
    find(By.ID, "submit").click()
    wait_for(chrome, lambda d: d.find_elements(By.ID, "waterfall"))
    assert not find(By.ID, "error-summary").is_displayed()
    _assert_local_only(chrome, service_url)


@browser
@pytest.mark.browser
def test_fhir_bundle_is_read_by_the_server_and_scored(chrome, service_url, scorer):
    bundle = FHIR_DIR / "augmented" / "anaemia-7-0001-ctit.json"
    open_page(chrome, service_url)
    status = _load_file(chrome, bundle)
    assert "80401638" in status and "kept under their own code" in status
    find = chrome.find_element
    assert find(By.ID, "index_date").get_attribute("value") == "2025-03-10"
    assert find(By.ID, "dose_mg").get_attribute("value") == "7.5"
    assert find(By.ID, "bone_mets").get_attribute("value") == "true"
    assert find(By.ID, "birth_date").get_attribute("value") == "1958-06-01"
    assert len(_lab_rows(chrome)) == 22
    regimens = find(By.ID, "regimens-body").find_elements(By.CSS_SELECTOR, ".regimen-row")
    assert len(regimens) == 3
    find(By.ID, "submit").click()
    wait_for(
        chrome, lambda d: d.find_elements(By.ID, "waterfall") or find(By.ID, "error-list").text
    )
    assert not find(By.ID, "error-summary").is_displayed(), find(By.ID, "error-list").text
    answer = scorer.score(chrome.execute_script("return window.ctit.collectForm().body"))
    assert find(By.ID, "result-probability").text == percent(answer["probability"])
    screenshot(chrome, "fhir-result", find(By.ID, "result-heading"))


@browser
@pytest.mark.browser
def test_with_a_token_the_page_asks_to_sign_in_first(chrome, model_dir, tmp_path):
    with service(model_dir, tmp_path, token="s3cret-token") as url:
        chrome.get(url)
        find = chrome.find_element
        token = find(By.ID, "token")  # the sign-in form (401), not the page
        assert not chrome.find_elements(By.ID, "score-form")
        assert find(By.CSS_SELECTOR, "label[for=token]").text == "Access token"
        token.send_keys("wrong-token", Keys.ENTER)
        wait_for(chrome, lambda d: "not right" in d.find_element(By.ID, "token-error").text)
        find(By.ID, "token").send_keys("s3cret-token", Keys.ENTER)
        wait_for(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, "#labs-body option[value=PLT]"))
        wait_for(chrome, lambda d: "version" in find(By.ID, "model-line").text)
        assert chrome.get_cookie("ctit_session")["httpOnly"] is True
        # Signed in by the cookie: the page does not ask for a token again.
        assert not find(By.ID, "access-panel").is_displayed()
        find(By.ID, "index_date").send_keys("03102025")
        (row,) = _lab_rows(chrome)
        _fill_lab(chrome, row, "PLT", "30", "10*9/L", "03092025")
        find(By.ID, "submit").click()
        wait_for(chrome, lambda d: d.find_elements(By.ID, "waterfall"))
        screenshot(chrome, "signed-in-result")


# ------------------------------------------------------------ any screen, stale results, docs

EXAMPLES_DIR = Path(__file__).parents[2] / "examples"


def test_examples_icon_and_docs_assets_are_served_from_this_server(client):
    listed = client.get("/ui/examples").json()
    assert [e["name"] for e in listed] == list(web.EXAMPLES)
    for entry in listed:
        record = client.get(f"/ui/examples/{entry['name']}").json()
        # The CLI tour's examples/ are the very files the page offers (one owner).
        on_disk = json.loads((EXAMPLES_DIR / f"{entry['name']}.json").read_text(encoding="utf-8"))
        assert record == on_disk
    assert client.get("/ui/examples/../web").status_code == 404
    assert client.get("/favicon.ico").headers["content-type"].startswith("image/svg+xml")
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    assert not re.search(r"https?://", docs.text)  # nothing from a CDN
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 500_000
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert client.get("/docs/assets/index.html").status_code == 404


def _overflow(driver) -> dict:
    return driver.execute_script(
        """return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
                   wide: Array.from(document.querySelectorAll('body *'))
                     .filter(e => e.getClientRects().length
                                  && e.getBoundingClientRect().right > window.innerWidth + 0.5
                                  && !e.closest('.visually-hidden'))
                     .slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)}"""
    )


def _load_example(driver, index: int = 0) -> None:
    Select(driver.find_element(By.ID, "example-choice")).select_by_index(index)
    driver.find_element(By.ID, "example-load").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "file-status").text.startswith("Loaded"))


def _score_and_wait(driver) -> None:
    driver.find_element(By.ID, "submit").click()
    wait_for(
        driver,
        lambda d: d.find_elements(By.ID, "waterfall") or d.find_element(By.ID, "error-list").text,
    )
    assert not driver.find_element(By.ID, "error-summary").is_displayed()


@browser
@pytest.mark.browser
def test_example_loader_fills_the_form_with_the_shipped_record(chrome, service_url, scorer):
    open_page(chrome, service_url)
    wait_for(chrome, lambda d: Select(d.find_element(By.ID, "example-choice")).options[0].text)
    titles = [o.text for o in Select(chrome.find_element(By.ID, "example-choice")).options]
    assert titles == list(web.EXAMPLES.values())
    _load_example(chrome, 1)
    record = json.loads((EXAMPLES_DIR / "patient-low.json").read_text(encoding="utf-8"))
    body = chrome.execute_script("return window.ctit.collectForm().body")
    assert body["patient"]["patient_id"] == record["patient"]["patient_id"]
    assert body["episode"]["index_date"] == record["episode"]["index_date"]
    assert len(body["labs"]) == len(record["labs"])
    assert [r["drugs"] for r in body["regimens"]] == [r["drugs"] for r in record["regimens"]]
    # The collapsed clinical section says what it holds.
    assert "8 of 8 given" in chrome.find_element(By.ID, "clinical-note").text
    _score_and_wait(chrome)
    shown = chrome.find_element(By.ID, "result-probability").text
    assert shown == percent(scorer.score(record)["probability"])


@browser
@pytest.mark.browser
def test_a_form_edit_after_a_result_marks_it_stale_and_a_failed_check_clears_it(
    chrome, service_url
):
    open_page(chrome, service_url)
    wait_for(chrome, lambda d: Select(d.find_element(By.ID, "example-choice")).options[0].text)
    _load_example(chrome, 0)
    _score_and_wait(chrome)
    result = chrome.find_element(By.ID, "result")
    assert "stale" not in result.get_attribute("class")
    assert not chrome.find_element(By.ID, "result-stale").is_displayed()
    shown = chrome.find_element(By.ID, "result-probability").text
    value = _field(chrome, _lab_rows(chrome)[0], "value")
    value.send_keys("abc")  # one keystroke is enough: the result no longer matches the form
    assert "stale" in result.get_attribute("class")
    banner = chrome.find_element(By.ID, "result-stale")
    assert banner.is_displayed() and "Out of date" in banner.text
    probability = chrome.find_element(By.ID, "result-probability")
    assert probability.text == shown
    assert probability.value_of_css_property("text-decoration-line") == "line-through"
    screenshot(chrome, "stale-result", banner)
    # The form fails its check: the old number leaves the screen.
    chrome.find_element(By.ID, "submit").click()
    wait_for(chrome, lambda d: d.find_element(By.ID, "error-summary").is_displayed())
    assert not chrome.find_elements(By.ID, "result-probability")
    assert "No result" in chrome.find_element(By.ID, "result-placeholder").text
    # Fixed and scored again: a fresh result, not marked.
    value.send_keys(Keys.BACKSPACE * 3)
    _score_and_wait(chrome)
    assert "stale" not in chrome.find_element(By.ID, "result").get_attribute("class")
    # Adding a row changes the request too.
    chrome.find_element(By.ID, "add-lab").click()
    assert "stale" in chrome.find_element(By.ID, "result").get_attribute("class")


ANSWER = {
    "episode_id": "E-1",
    "probability": 0.62,
    "interval": [0.41, 0.7],
    "band": "intermediate",
    "margin": 0.5,
    "base_value": -0.2,
    "contributions": {"plt_last": 0.9, "plt_slope_7d": -0.2},
    "top_factors": [
        {"feature": "plt_slope_7d", "group": "platelet_history", "value": None,
         "contribution": -0.2, "text": "platelet trend: not measured: lowers the chance"},
    ],
    "warnings": [],
    "model": {"name": "m", "version": "3", "label_definition": "plt100_or_rise50_d14"},
}  # fmt: skip


@browser
@pytest.mark.browser
def test_the_interval_is_a_bar_with_its_meaning_and_the_day_curve_appears_when_given(
    chrome, service_url
):
    open_page(chrome, service_url)
    chrome.execute_script("window.ctit.renderResult(arguments[0])", ANSWER)
    bar = chrome.find_element(By.ID, "interval-bar")
    width = bar.size["width"]
    band = bar.find_element(By.CSS_SELECTOR, ".interval-range")
    point = bar.find_element(By.CSS_SELECTOR, ".interval-point")
    assert band.location["x"] - bar.location["x"] == pytest.approx(0.41 * width, abs=1.5)
    assert band.size["width"] == pytest.approx((0.70 - 0.41) * width, abs=1.5)
    assert point.location["x"] + point.size["width"] / 2 - bar.location["x"] == pytest.approx(
        0.62 * width, abs=1.5
    )
    assert (
        "80% uncertainty interval: 41% to 70%" in chrome.find_element(By.ID, "result-interval").text
    )
    assert "10th to 90th percentile" in chrome.find_element(By.ID, "result-interval-meaning").text
    # The outcome in words, never only its code.
    outcome = chrome.find_element(By.ID, "result-outcome").text
    assert "platelets reach 100 ×10⁹/L" in outcome and "within 14 days" in outcome
    # A missing value reads "not measured" in the chart, with the full clinical name.
    labels = [t.text for t in chrome.find_elements(By.CSS_SELECTOR, "#waterfall text.wf-label")]
    assert "Platelet trend over 7 days: not measured" in labels
    assert not chrome.find_elements(By.ID, "result-by-day")

    by_day = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.58, 0.6, 0.61, 0.62, 0.62, 0.62, 0.62]
    later = {**ANSWER, "interval_level": 0.9, "response_by_day": by_day,
             "median_days_to_response": 6}  # fmt: skip
    chrome.execute_script("window.ctit.renderResult(arguments[0])", later)
    assert "90% uncertainty interval" in chrome.find_element(By.ID, "result-interval").text
    assert "90%" in chrome.find_element(By.ID, "result-interval-meaning").text
    summary = chrome.find_element(By.ID, "result-by-day-summary").text
    assert summary == "By day 7: 55% · by day 14: 62%."
    assert "day 6" in chrome.find_element(By.ID, "result-median-days").text
    points = chrome.find_element(By.CSS_SELECTOR, "#result-by-day polyline").get_attribute("points")
    assert len(points.split()) == len(by_day)
    screenshot(chrome, "interval-and-days", chrome.find_element(By.ID, "result-heading"))


@browser
@pytest.mark.browser
def test_at_phone_width_nothing_is_wider_than_the_screen(chrome, service_url):
    try:
        chrome.set_window_size(390, 844)
        open_page(chrome, service_url)
        assert chrome.execute_script("return window.innerWidth") == 390
        empty = _overflow(chrome)
        assert empty["scroll"] <= empty["inner"] and empty["wide"] == [], empty
        wait_for(chrome, lambda d: Select(d.find_element(By.ID, "example-choice")).options[0].text)
        _load_example(chrome, 1)
        chrome.find_element(By.CSS_SELECTOR, "#clinical-section > summary").click()
        _score_and_wait(chrome)
        chrome.find_element(By.ID, "show-logodds").click()  # the widest form of the chart
        chrome.find_element(By.CSS_SELECTOR, "#result details summary").click()
        scored = _overflow(chrome)
        assert scored["scroll"] <= scored["inner"] and scored["wide"] == [], scored
        # One column: the result sits below the form, as wide as the screen allows.
        form = chrome.find_element(By.CSS_SELECTOR, ".form-column").rect
        result = chrome.find_element(By.CSS_SELECTOR, ".result-column").rect
        assert result["y"] > form["y"] + form["height"] - 1
        chart = chrome.find_element(By.ID, "waterfall").rect
        assert chart["x"] >= 0 and chart["x"] + chart["width"] <= 390
        screenshot(chrome, "phone-result", chrome.find_element(By.ID, "result-heading"))
        chrome.execute_script("window.scrollTo(0, 0)")
        screenshot(chrome, "phone-form")
    finally:
        chrome.set_window_size(1400, 1200)


@browser
@pytest.mark.browser
def test_docs_render_offline_from_local_files(chrome, service_url):
    requested_urls(chrome)
    chrome.get_log("browser")  # start the console record here
    chrome.get(service_url + "docs")
    title = wait_for(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))
    assert "ctit scoring service" in title[0].text
    operations = chrome.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    assert "/v1/score" in [o.text.strip() for o in operations]
    _assert_local_only(chrome, service_url)
    severe = [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe  # no blocked script or style, no failed request
    screenshot(chrome, "docs")
