"""Instrumented leakage tests: no step of the deployed procedure, and no comparator, ever sees an
outer evaluation fold; the procedure's own inner steps keep their patients apart."""

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from serving.bundle.calibrator import Calibrator
from training import crossval, procedure, tuning
from training.config import ModelConfig
from training.crossval import cross_validate
from training.procedure import ProcedureError, ProcedureSettings, fit_procedure
from training.validation import repeated_group_folds

TINY = ModelConfig(n_trials=2, max_rounds=40, early_stopping_rounds=5, n_jobs=1, monotone=())
SETTINGS = ProcedureSettings(model=TINY, calibration_method="platt")
PURPOSES = {
    "tuning",
    "early_stopping",
    "inner_oof_fit",
    "calibrator",
    "refit",
    "logreg",
    "plt_baseline",
}


def test_every_step_sees_training_rows_only(data) -> None:
    X, y, groups = data
    folds = repeated_group_folds(y.to_numpy(), groups.to_numpy(), 3, 2, seed=1)
    for fold in folds:
        calls: list[tuple[str, np.ndarray]] = []
        cross_validate(
            X,
            y,
            groups,
            [fold],
            SETTINGS,
            seed=5,
            observer=lambda purpose, pos, calls=calls: calls.append((purpose, np.asarray(pos))),
        )
        assert {p for p, _ in calls} == PURPOSES
        test = set(fold.test)
        for purpose, positions in calls:
            assert not test & set(positions), f"{purpose} saw the evaluation fold {fold.name}"
            assert not set(groups.iloc[fold.test]) & set(groups.iloc[positions])
        by_purpose: dict[str, list[np.ndarray]] = {}
        for purpose, positions in calls:
            by_purpose.setdefault(purpose, []).append(positions)
        # Tuning and early stopping: three inner folds of the training part, patients apart.
        assert len(by_purpose["tuning"]) == len(by_purpose["early_stopping"]) == 3
        for fit_rows, stop_rows in zip(
            by_purpose["tuning"], by_purpose["early_stopping"], strict=True
        ):
            assert not set(groups.iloc[fit_rows]) & set(groups.iloc[stop_rows])
            assert sorted(np.concatenate([fit_rows, stop_rows])) == sorted(fold.train)
        # The calibrator and the refit use the whole training part and nothing else.
        for purpose in ("calibrator", "refit"):
            np.testing.assert_array_equal(np.sort(by_purpose[purpose][0]), np.sort(fold.train))


def test_xgboost_calibrator_and_comparators_receive_no_evaluation_rows(data, monkeypatch) -> None:
    """Spy on what is really handed over (matrices, calibrator inputs, comparator frames), not
    on what the code reports."""
    X, y, groups = data
    fold = repeated_group_folds(y.to_numpy(), groups.to_numpy(), 3, 1, seed=2)[0]
    labelled: list[np.ndarray] = []
    unlabelled: list[np.ndarray] = []
    calibrator_inputs: list[tuple[np.ndarray, np.ndarray]] = []
    frames: list[pd.Index] = []
    real_matrix, real_fit_predict = procedure.matrix, crossval.comparators.fit_predict
    real_calibrator_fit = Calibrator.fit

    def spy_matrix(values, labels, n_jobs):
        (labelled if labels is not None else unlabelled).append(np.asarray(values))
        return real_matrix(values, labels, n_jobs)

    def spy_calibrator_fit(self, p_raw, y_cal):
        calibrator_inputs.append((np.asarray(p_raw), np.asarray(y_cal)))
        return real_calibrator_fit(self, p_raw, y_cal)

    def spy_fit_predict(name, X_train, y_train, X_test):
        frames.append(X_train.index)
        return real_fit_predict(name, X_train, y_train, X_test)

    monkeypatch.setattr(procedure, "matrix", spy_matrix)
    monkeypatch.setattr(Calibrator, "fit", spy_calibrator_fit)
    monkeypatch.setattr(crossval.comparators, "fit_predict", spy_fit_predict)
    out = cross_validate(X, y, groups, [fold], SETTINGS, seed=5)
    # Labelled matrices: the tuning matrix (all training rows) and one per inner model; every
    # unlabelled matrix but the last (the evaluation fold, predicted after fitting) is inner.
    assert len(labelled) == 1 + 3 and len(unlabelled) == 3 + 1
    test_rows = {row.tobytes() for row in X.iloc[fold.test].to_numpy(np.float32)}
    train_rows = {row.tobytes() for row in X.iloc[fold.train].to_numpy(np.float32)}
    for matrix in labelled + unlabelled[:-1]:
        rows = {row.tobytes() for row in matrix.astype(np.float32)}
        assert not test_rows & rows and rows <= train_rows
    assert {row.tobytes() for row in unlabelled[-1]} == test_rows
    # The calibrator is fitted once, on one inner out-of-fold prediction per training episode.
    assert len(calibrator_inputs) == 1
    p_cal, y_cal = calibrator_inputs[0]
    assert len(p_cal) == len(fold.train)
    np.testing.assert_array_equal(y_cal, y.to_numpy()[fold.train])
    assert len(frames) == 2
    test_ids = set(X.index[fold.test])
    for index in frames:
        assert not test_ids & set(index)
    assert len(out.oof) == len(fold.test)


