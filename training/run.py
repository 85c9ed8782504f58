"""Train one experiment end to end: labels, features, validation, evaluation, MLflow."""

from __future__ import annotations

import fnmatch
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from data.cohort import Cohort, summarise
from data.labels import attrition, derive_labels, get_definition
from features.pipeline import FeatureConfig, FeaturePipeline
from features.registry import spec_of
from serving.answers.bands import RiskBands
from serving.bundle.model import DeployableModel
from serving.bundle.reference import summarise_reference
from training import comparators, evaluation, plots, procedure, tables
from training.config import ExperimentConfig, ExperimentError
from training.crossval import CVOutput, cross_validate
from training.interval import fit_bootstrap_interval
from training.procedure import ProcedureSettings
from training.result import TrainResult
from training.sample_size import assess_sample_size
from training.survival import fit_time_to_response, log_time_to_response_metrics
from training.tracking import RunHandle, TrackingSettings, data_fingerprint, tracked_run
from training.tuning import Observer, monotone_vector
from training.validation import (
    Fold,
    SplitError,
    repeated_group_folds,
    site_folds,
    time_folds,
)

log = logging.getLogger(__name__)

# progress(stage, completed, total): the CLI draws it as progress bars.
Progress = Callable[[str, int, int], None]
STAGES = ("features", "cross-validation", "final model", "evaluation", "tracking")


class TrainingError(ValueError):
    """The experiment cannot be trained on this cohort; the message says why."""


def _noop(stage: str, completed: int, total: int) -> None:
    return None


def resolve_monotone(patterns: tuple[str, ...], columns: list[str]) -> dict[str, int]:
    """Monotone constraints from the registry's expected directions for the named features."""
    out: dict[str, int] = {}
    for pattern in patterns:
        matched = [c for c in columns if fnmatch.fnmatchcase(c, pattern)]
        if not matched:
            raise ExperimentError(f"model.monotone: {pattern!r} matches no model feature")
        directed = {}
        for column in matched:
            try:
                direction = spec_of(column).direction
            except KeyError:
                direction = None
            if direction:
                directed[column] = int(direction)
        if not directed and pattern != "*":
            # "*" (the default) means "every feature with a direction", which may be none.
            raise ExperimentError(
                f"model.monotone: {pattern!r} matches {matched[:5]}, but features.registry gives "
                "none of them an expected direction"
            )
        out.update(directed)
    return out


def make_folds(
    config: ExperimentConfig,
    y: pd.Series,
    groups: pd.Series,
    cohort: Cohort,
) -> list[Fold]:
    """The outer folds of the experiment's validation scheme."""
    v = config.validation
    y_arr, g_arr = y.to_numpy().astype(int), groups.astype(str).to_numpy()
    try:
        if v.scheme == "cv":
            return repeated_group_folds(y_arr, g_arr, v.n_splits, v.n_repeats, v.seed)
        if v.scheme == "site":
            if "site" not in cohort.patients:
                raise SplitError("validation by site needs a site column in patients")
            sites = groups.map(cohort.patients.set_index("patient_id")["site"])
            return site_folds(y_arr, g_arr, sites.to_numpy())
        dates = cohort.episodes.set_index("episode_id").loc[y.index, "index_date"]
        return time_folds(y_arr, g_arr, dates.to_numpy(), v.time_test_fraction)
    except SplitError as error:
        raise TrainingError(f"validation.scheme = {v.scheme!r}: {error}") from None


@dataclass
class Design:
    """The labelled design of one experiment on one cohort: features computed once."""

    definition: Any
    labels: pd.DataFrame
    pipeline: FeaturePipeline
    X_all: pd.DataFrame  # every episode's model features (the time model uses the unlabelled)
    raw: pd.DataFrame  # the labelled episodes' raw features (Table 1)
    ids: pd.Index
    X: pd.DataFrame
    y: pd.Series
    groups: pd.Series
    monotone: dict[str, int]
    settings: ProcedureSettings
    folds: list[Fold]


