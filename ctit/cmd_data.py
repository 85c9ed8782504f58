"""CLI commands (data): `ctit validate` and `ctit labels`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ctit.options import fail_invalid_cohort
from data.cohort import ValidationReport, load_cohort, validate_cohort
from data.issues import CohortError, Issue
from data.labels import (
    DEFAULT_DEFINITION,
    NAMED_DEFINITIONS,
    attrition,
    derive_labels,
    get_definition,
)
from data.outputs import OutputError, atomic_output

logger = logging.getLogger(__name__)

CohortDir = Annotated[
    Path, typer.Argument(help="Cohort directory: patients, episodes, labs, regimens[, outcomes].")
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""
    app.command("validate")(validate)
    app.command("labels")(labels)


def validate(
    cohort_dir: CohortDir,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the report as JSON (valid, errors, warnings, summary)."),
    ] = False,
) -> None:
    """Check a cohort against the contract; exit 0 when valid, 1 with every error when not."""
    try:
        report = validate_cohort(cohort_dir)
    except Exception as exc:  # a bug must still not show a traceback to the user
        logger.debug("validation failed", exc_info=True)
        _fail(f"could not validate {cohort_dir}: {exc}")
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _render_report(report)
    raise typer.Exit(0 if report.valid else 1)


def labels(
    cohort_dir: CohortDir,
    out: Annotated[Path, typer.Option("--out", help="CSV file to write the labels to.")],
    definition: Annotated[
        str,
        typer.Option(
            "--definition",
            help=f"Label definition: {', '.join(NAMED_DEFINITIONS)}, "
            "or custom:threshold=100,rise=50,horizon=14.",
        ),
    ] = DEFAULT_DEFINITION,
) -> None:
    """Derive one response label per episode, write them as CSV and print the attrition."""
    try:
        label_definition = get_definition(definition)
    except ValueError as exc:
        _fail(str(exc))
    try:
        cohort = load_cohort(cohort_dir)
    except CohortError as exc:
        fail_invalid_cohort(cohort_dir, exc)
    try:
        table = derive_labels(cohort, label_definition)
    except ValueError as exc:
        _fail(str(exc))
    try:
        with atomic_output(out) as partial:
            table.to_csv(partial, index=False)
    except OutputError as exc:
        _fail(exc.strerror)
    counts = attrition(table)
    console = Console()
    console.print(Text(f"Labels ({label_definition.name}: {label_definition.describe()})"))
    console.print(_attrition_table(counts))
    console.print(Text(f"Wrote {len(table)} episodes to {out}"))


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(Text(f"Error: {message}", style="bold red"))
    raise typer.Exit(1)


def _attrition_table(counts: dict) -> Table:
    table = Table(title="Attrition", title_justify="left")
    table.add_column("step")
    table.add_column("episodes", justify="right")
    table.add_row("episodes in", f"{counts['episodes_in']:,}")
    for reason, n in counts["excluded_by_reason"].items():
        table.add_row(Text(f"excluded: {reason}"), f"-{n:,}")
    table.add_row("labelled", f"{counts['labelled']:,}")
    table.add_row("responders", f"{counts['responders']:,}")
    rate = counts["response_rate"]
    table.add_row("response rate", "n/a" if rate is None else f"{rate:.1%}")
    return table


def _issues_table(issues: Iterable[Issue], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("table", "line", "column", "message"):
        table.add_column(column, overflow="fold")
    for issue in issues:
        table.add_row(
            Text(issue.table),
            Text("" if issue.line is None else str(issue.line)),
            Text(issue.column or ""),
            Text(issue.message),
        )
    return table


#: Files `ctit simulate` writes beside the contract tables (see data/SIMULATOR.md).
SIMULATOR_COMPANIONS = ("oracle",)


def _render_report(report: ValidationReport) -> None:
    console = Console()
    summary = report.summary
    tables = summary.get("tables") or {}
    if tables:
        grid = Table(title="Tables", title_justify="left")
        grid.add_column("table")
        grid.add_column("file")
        grid.add_column("rows", justify="right")
        for name, info in tables.items():
            grid.add_row(Text(name), Text(str(info.get("file", ""))), f"{info['rows']:,}")
        console.print(grid)
    facts = [
        ("patients", summary.get("patients")),
        ("episodes", summary.get("episodes")),
        ("lab rows", summary.get("lab_rows")),
        ("regimen rows", summary.get("regimen_rows")),
        ("outcomes", summary.get("outcomes")),
    ]
    console.print(
        Text("  ".join(f"{k}: {v:,}" for k, v in facts if isinstance(v, int)) or "no rows read")
    )
    analytes = summary.get("analytes") or {}
    if analytes:
        console.print(Text("Analytes: " + ", ".join(f"{a} ({n:,})" for a, n in analytes.items())))
    unknown_tests = summary.get("unknown_tests") or {}
    if unknown_tests:
        console.print(Text(f"Other tests kept under their own code: {len(unknown_tests)}"))
    conversions = summary.get("conversions") or []
    if conversions:
        grid = Table(title="Unit conversions applied", title_justify="left")
        for column in ("analyte", "from", "to", "factor", "rows"):
            grid.add_column(column, justify="right" if column in ("factor", "rows") else "left")
        for c in conversions:
            grid.add_row(
                Text(c["analyte"]),
                Text(c["from_unit"]),
                Text(c["to_unit"]),
                f"{c['factor']:g}",
                f"{c['rows']:,}",
            )
        console.print(grid)
    # The simulator writes its latent truth beside the tables (oracle.csv): a known companion
    # file, mentioned, not a warning about the user's data.
    companions = [w for w in report.warnings if w.table in SIMULATOR_COMPANIONS]
    warnings = [w for w in report.warnings if w.table not in SIMULATOR_COMPANIONS]
    for issue in companions:
        console.print(Text(f"{issue.table}.csv: the simulator's own file, not read", style="dim"))
    if warnings:
        console.print(_issues_table(warnings, f"Warnings ({len(warnings)})"))
    if report.valid:
        console.print(Text("Cohort is valid.", style="bold green"))
    else:
        console.print(_issues_table(report.errors, f"Errors ({len(report.errors)})"))
        console.print(Text(f"Cohort is not valid: {len(report.errors)} errors.", style="bold red"))
