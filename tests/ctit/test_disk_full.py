"""Disk full while writing outputs: a clear message, exit 1, and no partial file left behind.

The tests mount a tiny tmpfs and fill it, so the write fails for real with ENOSPC (they need root,
as the test set-up and CI have; elsewhere they are skipped).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctit.cli import app
from data.outputs import OutputError, atomic_output, write_text

runner = CliRunner()
SERVING_FIXTURES = Path(__file__).resolve().parents[1] / "serving" / "conftest.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small saved model, built by the serving tests' own helpers."""
    spec = importlib.util.spec_from_file_location("serving_fixtures_disk", SERVING_FIXTURES)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    model = helpers.build_model(*helpers.synthetic_records(80))
    return model.save(tmp_path_factory.mktemp("model") / "deployable")


@pytest.fixture
def full_disk(tmpfs, fill_disk) -> Path:
    mount = tmpfs("64k")
    fill_disk(mount)
    return mount


def _left_behind(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "filler")


def test_atomic_output_leaves_nothing_when_the_disk_is_full(full_disk: Path) -> None:
    with pytest.raises(OutputError, match="no space left on device; nothing was written"):
        write_text(full_disk / "report.html", "x" * 100_000)
    assert _left_behind(full_disk) == []


def test_atomic_output_keeps_the_previous_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "labels.csv"
    target.write_text("old complete content\n", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_output(target) as partial:
        partial.write_text("half", encoding="utf-8")
        raise RuntimeError("killed mid-way")
    assert target.read_text(encoding="utf-8") == "old complete content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


@pytest.mark.parametrize("command", ["labels", "features", "score"])
def test_cli_outputs_on_a_full_disk(
    command: str, cohort_dir: Path, full_disk: Path, model_dir: Path
) -> None:
    out = full_disk / f"{command}.csv"
    if command == "score":
        args = ["score", "--model", str(model_dir), str(cohort_dir), "--out", str(out)]
    else:
        args = [command, str(cohort_dir), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "no space left on device" in result.output
    assert "Traceback" not in result.output
    assert _left_behind(full_disk) == []
