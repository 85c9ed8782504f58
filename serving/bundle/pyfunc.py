"""The deployable model as an MLflow pyfunc (loading it back from any URI: `serving.bundle.uri`).

Input of the pyfunc (also what `mlflow models serve` accepts): a DataFrame with one string column
`record` holding one patient record per row as JSON (DESIGN.md "One patient over HTTP"; a dict is
accepted too when called in process). Output: one row per episode with `record_index`,
`episode_id`, `probability` (calibrated probability of response), `interval_low`, `interval_high`
and `band`. Probabilities, never labels.

The logged model carries the code of `data`, `features` and `serving` (`code_paths`), so a scoring
host needs no training code, and explicit `pip_requirements` (inferring them costs seconds).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from serving.bundle.model import DeployableModel
from serving.bundle.uri import ARTIFACT_KEY
from serving.request.records import RecordError
from serving.request.schemas import EXAMPLE_RECORD
from serving.scoring.scorer import Scorer

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = [
    "record_index",
    "episode_id",
    "probability",
    "interval_low",
    "interval_high",
    "band",
    # issue 18: the interval's stated level and the chance of response by day
    "interval_level",
    "median_days_to_response",
    "response_by_day",
]
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "record")]),
    outputs=Schema(
        [
            ColSpec("long", "record_index"),
            ColSpec("string", "episode_id"),
            ColSpec("double", "probability"),
            ColSpec("double", "interval_low"),
            ColSpec("double", "interval_high"),
            ColSpec("string", "band"),
            ColSpec("double", "interval_level"),
            ColSpec("double", "median_days_to_response"),
            ColSpec("string", "response_by_day"),
        ]
    ),
)
_REQUIREMENTS = (
    "mlflow",
    "xgboost",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pyarrow",
    "pydantic",
)


def pip_requirements() -> list[str]:
    """Exact versions of what scoring imports, as installed here."""
    out = []
    for package in _REQUIREMENTS:
        try:
            out.append(f"{package}=={importlib_metadata.version(package)}")
        except importlib_metadata.PackageNotFoundError:
            out.append(package)
    return out


class DeployablePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper: patient records as JSON strings in, calibrated probabilities out."""

    def load_context(self, context: Any) -> None:
        model = DeployableModel.load(context.artifacts[ARTIFACT_KEY])
        self._scorer = Scorer(model)

    # A DataFrame hint makes MLflow use the logged signature, not a schema of its own.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        records = records_from_frame(model_input)
        try:
            results = self._scorer.score_batch(records, explain=False)
        except RecordError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return results_to_frame(results)


def records_from_frame(model_input: Any) -> list[Any]:
    """Patient records from the pyfunc input (a DataFrame with a `record` column)."""
    if isinstance(model_input, pd.DataFrame):
        if "record" not in model_input.columns:
            raise MlflowException(
                "input needs one column `record` holding a patient record as JSON; got columns "
                f"{list(model_input.columns)}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        values = list(model_input["record"])
    elif isinstance(model_input, Mapping):
        values = [model_input]
    else:
        values = list(model_input)
    records = []
    for i, value in enumerate(values):
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise MlflowException(
                    f"record {i}: not valid JSON ({exc})", error_code=INVALID_PARAMETER_VALUE
                ) from None
        records.append(value)
    return records


def results_to_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """The pyfunc output frame from scorer answers."""
    rows = [
        {
            "record_index": int(r.get("record_index", 0)),
            "episode_id": r["episode_id"],
            "probability": r["probability"],
            "interval_low": r["interval"][0],
            "interval_high": r["interval"][1],
            "band": r["band"],
            **_uncertainty_columns(r),
        }
        for r in results
    ]
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def _uncertainty_columns(answer: dict[str, Any]) -> dict[str, Any]:
    """interval_level and median day as numbers (NaN when absent), the curve as a JSON list."""
    level, median = answer.get("interval_level"), answer.get("median_days_to_response")
    curve = answer.get("response_by_day")
    return {
        "interval_level": float("nan") if level is None else float(level),
        "median_days_to_response": float("nan") if median is None else float(median),
        "response_by_day": "" if curve is None else json.dumps([round(v, 6) for v in curve]),
    }


def _code_paths() -> list[str]:
    import data
    import features
    import serving

    return [str(Path(package.__file__).parent) for package in (data, features, serving)]


def example_record(model: DeployableModel) -> dict[str, Any]:
    """The documented example record plus the model's extra patient and episode fields (null),
    so that a model trained with `extra_static` columns answers its own input example."""
    record = copy.deepcopy(EXAMPLE_RECORD)
    extra = model.metadata.get("extra_fields") or {}
    for table in ("patient", "episode"):
        for column in extra.get(table, ()):
            record[table].setdefault(column, None)
    return record


def log_deployable_model(
    model: DeployableModel,
    artifact_path: str = "model",
    registered_model_name: str | None = None,
    input_example: dict[str, Any] | None = None,
) -> Any:
    """Log the model to the active MLflow run as a pyfunc; returns the `ModelInfo`.

    `input_example` is one patient record (default: the documented example record); it is stored
    as the pyfunc's input example and used to infer the signature.
    """
    record = input_example if input_example is not None else example_record(model)
    example = pd.DataFrame({"record": [json.dumps(record, default=str)]})
    # Scoring the example checks that the model answers before anything is logged.
    Scorer(model).score_batch(records_from_frame(example), explain=False)
    with tempfile.TemporaryDirectory(prefix="ctit-model-") as tmp:
        saved = model.save(Path(tmp) / ARTIFACT_KEY)
        return mlflow.pyfunc.log_model(
            name=artifact_path,
            python_model=DeployablePyfunc(),
            artifacts={ARTIFACT_KEY: str(saved)},
            code_paths=_code_paths(),
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            metadata={"ctit": model.info},
        )