@dataclass
class Deployed:
    """What the deployed model is made of, fitted on every labelled episode."""

    final: procedure.ProcedureFit
    comparators: dict[str, Any]
    interval_model: Any
    time_model: Any
    time_evidence: dict[str, Any]


@dataclass
class Evaluation:
    """Out-of-fold evidence of the deployed procedure and the cohort's description."""

    metrics: dict[str, Any]
    comparison: dict[str, Any]
    subgroups: pd.DataFrame
    decision_curve: pd.DataFrame
    table1: pd.DataFrame
    sample_size: dict[str, Any]
    cohort_summary: dict[str, Any]


def design(config: ExperimentConfig, cohort: Cohort) -> Design:
    """Labels, features (computed once), the labelled matrix, monotone constraints and folds."""
    definition = get_definition(config.label.definition)
    labels = derive_labels(cohort, definition)
    pipeline = FeaturePipeline(_feature_config(config))
    X_all, raw = pipeline.fit_transform_with_raw(cohort)
    labelled = labels[labels["label"].notna()]
    ids = pd.Index(labelled["episode_id"].astype(str), name="episode_id")
    if len(ids) == 0:
        raise TrainingError(f"no episode has a label under {definition.name!r}")
    X = X_all.loc[ids].astype(np.float32)
    y = pd.Series(labelled["label"].astype(int).to_numpy(), index=ids, name="y")
    groups = (
        cohort.episodes.set_index("episode_id")["patient_id"].astype(str).loc[ids].rename("groups")
    )
    monotone = resolve_monotone(config.model.monotone, list(X.columns))
    settings = ProcedureSettings(
        model=config.model,
        calibration_method=config.calibration.method,
        monotone=monotone_vector(list(X.columns), monotone) if monotone else None,
    )
    return Design(
        definition=definition,
        labels=labels,
        pipeline=pipeline,
        X_all=X_all,
        raw=raw.set_index("episode_id").loc[ids].reset_index(),
        ids=ids,
        X=X,
        y=y,
        groups=groups,
        monotone=monotone,
        settings=settings,
        folds=make_folds(config, y, groups, cohort),
    )


def fit_deployed(
    config: ExperimentConfig,
    cohort: Cohort,
    d: Design,
    cv: CVOutput,
    observer: Observer | None = None,
) -> Deployed:
    """The deployed model's parts: exactly the procedure every outer fold ran, on all labelled
    episodes; the comparators; the interval's bootstrap refits and the time-to-response model."""
    final_observer = None
    if observer is not None:

        def final_observer(purpose: str, positions: np.ndarray) -> None:
            observer(f"final:{purpose}", positions)

    X, y, groups = d.X.to_numpy(), d.y.to_numpy(), d.groups.to_numpy()
    final = procedure.fit_procedure(
        X, y, groups, d.settings, config.validation.seed, observer=final_observer
    )
    if observer is not None:
        observer("final:comparators", np.arange(len(y)))
    fitted_comparators = comparators.fit_all(d.X, y)
    # Issue 18: the interval (bootstrap refits of the deployed configuration) and the time model.
    interval_model = fit_bootstrap_interval(
        X,
        y,
        groups,
        final.params,
        final.n_rounds,
        final.p_inner_raw,
        config.calibration.method,
        config.interval,
        observer,
    )
    time_model, time_evidence = fit_time_to_response(
        config, cohort, d.labels, d.X_all, d.definition, d.folds, d.ids, cv.oof, final.params,
        observer,
    )  # fmt: skip
    return Deployed(final, fitted_comparators, interval_model, time_model, time_evidence)


def evaluate(
    config: ExperimentConfig, cohort: Cohort, d: Design, cv: CVOutput, progress: Progress
) -> Evaluation:
    """Out-of-fold metrics with CIs, the paired comparisons, subgroups, the decision curve,
    Table 1, the sample-size assessment and the cohort summary."""
    ev = config.evaluation
    progress("evaluation", 0, 3)
    metrics = evaluation.overall_metrics(cv.oof, ev)
    comparison = evaluation.paired_comparison(cv.oof, ev)
    progress("evaluation", 1, 3)
    members = evaluation.subgroup_frame(cohort, d.labels)
    subgroups = evaluation.subgroup_metrics(cv.oof, members, ev)
    curve = evaluation.decision_curve(cv.oof, ev)
    progress("evaluation", 2, 3)
    table1 = tables.table_one(d.raw, d.y)
    sample_size = assess_sample_size(
        d.y.to_numpy(), d.groups.to_numpy(), d.X.shape[1], ev.anticipated_auroc
    )
    cohort_summary = summarise(cohort)
    progress("evaluation", 3, 3)
    return Evaluation(metrics, comparison, subgroups, curve, table1, sample_size, cohort_summary)


