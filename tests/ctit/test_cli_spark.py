"""`ctit score --engine spark`: end to end on Spark local[2], and its clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ctit.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_score_a_cohort_on_spark_end_to_end(
    spark, model_dir: Path, cohort_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    local_csv = tmp_path / "local.csv"
    result = runner.invoke(app, ["score", "--model", str(model_dir), str(cohort_dir),
                                 "--out", str(local_csv)])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = tmp_path / "scores.parquet"
    command = ["score", "--engine", "spark", "--master", "local[2]", "--model", str(model_dir)]
    result = runner.invoke(app, [*command, str(cohort_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scored 5 episodes on Spark" in result.output
    assert "FERRITIN" in result.output  # the loader's warning, with its row
    got = pd.read_parquet(out).set_index("episode_id").sort_index()
    want = pd.read_csv(local_csv).set_index("episode_id").sort_index()
    assert list(got.columns) == list(want.columns)  # the CSV's columns, contributions included
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got["probability"], want["probability"], rtol=0, atol=1e-9)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial folder left


def test_an_invalid_cohort_on_spark_names_table_row_and_column(
    spark, model_dir: Path, cohort_dir: Path, tmp_path: Path
) -> None:
    labs = pd.read_csv(cohort_dir / "labs.csv")
    labs.loc[2, "unit"] = "furlongs"
    labs.to_csv(cohort_dir / "labs.csv", index=False)
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["score", "--engine", "spark", "--model", str(model_dir),
                                      str(cohort_dir), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "labs:4: unit: unknown unit 'furlongs'" in result.output
    assert not out.exists()


def test_spark_engine_wants_a_parquet_output(model_dir: Path, cohort_dir: Path) -> None:
    result = CliRunner().invoke(app, ["score", "--engine", "spark", "--model", str(model_dir),
                                      str(cohort_dir), "--out", "x.csv"])  # fmt: skip
    assert result.exit_code == 1
    assert "--out OUT.parquet" in result.output


def test_master_needs_the_spark_engine(model_dir: Path, cohort_dir: Path) -> None:
    result = CliRunner().invoke(app, ["score", "--master", "local[2]", "--model", str(model_dir),
                                      str(cohort_dir)])  # fmt: skip
    assert result.exit_code == 1
    assert "--master goes with --engine spark" in result.output


def test_missing_java_is_a_clear_error(
    model_dir: Path, cohort_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.scoring.spark

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(serving.scoring.spark.shutil, "which", lambda name: None)
    result = CliRunner().invoke(app, ["score", "--engine", "spark", "--model", str(model_dir),
                                      str(cohort_dir), "--out", "x.parquet"])  # fmt: skip
    assert result.exit_code == 2
    assert "openjdk-17-jre-headless" in result.output


def test_missing_pyspark_is_a_clear_error(
    model_dir: Path, cohort_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)
    result = CliRunner().invoke(app, ["score", "--engine", "spark", "--model", str(model_dir),
                                      str(cohort_dir), "--out", "x.parquet"])  # fmt: skip
    assert result.exit_code == 2
    assert "pip install 'ctit[spark]'" in result.output
