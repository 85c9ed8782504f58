"""The reviewer report of a tiny real training run: content, plausibility flags, `ctit report`,
and a self-contained page in headless Chromium (screenshots under test-artifacts/)."""

import base64
import dataclasses
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from scipy.special import expit
from typer.testing import CliRunner

from ctit import cmd_report
from data.cohort import cohort_from_tables
from training.config import parse_experiment
from training.report import (
    SECTIONS,
    ReportError,
    ReportSettings,
    build_context,
    render_context,
    render_report,
)
from training.report_source import ReportSourceError, load_train_result, run_id_of_model
from training.result import TrainResult
from training.run import fit_experiment, train_experiment
from training.tracking import TrackingSettings

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
# roc, calibration, decision curve, forest, 2 importance, beeswarm, 4 dependence, stability, 3 cases
N_IMAGES = 15
EXPERIMENT = {
    "model": {"n_trials": 1, "max_rounds": 40, "early_stopping_rounds": 10},
    "validation": {"n_splits": 3, "n_repeats": 1},
    "evaluation": {"n_bootstrap": 50, "n_bootstrap_subgroup": 50},
}


def contract_tables(n: int, seed: int, plt_effect: float = 0.06) -> dict[str, pd.DataFrame]:
    """A schema-valid cohort in which response changes with baseline PLT by `plt_effect` per
    10^9/L and falls with marrow involvement and gemcitabine; labelled from post-index PLT."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    marrow = rng.random(n) < 0.15
    gem = rng.random(n) < 0.4
    baseline = rng.uniform(8, 74, n).round()
    respond = rng.random(n) < expit(0.6 + plt_effect * (baseline - 40) - 1.5 * marrow - 0.8 * gem)
    index = pd.Timestamp("2023-01-01") + pd.to_timedelta(np.arange(n) * 3, unit="D")
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "sex": "F",
            "birth_date": [f"{1950 + i % 35}-0{1 + i % 9}-15" for i in range(n)],
            "site": np.where(np.arange(n) % 2 == 0, "north", "south"),
            "ecog": rng.integers(0, 3, n),
            "subtype": rng.choice(["HR+/HER2-", "HER2+", "TNBC"], n),
            "bone_mets": rng.random(n) < 0.5,
            "marrow_involvement": marrow,
            "prior_radiotherapy": rng.random(n) < 0.2,
        }
    )
    episodes = pd.DataFrame(
        {
            "episode_id": [f"E{i:03d}" for i in range(n)],
            "patient_id": ids,
            "index_date": index.strftime("%Y-%m-%d"),
            "dose_mg": 7.5,
        }
    )
    day = pd.Timedelta(days=1)
    rows = []
    for i, pid in enumerate(ids):
        t0 = index[i]
        after = baseline[i] + (rng.uniform(55, 90) if respond[i] else rng.uniform(0, 20))
        rows += [
            (pid, (t0 - 12 * day).isoformat(), "PLT", baseline[i] + rng.uniform(30, 90), "10*9/L"),
            (pid, (t0 - day).isoformat(), "PLT", baseline[i], "10*9/L"),
            (pid, (t0 - day).isoformat(), "HGB", rng.normal(100, 12), "g/L"),
            (pid, (t0 - day).isoformat(), "ANC", rng.lognormal(0.9, 0.3), "10*9/L"),
            (
                pid,
                (t0 + 11 * day).isoformat(),
                "PLT",
                round(after),
                "10*9/L",
            ),  # evaluable: >= day 10
        ]
    labs = pd.DataFrame(rows, columns=["patient_id", "time", "test", "value", "unit"])
    regimens = pd.DataFrame(
        {
            "patient_id": ids,
            "start_date": (index - 21 * day).strftime("%Y-%m-%d"),
            "drugs": np.where(gem, "gemcitabine;carboplatin", "paclitaxel"),
            "line": rng.integers(1, 4, n),
            "cycle": rng.integers(1, 6, n),
        }
    )
    return {"patients": patients, "episodes": episodes, "labs": labs, "regimens": regimens}


class _Elements(HTMLParser):
    """Collects ids, img sources, links and table rows of the rendered page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        if tag == "script":
            self.scripts += 1
        for name in ("href", "src"):
            if attributes.get(name):
                self.links.append((tag, attributes[name]))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Train once (plt_last constrained), tracked in a fresh SQLite store: (tracking URI, run)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    config = parse_experiment(
        {
            **EXPERIMENT,
            "name": "report-slice",
            "model": {**EXPERIMENT["model"], "monotone": ["plt_last"]},
        }
    )
    settings = TrackingSettings(
        tracking_uri=uri,
        experiment_name="report-test",
        registered_model="ctit-report-test",
        artifact_location=(root / "artifacts").as_uri(),
    )
    result = train_experiment(config, cohort_from_tables(contract_tables(150, seed=4)), settings)
    return uri, result.run_id


