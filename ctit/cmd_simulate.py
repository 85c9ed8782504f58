"""CLI command (simulate): write the simulated default cohort and set it beside its targets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from data.issues import CohortError
from data.simulator import SimulationConfig, simulate_cohort
from data.simulator.params import ModelParameters, SiteShift
from data.simulator.report import compare_to_targets, episode_table, read_population

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""
    app.command("simulate")(simulate)


# Without --check/--no-check the targets are compared only up to this size: the comparison loads
# the whole cohort through the real loader (at 100,000 patients, 48M lab rows: longer than the
# simulation itself).
COMPARE_BY_DEFAULT_MAX_PATIENTS = 20_000


def simulate(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the cohort into.")],
    n_patients: Annotated[
        int, typer.Option("--n-patients", help="Patients to simulate (each has an episode).")
    ] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same files.")] = 2024,
    start_year: Annotated[
        int, typer.Option("--start-year", help="Calendar year of the first treatment.")
    ] = 2019,
    n_sites: Annotated[int, typer.Option("--n-sites", help="Hospitals (1-10).")] = 6,
    oracle_draws: Annotated[
        int, typer.Option("--oracle-draws", help="Quadrature nodes of the oracle.")
    ] = 64,
    workers: Annotated[
        int, typer.Option("--workers", help="Processes (the files do not depend on it).")
    ] = 2,
    check: Annotated[
        bool | None,
        typer.Option(
            "--check/--no-check",
            help=(
                "Derive labels with data.labels, compare the cohort with every target and exit "
                "with status 1 if one is missed. Without either flag the comparison is printed "
                "but does not decide the exit status (a small cohort misses the effect checks), "
                f"for cohorts of up to {COMPARE_BY_DEFAULT_MAX_PATIENTS:,} patients (it loads "
                "the whole cohort); --no-check skips it."
            ),
        ),
    ] = None,
    site_shift: Annotated[
        bool,
        typer.Option(
            "--site-shift",
            help="A hospital unlike the home sites (data.simulator.params.SiteShift.preset: "
            "regimen mix, lab sampling and units, baseline risk, response rate; SIMULATOR.md). "
            "The literature targets describe the home sites, so --check is skipped.",
        ),
    ] = False,
) -> None:
    """Simulate a breast-cancer CTIT cohort (patients, episodes, labs, regimens, oracle)."""
    console = Console()
    try:
        config = SimulationConfig(
            n_patients=n_patients,
            seed=seed,
            start_year=start_year,
            n_sites=n_sites,
            oracle_draws=oracle_draws,
            workers=workers,
            **({"parameters": SiteShift.preset().apply(ModelParameters())} if site_shift else {}),
        )
    except ValueError as exc:
        _fail(str(exc))
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a directory")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"Simulating {n_patients:,} patients", total=100)
            summary = simulate_cohort(
                config, out, progress=lambda step, total: bar.update(task, advance=step)
            )
    except OSError as exc:
        _fail(f"cannot write to {out}: {exc.strerror or exc}")
    counts = Table(title="Simulated cohort", title_justify="left")
    counts.add_column("item")
    counts.add_column("value", justify="right")
    counts.add_row("patients", f"{summary.n_patients:,}")
    counts.add_row("episodes", f"{summary.n_episodes:,}")
    counts.add_row("patients with > 1 episode", f"{summary.multi_episode_share:.1%}")
    counts.add_row("Asian share", f"{summary.asian_share:.1%}")
    counts.add_row("lab rows", f"{summary.n_lab_rows:,}")
    counts.add_row("regimen rows (cycles)", f"{summary.n_regimen_rows:,}")
    counts.add_row("oracle mean p", f"{summary.oracle_mean:.3f}")
    counts.add_row("oracle numerical error (max)", f"{summary.oracle_max_error:.4f}")
    counts.add_row("seconds", f"{summary.seconds:.1f}")
    console.print(counts)
    console.print(Text(f"Wrote {', '.join(sorted(summary.files))} to {out}"))
    if check is False or site_shift:
        return
    if check is None and n_patients > COMPARE_BY_DEFAULT_MAX_PATIENTS:
        console.print(
            Text(
                f"Targets not compared (more than {COMPARE_BY_DEFAULT_MAX_PATIENTS:,} patients: "
                "it loads the whole cohort); use --check to compare them."
            )
        )
        return
    try:
        checks = compare_to_targets(episode_table(out), read_population(out))
    except CohortError as exc:
        _fail(f"the simulated cohort does not load: {exc}")
    table = Table(title="Simulated cohort vs LITERATURE.md targets", title_justify="left")
    for column in ("figure", "simulated", "target", ""):
        table.add_column(column)
    for c in checks:
        table.add_row(
            c.name, c.value, c.target, Text("ok", "green") if c.ok else Text("off", "red")
        )
    console.print(table)
    if not check and any(not c.ok for c in checks):
        console.print(
            Text(f"{sum(not c.ok for c in checks)} targets missed (use --check to fail on them)")
        )
    missed = [c for c in checks if not c.ok]
    if missed and check:
        _fail(f"{len(missed)} of {len(checks)} targets missed: {', '.join(c.name for c in missed)}")


def _fail(message: str) -> None:
    Console(stderr=True).print(Text(f"Error: {message}", style="bold red"))
    raise typer.Exit(1)