def deployable_model(
    config: ExperimentConfig,
    cohort: Cohort,
    d: Design,
    cv: CVOutput,
    parts: Deployed,
    ev: Evaluation,
) -> DeployableModel:
    """The artifact clinicians get: pipeline, booster, calibrator, fold models, interval, time
    model, risk bands, training reference and the metadata the answers and the report read."""
    config_ev = config.evaluation
    bands = RiskBands(
        thresholds=tuple(config_ev.risk_bands),
        labels=tuple(config_ev.band_labels),
        operating_threshold=config_ev.operating_threshold,
    )
    metrics = ev.metrics
    return DeployableModel(
        pipeline=d.pipeline,
        booster=parts.final.booster,
        calibrator=parts.final.calibrator,
        fold_boosters=cv.fold_boosters,
        bands=bands,
        reference=summarise_reference(d.X, ev.cohort_summary),
        interval_model=parts.interval_model,
        time_model=parts.time_model,
        metadata={
            "name": config.tracking.registered_model,
            "version": "unregistered",
            "label_definition": d.definition.name,
            "label_description": d.definition.describe(),
            "metrics": {k: {m: v["estimate"] for m, v in x.items()} for k, x in metrics.items()},
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "experiment": config.name,
            "n_training_episodes": int(len(d.y)),
            "cohort_summary": ev.cohort_summary,
            "interval": {
                "level": config.interval.level,
                "n_bootstrap": config.interval.n_bootstrap,
            },
            "time_to_response": parts.time_evidence,
            "procedure": procedure.describe(d.settings),
            "extra_fields": _extra_fields(config, cohort),
            "comparators": {
                name: comparators.to_dict(fitted, list(d.X.columns))
                for name, fitted in parts.comparators.items()
            },
        },
    )


def _validation_summary(config: ExperimentConfig, d: Design) -> dict[str, Any]:
    return {
        "scheme": config.validation.scheme,
        "folds": [
            {
                "repeat": f.repeat,
                "fold": f.fold,
                "name": f.name,
                "n_train": len(f.train),
                "n_test": len(f.test),
            }
            for f in d.folds
        ],
        "calibration": config.calibration.method,
        "procedure": procedure.describe(d.settings),
        "inner_folds": config.model.inner_folds,
        "n_trials": config.model.n_trials,
    }


def fit_experiment(
    config: ExperimentConfig,
    cohort: Cohort,
    progress: Progress | None = None,
    observer: Observer | None = None,
    fingerprint: str | None = None,
) -> tuple[TrainResult, CVOutput]:
    """Everything but tracking: returns the TrainResult (run_id and model_uri unset).

    The steps: `design` (labels, features once, folds), `cross_validate` (the deployed procedure
    in every outer fold), `fit_deployed` (the same procedure on everything, comparators, interval,
    time model), `evaluate` (out-of-fold evidence) and `deployable_model` (the artifact).
    """
    progress = progress or _noop
    progress("features", 0, 1)
    d = design(config, cohort)
    progress("features", 1, 1)

    def on_fold(done: int, total: int) -> None:
        progress("cross-validation", done, total)

    progress("cross-validation", 0, len(d.folds))
    cv = cross_validate(
        d.X, d.y, d.groups, d.folds, d.settings, config.validation.seed,
        observer=observer, on_fold=on_fold,
    )  # fmt: skip
    progress("final model", 0, 1)
    parts = fit_deployed(config, cohort, d, cv, observer)
    progress("final model", 1, 1)
    ev = evaluate(config, cohort, d, cv, progress)
    model = deployable_model(config, cohort, d, cv, parts, ev)
    result = TrainResult(
        config=config.model_dump(mode="json"),
        label_definition=d.definition.name,
        model=model,
        X=d.X,
        raw_features=d.raw,
        y=d.y,
        groups=d.groups,
        oof=cv.oof,
        metrics=ev.metrics,
        subgroups=ev.subgroups,
        decision_curve=ev.decision_curve,
        table1=ev.table1,
        attrition=attrition(d.labels),
        sample_size=ev.sample_size,
        cohort_summary=ev.cohort_summary,
        fold_importance=cv.fold_importance,
        monotone_constraints=d.monotone,
        data_fingerprint=fingerprint or data_fingerprint(cohort),
        validation=_validation_summary(config, d),
        tuning={
            "folds": cv.tuning,
            "final": {**parts.final.params, "n_rounds": parts.final.n_rounds},
            "final_calibrator": parts.final.calibration,
            "comparison": ev.comparison,
        },
    )
    return result, cv


