"""Promotion gates: a good candidate is promoted, a worse one is refused and nothing changes."""

import re

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ctit.cli import app
from training.promote import PromotionError, assess, promote

GATES = {
    "min_auroc_low": 0.65,
    "slope_band": [0.8, 1.2],
    "max_auroc_drop": 0.0,
    "max_brier_increase": 0.0,
    "comparators": ["logreg"],
    "comparator_margin": 0.01,
}
# A comfortable win over logistic regression unless a test says otherwise.
WIN = (0.03, 0.01, 0.05)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str]:
    """One SQLite store for the module (creating its tables costs seconds); tests use own names."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("promote", (root / "artifacts").as_uri())
    return uri, experiment


@pytest.fixture
def uri(store) -> str:
    uri, experiment = store
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment)
    return uri


@pytest.fixture
def name(uri, request) -> str:
    """A registered-model name of this test's own in the shared store."""
    return "m-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)


def _candidate(
    name: str,
    auroc: float,
    low: float,
    slope: float,
    brier: float,
    fingerprint: str = "f" * 64,
    label: str = "plt100_or_rise50_d14",
    vs_logreg: tuple[float, float, float] = WIN,
) -> str:
    """A run as `ctit train` logs it (metrics, tags, experiment.json), registered @candidate."""
    with mlflow.start_run() as run:
        diff, diff_low, diff_high = vs_logreg
        mlflow.log_metrics(
            {
                "xgboost.auroc": auroc,
                "xgboost.auroc.low": low,
                "xgboost.calibration_slope": slope,
                "xgboost.brier": brier,
                "xgboost_minus_logreg.auroc_diff": diff,
                "xgboost_minus_logreg.auroc_diff.low": diff_low,
                "xgboost_minus_logreg.auroc_diff.high": diff_high,
            }
        )
        mlflow.set_tags({"ctit.data_fingerprint": fingerprint, "ctit.label_definition": label})
        mlflow.log_dict({"name": "t", "promotion": GATES}, "experiment/experiment.json")
        mlflow.log_text("stand-in for the logged model", "model/MLmodel")
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, "candidate", version.version)
    return version.version


def _champion(name: str) -> str | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, "champion").version
    except mlflow.exceptions.MlflowException:
        return None


def test_first_good_candidate_is_promoted(name) -> None:
    v1 = _candidate(name, auroc=0.78, low=0.74, slope=1.02, brier=0.17)
    decision = promote(name)
    assert decision.promoted and [g.passed for g in decision.gates] == [True, True, True]
    assert _champion(name) == v1


def test_worse_candidate_on_the_same_data_is_refused(name) -> None:
    v1 = _candidate(name, auroc=0.78, low=0.74, slope=1.02, brier=0.17)
    promote(name)
    _candidate(name, auroc=0.76, low=0.72, slope=1.0, brier=0.18)
    decision = promote(name)
    assert not decision.promoted
    assert {g.name for g in decision.failed} == {"not_worse_auroc", "not_worse_brier"}
    assert _champion(name) == v1


def test_better_candidate_replaces_the_champion(name) -> None:
    _candidate(name, auroc=0.76, low=0.71, slope=1.0, brier=0.18)
    promote(name)
    v2 = _candidate(name, auroc=0.79, low=0.75, slope=0.97, brier=0.16)
    assert promote(name).promoted
    assert _champion(name) == v2


@pytest.mark.parametrize(
    ("low", "slope", "failed"),
    [
        (0.60, 1.0, "auroc_lower_bound"),
        (0.70, 1.35, "calibration_slope"),
        (0.70, 0.7, "calibration_slope"),
    ],
)
def test_own_gates(name, low: float, slope: float, failed: str) -> None:
    _candidate(name, auroc=0.75, low=low, slope=slope, brier=0.18)
    decision = promote(name)
    assert not decision.promoted and [g.name for g in decision.failed] == [failed]
    assert _champion(name) is None


def test_champion_on_other_data_cannot_be_compared(name) -> None:
    v1 = _candidate(name, auroc=0.78, low=0.74, slope=1.0, brier=0.17, fingerprint="a" * 64)
    promote(name)
    v2 = _candidate(name, auroc=0.80, low=0.75, slope=1.0, brier=0.16, fingerprint="b" * 64)
    decision = promote(name)
    assert [g.name for g in decision.failed] == ["same_evaluation"]
    assert _champion(name) == v1
    assert assess(name, allow_new_data=True).failed == []
    assert promote(name, allow_new_data=True).promoted and _champion(name) == v2


