"""External or temporal validation of a registered model on a labelled cohort (`ctit evaluate`).

The deployed model scores the cohort exactly as serving does (its own feature pipeline, booster
and calibrator); the comparators stored in its artifact (logistic regression and the baseline-PLT
rule, fitted on the same training data) score the same episodes. Every figure has a patient
bootstrap 95% CI, and the candidate-minus-comparator AUROC and Brier differences a paired one.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.cohort import Cohort, summarise
from data.labels import attrition, derive_labels, get_definition
from training import comparators, evaluation, plots
from training.config import EvaluationConfig
from training.metrics import METRIC_LABELS
from training.templates import environment

log = logging.getLogger(__name__)

MODEL_LABELS = {
    "xgboost": "Deployed model (XGBoost, calibrated)",
    "logreg": "Logistic regression (comparator)",
    "plt_baseline": "Baseline PLT rule (comparator)",
}


class EvaluationError(ValueError):
    """The cohort cannot be used to evaluate this model; the message says why."""


@dataclass
class ExternalEvaluation:
    """Everything `ctit evaluate` measured, for the table, MLflow and the reviewer page."""

    model: dict[str, str]  # name, version, label_definition, uri
    label_definition: str
    cohort_name: str
    predictions: pd.DataFrame  # episode_id, patient_id, y, repeat, fold, p_xgb, p_logreg, p_plt
    metrics: dict[str, dict[str, dict[str, float]]]
    comparison: dict[str, dict[str, dict[str, float]]]
    subgroups: pd.DataFrame
    decision_curve: pd.DataFrame
    calibration: dict[str, pd.DataFrame]
    attrition: dict[str, Any]
    cohort_summary: dict[str, Any]
    settings: EvaluationConfig
    warnings: list[str] = field(default_factory=list)
    run_id: str | None = None

    @property
    def n_episodes(self) -> int:
        return int(len(self.predictions))

    @property
    def events(self) -> int:
        return int(self.predictions["y"].sum())


def evaluate_model(
    model: Any,
    cohort: Cohort,
    label: str | None = None,
    settings: EvaluationConfig | None = None,
    model_uri: str = "",
    cohort_name: str = "cohort",
) -> ExternalEvaluation:
    """Score `cohort` with the deployed model and its stored comparators, and measure them.

    `label` defaults to the model's own label definition; another one is allowed (a temporal
    check of a label change, say) and noted among the warnings.
    """
    info = dict(model.info)
    trained_label = info.get("label_definition")
    definition = get_definition(label or trained_label)
    warnings = []
    if trained_label and definition.name != trained_label:
        warnings.append(
            f"the model was trained on label {trained_label!r}; evaluated on {definition.name!r}"
        )
    threshold = float(model.bands.operating_threshold)
    settings = settings or EvaluationConfig(operating_threshold=threshold)
    labels = derive_labels(cohort, definition)
    labelled = labels[labels["label"].notna()]
    if labelled.empty:
        raise EvaluationError(f"no episode of the cohort has a label under {definition.name!r}")
    y = labelled.set_index("episode_id")["label"].astype(int)
    if y.nunique() < 2:
        raise EvaluationError(
            f"every labelled episode ({len(y)}) has the same outcome; AUROC and calibration need "
            "responders and non-responders"
        )
    prepared = model.prepare(cohort)
    X = pd.DataFrame(prepared.X, index=prepared.episode_ids, columns=model.feature_names)
    X = X.loc[y.index]
    scored = model.predict_matrix(X.to_numpy(dtype=np.float32), interval=False)
    patient_of = cohort.episodes.set_index("episode_id")["patient_id"].astype(str)
    frame = pd.DataFrame(
        {
            "episode_id": y.index.to_numpy(),
            "patient_id": patient_of.loc[y.index].to_numpy(),
            "y": y.to_numpy(),
            "repeat": 0,
            "fold": 0,
            "p_xgb": np.asarray(scored["probability"], dtype=float),
        }
    )
    stored = model.metadata.get("comparators") or {}
    for name, column in evaluation.COMPARATORS.items():
        if name in stored:
            frame[column] = comparators.predict_from_dict(stored[name], X)
        else:
            warnings.append(f"the model artifact carries no {name} comparator; not evaluated")
    metrics = evaluation.overall_metrics(frame, settings)
    comparison = evaluation.paired_comparison(frame, settings)
    members = evaluation.subgroup_frame(cohort, labels)
    subgroups = evaluation.subgroup_metrics(frame, members, settings)
    curve = evaluation.decision_curve(frame, settings)
    calibration = {
        name: plots.calibration_bins(frame["y"].to_numpy(), frame[column].to_numpy())
        for name, column in evaluation.MODELS.items()
        if column in frame
    }
    return ExternalEvaluation(
        model={**info, "uri": model_uri},
        label_definition=definition.name,
        cohort_name=cohort_name,
        predictions=frame,
        metrics=metrics,
        comparison=comparison,
        subgroups=subgroups,
        decision_curve=curve,
        calibration=calibration,
        attrition=attrition(labels),
        cohort_summary=summarise(cohort),
        settings=settings,
        warnings=warnings,
    )


def flat_metrics(ev: ExternalEvaluation) -> dict[str, float]:
    """The figures as MLflow metric names, the same names training logs for out-of-fold ones."""
    flat: dict[str, float] = {}
    for model, by_metric in ev.metrics.items():
        for metric, values in by_metric.items():
            for kind, value in values.items():
                key = f"{model}.{metric}" if kind == "estimate" else f"{model}.{metric}.{kind}"
                flat[key] = value
    for name, diffs in ev.comparison.items():
        for metric, values in diffs.items():
            key = f"xgboost_minus_{name}.{metric}"
            flat[key] = values["estimate"]
            flat[f"{key}.low"] = values["low"]
            flat[f"{key}.high"] = values["high"]
    flat["data.n_episodes"] = ev.n_episodes
    flat["data.n_patients"] = int(ev.predictions["patient_id"].nunique())
    flat["data.events"] = ev.events
    flat["data.prevalence"] = ev.events / max(ev.n_episodes, 1)
    return {k: float(v) for k, v in flat.items() if v is not None and v == v}


def write_artifacts(ev: ExternalEvaluation, directory: Path) -> Path:
    """Tables, figures and the reviewer page of one evaluation, into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plots").mkdir(exist_ok=True)
    ev.predictions.drop(columns=["repeat", "fold"]).to_csv(
        directory / "predictions.csv", index=False
    )
    ev.subgroups.to_csv(directory / "subgroups.csv", index=False)
    ev.decision_curve.to_csv(directory / "decision_curve.csv", index=False)
    for name, table in ev.calibration.items():
        table.to_csv(directory / f"calibration_{name}.csv", index=False)
    for name in ("metrics", "comparison", "attrition", "cohort_summary"):
        (directory / f"{name}.json").write_text(
            json.dumps(getattr(ev, name), indent=2, default=str), encoding="utf-8"
        )
    scope = f"external: {ev.cohort_name}"
    figures = directory / "plots"
    plots.roc_figure(ev.predictions, ev.metrics, scope, path=figures / "roc.png")
    plots.calibration_figure(ev.predictions, ev.metrics, scope, path=figures / "calibration.png")
    plots.decision_curve_figure(ev.decision_curve, scope, path=figures / "decision_curve.png")
    (directory / "report.html").write_text(render_html(ev, directory / "plots"), encoding="utf-8")
    return directory


