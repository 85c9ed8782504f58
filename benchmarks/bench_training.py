"""Benchmark the deployed procedure: training time, fresh-cohort validation, small cohorts, the
learning curve against the oracles, and the previous episode's outcome as a feature.

    python benchmarks/bench_training.py [--sections deployed,small,curve,prior] [--out FILE]
        [--reference-patients 30000] [--curve-sizes 500,1000,3000,10000,30000]
        [--small-sizes 150,300,1000,3000] [--fresh-patients 3000]

Sections (all by default):

- `deployed`: `ctit train experiments/baseline.toml` (seed A = the experiment's, 3,000
  patients) timed as a user runs it (target under 5 minutes on 2 cores), then `ctit evaluate`
  of the registered model on fresh simulated cohorts of seeds B and C. Targets: calibration slope
  0.9-1.1 on both fresh cohorts, and the out-of-fold slope (the deployed procedure's) within 0.1
  of each fresh-cohort slope. The fresh AUROC is compared with the latent oracle of `oracle.csv`
  (an upper bound: it conditions on the simulator's hidden state) and with an estimate of the
  oracle given observable data (`training.oracle`, fitted on a separate simulated reference
  cohort: a lower bound of that oracle, labelled as an estimate). "x of the oracle" is judged
  met only against the latent upper bound.
- `small`: booster minus logistic regression AUROC, a paired difference with its patient
  bootstrap 95% CI, out of fold (the deployed procedure in every fold) and on fresh cohort B,
  at 150, 300, 1,000 and 3,000 simulated training patients.
- `curve`: the learning curve: the same procedure fitted on 500 / 1k / 3k / 10k / 30k simulated
  patients, AUROC and Brier on fresh cohort B, beside the latent bound and the observable
  estimate on the same episodes.
- `prior`: the opt-in feature family `prior_episode` (the previous episode's PLT course, known
  before the index date): fresh-cohort AUROC and Brier with and without it, paired.

Exit code 0 when the deployed section's targets are met, 2 when one is not, 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_B, SEED_C = 202, 303
SECTIONS = ("deployed", "small", "curve", "prior")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "baseline.toml"))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--fresh-patients", type=int, default=3000)
    parser.add_argument("--reference-patients", type=int, default=30_000)
    parser.add_argument("--small-sizes", default="150,300,1000,3000")
    parser.add_argument("--curve-sizes", default="500,1000,3000,10000,30000")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")

    from training.config import load_experiment

    config = load_experiment(args.experiment)
    figures: dict = {"cores": os.cpu_count()}
    code = 0
    with tempfile.TemporaryDirectory(prefix="ctit-bench-") as tmp:
        tmp_path = Path(tmp)
        fresh_b = _simulate(tmp_path / "fresh_b", args.fresh_patients, SEED_B)
        if "deployed" in sections:
            figures["deployed"] = _deployed(args, config, tmp_path, fresh_b)
            _print("deployed", figures["deployed"])
            if figures["deployed"].get("failed"):
                code = 1
            elif not figures["deployed"]["targets_met"]:
                code = 2
        if "small" in sections:
            figures["small_cohorts"] = _small(args, config, tmp_path, fresh_b)
            _print("small_cohorts", figures["small_cohorts"])
        if "curve" in sections:
            observable = _observable_estimate(fresh_b, tmp_path, args.reference_patients)
            figures["learning_curve"] = _curve(args, config, tmp_path, fresh_b, observable)
            _print("learning_curve", figures["learning_curve"])
        if "prior" in sections:
            figures["prior_episode"] = _prior(config, tmp_path, fresh_b)
            _print("prior_episode", figures["prior_episode"])
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return code


def _print(name: str, value) -> None:
    print(f"== {name}\n{json.dumps(value, indent=2)}", flush=True)


def _simulate(directory: Path, n: int, seed: int) -> Path:
    from data.simulator import SimulationConfig, simulate_cohort

    if not (directory / "episodes.csv").exists() and not (directory / "episodes.parquet").exists():
        simulate_cohort(SimulationConfig(n_patients=n, seed=seed), directory)
    return directory


def _ctit(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ctit", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def _labelled(cohort_dir: Path, definition: str):
    """(cohort, labelled episode ids, y, patient ids, latent oracle p) of a simulated cohort."""
    import pandas as pd

    from data.cohort import load_cohort
    from data.labels import derive_labels

    cohort = load_cohort(cohort_dir)
    labels = derive_labels(cohort, definition).set_index("episode_id")
    labelled = labels[labels["label"].notna()]
    ids = labelled.index
    latent = (
        pd.read_csv(cohort_dir / "oracle.csv", dtype={"episode_id": str})
        .set_index("episode_id")["p_response"]
        .loc[ids]
        .to_numpy(dtype=float)
    )
    patients = cohort.episodes.set_index("episode_id")["patient_id"].astype(str).loc[ids]
    return cohort, ids, labelled["label"].astype(int).to_numpy(), patients.to_numpy(), latent


def _deployed(args, config, tmp_path: Path, fresh_b: Path) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    from training import metrics

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    began = time.perf_counter()
    done = _ctit(
        ["train", args.experiment, "--tracking-uri", uri, "--registered-model", "ctit-bench"],
        tmp_path,
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        print(done.stdout, done.stderr[-4000:], sep="\n", file=sys.stderr)
        return {"failed": "ctit train"}
    run_id = re.search(r"MLflow run id: (\w+)", done.stdout).group(1)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    trained = client.get_run(run_id).data.metrics
    out: dict = {
        "train_seconds": round(seconds, 1),
        "train_under_5_minutes": seconds < 300,
        "training_patients": config.cohort.simulate.n_patients if config.cohort.simulate else None,
        "n_trials": config.model.n_trials,
        "outer_folds": config.validation.n_splits * config.validation.n_repeats,
        "oof": {
            k: round(trained[f"xgboost.{k}"], 4)
            for k in ("auroc", "brier", "calibration_slope", "calibration_intercept")
        },
        "oof_minus_logreg_auroc": [
            round(trained[f"xgboost_minus_logreg.auroc_diff{s}"], 4) for s in ("", ".low", ".high")
        ],
    }
    fresh_c = _simulate(tmp_path / "fresh_c", args.fresh_patients, SEED_C)
    for label, directory, seed in (("B", fresh_b, SEED_B), ("C", fresh_c, SEED_C)):
        page = tmp_path / f"evaluate_{label}.html"
        began = time.perf_counter()
        evaluated = _ctit(
            ["evaluate", "--model", "models:/ctit-bench@candidate", "--cohort", str(directory),
             "--tracking-uri", uri, "--out", str(page)],
            tmp_path,
        )  # fmt: skip
        if evaluated.returncode != 0:
            print(evaluated.stdout, evaluated.stderr[-4000:], sep="\n", file=sys.stderr)
            return {**out, "failed": f"ctit evaluate on seed {seed}"}
        eval_id = re.search(r"MLflow evaluation run id: (\w+)", evaluated.stdout).group(1)
        m = client.get_run(eval_id).data.metrics
        _, _, y, _, latent = _labelled(directory, config.label.definition)
        latent_auroc = float(metrics.auroc(y, latent)[0])
        out[f"fresh_{label}"] = {
            "seed": seed,
            "evaluate_seconds": round(time.perf_counter() - began, 1),
            "episodes": int(m["data.n_episodes"]),
            "auroc": [round(m[f"xgboost.auroc{s}"], 4) for s in ("", ".low", ".high")],
            "brier": round(m["xgboost.brier"], 4),
            "calibration_slope": [
                round(m[f"xgboost.calibration_slope{s}"], 3) for s in ("", ".low", ".high")
            ],
            "calibration_intercept": round(m["xgboost.calibration_intercept"], 3),
            "oe_ratio": round(m["xgboost.oe_ratio"], 3),
            "logreg_auroc": round(m["logreg.auroc"], 4),
            "minus_logreg_auroc": [
                round(m[f"xgboost_minus_logreg.auroc_diff{s}"], 4) for s in ("", ".low", ".high")
            ],
            "latent_oracle_auroc_upper_bound": round(latent_auroc, 4),
            "latent_oracle_brier": round(float(metrics.brier(y, latent)[0]), 4),
            "auroc_over_latent_oracle": round(m["xgboost.auroc"] / latent_auroc, 4),
        }
    slopes = [out[f"fresh_{k}"]["calibration_slope"][0] for k in ("B", "C")]
    oof_slope = out["oof"]["calibration_slope"]
    out["slope_target_0.9_1.1_met"] = all(0.9 <= s <= 1.1 for s in slopes)
    out["oof_slope_gaps"] = [round(abs(oof_slope - s), 3) for s in slopes]
    out["oof_slope_within_0.1_met"] = all(g <= 0.1 for g in out["oof_slope_gaps"])
    out["auroc_0.95_of_latent_oracle_met"] = all(
        out[f"fresh_{k}"]["auroc_over_latent_oracle"] >= 0.95 for k in ("B", "C")
    )
    out["targets_met"] = out["slope_target_0.9_1.1_met"] and out["oof_slope_within_0.1_met"]
    return out


def _small(args, config, tmp_path: Path, fresh_b: Path) -> list[dict]:
    from data.cohort import load_cohort
    from training.external import evaluate_model
    from training.run import fit_experiment

    fresh = load_cohort(fresh_b)
    rows = []
    for n in [int(s) for s in args.small_sizes.split(",") if s]:
        directory = _simulate(tmp_path / f"train_{n}", n, config.cohort.simulate.seed)
        began = time.perf_counter()
        result, _ = fit_experiment(config, load_cohort(directory))
        seconds = time.perf_counter() - began
        oof = result.tuning["comparison"]["logreg"]["auroc_diff"]
        external = evaluate_model(result.model, fresh, settings=None)
        fresh_diff = external.comparison["logreg"]["auroc_diff"]
        rows.append(
            {
                "training_patients": n,
                "labelled_episodes": int(len(result.y)),
                "fit_seconds": round(seconds, 1),
                "oof_auroc": round(result.metrics["xgboost"]["auroc"]["estimate"], 4),
                "oof_logreg_auroc": round(result.metrics["logreg"]["auroc"]["estimate"], 4),
                "oof_minus_logreg": [round(oof[k], 4) for k in ("estimate", "low", "high")],
                "fresh_auroc": round(external.metrics["xgboost"]["auroc"]["estimate"], 4),
                "fresh_logreg_auroc": round(external.metrics["logreg"]["auroc"]["estimate"], 4),
                "fresh_minus_logreg": [
                    round(fresh_diff[k], 4) for k in ("estimate", "low", "high")
                ],  # noqa: E501
                "oof_slope": round(result.metrics["xgboost"]["calibration_slope"]["estimate"], 3),
                "fresh_slope": round(
                    external.metrics["xgboost"]["calibration_slope"]["estimate"], 3
                ),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _fit_deployed(config, cohort, families=None):
    """The deployed procedure (training.procedure) on every labelled episode of `cohort`:
    (pipeline, fit). The outer cross-validation is skipped: only the deployed model is needed."""
    import numpy as np

    from data.labels import derive_labels
    from features.pipeline import ALL_FAMILIES, FeatureConfig, FeaturePipeline
    from training.procedure import ProcedureSettings, fit_procedure
    from training.run import resolve_monotone
    from training.tuning import monotone_vector

    pipeline = FeaturePipeline(FeatureConfig(families=families or ALL_FAMILIES)).fit(cohort)
    X = pipeline.transform(cohort)
    labels = derive_labels(cohort, config.label.definition).set_index("episode_id")
    ids = labels.index[labels["label"].notna()]
    X = X.loc[ids].astype(np.float32)
    y = labels.loc[ids, "label"].astype(int).to_numpy()
    groups = cohort.episodes.set_index("episode_id")["patient_id"].astype(str).loc[ids]
    monotone = resolve_monotone(config.model.monotone, list(X.columns))
    settings = ProcedureSettings(
        config.model,
        config.calibration.method,
        monotone_vector(list(X.columns), monotone) if monotone else None,
    )
    fit = fit_procedure(X.to_numpy(), y, groups.to_numpy(), settings, config.validation.seed)
    return pipeline, fit


def _predict(pipeline, fit, cohort, ids):
    import numpy as np

    X = pipeline.transform(cohort).loc[ids].to_numpy(dtype=np.float32)
    return fit.predict(X)[1]


def _observable_estimate(fresh_b: Path, tmp_path: Path, n_reference: int):
    """The estimate of the oracle given observable data on fresh cohort B (None when skipped)."""
    if not n_reference:
        return None
    import pandas as pd

    from data.cohort import load_cohort
    from data.labels import derive_labels
    from features.pipeline import FeatureConfig, FeaturePipeline
    from training.oracle import (
        fit_observable_oracle,
        observation_summary,
        predict_observable_oracle,
        regimen_codes,
    )

    began = time.perf_counter()
    reference_dir = _simulate(tmp_path / "reference", n_reference, SEED_B + 7919)
    reference = load_cohort(reference_dir)
    pipeline = FeaturePipeline(FeatureConfig()).fit(reference)
    labels = derive_labels(reference, "plt100_or_rise50_d14").set_index("episode_id")
    ids = labels.index[labels["label"].notna()]
    latent = pd.read_csv(reference_dir / "oracle.csv", dtype={"episode_id": str})
    latent_p = latent.set_index("episode_id").loc[ids, "p_response"].to_numpy(dtype=float)
    codes = regimen_codes(reference)
    summary = observation_summary(reference, ids, pipeline.transform(reference), codes)
    booster = fit_observable_oracle(summary, latent_p)
    cohort, fresh_ids, _, _, _ = _labelled(fresh_b, "plt100_or_rise50_d14")
    fresh = observation_summary(cohort, fresh_ids, pipeline.transform(cohort), codes)
    p = predict_observable_oracle(booster, fresh)
    print(f"observable-oracle estimate: {time.perf_counter() - began:.0f} s", flush=True)
    return pd.Series(p, index=fresh_ids)


def _curve(args, config, tmp_path: Path, fresh_b: Path, observable) -> dict:
    from data.cohort import load_cohort
    from training import metrics

    cohort_b, ids, y, _, latent = _labelled(fresh_b, config.label.definition)
    out: dict = {
        "fresh_seed": SEED_B,
        "fresh_episodes": int(len(y)),
        "latent_oracle_upper_bound": {
            "auroc": round(float(metrics.auroc(y, latent)[0]), 4),
            "brier": round(float(metrics.brier(y, latent)[0]), 4),
        },
    }
    if observable is not None:
        p_obs = observable.loc[ids].to_numpy(dtype=float)
        out["observable_oracle_estimate"] = {
            "auroc": round(float(metrics.auroc(y, p_obs)[0]), 4),
            "brier": round(float(metrics.brier(y, p_obs)[0]), 4),
            "reference_patients": args.reference_patients,
            "note": "an estimate (a lower bound of the oracle given observable data)",
        }
    points = []
    for n in [int(s) for s in args.curve_sizes.split(",") if s]:
        directory = _simulate(tmp_path / f"train_{n}", n, config.cohort.simulate.seed)
        began = time.perf_counter()
        pipeline, fit = _fit_deployed(config, load_cohort(directory))
        p = _predict(pipeline, fit, cohort_b, ids)
        points.append(
            {
                "training_patients": n,
                "fit_seconds": round(time.perf_counter() - began, 1),
                "auroc": round(float(metrics.auroc(y, p)[0]), 4),
                "brier": round(float(metrics.brier(y, p)[0]), 4),
                "calibration_slope": round(float(metrics.calibration_slope(y, p)[0]), 3),
                "n_rounds": fit.n_rounds,
                "max_depth": fit.params["max_depth"],
            }
        )
        print(json.dumps(points[-1]), flush=True)
    out["points"] = points
    return out


def _prior(config, tmp_path: Path, fresh_b: Path) -> dict:
    from data.cohort import load_cohort
    from features.pipeline import ALL_FAMILIES
    from training import metrics

    n = config.cohort.simulate.n_patients
    cohort = load_cohort(_simulate(tmp_path / f"train_{n}", n, config.cohort.simulate.seed))
    cohort_b, ids, y, patients, _ = _labelled(fresh_b, config.label.definition)
    base_pipeline, base_fit = _fit_deployed(config, cohort)
    prior_pipeline, prior_fit = _fit_deployed(config, cohort, (*ALL_FAMILIES, "prior_episode"))
    p_base = _predict(base_pipeline, base_fit, cohort_b, ids)
    p_prior = _predict(prior_pipeline, prior_fit, cohort_b, ids)
    weights = metrics.bootstrap_weights(patients, 500, 11)
    has_prior = ~prior_pipeline.transform(cohort_b).loc[ids, "days_since_prior_episode"].isna()
    auroc = metrics.paired_difference(metrics.auroc, y, p_prior, p_base, weights)
    brier = metrics.paired_difference(metrics.brier, y, p_prior, p_base, weights)
    return {
        "training_patients": n,
        "fresh_seed": SEED_B,
        "fresh_episodes_with_a_prior_episode": int(has_prior.sum()),
        "auroc_without": round(float(metrics.auroc(y, p_base)[0]), 4),
        "auroc_with": round(float(metrics.auroc(y, p_prior)[0]), 4),
        "auroc_gain": [round(auroc[k], 4) for k in ("estimate", "low", "high")],
        "brier_without": round(float(metrics.brier(y, p_base)[0]), 4),
        "brier_with": round(float(metrics.brier(y, p_prior)[0]), 4),
        "brier_change": [round(brier[k], 4) for k in ("estimate", "low", "high")],
    }


if __name__ == "__main__":
    raise SystemExit(main())
