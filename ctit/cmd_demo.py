"""CLI command (demo): the main job end to end on the embedded default cohort.

Composition only: each step is the same command a user would type, so the demo shows the CLI tour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.panel import Panel

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
            ],
        ),
        (
            "score a high-risk example patient",
            [
                "score",
                "--model",
                champion,
                str(examples / "patient-low.json"),
                "--out",
                str(out / "scores-patient-low.json"),
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
        # `ctit score` resolves models:/ URIs against this store, as a user's shell would set it.
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(out / 'mlruns.db').resolve()}"
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
        tracking = (out / "mlruns.db").resolve()
        console.print(
            Panel.fit(
                "\n".join(
                    [
                        f"cohort          {out / 'cohort'}",
                        f"labels          {out / 'labels.csv'}",
                        f"report          {out / 'report.html'}",
                        f"example scores  {out / 'scores-patient.json'}, "
                        f"{out / 'scores-patient-low.json'}",
                        f"model           models:/{REGISTERED_MODEL}@champion "
                        f"(tracking sqlite:///{tracking})",
                        "serve it        MLFLOW_TRACKING_URI=sqlite:///"
                        f"{tracking} .venv/bin/ctit serve --model "
                        f"models:/{REGISTERED_MODEL}@champion",
                        "  then open     http://127.0.0.1:8000/",
                        f"MLflow UI       .venv/bin/mlflow ui --backend-store-uri sqlite:///{tracking}",
                    ]
                ),
                title="ctit demo: done",
            )
        )
