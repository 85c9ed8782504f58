"""`extra_static` and `extra_analytes` survive from `ctit train` to a score over the CLI and over
HTTP (real uvicorn on 127.0.0.1): a feature that training accepts must reach the served model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ctit.cli import app
from data.cohort import load_cohort
from data.labels import derive_labels
from serving.http.app import create_app
from serving.request.schemas import EXAMPLE_RECORD
from serving.settings import ServingSettings

TOML = """
name = "extra-columns"
[features]
extra_static = ["frailty_index", "transfused_before"]
extra_analytes = ["FERR"]
[model]
n_trials = 1
max_rounds = 60
early_stopping_rounds = 10
[validation]
n_splits = 3
n_repeats = 1
[evaluation]
n_bootstrap = 50
n_bootstrap_subgroup = 50
shap_sample = 50
[tracking]
experiment_name = "extra"
"""
EXTRA_FEATURES = ("static_frailty_index", "static_transfused_before", "lab_FERR_last")


def _cohort(module, directory: Path) -> Path:
    """The training tests' signal cohort (`module`: tests/training/conftest.py) plus a patient
    column, an episode column and a lab test outside the contract's analytes, all related to
    the response."""
    tables = module.make_signal_tables(160, seed=4)
    directory.mkdir(parents=True)
    module.write_signal_cohort(directory, n_patients=160, seed=4)
    labels = derive_labels(load_cohort(directory), "plt100_or_rise50_d14")
    label_of = tables["episodes"].set_index("episode_id")["patient_id"]
    by_patient = (
        labels.assign(patient_id=labels["episode_id"].map(label_of))
        .groupby("patient_id")["label"]
        .max()
    )
    rng = np.random.default_rng(4)
    labs, episodes, patients = tables["labs"], tables["episodes"], tables["patients"]
    responds = patients["patient_id"].map(by_patient).fillna(0).to_numpy(dtype=float)
    noise = rng.normal(0, 0.1, len(responds))
    patients["frailty_index"] = np.clip(0.6 - 0.3 * responds + noise, 0, 1)
    episodes["transfused_before"] = rng.integers(0, 2, len(episodes)).astype(bool)
    ferritin = labs[labs["test"] == "HGB"].copy()
    ferritin["test"] = "FERR"
    ferritin["unit"] = "ng/mL"
    ferritin["value"] = rng.uniform(30, 900, len(ferritin))
    tables["labs"] = pd.concat([labs, ferritin], ignore_index=True)
    for name, frame in tables.items():
        frame.to_csv(directory / f"{name}.csv", index=False)
    return directory


def _record(frailty: float | None, ferritin: float | None) -> dict:
    record = copy.deepcopy(EXAMPLE_RECORD)
    record["patient"]["frailty_index"] = frailty
    record["episode"]["transfused_before"] = True
    if ferritin is not None:
        record["labs"].append(
            {"time": "2025-03-09T08:00:00", "test": "FERR", "value": ferritin, "unit": "ng/mL"}
        )
    return record


def test_extra_columns_from_train_to_an_http_score(tmp_path, live_server, training_helpers) -> None:
    experiment = tmp_path / "extra.toml"
    experiment.write_text(TOML, encoding="utf-8")
    cohort = _cohort(training_helpers, tmp_path / "cohort")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["train", str(experiment), "--cohort", str(cohort), "--tracking-uri", uri,
         "--registered-model", "extra-model"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    run_id = trained.output.split("MLflow run id:")[1].split()[0]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert "ctit.report_error" not in run.data.tags
    assert "report.html" in {a.path for a in client.list_artifacts(run_id)}
    model_uri = "models:/extra-model/1"

    # CLI: a record carrying the extra patient and episode fields and the extra lab.
    record_path = tmp_path / "record.json"
    record_path.write_text(json.dumps(_record(0.2, 450.0)), encoding="utf-8")
    out = tmp_path / "answer.json"
    scored = runner.invoke(
        app, ["score", "--model", model_uri, str(record_path), "--out", str(out),
              "--tracking-uri", uri],
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    cli_answer = json.loads(out.read_text(encoding="utf-8"))[0]
    assert set(EXTRA_FEATURES) <= set(cli_answer["contributions"])

    # HTTP: the registered model behind a real uvicorn server.
    settings = ServingSettings(model_uri=model_uri, audit_path=tmp_path / "audit.db")
    server = live_server(create_app(settings))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            low = http.post("/v1/score", json=_record(0.2, 450.0))
            high = http.post("/v1/score", json=_record(0.9, 450.0))
            unknown = http.post("/v1/score", json=_record(None, None))
            absent = http.post("/v1/score", json=EXAMPLE_RECORD)
    finally:
        server.stop()
    assert low.status_code == 200, low.text
    answer = low.json()
    assert answer["probability"] == pytest.approx(cli_answer["probability"], abs=1e-9)
    assert set(EXTRA_FEATURES) <= set(answer["contributions"])
    assert answer["base_value"] + sum(answer["contributions"].values()) == pytest.approx(
        answer["margin"], abs=1e-4
    )
    # The patient field reaches the booster: frailer patients (non-responders here) score lower.
    assert high.status_code == 200 and high.json()["probability"] < answer["probability"]
    assert high.json()["contributions"]["static_frailty_index"] < 0
    # Null extras are missing values, not errors.
    assert unknown.status_code == 200, unknown.text
    assert unknown.json()["contributions"]["static_frailty_index"] != pytest.approx(
        answer["contributions"]["static_frailty_index"]
    )
    # A record without the fields: scored with them missing, and told so.
    assert absent.status_code == 200, absent.text
    said = " ".join(w["message"] for w in absent.json()["warnings"])
    assert "frailty_index was not given" in said and "transfused_before was not given" in said
