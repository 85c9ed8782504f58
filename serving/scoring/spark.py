"""Scores on Apache Spark: a cohort of any size, grouped by patient and scored by ctit's own code.

    from serving.scoring.spark import score_cohort_spark
    result = score_cohort_spark(spark, "hdfs:///lake/ctit/cohort", "models:/ctit-response@champion")
    result.scores.write.parquet("scores.parquet")      # the columns of `ctit score --out X.csv`
    result.unpersist()

The cohort's tables are read as Spark DataFrames (a directory of `NAME.csv` / `NAME.parquet`
files or folders of part files, or DataFrames the caller passes). Every row carries its row number
in its input table, numbered as `load_cohort` numbers it (CSV: header = 1, first row = 2; Parquet
and DataFrames: 0-based). The rows of all tables are tagged with their table, repartitioned by
`patient_id` (outcomes follow their episode's patient) and handed to `mapInArrow`: each call gets
one partition, many patients, and runs `data.cohort.cohort_from_part` (the loader's own validation
and normalisation), then `Scorer.score_cohort` (the features, booster, calibrator and SHAP of
`ctit score`). Nothing is re-implemented here; only the rows are moved.

Validation problems of every partition are collected with their table, row and column. Any error
fails the run as `load_cohort` does (`CohortError` listing them all; nothing is scored), and so
does an episode without a platelet count (`NotEstimable`); warnings come back with the scores.

The plain MLflow route, one record-JSON column scored by `mlflow.pyfunc.spark_udf` on the
registered model, is `score_records_spark`.

pyspark is imported inside the functions: a scoring host without the `spark` extra still imports
`serving`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import shutil
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from data.cohort import (
    TABLES,
    cohort_from_part,
    duplicate_issues,
    frame_from_arrow,
    no_rows_issue,
    tables_in_directory,
)
from data.issues import CohortError, Issue
from serving.bundle.model import DeployableModel
from serving.scoring.scorer import NotEstimable, Scorer, answers_frame

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: A column a caller may add to a table: the row number that issues should name.
ROW = "_ctit_row"
_TABLE, _KEY, _MID = "_ctit_table", "_ctit_key", "_ctit_mid"
_KIND, _I_TABLE, _I_LINE, _I_COLUMN, _I_MESSAGE = (
    "_ctit_kind",
    "_ctit_issue_table",
    "_ctit_issue_line",
    "_ctit_issue_column",
    "_ctit_issue_message",
)
_ISSUE_COLUMNS = (_KIND, _I_TABLE, _I_LINE, _I_COLUMN, _I_MESSAGE)
#: monotonically_increasing_id(): partition index in the upper 31 bits, row in the lower 33.
_ROW_BITS = 33
#: Rows (of all tables together) per partition by default: a few hundred MB of pandas.
ROWS_PER_PARTITION = 2_000_000
#: Text columns of the score output; every other column is a double.
TEXT_COLUMNS = frozenset(
    {"episode_id", "band", "top_factors", "warnings", "model_name", "model_version",
     "label_definition"}
)  # fmt: skip


class SparkUnavailable(RuntimeError):
    """pyspark or Java is missing; the message says what to install."""


@dataclasses.dataclass
class SparkScores:
    """What `score_cohort_spark` returns.

    Attributes:
        scores: one row per episode with the columns of `ctit score --out X.csv` (persisted;
            rows in no particular order; `unpersist()` when done).
        warnings: the loader's warnings (table, row, column, message), from every partition.
        episodes: the number of episodes scored.
    """

    scores: DataFrame
    warnings: list[Issue]
    episodes: int
    _cached: Any = None

    def unpersist(self) -> None:
        """Free the cached scores."""
        if self._cached is not None:
            self._cached.unpersist()


# -- environment ---------------------------------------------------------------------------------


def require_spark() -> None:
    """Raise `SparkUnavailable` (with what to install) when pyspark or Java is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailable(
            "the Spark engine needs pyspark: pip install 'ctit[spark]'"
        ) from None
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else None
    if not (java is not None and java.is_file()) and shutil.which("java") is None:
        raise SparkUnavailable(
            "the Spark engine needs Java 17 (no `java` on PATH and no JAVA_HOME): on Debian or "
            "Ubuntu, apt-get install openjdk-17-jre-headless"
        )


