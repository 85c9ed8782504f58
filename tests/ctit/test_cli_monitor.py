"""`ctit monitor` and `ctit recalibrate` through the real typer app, a real uvicorn service and
MLflow on SQLite in tmp_path: score over HTTP, monitor the audit log, join outcomes, recalibrate."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy.special import expit
from typer.testing import CliRunner

from ctit.cli import app
from data.cohort import cohort_from_tables
from serving.bundle.pyfunc import log_deployable_model
from serving.http.app import create_app
from serving.http.audit import AuditLog
from serving.request.records import RecordBatch, validate_record
from serving.scoring.scorer import Scorer
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
NAME = "ctit-response"
SALT = "pepper-of-the-site"


def _renamed(records: list[dict], prefix: str) -> list[dict]:
    """The records with identifier-looking ids of their own (MRN-like), unique per prefix."""
    for i, record in enumerate(records):
        record["patient"]["patient_id"] = f"MRN-{prefix}-{900000 + i}"
        record["episode"]["episode_id"] = f"ENC-{prefix}-{700000 + i}"
    return records


@pytest.fixture(scope="module")
def registry(fixtures, tmp_path_factory: pytest.TempPathFactory):
    """A model registered @candidate, its run holding train_result/X.parquet and oof.parquet."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    records, y = fixtures.synthetic_records(300, seed=5)
    model = fixtures.build_model(records, y, n_folds=2)
    batch = RecordBatch.from_requests([validate_record(r) for r in records], keep_ids=True)
    X = model.pipeline.transform(cohort_from_tables(batch.tables))
    raw = model.booster.inplace_predict(X.to_numpy(np.float32))
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("ctit", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        with tempfile.TemporaryDirectory() as tmp:
            X.to_parquet(Path(tmp) / "X.parquet")
            pd.DataFrame({"repeat": 0, "p_xgb_raw": raw}).to_parquet(Path(tmp) / "oof.parquet")
            mlflow.log_artifacts(tmp, "train_result")
        mlflow.log_dict({"promotion": {}}, "experiment/experiment.json")
        mlflow.log_metrics({"xgboost.auroc": 0.8, "xgboost.auroc.low": 0.75})
        # the source's paired comparison with logistic regression, which recalibration keeps
        mlflow.log_metrics(
            {f"xgboost_minus_logreg.auroc_diff{k}": v for k, v in
             {"": 0.02, ".low": 0.005, ".high": 0.035}.items()}
        )  # fmt: skip
        mlflow.set_tags({"ctit.data_fingerprint": "home", "ctit.label_definition": "given"})
        info = log_deployable_model(model, registered_model_name=NAME)
    MlflowClient().set_registered_model_alias(NAME, "candidate", info.registered_model_version)
    return {"uri": uri, "model": model}


def _serve_and_score(
    live_server, model, audit_path: Path, records: list[dict], inputs: bool = True
) -> None:
    settings = ServingSettings(
        model_uri="in-memory",
        audit_path=audit_path,
        audit_salt=SALT,
        audit_synchronous="NORMAL",
        audit_model_inputs=inputs,
    )
    server = live_server(create_app(settings, scorer=Scorer(model, uri="in-memory")))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answer = client.post("/v1/score", json=records[0])
            assert answer.status_code == 200, answer.text
            assert "model_input" not in answer.json()
            for start in range(1, len(records), 100):
                batch = client.post(
                    "/v1/score/batch",
                    json={"records": records[start : start + 100], "explain": False},
                )
                assert batch.status_code == 200, batch.text
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scored(fixtures, registry, live_server, tmp_path_factory: pytest.TempPathFactory):
    """An audit log of 240 same-distribution patients scored over HTTP, and their outcomes."""
    records, y = fixtures.synthetic_records(240, seed=77)
    records = _renamed(records, "A")
    audit_path = tmp_path_factory.mktemp("audit") / "audit.db"
    _serve_and_score(live_server, registry["model"], audit_path, records)
    outcomes = pd.DataFrame(
        {"episode_id": [r["episode"]["episode_id"] for r in records], "response": y}
    )
    return {"audit": audit_path, "records": records, "outcomes": outcomes}


def _text(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _monitor(runner: CliRunner, registry, audit: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        ["monitor", "--model", f"models:/{NAME}@candidate", "--audit", str(audit),
         "--out", str(out), "--tracking-uri", registry["uri"], *extra],
    )  # fmt: skip


def test_feature_vectors_recorded_over_http_hold_no_identifier(scored) -> None:
    db = sqlite3.connect(scored["audit"])
    dump = "\n".join(db.iterdump())
    n_inputs = db.execute("SELECT COUNT(*) FROM score_inputs").fetchone()[0]
    names = json.loads(db.execute("SELECT names FROM feature_sets").fetchone()[0])
    db.close()
    assert n_inputs == 240
    assert "MRN-" not in dump and "ENC-" not in dump and "900000" not in dump
    assert not [n for n in names if "id" in n.split("_") or n.endswith("_id")]
    assert not [n for n in names if "date" in n or "birth" in n]


def test_model_inputs_can_be_switched_off(fixtures, registry, live_server, tmp_path: Path) -> None:
    records = _renamed(fixtures.synthetic_records(3, seed=4)[0], "OFF")
    audit_path = tmp_path / "audit.db"
    _serve_and_score(live_server, registry["model"], audit_path, records, inputs=False)
    log = AuditLog(audit_path, salt=SALT)
    assert len(log.rows("scores")) == 3 and log.rows("score_inputs") == []
    log.close()


def test_monitor_same_distribution_no_alert_with_page_json_and_mlflow(
    registry, scored, tmp_path: Path
) -> None:
    out = tmp_path / "monitor.html"
    result = _monitor(CliRunner(), registry, scored["audit"], out)
    assert result.exit_code == 0, result.output
    assert "no alert" in result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["audit"]["episodes"] == 240 and summary["status"] == "ok"
    assert summary["reference"]["source"].endswith("(train_result/)")
    assert "Input drift" in out.read_text()
    mlflow.set_tracking_uri(registry["uri"])
    runs = mlflow.search_runs(experiment_names=["ctit-monitoring"])
    assert (runs["tags.ctit.monitored_model"] == NAME).any()


def test_monitor_joins_outcomes_by_the_service_salt(registry, scored, tmp_path: Path) -> None:
    outcomes = tmp_path / "outcomes.csv"
    scored["outcomes"].to_csv(outcomes, index=False)
    out = tmp_path / "m.html"
    runner = CliRunner()
    result = _monitor(runner, registry, scored["audit"], out, "--outcomes", str(outcomes))
    assert result.exit_code == 2 and "keeps no salt; set CTIT_AUDIT_SALT" in _text(result)
    runner = CliRunner(env={"CTIT_AUDIT_SALT": SALT})
    result = _monitor(runner, registry, scored["audit"], out, "--outcomes", str(outcomes))
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["outcomes"]["joined"] == 240
    assert summary["outcomes"]["overall"]["events"] == int(scored["outcomes"]["response"].sum())
    assert "ENC-" not in out.with_suffix(".json").read_text() + out.read_text()
    # the same outcomes as a labelled cohort (labels by the model's definition; given ones win)
    site = _cohort_dir(scored["records"], scored["outcomes"]["response"], tmp_path / "site")
    result = _monitor(runner, registry, scored["audit"], out, "--cohort", str(site), "--no-mlflow")
    assert result.exit_code in (0, 1), result.output
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["outcomes"]["overall"] == summary["outcomes"]["overall"]


def test_monitor_on_an_empty_audit_log_gives_a_clear_message(registry, tmp_path: Path) -> None:
    audit = tmp_path / "empty.db"
    AuditLog(audit, salt=SALT).close()
    result = _monitor(CliRunner(), registry, audit, tmp_path / "m.html")
    assert result.exit_code == 2
    assert "is empty: no scores have been recorded yet; nothing to monitor" in _text(result)
    assert "Traceback" not in result.output
    result = _monitor(CliRunner(), registry, tmp_path / "absent.db", tmp_path / "m.html")
    assert result.exit_code == 2 and "no such file" in _text(result)


def test_monitor_flags_a_shifted_site(fixtures, registry, live_server, tmp_path: Path) -> None:
    records = _renamed(fixtures.synthetic_records(240, seed=91)[0], "S")
    for record in records:  # another laboratory routine: no albumin, platelets lower
        record["labs"] = [lab for lab in record["labs"] if lab["test"] != "ALB"]
        for lab in record["labs"]:
            if lab["test"] in ("PLT", "777-3"):
                lab["value"] = round(lab["value"] * 0.6)
    audit = tmp_path / "shifted.db"
    _serve_and_score(live_server, registry["model"], audit, records)
    out = tmp_path / "m.html"
    result = _monitor(CliRunner(), registry, audit, out, "--no-mlflow")
    assert result.exit_code == 1, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["features"][0]["status"] == "major"
    assert any("alb" in r["feature"] and r["missing_drift"] for r in summary["features"])
    assert "ALERT" in result.output


def _cohort_dir(records: list[dict], y: np.ndarray, directory: Path) -> Path:
    batch = RecordBatch.from_requests([validate_record(r) for r in records], keep_ids=True)
    directory.mkdir()
    tables = batch.tables
    for name in ("patients", "episodes", "labs", "regimens"):
        frame = pd.DataFrame(tables[name])
        if name == "regimens":
            frame["drugs"] = frame["drugs"].map(lambda d: ";".join(d) if isinstance(d, list) else d)
        frame.to_csv(directory / f"{name}.csv", index=False)
    episodes = [r["episode"]["episode_id"] for r in records]
    pd.DataFrame({"episode_id": episodes, "response": y}).to_csv(
        directory / "outcomes.csv", index=False
    )
    return directory


def test_recalibrate_registers_a_candidate_with_lineage(
    fixtures, registry, scored, tmp_path: Path
) -> None:
    records = _renamed(fixtures.synthetic_records(400, seed=123)[0], "R")
    model = registry["model"]
    p = (
        Scorer(model)
        .predict_cohort(
            cohort_from_tables(
                RecordBatch.from_requests(
                    [validate_record(r) for r in records], keep_ids=True
                ).tables
            )
        )["probability"]
        .to_numpy()
    )
    rng = np.random.default_rng(0)
    y = (rng.random(len(p)) < expit(np.log(p / (1 - p)) + 1.2)).astype(int)  # site responds more
    site = _cohort_dir(records, y, tmp_path / "site")
    result = CliRunner().invoke(
        app,
        ["recalibrate", "--model", f"models:/{NAME}@candidate", "--cohort", str(site),
         "--method", "intercept", "--tracking-uri", registry["uri"]],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "registered ctit-response version 2 (@candidate) from version 1" in _text(result)
    client = MlflowClient(registry["uri"])
    version = client.get_model_version_by_alias(NAME, "candidate")
    assert str(version.version) == "2"
    assert version.tags["ctit.source_version"] == "1"
    assert version.tags["ctit.recalibration_method"] == "intercept"
    assert len(version.tags["ctit.recalibration_cohort_fingerprint"]) == 64
    run = client.get_run(version.run_id)
    before = run.data.metrics["holdout_before.oe_ratio"]
    after = run.data.metrics["holdout_after.oe_ratio"]
    assert before > 1.15 and abs(after - 1) < abs(before - 1)
    assert "calibration_slope" in result.output  # the promotion gates were assessed
    # the booster is kept: margins equal, probabilities moved
    mlflow.set_tracking_uri(registry["uri"])
    from serving.bundle.uri import load_deployable_model

    new = load_deployable_model(f"models:/{NAME}/2")
    assert new.booster.save_raw() == model.booster.save_raw()
    assert new.calibrator.to_dict() != model.calibrator.to_dict()
    # monitoring the recalibrated version compares with the site it was recalibrated on
    out = tmp_path / "after.html"
    result = CliRunner().invoke(
        app,
        ["monitor", "--model", f"models:/{NAME}/2", "--audit", str(scored["audit"]),
         "--out", str(out), "--tracking-uri", registry["uri"], "--no-mlflow"],
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["reference"]["source"].endswith("(monitor_reference/)")
    assert summary["reference"]["episodes"] == 400
    client.set_registered_model_alias(NAME, "candidate", "1")  # leave the module's model in place


def test_shadow_scores_a_cohort_through_the_service(
    fixtures, registry, live_server, tmp_path: Path
) -> None:
    records = _renamed(fixtures.synthetic_records(30, seed=17)[0], "SH")
    site = _cohort_dir(records, np.zeros(30, dtype=int), tmp_path / "site")
    audit_path = tmp_path / "audit.db"
    settings = ServingSettings(
        model_uri="in-memory", audit_path=audit_path, audit_salt=SALT, audit_synchronous="NORMAL"
    )
    server = live_server(create_app(settings, scorer=Scorer(registry["model"], uri="in-memory")))
    try:
        result = CliRunner().invoke(
            app, ["shadow", str(site), "--url", server.url, "--batch-size", "7"]
        )
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert "30 episodes scored" in _text(result)
    log = AuditLog(audit_path, salt=SALT)
    assert len(log.rows("score_inputs")) == 30
    direct = Scorer(registry["model"]).score_batch(records, explain=False)
    logged = {r["episode_hash"]: r["probability"] for r in log.rows("score_inputs")}
    for answer in direct:  # the service saw the same patients as the records
        assert logged[log.hash_id(answer["episode_id"])] == pytest.approx(answer["probability"])
    log.close()
    result = CliRunner().invoke(app, ["shadow", str(site), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "ConnectError" in _text(result)


def test_simulate_a_shifted_site(tmp_path: Path) -> None:
    out = tmp_path / "site"
    result = CliRunner().invoke(
        app, ["simulate", "--n-patients", "150", "--seed", "4", "--workers", "1", "--site-shift",
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    labs = pd.read_csv(out / "labs.csv", dtype=str)
    plt = labs[labs["test"] == "777-3"]
    assert len(plt) and set(plt["unit"]) == {"10*3/uL"}  # the preset's lab profile: US units
    assert set(labs[labs["test"] == "718-7"]["unit"]) == {"g/dL"}
    assert "targets" not in _text(result)  # the home sites' targets are not checked
