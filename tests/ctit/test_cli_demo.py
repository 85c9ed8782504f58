"""`ctit demo`: the main job end to end (simulate, validate, label, train, promote, report,
score)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ctit.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY_EXPERIMENT = """
name = "demo-test"
[label]
definition = "plt100_or_rise50_d14"
[model]
n_trials = 1
max_rounds = 60
early_stopping_rounds = 10
n_jobs = 1
monotone = ["plt_*"]
[validation]
n_splits = 3
n_repeats = 1
[evaluation]
n_bootstrap = 50
n_bootstrap_subgroup = 50
shap_sample = 100
[promotion]
min_auroc_low = 0.0
slope_band = [0.0, 10.0]
# 250 patients and one trial: the booster may trail logistic regression; this test is the tour.
comparator_margin = 1.0
"""


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path, monkeypatch) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY_EXPERIMENT, encoding="utf-8")
    out = tmp_path / "demo"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(out), "--experiment", str(experiment),
         "--examples", str(ROOT / "examples"), "--n-patients", "250", "--seed", "5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for step in ("1/8", "4/8", "5/8", "8/8"):
        assert step in result.output
    assert "promoted ctit-response version 1 to @champion" in " ".join(result.output.split())
    assert (out / "cohort" / "labs.csv").exists() and (out / "labels.csv").exists()
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "ctit-response, version 1" in report
    for name in ("scores-patient.json", "scores-patient-low.json"):
        (answer,) = json.loads((out / name).read_text(encoding="utf-8"))
        assert 0.0 < answer["probability"] < 1.0
        assert answer["model"]["name"] == "ctit-response" and answer["model"]["version"] == "1"
        total = answer["base_value"] + sum(answer["contributions"].values())
        assert abs(total - answer["margin"]) < 1e-3
    said = " ".join(result.output.split())
    assert "ctit serve --model models:/ctit-response@champion" in said
    assert "mlflow ui --backend-store-uri sqlite:///" in said


def test_demo_stops_at_the_first_failing_step(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path / "d"), "--experiment", str(tmp_path / "none.toml"),
              "--n-patients", "50"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "demo stopped at step 4" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_refused_promotion_is_said_and_the_tour_goes_on_with_the_candidate(
    tmp_path: Path, monkeypatch
) -> None:
    experiment = tmp_path / "strict.toml"
    # an impossible gate: the AUROC's lower bound must be at least 0.999
    strict = TINY_EXPERIMENT.replace("min_auroc_low = 0.0", "min_auroc_low = 0.999")
    experiment.write_text(strict, encoding="utf-8")
    out = tmp_path / "demo"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(out), "--experiment", str(experiment),
         "--examples", str(ROOT / "examples"), "--n-patients", "150", "--seed", "6"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "FAIL auroc_lower_bound" in said
    assert "the gates refused the candidate" in said and "8/8" in said
    assert "ctit serve --model models:/ctit-response@candidate" in said
    assert "refused by the gates" in said
    assert (out / "report.html").exists()
    (answer,) = json.loads((out / "scores-patient.json").read_text(encoding="utf-8"))
    assert answer["model"]["version"] == "1"
