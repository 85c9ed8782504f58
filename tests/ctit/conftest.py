"""CLI-test fixtures: the serving tests' helpers, one small saved model, and a typer runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="session")
def fixtures(serving_helpers):
    """tests/serving/conftest.py as a module (synthetic records, `build_model`)."""
    return serving_helpers


@pytest.fixture(scope="session")
def model_dir(fixtures, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small saved model (120 synthetic patients, 2 folds), shared by the CLI tests."""
    records, y = fixtures.synthetic_records(120, seed=5)
    model = fixtures.build_model(records, y, n_folds=2)
    return model.save(tmp_path_factory.mktemp("cli-model") / "model")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