@pytest.fixture(scope="module")
def report_html(tracked: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report written by `ctit report --run`."""
    uri, run_id = tracked
    out = tmp_path_factory.mktemp("report") / "report.html"
    outcome = CliRunner().invoke(
        _app(), ["report", "--run", run_id, "--out", str(out), "--tracking-uri", uri]
    )
    assert outcome.exit_code == 0, outcome.output
    return out.read_text(encoding="utf-8")


def _plausibility_row(html: str, feature: str) -> str:
    section = html[html.index('<section id="plausibility">') :]
    section = section[: section.index("</section>")]
    rows = re.findall(r"<tr[^>]*>.*?</tr>", section, flags=re.S)
    matching = [row for row in rows if f"<td>{feature}</td>" in row and "badge" in row]
    assert len(matching) == 1, f"expected one plausibility row for {feature}"
    return matching[0]


def test_report_has_every_section_and_inline_images_only(report_html: str) -> None:
    page = _Elements()
    page.feed(report_html)
    assert {anchor for anchor, _ in SECTIONS} <= page.ids
    assert {
        "intended-use",
        "label",
        "cohort",
        "attrition",
        "table1",
        "sample-size",
        "roc",
        "calibration",
        "decision-curve",
        "subgroups",
        "beeswarm",
        "dependence",
        "monotone-constraints",
        "case-high",
        "case-low",
        "case-borderline",
    } <= page.ids
    assert len(page.images) == N_IMAGES
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.scripts == 0
    outside = [(tag, url) for tag, url in page.links if re.match(r"(?i)\s*(https?:)?//", url)]
    # plain reference links (<a>) only; nothing the browser would fetch
    assert outside and all(tag == "a" for tag, _ in outside)
    assert "@import" not in report_html and "url(" not in report_html
    assert "@font-face" not in report_html


def test_report_states_the_evidence(tracked: tuple[str, str], report_html: str) -> None:
    uri, run_id = tracked
    result = load_train_result(run_id, uri)
    html = report_html
    assert "PLT &gt;= 100 or PLT - baseline &gt;= 50 x10^9/L on any day 1-14" in html
    assert "adult patients with breast cancer" in html
    events = int(result.y.sum())
    assert f"{events:,} ({100 * events / len(result.y):.1f}%)" in html
    auroc = result.metrics["xgboost"]["auroc"]
    cell = f"{auroc['estimate']:.3f} ({auroc['low']:.3f} to {auroc['high']:.3f})"
    assert cell in html
    assert "Riley" in html and "Mean absolute prediction error" in html
    assert "Sites</dt><dd>2: north, south" in html
    assert run_id in html
    # probability-scale view labelled as such, with the log-odds beside it
    assert html.count("Probability-scale view") == 3
    assert html.count("Log-odds contributions") == 3
    # the experiment's monotone constraint is shown next to the registry's direction
    constraints = html[html.index('id="monotone-constraints"') :]
    assert "<td>plt_last</td><td>higher → more response</td>" in constraints
    row = _plausibility_row(html, "plt_last")
    assert "agrees" in row and "flagged" not in row


def test_tripod_map_links_resolve_and_lists_items_for_the_authors(report_html: str) -> None:
    page = _Elements()
    page.feed(report_html)
    tripod = report_html[report_html.index('<section id="tripod">') :]
    anchors = re.findall(r'href="#([a-z0-9-]+)"', tripod)
    assert len(anchors) >= 20
    assert set(anchors) <= page.ids
    authors = tripod[tripod.index('id="tripod-authors"') :]
    for item in ("<td>17</td>", "<td>18a</td>", "<td>19</td>", "<td>3c</td>", "<td>12g</td>"):
        assert item in authors
    assert "<td>10</td>" not in authors  # sample size is documented by the report


def test_plausibility_flags_a_learned_direction_that_contradicts_the_registry() -> None:
    # Higher baseline PLT lowers response here, against the registry's +1 for plt_last.
    cohort = cohort_from_tables(contract_tables(150, seed=9, plt_effect=-0.06))
    result, _ = fit_experiment(parse_experiment({**EXPERIMENT, "name": "contrary"}), cohort)
    html = render_report(result, ReportSettings(n_dependence=1))
    row = _plausibility_row(html, "plt_last")
    assert 'class="flagged"' in row
    assert "contradicts" in row and "higher → less response" in row
    assert "feature(s) flagged" in html
    assert re.search(
        r"Learned direction contradicts clinical expectation for: [^<]*Platelet count", html
    )


def _leaves(value: object, path: str = "context"):
    """Every leaf of the context with its path (dataclass fields, tuples, dicts, sets)."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, tuple | list | frozenset | set):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}[{key!r}]")
    else:
        yield path, value


