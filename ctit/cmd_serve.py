"""CLI commands (serving): `ctit score` and `ctit serve`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ctit import cmd_spark
from ctit.options import TrackingUri, fail_invalid_cohort, require_registered_model
from ctit.options import tracking_uri as resolve_tracking_uri
from data.cohort import load_cohort
from data.issues import CohortError
from data.outputs import OutputError, atomic_output
from serving.bundle.store import ModelLoadError
from serving.fhir import convert as fhir
from serving.request.jsonin import JsonRefused, loads_strict
from serving.request.records import RecordError, validate_record
from serving.scoring.scorer import NotEstimable, Scorer, answers_frame
from serving.settings import MAX_WORKERS, ServingSettings

logger = logging.getLogger(__name__)

#: Above this many episodes `ctit score` shows a progress bar.
PROGRESS_FROM = 2000
CHUNK = 1000

ModelUri = Annotated[
    str,
    typer.Option(
        "--model",
        help="Model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local "
        "directory.",
        metavar="URI",
    ),
]


def _use_tracking_uri(tracking_uri: str | None) -> None:
    """Point MLflow (and any server worker process, through the environment) at the store."""
    os.environ["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(tracking_uri)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ctit app."""
    app.command("score")(score)
    app.command("serve")(serve)


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(Text(message, style="bold red"))
    raise typer.Exit(code)


def _load(uri: str) -> Scorer:
    try:
        return Scorer.load(uri)
    except ModelLoadError as exc:
        _fail(str(exc), code=2)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _records_of(path: Path, index_date: str | None) -> tuple[list[Any], list[str]]:
    """Patient records (and input warnings) from a JSON file: one, a list, or a FHIR Bundle."""
    try:
        obj = loads_strict(path.read_bytes())
    except OSError as exc:
        _fail(f"{path}: cannot read ({exc.strerror or exc})")
    except JsonRefused as exc:
        where = ".".join(str(part) for part in exc.loc)
        _fail(f"{path}: {where + ': ' if where else ''}{exc.msg}")
    if hasattr(fhir, "is_fhir") and hasattr(fhir, "fhir_to_patient_records") and fhir.is_fhir(obj):
        try:
            return fhir.fhir_to_patient_records(obj, index_date=index_date)
        except ValueError as exc:
            _fail(f"{path}: {exc}")
    if isinstance(obj, dict) and "records" in obj and "patient" not in obj:
        obj = obj["records"]
    if isinstance(obj, dict):
        return [obj], []
    if isinstance(obj, list) and obj:
        return obj, []
    _fail(f"{path}: expected a patient record, a list of them, or a FHIR Bundle")


def _score_records(
    scorer: Scorer, records: list[Any], explain: bool, console: Console
) -> list[dict[str, Any]]:
    """Every record validated first, then scored in chunks (with a progress bar when large)."""
    requests, errors = [], []
    for i, record in enumerate(records):
        try:
            requests.append(validate_record(record, prefix=(i,)))
        except RecordError as exc:
            errors.extend(exc.errors)
    out: list[dict[str, Any]] = []
    if not errors:
        with contextlib.ExitStack() as stack:
            advance: Callable[[int], None] = lambda n: None  # noqa: E731
            if len(requests) >= PROGRESS_FROM:
                progress = stack.enter_context(_progress(console))
                task = progress.add_task("score", total=len(requests))
                advance = lambda n: progress.advance(task, n)  # noqa: E731
            for start in range(0, len(requests), CHUNK):
                part = requests[start : start + CHUNK]
                try:
                    answers = scorer.score_batch(part, explain=explain)
                except RecordError as exc:
                    errors.extend(
                        {**e, "loc": [e["loc"][0] + start, *e["loc"][1:]]} for e in exc.errors
                    )
                    continue
                for answer in answers:
                    answer["record_index"] += start
                out.extend(answers)
                advance(len(part))
    if errors:
        lines = "\n".join(
            f"  record {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors
        )
        _fail(f"the input breaks the scoring contract (nothing written):\n{lines}")
    return out


def _score_cohort(
    scorer: Scorer, directory: Path, explain: bool, console: Console
) -> list[dict[str, Any]]:
    try:
        cohort = load_cohort(directory)
    except CohortError as exc:
        fail_invalid_cohort(directory, exc)
    total = len(cohort.episodes)
    try:
        if total < PROGRESS_FROM:
            return scorer.score_cohort(cohort, explain=explain)
        with _progress(console) as progress:
            task = progress.add_task("score", total=total)
            return scorer.score_cohort(
                cohort, explain=explain, progress=lambda n: progress.advance(task, n)
            )
    except NotEstimable as exc:
        _fail(f"{directory}: nothing written; {exc}")


