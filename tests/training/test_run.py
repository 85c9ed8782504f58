"""fit_experiment without tracking: validation schemes, monotone resolution, clear errors."""

import numpy as np
import pytest

from data.cohort import load_cohort
from training.config import ExperimentError, parse_experiment
from training.run import TrainingError, fit_experiment, resolve_monotone

FAST = {
    "model": {"n_trials": 1, "max_rounds": 40, "early_stopping_rounds": 5, "n_jobs": 1},
    "evaluation": {"n_bootstrap": 50, "n_bootstrap_subgroup": 50},
}


@pytest.fixture(scope="module")
def cohort(signal_cohort_module_dir):
    return load_cohort(signal_cohort_module_dir)


def test_cv_result_is_complete_and_consistent(cohort) -> None:
    config = parse_experiment({**FAST, "validation": {"n_splits": 3, "n_repeats": 2}})
    calls = []
    result, _ = fit_experiment(
        config, cohort, observer=lambda purpose, pos: calls.append((purpose, np.asarray(pos)))
    )
    observed = [purpose for purpose, _ in calls]
    assert set(result.metrics) == {"xgboost", "logreg", "plt_baseline"}
    n = len(result.y)
    assert len(result.oof) == 2 * n and list(result.X.index) == list(result.y.index)
    assert result.groups.index.equals(result.y.index)
    assert result.sample_size["n_episodes"] == n
    assert result.attrition  # counted exclusions from data.labels
    assert set(result.subgroups["subgroup"]) == {
        "subtype",
        "site",
        "baseline_plt",
        "age_band",
        "regimen_class",
    }
    assert len(result.model.fold_boosters) == 3
    # The deployed model: the procedure on every labelled episode; its calibrator is fitted on
    # one inner out-of-fold prediction per episode (three inner models).
    assert observed.count("final:inner_oof_fit") == 3
    np.testing.assert_array_equal(dict(calls)["final:calibrator"], np.arange(n))
    np.testing.assert_array_equal(dict(calls)["final:refit"], np.arange(n))
    evidence = result.tuning["final_calibrator"]
    assert evidence["method"] == "platt" and evidence["n_episodes"] == n
    calibrator = result.model.calibrator
    assert calibrator.slope_ == pytest.approx(evidence["raw"]["calibration_slope"], rel=1e-3)
    # Paired comparison with the comparators, and the comparators stored in the artifact.
    comparison = result.tuning["comparison"]
    assert set(comparison) == {"logreg", "plt_baseline"}
    for diffs in comparison.values():
        d = diffs["auroc_diff"]
        assert d["low"] <= d["estimate"] <= d["high"]
    assert set(result.model.metadata["comparators"]) == {"logreg", "plt_baseline"}
    assert "every outer fold" in result.model.metadata["procedure"]
    assert result.validation["scheme"] == "cv" and len(result.validation["folds"]) == 6
    # The deployed model scores the cohort it was trained on.
    scores = result.model.predict_proba(cohort)
    assert scores["probability"].between(0, 1).all()


def test_site_validation_tests_each_site_once(cohort) -> None:
    config = parse_experiment({**FAST, "validation": {"scheme": "site"}})
    result, _ = fit_experiment(config, cohort)
    names = [f["name"] for f in result.validation["folds"]]
    assert names == ["site=east", "site=north", "site=south"]
    assert result.oof["episode_id"].is_unique and len(result.oof) == len(result.y)


def test_time_validation_tests_later_episodes(cohort) -> None:
    config = parse_experiment({**FAST, "validation": {"scheme": "time", "time_test_fraction": 0.3}})
    result, _ = fit_experiment(config, cohort)
    dates = cohort.episodes.set_index("episode_id")["index_date"]
    tested = set(result.oof["episode_id"])
    trained = set(result.y.index) - tested
    assert tested and dates.loc[list(trained)].max() <= dates.loc[list(tested)].min()


def test_site_scheme_without_sites_is_a_clear_error(cohort) -> None:
    from dataclasses import replace

    no_site = replace(cohort, patients=cohort.patients.drop(columns=["site"]))
    config = parse_experiment({**FAST, "validation": {"scheme": "site"}})
    with pytest.raises(TrainingError, match="site column"):
        fit_experiment(config, no_site)


def test_folds_and_the_deployed_model_call_the_same_procedure(cohort, monkeypatch) -> None:
    """Every outer fold and the final model go through `training.procedure.fit_procedure` with
    the same settings; the deployed booster and calibrator are the last call's."""
    from training import procedure

    calls = []
    real = procedure.fit_procedure

    def spy(X, y, groups, settings, seed, positions=None, observer=None):
        fit = real(X, y, groups, settings, seed, positions=positions, observer=observer)
        calls.append((len(y), settings, fit))
        return fit

    monkeypatch.setattr(procedure, "fit_procedure", spy)
    config = parse_experiment({**FAST, "validation": {"n_splits": 3, "n_repeats": 2}})
    result, _ = fit_experiment(config, cohort)
    n = len(result.y)
    assert len(calls) == 6 + 1
    assert all(settings == calls[0][1] for _, settings, _ in calls)
    assert [size < n for size, _, _ in calls] == [True] * 6 + [False]
    final = calls[-1][2]
    assert result.model.booster is final.booster
    assert result.model.calibrator is final.calibrator
    # The fold models of the first repeat (for the interval) are the folds' own boosters.
    assert [b for b in result.model.fold_boosters] == [fit.booster for _, _, fit in calls[:3]]


def test_training_computes_the_features_once(cohort, monkeypatch) -> None:
    from features import pipeline as module

    calls = []
    real = module.compute_features
    monkeypatch.setattr(
        module, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    config = parse_experiment({**FAST, "validation": {"n_splits": 3, "n_repeats": 1}})
    fit_experiment(config, cohort)
    assert len(calls) == 1


def test_default_monotone_constrains_every_registry_direction() -> None:
    columns = ["plt_last", "plt_min_14d", "hgb_last", "current_gemcitabine", "ecog"]
    assert resolve_monotone(("*",), columns) == {
        "plt_last": 1,
        "current_gemcitabine": -1,
        "ecog": -1,
    }
    assert resolve_monotone(("*",), ["hgb_last"]) == {}  # nothing directed: no error for "*"


def test_monotone_patterns_resolve_to_registry_directions() -> None:
    columns = ["plt_last", "plt_min_14d", "hgb_last", "current_gemcitabine"]
    assert resolve_monotone(("plt_*",), columns) == {"plt_last": 1}
    with pytest.raises(ExperimentError, match="matches no model feature"):
        resolve_monotone(("ferritin_*",), columns)
    with pytest.raises(ExperimentError, match="no expected direction|none of them"):
        resolve_monotone(("hgb_last",), columns)


def test_unknown_feature_family_is_an_experiment_error(cohort) -> None:
    config = parse_experiment({**FAST, "features": {"families": ["labs", "genomics"]}})
    with pytest.raises(ExperimentError, match="features: .*genomics"):
        fit_experiment(config, cohort)


def test_reproducible(cohort) -> None:
    config = parse_experiment({**FAST, "validation": {"n_splits": 3, "n_repeats": 1}})
    a, _ = fit_experiment(config, cohort)
    b, _ = fit_experiment(config, cohort)
    np.testing.assert_allclose(a.oof["p_xgb"], b.oof["p_xgb"])
    assert a.metrics == b.metrics
