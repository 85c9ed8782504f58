"""CLI commands (monitor, recalibrate): post-deployment drift and site recalibration."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ctit.options import TrackingUri, fail, fail_invalid_cohort, load_model
from ctit.options import tracking_uri as resolve_tracking_uri


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""

    @app.command("monitor")
    def monitor(
        model: Annotated[
            str,
            typer.Option(
                "--model", help="The deployed model: models:/NAME@ALIAS, runs:/, or a path."
            ),
        ],
        audit: Annotated[
            Path, typer.Option("--audit", help="The scoring service's audit log (SQLite).")
        ],
        outcomes: Annotated[
            Path | None,
            typer.Option(
                "--outcomes", help="Outcomes table (CSV/Parquet: episode_id, response 0/1)."
            ),
        ] = None,
        cohort: Annotated[
            Path | None,
            typer.Option(
                "--cohort", help="Labelled cohort directory (labels by the model's definition)."
            ),
        ] = None,
        since: Annotated[
            str | None,
            typer.Option("--since", help="Only scores on or after this date (YYYY-MM-DD, UTC)."),
        ] = None,
        out: Annotated[Path, typer.Option("--out", help="Where to write the HTML page.")] = Path(
            "monitor.html"
        ),
        json_out: Annotated[
            Path | None,
            typer.Option("--json", help="Where to write the JSON summary (default: beside --out)."),
        ] = None,
        reference: Annotated[
            Path | None,
            typer.Option(
                "--reference",
                help="Training reference: a saved train_result directory (X.parquet, oof.parquet); "
                "default: the one logged with the model's run.",
            ),
        ] = None,
        window: Annotated[
            str, typer.Option("--window", help="Time windows: month or week.")
        ] = "month",
        no_mlflow: Annotated[
            bool, typer.Option("--no-mlflow", help="Do not log the summary to MLflow.")
        ] = False,
        tracking_uri: TrackingUri = None,
    ) -> None:
        """Input, score and missingness drift of a deployed model; calibration once outcomes arrive.


        Exit code: 0 no alert, 1 alert (drift or calibration), 2 nothing to monitor or bad input.
        """

        from data.outputs import OutputError, write_text
        from training.monitor import (
            MonitorConfig,
            MonitorError,
            audit_salt,
            hash_outcomes,
            log_to_mlflow,
            monitor_audit,
            outcomes_from_cohort,
            outcomes_from_file,
            reference_from_dir,
            reference_from_registry,
            render_html,
            summary_json,
        )

        console = Console(stderr=True)
        if outcomes is not None and cohort is not None:
            fail("give at most one of --outcomes or --cohort", 2)
        if since is not None:
            try:
                dt.date.fromisoformat(since)
            except ValueError:
                fail(f"--since {since!r} is not a date (YYYY-MM-DD)", 2)
        try:
            config = MonitorConfig(window=window)
        except ValueError as error:
            fail(str(error), 2)
        deployed = load_model(model, tracking_uri)
        try:
            if reference is not None:
                ref = reference_from_dir(reference, deployed.feature_names)
            else:
                with tempfile.TemporaryDirectory(prefix="ctit-monitor-") as tmp:
                    ref = reference_from_registry(model, deployed.feature_names, Path(tmp))
            joined = None
            if outcomes is not None or cohort is not None:
                table = (
                    outcomes_from_file(outcomes)
                    if outcomes is not None
                    else outcomes_from_cohort(cohort, deployed.info["label_definition"])
                )
                salt = audit_salt(audit, os.environ.get("CTIT_AUDIT_SALT"))
                joined = hash_outcomes(table, salt)
                del table  # raw episode ids go no further than the hashing
            summary = monitor_audit(
                audit_path=audit,
                model_info=deployed.info,
                feature_names=deployed.feature_names,
                calibrator=deployed.calibrator,
                reference=ref,
                outcomes=joined,
                since=since,
                config=config,
            )
        except MonitorError as error:
            fail(str(error), 2)
        html = render_html(summary)
        json_path = json_out or out.with_suffix(".json")
        try:
            write_text(out, html)
            write_text(json_path, summary_json(summary))
        except OutputError as error:
            fail(str(error), 2)
        if not no_mlflow:
            try:
                run_id = log_to_mlflow(summary, html)
                console.print(f"logged to MLflow run {run_id}", highlight=False)
            except Exception as error:  # noqa: BLE001 - the page and JSON are written already
                console.print(f"[yellow]warning:[/] not logged to MLflow: {escape(str(error))}")
        _print_summary(console, summary)
        console.print(f"wrote {out} and {json_path}", highlight=False, markup=False)
        raise typer.Exit(summary["exit_code"])

    @app.command("shadow")
    def shadow(
        cohort: Annotated[Path, typer.Argument(help="Cohort directory whose patients to score.")],
        url: Annotated[str, typer.Option("--url", help="Base URL of a running `ctit serve`.")],
        batch_size: Annotated[
            int, typer.Option("--batch-size", help="Patients per /v1/score/batch call.")
        ] = 200,
    ) -> None:
        """Score a cohort's patients through a running scoring service (they reach its audit log).

        The bearer token, if the service needs one, is read from CTIT_API_TOKEN.
        """
        from data.cohort import load_cohort
        from data.issues import CohortError
        from training.shadow import ShadowError, cohort_records, post_records

        console = Console(stderr=True)
        try:
            loaded = load_cohort(cohort)
        except CohortError as error:
            fail_invalid_cohort(cohort, error)
        try:
            answers = post_records(
                url,
                cohort_records(loaded),
                token=os.environ.get("CTIT_API_TOKEN"),
                batch_size=batch_size,
            )
        except ShadowError as error:
            fail(str(error), 1)
        console.print(f"{answers} episodes scored by {url}", highlight=False, markup=False)

    @app.command("recalibrate")
    def recalibrate(
        model: Annotated[
            str,
            typer.Option("--model", help="Registered model: models:/NAME@ALIAS or models:/NAME/N."),
        ],
        cohort: Annotated[
            Path, typer.Option("--cohort", help="The site's labelled cohort directory.")
        ],
        method: Annotated[
            str,
            typer.Option(
                "--method", help="auto, intercept, logistic (intercept and slope) or isotonic."
            ),
        ] = "auto",
        holdout: Annotated[
            float, typer.Option("--holdout", help="Share of patients held out for before/after.")
        ] = 0.5,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the patient split.")] = 0,
        tracking_uri: TrackingUri = None,
    ) -> None:
        """Refit only the calibrator on a site's labelled cohort; register it @candidate."""

        from data.cohort import load_cohort
        from data.issues import CohortError
        from training.recalibrate import (
            RecalibrationConfig,
            RecalibrationError,
            recalibrate_model,
            register_recalibration,
        )
        from training.tracking import TrackingError

        if not model.startswith("models:/"):
            fail("--model must be a registered model (models:/NAME@ALIAS)", 2)
        try:
            config = RecalibrationConfig(method=method, holdout_fraction=holdout, seed=seed)
        except ValueError as error:
            fail(str(error), 2)
        deployed = load_model(model, tracking_uri)
        uri = resolve_tracking_uri(tracking_uri)
        try:
            site = load_cohort(cohort)
        except CohortError as error:
            fail_invalid_cohort(cohort, error)
        try:
            result = recalibrate_model(deployed, site, config)
            result = register_recalibration(result, uri)
        except (RecalibrationError, TrackingError) as error:
            fail(str(error), 1)
        out = Console()
        out.print(
            f"method {result.method}: fitted on {result.n_fit} episodes, "
            f"held out {result.n_holdout}",
            highlight=False,
        )
        for label, values in (("before", result.before), ("after", result.after)):
            oe, slope, auc = values["oe_ratio"], values["calibration_slope"], values["auroc"]
            out.print(
                f"held-out {label:6s}: O/E {_f(oe['estimate'])} "
                f"({_f(oe['low'])}-{_f(oe['high'])}), "
                f"slope {_f(slope['estimate'])} ({_f(slope['low'])}-{_f(slope['high'])}), "
                f"AUROC {_f(auc['estimate'], 3)}",
                highlight=False,
            )
        name = result.source["name"]
        out.print(
            f"registered {name} version {result.registered_version} (@candidate) from version "
            f"{result.source['version']}",
            highlight=False,
        )
        for gate in result.gates:
            mark = "[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"
            out.print(f"{mark} {gate['name']}: {escape(gate['detail'])}", highlight=False)
        if result.gate_note:
            out.print(escape(result.gate_note), highlight=False)
        out.print(f"promote with `ctit promote {name} --allow-new-data`", highlight=False)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_summary(console: Console, summary: dict) -> None:
    audit = summary["audit"]
    console.print(
        f"{audit['episodes']} episodes scored by {summary['model']['name']} "
        f"({audit['first_score'][:10]} to {audit['last_score'][:10]})",
        highlight=False,
        markup=False,
    )
    for row in summary["features"][:5]:
        if row["status"] != "stable":
            console.print(
                f"  {row['feature']}: PSI {row['psi']:.3f} ({row['status']})",
                highlight=False,
                markup=False,
            )
    estimate = summary["estimate"]
    console.print(
        f"expected response rate {estimate['expected_response_rate']:.1%} (estimate)",
        highlight=False,
        markup=False,
    )
    overall = (summary.get("outcomes") or {}).get("overall")
    if overall:
        console.print(
            f"with outcomes: O/E {_f(overall['oe_ratio']['estimate'])}, slope "
            f"{_f(overall['calibration_slope']['estimate'])}, "
            f"AUROC {_f(overall['auroc']['estimate'], 3)}",
            highlight=False,
            markup=False,
        )
    if summary["alerts"]:
        for alert in summary["alerts"]:
            console.print(f"[bold red]ALERT[/] {escape(alert)}", highlight=False)
    else:
        console.print("no alert", highlight=False)