def test_oof_predicts_each_episode_once_per_repeat(data) -> None:
    X, y, groups = data
    folds = repeated_group_folds(y.to_numpy(), groups.to_numpy(), 3, 2, seed=4)
    out = cross_validate(X, y, groups, folds, SETTINGS, seed=1)
    counts = out.oof.groupby("repeat")["episode_id"].value_counts()
    assert (counts == 1).all() and len(out.oof) == 2 * len(X)
    for _, frame in out.oof.groupby("repeat"):
        assert frame.groupby("patient_id")["fold"].nunique().max() == 1
    assert len(out.fold_boosters) == 3  # the first repeat's fold models, for the interval
    assert set(out.fold_importance["feature"]) == set(X.columns)
    assert (
        out.oof[["p_xgb", "p_xgb_raw", "p_logreg", "p_plt"]]
        .apply(lambda c: c.between(0, 1).all())
        .all()
    )


def test_monotone_constraint_holds(data) -> None:
    X, y, groups = data
    columns = list(X.columns)
    settings = ProcedureSettings(TINY, "platt", tuning.monotone_vector(columns, {"plt_last": 1}))
    fit = fit_procedure(X.to_numpy(np.float32), y.to_numpy(), groups.to_numpy(), settings, seed=0)
    grid = np.repeat(X.to_numpy(np.float32)[:50], 20, axis=0)
    j = columns.index("plt_last")
    grid[:, j] = np.tile(np.linspace(5, 150, 20), 50)
    p = fit.booster.predict(xgb.DMatrix(grid, missing=np.nan)).reshape(50, 20)
    assert (np.diff(p, axis=1) >= -1e-7).all()


def test_candidates_stay_inside_the_search_space() -> None:
    space = TINY.search
    for candidate in tuning.sample_candidates(space, 20, seed=3):
        for name, value in candidate.items():
            low, high = getattr(space, name)
            assert low <= value <= high, name


def test_calibrator_sees_predictions_of_models_blind_to_the_patient(data, monkeypatch) -> None:
    """The calibrator's inputs: each episode predicted once, by a model of the chosen settings
    and rounds that never saw its patient."""
    X, y, groups = data
    values, y_arr, g = X.to_numpy(np.float32), y.to_numpy(), groups.to_numpy()
    calls: list[tuple[str, np.ndarray]] = []
    fit = fit_procedure(
        values,
        y_arr,
        g,
        SETTINGS,
        seed=3,
        observer=lambda purpose, pos: calls.append((purpose, np.asarray(pos))),
    )
    trained = [pos for purpose, pos in calls if purpose == "inner_oof_fit"]
    assert len(trained) == 3
    assert np.isfinite(fit.p_inner_raw).all() and len(fit.p_inner_raw) == len(y_arr)
    for k, train in enumerate(trained):
        predicted = np.flatnonzero(fit.inner_fold == k)
        assert len(predicted) and not set(g[train]) & set(g[predicted])
        assert sorted(np.concatenate([train, predicted])) == list(range(len(y_arr)))
    k = 1
    predicted = np.flatnonzero(fit.inner_fold == k)
    booster = xgb.train(
        fit.params,
        xgb.DMatrix(values[trained[k]], label=y_arr[trained[k]], missing=np.nan),
        num_boost_round=fit.n_rounds,
    )
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(values[predicted], missing=np.nan)),
        fit.p_inner_raw[predicted],
        rtol=1e-6,
    )
    # Platt on logit(p): its slope is the raw predictions' calibration slope, after it 1.
    assert fit.calibrator.slope_ == pytest.approx(
        fit.calibration["raw"]["calibration_slope"], rel=1e-3
    )
    assert fit.calibration["calibrated"]["calibration_slope"] == pytest.approx(1.0, abs=1e-3)
    # The deployed booster is the refit on every row with the chosen settings and rounds.
    refit = xgb.train(fit.params, xgb.DMatrix(values, label=y_arr, missing=np.nan), fit.n_rounds)
    np.testing.assert_allclose(
        refit.predict(xgb.DMatrix(values, missing=np.nan)),
        fit.booster.predict(xgb.DMatrix(values, missing=np.nan)),
        rtol=1e-6,
    )


def test_too_few_patients_of_a_class_is_a_clear_error() -> None:
    y = np.array([1, 1, 1, 1, 0, 0])
    groups = np.array(["a", "b", "c", "d", "e", "e"])
    with pytest.raises(ProcedureError, match="1 patients with non-responders.*at least 3"):
        procedure.inner_folds(y, groups, 3, seed=0)