def _extra_fields(config: ExperimentConfig, cohort: Cohort) -> dict[str, list[str]]:
    """Where each extra input of the experiment lives in a scoring record (episodes first, as
    the feature code looks them up)."""
    episode = [c for c in config.features.extra_static if c in cohort.episodes.columns]
    patient = [c for c in config.features.extra_static if c not in episode]
    return {
        "patient": patient,
        "episode": episode,
        "analytes": list(config.features.extra_analytes),
    }


def _feature_config(config: ExperimentConfig) -> FeatureConfig:
    f = config.features
    kwargs: dict[str, Any] = {
        "extra_analytes": tuple(f.extra_analytes),
        "extra_static": tuple(f.extra_static),
    }
    if f.families is not None:
        kwargs["families"] = tuple(f.families)
    try:
        return FeatureConfig(**kwargs)
    except (TypeError, ValueError) as error:
        raise ExperimentError(f"features: {error}") from None


def train_experiment(
    config: ExperimentConfig,
    cohort: Cohort,
    tracking: TrackingSettings | None = None,
    progress: Progress | None = None,
    observer: Observer | None = None,
    experiment_text: str | None = None,
) -> TrainResult:
    """Train, evaluate and (when `tracking` is given) log to MLflow and register @candidate."""
    if tracking is None:
        result, _ = fit_experiment(config, cohort, progress, observer)
        return result
    progress = progress or _noop
    with tracked_run(tracking) as run:
        definition = get_definition(config.label.definition)
        fingerprint = data_fingerprint(cohort)
        run.log_setup(config.model_dump(mode="json"), experiment_text, definition, fingerprint)
        result, _ = fit_experiment(config, cohort, progress, observer, fingerprint)
        result.run_id = run.run_id
        result.model.metadata["run_id"] = run.run_id
        log_result(run, result, config, progress)
    return result