def test_no_candidate_is_an_error(name) -> None:
    MlflowClient().create_registered_model(name)
    with pytest.raises(PromotionError, match="no @candidate"):
        promote(name)


def test_cli_exit_codes_and_explanations(uri, name) -> None:
    runner = CliRunner()
    v1 = _candidate(name, auroc=0.78, low=0.74, slope=1.0, brier=0.17)
    ok = runner.invoke(app, ["promote", name, "--tracking-uri", uri])
    assert ok.exit_code == 0, ok.output
    assert f"promoted {name} version {v1} to @champion" in ok.output
    _candidate(name, auroc=0.70, low=0.66, slope=1.0, brier=0.19)
    refused = runner.invoke(app, ["promote", name, "--tracking-uri", uri])
    assert refused.exit_code == 1
    assert "FAIL not_worse_auroc" in refused.output and "nothing was changed" in refused.output
    assert _champion(name) == v1
    missing = runner.invoke(app, ["promote", "no-such-model", "--tracking-uri", uri])
    assert missing.exit_code == 2 and "no registered model 'no-such-model'" in missing.output


@pytest.mark.parametrize(
    ("vs_logreg", "passed", "words"),
    [
        (
            (-0.02, -0.04, 0.0),
            False,
            "logistic regression is better: its out-of-fold AUROC is "
            "0.020 above the candidate's (paired 95% CI -0.040 to +0.000; the lower bound must be "
            "above -0.010)",
        ),
        ((0.004, -0.012, 0.02), False, "the candidate's out-of-fold AUROC is 0.004 above"),
        ((0.004, -0.008, 0.02), True, "the candidate's out-of-fold AUROC is 0.004 above"),
    ],
)
def test_candidate_must_not_lose_to_logistic_regression(
    name, vs_logreg: tuple[float, float, float], passed: bool, words: str
) -> None:
    _candidate(name, auroc=0.78, low=0.74, slope=1.0, brier=0.17, vs_logreg=vs_logreg)
    decision = promote(name)
    gate = next(g for g in decision.gates if g.name == "not_worse_than_logreg")
    assert gate.passed is passed and decision.promoted is passed
    assert words in gate.detail


def test_a_run_without_the_comparison_is_an_error_not_a_pass(name) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metrics({"xgboost.auroc.low": 0.7, "xgboost.calibration_slope": 1.0})
        mlflow.log_dict({"name": "t", "promotion": GATES}, "experiment/experiment.json")
    client = MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(name, "candidate", version.version)
    with pytest.raises(PromotionError, match="xgboost_minus_logreg.auroc_diff"):
        promote(name)


def _evaluation_run(name: str, version: str, slope: float, vs_logreg=WIN) -> str:
    """A run as `ctit evaluate` logs it."""
    diff, diff_low, diff_high = vs_logreg
    with mlflow.start_run() as run:
        mlflow.set_tags(
            {
                "ctit.run_kind": "evaluation",
                "ctit.model_name": name,
                "ctit.model_version": version,
                "ctit.cohort": "later",
            }
        )
        mlflow.log_metrics(
            {
                "xgboost.auroc.low": 0.7,
                "xgboost.calibration_slope": slope,
                "xgboost_minus_logreg.auroc_diff": diff,
                "xgboost_minus_logreg.auroc_diff.low": diff_low,
                "xgboost_minus_logreg.auroc_diff.high": diff_high,
            }
        )
    return run.info.run_id


def test_a_named_external_evaluation_must_pass(name) -> None:
    v1 = _candidate(name, auroc=0.78, low=0.74, slope=1.0, brier=0.17)
    bad = _evaluation_run(name, v1, slope=1.4)
    decision = promote(name, evaluation_run=bad)
    assert not decision.promoted
    assert [g.name for g in decision.failed] == ["external_calibration_slope"]
    assert "external calibration slope 1.400" in decision.failed[0].detail
    assert "on later" in decision.failed[0].detail
    other = _evaluation_run(name, "99", slope=1.0)
    assert [g.name for g in assess(name, evaluation_run=other).failed] == [
        "external_evaluation_of_candidate"
    ]
    good = _evaluation_run(name, v1, slope=1.02)
    assert promote(name, evaluation_run=good).promoted and _champion(name) == v1


def test_a_training_run_is_not_an_evaluation_run(name) -> None:
    _candidate(name, auroc=0.78, low=0.74, slope=1.0, brier=0.17)
    training_run = MlflowClient().get_model_version_by_alias(name, "candidate").run_id
    with pytest.raises(PromotionError, match="not a `ctit evaluate` run"):
        promote(name, evaluation_run=training_run)
