"""A `DeployableModel` from a local path or any MLflow URI (`models:/`, `runs:/`, ...).

Scoring loads models through here (`serving.scoring.scorer.Scorer.load`), and so do the commands
that evaluate or monitor a registered model; `serving.bundle.pyfunc` logs them in the layout read
here (the saved model under the pyfunc artifact `ARTIFACT_KEY`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from serving.bundle.model import DeployableModel
from serving.bundle.store import ModelLoadError

#: The pyfunc artifact that holds the saved `DeployableModel`.
ARTIFACT_KEY = "deployable"


def _deployable_dir(local: Path, uri: str) -> Path:
    """The saved DeployableModel inside a local copy of a model (pyfunc or bare)."""
    if (local / "manifest.json").is_file():
        return local
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise ModelLoadError(
            f"model {uri}: neither a ctit deployable model nor an MLflow model (no manifest.json "
            "or MLmodel)"
        )
    try:
        conf = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
        artifacts = conf["flavors"]["python_function"]["artifacts"]
        relative = artifacts[ARTIFACT_KEY]["path"]
    except (KeyError, TypeError, yaml.YAMLError) as exc:
        raise ModelLoadError(
            f"model {uri}: MLmodel is not a ctit deployable pyfunc ({type(exc).__name__}: {exc})"
        ) from None
    return local / relative


def _registry_identity(uri: str) -> dict[str, str] | None:
    """(name, version) of a `models:/` URI, resolved against the registry."""
    if not uri.startswith("models:/"):
        return None
    rest = uri.removeprefix("models:/").strip("/")
    client = mlflow.MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = rest.partition("/")
        if not number.isdigit():
            return None
        version = client.get_model_version(name, number)
    return {"name": name, "version": str(version.version)}


def load_deployable_model(uri: str) -> DeployableModel:
    """The DeployableModel at `models:/name@alias`, `models:/name/1`, `runs:/id/path` or a path.

    Raises:
        ModelLoadError: the model is missing, not a ctit model, or corrupted; names the URI.
    """
    path = Path(uri)
    if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        if not path.exists():
            raise ModelLoadError(f"model {uri}: no such file or directory")
        return DeployableModel.load(_deployable_dir(path, uri), uri=uri)
    try:
        identity = _registry_identity(uri)
        with tempfile.TemporaryDirectory(prefix="ctit-load-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            model = DeployableModel.load(_deployable_dir(local, uri), uri=uri)
    except ModelLoadError:
        raise
    except MlflowException as exc:
        raise ModelLoadError(f"model {uri}: cannot be fetched ({exc.message})") from None
    except OSError as exc:
        raise ModelLoadError(f"model {uri}: cannot be fetched ({exc})") from None
    if identity is not None:
        model.metadata = {
            **model.metadata,
            "trained_version": model.metadata.get("version"),
            "name": identity["name"],
            "version": identity["version"],
        }
    model.metadata.setdefault("uri", uri)
    return model
