"""CLI command (features): `ctit features COHORT_DIR --out FILE`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from ctit.options import fail_invalid_cohort
from data.cohort import load_cohort
from data.issues import CohortError
from data.outputs import OutputError, atomic_output
from features.pipeline import ALL_FAMILIES, FeatureConfig, FeaturePipeline, build_features

logger = logging.getLogger(__name__)

_FORMATS = (".csv", ".parquet")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""
    app.command("features")(features)


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def features(
    cohort_dir: Annotated[
        Path, typer.Argument(help="Cohort directory: patients, episodes, labs, regimens.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output file, .csv or .parquet.")],
    family: Annotated[
        list[str] | None,
        typer.Option("--family", help=f"Feature family (repeatable): {', '.join(ALL_FAMILIES)}."),
    ] = None,
    extra_analyte: Annotated[
        list[str] | None,
        typer.Option("--extra-analyte", help="Extra lab test code to add (repeatable)."),
    ] = None,
    extra_static: Annotated[
        list[str] | None,
        typer.Option("--extra-static", help="Extra patients/episodes column (repeatable)."),
    ] = None,
    encoded: Annotated[
        bool,
        typer.Option(
            "--encoded",
            help="Write the model's numeric matrix (categories one-hot) instead of raw values.",
        ),
    ] = False,
) -> None:
    """Build the features as of each episode's index date: one row per episode, episode_id first."""
    if out.suffix.lower() not in _FORMATS:
        _fail(f"--out must end in .csv or .parquet, got {out.name!r}", code=2)
    try:
        config = FeatureConfig(
            families=tuple(family) if family else ALL_FAMILIES,
            extra_analytes=tuple(extra_analyte or ()),
            extra_static=tuple(extra_static or ()),
        )
    except (TypeError, ValueError) as exc:
        _fail(str(exc), code=2)
    try:
        cohort = load_cohort(cohort_dir)
    except CohortError as exc:
        fail_invalid_cohort(cohort_dir, exc)
    try:
        if encoded:
            frame = FeaturePipeline(config).fit_transform(cohort).reset_index()
        else:
            frame = build_features(cohort, config)
    except (TypeError, ValueError, KeyError) as exc:
        logger.debug("feature building failed", exc_info=True)
        _fail(f"could not build features from {cohort_dir}: {exc}")
    try:
        with atomic_output(out) as partial:
            if out.suffix.lower() == ".csv":
                frame.to_csv(partial, index=False)
            else:
                frame.to_parquet(partial, index=False)
    except OutputError as exc:
        _fail(exc.strerror)
    typer.echo(f"wrote {len(frame)} episodes x {frame.shape[1] - 1} features to {out}")
