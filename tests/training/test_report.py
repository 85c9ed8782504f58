"""The reviewer report: content, plausibility flags, a self-contained page in headless Chromium."""

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from serving.model import Calibrator, RiskBands
from training.explain import tree_shap
from training.report import SECTIONS, ReportError, ReportSettings, render_report
from training.result import TrainResult
from training.sample_size import assess_sample_size

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
FEATURES = [
    "plt_last",
    "hgb_last",
    "anc_last",
    "n_lines",
    "marrow_involvement",
    "current_gemcitabine",
    "age_years",
]
PARAMS = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.15, "nthread": 1, "seed": 0}
SETTINGS = ReportSettings(top_features=7, n_dependence=2, stability_features=5)


def _cohort(n: int, plt_effect: float, seed: int) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    index = pd.Index([f"E{i:04d}" for i in range(n)], name="episode_id")
    X = pd.DataFrame(
        {
            "plt_last": rng.uniform(5, 75, n),
            "hgb_last": np.where(rng.random(n) < 0.25, np.nan, rng.normal(100, 15, n)),
            "anc_last": rng.lognormal(0.9, 0.4, n),
            "n_lines": rng.integers(0, 5, n).astype(float),
            "marrow_involvement": (rng.random(n) < 0.12).astype(float),
            "current_gemcitabine": (rng.random(n) < 0.3).astype(float),
            "age_years": rng.normal(52, 9, n),
        },
        index=index,
    )
    logit = (
        1.0
        + plt_effect * 0.07 * (X["plt_last"] - 40)
        - 0.5 * X["n_lines"]
        - 1.5 * X["marrow_involvement"]
        - 0.8 * X["current_gemcitabine"]
        + 0.02 * (X["hgb_last"].fillna(100) - 100)
    )
    y = pd.Series((rng.random(n) < expit(logit)).astype(int), index=index, name="y")
    groups = pd.Series([f"P{i // 2:04d}" for i in range(n)], index=index, name="patient_id")
    return X, y, groups


def _train(X: pd.DataFrame, y: pd.Series, rounds: int = 40) -> xgb.Booster:
    return xgb.train(PARAMS, xgb.DMatrix(X, label=y, nthread=1), num_boost_round=rounds)


def _interval(value: float) -> dict[str, float]:
    return {"estimate": value, "low": value - 0.05, "high": value + 0.05}


