"""CLI command (demo): the main job end to end on the embedded default cohort.

Composition only: each step is the same command a user would type, so the demo shows the CLI tour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

REGISTERED_MODEL = "ctit-response"
#: Stands for the model URI in the steps after promotion: @champion, or @candidate if refused.
MODEL = "{model}"
PROMOTE_STEP = "promote @candidate to @champion if it passes the gates"


def _steps(out: Path, experiment: Path, examples: Path, n_patients: int, seed: int) -> list:
    cohort = out / "cohort"
    tracking = f"sqlite:///{(out / 'mlruns.db').resolve()}"
    return [
        (
            "simulate the default cohort",
            [
                "simulate",
                "--n-patients",
                str(n_patients),
                "--seed",
                str(seed),
                "--out",
                str(cohort),
            ],
        ),
        ("validate it against the cohort contract", ["validate", str(cohort)]),
        (
            "derive the default response labels",
            ["labels", str(cohort), "--out", str(out / "labels.csv")],
        ),
        (
            "train, validate, calibrate and register @candidate",
            [
                "train",
                str(experiment),
                "--cohort",
                str(cohort),
                "--tracking-uri",
                tracking,
                "--registered-model",
                REGISTERED_MODEL,
            ],
        ),
        (
            PROMOTE_STEP,
            ["promote", REGISTERED_MODEL, "--tracking-uri", tracking, "--allow-new-data"],
        ),
        (
            "write the reviewer report",
            [
                "report",
                "--model",
                MODEL,
                "--tracking-uri",
                tracking,
                "--out",
                str(out / "report.html"),
            ],
        ),
        (
            "score the example patients",
            [
                "score",
                "--model",
                MODEL,
                str(examples / "patient.json"),
                "--out",
                str(out / "scores-patient.json"),
                "--tracking-uri",
                tracking,
            ],
        ),
        (
            "score the low-probability example patient",
            [
                "score",
                "--model",
                MODEL,
                str(examples / "patient-low.json"),
                "--out",
                str(out / "scores-patient-low.json"),
                "--tracking-uri",
                tracking,
            ],
        ),
    ]


def _refused_by_the_gates(tracking: str) -> bool:
    """True when promotion left a @candidate and no @champion (the gates said no)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    try:
        client.get_model_version_by_alias(REGISTERED_MODEL, "candidate")
    except MlflowException:
        return False
    try:
        client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    except MlflowException:
        return True
    return False


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""

    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option("--out", help="Folder for every output.")] = Path("demo"),
        experiment: Annotated[
            Path, typer.Option("--experiment", help="Experiment TOML to train.")
        ] = Path("experiments/baseline.toml"),
        examples: Annotated[
            Path, typer.Option("--examples", help="Folder of the example patient JSON files.")
        ] = Path("examples"),
        n_patients: Annotated[int, typer.Option(help="Simulated patients.")] = 3000,
        seed: Annotated[int, typer.Option(help="Simulation seed.")] = 20240601,
    ) -> None:
        """Run the main job end to end: simulate, validate, label, train, promote, report, score."""
        console = Console()
        out.mkdir(parents=True, exist_ok=True)
        command = typer.main.get_command(app)
        steps = _steps(out, experiment, examples, n_patients, seed)
        tracking = f"sqlite:///{(out / 'mlruns.db').resolve()}"
        model = f"models:/{REGISTERED_MODEL}@champion"
        refused = False
        for number, (title, template) in enumerate(steps, start=1):
            args = [model if arg == MODEL else arg for arg in template]
            console.rule(f"[bold]{number}/{len(steps)} {title}[/]  ctit {' '.join(args)}")
            try:
                code = command.main(args, prog_name="ctit", standalone_mode=False)
            except click.exceptions.Exit as stop:
                code = stop.exit_code
            except click.ClickException as error:
                error.show()
                code = error.exit_code
            if code and title == PROMOTE_STEP and _refused_by_the_gates(tracking):
                # The gates did their job; the tour goes on with the candidate, said plainly.
                refused = True
                model = f"models:/{REGISTERED_MODEL}@candidate"
                console.print(
                    "[bold yellow]the gates refused the candidate (above): it stays @candidate "
                    "and no @champion is set. The demo goes on with @candidate so that the "
                    "report shows why; a service started on @champion would find no model.[/]"
                )
                continue
            if code:
                console.print(f"[bold red]demo stopped at step {number} ({title}).[/]")
                raise typer.Exit(code)
        console.rule("[bold green]ctit demo: done[/]")
        for label, value in (
            ("cohort", out / "cohort"),
            ("labels", out / "labels.csv"),
            ("report", out / "report.html"),
            ("example scores", f"{out / 'scores-patient.json'}, {out / 'scores-patient-low.json'}"),
            ("model", f"{model} in the MLflow store {tracking}"),
            ("promotion", "refused by the gates (see step 5)" if refused else "@champion"),
            ("serve it", f"MLFLOW_TRACKING_URI={tracking} .venv/bin/ctit serve --model {model}"),
            ("then open", "http://127.0.0.1:8000/ (API docs at /docs)"),
            ("MLflow UI", f".venv/bin/mlflow ui --backend-store-uri {tracking}"),
        ):
            console.print(f"[bold]{label:>15}[/]  {value}", soft_wrap=True, highlight=False)
