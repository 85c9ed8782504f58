"""Experiment TOML: defaults, the shipped experiments, unknown keys named by path."""

from pathlib import Path

import pytest

from training.config import ExperimentError, flatten, load_experiment, parse_experiment

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_defaults_are_valid() -> None:
    config = parse_experiment({})
    assert config.label.definition == "plt100_or_rise50_d14"
    assert config.calibration.method == "platt"
    assert config.cohort.dir is None


@pytest.mark.parametrize("name", ["baseline", "plt75_d14", "plt100_d14"])
def test_shipped_experiments_load(name: str) -> None:
    config = load_experiment(EXPERIMENTS / f"{name}.toml")
    assert config.name == name
    assert config.label.definition == {"baseline": "plt100_or_rise50_d14"}.get(name, name)


def test_baseline_imposes_every_registry_direction_and_serves_small_cohorts() -> None:
    config = load_experiment(EXPERIMENTS / "baseline.toml")
    assert config.model.monotone == ("*",)  # plt_last among them (features.registry)
    assert config.model.search.max_depth[0] == 1 and config.model.inner_folds == 3
    defaults = parse_experiment({}).model
    assert defaults.search.max_depth == (1, 4)
    assert defaults.search.reg_lambda[0] >= 1.0


def test_unknown_keys_are_named_by_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nn_trails = 3\n[validation]\nfolds = 5\n", encoding="utf-8")
    with pytest.raises(ExperimentError) as error:
        load_experiment(path)
    message = str(error.value)
    assert "model.n_trails: unknown key" in message
    assert "validation.folds: unknown key" in message


def test_bad_values_are_named_by_path() -> None:
    with pytest.raises(ExperimentError, match=r"calibration\.method"):
        parse_experiment({"calibration": {"method": "beta"}})
    with pytest.raises(ExperimentError, match="model.search"):
        parse_experiment({"model": {"search": {"max_depth": [6, 2]}}})
    with pytest.raises(ExperimentError, match="not configurable: objective"):
        parse_experiment({"model": {"params": {"objective": "reg:squarederror"}}})
    with pytest.raises(ExperimentError, match=r"label\.definition: .*unknown label definition"):
        parse_experiment({"label": {"definition": "plt50_d7"}})
    assert parse_experiment({"label": {"definition": "custom:threshold=80,horizon=10"}})
    with pytest.raises(ExperimentError, match="either cohort.dir"):
        parse_experiment({"cohort": {"dir": "x", "simulate": {"n_patients": 100}}})


def test_unreadable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="no such experiment file"):
        load_experiment(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n", encoding="utf-8")
    with pytest.raises(ExperimentError, match="not valid TOML"):
        load_experiment(broken)


def test_flatten_gives_dotted_string_params() -> None:
    flat = flatten({"a": {"b": 1, "c": {"d": (1, 2)}}, "e": "x"})
    assert flat == {"a.b": "1", "a.c.d": "[1, 2]", "e": "x"}
