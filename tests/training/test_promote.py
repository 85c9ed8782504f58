"""Promotion gates: a good candidate is promoted, a worse one is refused and nothing changes."""

import re

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ctit.cli import app
from training.promote import PromotionError, assess, promote

NAME = "unset"  # the registered model of the running test, set by the `uri` fixture
GATES = {
    "min_auroc_low": 0.65,
    "slope_band": [0.8, 1.2],
    "max_auroc_drop": 0.0,
    "max_brier_increase": 0.0,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating its tables costs seconds); tests use own names."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("promote", (root / "artifacts").as_uri())
    return uri, experiment


@pytest.fixture
def uri(store, request) -> str:
    global NAME
    uri, experiment = store
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment)
    NAME = "m-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)
    return uri


def _candidate(
    auroc: float,
    low: float,
    slope: float,
    brier: float,
    fingerprint: str = "f" * 64,
    label: str = "plt100_or_rise50_d14",
) -> str:
    """A run as `ctit train` logs it (metrics, tags, experiment.json), registered @candidate."""
    with mlflow.start_run() as run:
        mlflow.log_metrics(
            {
                "xgboost.auroc": auroc,
                "xgboost.auroc.low": low,
                "xgboost.calibration_slope": slope,
                "xgboost.brier": brier,
            }
        )
        mlflow.set_tags({"ctit.data_fingerprint": fingerprint, "ctit.label_definition": label})
        mlflow.log_dict({"name": "t", "promotion": GATES}, "experiment/experiment.json")
        mlflow.log_text("stand-in for the logged model", "model/MLmodel")
    client = MlflowClient()
    try:
        client.get_registered_model(NAME)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(NAME, "candidate", version.version)
    return version.version


def _champion() -> str | None:
    try:
        return MlflowClient().get_model_version_by_alias(NAME, "champion").version
    except mlflow.exceptions.MlflowException:
        return None


def test_first_good_candidate_is_promoted(uri) -> None:
    v1 = _candidate(auroc=0.78, low=0.74, slope=1.02, brier=0.17)
    decision = promote(NAME)
    assert decision.promoted and [g.passed for g in decision.gates] == [True, True]
    assert _champion() == v1


def test_worse_candidate_on_the_same_data_is_refused(uri) -> None:
    v1 = _candidate(auroc=0.78, low=0.74, slope=1.02, brier=0.17)
    promote(NAME)
    _candidate(auroc=0.76, low=0.72, slope=1.0, brier=0.18)
    decision = promote(NAME)
    assert not decision.promoted
    assert {g.name for g in decision.failed} == {"not_worse_auroc", "not_worse_brier"}
    assert _champion() == v1


def test_better_candidate_replaces_the_champion(uri) -> None:
    _candidate(auroc=0.76, low=0.71, slope=1.0, brier=0.18)
    promote(NAME)
    v2 = _candidate(auroc=0.79, low=0.75, slope=0.97, brier=0.16)
    assert promote(NAME).promoted
    assert _champion() == v2


@pytest.mark.parametrize(
    ("low", "slope", "failed"),
    [
        (0.60, 1.0, "auroc_lower_bound"),
        (0.70, 1.35, "calibration_slope"),
        (0.70, 0.7, "calibration_slope"),
    ],
)
def test_own_gates(uri, low: float, slope: float, failed: str) -> None:
    _candidate(auroc=0.75, low=low, slope=slope, brier=0.18)
    decision = promote(NAME)
    assert not decision.promoted and [g.name for g in decision.failed] == [failed]
    assert _champion() is None


def test_champion_on_other_data_cannot_be_compared(uri) -> None:
    v1 = _candidate(auroc=0.78, low=0.74, slope=1.0, brier=0.17, fingerprint="a" * 64)
    promote(NAME)
    v2 = _candidate(auroc=0.80, low=0.75, slope=1.0, brier=0.16, fingerprint="b" * 64)
    decision = promote(NAME)
    assert [g.name for g in decision.failed] == ["same_evaluation"]
    assert _champion() == v1
    assert assess(NAME, allow_new_data=True).failed == []
    assert promote(NAME, allow_new_data=True).promoted and _champion() == v2


def test_no_candidate_is_an_error(uri) -> None:
    MlflowClient().create_registered_model(NAME)
    with pytest.raises(PromotionError, match="no @candidate"):
        promote(NAME)


def test_cli_exit_codes_and_explanations(uri) -> None:
    runner = CliRunner()
    v1 = _candidate(auroc=0.78, low=0.74, slope=1.0, brier=0.17)
    ok = runner.invoke(app, ["promote", NAME, "--tracking-uri", uri])
    assert ok.exit_code == 0, ok.output
    assert f"promoted {NAME} version {v1} to @champion" in ok.output
    _candidate(auroc=0.70, low=0.66, slope=1.0, brier=0.19)
    refused = runner.invoke(app, ["promote", NAME, "--tracking-uri", uri])
    assert refused.exit_code == 1
    assert "FAIL not_worse_auroc" in refused.output and "nothing was changed" in refused.output
    assert _champion() == v1
    missing = runner.invoke(app, ["promote", "no-such-model", "--tracking-uri", uri])
    assert missing.exit_code == 1 and "no @candidate" in missing.output
