"""training.recalibrate: the calibrator refits by hand, the patient split, and, on simulated sites,
drift detection (shifted site vs. same distribution) and recalibration of a shifted site."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from serving.bundle.calibrator import Calibrator
from training.recalibrate import (
    ISOTONIC_MIN,
    LOGISTIC_MIN_CLASS,
    RecalibrationConfig,
    RecalibrationError,
    carried_interval,
    choose_method,
    fit_calibrator,
    split_holdout,
)

PLATT = Calibrator.from_dict({"method": "platt", "slope": 0.8, "intercept": -0.3})


def test_intercept_recalibration_by_hand() -> None:
    # every margin 0: the old calibrator gives sigmoid(-0.3); 3 of 4 responded, so the new
    # intercept is logit(0.75) and the slope is kept
    margin = np.zeros(8)
    y = np.array([1, 1, 1, 0, 1, 1, 1, 0])
    new = fit_calibrator("intercept", margin, y, PLATT)
    assert new.slope_ == 0.8
    assert new.intercept_ == pytest.approx(math.log(3))
    assert new.transform_margin(np.array([0.0]))[0] == pytest.approx(0.75)


def test_logistic_recalibration_recovers_a_known_intercept_and_slope() -> None:
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 1.5, 20_000)
    y = (rng.random(margin.size) < expit(0.5 + 0.6 * margin)).astype(int)
    new = fit_calibrator("logistic", margin, y, PLATT)
    assert new.slope_ == pytest.approx(0.6, abs=0.05)
    assert new.intercept_ == pytest.approx(0.5, abs=0.05)


def test_isotonic_is_monotone_and_intercept_needs_a_platt_calibrator() -> None:
    rng = np.random.default_rng(1)
    margin = rng.normal(0, 1, 2000)
    y = (rng.random(margin.size) < expit(margin)).astype(int)
    new = fit_calibrator("isotonic", margin, y, PLATT)
    p = new.transform_margin(np.linspace(-3, 3, 50))
    assert np.all(np.diff(p) >= 0)
    with pytest.raises(RecalibrationError, match="must be Platt"):
        fit_calibrator("intercept", margin, y, new)


def _refits(n: int = 5) -> tuple[np.ndarray, object]:
    """Rows X, and a BootstrapInterval of `n` small real boosters with their own Platt maps."""
    import xgboost as xgb

    from serving.predict.interval import BootstrapInterval

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)
    boosters, calibrators = [], []
    for i in range(n):
        rows = rng.integers(0, 200, 200)
        data = xgb.DMatrix(X[rows], label=y[rows])
        boosters.append(xgb.train({"max_depth": 2, "seed": i}, data, num_boost_round=5))
        calibrators.append(
            Calibrator.from_dict({"method": "platt", "slope": 0.9 + 0.05 * i, "intercept": 0.1 * i})
        )
    return X, BootstrapInterval(boosters, calibrators, level=0.8, multiplier=1.3)


def test_a_platt_site_recalibration_carries_the_interval_width() -> None:
    X, interval = _refits()
    new = Calibrator.from_dict({"method": "platt", "slope": 2.0, "intercept": 0.5})
    carried = carried_interval(interval, PLATT, new)
    margins = interval.margins(X)
    ratio = new.slope_ / PLATT.slope_
    # the refits' log-odds are carried by the affine map of the site: their spread scales by it
    before = np.std(interval.logits(margins), axis=0, ddof=1)
    after = np.std(carried.logits(margins), axis=0, ddof=1)
    np.testing.assert_allclose(after, ratio * before, rtol=1e-9)
    # so the width in log-odds around the served probability scales the same way
    p = new.transform_margin(margins[0])
    low, high = carried.bounds(p, margins)
    np.testing.assert_allclose(
        np.log(high / (1 - high)) - np.log(low / (1 - low)), 2 * 1.3 * ratio * before, rtol=1e-6
    )
    assert "carried by the site recalibration" in carried.meaning()
    assert carried.multiplier == interval.multiplier and carried.level == interval.level


def test_an_isotonic_site_recalibration_says_coverage_is_not_reestablished() -> None:
    _, interval = _refits()
    margin = np.linspace(-3, 3, 50)
    y = (margin + np.random.default_rng(1).normal(size=50) > 0).astype(int)
    isotonic = fit_calibrator("isotonic", margin, y, PLATT)
    carried = carried_interval(interval, PLATT, isotonic)
    assert carried.calibrators == interval.calibrators
    assert "not re-established at the site" in carried.meaning()
    assert carried_interval(None, PLATT, isotonic) is None


def test_auto_chooses_by_size() -> None:
    small = np.array([1] * 30 + [0] * 20)
    assert choose_method("auto", small, "platt") == "intercept"
    assert choose_method("auto", small, "isotonic") == "logistic"
    medium = np.array([1] * 300 + [0] * LOGISTIC_MIN_CLASS)
    assert choose_method("auto", medium, "platt") == "logistic"
    large = np.array([1] * (ISOTONIC_MIN - 600) + [0] * 600)
    assert choose_method("auto", large, "platt") == "isotonic"
    assert choose_method("intercept", large, "platt") == "intercept"


def test_holdout_keeps_patients_together() -> None:
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 300, 900).astype(str)
    y = rng.integers(0, 2, 900)
    fit, holdout = split_holdout(groups, y, 0.5, seed=0)
    assert not set(groups[fit]) & set(groups[holdout])
    assert 0.4 < holdout.mean() < 0.6
    assert abs(y[fit].mean() - y[holdout].mean()) < 0.05


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="method"):
        RecalibrationConfig(method="beta")
    with pytest.raises(ValueError, match="holdout_fraction"):
        RecalibrationConfig(holdout_fraction=0.99)


# -- simulated sites ----------------------------------------------------------------------------

HOME_PATIENTS, SITE_PATIENTS = 2500, 4000


def _train_home_model(cohort_dir: Path):
    """A DeployableModel trained at the home sites: pipeline, booster, Platt on 3-fold OOF."""
    from sklearn.model_selection import StratifiedGroupKFold

    from data.cohort import load_cohort
    from data.labels import DEFAULT_DEFINITION, derive_labels
    from features.pipeline import FeatureConfig, FeaturePipeline
    from serving.bundle.model import DeployableModel
    from serving.bundle.reference import summarise_reference

    cohort = load_cohort(cohort_dir)
    labels = derive_labels(cohort, DEFAULT_DEFINITION)
    labels = labels[labels["label"].notna()]
    pipeline = FeaturePipeline(FeatureConfig()).fit(cohort)
    X = pipeline.transform(cohort).loc[labels["episode_id"].astype(str)]
    y = labels["label"].astype(int).to_numpy()
    groups = cohort.episodes.set_index("episode_id").loc[X.index, "patient_id"].to_numpy()
    names = list(pipeline.feature_names_)
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.08, "subsample": 0.8,
              "min_child_weight": 5, "nthread": 1, "seed": 0}  # fmt: skip

    def fit(rows: np.ndarray):
        import xgboost as xgb

        matrix = xgb.DMatrix(X.iloc[rows].to_numpy(np.float32), label=y[rows], feature_names=names)
        return xgb.train(params, matrix, num_boost_round=150)

    raw = np.zeros(len(y))
    folds = []
    for train, held in StratifiedGroupKFold(3, shuffle=True, random_state=0).split(X, y, groups):
        booster = fit(train)
        raw[held] = booster.inplace_predict(X.iloc[held].to_numpy(np.float32))
        folds.append(booster)
    model = DeployableModel(
        pipeline=pipeline,
        booster=fit(np.arange(len(y))),
        calibrator=Calibrator("platt").fit(raw, y),
        fold_boosters=folds,
        reference=summarise_reference(X),
        metadata={"name": "ctit-response", "version": "1",
                  "label_definition": DEFAULT_DEFINITION},
    )  # fmt: skip
    return model, X, raw


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Home sites (training), a same-distribution sample and a shifted site, all simulated."""
    from data.cohort import load_cohort
    from data.simulator import SimulationConfig, simulate_cohort
    from data.simulator.params import ModelParameters, SiteShift

    root = tmp_path_factory.mktemp("sites")
    shifted = SiteShift.preset().apply(ModelParameters())
    runs = {
        "home": SimulationConfig(n_patients=HOME_PATIENTS, seed=1, workers=1),
        "same": SimulationConfig(n_patients=1500, seed=2, workers=1),
        "site": SimulationConfig(n_patients=SITE_PATIENTS, seed=3, workers=1, parameters=shifted),
    }
    for name, config in runs.items():
        simulate_cohort(config, root / name)
    model, X, raw = _train_home_model(root / "home")
    return {
        "model": model,
        "X": X,
        "raw": raw,
        "same": load_cohort(root / "same"),
        "site": load_cohort(root / "site"),
    }


