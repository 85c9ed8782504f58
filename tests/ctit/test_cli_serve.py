"""`ctit score` and `ctit serve` through the real typer app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ctit.cli import app

ROOT = Path(__file__).resolve().parents[1]
FHIR_BUNDLE = ROOT / "fixtures" / "fhir" / "handwritten" / "mixed-units.json"
FHIR_RECORD = ROOT / "fixtures" / "fhir" / "handwritten" / "mixed-units.record.json"


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_score_one_patient_to_json(runner, fixtures, model_dir: Path, tmp_path: Path) -> None:
    record = fixtures.synthetic_records(1, seed=8)[0][0]
    out = tmp_path / "answer.json"
    result = runner.invoke(
        app, ["score", "--model", str(model_dir), str(_write(tmp_path / "p.json", record)),
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answers = json.loads(out.read_text())
    assert len(answers) == 1
    answer = answers[0]
    assert answer["episode_id"] == record["episode"]["episode_id"]
    assert answer["base_value"] + sum(answer["contributions"].values()) == pytest.approx(
        answer["margin"], abs=1e-4
    )
    assert "scored 1 episode with ctit-response version 7" in result.output


def test_score_a_batch_to_csv(runner, fixtures, model_dir: Path, tmp_path: Path) -> None:
    records = fixtures.synthetic_records(7, seed=9)[0]
    single = tmp_path / "single.json"
    runner.invoke(
        app, ["score", "--model", str(model_dir), str(_write(tmp_path / "one.json", records[3])),
              "--out", str(single)],
    )  # fmt: skip
    out = tmp_path / "answers.csv"
    result = runner.invoke(
        app, ["score", "--model", str(model_dir), str(_write(tmp_path / "all.json", records)),
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table["episode_id"]) == [r["episode"]["episode_id"] for r in records]
    assert list(table["record_index"]) == list(range(7))
    assert table["probability"].between(0, 1).all()
    assert {"interval_low", "interval_high", "band", "top_factors", "shap:plt_last"} <= set(table)
    alone = json.loads(single.read_text())[0]["probability"]
    assert table.loc[3, "probability"] == pytest.approx(alone, abs=1e-12)


def test_score_a_cohort_directory(runner, model_dir: Path, cohort_dir: Path, tmp_path: Path):
    out = tmp_path / "cohort.csv"
    result = runner.invoke(
        app, ["score", "--model", str(model_dir), str(cohort_dir), "--out", str(out),
              "--no-explain"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table["episode_id"]) == ["E-1", "E-2", "E-3", "E-4", "E-5"]
    assert not any(c.startswith("shap:") for c in table.columns)


def test_score_a_fhir_bundle(runner, model_dir: Path, tmp_path: Path) -> None:
    from_fhir, from_record = tmp_path / "fhir.json", tmp_path / "record.json"
    result = runner.invoke(
        app, ["score", "--model", str(model_dir), str(FHIR_BUNDLE), "--out", str(from_fhir),
              "--index-date", "2025-05-20"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runner.invoke(
        app, ["score", "--model", str(model_dir), str(FHIR_RECORD), "--out", str(from_record)]
    )
    got, want = json.loads(from_fhir.read_text()), json.loads(from_record.read_text())
    assert [a["episode_id"] for a in got] == [a["episode_id"] for a in want]
    assert got[0]["probability"] == pytest.approx(want[0]["probability"], abs=1e-9)


def test_bad_record_names_the_field(runner, fixtures, model_dir: Path, tmp_path: Path) -> None:
    records = fixtures.synthetic_records(2, seed=8)[0]
    records[1]["labs"][0]["unit"] = "furlongs"
    result = runner.invoke(
        app, ["score", "--model", str(model_dir), str(_write(tmp_path / "b.json", records)),
              "--out", str(tmp_path / "x.csv")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "record 1.labs.0.unit" in result.output and "furlongs" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_missing_or_corrupt_model_fails_clearly(runner, model_dir: Path, tmp_path: Path) -> None:
    record = _write(tmp_path / "p.json", {"patient": {"patient_id": "a"}})
    gone = tmp_path / "no-model"
    result = runner.invoke(
        app, ["score", "--model", str(gone), str(record), "--out", str(tmp_path / "o.json")]
    )
    assert result.exit_code == 2
    assert f"model {gone}: no such file or directory" in result.output
    result = runner.invoke(app, ["serve", "--model", str(gone), "--audit-db", str(tmp_path / "a")])
    assert result.exit_code == 2 and f"model {gone}: no such file" in result.output
    broken = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    (broken / "calibrator.json").write_text('{"method": "platt"}', encoding="utf-8")
    result = runner.invoke(
        app, ["score", "--model", str(broken), str(record), "--out", str(tmp_path / "o.json")]
    )
    assert result.exit_code == 2
    assert f"model {broken}: file calibrator.json is corrupted" in result.output


def test_output_suffix_is_checked(runner, model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["score", "--model", str(model_dir), str(tmp_path), "--out", str(tmp_path / "o.xlsx")]
    )
    assert result.exit_code == 1 and "use a .json or .csv" in result.output


def test_large_batches_are_chunked_and_errors_keep_their_position(
    runner, fixtures, model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from ctit import cmd_serve

    monkeypatch.setattr(cmd_serve, "PROGRESS_FROM", 3)
    monkeypatch.setattr(cmd_serve, "CHUNK", 2)
    records = fixtures.synthetic_records(7, seed=12)[0]
    out = tmp_path / "chunked.json"
    path = _write(tmp_path / "all.json", records)
    result = runner.invoke(app, ["score", "--model", str(model_dir), str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    chunked = json.loads(out.read_text())
    assert [a["record_index"] for a in chunked] == list(range(7))
    monkeypatch.setattr(cmd_serve, "CHUNK", 1000)
    whole = tmp_path / "whole.json"
    runner.invoke(app, ["score", "--model", str(model_dir), str(path), "--out", str(whole)])
    assert [a["probability"] for a in chunked] == [
        a["probability"] for a in json.loads(whole.read_text())
    ]

    monkeypatch.setattr(cmd_serve, "CHUNK", 2)
    records[5]["labs"][0]["unit"] = "furlongs"  # found by the cohort loader, in the third chunk
    records[1]["episode"].pop("index_date")  # found by the schema, before any scoring
    path = _write(tmp_path / "bad.json", records)
    result = runner.invoke(app, ["score", "--model", str(model_dir), str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert "record 1.episode.index_date" in result.output
    records[1]["episode"]["index_date"] = "2025-01-01"
    path = _write(tmp_path / "bad.json", records)
    result = runner.invoke(app, ["score", "--model", str(model_dir), str(path), "--out", str(out)])
    assert result.exit_code == 1 and "record 5.labs.0.unit" in result.output


@pytest.mark.slow
def test_serve_with_two_workers_shares_one_audit_log(
    fixtures, model_dir: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    audit = tmp_path / "audit.db"
    env = {**os.environ, "CTIT_API_TOKEN": "tok-123", "CTIT_AUDIT_SALT": "salt"}
    ctit = Path(sys.executable).parent / "ctit"
    argv = [str(ctit), "serve", "--model", str(model_dir), "--port", str(port), "--audit-db",
            str(audit), "--workers", "2", "--no-access-log"]  # fmt: skip
    # stderr goes to a file: an undrained pipe fills up and blocks the server's logging
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                ready = httpx.get(
                    f"{base}/readyz", timeout=1, headers={"Authorization": "Bearer tok-123"}
                )
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ctit serve --workers 2 did not start"
            time.sleep(0.25)
        records = fixtures.synthetic_records(8, seed=21)[0]
        headers = {"Authorization": "Bearer tok-123"}
        assert httpx.post(f"{base}/v1/score", json=records[0]).status_code == 401
        for record in records:
            response = httpx.post(f"{base}/v1/score", json=record, headers=headers, timeout=30)
            assert response.status_code == 200, response.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            raise AssertionError(
                "ctit serve did not stop on SIGTERM:\n" + log.read_text(errors="replace")[-2000:]
            ) from None
    import sqlite3

    with sqlite3.connect(audit) as db:
        assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == len(records)