def spark_session(master: str | None = None, app_name: str = "ctit") -> SparkSession:
    """The active SparkSession, else a new one (`master` default: from spark-submit, else local).

    A local master binds to 127.0.0.1, has no UI and uses this Python for its workers.
    """
    require_spark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if master is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        master = "local[*]"  # not under spark-submit, which sets the master itself
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        # Local workers are children of this process: the same Python, whatever is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        )
    return builder.getOrCreate()


# -- reading -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Table:
    """One input table as Spark reads it."""

    frame: DataFrame
    first_row: int  # the number of the first data row (CSV: 2; Parquet and frames: 0)
    from_csv: bool


def _entries(spark: SparkSession, directory: str) -> list[str] | None:
    """Names in a directory (local, HDFS, S3, DBFS... through Hadoop); None when it is absent."""
    if "://" not in directory and not directory.startswith(("dbfs:", "file:")):
        path = Path(directory)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else None
    jvm = spark.sparkContext._jvm  # noqa: SLF001 - Hadoop's FileSystem has no Python API
    hpath = jvm.org.apache.hadoop.fs.Path(directory)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # noqa: SLF001
    if not fs.exists(hpath) or not fs.getFileStatus(hpath).isDirectory():
        return None
    return sorted(status.getPath().getName() for status in fs.listStatus(hpath))


def read_cohort_tables(
    spark: SparkSession, directory: str | Path
) -> tuple[dict[str, DataFrame], list[Issue]]:
    """The contract tables of a cohort directory as Spark DataFrames, and the directory warnings.

    CSV is read as text (the loader parses every value, as `load_cohort` does). Raises
    `CohortError` for what `load_cohort` would refuse before reading a row (a missing table...).
    """
    tables, warnings = _read_directory(spark, str(directory))
    return {name: table.frame for name, table in tables.items()}, warnings


def _read_directory(spark: SparkSession, directory: str) -> tuple[dict[str, _Table], list[Issue]]:
    entries = _entries(spark, directory)
    if entries is None:
        raise CohortError([Issue("cohort", None, None, f"directory {directory} does not exist")])
    chosen, errors, warnings = tables_in_directory(directory, entries)
    if errors:
        raise CohortError(errors, warnings)
    tables: dict[str, _Table] = {}
    for name, entry in chosen.items():
        path = directory.rstrip("/") + "/" + entry
        if entry.lower().endswith(".csv"):
            frame = (
                spark.read.option("header", True)
                .option("inferSchema", False)
                .option("encoding", "UTF-8")
                .csv(path)
            )
            frame = frame.toDF(*[c.strip() for c in frame.columns])
            tables[name] = _Table(frame, 2, True)
        else:
            tables[name] = _Table(spark.read.parquet(path), 0, False)
    return tables, warnings


# -- the model on the executors --------------------------------------------------------------------

#: This Python worker's scorer: (broadcast token, scorer, the folder its model was unpacked into).
_SCORER: list[tuple[str, Scorer, tempfile.TemporaryDirectory]] = []


def _model_bytes(model: DeployableModel) -> bytes:
    with tempfile.TemporaryDirectory(prefix="ctit-spark-") as tmp:
        saved = model.save(Path(tmp) / "model")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(saved, arcname="model")
    return buffer.getvalue()


def _executor_scorer(token: str, payload: Any) -> Scorer:
    """The scorer of this Python worker, unpacked once per run from the broadcast model (a
    worker is reused across tasks; a new run's model replaces the previous one)."""
    if _SCORER and _SCORER[0][0] == token:
        return _SCORER[0][1]
    for _, _, folder in _SCORER:
        folder.cleanup()
    _SCORER.clear()
    folder = tempfile.TemporaryDirectory(prefix="ctit-spark-model-")
    with tarfile.open(fileobj=io.BytesIO(payload.value), mode="r:gz") as archive:
        archive.extractall(folder.name, filter="data")
    model = DeployableModel.load(Path(folder.name) / "model")
    model.warm()
    scorer = Scorer(model)
    _SCORER.append((token, scorer, folder))
    return scorer