def log_result(
    run: RunHandle, result: TrainResult, config: ExperimentConfig, progress: Progress
) -> None:
    """Log everything of the result to the active run, then register the model (last)."""
    import mlflow

    from serving.bundle.pyfunc import log_deployable_model
    from training.tracking import input_schema, version_description

    steps = 6
    progress("tracking", 0, steps)
    dataset = result.X.copy()
    dataset["response"] = result.y.astype(int)
    run.log_dataset(dataset, f"{config.name}-{result.label_definition}", result.data_fingerprint)
    ss = result.sample_size
    extra = {
        "data.n_episodes": ss.get("n_episodes"),
        "data.n_patients": ss.get("n_patients"),
        "data.events": ss.get("events"),
        "data.prevalence": ss.get("prevalence"),
        "data.events_per_predictor": ss.get("events_per_predictor"),
        "data.riley_minimum_n": ss.get("riley", {}).get("minimum_n"),
    }
    final_cal = (result.tuning or {}).get("final_calibrator") or {}
    for stage in ("raw", "calibrated"):
        for name, value in (final_cal.get(stage) or {}).items():
            extra[f"final_inner_oof.{stage}.{name}"] = value
    for name, diffs in ((result.tuning or {}).get("comparison") or {}).items():
        for metric, values in diffs.items():
            key = f"xgboost_minus_{name}.{metric}"
            extra[key] = values["estimate"]
            extra[f"{key}.low"] = values["low"]
            extra[f"{key}.high"] = values["high"]
    run.log_metrics(result.metrics, extra)
    log_time_to_response_metrics(result.model.metadata.get("time_to_response"))
    progress("tracking", 1, steps)
    with tempfile.TemporaryDirectory(prefix="ctit-train-") as tmp:
        tmp_path = Path(tmp)
        _write_artifacts(result, tmp_path / "artifacts")
        run.log_artifact_dir(tmp_path / "artifacts", "evaluation")
        progress("tracking", 2, steps)
        _write_plots(result, tmp_path / "plots")
        run.log_artifact_dir(tmp_path / "plots", "plots")
        progress("tracking", 3, steps)
        # A named logged model (MLflow lists logged models by name), with its input documented.
        info = log_deployable_model(result.model, f"ctit-{config.name}")
        result.model_uri = info.model_uri
        mlflow.log_dict(input_schema(), "model_input/record.schema.json")
        run.log_tuned_params((result.tuning or {}).get("final"))
        progress("tracking", 4, steps)
        result.save(tmp_path / "train_result")
        run.log_artifact_dir(tmp_path / "train_result", "train_result")
        _log_report(result, tmp_path)
        progress("tracking", 5, steps)
    if run.settings.register:
        version = run.register(
            result.model_uri,
            {
                "data_fingerprint": result.data_fingerprint,
                "label_definition": result.label_definition,
                "experiment": config.name,
            },
            description=version_description(
                result.label_definition, result.metrics or {}, config.name, len(result.y)
            ),
        )
        mlflow.set_tag("ctit.registered_version", f"{run.settings.registered_model}/{version}")
        result.registered_version = version
    progress("tracking", steps, steps)


def _write_artifacts(result: TrainResult, directory: Path) -> None:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    result.table1.to_csv(directory / "table1.csv", index=False)
    result.subgroups.to_csv(directory / "subgroups.csv", index=False)
    result.decision_curve.to_csv(directory / "decision_curve.csv", index=False)
    for name in ("attrition", "sample_size", "metrics", "monotone_constraints", "cohort_summary"):
        (directory / f"{name}.json").write_text(
            json.dumps(getattr(result, name), indent=2, default=str), encoding="utf-8"
        )


def _write_plots(result: TrainResult, directory: Path) -> None:
    plots.roc_figure(result.oof, result.metrics, path=directory / "roc.png")
    plots.calibration_figure(result.oof, result.metrics, path=directory / "calibration.png")
    plots.decision_curve_figure(result.decision_curve, path=directory / "decision_curve.png")
    n = min(len(result.X), result.config["evaluation"]["shap_sample"])
    sample = result.X.sample(n=n, random_state=0) if n < len(result.X) else result.X
    contribs = result.model.booster.predict(
        xgb.DMatrix(sample.to_numpy(dtype=np.float32), nthread=1, missing=np.nan),
        pred_contribs=True,
    )
    plots.beeswarm_figure(
        plots.contributions_explanation(contribs, sample), 15, path=directory / "shap_beeswarm.png"
    )


def _log_report(result: TrainResult, tmp_path: Path) -> None:
    """Render the reviewer report when training.report provides it (owned by another module)."""
    import importlib

    import mlflow

    try:
        report = importlib.import_module("training.report")
    except ImportError:
        log.info("training.report is not available: no report.html")
        return
    render = getattr(report, "render_report", None)
    if render is None:
        log.info("training.report has no render_report: no report.html")
        return
    try:
        html = render(result)
    except Exception as error:  # noqa: BLE001
        # The model and its evidence are logged already; a broken report must not lose them.
        log.exception("render_report failed; the run is logged without report.html")
        mlflow.set_tag("ctit.report_error", f"{type(error).__name__}: {error}"[:500])
        return
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    mlflow.log_artifact(str(path))
