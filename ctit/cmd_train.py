"""CLI commands (train, promote)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ctit.options import TrackingUri, fail_invalid_cohort, require_registered_model
from ctit.options import tracking_uri as resolve_tracking_uri

if TYPE_CHECKING:
    from data.cohort import Cohort
    from training.config import ExperimentConfig

MODEL_COLUMNS = (("xgboost", "XGBoost"), ("logreg", "Logistic"), ("plt_baseline", "Baseline PLT"))


def _fail(console: Console, message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _cell(values: dict[str, float] | None, digits: int) -> str:
    if not values or values.get("estimate") is None:
        return "-"
    e, lo, hi = values["estimate"], values.get("low"), values.get("high")
    if lo is None or hi is None or lo != lo or hi != hi:
        return f"{e:.{digits}f}"
    return f"{e:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"


def summary_table(metrics: dict, threshold: float) -> Table:
    """Metrics with 95% CIs for XGBoost and the comparators."""
    from training.metrics import METRIC_LABELS

    table = Table(
        title=f"Out-of-fold performance of the deployed procedure (95% CI); threshold {threshold:g}"
    )
    table.add_column("Metric")
    for _, label in MODEL_COLUMNS:
        table.add_column(label, justify="right")
    for key, label, digits in METRIC_LABELS:
        table.add_row(
            label, *(_cell(metrics.get(m, {}).get(key), digits) for m, _ in MODEL_COLUMNS)
        )
    return table


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""

    @app.command("train")
    def train(
        experiment: Annotated[Path, typer.Argument(help="Experiment TOML file.")],
        cohort: Annotated[
            Path | None,
            typer.Option("--cohort", help="Cohort directory (overrides the experiment's)."),
        ] = None,
        tracking_uri: TrackingUri = None,
        registered_model: Annotated[
            str | None,
            typer.Option("--registered-model", help="Registered model name (default from TOML)."),
        ] = None,
    ) -> None:
        """Train an experiment, log it to MLflow and register the model as @candidate."""
        from mlflow.exceptions import MlflowException

        from data.issues import CohortError
        from training.config import ExperimentError, load_experiment
        from training.run import TrainingError, train_experiment
        from training.tracking import TrackingError, TrackingSettings, check_tracking_store

        console = Console(stderr=True)
        try:
            config = load_experiment(experiment)
        except ExperimentError as error:
            raise _fail(console, str(error), 2) from None
        try:
            check_tracking_store(resolve_tracking_uri(tracking_uri))
        except TrackingError as error:
            raise _fail(console, str(error), 2) from None
        text = experiment.read_text(encoding="utf-8")
        settings = TrackingSettings(
            tracking_uri=resolve_tracking_uri(tracking_uri),
            experiment_name=config.tracking.experiment_name,
            registered_model=registered_model or config.tracking.registered_model,
            run_name=config.tracking.run_name or config.name,
        )
        columns = (
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with (
            Progress(*columns, console=console, transient=False) as bars,
            tempfile.TemporaryDirectory(prefix="ctit-cohort-") as scratch,
        ):
            try:
                loaded = _load_or_simulate(config, experiment, cohort, Path(scratch), bars)
            except CohortError as error:
                bars.stop()
                fail_invalid_cohort(_cohort_path(config, experiment, cohort), error)
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bars.add_task(stage, total=max(total, 1))
                bars.update(tasks[stage], completed=done, total=max(total, 1))

            try:
                result = train_experiment(
                    config, loaded, tracking=settings, progress=progress, experiment_text=text
                )
            except (ExperimentError, TrainingError) as error:
                raise _fail(console, str(error), 2) from None
            except MlflowException as error:
                raise _fail(
                    console,
                    f"MLflow at {settings.tracking_uri}: {error.message} (the run, if one was "
                    "started, is marked FAILED and nothing was registered)",
                    1,
                ) from None
        out = Console()
        out.print(summary_table(result.metrics, config.evaluation.operating_threshold))
        for name, label in (("logreg", "logistic regression"), ("plt_baseline", "baseline PLT")):
            diff = ((result.tuning or {}).get("comparison") or {}).get(name, {}).get("auroc_diff")
            if diff:
                out.print(
                    f"XGBoost minus {label}, AUROC (paired 95% CI): {diff['estimate']:+.3f} "
                    f"({diff['low']:+.3f} to {diff['high']:+.3f})",
                    highlight=False,
                )
        ss = result.sample_size
        out.print(
            f"{ss['n_episodes']} labelled episodes of {ss['n_patients']} patients, "
            f"{ss['events']} responders ({100 * ss['prevalence']:.1f}%); "
            f"{ss['events_per_predictor']:.1f} events per candidate predictor; "
            f"Riley minimum n {ss.get('riley', {}).get('minimum_n', '-')}"
        )
        for warning in ss.get("warnings", []):
            out.print(f"[yellow]warning:[/] {warning}")
        if result.monotone_constraints:
            out.print(f"monotone constraints: {result.monotone_constraints}")
        out.print(f"MLflow run id: [bold]{result.run_id}[/]  ({settings.tracking_uri})")
        out.print(
            f"model: {result.model_uri} registered as {settings.registered_model} version "
            f"{result.registered_version} (@candidate); promote with `ctit promote "
            f"{settings.registered_model}`"
        )

    @app.command("promote")
    def promote(
        name: Annotated[
            str, typer.Argument(help="Registered model name.", metavar="NAME")
        ] = "ctit-response",
        tracking_uri: TrackingUri = None,
        allow_new_data: Annotated[
            bool,
            typer.Option(
                "--allow-new-data",
                help="Promote on the candidate's own gates when the champion was evaluated on "
                "other data (no head-to-head comparison is possible then).",
            ),
        ] = False,
        evaluation_run: Annotated[
            str | None,
            typer.Option(
                "--evaluation-run",
                help="Run id of a `ctit evaluate` run of the candidate that must also pass the "
                "gates on its cohort (external or temporal validation).",
            ),
        ] = None,
    ) -> None:
        """Make the @candidate version @champion if it passes the gates (exit 1 if not).

        The gates come from the candidate's experiment (its [promotion] table) and judge the
        deployed procedure's out-of-fold figures: AUROC lower bound, calibration slope, and no
        loss to the comparators (paired bootstrap). The candidate is compared with the current
        champion on the out-of-fold metrics both runs logged, only when both were evaluated on
        the same data fingerprint and label definition.
        """
        import mlflow
        from mlflow.tracking import MlflowClient

        from training.promote import PromotionError
        from training.promote import promote as run_promotion

        console = Console()
        require_registered_model(f"models:/{name}", tracking_uri)
        mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
        try:
            decision = run_promotion(
                name, MlflowClient(), allow_new_data=allow_new_data, evaluation_run=evaluation_run
            )
        except PromotionError as error:
            raise _fail(Console(stderr=True), str(error), 1) from None
        for gate in decision.gates:
            mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
            console.print(f"{mark} {gate.name}: {gate.detail}", highlight=False)
        if decision.note:
            console.print(decision.note)
        if decision.promoted:
            console.print(f"promoted {name} version {decision.candidate_version} to @champion")
            return
        if decision.note.endswith("already @champion"):
            return
        console.print(
            f"[red]not promoted[/]: {name} version {decision.candidate_version} failed "
            + ", ".join(g.name for g in decision.failed)
            + "; nothing was changed"
        )
        raise typer.Exit(1)


def _cohort_path(config: ExperimentConfig, experiment: Path, cohort: Path | None) -> Path | str:
    """The cohort a `train` run loads, for messages (the simulated one has no path)."""
    if cohort is not None:
        return cohort
    if config.cohort.dir is not None:
        path = Path(config.cohort.dir)
        return path if path.is_absolute() else experiment.parent / path
    return "the simulated cohort"


def _load_or_simulate(
    config: ExperimentConfig, experiment: Path, cohort: Path | None, scratch: Path, bars: Progress
) -> Cohort:
    """--cohort, else the experiment's cohort.dir (relative to the TOML), else simulate."""
    from data.cohort import load_cohort

    if cohort is not None:
        return load_cohort(cohort)
    if config.cohort.dir is not None:
        path = Path(config.cohort.dir)
        return load_cohort(path if path.is_absolute() else experiment.parent / path)
    from data.simulator import SimulationConfig, simulate_cohort

    sim = config.cohort.simulate
    sim_config = (
        SimulationConfig()
        if sim is None
        else SimulationConfig(n_patients=sim.n_patients, seed=sim.seed)
    )
    task = bars.add_task(f"simulate {sim_config.n_patients}", total=None)

    def tick(advance: int, total: int) -> None:
        bars.update(task, advance=advance, total=total)

    simulate_cohort(sim_config, scratch, progress=tick)
    return load_cohort(scratch)