def test_the_context_is_plain_data_without_html(tracked: tuple[str, str]) -> None:
    from markupsafe import Markup

    context = build_context(load_train_result(tracked[1], tracked[0]))
    leaves = list(_leaves(context))
    assert len(leaves) > 500
    for path, value in leaves:
        assert value is None or type(value) in (str, int, float, bool), (path, type(value))
        assert not isinstance(value, Markup), path
        if isinstance(value, str):
            assert not re.search(r"<\s*/?[a-zA-Z!]", value), (path, value[:80])
    images = [v for p, v in leaves if isinstance(v, str) and v.startswith("data:image/png")]
    assert len(images) == N_IMAGES
    assert [row.key for row in context.key.rows][0] == "auroc"
    html = render_context(context)
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") == N_IMAGES


def test_report_refuses_a_result_it_cannot_explain(tracked: tuple[str, str]) -> None:
    result = load_train_result(tracked[1], tracked[0])
    with pytest.raises(ReportError, match="TrainResult.model"):
        render_report(TrainResult(**{**result.__dict__, "model": None}))
    with pytest.raises(ReportError, match="label_definition.*plt999"):
        render_report(TrainResult(**{**result.__dict__, "label_definition": "plt999"}))


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    cmd_report.register(app)
    return app


def test_report_of_a_registered_model_version(tracked: tuple[str, str], tmp_path: Path) -> None:
    uri, run_id = tracked
    assert run_id_of_model("models:/ctit-report-test@candidate", uri) == run_id
    by_model = tmp_path / "model.html"
    outcome = CliRunner().invoke(
        _app(),
        [
            "report",
            "--model",
            "models:/ctit-report-test/1",
            "--out",
            str(by_model),
            "--tracking-uri",
            uri,
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert f"report of run {run_id} written to" in outcome.output
    assert f"MLflow run</dt><dd>{run_id}" in by_model.read_text(encoding="utf-8")
    assert "ctit-report-test, version 1</" in by_model.read_text(encoding="utf-8")
    # the deployed calibrator's own evidence, not only the procedure's
    assert "out-of-fold predictions of the final model's own configuration" in (
        by_model.read_text(encoding="utf-8").replace("&#39;", "'")
    )


def test_training_logs_the_report_to_the_run(tracked: tuple[str, str], tmp_path: Path) -> None:
    import mlflow

    uri, run_id = tracked
    assert "ctit.report_error" not in mlflow.MlflowClient(uri).get_run(run_id).data.tags
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="report.html", dst_path=str(tmp_path), tracking_uri=uri
    )
    assert '<section id="case-gallery">' in Path(local).read_text(encoding="utf-8")
    result = load_train_result(run_id, uri)
    assert result.run_id == run_id and len(result.X) == len(result.y)


def test_report_errors_name_what_is_wrong(tracked: tuple[str, str], tmp_path: Path) -> None:
    uri, run_id = tracked
    runner = CliRunner()
    out = str(tmp_path / "x.html")
    both = runner.invoke(
        _app(),
        ["report", "--run", run_id, "--model", "models:/m/1", "--out", out, "--tracking-uri", uri],
    )
    assert both.exit_code == 2 and "exactly one of --model or --run" in both.output
    missing = runner.invoke(
        _app(), ["report", "--run", "f" * 32, "--out", out, "--tracking-uri", uri]
    )
    assert missing.exit_code == 2 and "not found" in missing.output
    assert "Traceback" not in missing.output
    with pytest.raises(ReportSourceError, match="expected models:/NAME@ALIAS"):
        run_id_of_model("runs:/abc/model", uri)
    with pytest.raises(ReportSourceError, match="ctit-report-test@nope"):
        run_id_of_model("models:/ctit-report-test@nope", uri)
    assert not Path(out).exists()


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_report_in_headless_chromium(report_html: str, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("headless Chromium is not installed at /usr/bin")
    page = tmp_path / "report.html"
    page.write_text(report_html, encoding="utf-8")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.as_uri())
        for anchor, _ in SECTIONS:
            assert driver.find_element(By.ID, anchor).is_displayed()
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);"
        )
        assert len(widths) == N_IMAGES and all(w > 0 for w in widths), widths
        requests = [
            json.loads(entry["message"])["message"] for entry in driver.get_log("performance")
        ]
        sent = [m["params"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        ours = [p["request"]["url"] for p in sent if p.get("documentURL") == page.as_uri()]
        assert page.as_uri() in ours, "performance log did not record the page itself"
        assert len(ours) > 1, "the images were not recorded as requests of the page"
        assert all(url.startswith(("file:", "data:")) for url in ours), ours
        # nothing at all (the browser's own start page included) went to the network
        assert not [p for p in sent if re.match(r"(?i)(https?|wss?|ftp):", p["request"]["url"])]
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(page, ARTIFACTS / "report.html")
        assert driver.save_screenshot(str(ARTIFACTS / "report-top.png"))
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height), 16000))
        assert driver.save_screenshot(str(ARTIFACTS / "report-full.png"))
    finally:
        driver.quit()


