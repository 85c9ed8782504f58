"""MLflow tracking and registry: params, tags, dataset, metrics, artifacts, the model and its alias.

Registration is the last step; when anything fails the version it created (and a registered model
it created) is deleted and the run ends FAILED, so the registry never holds an orphan version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from training.config import flatten

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"


class TrackingError(RuntimeError):
    """MLflow logging or registration failed; nothing was left registered."""


@dataclass(frozen=True)
class TrackingSettings:
    """Where and under which names a run is tracked (resolved at the CLI edge)."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    experiment_name: str = "ctit"
    registered_model: str = "ctit-response"
    run_name: str | None = None
    artifact_location: str | None = None
    register: bool = True
    tags: dict[str, str] = field(default_factory=dict)


def check_tracking_store(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any work, when an MLflow tracking server cannot be reached.

    MLflow's client retries a dead server for minutes; a training job should say at once that
    nothing can be tracked (and so nothing will be registered). Local stores need no check.

    Raises:
        TrackingError: the server does not answer its health check (names the URI and why).
    """
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    health = tracking_uri.rstrip("/") + "/health"
    try:
        answer = httpx.get(health, timeout=timeout_s)
    except httpx.HTTPError as error:
        raise TrackingError(
            f"MLflow tracking server {tracking_uri} is unreachable ({type(error).__name__}: "
            f"{error}); nothing was trained or registered"
        ) from None
    if answer.status_code != 200:
        raise TrackingError(
            f"MLflow tracking server {tracking_uri} answered its health check with HTTP "
            f"{answer.status_code}; nothing was trained or registered"
        )


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a SQLite store, keep artifacts in `mlartifacts/` beside the database file."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db_path = tracking_uri[len("sqlite:///") :]
    if not db_path or db_path == ":memory:":
        return None
    return (Path(db_path).resolve().parent / "mlartifacts").as_uri()


def data_fingerprint(cohort: Any) -> str:
    """SHA-256 over the cohort's normalised tables (column names and row hashes, in order)."""
    digest = hashlib.sha256()
    for name in ("patients", "episodes", "labs", "regimens", "outcomes"):
        frame = getattr(cohort, name, None)
        digest.update(name.encode())
        if frame is None:
            digest.update(b"<absent>")
            continue
        digest.update(json.dumps([str(c) for c in frame.columns]).encode())
        try:
            hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        except TypeError:  # unhashable cells (e.g. lists in an extra column)
            hashes = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
        digest.update(hashes.tobytes())
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the checked-out code, or None outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _ensure_experiment(settings: TrackingSettings) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = settings.artifact_location or default_artifact_location(settings.tracking_uri)
    return client.create_experiment(settings.experiment_name, artifact_location=location)


@contextmanager
def tracked_run(settings: TrackingSettings) -> Iterator[RunHandle]:
    """Open a run; on any exception, roll back registrations and end the run FAILED."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment_id = _ensure_experiment(settings)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=settings.run_name)
    handle = RunHandle(run.info.run_id, settings)
    try:
        yield handle
    except BaseException:
        handle.rollback()
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


class RunHandle:
    """The active run, and what it registered (for rollback)."""

    def __init__(self, run_id: str, settings: TrackingSettings) -> None:
        self.run_id = run_id
        self.settings = settings
        self.created_versions: list[tuple[str, str]] = []
        self.created_models: list[str] = []

    def log_setup(
        self,
        config: dict[str, Any],
        experiment_text: str | None,
        label_definition: Any,
        fingerprint: str,
    ) -> None:
        """Params (flattened experiment), tags and the experiment/label artifacts."""
        params = flatten(config)
        items = list(params.items())
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start : start + 100]))
        label = asdict(label_definition) if is_dataclass(label_definition) else label_definition
        tags = {
            "ctit.git_commit": git_commit() or "unknown",
            "ctit.data_fingerprint": fingerprint,
            "ctit.label_definition": getattr(label_definition, "name", str(label_definition)),
            "ctit.experiment": str(config.get("name", "")),
            **self.settings.tags,
        }
        mlflow.set_tags(tags)
        # The run's description (MLflow shows the `mlflow.note.content` tag as the description).
        mlflow.set_tag(
            "mlflow.note.content", run_description(config, label_definition, fingerprint)
        )
        if experiment_text is not None:
            mlflow.log_text(experiment_text, "experiment/experiment.toml")
        mlflow.log_dict(config, "experiment/experiment.json")
        mlflow.log_dict(_jsonable(label), "experiment/label_definition.json")

    def log_dataset(self, frame: pd.DataFrame, name: str, fingerprint: str) -> None:
        """The labelled model features and response, as the run's training input."""
        dataset = mlflow.data.from_pandas(
            frame.reset_index(), targets="response", name=name, digest=fingerprint[:16]
        )
        mlflow.log_input(dataset, context="training", tags={"ctit.data_fingerprint": fingerprint})

    def log_metrics(self, metrics: dict[str, dict[str, dict[str, float]]], extra: dict) -> None:
        flat: dict[str, float] = {}
        for model, by_metric in metrics.items():
            for metric, values in by_metric.items():
                for kind, value in values.items():
                    key = f"{model}.{metric}" if kind == "estimate" else f"{model}.{metric}.{kind}"
                    if value is not None and value == value:
                        flat[key] = float(value)
        for key, value in extra.items():
            if value is not None and value == value:
                flat[key] = float(value)
        mlflow.log_metrics(flat)

    def log_artifact_dir(self, directory: Path, artifact_path: str) -> None:
        mlflow.log_artifacts(str(directory), artifact_path)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_tuned_params(self, params: dict[str, Any] | None) -> None:
        """The final model's tuned hyper-parameters as params (`tuned.<name>`), beside the
        search ranges that the experiment's params hold."""
        if params:
            mlflow.log_params({f"tuned.{k}": _param_value(v) for k, v in params.items()})

    def register(self, model_uri: str, tags: dict[str, str], description: str | None = None) -> str:
        """Register the logged model under the configured name and point @candidate at it;
        the registered model and the version carry descriptions (what it predicts, its input)."""
        client = MlflowClient()
        name = self.settings.registered_model
        try:
            registered = client.get_registered_model(name)
            if not registered.description:
                client.update_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)
        except MlflowException:
            client.create_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)
            self.created_models.append(name)
        version = client.create_model_version(
            name, model_uri, run_id=self.run_id, tags=tags, description=description
        )
        self.created_versions.append((name, version.version))
        client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
        return version.version

    def rollback(self) -> None:
        """Delete what this run registered; never raises (the original error matters more)."""
        client = MlflowClient()
        for name, version in reversed(self.created_versions):
            try:
                client.delete_model_version(name, version)
                log.warning("deleted model version %s/%s of the failed run", name, version)
            except Exception:  # noqa: BLE001
                log.exception("could not delete model version %s/%s", name, version)
        for name in self.created_models:
            try:
                if not client.search_model_versions(f"name='{name}'"):
                    client.delete_registered_model(name)
            except Exception:  # noqa: BLE001
                log.exception("could not delete registered model %s", name)
        self.created_versions.clear()
        self.created_models.clear()