#: `ctit score` prints at most this many rows of its table (the file holds them all).
TABLE_ROWS = 20


def probability_table(answers: list[dict[str, Any]], limit: int = TABLE_ROWS) -> Table:
    """A short table: episode, probability, interval, band and the main factor."""
    table = Table(title="Probability of response (calibrated)", title_justify="left")
    table.add_column("Episode")
    table.add_column("Probability", justify="right")
    table.add_column("Interval", justify="right")
    table.add_column("Band")
    table.add_column("Main factor", overflow="fold")
    for answer in answers[:limit]:
        low, high = answer["interval"]
        factors = answer.get("top_factors") or []
        table.add_row(
            str(answer["episode_id"]),
            f"{100 * answer['probability']:.0f}%",
            f"{100 * low:.0f}% to {100 * high:.0f}%",
            str(answer["band"]),
            factors[0]["text"] if factors else "",
        )
    if len(answers) > limit:
        table.caption = f"first {limit} of {len(answers)} episodes"
    return table


class Engine(StrEnum):
    """Where `ctit score` runs."""

    local = "local"
    spark = "spark"


def score(
    input_arg: Annotated[
        str,
        typer.Argument(
            help="One patient record as JSON (or a JSON list of them), a FHIR R4 Bundle, or a "
            "cohort directory (with --engine spark: any directory Spark reads, e.g. hdfs://...).",
            metavar="INPUT",
        ),
    ],
    model: ModelUri,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Also write every answer in full: a .json or .csv file, or - for JSON on "
            "standard output (--engine spark: a .parquet folder).",
            metavar="PATH",
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain/--no-explain", help="Add SHAP contributions, top factors and warnings."
        ),
    ] = True,
    index_date: Annotated[
        str | None,
        typer.Option("--index-date", help="FHIR input only: the first hetrombopag dose date."),
    ] = None,
    tracking_uri: TrackingUri = None,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="local: this process. spark: a cohort directory on Apache Spark (needs "
            "ctit[spark] and Java 17), written to --out OUT.parquet.",
        ),
    ] = Engine.local,
    master: Annotated[
        str | None,
        typer.Option(
            "--master",
            help="--engine spark: the Spark master, e.g. local[2], yarn, spark://host:7077 "
            "(default: spark-submit's, else local[*]).",
            metavar="URL",
        ),
    ] = None,
) -> None:
    """Score patients from a file or a cohort directory and print their probabilities."""
    if engine is Engine.spark:
        require_registered_model(model, tracking_uri)
        _use_tracking_uri(tracking_uri)
        cmd_spark.score_spark(input_arg, model, out, master, explain)
        return
    if master is not None:
        _fail("--master goes with --engine spark")
    input_path = Path(input_arg)
    to_stdout = out == "-"
    path = None if out is None or to_stdout else Path(out)
    suffix = path.suffix.lower() if path is not None else ".json"
    if suffix not in (".json", ".csv"):
        _fail(f"--out {out}: use a .json or .csv file name, or - for JSON on standard output")
    if not input_path.exists():
        _fail(f"{input_path}: no such file or directory")
    require_registered_model(model, tracking_uri)
    _use_tracking_uri(tracking_uri)
    console = Console(stderr=True, soft_wrap=True)
    scorer = _load(model)
    if input_path.is_dir():
        answers = _score_cohort(scorer, input_path, explain, console)
        notes: list[str] = []
    else:
        records, notes = _records_of(input_path, index_date)
        answers = _score_records(scorer, records, explain, console)
    for note in notes:
        console.print(Text(f"warning: {note}", style="yellow"))
    if to_stdout:  # the JSON alone on stdout (for pipes); the table and notes on stderr
        typer.echo(json.dumps(answers, indent=1))
    elif path is not None:
        try:
            with atomic_output(path) as partial:
                if suffix == ".json":
                    partial.write_text(json.dumps(answers, indent=1), encoding="utf-8")
                else:
                    answers_frame(answers).to_csv(partial, index=False)
        except OutputError as exc:
            _fail(exc.strerror)
    (console if to_stdout else Console(soft_wrap=False)).print(probability_table(answers))
    info = scorer.model.info
    where = "" if path is None else f" -> {path}"
    console.print(
        f"scored {len(answers)} episode{'s' if len(answers) != 1 else ''} with {info['name']} "
        f"version {info['version']}{where}",
        highlight=False,
    )