def _monitored(sites: dict, cohort, path: Path) -> dict:
    from serving.http.audit import AuditLog
    from serving.scoring.scorer import Scorer
    from training.monitor import Reference, monitor_audit

    model = sites["model"]
    answers = Scorer(model).score_cohort(cohort, explain=False)
    audit = AuditLog(path, salt="site-salt", synchronous="NORMAL")
    audit.record_scores(
        model=model.info, items=[("site", "0" * 64, answers)], endpoint="t", caller="t"
    )
    audit.close()
    reference = Reference(model.feature_names, sites["X"].to_numpy(np.float64), sites["raw"])
    return monitor_audit(
        audit_path=path,
        model_info=model.info,
        feature_names=model.feature_names,
        calibrator=model.calibrator,
        reference=reference,
    )


def test_drift_on_a_shifted_simulated_site_and_not_on_the_same_distribution(
    sites: dict, tmp_path: Path
) -> None:
    same = _monitored(sites, sites["same"], tmp_path / "same.db")
    assert same["status"] == "ok", same["alerts"]
    shifted = _monitored(sites, sites["site"], tmp_path / "site.db")
    assert shifted["status"] == "alert" and shifted["exit_code"] == 1
    top = shifted["features"][0]
    assert top["status"] == "major" and top["psi"] >= 0.25
    assert any(r["missing_drift"] for r in shifted["features"])  # fewer chemistry draws


def test_recalibration_brings_the_shifted_site_back_into_calibration(sites: dict) -> None:
    from training.recalibrate import recalibrate_model

    result = recalibrate_model(sites["model"], sites["site"], RecalibrationConfig(seed=0))
    before, after = result.before, result.after
    assert result.n_holdout > 1000
    # the site responds less than the home sites: the home model over-predicts there
    assert before["oe_ratio"]["estimate"] < 0.95, before
    slope, oe = after["calibration_slope"]["estimate"], after["oe_ratio"]["estimate"]
    assert 0.9 <= slope <= 1.1, after
    assert 0.95 <= oe <= 1.05, after
    # only the calibrator changed: same booster, same ranking on the holdout
    assert result.model.booster is sites["model"].booster
    assert after["auroc"]["estimate"] == pytest.approx(before["auroc"]["estimate"], abs=0.01)
