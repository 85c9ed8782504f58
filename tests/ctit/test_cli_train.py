"""`ctit train`: a tiny run from the command line, and clear errors for bad input."""

import mlflow
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ctit.cli import app

TINY_TOML = """
name = "cli-tiny"
[model]
n_trials = 1
max_rounds = 40
early_stopping_rounds = 5
n_jobs = 1
[validation]
n_splits = 3
n_repeats = 1
[evaluation]
n_bootstrap = 50
n_bootstrap_subgroup = 50
shap_sample = 50
[tracking]
experiment_name = "cli"
"""


def test_train_prints_metrics_and_run_id_and_registers_candidate(
    tmp_path, monkeypatch, training_helpers
) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY_TOML, encoding="utf-8")
    cohort = training_helpers.write_signal_cohort(tmp_path / "cohort", n_patients=120, seed=2)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # read at the CLI edge when no option is given
    result = CliRunner().invoke(
        app, ["train", str(experiment), "--cohort", str(cohort), "--registered-model", "cli-model"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "AUROC" in out and "Calibration slope" in out and "Baseline PLT" in out
    assert "MLflow run id:" in out
    run_id = out.split("MLflow run id:")[1].split()[0]
    mlflow.set_tracking_uri(uri)
    version = MlflowClient().get_model_version_by_alias("cli-model", "candidate")
    assert version.run_id == run_id


def test_unknown_key_is_named_and_nothing_runs(tmp_path) -> None:
    experiment = tmp_path / "bad.toml"
    experiment.write_text("[model]\nn_trees = 3\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(experiment), "--tracking-uri", "sqlite://"])
    assert result.exit_code == 2
    assert "model.n_trees: unknown key" in result.output
    assert "Traceback" not in result.output


def test_invalid_cohort_is_reported_without_a_traceback(tmp_path, cohort_dir) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY_TOML, encoding="utf-8")
    (cohort_dir / "episodes.csv").write_text("episode_id,patient_id\nE1,P-a1\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(experiment),
            "--cohort",
            str(cohort_dir),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'x.db'}",
        ],
    )
    assert result.exit_code == 1  # as `validate`, `features` and `labels` for an invalid cohort
    assert "is not a valid cohort" in result.output and "index_date" in result.output
    assert str(cohort_dir) in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_cohort_dir_in_the_experiment_is_relative_to_the_file(tmp_path) -> None:
    folder = tmp_path / "exp"
    folder.mkdir()
    experiment = folder / "dir.toml"
    experiment.write_text('[cohort]\ndir = "cohorts/site-a"\n', encoding="utf-8")
    result = CliRunner().invoke(
        app, ["train", str(experiment), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]
    )
    assert result.exit_code == 1
    assert str(folder / "cohorts" / "site-a") in result.output.replace("\n", "")


def test_without_a_cohort_the_experiment_simulates_one(tmp_path) -> None:
    experiment = tmp_path / "sim.toml"
    experiment.write_text(
        TINY_TOML + "[cohort.simulate]\nn_patients = 120\nseed = 4\n", encoding="utf-8"
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    result = CliRunner().invoke(app, ["train", str(experiment), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "simulate 120" in result.output
    run_id = result.output.split("MLflow run id:")[1].split()[0]
    mlflow.set_tracking_uri(uri)
    run = MlflowClient().get_run(run_id)
    assert run.data.params["cohort.simulate.n_patients"] == "120"
    assert run.info.status == "FINISHED"


def test_unusable_tracking_store_is_a_clear_error(tmp_path, training_helpers) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY_TOML, encoding="utf-8")
    cohort = training_helpers.write_signal_cohort(tmp_path / "cohort", n_patients=120, seed=2)
    result = CliRunner().invoke(
        app, ["train", str(experiment), "--cohort", str(cohort), "--tracking-uri", "bogus://x"]
    )
    assert result.exit_code == 1
    assert "MLflow at bogus://x" in result.output and "Traceback" not in result.output