# -- scoring ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What each partition needs to rebuild its tables and score them (pickled to executors)."""

    names: tuple[str, ...]  # table of each code
    columns: Mapping[str, tuple[tuple[str, str], ...]]  # table -> ((slot, column), ...)
    csv_tables: frozenset[str]
    timezone: str
    explain: bool
    output: tuple[str, ...]
    token: str
    payload: Any  # the broadcast model


def score_cohort_spark(
    spark: SparkSession,
    tables: Mapping[str, DataFrame] | str | Path,
    model_uri: str,
    *,
    contributions: bool = False,
    explain: bool = True,
    partitions: int | None = None,
) -> SparkScores:
    """Score every episode of a cohort on Spark, with ctit's loader, features and scorer.

    Args:
        spark: the session to run on (`spark_session()` makes one).
        tables: DataFrames keyed by table name (patients, episodes, labs, regimens, outcomes,
            transfusions; labs and regimens may be absent), or a cohort directory of CSV/Parquet
            tables (any path Spark reads: local, hdfs://, s3a://, dbfs:/). A DataFrame may carry
            a `_ctit_row` column: the row number issues name; else rows are numbered in the
            order Spark reads them.
        model_uri: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a local directory;
            loaded once on the driver and broadcast.
        contributions: add the SHAP contributions as `shap:FEATURE` columns.
        explain: top factors and warnings (as `ctit score --explain`, the default).
        partitions: partitions to score in (default: enough for `ROWS_PER_PARTITION` rows each,
            at least the default parallelism).

    Returns:
        `SparkScores`: the scores (persisted), the loader's warnings and the episode count.

    Raises:
        CohortError: every validation error of every partition (table, row, column, message).
        NotEstimable: episodes without a platelet count on or before their index date.
        ModelLoadError: the model cannot be loaded.
    """
    from serving.bundle.uri import load_deployable_model

    model = load_deployable_model(model_uri)
    output = _output_columns(model, explain, contributions)
    read, warnings = _input_tables(spark, tables)
    rows, counts = _numbered_rows(spark, read, warnings)
    errors = _episode_ids_across_patients(rows["episodes"])
    union, columns = _tagged_union(rows)
    if partitions is None:
        partitions = _default_partitions(spark, counts)
    plan = _Plan(
        names=tuple(rows),
        columns={name: tuple((slot, column) for slot, column in columns[name]) for name in rows},
        csv_tables=frozenset(name for name, t in read.items() if t.from_csv),
        timezone=spark.conf.get("spark.sql.session.timeZone") or "UTC",
        explain=explain,
        output=output,
        token=uuid.uuid4().hex,
        payload=spark.sparkContext.broadcast(_model_bytes(model)),
    )
    result = _scored_partitions(union, partitions, plan)
    warnings = _checked_issues(result, errors, warnings)
    return _scores_of(result, output, warnings, partitions)


def _input_tables(
    spark: SparkSession, tables: Mapping[str, DataFrame] | str | Path
) -> tuple[dict[str, _Table], list[Issue]]:
    """The tables given or read from a directory, their headers checked; the reading warnings."""
    if isinstance(tables, Mapping):
        read, warnings = _given_tables(tables)
    else:
        read, warnings = _read_directory(spark, str(tables))
    _check_columns(read)
    return read, warnings


def _numbered_rows(
    spark: SparkSession, read: Mapping[str, _Table], warnings: list[Issue]
) -> tuple[dict[str, DataFrame], dict[str, dict[int, int]]]:
    """Each table with its rows' numbers in `ROW`, and its rows per Spark partition.

    Raises:
        CohortError: no patients or no episodes.
    """
    from pyspark.sql import functions as F

    numbered = {
        name: t.frame.withColumn(_MID, F.monotonically_increasing_id()) for name, t in read.items()
    }
    counts = _partition_counts(spark, numbered, read)
    errors = [
        no_rows_issue(name) for name in ("patients", "episodes") if not sum(counts[name].values())
    ]
    if errors:
        raise CohortError(errors, warnings)
    rows = {name: _with_rows(frame, read[name], counts[name]) for name, frame in numbered.items()}
    return rows, counts


