"""`ctit validate` and `ctit labels` end to end through typer's CliRunner."""

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from ctit.cli import app

runner = CliRunner()


def test_validate_a_valid_cohort(cohort_dir: Path) -> None:
    result = runner.invoke(app, ["validate", str(cohort_dir)])
    assert result.exit_code == 0, result.output
    assert "Cohort is valid." in result.output
    assert "patients: 4" in result.output and "episodes: 5" in result.output
    assert "FERRITIN" in result.output  # the warning
    assert "88.42" in result.output  # a conversion applied


def test_validate_a_broken_cohort_lists_every_error(cohort_dir: Path) -> None:
    labs = pd.read_csv(cohort_dir / "labs.csv", dtype=str)
    labs.loc[3, "unit"] = "mmol/L"
    labs.to_csv(cohort_dir / "labs.csv", index=False)
    episodes = pd.read_csv(cohort_dir / "episodes.csv", dtype=str)
    episodes.loc[0, "index_date"] = "2024-02-31"
    episodes.to_csv(cohort_dir / "episodes.csv", index=False)
    result = runner.invoke(app, ["validate", str(cohort_dir)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "mmol/L" in result.output and "2024-02-31" in result.output
    assert "Cohort is not valid: 2 errors." in result.output


def test_validate_json_shape(cohort_dir: Path) -> None:
    result = runner.invoke(app, ["validate", str(cohort_dir), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert set(report) == {"valid", "errors", "warnings", "summary"}
    assert report["valid"] is True and report["errors"] == []
    assert set(report["warnings"][0]) == {"table", "line", "column", "message"}
    assert report["summary"]["episodes"] == 5

    (cohort_dir / "regimens.csv").unlink()
    result = runner.invoke(app, ["validate", str(cohort_dir), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["errors"] == [
        {
            "table": "regimens",
            "line": None,
            "column": None,
            "message": "missing table 'regimens' (expected regimens.csv or regimens.parquet)",
        }
    ]


def test_validate_a_missing_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_labels_writes_the_csv_and_prints_the_attrition(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    result = runner.invoke(app, ["labels", str(cohort_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out, dtype={"exclusion": str}, keep_default_na=False)
    assert list(written.columns) == [
        "episode_id",
        "label",
        "baseline_plt",
        "days_to_response",
        "exclusion",
    ]
    # E-3 has not responded and its last PLT is on day 5: not evaluable (data.labels)
    assert written["label"].astype(str).tolist() == ["1", "1", "", "", "1"]
    assert written["exclusion"].tolist()[2] == "not evaluable: follow-up ended day 5"
    assert "responders" in result.output and "100.0%" in result.output


def test_labels_with_another_definition(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    result = runner.invoke(
        app, ["labels", str(cohort_dir), "--definition", "plt100_d14", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(out)["label"].tolist()[:3]
    assert labels[0] == 1 and pd.isna(labels[1]) and pd.isna(labels[2])  # E-2, E-3 not evaluable
    assert "100.0%" in result.output


def test_labels_errors_are_clean(cohort_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    bad_definition = runner.invoke(
        app, ["labels", str(cohort_dir), "--definition", "plt50", "--out", str(out)]
    )
    assert bad_definition.exit_code == 1
    assert "unknown label definition 'plt50'" in bad_definition.output
    given = runner.invoke(
        app, ["labels", str(cohort_dir), "--definition", "given", "--out", str(out)]
    )
    assert given.exit_code == 1 and "needs an outcomes table" in given.output
    missing = runner.invoke(app, ["labels", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    unwritable = runner.invoke(
        app, ["labels", str(cohort_dir), "--out", str(cohort_dir / "patients.csv" / "x.csv")]
    )
    assert unwritable.exit_code == 1 and "cannot write" in unwritable.output
    for result in (bad_definition, given, missing, unwritable):
        assert "Traceback" not in result.output
    assert not out.exists()