def log_evaluation(ev: ExternalEvaluation, tracking_uri: str, experiment_name: str) -> str:
    """Log the evaluation as its own MLflow run, tagged with the model's name and version, and
    tag the registered model version with the run (when the model came from the registry)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from training.tracking import TrackingSettings, _ensure_experiment, git_commit

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = _ensure_experiment(
        TrackingSettings(tracking_uri=tracking_uri, experiment_name=experiment_name)
    )
    name, version = ev.model.get("name", ""), ev.model.get("version", "")
    run_name = f"evaluate {name} v{version} on {ev.cohort_name}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags(
            {
                "ctit.run_kind": "evaluation",
                "ctit.model_name": name,
                "ctit.model_version": version,
                "ctit.model_uri": ev.model.get("uri", ""),
                "ctit.model_label_definition": ev.model.get("label_definition", ""),
                "ctit.label_definition": ev.label_definition,
                "ctit.cohort": ev.cohort_name,
                "ctit.git_commit": git_commit() or "unknown",
            }
        )
        mlflow.log_params(
            {
                "n_bootstrap": ev.settings.n_bootstrap,
                "bootstrap_seed": ev.settings.bootstrap_seed,
                "operating_threshold": ev.settings.operating_threshold,
            }
        )
        mlflow.log_metrics(flat_metrics(ev))
        with tempfile.TemporaryDirectory(prefix="ctit-evaluate-") as tmp:
            write_artifacts(ev, Path(tmp) / "evaluation")
            mlflow.log_artifacts(str(Path(tmp) / "evaluation"), "evaluation")
        run_id = run.info.run_id
    if name and version.isdigit():
        try:
            MlflowClient().set_model_version_tag(
                name, version, f"ctit.evaluation.{ev.cohort_name}", run_id
            )
        except MlflowException as error:  # the run stands; the link is a convenience
            log.warning("could not tag %s version %s with the evaluation: %s", name, version, error)
    ev.run_id = run_id
    return run_id


def _cell(values: dict[str, float] | None, digits: int) -> str:
    if not values or values.get("estimate") is None or values["estimate"] != values["estimate"]:
        return "-"
    e, lo, hi = values["estimate"], values.get("low"), values.get("high")
    if lo is None or hi is None or lo != lo or hi != hi:
        return f"{e:.{digits}f}"
    return f"{e:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"


def _image(path: Path) -> str | None:
    """The PNG at `path` as a data URI (the page carries its own images), or None."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_FIGURES = (
    ("calibration", "Calibration plot"),
    ("decision_curve", "Decision curve"),
    ("roc", "ROC curves"),
)


