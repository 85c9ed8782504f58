"""Coverage of the large-sample reference by the deployed interval (the benchmark and the tests).

`fit_deployed_reference` trains the deployed procedure alone on a large cohort (its probability is
the reference the interval of `training.interval` is meant to cover); `reference_coverage` reads
that coverage on a holdout cohort.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from data.labels import derive_labels, get_definition
from features.pipeline import FeaturePipeline
from serving.bundle.model import DeployableModel
from training.procedure import ProcedureSettings, fit_procedure
from training.run import _feature_config, resolve_monotone
from training.tuning import monotone_vector


def fit_deployed_reference(config: Any, cohort: Any) -> DeployableModel:
    """The deployed procedure alone (tuning, refit, calibrator on the inner out-of-fold
    predictions) as a `DeployableModel` without fold models, interval or time model: trained on
    a large simulated cohort, its probability is the large-sample reference."""

    definition = get_definition(config.label.definition)
    labels = derive_labels(cohort, definition)
    labelled = labels[labels["label"].notna()]
    feature_config = _feature_config(config)
    pipeline = FeaturePipeline(feature_config)
    X = pipeline.fit_transform(cohort).loc[labelled["episode_id"].astype(str)].astype(np.float32)
    y = labelled["label"].astype(int).to_numpy()
    groups = (
        cohort.episodes.set_index("episode_id")["patient_id"].astype(str).loc[X.index].to_numpy()
    )
    monotone = resolve_monotone(config.model.monotone, list(X.columns))
    settings = ProcedureSettings(
        model=config.model,
        calibration_method=config.calibration.method,
        monotone=monotone_vector(list(X.columns), monotone) if monotone else None,
    )
    final = fit_procedure(X.to_numpy(), y, groups, settings, config.validation.seed)
    calibrator = final.calibrator
    return DeployableModel(
        pipeline=pipeline,
        booster=final.booster,
        calibrator=calibrator,
        metadata={"name": "reference", "version": "0", "label_definition": definition.name},
    )


def reference_coverage(
    model: Any, reference: Any, holdout: Any, oracle_csv: Any = None
) -> dict[str, float]:
    """Coverage of the reference probability (and of the simulator's latent one, when given) by
    `model`'s interval on the labelled episodes of a holdout cohort, with widths by data density.

    `sparse` episodes have a feature outside the training range or a category level seen in
    fewer than 1% of training episodes; their median width is shown beside the others'.
    """
    labels = derive_labels(holdout, model.info["label_definition"])
    ids = labels.loc[labels["label"].notna(), "episode_id"].astype(str)
    ours = model.predict_proba(holdout).loc[ids]
    ref = reference.predict_proba(holdout, interval=False).loc[ids, "probability"]
    low, high, p = ours["interval_low"], ours["interval_high"], ours["probability"]
    width = (high - low).to_numpy()
    out: dict[str, float] = {
        "n_episodes": int(len(ids)),
        "coverage_reference": float(((ref >= low) & (ref <= high)).mean()),
        "median_width": float(np.median(width)),
        "point_equals_a_bound": float(((p == low) | (p == high)).mean()),
        "mean_abs_gap_to_reference": float((p - ref).abs().mean()),
    }
    if oracle_csv is not None:
        oracle = pd.read_csv(oracle_csv).set_index("episode_id")["p_response"].reindex(ids)
        ok = oracle.notna()
        out["coverage_latent"] = float(((oracle[ok] >= low[ok]) & (oracle[ok] <= high[ok])).mean())
    old = replace(model, interval_model=None, time_model=None).predict_proba(holdout).loc[ids]
    out["old_fold_interval_coverage_reference"] = float(
        ((ref >= old["interval_low"]) & (ref <= old["interval_high"])).mean()
    )
    out["old_fold_interval_median_width"] = float(
        np.median(old["interval_high"] - old["interval_low"])
    )
    sparse = sparse_episodes(model, holdout).reindex(ids).fillna(False).to_numpy(dtype=bool)
    out["n_sparse"] = int(sparse.sum())
    out["median_width_sparse"] = float(np.median(width[sparse])) if sparse.any() else float("nan")
    out["median_width_dense"] = (
        float(np.median(width[~sparse])) if (~sparse).any() else float("nan")
    )
    return out


def sparse_episodes(model: Any, cohort: Any, rare_share: float = 0.01) -> Any:
    """True for episodes with a feature outside the training range or a rare one-hot level."""
    prepared = model.prepare(cohort)
    X = prepared.X.astype(np.float64)
    stats = model.reference.get("features", {})
    flags = np.zeros(X.shape[0], dtype=bool)
    for j, name in enumerate(model.feature_names):
        s = stats.get(name) or {}
        if s.get("min") is None:
            continue
        with np.errstate(invalid="ignore"):
            flags |= (X[:, j] < s["min"]) | (X[:, j] > s["max"])
        if "=" in name:
            share_present = 1 - float(s.get("missing_share") or 0.0)
            # a one-hot column's p99 is 0 when fewer than 1% of episodes have the level
            if share_present > 0 and float(s.get("p99") or 0.0) == 0.0 and rare_share >= 0.01:
                with np.errstate(invalid="ignore"):
                    flags |= X[:, j] >= 0.5
    return pd.Series(flags, index=prepared.episode_ids)