# --------------------------------------------- the first screen agrees with MLflow and itself


def _rows_of(html: str, element_id: str) -> list[list[str]]:
    start = html.index(f'id="{element_id}"')
    block = html[start : html.index("</table>", start)]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", block, flags=re.S)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S) for row in rows]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in row] for row in cells]


def test_key_figures_agree_with_the_logged_metrics_and_the_performance_table(
    tracked: tuple[str, str], report_html: str
) -> None:
    from mlflow.tracking import MlflowClient

    uri, run_id = tracked
    logged = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    key = report_html[report_html.index('<section id="key-figures">') :]
    key = key[: key.index("</section>")]
    # The first screen comes before everything else in the page.
    assert report_html.index('id="key-figures"') < report_html.index('id="summary"')
    cells = re.findall(r'<tr data-metric="([a-z_]+)">.*?</tr>', key, flags=re.S)  # metrics in order
    assert cells == ["auroc", "calibration_slope", "calibration_intercept", "oe_ratio", "brier"]
    found = re.findall(r'<tr data-metric="([a-z_]+)">(.*?)</tr>', key, flags=re.S)
    checked = 0
    for metric, row in found:
        for model, estimate, low, high, text in re.findall(
            r'data-model="(\w+)" data-estimate="([^"]*)" data-low="([^"]*)" data-high="([^"]*)">'
            r"([^<]*)</td>",
            row,
        ):
            assert float(estimate) == pytest.approx(logged[f"{model}.{metric}"], abs=1e-12)
            assert float(low) == pytest.approx(logged[f"{model}.{metric}.low"], abs=1e-12)
            assert float(high) == pytest.approx(logged[f"{model}.{metric}.high"], abs=1e-12)
            e, lo, hi = (logged[f"{model}.{metric}{s}"] for s in ("", ".low", ".high"))
            assert text == f"{e:.3f} ({lo:.3f} to {hi:.3f})".replace("-0.000", "0.000")
            checked += 1
    assert checked == 5 * 3  # five metrics of XGBoost and both comparators
    # The same cells, word for word, in the performance section's table.
    performance = {row[0]: row[1:] for row in _rows_of(report_html, "discrimination")[1:]}
    first = {row[0]: row[1:4] for row in _rows_of(report_html, "key-figures-table")[1:]}
    assert first["Discrimination: AUROC (C statistic)"] == performance["AUROC (C statistic)"]
    assert first["Calibration slope"] == performance["Calibration slope"]
    assert first["Brier score"] == performance["Brier score"]
    assert "version 1" in report_html.split("</h1>")[0]