def render_html(ev: ExternalEvaluation, plot_dir: Path | None = None) -> str:
    """A self-contained page for reviewers: what was evaluated, on what, and every figure."""
    return environment().get_template("external.html").render(x=_page_context(ev, plot_dir))


def _page_context(ev: ExternalEvaluation, plot_dir: Path | None) -> dict[str, Any]:
    """The page's values as plain strings and lists (the template only lays them out)."""
    models = [m for m in evaluation.MODELS if m in ev.metrics]
    model = ev.model
    figures = []
    if plot_dir is not None:
        images = ((_image(plot_dir / f"{name}.png"), title) for name, title in _FIGURES)
        figures = [(src, title) for src, title in images if src is not None]
    return {
        "name": str(model.get("name", "")),
        "version": str(model.get("version", "")),
        "uri": str(model.get("uri", "")),
        "trained_label": str(model.get("label_definition", "")),
        "cohort": ev.cohort_name,
        "label": ev.label_definition,
        "episodes": ev.n_episodes,
        "patients": ev.predictions["patient_id"].nunique(),
        "events": ev.events,
        "n_bootstrap": ev.settings.n_bootstrap,
        "threshold": f"{ev.settings.operating_threshold:g}",
        "models": [MODEL_LABELS[m] for m in models],
        "performance": [
            (label, [_cell(ev.metrics[m].get(key), digits) for m in models])
            for key, label, digits in METRIC_LABELS
        ],
        "comparison": [
            (MODEL_LABELS[name], _cell(d["auroc_diff"], 3), _cell(d["brier_diff"], 4))
            for name, d in ev.comparison.items()
        ],
        "subgroups": [_subgroup_row(r) for r in ev.subgroups.itertuples() if r.model == "xgboost"],
        "figures": figures,
        "attrition": json.dumps(
            {k: v for k, v in ev.attrition.items() if k != "response_rate"}, indent=2, default=str
        ),
        "warnings": list(ev.warnings),
    }


def _subgroup_row(r: Any) -> list[Any]:
    auroc = {"estimate": r.auroc, "low": r.auroc_low, "high": r.auroc_high}
    return [
        str(r.subgroup),
        str(r.level),
        r.n,
        r.events,
        _cell(auroc, 3),
        _cell({"estimate": r.brier}, 4),
        _cell({"estimate": r.oe_ratio}, 2),
    ]
