"""No patient or episode identifier in any log line of a full run (validate, labels, features,
train, score a cohort), with debug logging on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from data.simulator import SimulationConfig, simulate_cohort

TINY = """
name = "log-check"
[model]
n_trials = 1
max_rounds = 40
early_stopping_rounds = 10
n_jobs = 1
[validation]
n_splits = 3
n_repeats = 1
[evaluation]
n_bootstrap = 50
n_bootstrap_subgroup = 50
shap_sample = 50
"""


def _ctit(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ctit", "--verbose", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns.db'}"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr  # logging goes to stderr


def test_a_full_run_logs_no_identifier(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    simulate_cohort(SimulationConfig(n_patients=120, seed=21, workers=1), cohort)
    # an unknown subtype and drug make the pipeline warn about particular episodes
    patients = pd.read_csv(cohort / "patients.csv", dtype=str)
    patients.loc[0, "subtype"] = "luminal-B"
    patients.to_csv(cohort / "patients.csv", index=False)
    (tmp_path / "tiny.toml").write_text(TINY, encoding="utf-8")

    logs = _ctit("validate", str(cohort), cwd=tmp_path)
    logs += _ctit("labels", str(cohort), "--out", "labels.csv", cwd=tmp_path)
    logs += _ctit("features", str(cohort), "--out", "features.csv", cwd=tmp_path)
    logs += _ctit(
        "train", "tiny.toml", "--cohort", str(cohort), "--registered-model", "m", cwd=tmp_path
    )
    # a category the model never saw: the pipeline warns about those episodes while scoring
    patients.loc[1, "subtype"] = "HER2-low"
    patients.to_csv(cohort / "patients.csv", index=False)
    logs += _ctit(
        "score", "--model", "models:/m@candidate", str(cohort), "--out", "s.csv", cwd=tmp_path
    )
    assert "unseen category" in logs, "the scoring run should have met an unseen category"

    assert "DEBUG" in logs or "WARNING" in logs or "INFO" in logs, "debug logging was on"
    episodes = pd.read_csv(cohort / "episodes.csv", dtype=str)
    identifiers = set(episodes["episode_id"]) | set(episodes["patient_id"])
    leaked = sorted(i for i in identifiers if i in logs)
    assert not leaked, f"{len(leaked)} identifiers in the logs, e.g. {leaked[:3]}"
    scored = pd.read_csv(tmp_path / "s.csv", dtype=str)
    assert set(scored["episode_id"]) <= set(episodes["episode_id"])  # the output keeps them