def test_report_counts_and_names_agree_with_each_other(tracked, report_html: str) -> None:
    from mlflow.tracking import MlflowClient

    uri, run_id = tracked
    # One "Patients" row for the labelled episodes, the whole cohort's named as such.
    cohort = report_html[report_html.index('<div id="cohort">') :]
    cohort = cohort[: cohort.index("</div>")]
    terms = re.findall(r"<dt>(.*?)</dt>", cohort)
    assert terms.count("Patients") == 0 and "Patients with a labelled episode" in terms
    assert len(terms) == len(set(terms))
    # The registry's version everywhere the version is named.
    version = MlflowClient(tracking_uri=uri).search_model_versions(f"run_id = '{run_id}'")
    assert version and str(version[0].version) == "1"
    spec = re.search(r"<dt>Model version \(registry\)</dt><dd>(.*?)</dd>", report_html)
    assert spec and spec.group(1) == "1"
    assert "unregistered" not in report_html
    # Index dates are not in this run's summary, so TRIPOD 5b is left to the authors.
    tripod = report_html[report_html.index('<section id="tripod">') :]
    filled = tripod[: tripod.index("</table>")]
    assert not re.search(r"<td>5b</td>", filled)
    assert "Index dates" not in cohort
    # The importance table and its note count every feature once: used + unused = all.
    table = report_html[report_html.index('<div id="importance-table">') :]
    table = table[: table.index("</details>")]
    used = len(re.findall(r"<tr>", table)) - 1
    unused = re.search(r"(\d+) features are never used", table)
    n_features = report_html.count("<code>") // 2  # predictors + importance tables name codes
    assert used + (int(unused.group(1)) if unused else 0) >= used > 0
    assert not re.search(r"<td[^>]*>\s*nan\s*</td>", report_html, re.I)  # missing: words
    assert n_features >= used
    # Clinical names, not codes, lead the tables; Table 1 has one row per yes/no variable.
    table1 = _rows_of(report_html, "table1")
    assert any(row[0].startswith("Platelet count") for row in table1)
    marrow = [row for row in table1 if row[0] == "Bone-marrow involvement"]
    assert [row[1] for row in marrow] == ["yes"]
    # Raise and lower colours are the page's.
    style = (ROOT / "serving" / "http" / "static" / "style.css").read_text(encoding="utf-8")
    from training.plots import LOWER_COLOUR, RAISE_COLOUR

    assert f"--raise: {RAISE_COLOUR};" in style and f"--lower: {LOWER_COLOUR};" in style


def test_mlflow_run_and_registry_describe_the_model(tracked: tuple[str, str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri, run_id = tracked
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    description = run.data.tags["mlflow.note.content"]
    assert "platelets reach 100 ×10⁹/L" in description and "report-slice" in description
    tuned = {k: v for k, v in run.data.params.items() if k.startswith("tuned.")}
    assert "tuned.max_depth" in tuned, sorted(run.data.params)
    registered = client.get_registered_model("ctit-report-test")
    assert "hetrombopag" in registered.description
    (version,) = client.search_model_versions("name = 'ctit-report-test'")
    assert "AUROC" in version.description and "calibration slope" in version.description
    assert "one string column `record`" in version.description
    assert "labs (time, test, value, unit" in version.description
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == "ctit-report-slice"  # a named logged model, not just "model"
    mlflow.set_tracking_uri(uri)
    schema = mlflow.artifacts.load_dict(f"runs:/{run_id}/model_input/record.schema.json")
    assert set(schema["properties"]) >= {"patient", "episode", "labs", "regimens"}
