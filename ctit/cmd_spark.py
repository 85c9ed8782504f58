"""`ctit score --engine spark`: a cohort directory scored on Spark, written as Parquet."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ctit.options import fail, fail_invalid_cohort
from data.issues import CohortError
from serving.bundle.store import ModelLoadError
from serving.scoring.scorer import NotEstimable

logger = logging.getLogger(__name__)

#: How many rows of the scores the command prints (the Parquet holds them all).
TABLE_ROWS = 20


def is_uri(path: str) -> bool:
    """Whether a path names a remote file system (hdfs://, s3a://, dbfs:/ ...) for Spark."""
    return "://" in path or path.startswith(("dbfs:", "file:"))


def score_spark(
    cohort: str, model: str, out: str | None, master: str | None, explain: bool
) -> None:
    """Score `cohort` on Spark with `model` and write the scores to the Parquet `out`."""
    from serving.scoring.spark import (
        SparkUnavailable,
        require_spark,
        score_cohort_spark,
        spark_session,
    )

    if out is None or not out.rstrip("/").lower().endswith(".parquet"):
        fail("--engine spark writes Parquet: give --out OUT.parquet (a folder of part files)")
    if not is_uri(cohort) and not Path(cohort).is_dir():
        fail(f"{cohort}: --engine spark scores a cohort directory; no such directory")
    console = Console(stderr=True, soft_wrap=True)
    try:
        require_spark()
    except SparkUnavailable as exc:
        fail(str(exc), code=2)
    try:
        existing = _active_session()
        spark = spark_session(master)
    except Exception as exc:  # noqa: BLE001 - the JVM could not start: say so, not a traceback
        fail(f"Spark could not start ({type(exc).__name__}: {str(exc).splitlines()[0]})", 2)
    try:
        try:
            result = score_cohort_spark(
                spark, cohort, model, contributions=explain, explain=explain
            )
        except ModelLoadError as exc:
            fail(str(exc), code=2)
        except CohortError as exc:
            fail_invalid_cohort(cohort, exc)
        except NotEstimable as exc:
            fail(f"{cohort}: nothing written; {exc}")
        for issue in result.warnings:
            console.print(Text(f"warning: {issue}", style="yellow"))
        _write(result.scores, out)
        head = result.scores.limit(TABLE_ROWS).toPandas()
        result.unpersist()
    finally:
        if existing is None:
            spark.stop()
    Console(soft_wrap=False).print(_table(head, result.episodes))
    console.print(
        f"scored {result.episodes} episode{'s' if result.episodes != 1 else ''} on Spark "
        f"({spark.sparkContext.master if existing is not None else master or 'default master'})"
        f" -> {out}",
        highlight=False,
    )


def _active_session() -> Any:
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def _write(scores: Any, out: str) -> None:
    """Write the Parquet folder; a local one appears whole or not at all (written beside, then
    renamed over any previous one)."""
    if is_uri(out):
        scores.write.mode("overwrite").parquet(out)
        return
    target = Path(out)
    partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        scores.write.parquet(str(partial))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            partial.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(target)
    except OSError as exc:
        fail(f"--out {out}: cannot write ({exc.strerror or exc})")
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _table(frame: pd.DataFrame, total: int) -> Table:
    table = Table(title="Probability of response (calibrated)", title_justify="left")
    for name, justify in (("Episode", "left"), ("Probability", "right"), ("Interval", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("Band")
    table.add_column("Main factor", overflow="fold")
    for row in frame.itertuples(index=False):
        factors = getattr(row, "top_factors", "") or ""
        table.add_row(
            str(row.episode_id),
            f"{100 * row.probability:.0f}%",
            f"{100 * row.interval_low:.0f}% to {100 * row.interval_high:.0f}%",
            str(row.band),
            factors.split(" | ")[0],
        )
    if total > len(frame):
        table.caption = f"first {len(frame)} of {total} episodes"
    return table
