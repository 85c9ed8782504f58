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


def _steps(out: Path, experiment: Path, examples: Path, n_patients: int, seed: int) -> list:
    cohort = out / "cohort"
    tracking = f"sqlite:///{(out / 'mlruns.db').resolve()}"
    champion = f"models:/{REGISTERED_MODEL}@champion"
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
            "promote @candidate to @champion if it passes the gates",
            ["promote", REGISTERED_MODEL, "--tracking-uri", tracking, "--allow-new-data"],
        ),
        (
            "write the reviewer report",
            [
                "report",
                "--model",
                champion,
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
                champion,
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
                champion,
                str(examples / "patient-low.json"),
                "--out",
                str(out / "scores-patient-low.json"),
                "--tracking-uri",
                tracking,
            ],
        ),
    ]


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
        for number, (title, args) in enumerate(steps, start=1):
            console.rule(f"[bold]{number}/{len(steps)} {title}[/]  ctit {' '.join(args)}")
            try:
                code = command.main(args, prog_name="ctit", standalone_mode=False)
            except click.exceptions.Exit as stop:
                code = stop.exit_code
            except click.ClickException as error:
                error.show()
                code = error.exit_code
            if code:
                console.print(f"[bold red]demo stopped at step {number} ({title}).[/]")
                raise typer.Exit(code)
        tracking = f"sqlite:///{(out / 'mlruns.db').resolve()}"
        champion = f"models:/{REGISTERED_MODEL}@champion"
        console.rule("[bold green]ctit demo: done[/]")
        for label, value in (
            ("cohort", out / "cohort"),
            ("labels", out / "labels.csv"),
            ("report", out / "report.html"),
            ("example scores", f"{out / 'scores-patient.json'}, {out / 'scores-patient-low.json'}"),
            ("model", f"{champion} in the MLflow store {tracking}"),
            ("serve it", f"MLFLOW_TRACKING_URI={tracking} .venv/bin/ctit serve --model {champion}"),
            ("then open", "http://127.0.0.1:8000/ (API docs at /docs)"),
            ("MLflow UI", f".venv/bin/mlflow ui --backend-store-uri {tracking}"),
        ):
            console.print(f"[bold]{label:>15}[/]  {value}", soft_wrap=True, highlight=False)
