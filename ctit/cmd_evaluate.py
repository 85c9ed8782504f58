"""CLI command `ctit evaluate`: external or temporal validation of a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ctit.options import TrackingUri, fail, fail_invalid_cohort, load_model
from ctit.options import tracking_uri as resolve_tracking_uri


def register(app: typer.Typer) -> None:
    """Add this module's command to the ctit app."""
    app.command("evaluate")(evaluate)


def evaluate(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Model: models:/name@alias, models:/name/1, runs:/RUN_ID/PATH or a directory.",
        ),
    ],
    cohort: Annotated[
        Path, typer.Option("--cohort", help="Labelled cohort directory (external or later data).")
    ],
    label: Annotated[
        str | None,
        typer.Option("--label", help="Response definition (default: the model's own)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the reviewer page (HTML) here.")
    ] = None,
    tracking_uri: TrackingUri = None,
    experiment_name: Annotated[
        str, typer.Option("--experiment-name", help="MLflow experiment of the evaluation run.")
    ] = "ctit-evaluation",
    n_bootstrap: Annotated[
        int, typer.Option("--n-bootstrap", min=50, max=10_000, help="Bootstrap resamples.")
    ] = 500,
    log_run: Annotated[
        bool, typer.Option("--log/--no-log", help="Log the evaluation run to MLflow.")
    ] = True,
) -> None:
    """Validate a model on a labelled cohort: discrimination, calibration, decision curve and
    subgroups with bootstrap CIs, for the model and the comparators stored in it; logged to
    MLflow as an evaluation run tagged with the model's name and version.

    Exit 1 on a bad cohort or label, 2 when the model cannot be loaded.
    """
    import tempfile

    from data.cohort import load_cohort
    from data.issues import CohortError
    from data.outputs import OutputError, write_text
    from training.config import EvaluationConfig
    from training.external import EvaluationError, evaluate_model, log_evaluation, write_artifacts

    deployed = load_model(model, tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    try:
        data = load_cohort(cohort)
    except CohortError as error:
        fail_invalid_cohort(cohort, error)
    settings = EvaluationConfig(
        operating_threshold=float(deployed.bands.operating_threshold), n_bootstrap=n_bootstrap
    )
    try:
        result = evaluate_model(
            deployed, data, label, settings, model_uri=model, cohort_name=cohort.resolve().name
        )
    except (EvaluationError, ValueError) as error:
        fail(str(error))
    console = Console()
    console.print(_table(result))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if log_run:
        run_id = log_evaluation(result, uri, experiment_name)
        console.print(f"MLflow evaluation run id: {run_id}")
    if out is not None:
        with tempfile.TemporaryDirectory(prefix="ctit-evaluate-") as tmp:
            directory = write_artifacts(result, Path(tmp) / "evaluation")
            try:
                write_text(out, (directory / "report.html").read_text(encoding="utf-8"))
            except OutputError as error:
                fail(str(error))
        console.print(f"reviewer page written to {out}")


def _table(result) -> Table:
    from training.external import METRIC_LABELS, MODEL_LABELS

    def cell(values, digits: int) -> str:
        if not values or values.get("estimate") != values.get("estimate"):
            return "-"
        e, lo, hi = values["estimate"], values["low"], values["high"]
        if lo != lo or hi != hi:
            return f"{e:.{digits}f}"
        return f"{e:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"

    model = result.model
    table = Table(
        title=f"{model.get('name')} v{model.get('version')} on {result.cohort_name}: "
        f"{result.n_episodes} episodes, {result.events} responders (95% CI)"
    )
    table.add_column("Metric")
    models = list(result.metrics)
    for name in models:
        table.add_column(MODEL_LABELS[name], justify="right")
    for key, label, digits in METRIC_LABELS:
        table.add_row(label, *(cell(result.metrics[m].get(key), digits) for m in models))
    for name, diffs in result.comparison.items():
        table.add_row(
            f"AUROC minus {name}",
            cell(diffs["auroc_diff"], 3),
            *([""] * (len(models) - 1)),
        )
    return table
