"""CLI command (report): the reviewer HTML of a training run or a registered model version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ctit.options import TrackingUri, require_registered_model
from ctit.options import tracking_uri as resolve_tracking_uri


def _fail(console: Console, message: str, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""

    @app.command("report")
    def report(
        out: Annotated[Path, typer.Option("--out", help="Where to write the HTML report.")],
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                help="Registered model: models:/NAME@ALIAS or models:/NAME/VERSION.",
                metavar="URI",
            ),
        ] = None,
        run: Annotated[
            str | None,
            typer.Option("--run", help="MLflow run id of a `ctit train` run.", metavar="RUN_ID"),
        ] = None,
        tracking_uri: TrackingUri = None,
    ) -> None:
        """Write the self-contained reviewer report (SHAP, evidence, TRIPOD+AI map) of a model."""
        from training.report import ReportError, write_report
        from training.report_source import ReportSourceError, load_train_result, run_id_of_model

        console = Console(stderr=True)
        if (model is None) == (run is None):
            raise _fail(console, "give exactly one of --model or --run", 2)
        if model is not None:
            require_registered_model(model, tracking_uri)
        uri = resolve_tracking_uri(tracking_uri)
        try:
            run_id = run if run is not None else run_id_of_model(model, uri)
            result = load_train_result(run_id, uri)
        except ReportSourceError as error:
            raise _fail(console, str(error), 2) from None
        try:
            path = write_report(result, out)
        except ReportError as error:
            raise _fail(console, f"run {run_id}: cannot render the report: {error}", 1) from None
        except OSError as error:
            raise _fail(console, error.strerror or str(error), 1) from None
        console.print(f"report of run {run_id} written to {path}", highlight=False, markup=False)
