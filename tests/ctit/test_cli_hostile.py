"""Careless input at the command line (issue 16): clean errors, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from ctit.cli import app

ROOT = Path(__file__).resolve().parents[1]
FHIR_BUNDLE = ROOT / "fixtures" / "fhir" / "handwritten" / "mixed-units.json"


def _score(runner: CliRunner, model_dir: Path, source: Path, out: Path):
    return runner.invoke(app, ["score", "--model", str(model_dir), str(source), "--out", str(out)])


def test_score_refuses_a_deeply_nested_file_cleanly(
    runner, model_dir: Path, tmp_path: Path
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    result = _score(runner, model_dir, deep, tmp_path / "o.json")
    assert result.exit_code == 1
    assert "nested deeper than 64 levels" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_score_names_a_nan_dose_as_not_finite(
    runner, fixtures, model_dir: Path, tmp_path: Path
) -> None:
    record = fixtures.synthetic_records(1, seed=8)[0][0]
    record["episode"]["dose_mg"] = "__NAN__"
    source = tmp_path / "nan.json"
    source.write_text(json.dumps([record]).replace('"__NAN__"', "NaN"), encoding="utf-8")
    result = _score(runner, model_dir, source, tmp_path / "o.json")
    assert result.exit_code == 1
    assert "0.episode.dose_mg" in result.output and "not a finite number" in result.output
    assert "less than or equal" not in result.output


def test_score_lists_missing_clinical_fields_in_its_output(
    runner, fixtures, model_dir: Path, tmp_path: Path
) -> None:
    record = fixtures.synthetic_records(1, seed=8)[0][0]
    del record["patient"]["ecog"], record["patient"]["subtype"]
    source = tmp_path / "p.json"
    source.write_text(json.dumps(record), encoding="utf-8")
    out = tmp_path / "o.json"
    result = _score(runner, model_dir, source, out)
    assert result.exit_code == 0, result.output
    warnings = json.loads(out.read_text())[0]["warnings"]
    assert {w["feature"] for w in warnings if w["code"] == "missing_field"} == {"ecog", "subtype"}
    table = tmp_path / "o.csv"
    assert _score(runner, model_dir, source, table).exit_code == 0
    assert "ECOG performance status not given" in pd.read_csv(table)["warnings"][0]


def test_score_of_a_fhir_bundle_lists_missing_fields_in_the_output(
    runner, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fhir.json"
    result = runner.invoke(
        app, ["score", "--model", str(model_dir), str(FHIR_BUNDLE), "--out", str(out),
              "--index-date", "2025-05-20"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = json.loads(out.read_text())[0]["warnings"]
    assert "subtype" in {w["feature"] for w in warnings if w["code"] == "missing_field"}


def test_score_refuses_a_cohort_episode_without_platelets(
    runner, model_dir: Path, cohort_tables: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    labs = cohort_tables["labs"]
    cohort_tables["labs"] = labs[~((labs["patient_id"] == "P-b2") & labs["test"].isin(["PLT"]))]
    directory = tmp_path / "cohort"
    directory.mkdir()
    for name, frame in cohort_tables.items():
        frame.to_csv(directory / f"{name}.csv", index=False)
    out = tmp_path / "o.csv"
    result = _score(runner, model_dir, directory, out)
    assert result.exit_code == 1
    assert "no platelet count (PLT) on or before the index date" in result.output
    assert "E-2" in result.output and not out.exists()


def test_serve_with_an_unwritable_audit_path_fails_cleanly(
    runner, model_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = runner.invoke(
        app,
        ["serve", "--model", str(model_dir), "--audit-db", str(blocker / "audit.db")],
        env={"CTIT_AUDIT_SALT": "pepper"},
    )
    assert result.exit_code == 2, result.output
    assert "cannot open it for writing" in result.output
    assert "Traceback" not in result.output


def test_serve_in_production_mode_needs_the_audit_salt(
    runner, model_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("so that an older build fails fast instead of serving")
    result = runner.invoke(
        app,
        ["serve", "--model", str(model_dir), "--audit-db", str(blocker / "audit.db")],
        env={"CTIT_MODE": "production", "CTIT_AUDIT_SALT": ""},
    )
    assert result.exit_code == 1, result.output
    assert "production mode needs CTIT_AUDIT_SALT" in result.output


def test_validate_warns_about_improbable_values(
    runner, cohort_tables: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    cohort_tables["labs"].loc[0, ["test", "value", "unit"]] = ["PLT", 4200, "10*3/uL"]
    directory = tmp_path / "cohort"
    directory.mkdir()
    for name, frame in cohort_tables.items():
        frame.to_csv(directory / f"{name}.csv", index=False)
    result = runner.invoke(app, ["validate", str(directory), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    [warning] = [w for w in report["warnings"] if "improbable" in w["message"]]
    assert (warning["table"], warning["line"], warning["column"]) == ("labs", 2, "value")
    assert "PLT value 4200" in warning["message"]