def _tagged_union(
    rows: Mapping[str, DataFrame],
) -> tuple[DataFrame, dict[str, list[tuple[str, str]]]]:
    """The rows of every table in one long frame (table code, patient key, row number, typed
    slots), and each table's (slot, column) assignment."""
    from pyspark.sql import functions as F

    slots, columns = _slot_layout({name: frame.drop(ROW) for name, frame in rows.items()})
    keyed = _keyed(rows)
    union = None
    for code, name in enumerate(rows):
        assigned = dict(columns[name])
        part = keyed[name].select(
            F.lit(code).cast("int").alias(_TABLE),
            F.col(_KEY),
            F.col(ROW).cast("long").alias(ROW),
            *[
                F.col(f"`{assigned[slot]}`").alias(slot) if slot in assigned
                else F.lit(None).cast(dtype).alias(slot)
                for slot, dtype in slots
            ],
        )  # fmt: skip
        union = part if union is None else union.unionByName(part)
    return union, columns


def _default_partitions(spark: SparkSession, counts: Mapping[str, Mapping[int, int]]) -> int:
    """Enough partitions for `ROWS_PER_PARTITION` rows each, at least the default parallelism."""
    total = sum(sum(c.values()) for c in counts.values())
    parallelism = spark.sparkContext.defaultParallelism
    return parallelism * max(1, math.ceil(total / (parallelism * ROWS_PER_PARTITION)))


def _scored_partitions(union: DataFrame, partitions: int, plan: _Plan) -> DataFrame:
    """The rows repartitioned by patient and scored by `_score_partition` (persisted): score rows
    and issue rows together."""
    from pyspark import StorageLevel

    schema = _spark_schema(plan.output)
    result = (
        union.repartition(partitions, _KEY)
        .drop(_KEY)
        .mapInArrow(lambda batches: _score_partition(batches, plan), schema)
    )
    return result.persist(StorageLevel.MEMORY_AND_DISK)


def _checked_issues(result: DataFrame, errors: list[Issue], warnings: list[Issue]) -> list[Issue]:
    """The warnings, with every partition's (sorted, each once), when nothing is an error.

    Raises:
        CohortError: any error (the cached result is freed).
        NotEstimable: episodes without a platelet count (the cached result is freed).
    """
    from pyspark.sql import functions as F

    found = result.filter(F.col(_KIND) != "score").select(*_ISSUE_COLUMNS).collect()
    errors, warnings = list(errors), list(warnings)
    lacking: list[str] = []
    for row in found:
        if row[_KIND] == "not_estimable":
            lacking.append(row[_I_MESSAGE])
            continue
        issue = Issue(row[_I_TABLE], row[_I_LINE], row[_I_COLUMN], row[_I_MESSAGE])
        (errors if row[_KIND] == "error" else warnings).append(issue)
    errors, warnings = _sorted_unique(errors), _sorted_unique(warnings)
    if errors:
        result.unpersist()
        raise CohortError(errors, warnings)
    if lacking:
        result.unpersist()
        raise NotEstimable(sorted(lacking))
    return warnings


def _scores_of(
    result: DataFrame, output: tuple[str, ...], warnings: list[Issue], partitions: int
) -> SparkScores:
    """The score rows of the result, counted."""
    from pyspark.sql import functions as F

    scores = result.filter(F.col(_KIND) == "score").select(*[F.col(f"`{c}`") for c in output])
    episodes = scores.count()
    log.info("scored %d episodes in %d partitions", episodes, partitions)
    return SparkScores(scores=scores, warnings=warnings, episodes=episodes, _cached=result)


def _given_tables(tables: Mapping[str, DataFrame]) -> tuple[dict[str, _Table], list[Issue]]:
    warnings, read = [], {}
    for name, frame in tables.items():
        if name not in TABLES:
            warnings.append(
                Issue(
                    name,
                    None,
                    None,
                    f"unknown table {name!r} ignored (tables: {', '.join(TABLES)})",
                )
            )
        elif frame is not None:
            read[name] = _Table(frame, 0, False)
    missing = [
        Issue(n, None, None, f"missing table {n!r}")
        for n in ("patients", "episodes")
        if n not in read
    ]
    if missing:
        raise CohortError(missing, warnings)
    return read, warnings


