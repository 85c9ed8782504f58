"""Tracking helpers: data fingerprint and where a SQLite store keeps its artifacts."""

from dataclasses import replace
from pathlib import Path

from data.cohort import load_cohort
from training.tracking import data_fingerprint, default_artifact_location


def test_fingerprint_is_stable_and_sensitive_to_one_value(cohort_dir) -> None:
    first = load_cohort(cohort_dir)
    again = load_cohort(cohort_dir)
    assert data_fingerprint(first) == data_fingerprint(again)
    assert len(data_fingerprint(first)) == 64
    labs = first.labs.copy()
    labs.loc[labs.index[0], "value"] += 1
    assert data_fingerprint(replace(first, labs=labs)) != data_fingerprint(first)
    fewer = first.episodes.iloc[1:]
    assert data_fingerprint(replace(first, episodes=fewer)) != data_fingerprint(first)


def test_sqlite_artifacts_live_beside_the_database(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    assert default_artifact_location(uri) == (tmp_path / "mlartifacts").as_uri()
    assert default_artifact_location("http://127.0.0.1:5000") is None
    relative = default_artifact_location("sqlite:///mlruns.db")
    assert relative == (Path.cwd() / "mlartifacts").as_uri()
