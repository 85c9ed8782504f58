"""The ctit command line: parses, loads config, calls library code and renders results."""

import logging
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from ctit import (
    cmd_data,
    cmd_demo,
    cmd_evaluate,
    cmd_features,
    cmd_monitor,
    cmd_report,
    cmd_serve,
    cmd_simulate,
    cmd_train,
)

#: The commands in the order of the CLI tour, each with its one-line summary for `ctit --help`.
SUMMARIES = {
    "simulate": "Simulate a breast-cancer CTIT cohort (the contract's tables).",
    "validate": "Check a cohort against the contract (exit 1 when invalid).",
    "labels": "Derive one response label per episode (CSV) and the attrition.",
    "features": "Build the features as of each index date (CSV or Parquet).",
    "train": "Train an experiment, log it to MLflow, register @candidate.",
    "evaluate": "Evaluate a registered model on a labelled cohort (external validation).",
    "promote": "Make the @candidate version @champion if it passes the gates.",
    "report": "Write the reviewer report (HTML) of a model or a training run.",
    "score": "Score patients from a file or a cohort; print their probabilities.",
    "serve": "Serve the model over HTTP: API, clinician page, /docs.",
    "monitor": "Check served scores for drift, calibration and alerts (the audit log).",
    "shadow": "Send a cohort's patients to a running service (into its audit log).",
    "recalibrate": "Refit only the calibrator on a site's labelled cohort (@candidate).",
    "demo": "Run the whole tour: simulate ... train, promote, report, score.",
}


_TYPE_METAVARS = {"int": "N", "float": "NUMBER", "str": "TEXT"}


def _metavar(param: TyperOption) -> str:
    kind = param.type_descriptor
    if kind.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in kind.choices or ()) + "]"
    if kind.is_path:
        return "PATH"
    if kind.is_list:  # a repeatable option: named by what one value is
        return (param.name or "value").upper().removeprefix("EXTRA_")
    return _TYPE_METAVARS.get(param.bare_type(), "TEXT")


def tidy_help(command: Any) -> Any:
    """One spelling of placeholders in every command's help: `--out PATH`, `COHORT_DIR`."""
    for param in command.params:
        if isinstance(param, TyperOption):
            if not (param.is_flag or param.count) and param.metavar is None:
                param.metavar = _metavar(param)
        elif isinstance(param, TyperArgument):
            param.metavar = param.metavar or (param.name or "value").upper()
            param.display_type_rich = lambda ctx: None  # the name says what it is
    return command


class CtitGroup(TyperGroup):
    """The ctit commands in the tour's order, with short summaries and tidy placeholders."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, command in self.commands.items():
            if name in SUMMARIES:
                command.short_help = SUMMARIES[name]
            tidy_help(command)

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in SUMMARIES if n in names] + [n for n in names if n not in SUMMARIES]


app = typer.Typer(
    name="ctit",
    cls=CtitGroup,
    help="Predict platelet response to hetrombopag in CTIT, and explain why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: wrapped (never cut) at the terminal's width, and text in [brackets] is kept.
    rich_markup_mode=None,
    context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]},
)

#: Libraries whose INFO lines and warnings are noise for a CLI user (shown with -v).
QUIET_LOGGERS = ("mlflow", "alembic", "urllib3", "httpx", "matplotlib", "shap", "numba")


def ctit_version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    try:
        return version("ctit")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ctit {ctit_version()}")
        raise typer.Exit()


def quiet_libraries(verbose: bool) -> None:
    """Without -v: our warnings only; library INFO lines and Python warnings are hidden."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # The CLI prints the sample-size warnings in its own summary; the log line would repeat them.
    logging.getLogger("training.sample_size").setLevel(logging.ERROR)
    # MLflow sets its own logger's level when it is imported (later): tell it through its variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    warnings.simplefilter("ignore")


@app.callback()
def main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log debug messages, library logs and Python warnings."
    ),
    show_version: bool = typer.Option(
        False,
        "--version",
        help="Print the ctit version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """ctit: hetrombopag response prediction for cancer-therapy-induced thrombocytopenia."""
    # MLflow's per-file download bars flood the terminal; ctit shows its own progress.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A tracking server that dies mid-run fails the job in seconds, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    quiet_libraries(verbose)


for module in (
    cmd_data,
    cmd_simulate,
    cmd_features,
    cmd_train,
    cmd_evaluate,
    cmd_report,
    cmd_serve,
    cmd_monitor,
    cmd_demo,
):
    module.register(app)