def _check_columns(read: Mapping[str, _Table]) -> None:
    """The loader's column checks on the tables' headers alone (no rows read)."""
    frames = {
        name: pd.DataFrame({c: pd.Series(dtype=object) for c in t.frame.columns if c != ROW})
        for name, t in read.items()
    }
    try:
        cohort_from_part(frames, {name: np.arange(0) for name in frames})
    except CohortError as exc:
        raise CohortError(exc.errors, exc.warnings) from None
    if "outcomes" in read and "episode_id" not in read["episodes"].frame.columns:
        raise CohortError(
            [Issue("episodes", None, "episode_id", "missing required column 'episode_id'")]
        )


def _partition_counts(
    spark: SparkSession, numbered: Mapping[str, DataFrame], read: Mapping[str, _Table]
) -> dict[str, dict[int, int]]:
    """Rows per (table, input partition), in one job that reads no column."""
    from pyspark.sql import functions as F

    union = None
    for code, frame in enumerate(numbered.values()):
        part = frame.select(
            F.lit(code).alias("t"), F.shiftrightunsigned(F.col(_MID), _ROW_BITS).alias("p")
        )
        union = part if union is None else union.unionByName(part)
    names = list(numbered)
    out: dict[str, dict[int, int]] = {name: {} for name in names}
    for row in union.groupBy("t", "p").count().collect():
        out[names[row["t"]]][int(row["p"])] = int(row["count"])
    return out


def _with_rows(frame: DataFrame, table: _Table, counts: Mapping[int, int]) -> DataFrame:
    """`frame` with `_ctit_row`: the caller's, else first row + rows of earlier partitions +
    the row's place in its partition."""
    from pyspark.sql import functions as F

    if ROW in frame.columns:
        return frame.drop(_MID)
    starts, running = [], table.first_row
    for partition in sorted(counts):
        starts += [F.lit(partition), F.lit(running)]
        running += counts[partition]
    partition = F.shiftrightunsigned(F.col(_MID), _ROW_BITS)
    place = F.col(_MID).bitwiseAND(F.lit((1 << _ROW_BITS) - 1))
    start = F.element_at(F.create_map(*starts), partition) if starts else F.lit(0)
    return frame.withColumn(ROW, (start + place).cast("long")).drop(_MID)


def _keyed(rows: Mapping[str, DataFrame]) -> dict[str, DataFrame]:
    """Each table with `_ctit_key`, the patient its rows go with (outcomes: their episode's)."""
    from pyspark.sql import functions as F

    out = {}
    for name, frame in rows.items():
        if name == "outcomes":
            episodes = (
                rows["episodes"]
                .select(F.col("episode_id").cast("string").alias("_ctit_eid"),
                        F.xxhash64(F.col("patient_id").cast("string")).alias(_KEY))
                .dropDuplicates(["_ctit_eid"])
            )  # fmt: skip
            frame = frame.join(
                episodes, frame["episode_id"].cast("string") == episodes["_ctit_eid"], "left"
            ).drop("_ctit_eid")
        else:
            frame = frame.withColumn(_KEY, F.xxhash64(F.col("patient_id").cast("string")))
        out[name] = frame
    return out


def _episode_ids_across_patients(episodes: DataFrame) -> list[Issue]:
    """Duplicate episode ids whose rows belong to different patients (no partition sees both)."""
    from pyspark.sql import functions as F

    eid = F.col("episode_id").cast("string")
    shared = (
        episodes.groupBy(eid.alias("_e"))
        .agg(F.countDistinct(F.col("patient_id").cast("string")).alias("_n"))
        .filter(F.col("_n") > 1)
    )
    found = (
        episodes.join(F.broadcast(shared), eid == shared["_e"], "inner")
        .select(eid.alias("episode_id"), F.col(ROW))
        .collect()
    )
    if not found:
        return []
    frame = pd.DataFrame([r.asDict() for r in found])
    return duplicate_issues("episodes", "episode_id", frame["episode_id"], frame[ROW].to_numpy())