def make_result(n: int = 240, plt_effect: float = 1.0, seed: int = 0) -> TrainResult:
    """A TrainResult with every documented field, from a small booster on synthetic data."""
    X, y, groups = _cohort(n, plt_effect, seed)
    patients = groups.unique()
    rng = np.random.default_rng(seed + 1)
    oof_rows, fold_rows, fold_boosters = [], [], []
    for repeat in range(2):
        fold_of_patient = dict(zip(patients, rng.permutation(len(patients)) % 3, strict=True))
        fold = groups.map(fold_of_patient)
        for k in range(3):
            test = fold == k
            booster = _train(X[~test], y[~test], rounds=25)
            fold_boosters.append(booster)
            p = booster.predict(xgb.DMatrix(X[test], nthread=1))
            logreg = LogisticRegression(max_iter=500).fit(X[~test].fillna(100), y[~test])
            oof_rows.append(
                pd.DataFrame(
                    {
                        "episode_id": X.index[test],
                        "patient_id": groups[test].to_numpy(),
                        "y": y[test].to_numpy(),
                        "repeat": repeat,
                        "fold": k,
                        "p_xgb_raw": p,
                        "p_logreg": logreg.predict_proba(X[test].fillna(100))[:, 1],
                        "p_plt": X.loc[test, "plt_last"].to_numpy() / 75,
                    }
                )
            )
            expl, _ = tree_shap(booster, X[test])
            mean_abs = np.abs(expl.values).mean(axis=0)
            ranks = (-mean_abs).argsort().argsort() + 1
            for name, value, rank in zip(FEATURES, mean_abs, ranks, strict=True):
                fold_rows.append(
                    {
                        "repeat": repeat,
                        "fold": k,
                        "feature": name,
                        "mean_abs_shap": value,
                        "rank": int(rank),
                    }
                )
    oof = pd.concat(oof_rows, ignore_index=True)
    calibrator = Calibrator("platt").fit(oof["p_xgb_raw"], oof["y"])
    oof["p_xgb"] = calibrator.transform(oof["p_xgb_raw"])
    metrics = {}
    for model, column in {
        "xgboost": "p_xgb",
        "logreg": "p_logreg",
        "plt_baseline": "p_plt",
    }.items():
        metrics[model] = {
            "auroc": _interval(roc_auc_score(oof["y"], oof[column])),
            "brier": _interval(brier_score_loss(oof["y"], oof[column].clip(0, 1))),
            "calibration_slope": _interval(1.0),
        }
    thresholds = np.round(np.arange(0.05, 0.96, 0.05), 2)
    prevalence = y.mean()
    curve = []
    for t in thresholds:
        for model, column in {"xgboost": "p_xgb", "logreg": "p_logreg"}.items():
            treat = oof[column] >= t
            tp = ((oof["y"] == 1) & treat).mean()
            fp = ((oof["y"] == 0) & treat).mean()
            curve.append({"threshold": t, "model": model, "net_benefit": tp - fp * t / (1 - t)})
        curve.append(
            {
                "threshold": t,
                "model": "treat_all",
                "net_benefit": prevalence - (1 - prevalence) * t / (1 - t),
            }
        )
        curve.append({"threshold": t, "model": "treat_none", "net_benefit": 0.0})
    subgroups = pd.DataFrame(
        [
            {
                "model": "xgboost",
                "subgroup": "marrow_involvement",
                "level": level,
                "n": int(n_),
                "events": int(e),
                "auroc": 0.7,
                "auroc_low": 0.6,
                "auroc_high": 0.8,
                "brier": 0.2,
                "oe_ratio": 1.0,
                "sensitivity": 0.8,
                "specificity": 0.5,
                "ppv": 0.7,
                "npv": 0.6,
            }
            for level, n_, e in [
                (
                    "yes",
                    (X["marrow_involvement"] == 1).sum(),
                    y[X["marrow_involvement"] == 1].sum(),
                ),
                ("no", (X["marrow_involvement"] == 0).sum(), y[X["marrow_involvement"] == 0].sum()),
            ]
        ]
    )
    table1 = pd.DataFrame(
        {
            "variable": ["episodes", "plt_last", "hgb_last"],
            "level": ["", "", ""],
            "overall": [str(n), "40 [22, 58]", "100 [90, 110]"],
            "responders": ["", "", ""],
            "non_responders": ["", "", ""],
            "missing": ["", "0 (0.0%)", f"{X['hgb_last'].isna().sum()} (25%)"],
        }
    )
    model = SimpleNamespace(
        booster=_train(X, y),
        fold_boosters=fold_boosters,
        calibrator=calibrator,
        bands=RiskBands(thresholds=(0.5, 0.75), operating_threshold=0.5),
        pipeline=None,
        metadata={
            "name": "ctit-response",
            "version": "3",
            "label_definition": "plt75_d14",
            "trained_at": "2025-01-01T00:00:00Z",
            "experiment": "test",
        },
    )
    return TrainResult(
        config={
            "validation": {"scheme": "cv", "n_splits": 3, "n_repeats": 2, "seed": 7},
            "model": {"n_trials": 2, "early_stopping_rounds": 10, "inner_valid_fraction": 0.25},
            "calibration": {"method": "platt"},
            "evaluation": {"operating_threshold": 0.5, "n_bootstrap": 100, "shap_sample": 1000},
        },
        label_definition="plt75_d14",
        model=model,
        X=X,
        raw_features=X.reset_index(),
        y=y,
        groups=groups,
        oof=oof,
        metrics=metrics,
        subgroups=subgroups,
        decision_curve=pd.DataFrame(curve),
        table1=table1,
        attrition={
            "episodes_in": n + 9,
            "excluded_by_reason": {"no baseline PLT": 9},
            "labelled": n,
            "responders": int(y.sum()),
        },
        sample_size=assess_sample_size(y.to_numpy(), groups.to_numpy(), len(FEATURES), 0.75),
        cohort_summary={
            "source": "synthetic test data",
            "first_index_date": "2023-01-02",
            "last_index_date": "2024-12-30",
            "sites": 2,
        },
        fold_importance=pd.DataFrame(fold_rows),
        monotone_constraints={"n_lines": -1},
        run_id="0123456789abcdef",
    )


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