def serve(
    model: ModelUri,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on.", metavar="HOST")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", metavar="PORT")] = 8000,
    audit_db: Annotated[
        Path | None,
        typer.Option(
            "--audit-db",
            help="SQLite audit log (default: $CTIT_AUDIT_DB, else ./ctit-audit.db).",
            metavar="PATH",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log each request line.")
    ] = True,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=MAX_WORKERS,
            help="Server processes (each loads the model; they share the audit log).",
            metavar="N",
        ),
    ] = 1,
    tracking_uri: TrackingUri = None,
) -> None:
    """Serve the model over HTTP (FastAPI on uvicorn); CTIT_API_TOKEN turns on bearer tokens."""
    require_registered_model(model, tracking_uri)
    _use_tracking_uri(tracking_uri)
    import uvicorn

    from serving.http.app import TimedHttpToolsProtocol, create_app
    from serving.http.workers import START_TIMEOUT_S, run_workers

    try:
        settings = ServingSettings.from_env(
            os.environ, model_uri=model, host=host, port=port, audit_path=audit_db
        )
    except ValueError as exc:
        _fail(f"invalid serving settings: {exc}")
    loading = time.perf_counter()
    try:
        app = create_app(settings)
    except ModelLoadError as exc:
        _fail(str(exc), code=2)
    except (sqlite3.Error, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        _fail(
            f"audit log {settings.audit_path}: cannot open it for writing ({reason}); choose a "
            "writable path with --audit-db or CTIT_AUDIT_DB",
            code=2,
        )
    loaded_in_s = time.perf_counter() - loading
    info = app.state.scorer.model.info
    if settings.audit_salt is None:
        Console(stderr=True, soft_wrap=True).print(
            Text(
                "WARNING: CTIT_AUDIT_SALT is not set: the audit log keeps its own random salt, "
                "so whoever can read the file can recover short patient identifiers from the "
                "hashes. Set CTIT_AUDIT_SALT (required with CTIT_MODE=production).",
                style="bold yellow",
            )
        )
    TimedHttpToolsProtocol.header_timeout_s = settings.header_timeout_s
    server_options: dict[str, Any] = {
        # By name: a worker process imports it only after it answers the supervisor's health
        # pings (unpickling a class would import the whole service first).
        "http": "serving.http.app:TimedHttpToolsProtocol",
        "timeout_keep_alive": settings.keep_alive_s,
    }
    Console(stderr=True, soft_wrap=True).print(
        f"serving {info['name']} version {info['version']} on http://{host}:{port} "
        f"(docs at /docs; token {'required' if settings.api_token else 'not required'}; "
        f"{workers} worker{'s' if workers != 1 else ''})"
    )
    if workers == 1:
        uvicorn.run(
            app, host=host, port=port, log_level="info", access_log=access_log, **server_options
        )
        return
    # The model was loaded once above to fail fast; each worker process loads its own copy
    # from the same settings, handed over through the environment of the child processes.
    app.state.audit.close()
    os.environ[_SETTINGS_VARIABLE] = _settings_json(settings)
    config = uvicorn.Config(
        f"{__name__}:worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=access_log,
        # A worker has this long to answer its first ping and, later, each ping. uvicorn's
        # default 5 s killed (and restarted) every worker of a busy host in a loop.
        timeout_worker_healthcheck=60,
        **server_options,
    )
    # Not uvicorn's own supervisor: it blocks on one worker's ping and so handled SIGTERM only
    # after a starting worker's full health-check timeout (see serving.http.workers).
    # A worker loads the same model: give it 300 s, or 20 times what the load took here.
    run_workers(config, workers, start_timeout_s=max(START_TIMEOUT_S, 20 * loaded_in_s))


_SETTINGS_VARIABLE = "_CTIT_SERVE_SETTINGS"


def _settings_json(settings: ServingSettings) -> str:
    data = settings.model_dump(mode="json")
    for name in ("api_token", "audit_salt"):
        secret = getattr(settings, name)
        data[name] = secret.get_secret_value() if secret is not None else None
    return json.dumps(data)


def worker_app() -> Any:
    """The app of one `ctit serve --workers N` process (uvicorn calls this factory)."""
    from serving.http.app import TimedHttpToolsProtocol, create_app

    settings = ServingSettings.model_validate_json(os.environ[_SETTINGS_VARIABLE])
    TimedHttpToolsProtocol.header_timeout_s = settings.header_timeout_s
    return create_app(settings)
