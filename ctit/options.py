"""Options and settings shared by several commands, resolved at the CLI edge only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlparse

import typer
from rich.console import Console
from rich.markup import escape

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
#: The exit code of every command for a cohort that breaks the contract (as `ctit validate`).
INVALID_COHORT_EXIT = 1
#: The exit code when a model or its store cannot be found or loaded.
NO_MODEL_EXIT = 2

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db).",
        metavar="URI",
    ),
]


def tracking_uri(option: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded SQLite store."""
    return option or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (the one error format of ctit)."""
    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False
    )
    raise typer.Exit(code)


def fail_invalid_cohort(path: Path | str, error: Exception) -> NoReturn:
    """The one report of a cohort that breaks the contract, for every command that loads one."""
    fail(
        f"{path} is not a valid cohort (run `ctit validate {path}` for the full report):\n{error}",
        INVALID_COHORT_EXIT,
    )


def _where(option: str | None) -> str:
    if option:
        return "from --tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "from $MLFLOW_TRACKING_URI"
    return "the default; neither --tracking-uri nor $MLFLOW_TRACKING_URI is set"


_HINT = (
    "Run the command in the folder that holds the store, or name it with --tracking-uri "
    "(or $MLFLOW_TRACKING_URI), e.g. --tracking-uri sqlite:///demo/mlruns.db after `ctit demo`."
)


def local_store_path(uri: str) -> Path | None:
    """The file or folder of a local MLflow store (SQLite or file store); None for a server."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        return None if not path or path == ":memory:" else Path(path)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme == "file" else uri)
    return None


def require_registered_model(model: str, option: str | None) -> None:
    """Fail fast, with a hint, when a `models:/` URI names a store or model that is not there.

    Checked before MLflow is asked anything, so a missing local store is never created (an
    empty `mlruns.db` and its schema migration) just to report that it holds no model.
    Other URIs (runs:/, local directories) are left to the model loader.
    """
    if not model.startswith("models:/"):
        return
    uri = tracking_uri(option)
    store = local_store_path(uri)
    if store is not None and not store.exists():
        fail(
            f"no MLflow store at {store.resolve()} (tracking URI {uri}, {_where(option)}), so "
            f"{model} cannot be found; nothing was created. {_HINT}",
            NO_MODEL_EXIT,
        )
    name, _, which = model[len("models:/") :].partition("@")
    if not which:
        name = name.split("/", 1)[0]
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            known = sorted(m.name for m in client.search_registered_models())
        except MlflowException:
            known = []
        listed = ", ".join(known) if known else "none"
        fail(
            f"the MLflow store {uri} ({_where(option)}) has no registered model {name!r} "
            f"(registered models there: {listed}). {_HINT}",
            NO_MODEL_EXIT,
        )
    if which:
        try:
            client.get_model_version_by_alias(name, which)
        except MlflowException:
            fail(
                f"registered model {name!r} in {uri} has no version with the alias @{which}; "
                f"`ctit promote {name}` sets @champion once a candidate passes its gates",
                NO_MODEL_EXIT,
            )


def load_model(model: str, option: str | None) -> Any:
    """The deployable model at `model` (a folder or an MLflow URI in the store of `option`);
    a model that cannot be found or loaded is the one error of `fail`, exit NO_MODEL_EXIT."""
    import mlflow

    from serving.bundle.store import ModelLoadError
    from serving.bundle.uri import load_deployable_model

    mlflow.set_tracking_uri(tracking_uri(option))
    try:
        return load_deployable_model(model)
    except ModelLoadError as error:
        fail(str(error), NO_MODEL_EXIT)
