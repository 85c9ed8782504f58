"""`ctit report` end to end: a tiny real training run tracked in tmp_path, then the report of it."""

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
from training.report import SECTIONS
from training.report_source import ReportSourceError, load_train_result, run_id_of_model
from training.run import train_experiment
from training.tracking import TrackingSettings


def contract_tables(n: int, seed: int) -> dict[str, pd.DataFrame]:
    """A schema-valid cohort in which response rises with baseline PLT and falls with marrow
    involvement and gemcitabine, labelled from post-index PLT by the default definition."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    marrow = rng.random(n) < 0.15
    gem = rng.random(n) < 0.4
    baseline = rng.uniform(8, 74, n).round()
    respond = rng.random(n) < expit(0.6 + 0.06 * (baseline - 40) - 1.5 * marrow - 0.8 * gem)
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
            (pid, (t0 + 7 * day).isoformat(), "PLT", round(after), "10*9/L"),
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


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Train once, tracked in a fresh SQLite store; returns (tracking URI, run id)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    config = parse_experiment(
        {
            "name": "report-slice",
            "model": {
                "n_trials": 1,
                "max_rounds": 40,
                "early_stopping_rounds": 10,
                "monotone": ["plt_last"],
            },
            "validation": {"n_splits": 3, "n_repeats": 1},
            "evaluation": {"n_bootstrap": 50, "n_bootstrap_subgroup": 50},
        }
    )
    cohort = cohort_from_tables(contract_tables(150, seed=4))
    settings = TrackingSettings(
        tracking_uri=uri,
        experiment_name="report-test",
        registered_model="ctit-report-test",
        artifact_location=(root / "artifacts").as_uri(),
    )
    result = train_experiment(config, cohort, settings)
    return uri, result.run_id


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    cmd_report.register(app)
    return app


def test_report_of_a_run_and_of_its_registered_model(tracked: tuple[str, str], tmp_path: Path):
    uri, run_id = tracked
    runner = CliRunner()
    by_run = tmp_path / "run.html"
    outcome = runner.invoke(
        _app(), ["report", "--run", run_id, "--out", str(by_run), "--tracking-uri", uri]
    )
    assert outcome.exit_code == 0, outcome.output
    html = by_run.read_text(encoding="utf-8")
    for anchor, _ in SECTIONS:
        assert f'<section id="{anchor}">' in html
    assert run_id in html
    assert "plt100_or_rise50_d14" in html
    # the monotone constraint of the experiment is shown next to the registry's direction
    constraints = html[html.index('id="monotone-constraints"') :]
    assert "<td>plt_last</td><td>higher → more response</td>" in constraints

    assert run_id_of_model("models:/ctit-report-test@candidate", uri) == run_id
    by_model = tmp_path / "model.html"
    outcome = runner.invoke(
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
    assert run_id in by_model.read_text(encoding="utf-8")


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
