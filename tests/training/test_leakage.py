"""Instrumented leakage tests: no fit of any kind sees the evaluation fold."""

import numpy as np
import pandas as pd

from training import crossval, tuning
from training.config import ModelConfig
from training.crossval import cross_validate
from training.validation import repeated_group_folds

TINY = ModelConfig(n_trials=2, max_rounds=40, early_stopping_rounds=5, n_jobs=1)


def test_every_fit_sees_training_rows_only(data) -> None:
    X, y, groups = data
    folds = repeated_group_folds(y.to_numpy(), groups.to_numpy(), 3, 2, seed=1)
    seen_any = set()
    for fold in folds:
        calls: list[tuple[str, np.ndarray]] = []
        cross_validate(
            X,
            y,
            groups,
            [fold],
            TINY,
            "platt",
            {},
            seed=5,
            observer=lambda purpose, pos, calls=calls: calls.append((purpose, np.asarray(pos))),
        )
        purposes = {p for p, _ in calls}
        assert purposes == {"xgb_fit", "xgb_early_stopping", "calibrator", "logreg", "plt_baseline"}
        test = set(fold.test)
        for purpose, positions in calls:
            assert not test & set(positions), f"{purpose} saw the evaluation fold {fold.name}"
            assert not set(groups.iloc[fold.test]) & set(groups.iloc[positions])
        fit = dict(calls)
        # Early stopping and the fold calibrator use the same inner split, disjoint from the fit.
        assert not set(fit["xgb_fit"]) & set(fit["xgb_early_stopping"])
        np.testing.assert_array_equal(fit["calibrator"], fit["xgb_early_stopping"])
        assert set(fit["xgb_fit"]) | set(fit["xgb_early_stopping"]) == set(fold.train)
        seen_any |= {p for p, _ in calls}
    assert seen_any


def test_xgboost_and_comparators_receive_no_evaluation_rows(data, monkeypatch) -> None:
    """Record the actual matrices and frames handed to every fit, not what the code reports."""
    X, y, groups = data
    fold = repeated_group_folds(y.to_numpy(), groups.to_numpy(), 3, 1, seed=2)[0]
    matrices: list[np.ndarray] = []
    frames: list[pd.Index] = []
    real_matrix, real_fit_predict = tuning._matrix, crossval.comparators.fit_predict

    def spy_matrix(values, labels, n_jobs):
        matrices.append(np.asarray(values))
        return real_matrix(values, labels, n_jobs)

    def spy_fit_predict(name, X_train, y_train, X_test):
        frames.append(X_train.index)
        return real_fit_predict(name, X_train, y_train, X_test)

    monkeypatch.setattr(tuning, "_matrix", spy_matrix)
    monkeypatch.setattr(crossval.comparators, "fit_predict", spy_fit_predict)
    cross_validate(X, y, groups, [fold], TINY, "isotonic", {}, seed=5)
    assert len(matrices) == 2 and len(frames) == 2
    test_rows = {row.tobytes() for row in X.iloc[fold.test].to_numpy(np.float32)}
    for matrix in matrices:
        assert not test_rows & {row.tobytes() for row in matrix.astype(np.float32)}
    test_ids = set(X.index[fold.test])
    for index in frames:
        assert not test_ids & set(index)


def test_oof_predicts_each_episode_once_per_repeat_and_calibration_is_fold_local(data) -> None:
    X, y, groups = data
    folds = repeated_group_folds(y.to_numpy(), groups.to_numpy(), 3, 2, seed=4)
    out = cross_validate(X, y, groups, folds, TINY, "platt", {"plt_last": 1}, seed=1)
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
    fit = tuning.fit_fold(
        X.to_numpy(np.float32),
        y.to_numpy(),
        groups.to_numpy(),
        TINY,
        tuning.monotone_vector(columns, {"plt_last": 1}),
        seed=0,
    )
    grid = np.repeat(X.to_numpy(np.float32)[:50], 20, axis=0)
    j = columns.index("plt_last")
    grid[:, j] = np.tile(np.linspace(5, 150, 20), 50)
    import xgboost as xgb

    p = fit.booster.predict(xgb.DMatrix(grid, missing=np.nan)).reshape(50, 20)
    assert (np.diff(p, axis=1) >= -1e-7).all()


def test_candidates_stay_inside_the_search_space() -> None:
    space = TINY.search
    for candidate in tuning.sample_candidates(space, 20, seed=3):
        for name, value in candidate.items():
            low, high = getattr(space, name)
            assert low <= value <= high, name


def test_final_calibrator_sees_predictions_of_models_blind_to_the_patient(
    data, monkeypatch
) -> None:
    """The deployed calibrator's inputs: each episode predicted once, by a model of the chosen
    configuration that never saw its patient. Checked on the matrices actually handed over."""
    X, y, groups = data
    values, y_arr, g = X.to_numpy(np.float32), y.to_numpy(), groups.to_numpy()
    calls: list[tuple[str, np.ndarray]] = []
    matrices: list[tuple[bool, np.ndarray]] = []
    real_matrix = tuning._matrix

    def spy_matrix(rows, labels, n_jobs):
        matrices.append((labels is not None, np.asarray(rows)))
        return real_matrix(rows, labels, n_jobs)

    monkeypatch.setattr(tuning, "_matrix", spy_matrix)
    fit = tuning.fit_final(
        values,
        y_arr,
        g,
        TINY,
        None,
        seed=3,
        observer=lambda purpose, pos: calls.append((purpose, np.asarray(pos))),
    )
    trained = [pos for purpose, pos in calls if purpose == "xgb_final_oof"]
    assert len(trained) == 3
    np.testing.assert_array_equal(fit.inner_valid, np.arange(len(y_arr)))
    assert np.isfinite(fit.p_inner_valid).all() and len(fit.p_inner_valid) == len(y_arr)
    for k, train in enumerate(trained):
        predicted = np.flatnonzero(fit.inner_fold == k)
        assert len(predicted) and not set(g[train]) & set(g[predicted])
        assert sorted(np.concatenate([train, predicted])) == list(range(len(y_arr)))

    # What the inner models really received: after the all-rows matrix, per inner model a
    # labelled training matrix then an unlabelled one it predicts.
    patient_of = {row.tobytes(): patient for row, patient in zip(values, g, strict=True)}
    inner = matrices[1:]
    assert len(inner) == 6
    predicted_rows: list[bytes] = []
    for (train_labelled, train_rows), (test_labelled, test_rows) in zip(
        inner[0::2], inner[1::2], strict=True
    ):
        assert train_labelled and not test_labelled
        seen = {patient_of[r.tobytes()] for r in train_rows}
        assert not seen & {patient_of[r.tobytes()] for r in test_rows}
        predicted_rows += [r.tobytes() for r in test_rows]
    assert sorted(predicted_rows) == sorted(patient_of)  # every episode exactly once

    # The predictions are those of exactly the chosen settings and rounds.
    import xgboost as xgb

    monkeypatch.setattr(tuning, "_matrix", real_matrix)
    k = 1
    predicted = np.flatnonzero(fit.inner_fold == k)
    booster = xgb.train(
        fit.params,
        xgb.DMatrix(values[trained[k]], label=y_arr[trained[k]], missing=np.nan),
        num_boost_round=fit.n_rounds,
    )
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(values[predicted], missing=np.nan)),
        fit.p_inner_valid[predicted],
        rtol=1e-6,
    )