def _slot_layout(
    frames: Mapping[str, DataFrame],
) -> tuple[list[tuple[str, Any]], dict[str, list[tuple[str, str]]]]:
    """Shared columns of the tagged long frame: slots of each Spark type, as many as the table
    that needs most; each table's columns go into the slots of their type (types are kept)."""
    capacity: dict[str, int] = {}
    types: dict[str, Any] = {}
    placed: dict[str, list[tuple[str, int, str]]] = {}
    for name, frame in frames.items():
        used: dict[str, int] = {}
        placed[name] = []
        for field in frame.schema.fields:
            if field.name in (_KEY, _MID):
                continue
            key = field.dataType.simpleString()
            types.setdefault(key, field.dataType)
            placed[name].append((key, used.get(key, 0), field.name))
            used[key] = used.get(key, 0) + 1
        for key, n in used.items():
            capacity[key] = max(capacity.get(key, 0), n)
    slots, slot_of = [], {}
    for key in sorted(capacity):
        for k in range(capacity[key]):
            slot_of[(key, k)] = f"_c{len(slots)}"
            slots.append((slot_of[(key, k)], types[key]))
    columns = {
        name: [(slot_of[(key, k)], column) for key, k, column in placed[name]] for name in frames
    }
    return slots, columns


def _output_columns(model: DeployableModel, explain: bool, contributions: bool) -> tuple[str, ...]:
    """The columns `ctit score --out X.csv` writes for this model (from its example record)."""
    from serving.bundle.pyfunc import example_record

    answers = Scorer(model).score_batch([example_record(model)], explain=explain)
    for answer in answers:
        answer["record_index"] = None
    columns = list(answers_frame(answers).columns)
    if not contributions:
        columns = [c for c in columns if not c.startswith("shap:")]
    return tuple(columns)


def _spark_schema(output: Iterable[str]) -> Any:
    from pyspark.sql import types as T

    fields = [
        T.StructField(c, T.StringType() if c in TEXT_COLUMNS else T.DoubleType()) for c in output
    ]
    fields += [
        T.StructField(_KIND, T.StringType()),
        T.StructField(_I_TABLE, T.StringType()),
        T.StructField(_I_LINE, T.LongType()),
        T.StructField(_I_COLUMN, T.StringType()),
        T.StructField(_I_MESSAGE, T.StringType()),
    ]
    return T.StructType(fields)


def _arrow_schema(output: Iterable[str]) -> pa.Schema:
    fields = [pa.field(c, pa.string() if c in TEXT_COLUMNS else pa.float64()) for c in output]
    fields += [pa.field(c, pa.int64() if c == _I_LINE else pa.string()) for c in _ISSUE_COLUMNS]
    return pa.schema(fields)


# -- on the executors ----------------------------------------------------------------------------


def _score_partition(batches: Iterator[pa.RecordBatch], plan: _Plan) -> Iterator[pa.RecordBatch]:
    """Rebuild this partition's tables, load them with the loader, score them with the scorer."""
    collected = [b for b in batches if b.num_rows]
    schema = _arrow_schema(plan.output)
    if not collected:
        return
    whole = pa.Table.from_batches(collected)
    del collected
    codes = whole.column(_TABLE).to_numpy()
    frames: dict[str, pd.DataFrame] = {}
    lines: dict[str, np.ndarray] = {}
    for code, name in enumerate(plan.names):
        mask = codes == code
        if not mask.any() and name not in ("patients", "episodes"):
            continue
        slots = [slot for slot, _ in plan.columns[name]]
        part = whole.select([ROW, *slots]).filter(pa.array(mask))
        rows = part.column(ROW).to_numpy()
        part = part.drop_columns([ROW])
        if len(rows) > 1 and (np.diff(rows) < 0).any():
            order = np.argsort(rows, kind="stable")  # the input's row order, as the loader reads
            part, rows = part.take(pa.array(order)), rows[order]
        part = part.rename_columns([column for _, column in plan.columns[name]])
        frame = frame_from_arrow(name, part, from_csv=name in plan.csv_tables)
        frames[name] = _local_times(frame, plan.timezone)
        lines[name] = rows
    del whole
    try:
        cohort = cohort_from_part(frames, lines, text_tables=plan.csv_tables)
    except CohortError as exc:
        yield _issue_batch(schema, exc.errors, exc.warnings)
        return
    if cohort.warnings:
        yield _issue_batch(schema, [], list(cohort.warnings))
    if not len(cohort.episodes):
        return
    scorer = _executor_scorer(plan.token, plan.payload)
    try:
        answers = scorer.score_cohort(cohort, explain=plan.explain)
    except NotEstimable as exc:
        frame = pd.DataFrame({_KIND: "not_estimable", _I_MESSAGE: exc.episode_ids})
        yield _conform(frame, schema)
        return
    for answer in answers:
        answer["record_index"] = None
    frame = answers_frame(answers)
    frame[_KIND] = "score"
    yield _conform(frame, schema)


