"""`ctit features` end to end through typer's CliRunner."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ctit.cli import app

runner = CliRunner()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_writes_one_row_per_episode_with_episode_id_first(cohort_dir: Path, suffix: str):
    out = cohort_dir.parent / f"features{suffix}"
    result = runner.invoke(app, ["features", str(cohort_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert frame.columns[0] == "episode_id"
    assert sorted(frame["episode_id"]) == ["E-1", "E-2", "E-3", "E-4", "E-5"]
    assert frame.set_index("episode_id").loc["E-1", "plt_last"] == 42.0
    assert "wrote 5 episodes" in result.output


def test_encoded_matrix_with_extras(cohort_dir: Path):
    out = cohort_dir.parent / "X.csv"
    args = ["features", str(cohort_dir), "--out", str(out), "--encoded"]
    result = runner.invoke(app, [*args, "--extra-analyte", "FERRITIN", "--extra-static", "site"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out).set_index("episode_id")
    assert frame.loc["E-2", "lab_FERRITIN_last"] == 450.0
    assert frame.loc["E-3", "subtype=TNBC"] == 1.0 and frame.loc["E-3", "static_site=south"] == 1.0


def test_bad_suffix_and_bad_cohort_are_clear_errors(cohort_dir: Path):
    result = runner.invoke(app, ["features", str(cohort_dir), "--out", "x.xlsx"])
    assert result.exit_code == 2 and ".csv or .parquet" in result.output
    (cohort_dir / "episodes.csv").write_text("episode_id,patient_id\nE-1,P-a1\n")
    result = runner.invoke(app, ["features", str(cohort_dir), "--out", str(cohort_dir / "f.csv")])
    assert result.exit_code == 1 and "not a valid cohort" in result.output
    assert "Traceback" not in result.output


def test_unknown_family_is_a_clear_error(cohort_dir: Path):
    args = ["features", str(cohort_dir), "--out", "f.csv", "--family", "vibes"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "unknown ['vibes']" in result.output
