"""A tiny training run tracked in MLflow (SQLite in tmp_path): everything logged, @candidate set,
and a failed registration leaves no orphan version."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from data.cohort import load_cohort
from data.simulator import SimulationConfig, simulate_cohort
from serving.bundle.uri import load_deployable_model
from training import run as run_module
from training import tracking as tracking_module
from training.config import parse_experiment
from training.result import TrainResult
from training.run import train_experiment
from training.tracking import TrackingSettings

TINY = {
    "name": "tiny",
    "model": {
        "n_trials": 1,
        "max_rounds": 60,
        "early_stopping_rounds": 10,
        "n_jobs": 1,
        "monotone": ["plt_*"],
    },
    "validation": {"n_splits": 3, "n_repeats": 1},
    "evaluation": {"n_bootstrap": 50, "n_bootstrap_subgroup": 50, "shap_sample": 100},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One SQLite store for the module: creating its tables costs seconds."""
    return tmp_path_factory.mktemp("mlflow")


def _settings(store: Path, name: str, experiment: str) -> TrackingSettings:
    return TrackingSettings(
        tracking_uri=f"sqlite:///{store / 'mlruns.db'}",
        experiment_name=experiment,
        registered_model=name,
    )


@pytest.fixture(scope="module")
def simulated_dir(tmp_path_factory) -> Path:
    """A small cohort from the embedded simulator (the default cohort of `ctit train`)."""
    out = tmp_path_factory.mktemp("simulated")
    simulate_cohort(SimulationConfig(n_patients=150, seed=5, workers=1), out)
    return out


def _artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            out |= _artifact_paths(client, run_id, item.path)
        else:
            out.add(item.path)
    return out


def test_tiny_run_logs_everything_and_registers_candidate(simulated_dir, tmp_path, store) -> None:
    cohort = load_cohort(simulated_dir)
    config = parse_experiment(TINY)
    settings = _settings(store, "ctit-test", "tests")
    toml_text = 'name = "tiny"\n'
    result = train_experiment(config, cohort, tracking=settings, experiment_text=toml_text)

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_trials"] == "1"
    assert run.data.params["validation.n_splits"] == "3"
    tags = run.data.tags
    assert tags["ctit.label_definition"] == "plt100_or_rise50_d14"
    assert (
        tags["ctit.data_fingerprint"] == result.data_fingerprint
        and len(result.data_fingerprint) == 64
    )
    assert "ctit.git_commit" in tags
    for model in ("xgboost", "logreg", "plt_baseline"):
        for metric in (
            "auroc",
            "auprc",
            "brier",
            "scaled_brier",
            "calibration_slope",
            "calibration_intercept",
            "oe_ratio",
            "ece",
            "sensitivity",
            "npv",
        ):
            estimate = result.metrics[model][metric]["estimate"]
            if estimate is None or estimate != estimate:
                # Undefined on this cohort (e.g. NPV with no episode below the threshold):
                # MLflow holds no made-up number for it.
                assert f"{model}.{metric}" not in run.data.metrics
                continue
            assert run.data.metrics[f"{model}.{metric}"] == pytest.approx(estimate)
            assert f"{model}.{metric}.low" in run.data.metrics
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "tiny-plt100_or_rise50_d14"

    paths = _artifact_paths(client, result.run_id)
    for expected in (
        "experiment/experiment.toml",
        "experiment/experiment.json",
        "experiment/label_definition.json",
        "evaluation/table1.csv",
        "evaluation/attrition.json",
        "evaluation/sample_size.json",
        "evaluation/subgroups.csv",
        "evaluation/decision_curve.csv",
        "plots/roc.png",
        "plots/calibration.png",
        "plots/decision_curve.png",
        "plots/shap_beeswarm.png",
        "train_result/result.json",
        "train_result/oof.parquet",
        "report.html",
    ):
        assert expected in paths, expected
    assert "ctit.report_error" not in tags
    assert client.download_artifacts(result.run_id, "experiment/experiment.toml", str(tmp_path))

    version = client.get_model_version_by_alias(settings.registered_model, "candidate")
    assert version.run_id == result.run_id
    assert version.tags["data_fingerprint"] == result.data_fingerprint
    model = load_deployable_model(f"models:/{settings.registered_model}@candidate")
    scores = model.predict_proba(cohort)
    assert len(scores) == len(cohort.episodes)

    # The TrainResult logged under train_result round-trips.
    local = client.download_artifacts(result.run_id, "train_result", str(tmp_path / "dl"))
    loaded = TrainResult.load(local)
    assert loaded.run_id == result.run_id and loaded.model_uri == result.model_uri
    assert loaded.metrics["xgboost"]["auroc"] == pytest.approx(result.metrics["xgboost"]["auroc"])
    assert loaded.monotone_constraints == {"plt_last": 1}
    assert len(loaded.oof) == len(result.oof) and list(loaded.y.index) == list(result.y.index)
    np.testing.assert_allclose(
        loaded.model.predict_proba(cohort)["probability"], scores["probability"]
    )


def test_failed_registration_leaves_no_orphan_and_fails_the_run(
    signal_cohort_dir, store, monkeypatch
) -> None:
    cohort = load_cohort(signal_cohort_dir)
    settings = _settings(store, "ctit-orphan", "tests-failing")
    # Figures and the report are tested above; here only the rollback matters.
    monkeypatch.setattr(run_module, "_write_plots", lambda result, directory: directory.mkdir())
    monkeypatch.setattr(run_module, "_log_report", lambda result, tmp_path: None)

    def broken_alias(self, name, alias, version):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(tracking_module.MlflowClient, "set_registered_model_alias", broken_alias)
    with pytest.raises(RuntimeError, match="registry went away"):
        train_experiment(parse_experiment(TINY), cohort, tracking=settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    assert client.search_model_versions("name='ctit-orphan'") == []
    assert "ctit-orphan" not in {m.name for m in client.search_registered_models()}
    (run,) = client.search_runs([client.get_experiment_by_name("tests-failing").experiment_id])
    assert run.info.status == "FAILED"


def test_a_failing_report_does_not_lose_the_run(signal_cohort_dir, store, monkeypatch) -> None:
    import training.report

    def broken(result):
        raise ValueError("template missing")

    monkeypatch.setattr(training.report, "render_report", broken)
    monkeypatch.setattr(run_module, "_write_plots", lambda result, directory: directory.mkdir())
    settings = _settings(store, "ctit-report", "tests-report")
    result = train_experiment(parse_experiment(TINY), load_cohort(signal_cohort_dir), settings)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ctit.report_error"] == "ValueError: template missing"
    assert "report.html" not in _artifact_paths(client, result.run_id)
    assert client.get_model_version_by_alias("ctit-report", "candidate").run_id == result.run_id
