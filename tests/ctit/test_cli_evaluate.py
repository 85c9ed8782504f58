"""`ctit evaluate`: external validation of a registered model, end to end through the CLI with a
temporary SQLite MLflow store; the evaluation run then gates promotion."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ctit.cli import app
from data.cohort import load_cohort
from data.labels import derive_labels
from serving.bundle.uri import load_deployable_model
from training import metrics

TOML = """
name = "cli-evaluate"
[model]
n_trials = 1
max_rounds = 40
early_stopping_rounds = 5
[validation]
n_splits = 3
n_repeats = 1
[evaluation]
n_bootstrap = 50
n_bootstrap_subgroup = 50
shap_sample = 50
[tracking]
experiment_name = "cli"
[promotion]
min_auroc_low = 0.0
slope_band = [0.0, 10.0]
comparator_margin = 1.0
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, training_helpers) -> dict:
    """One model trained through the CLI, and a fresh cohort from another seed."""
    root = tmp_path_factory.mktemp("evaluate")
    signal = training_helpers
    experiment = root / "exp.toml"
    experiment.write_text(TOML, encoding="utf-8")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    train = signal.write_signal_cohort(root / "train", n_patients=150, seed=2)
    fresh = signal.write_signal_cohort(root / "fresh", n_patients=150, seed=3)
    out = CliRunner().invoke(
        app,
        [
            "train",
            str(experiment),
            "--cohort",
            str(train),
            "--tracking-uri",
            uri,
            "--registered-model",
            "eval-model",
        ],
    )
    assert out.exit_code == 0, out.output
    return {"uri": uri, "fresh": fresh, "root": root}


def test_evaluate_logs_a_tagged_run_with_every_figure_and_writes_the_page(trained) -> None:
    uri, fresh, root = trained["uri"], trained["fresh"], trained["root"]
    page = root / "out" / "report.html"
    page.parent.mkdir()
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            "models:/eval-model/1",
            "--cohort",
            str(fresh),
            "--tracking-uri",
            uri,
            "--out",
            str(page),
            "--n-bootstrap",
            "100",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "Calibration slope" in result.output
    run_id = result.output.split("MLflow evaluation run id:")[1].split()[0]

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["ctit.run_kind"] == "evaluation"
    assert tags["ctit.model_name"] == "eval-model" and tags["ctit.model_version"] == "1"
    assert tags["ctit.label_definition"] == "plt100_or_rise50_d14"
    assert tags["ctit.cohort"] == "fresh"
    version = client.get_model_version("eval-model", "1")
    assert version.tags["ctit.evaluation.fresh"] == run_id
    logged = run.data.metrics
    for model in ("xgboost", "logreg", "plt_baseline"):
        for metric in (
            "auroc",
            "auprc",
            "brier",
            "scaled_brier",
            "calibration_intercept",
            "calibration_slope",
            "oe_ratio",
        ):
            assert f"{model}.{metric}" in logged and f"{model}.{metric}.low" in logged
    for comparator in ("logreg", "plt_baseline"):
        key = f"xgboost_minus_{comparator}.auroc_diff"
        assert logged[f"{key}.low"] <= logged[key] <= logged[f"{key}.high"]

    # The figures are those of the registered model's own scores on the fresh cohort.
    model = load_deployable_model("models:/eval-model/1")
    cohort = load_cohort(fresh)
    labels = derive_labels(cohort, "plt100_or_rise50_d14").set_index("episode_id")
    y = labels.loc[labels["label"].notna(), "label"].astype(int)
    p = model.predict_proba(cohort, interval=False).loc[y.index, "probability"].to_numpy()
    assert logged["data.n_episodes"] == len(y)
    assert logged["xgboost.auroc"] == pytest.approx(float(metrics.auroc(y.to_numpy(), p)[0]))
    assert logged["xgboost.calibration_slope"] == pytest.approx(
        float(metrics.calibration_slope(y.to_numpy(), p)[0])
    )
    assert logged["xgboost.oe_ratio"] == pytest.approx(y.sum() / p.sum())

    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {
        "evaluation/report.html",
        "evaluation/subgroups.csv",
        "evaluation/decision_curve.csv",
        "evaluation/predictions.csv",
    } <= artifacts
    plots = {a.path for a in client.list_artifacts(run_id, "evaluation/plots")}
    assert "evaluation/plots/calibration.png" in plots
    text = page.read_text(encoding="utf-8")
    assert "External validation of eval-model version 1" in text
    assert "Logistic regression (comparator)" in text and "data:image/png;base64" in text

    # The evaluation run gates promotion of this very candidate.
    promoted = CliRunner().invoke(
        app, ["promote", "eval-model", "--tracking-uri", uri, "--evaluation-run", run_id]
    )
    assert promoted.exit_code == 0, promoted.output
    assert "external_calibration_slope" in promoted.output
    assert "external_not_worse_than_logreg" in promoted.output


def test_bad_inputs_are_clear_errors(trained, tmp_path) -> None:
    uri = trained["uri"]
    missing = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            "models:/no-such/1",
            "--cohort",
            str(trained["fresh"]),
            "--tracking-uri",
            uri,
            "--no-log",
        ],
    )
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "patients.csv").write_text("patient_id\nP1\n", encoding="utf-8")
    bad = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            "models:/eval-model/1",
            "--cohort",
            str(tmp_path / "bad"),
            "--tracking-uri",
            uri,
            "--no-log",
        ],
    )
    assert bad.exit_code == 1 and "episodes" in bad.output and "Traceback" not in bad.output
    label = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            "models:/eval-model/1",
            "--cohort",
            str(trained["fresh"]),
            "--tracking-uri",
            uri,
            "--no-log",
            "--label",
            "no_such_label",
        ],
    )
    assert label.exit_code == 1 and "no_such_label" in label.output
