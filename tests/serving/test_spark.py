"""Scores on Spark local[2] (serving.scoring.spark): equal to `ctit score`, every bad row reported,
and the plain MLflow route (`mlflow.pyfunc.spark_udf`) on a registered model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ctit.cli import app
from data.cohort import load_cohort
from data.issues import CohortError
from data.simulator import SimulationConfig, simulate_cohort
from serving.bundle.pyfunc import log_deployable_model
from serving.scoring.scorer import Scorer, answers_frame
from serving.scoring.spark import ROW, score_cohort_spark, score_records_spark

TESTS = Path(__file__).resolve().parents[1]


def _root_fixtures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_test_fixtures", TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_episode(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("episode_id").sort_index()


def _assert_same_scores(spark_frame: pd.DataFrame, local_frame: pd.DataFrame) -> None:
    got, want = _by_episode(spark_frame), _by_episode(local_frame)
    assert list(got.columns) == list(want.columns)
    assert list(got.index) == list(want.index)  # same episodes, none dropped, none added
    numeric = [c for c in want.columns if c not in ("band", "top_factors", "warnings")]
    numeric = [c for c in numeric if not c.startswith(("model_", "label_"))]
    np.testing.assert_allclose(
        got[numeric].to_numpy(float), want[numeric].to_numpy(float), rtol=0, atol=1e-9
    )
    for column in ("band", "top_factors", "warnings", "model_name", "model_version"):
        assert (got[column].fillna("").astype(str) == want[column].fillna("").astype(str)).all(), (
            column
        )


# -- equality with the local path on a simulated cohort -------------------------------------------


@pytest.fixture(scope="module")
def simulated_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim20k") / "cohort"
    # Few oracle nodes: the oracle is not scored, and it is most of the simulator's time.
    simulate_cohort(SimulationConfig(n_patients=20_000, seed=20, oracle_draws=4, workers=2), out)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_spark_scores_equal_ctit_score_on_20000_simulated_patients(
    spark, simulated_20k: Path, model_dir: Path, tmp_path: Path
) -> None:
    local_csv = tmp_path / "local.csv"
    result = CliRunner().invoke(
        app, ["score", "--model", str(model_dir), str(simulated_20k), "--out", str(local_csv)]
    )
    assert result.exit_code == 0, result.output
    local = pd.read_csv(local_csv, keep_default_na=False, na_values=[""])
    scored = score_cohort_spark(spark, str(simulated_20k), str(model_dir), contributions=True)
    try:
        frame = scored.scores.toPandas()
    finally:
        scored.unpersist()
    assert len(local) >= 20_000 and scored.episodes == len(local)
    assert local["warnings"].fillna("").str.len().gt(0).any()  # warnings are compared, not absent
    _assert_same_scores(frame, local)


# -- bad rows ------------------------------------------------------------------------------------


def _bad_cohort(directory: Path) -> Path:
    tables = _root_fixtures().make_tables()
    tables["patients"].loc[1, "ecog"] = 7  # patients.csv line 3
    tables["labs"].loc[4, "unit"] = "furlongs"  # labs.csv line 6 (CREA)
    tables["labs"]["value"] = tables["labs"]["value"].astype(object)  # pandas 3: text in floats
    tables["labs"].loc[20, "value"] = "lots"  # labs.csv line 22
    tables["regimens"].loc[4, "end_date"] = "2024-04-01"  # before its start: line 6
    episodes = tables["episodes"]
    episodes.loc[3, "patient_id"] = "P-zz"  # unknown patient: line 5
    # The same episode id for two patients: no partition by patient sees both rows.
    episodes.loc[len(episodes)] = ["E-2", "P-c3", "2024-07-16", 7.5]
    tables["outcomes"] = pd.DataFrame({"episode_id": ["E-1", "E-404"], "response": [1, 3]})
    return _root_fixtures().write_tables(tables, directory)


def test_bad_rows_are_reported_with_table_row_and_column(spark, model_dir: Path, tmp_path: Path):
    cohort = _bad_cohort(tmp_path / "bad")
    with pytest.raises(CohortError) as local:
        load_cohort(cohort)
    with pytest.raises(CohortError) as distributed:
        score_cohort_spark(spark, str(cohort), str(model_dir))
    found = {(i.table, i.line, i.column, i.message) for i in distributed.value.errors}
    expected = {(i.table, i.line, i.column, i.message) for i in local.value.errors}
    assert found == expected
    where = {(table, line, column) for table, line, column, _ in found}
    assert {
        ("patients", 3, "ecog"),
        ("labs", 6, "unit"),
        ("labs", 22, "value"),
        ("regimens", 6, "end_date"),
        ("episodes", 5, "patient_id"),
        ("episodes", 7, "episode_id"),
        ("outcomes", 3, "episode_id"),
        ("outcomes", 3, "response"),
    } <= where


def test_a_valid_cohort_loses_no_episode_and_keeps_its_warnings(
    spark, model_dir: Path, tmp_path: Path
) -> None:
    fixtures = _root_fixtures()
    cohort = fixtures.write_tables(fixtures.make_tables(), tmp_path / "ok", fmt="parquet")
    loaded = load_cohort(cohort)
    local = answers_frame(Scorer.load(str(model_dir)).score_cohort(loaded))
    scored = score_cohort_spark(spark, str(cohort), str(model_dir), contributions=True)
    try:
        frame = scored.scores.toPandas()
    finally:
        scored.unpersist()
    _assert_same_scores(frame, local)
    assert scored.warnings == list(loaded.warnings)  # the unknown test FERRITIN, labs row 16


def test_dataframes_with_their_own_row_numbers(spark, model_dir: Path) -> None:
    tables = _root_fixtures().make_tables()
    tables["labs"].loc[2, "unit"] = "furlongs"
    frames = {}
    for name, frame in tables.items():
        frame = frame.astype(object).where(frame.notna(), None).assign(**{ROW: frame.index + 100})
        frames[name] = spark.createDataFrame(frame.astype({ROW: "int64"}))
    with pytest.raises(CohortError) as caught:
        score_cohort_spark(spark, frames, str(model_dir))
    assert [(i.table, i.line, i.column) for i in caught.value.errors] == [("labs", 102, "unit")]


# -- the plain MLflow route ----------------------------------------------------------------------


def test_spark_udf_route_on_the_registered_model(
    spark, deployable_model, training_records, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("spark-udf")
    with mlflow.start_run():
        log_deployable_model(deployable_model, registered_model_name="ctit-spark")
    mlflow.MlflowClient().set_registered_model_alias("ctit-spark", "champion", "1")
    records, _ = training_records
    records = records[:40]
    frame = spark.createDataFrame(
        pd.DataFrame({"mrn": range(40), "record": [json.dumps(r) for r in records]})
    )
    scored = score_records_spark(spark, frame, "models:/ctit-spark@champion").toPandas()
    want = Scorer(deployable_model).score_batch(records, explain=False)
    scored = scored.sort_values("mrn")
    assert list(scored["episode_id"]) == [a["episode_id"] for a in want]
    np.testing.assert_allclose(
        scored["probability"], [a["probability"] for a in want], rtol=0, atol=1e-9
    )
    assert list(scored["band"]) == [a["band"] for a in want]
