"""Site recalibration: refit only the calibrator of a registered model on a site's labelled cohort.

The booster, its feature pipeline and its fold models are kept; the new calibrator maps the same
booster margins to probabilities that fit the site. Methods (Steyerberg, Clinical Prediction
Models, ch. 20; PatientLevelPrediction's `recalibratePlp`):

- `intercept`: recalibration in the large, logit p' = logit p + a (the old calibrator's slope
  kept); needs a Platt (or identity) calibrator, so that the result is again one;
- `logistic`: intercept and slope, logit p' = a + b logit p, i.e. a Platt calibrator refitted on
  the booster margins (the same family, since the old one is linear in the margin too);
- `isotonic`: a monotone step function of the raw probability, only when the cohort is large;
- `auto`: isotonic with at least `ISOTONIC_MIN` fitting episodes and `ISOTONIC_MIN_CLASS` of each
  outcome, logistic with at least `LOGISTIC_MIN_CLASS` of each, else intercept.

The labelled episodes are split by patient (stratified) into a fitting part and a held-out part;
the calibrator is fitted on the first and the before/after calibration shown on the second. The
new version is registered `@candidate` with lineage tags (source version and run, the cohort's
fingerprint, the method) and the held-out metrics that `training.promote` gates on, so the usual
promotion gates decide whether it becomes `@champion`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from training.monitor import performance

log = logging.getLogger(__name__)

METHODS = ("auto", "intercept", "logistic", "isotonic")
ISOTONIC_MIN = 5000
ISOTONIC_MIN_CLASS = 500
LOGISTIC_MIN_CLASS = 100


class RecalibrationError(RuntimeError):
    """Recalibration cannot run (no labelled episodes, one outcome only, unsuitable method)."""


@dataclass(frozen=True)
class RecalibrationConfig:
    method: str = "auto"
    holdout_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.1 <= self.holdout_fraction <= 0.9:
            raise ValueError("holdout_fraction must be between 0.1 and 0.9")


@dataclass
class Recalibration:
    """The refitted model and the evidence: before/after on the held-out part."""

    model: Any  # serving.model.DeployableModel with the new calibrator
    method: str
    n_fit: int
    n_holdout: int
    before: dict[str, Any]
    after: dict[str, Any]
    cohort_fingerprint: str
    source: dict[str, str]
    features: pd.DataFrame = field(repr=False)  # the site's labelled episodes, model features
    p_raw: np.ndarray = field(repr=False)  # their raw booster probabilities
    registered_version: str | None = None
    run_id: str | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)
    gate_note: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "method": self.method,
            "n_fit": self.n_fit,
            "n_holdout": self.n_holdout,
            "cohort_fingerprint": self.cohort_fingerprint,
            "calibrator": self.model.calibrator.to_dict(),
            "holdout_before": self.before,
            "holdout_after": self.after,
            "registered_version": self.registered_version,
            "run_id": self.run_id,
            "gates": self.gates,
            "gate_note": self.gate_note,
        }


def choose_method(method: str, y_fit: np.ndarray, calibrator_method: str) -> str:
    """The method `auto` resolves to for these fitting outcomes (see the module docstring)."""
    smaller = int(min(y_fit.sum(), y_fit.size - y_fit.sum()))
    if method == "auto":
        if y_fit.size >= ISOTONIC_MIN and smaller >= ISOTONIC_MIN_CLASS:
            return "isotonic"
        if smaller >= LOGISTIC_MIN_CLASS or calibrator_method not in ("platt", "none"):
            return "logistic"
        return "intercept"
    return method


def fit_calibrator(method: str, margin: np.ndarray, y: np.ndarray, old: Any) -> Any:
    """A new `serving.model.Calibrator` for booster margins `margin` and outcomes `y`."""
    from serving.bundle.calibrator import Calibrator

    if method == "logistic":
        return Calibrator("platt").fit(expit(margin), y)
    if method == "isotonic":
        return Calibrator("isotonic").fit(expit(margin), y)
    if method != "intercept":
        raise RecalibrationError(f"unknown method {method!r}")
    if old.method not in ("platt", "none"):
        raise RecalibrationError(
            f"intercept-only recalibration keeps the old calibrator's shape, which must be Platt "
            f"(this model's is {old.method}); use --method logistic"
        )
    slope = old.slope_ if old.method == "platt" else 1.0
    intercept = old.intercept_ if old.method == "platt" else 0.0
    offset = slope * margin + intercept
    a = 0.0
    for _ in range(100):  # Newton's method for the intercept with an offset
        mu = expit(offset + a)
        step = float(np.sum(y - mu) / max(np.sum(mu * (1 - mu)), 1e-12))
        a += step
        if abs(step) < 1e-12:
            break
    return Calibrator.from_dict({"method": "platt", "slope": slope, "intercept": intercept + a})


def carried_interval(interval: Any, old: Any, new: Any) -> Any:
    """The bootstrap interval of a recalibrated model.

    The interval is the deployed log-odds plus or minus k times the refits' spread of
    calibrated log-odds. When the old calibrator, the new one and every refit's are Platt maps,
    the site's recalibration is an affine map of log-odds, logit -> r logit + s with r the ratio
    of the new to the old slope: each refit's map is carried by it, so the spread (and the
    width) scales by |r|. Otherwise (isotonic) no such map exists: the refits are kept and the
    stated meaning says the coverage is not re-established at the site.
    """
    if interval is None:
        return None
    platt = {getattr(c, "method", None) for c in (old, new, *interval.calibrators)} == {"platt"}
    if platt and old.slope_ != 0:
        from serving.bundle.calibrator import Calibrator

        ratio = new.slope_ / old.slope_
        shift = new.intercept_ - ratio * old.intercept_
        calibrators = [
            Calibrator.from_dict(
                {
                    "method": "platt",
                    "slope": ratio * c.slope_,
                    "intercept": ratio * c.intercept_ + shift,
                }
            )
            for c in interval.calibrators
        ]
        note = f"each refit's Platt map carried by the site recalibration (log-odds x {ratio:.3g})"
        return replace(interval, calibrators=calibrators, meta={**interval.meta, "site": note})
    note = (
        f"the site's {new.method} recalibration changed the probability scale; this coverage "
        "was shown for the training procedure and is not re-established at the site"
    )
    return replace(interval, meta={**interval.meta, "site": note})


def split_holdout(
    groups: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, holdout): patients kept together, outcome strata balanced."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(splitter.split(np.zeros(len(y)), y, groups))
    holdout = np.zeros(len(y), dtype=bool)
    holdout[held] = True
    return ~holdout, holdout


def recalibrate_model(
    model: Any, cohort: Any, config: RecalibrationConfig | None = None
) -> Recalibration:
    """Refit the calibrator of `model` (a DeployableModel) on the labelled episodes of `cohort`."""
    from data.labels import derive_labels, get_definition
    from training.tracking import data_fingerprint

    config = config or RecalibrationConfig()
    label = str(model.metadata["label_definition"])
    labels = derive_labels(cohort, get_definition(label))
    labels = labels[labels["label"].notna()]
    if labels.empty:
        raise RecalibrationError(f"the cohort has no episode labelled by {label}")
    prepared = model.prepare(cohort)
    position = {episode_id: i for i, episode_id in enumerate(prepared.episode_ids)}
    ids = labels["episode_id"].astype(str).tolist()
    rows = np.asarray([position[e] for e in ids])
    X = prepared.X[rows]
    y = labels["label"].astype(int).to_numpy()
    if np.unique(y).size < 2:
        raise RecalibrationError("every labelled episode has the same outcome; cannot recalibrate")
    episodes = cohort.episodes
    patient_of = dict(zip(episodes["episode_id"].astype(str), episodes["patient_id"], strict=True))
    groups = np.asarray([str(patient_of[e]) for e in ids])
    margin = model.booster.inplace_predict(X, predict_type="margin").astype(np.float64)
    fit, holdout = split_holdout(groups, y, config.holdout_fraction, config.seed)
    method = choose_method(config.method, y[fit], model.calibrator.method)
    calibrator = fit_calibrator(method, margin[fit], y[fit], model.calibrator)
    before = _holdout_metrics(y[holdout], model.calibrator.transform_margin(margin[holdout]))
    after = _holdout_metrics(y[holdout], calibrator.transform_margin(margin[holdout]))
    source = {key: str(model.metadata.get(key, "")) for key in ("name", "version", "uri")}
    metadata = {
        **model.metadata,
        "recalibrated_from": source,
        "recalibration_method": method,
    }
    interval = carried_interval(model.interval_model, model.calibrator, calibrator)
    new_model = replace(model, calibrator=calibrator, metadata=metadata, interval_model=interval)
    features = pd.DataFrame(X, index=pd.Index(ids, name="episode_id"), columns=model.feature_names)
    return Recalibration(
        model=new_model,
        method=method,
        n_fit=int(fit.sum()),
        n_holdout=int(holdout.sum()),
        before=before,
        after=after,
        cohort_fingerprint=data_fingerprint(cohort),
        source=source,
        features=features,
        p_raw=expit(margin),
    )


def _holdout_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    out = performance(y.astype(np.float64), p)
    out["brier"] = float(np.mean((p - y) ** 2))
    return out


def register_recalibration(
    result: Recalibration, tracking_uri: str, experiment_name: str = "ctit-recalibration"
) -> Recalibration:
    """Log the recalibrated model in a new run, register it `@candidate`, assess the gates.

    The run carries the source run's experiment (so its promotion gates apply), the held-out
    metrics under the names the gates read, and `monitor_reference/` (the site's features and raw
    predictions: what `ctit monitor` compares later scores with).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from serving.bundle.pyfunc import log_deployable_model
    from training.promote import PromotionError, assess
    from training.tracking import TrackingSettings, tracked_run

    name = result.source["name"]
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    source_run = _source_run(client, name, result.source["version"])
    settings = TrackingSettings(
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        registered_model=name,
        run_name=f"recalibrate {name} v{result.source['version']} ({result.method})",
    )
    tags = {
        "ctit.source_version": result.source["version"],
        "ctit.source_run_id": source_run or "",
        "ctit.recalibration_cohort_fingerprint": result.cohort_fingerprint,
        "ctit.recalibration_method": result.method,
    }
    with tracked_run(settings) as handle:
        mlflow.set_tags(
            {
                **tags,
                "ctit.data_fingerprint": result.cohort_fingerprint,
                "ctit.label_definition": str(result.model.metadata["label_definition"]),
            }
        )
        mlflow.log_params(
            {"method": result.method, "n_fit": result.n_fit, "n_holdout": result.n_holdout}
        )
        with tempfile.TemporaryDirectory(prefix="ctit-recal-") as tmp:
            if source_run:
                try:
                    path = client.download_artifacts(source_run, "experiment/experiment.json", tmp)
                    mlflow.log_dict(
                        json.loads(Path(path).read_text(encoding="utf-8")),
                        "experiment/experiment.json",
                    )
                except Exception:  # noqa: BLE001 - gates then fall back to their defaults
                    log.warning("source run %s has no experiment.json", source_run)
            reference = Path(tmp) / "monitor_reference"
            reference.mkdir()
            result.features.to_parquet(reference / "X.parquet")
            pd.DataFrame({"p_raw": result.p_raw}).to_parquet(reference / "oof.parquet")
            auroc = result.after["auroc"]["estimate"]
            (reference / "reference.json").write_text(json.dumps({"auroc": auroc}))
            mlflow.log_artifacts(str(reference), "monitor_reference")
        metrics: dict[str, float] = {}
        for stage, values in (("before", result.before), ("after", result.after)):
            for key in ("oe_ratio", "calibration_slope", "auroc"):
                for kind, value in values[key].items():
                    if value is not None:
                        suffix = "" if kind == "estimate" else f".{kind}"
                        metrics[f"holdout_{stage}.{key}{suffix}"] = float(value)
            metrics[f"holdout_{stage}.brier"] = float(values["brier"])
        after = result.after
        for key in ("auroc", "calibration_slope", "oe_ratio"):
            for kind, value in after[key].items():
                if value is not None:
                    suffix = "" if kind == "estimate" else f".{kind}"
                    metrics[f"xgboost.{key}{suffix}"] = float(value)
        metrics["xgboost.brier"] = float(after["brier"])
        if source_run:
            # A recalibration is a monotone map of the booster's margin: the ranking, and so the
            # source's paired AUROC comparison with its comparators, is unchanged.
            source_metrics = client.get_run(source_run).data.metrics
            metrics.update(
                {k: v for k, v in source_metrics.items() if k.startswith("xgboost_minus_")}
            )
        mlflow.log_metrics(metrics)
        mlflow.log_dict(result.summary(), "recalibration/summary.json")
        info = log_deployable_model(result.model)
        result.registered_version = handle.register(info.model_uri, tags)
        result.run_id = handle.run_id
    try:
        decision = assess(name, client, allow_new_data=True)
        result.gates = [
            {"name": g.name, "passed": g.passed, "detail": g.detail} for g in decision.gates
        ]
        result.gate_note = decision.note
    except PromotionError as exc:
        result.gate_note = f"gates not assessed: {exc}"
    return result


def _source_run(client: Any, name: str, version: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version).run_id
    except MlflowException:
        return None
