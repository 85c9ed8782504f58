"""Options and settings shared by several commands, resolved at the CLI edge only."""

from __future__ import annotations

import os
from typing import Annotated

import typer

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db).",
    ),
]


def tracking_uri(option: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded SQLite store."""
    return option or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