def _plausibility_row(html: str, feature: str) -> str:
    section = html[html.index('<section id="plausibility">') :]
    section = section[: section.index("</section>")]
    rows = re.findall(r"<tr[^>]*>.*?</tr>", section, flags=re.S)
    matching = [row for row in rows if f"<td>{feature}</td>" in row]
    assert len(matching) == 1, f"expected one plausibility row for {feature}"
    return matching[0]


@pytest.fixture(scope="module")
def result() -> TrainResult:
    return make_result()


@pytest.fixture(scope="module")
def html(result: TrainResult) -> str:
    return render_report(result, SETTINGS)


def test_report_has_every_section_and_inline_images_only(html: str) -> None:
    page = _Elements()
    page.feed(html)
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
    # roc, calibration, decision curve, 2 importance, beeswarm, 2 dependence, stability, 3 cases
    assert len(page.images) == 12
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.scripts == 0
    outside = [(tag, url) for tag, url in page.links if re.match(r"(?i)\s*(https?:)?//", url)]
    # plain reference links (<a>) only; nothing the browser would fetch
    assert outside and all(tag == "a" for tag, _ in outside)
    assert "@import" not in html and "url(" not in html and "@font-face" not in html


def test_report_states_the_evidence(result: TrainResult, html: str) -> None:
    assert "PLT &gt;= 75 x10^9/L on any day 1-14" in html  # the label definition, in words
    assert "adult patients with breast cancer" in html
    assert f"{int(result.y.sum()):,} (" in html  # events with their percentage
    assert "Observed:expected" not in html or "O:E" in html
    auroc = result.metrics["xgboost"]["auroc"]["estimate"]
    assert f"{auroc:.3f} ({auroc - 0.05:.3f}–{auroc + 0.05:.3f})" in html
    assert "Riley" in html and "minimum" in html
    assert "first_index_date" not in html and "First index date" in html
    # probability-scale view labelled as such, log-odds beside it
    assert html.count("Probability-scale view") >= 3
    assert "Log-odds contributions" in html


def test_tripod_map_links_resolve_and_lists_items_for_the_authors(html: str) -> None:
    page = _Elements()
    page.feed(html)
    tripod = html[html.index('<section id="tripod">') :]
    anchors = re.findall(r'href="#([a-z0-9-]+)"', tripod)
    assert len(anchors) >= 20
    assert set(anchors) <= page.ids
    authors = tripod[tripod.index('id="tripod-authors"') :]
    for item in ("<td>17</td>", "<td>18a</td>", "<td>19</td>", "<td>3c</td>", "<td>12g</td>"):
        assert item in authors
    assert "<td>10</td>" not in authors  # sample size is documented by the report


def test_plausibility_agrees_when_the_model_follows_the_registry(html: str) -> None:
    row = _plausibility_row(html, "plt_last")
    assert "agrees" in row and "flagged" not in row


def test_plausibility_flags_a_learned_direction_that_contradicts_the_registry() -> None:
    # Higher baseline PLT lowers response here, against the registry's +1 for plt_last.
    contrary = make_result(n=240, plt_effect=-1.0, seed=3)
    html = render_report(contrary, SETTINGS)
    row = _plausibility_row(html, "plt_last")
    assert 'class="flagged"' in row
    assert "contradicts" in row
    assert "feature(s) flagged" in html
    assert "Learned direction contradicts clinical expectation for: plt_last" in html


def test_report_refuses_a_result_without_a_model(result: TrainResult) -> None:
    broken = TrainResult(**{**result.__dict__, "model": None})
    with pytest.raises(ReportError, match="TrainResult.model"):
        render_report(broken, SETTINGS)


def test_report_refuses_an_unknown_label_definition(result: TrainResult) -> None:
    broken = TrainResult(**{**result.__dict__, "label_definition": "plt999"})
    with pytest.raises(ReportError, match="label_definition.*plt999"):
        render_report(broken, SETTINGS)


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_report_in_headless_chromium(html: str, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("headless Chromium is not installed at /usr/bin")
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
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
        assert len(widths) == 12 and all(w > 0 for w in widths), widths
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
