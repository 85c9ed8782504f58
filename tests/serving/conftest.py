"""Serving-test fixtures: synthetic patient records and a small DeployableModel trained on them.

The records are the scoring JSON of DESIGN.md; the training cohort is built from them by the same
code that scores them (records -> contract tables -> `cohort_from_tables` -> `FeaturePipeline`).
The label follows the baseline platelet count (plus marrow involvement, gemcitabine and prior
lines), and the booster is trained with a +1 monotone constraint on every platelet-count feature,
so a higher baseline PLT can never lower the score.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from data.cohort import cohort_from_tables, summarise
from features.pipeline import FeatureConfig, FeaturePipeline
from serving.answers.bands import RiskBands
from serving.bundle.calibrator import Calibrator
from serving.bundle.model import DeployableModel
from serving.bundle.reference import summarise_reference
from serving.request.records import RecordBatch, validate_record
from serving.scoring.scorer import Scorer

METADATA = {
    "name": "ctit-response",
    "version": "7",
    "label_definition": "plt100_or_rise50_d14",
    "metrics": {"auroc": {"estimate": 0.8, "low": 0.75, "high": 0.85}},
    "trained_at": "2025-06-01T00:00:00Z",
    "experiment": "serving-tests",
}
#: Features whose value rises with any platelet count: constrained to raise the score (+1).
PLT_MONOTONE = (
    "plt_last",
    "plt_min_14d",
    "plt_min_28d",
    "plt_slope_14d",
    "plt_slope_28d",
    "plt_nadir_cycle",
    "plt_pre_cycle",
    "plt_slope_7d",
    "plt_change_last",
)
_REGIMENS = (
    ["gemcitabine", "carboplatin"],
    ["docetaxel"],
    ["trastuzumab deruxtecan"],
    ["capecitabine"],
    ["paclitaxel", "trastuzumab"],
)
_SUBTYPES = ("HR+/HER2-", "HER2+", "TNBC")


def synthetic_records(n: int, seed: int = 11) -> tuple[list[dict[str, Any]], np.ndarray]:
    """`n` one-episode patient records and their labels (0/1)."""
    rng = np.random.default_rng(seed)
    records, labels = [], np.zeros(n, dtype=int)
    start = dt.date(2024, 1, 1)
    for i in range(n):
        index = start + dt.timedelta(days=int(rng.integers(0, 500)))
        baseline = float(np.round(rng.uniform(8, 74), 0))
        earlier = baseline + float(np.round(rng.uniform(0, 90), 0))
        marrow = bool(rng.random() < 0.1)
        lines = int(rng.integers(1, 5))
        regimen = _REGIMENS[int(rng.integers(0, len(_REGIMENS)))]
        gem = "gemcitabine" in regimen
        logit = -0.8 + 0.07 * (baseline - 40) - 1.8 * marrow - 0.35 * (lines - 1) - 0.8 * gem
        labels[i] = int(rng.random() < 1 / (1 + np.exp(-logit)))

        def day(offset: int, hour: int = 8, _index: dt.date = index) -> str:
            when = dt.datetime.combine(_index + dt.timedelta(days=offset), dt.time(hour))
            return when.isoformat()

        hgb = round(float(rng.normal(100, 15)), 0)
        anc = round(float(rng.lognormal(0.9, 0.4)), 2)
        alb = round(float(rng.normal(38, 4)), 1)
        middle = round((earlier + baseline) / 2)
        labs = [
            {"time": day(-12), "test": "PLT", "value": earlier, "unit": "10*9/L"},
            {"time": day(-5), "test": "PLT", "value": middle, "unit": "10*9/L"},
            {"time": day(-1), "test": "777-3", "value": baseline, "unit": "10*3/uL"},
            {"time": day(-1), "test": "HGB", "value": hgb, "unit": "g/L"},
            {"time": day(-1), "test": "ANC", "value": anc, "unit": "10*9/L"},
            {"time": day(-1), "test": "ALB", "value": alb, "unit": "g/L"},
        ]
        if rng.random() < 0.7:
            labs.append(
                {"time": day(-2), "test": "ALT", "value": round(float(rng.lognormal(3.2, 0.5))),
                 "unit": "U/L"}
            )  # fmt: skip
        regimens = [
            {
                "start_date": (index - dt.timedelta(days=int(rng.integers(8, 20)))).isoformat(),
                "drugs": list(regimen),
                "line": lines,
                "cycle": int(rng.integers(1, 6)),
            }
        ]
        if lines > 1:
            regimens.append(
                {
                    "start_date": (index - dt.timedelta(days=200)).isoformat(),
                    "end_date": (index - dt.timedelta(days=60)).isoformat(),
                    "drugs": ["docetaxel"],
                    "line": lines - 1,
                    "cycle": 6,
                }
            )
        records.append(
            {
                "patient": {
                    "patient_id": f"SP{i:04d}",
                    "sex": "F",
                    "birth_date": f"{1950 + int(rng.integers(0, 40))}-0{1 + i % 9}-15",
                    "ecog": int(rng.integers(0, 3)),
                    "subtype": _SUBTYPES[i % 3],
                    "bone_mets": bool(rng.random() < 0.5),
                    "marrow_involvement": marrow,
                    "prior_radiotherapy": bool(rng.random() < 0.2),
                },
                "episode": {"episode_id": f"SE{i:04d}", "index_date": index.isoformat(),
                            "dose_mg": 7.5},
                "labs": labs,
                "regimens": regimens,
            }
        )  # fmt: skip
    return records, labels


def build_model(records: list[dict[str, Any]], y: np.ndarray, n_folds: int = 3) -> DeployableModel:
    """A DeployableModel trained on the records (one thread, a few trees, monotone PLT)."""
    batch = RecordBatch.from_requests([validate_record(r) for r in records], keep_ids=True)
    cohort = cohort_from_tables(batch.tables)
    pipeline = FeaturePipeline(FeatureConfig()).fit(cohort)
    X = pipeline.transform(cohort)
    names = list(pipeline.feature_names_)
    constraints = tuple(1 if name in PLT_MONOTONE else 0 for name in names)
    params = {
        "objective": "binary:logistic",
        "max_depth": 3,
        "eta": 0.3,
        "nthread": 1,
        "seed": 0,
        "monotone_constraints": str(constraints),
    }

    def fit(rows: np.ndarray) -> xgb.Booster:
        matrix = xgb.DMatrix(
            X.iloc[rows].to_numpy(np.float32), label=y[rows], feature_names=names, nthread=1
        )
        return xgb.train(params, matrix, num_boost_round=25)

    everything = np.arange(len(y))
    folds, oof = [], np.zeros(len(y))
    for k in range(n_folds):
        held = everything[k::n_folds]
        booster = fit(np.setdiff1d(everything, held))
        oof[held] = booster.inplace_predict(X.iloc[held].to_numpy(np.float32))
        folds.append(booster)
    return DeployableModel(
        pipeline=pipeline,
        booster=fit(everything),
        calibrator=Calibrator("platt").fit(oof, y),
        fold_boosters=folds,
        bands=RiskBands(thresholds=(0.5, 0.75)),
        reference=summarise_reference(X, cohort_summary=summarise(cohort)),
        metadata=dict(METADATA),
    )


@pytest.fixture(scope="session")
def _training_records_once() -> tuple[list[dict[str, Any]], np.ndarray]:
    return synthetic_records(240)


@pytest.fixture
def training_records(
    _training_records_once: tuple[list[dict[str, Any]], np.ndarray],
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The 240 training records and labels: a fresh copy per test (tests may change them)."""
    records, y = _training_records_once
    return copy.deepcopy(records), y.copy()


@pytest.fixture(scope="session")
def deployable_model(
    _training_records_once: tuple[list[dict[str, Any]], np.ndarray],
) -> DeployableModel:
    return build_model(*_training_records_once)


@pytest.fixture(scope="session")
def model_builder():
    """`build_model(records, y, n_folds=3)` for tests that need a model of their own."""
    return build_model


@pytest.fixture(scope="session")
def model_dir(deployable_model: DeployableModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deployable_model.save(tmp_path_factory.mktemp("model") / "deployable")


@pytest.fixture(scope="session")
def scorer(deployable_model: DeployableModel) -> Scorer:
    return Scorer(deployable_model, uri="test")


@pytest.fixture
def record() -> dict[str, Any]:
    """A fresh copy of one patient record (tests may change it)."""
    records, _ = synthetic_records(3, seed=99)
    return records[0]