#: What every registered ctit model is, for the registry's page of the model.
REGISTERED_MODEL_DESCRIPTION = (
    "ctit: the calibrated probability that an episode of cancer-therapy-induced thrombocytopenia "
    "responds to hetrombopag, estimated before the first dose from baseline labs, platelet and "
    "regimen history and clinical findings, with SHAP explanations. Versions are registered "
    "@candidate by `ctit train` and made @champion by `ctit promote` when they pass the gates. "
    "Decision support only."
)


def input_description() -> str:
    """The pyfunc's input in words: one `record` column of JSON patient records, with each
    part's fields (the full JSON schema is logged beside the model as
    `model_input/record.schema.json`)."""
    from serving.request.schemas import ScoreRequest

    schema = ScoreRequest.model_json_schema()
    defs = schema.get("$defs", {})
    parts = []
    for part in ("patient", "episode", "labs", "regimens"):
        fields = defs.get(_def_name(part), {}).get("properties", {})
        parts.append(f"{part} ({', '.join(fields)})" if fields else part)
    return (
        "Input: a table with one string column `record`, each a patient record as JSON with "
        + "; ".join(parts)
        + ". Output: one row per episode with episode_id, probability, interval_low, "
        "interval_high and band."
    )


def input_schema() -> dict[str, Any]:
    from serving.request.schemas import ScoreRequest

    return ScoreRequest.model_json_schema()


def _def_name(part: str) -> str:
    return {
        "patient": "PatientIn",
        "episode": "EpisodeIn",
        "labs": "LabIn",
        "regimens": "RegimenIn",
    }[part]


def version_description(
    label_definition: str, metrics: dict[str, Any], experiment: str, n_episodes: int
) -> str:
    """A registered version in a few lines: outcome, evidence, input."""
    from features.registry import outcome_words

    auroc = (metrics.get("xgboost") or {}).get("auroc") or {}
    slope = (metrics.get("xgboost") or {}).get("calibration_slope") or {}

    def ci(cell: dict[str, float]) -> str:
        if cell.get("estimate") is None:
            return "not estimated"
        return f"{cell['estimate']:.3f} ({cell.get('low', float('nan')):.3f} to " + (
            f"{cell.get('high', float('nan')):.3f})"
        )

    return (
        f"Experiment {experiment}; response = {outcome_words(label_definition)} "
        f"({label_definition}). Out-of-fold AUROC {ci(auroc)}, calibration slope {ci(slope)} on "
        f"{n_episodes:,} labelled episodes. {input_description()}"
    )


def run_description(config: dict[str, Any], label_definition: Any, fingerprint: str) -> str:
    """The run's description: the experiment's own words, then what was trained on what."""
    from features.registry import outcome_words

    name = getattr(label_definition, "name", str(label_definition))
    own = str(config.get("description") or "").strip()
    text = (
        f"ctit train of experiment {config.get('name', '?')}: response = {outcome_words(name)} "
        f"({name}); cohort fingerprint {fingerprint[:12]}."
    )
    return f"{own}\n\n{text}" if own else text


def _param_value(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list | tuple) else str(value)
    return text[:6000]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
