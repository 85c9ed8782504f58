"""The ctit command line: parses, loads config, calls library code and renders results."""

import logging
import os

import typer

from ctit import (
    cmd_data,
    cmd_demo,
    cmd_evaluate,
    cmd_features,
    cmd_report,
    cmd_serve,
    cmd_simulate,
    cmd_train,
)

app = typer.Typer(
    name="ctit",
    help="Predict platelet response to hetrombopag in CTIT, and explain why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    """ctit: hetrombopag response prediction for cancer-therapy-induced thrombocytopenia."""
    # MLflow's per-file download bars flood the terminal; ctit shows its own progress.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A tracking server that dies mid-run fails the job in seconds, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for module in (
    cmd_data,
    cmd_simulate,
    cmd_features,
    cmd_train,
    cmd_evaluate,
    cmd_report,
    cmd_serve,
    cmd_demo,
):
    module.register(app)
