"""TrainResult: everything one training run produced, the contract with the reviewer report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_FRAMES = ("X", "raw_features", "oof", "subgroups", "decision_curve", "table1", "fold_importance")
_SERIES = ("y", "groups")
_DICTS = (
    "config",
    "metrics",
    "attrition",
    "sample_size",
    "cohort_summary",
    "monotone_constraints",
    "validation",
    "tuning",
)
_SCALARS = ("label_definition", "run_id", "model_uri", "data_fingerprint", "registered_version")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


@dataclass
class TrainResult:
    """One training run. See docs/ARCHITECTURE.md (training) for every field."""

    config: dict[str, Any]
    label_definition: str
    model: Any  # serving.model.DeployableModel
    X: pd.DataFrame
    raw_features: pd.DataFrame
    y: pd.Series
    groups: pd.Series
    oof: pd.DataFrame
    metrics: dict[str, dict[str, dict[str, float]]]
    subgroups: pd.DataFrame
    decision_curve: pd.DataFrame
    table1: pd.DataFrame
    attrition: dict[str, Any]
    sample_size: dict[str, Any]
    cohort_summary: dict[str, Any]
    fold_importance: pd.DataFrame
    monotone_constraints: dict[str, int]
    run_id: str | None = None
    model_uri: str | None = None
    data_fingerprint: str = ""
    validation: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    # Set after registration, which comes last: the logged train_result holds None.
    registered_version: str | None = None

    def save(self, directory: str | Path) -> Path:
        """Write every field to `directory` (Parquet frames, JSON dicts, the model's own format)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in _FRAMES:
            _write_frame(getattr(self, name), directory / f"{name}.parquet")
        for name in _SERIES:
            series = getattr(self, name)
            _write_frame(series.to_frame(name=series.name or name), directory / f"{name}.parquet")
        meta = {name: _jsonable(getattr(self, name)) for name in _DICTS + _SCALARS}
        (directory / "result.json").write_text(
            json.dumps(meta, indent=2, default=str), encoding="utf-8"
        )
        if self.model is not None:
            self.model.save(directory / "model")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TrainResult:
        """Read a directory written by `save`."""
        from serving.bundle.model import DeployableModel

        directory = Path(directory)
        meta = json.loads((directory / "result.json").read_text(encoding="utf-8"))
        kwargs: dict[str, Any] = {name: meta.get(name) for name in _DICTS + _SCALARS}
        for name in _FRAMES:
            kwargs[name] = pd.read_parquet(directory / f"{name}.parquet")
        for name in _SERIES:
            frame = pd.read_parquet(directory / f"{name}.parquet")
            kwargs[name] = frame.iloc[:, 0]
        kwargs["monotone_constraints"] = {
            k: int(v) for k, v in (kwargs["monotone_constraints"] or {}).items()
        }
        model_dir = directory / "model"
        kwargs["model"] = DeployableModel.load(model_dir) if model_dir.exists() else None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in known})


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            # Mixed Python objects (e.g. strings and floats) do not round-trip in Parquet.
            frame[column] = frame[column].map(lambda v: v if v is None or pd.isna(v) else str(v))
    frame.columns = [str(c) for c in frame.columns]
    frame.to_parquet(path)
