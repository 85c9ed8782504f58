"""Find the TrainResult behind an MLflow run or a registered model version, for `ctit report`."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from training.result import TrainResult

TRAIN_RESULT_PATH = "train_result"
_BY_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_BY_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ReportSourceError(LookupError):
    """The run or model cannot be found, or holds no TrainResult; the message says which."""


def run_id_of_model(model_uri: str, tracking_uri: str | None = None) -> str:
    """The run that logged a registered model version (`models:/name@alias` or `models:/name/N`).

    Raises:
        ReportSourceError: malformed URI, or no such model, alias or version.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    alias, version = _BY_ALIAS.match(model_uri), _BY_VERSION.match(model_uri)
    try:
        if alias:
            found = client.get_model_version_by_alias(alias["name"], alias["alias"])
        elif version:
            found = client.get_model_version(version["name"], version["version"])
        else:
            raise ReportSourceError(
                f"model URI {model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION"
            )
    except MlflowException as error:
        raise ReportSourceError(f"model {model_uri!r} not found: {error.message}") from None
    if not found.run_id:
        raise ReportSourceError(f"model {model_uri!r} was not logged from an MLflow run")
    return found.run_id


def load_train_result(run_id: str, tracking_uri: str | None = None) -> TrainResult:
    """Download the run's `train_result` artifact directory and load it.

    Raises:
        ReportSourceError: no such run, or the run has no `train_result` artifact.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise ReportSourceError(f"run {run_id!r} not found: {error.message}") from None
    names = {item.path for item in client.list_artifacts(run_id)}
    if TRAIN_RESULT_PATH not in names:
        raise ReportSourceError(
            f"run {run_id!r} has no {TRAIN_RESULT_PATH!r} artifact (was it logged by ctit train?)"
        )
    with tempfile.TemporaryDirectory(prefix="ctit-report-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=TRAIN_RESULT_PATH,
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
        except MlflowException as error:
            raise ReportSourceError(
                f"run {run_id!r}: cannot download {TRAIN_RESULT_PATH!r}: {error.message}"
            ) from None
        try:
            result = TrainResult.load(Path(local))
        except (OSError, ValueError, KeyError) as error:
            raise ReportSourceError(
                f"run {run_id!r}: {TRAIN_RESULT_PATH!r} cannot be read: {error}"
            ) from None
    if result.run_id is None:
        result.run_id = run_id
    # Registration comes after the result was logged: the run's tag says which version it became.
    registered = client.get_run(run_id).data.tags.get("ctit.registered_version")
    if registered:
        name, _, version = registered.rpartition("/")
        result.registered_version = version
        if name and getattr(result.model, "metadata", None) is not None:
            result.model.metadata["name"] = name
    return result