def _local_times(frame: pd.DataFrame, timezone: str) -> pd.DataFrame:
    """Spark timestamps (instants) as the session's local wall-clock time, as the contract reads
    times without a zone."""
    for column in frame.columns:
        dtype = frame[column].dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert(timezone).dt.tz_localize(None)
    return frame


def _issue_batch(schema: pa.Schema, errors: list[Issue], warnings: list[Issue]) -> pa.RecordBatch:
    rows = [("error", i) for i in errors] + [("warning", i) for i in warnings]
    frame = pd.DataFrame(
        {
            _KIND: [kind for kind, _ in rows],
            _I_TABLE: [i.table for _, i in rows],
            _I_LINE: pd.array([i.line for _, i in rows], dtype="Int64"),
            _I_COLUMN: [i.column for _, i in rows],
            _I_MESSAGE: [i.message for _, i in rows],
        }
    )
    return _conform(frame, schema)


def _conform(frame: pd.DataFrame, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for field in schema:
        if field.name in frame.columns:
            values = frame[field.name]
            if pa.types.is_floating(field.type):
                values = pd.to_numeric(values, errors="coerce").astype("float64")
            elif pa.types.is_string(field.type):
                values = values.astype(object).where(values.notna(), None)
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
        else:
            arrays.append(pa.nulls(len(frame), type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _sorted_unique(issues: list[Issue]) -> list[Issue]:
    """Issues without repeats (each partition checks the headers), by table, row and column."""
    order = {name: k for k, name in enumerate(TABLES)}
    unique = list(dict.fromkeys(issues))
    return sorted(
        unique,
        key=lambda i: (
            order.get(i.table, -1),
            -1 if i.line is None else i.line,
            i.column or "",
            i.message,
        ),
    )


# -- the plain MLflow route ------------------------------------------------------------------------


def pyfunc_udf(spark: SparkSession, model_uri: str, env_manager: str = "local") -> Any:
    """`mlflow.pyfunc.spark_udf` of a ctit model: one record-JSON column in, a struct of the
    pyfunc's output columns out (`serving.bundle.pyfunc.SIGNATURE`)."""
    import mlflow.pyfunc
    from pyspark.sql import types as T

    from serving.bundle.pyfunc import SIGNATURE

    kinds = {"long": T.LongType(), "double": T.DoubleType(), "string": T.StringType()}
    result = T.StructType(
        [T.StructField(c.name, kinds[c.type.name]) for c in SIGNATURE.outputs.inputs]
    )
    return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result, env_manager=env_manager)


def score_records_spark(
    spark: SparkSession, records: DataFrame, model_uri: str, column: str = "record"
) -> DataFrame:
    """Score a DataFrame of patient records (one JSON record with one episode per row) with the
    registered pyfunc through `mlflow.pyfunc.spark_udf`; adds the output columns to each row.

    A record that breaks the contract fails its Spark task (the pyfunc raises); validate first,
    or use `score_cohort_spark`, which reports every problem by table, row and column.
    """
    from pyspark.sql import functions as F

    udf = pyfunc_udf(spark, model_uri)
    scored = records.withColumn("_ctit_score", udf(F.col(column).alias("record")))
    fields = [f.name for f in scored.schema["_ctit_score"].dataType.fields]
    return scored.select(
        *[F.col(f"`{c}`") for c in records.columns if c not in fields],
        *[F.col(f"_ctit_score.{f}").alias(f) for f in fields],
    )
