"""Issue 18: coverage of the probability interval, and the cost of the interval and the curve.

1. Coverage. Simulates a training cohort (3,000 patients, the experiment's default), a holdout
   (2,000) and a large reference cohort (30,000). Trains the experiment on the training cohort
   (with the bootstrap interval and the time model) and the deployed procedure alone (tuning,
   refit, calibrator on the inner out-of-fold predictions) on the reference cohort; scores the
   holdout with both. Coverage = share of holdout episodes whose reference probability lies in the
   interval (target: the nominal level +- 5 points); also against the simulator's latent
   probability, the old fold-percentile interval of the same model, and widths for typical,
   out-of-range and rare-category patients.
2. Cost per patient, in process (`DeployableModel.score`, one record, explain on) and over HTTP
   (keep-alive http.client to a real uvicorn), for the answer with the interval and the curve
   against the same model without them (the baseline answer: fold models' percentile interval,
   no curve).

    .venv/bin/python benchmarks/bench_interval.py [--train 3000] [--reference 30000]
        [--holdout 2000] [--seed 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _shared import serving_fixtures

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _simulate(n: int, seed: int, directory: Path) -> Path:
    from data.simulator import SimulationConfig, simulate_cohort

    if not (directory / "episodes.csv").exists():
        simulate_cohort(SimulationConfig(n_patients=n, seed=seed), directory)
    return directory


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ms(model, records: list[dict], repeats: int) -> float:
    """Median ms per POST /v1/score over one keep-alive connection to a real uvicorn."""
    import uvicorn

    from serving.http.app import create_app
    from serving.scoring.scorer import Scorer
    from serving.settings import ServingSettings

    with tempfile.TemporaryDirectory() as tmp:
        settings = ServingSettings(model_uri="bench", audit_path=str(Path(tmp) / "audit.db"))
        app = create_app(settings, scorer=Scorer(model, uri="bench"))
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            bodies = [json.dumps(r).encode() for r in records]
            times = []
            for k in range(-50, repeats):  # 50 warm-up requests, not timed
                body = bodies[k % len(bodies)]
                start = time.perf_counter()
                conn.request("POST", "/v1/score", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if k >= 0:
                    times.append((time.perf_counter() - start) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            conn.close()
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--reference", type=int, default=30_000)
    parser.add_argument("--holdout", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--work", type=Path, default=None, help="keep cohorts and models here (reused)"
    )
    parser.add_argument("--experiment", type=Path, default=ROOT / "experiments/baseline.toml")
    args = parser.parse_args()

    from data.cohort import load_cohort
    from training.config import load_experiment
    from training.reference import fit_deployed_reference, reference_coverage
    from training.run import fit_experiment

    work = args.work or Path(tempfile.mkdtemp(prefix="ctit-bench-interval-"))
    config = load_experiment(args.experiment)
    start = time.perf_counter()
    train_dir = _simulate(args.train, args.seed, work / f"train_{args.train}_{args.seed}")
    holdout_dir = _simulate(args.holdout, args.seed + 1, work / f"holdout_{args.holdout}")
    ref_dir = _simulate(args.reference, args.seed + 2, work / f"reference_{args.reference}")
    print(f"simulated in {time.perf_counter() - start:.0f} s")

    from serving.bundle.model import DeployableModel

    trained = work / f"model_{args.train}_{args.seed}"
    start = time.perf_counter()
    if (trained / "manifest.json").exists():
        model = DeployableModel.load(trained)
    else:
        model = fit_experiment(config, load_cohort(train_dir))[0].model
        model.save(trained)
    print(f"the experiment on {args.train} patients: {time.perf_counter() - start:.0f} s")
    reference_dir = work / f"reference_model_{args.reference}"
    start = time.perf_counter()
    if (reference_dir / "manifest.json").exists():
        reference = DeployableModel.load(reference_dir)
    else:
        reference = fit_deployed_reference(config, load_cohort(ref_dir))
        reference.save(reference_dir)
    print(
        f"the deployed procedure on {args.reference} patients: {time.perf_counter() - start:.0f} s"
    )

    holdout = load_cohort(holdout_dir)
    figures = reference_coverage(model, reference, holdout, holdout_dir / "oracle.csv")
    level = model.interval_level
    print(f"\ninterval: nominal {level:.0%}, {model.interval_model.n_refits} bootstrap refits")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    gap = figures["coverage_reference"] - level
    verdict = "met" if abs(gap) <= 0.05 else "NOT met"
    print(f"  target |coverage - nominal| <= 5 points: {gap * 100:+.1f} points, {verdict}")

    evidence = model.metadata.get("time_to_response", {}).get("metrics", {})
    print("\ntime to response (out of fold, 95% CI):")
    for name in (
        "harrell_c",
        "uno_c",
        "day7.oe_ratio",
        "day7.calibration_slope",
        "day14.oe_ratio",
        "day14.calibration_slope",
        "responders.median_abs_error_days",
    ):
        if name in evidence:
            v = evidence[name]
            print(f"  {name}: {v['estimate']:.3f} ({v['low']:.3f}-{v['high']:.3f})")

    # -- cost per patient ---------------------------------------------------------------------
    from serving.scoring.scorer import Scorer

    baseline = replace(model, interval_model=None, time_model=None)
    full_scorer, base_scorer = Scorer(model, uri="bench"), Scorer(baseline, uri="bench")
    model.warm()
    baseline.warm()
    light = serving_fixtures().synthetic_records(50, seed=1)[0]  # bench_serving's records (7 labs)
    heavy = _records(holdout_dir, 50)  # simulated patients with their whole lab history
    print("\nin-process p50 per patient (Scorer.score, explain on; interleaved, same run):")
    for kind, records in (("bench_serving records", light), ("simulated records", heavy)):
        full_ms, base_ms = _interleaved(full_scorer, base_scorer, records)
        met = "met" if full_ms <= 3 else "NOT met"
        print(
            f"  {kind}: {full_ms:.2f} ms with interval + curve, {base_ms:.2f} ms baseline answer "
            f"({full_ms / base_ms:.2f}x; +{full_ms - base_ms:.2f} ms); p50 <= 3 ms: {met}"
        )
    records = light
    only = replace(model, time_model=None)
    X = model.prepare(load_cohort(holdout_dir)).X[:1]
    cost = {
        "bootstrap interval": statistics.median(_timed(lambda: only.predict_matrix(X), 300)),
        "fold-percentile interval": statistics.median(
            _timed(lambda: baseline.predict_matrix(X), 300)
        ),
        "no interval": statistics.median(
            _timed(lambda: baseline.predict_matrix(X, interval=False), 300)
        ),
        "curve": statistics.median(_timed(lambda: model.response_curves(X, np.array([0.5])), 300)),
    }
    print("per-patient parts (one row, ms):", {k: round(v, 3) for k, v in cost.items()})

    # two rounds in alternating order, so neither configuration always goes first
    http_full, http_base = [], []
    for _ in range(2):
        http_base.append(_http_ms(baseline, records, 300))
        http_full.append(_http_ms(model, records, 300))
    full_ms, base_ms = statistics.median(http_full), statistics.median(http_base)
    print(
        f"\nHTTP p50 per POST /v1/score (keep-alive http.client, real uvicorn, audit on): "
        f"{full_ms:.2f} ms with interval + curve, {base_ms:.2f} ms baseline "
        f"({full_ms / base_ms:.2f}x; +{full_ms - base_ms:.2f} ms)"
    )
    return 0


def _interleaved(full, base, records: list[dict], rounds: int = 4) -> tuple[float, float]:
    """p50 ms of each scorer, calls alternating record by record (same machine load)."""
    for record in records[:10]:
        full.score(record)
        base.score(record)
    a, b = [], []
    for _ in range(rounds):
        for record in records:
            a.extend(_timed(lambda r=record: full.score(r), 1))
            b.extend(_timed(lambda r=record: base.score(r), 1))
    return statistics.median(a), statistics.median(b)


def _records(cohort_dir: Path, n: int) -> list[dict]:
    """The first n episodes of a simulated cohort as scoring records (labs up to the index)."""
    import pandas as pd

    episodes = pd.read_csv(cohort_dir / "episodes.csv").head(n)
    patients = pd.read_csv(cohort_dir / "patients.csv").set_index("patient_id")
    labs = pd.read_csv(cohort_dir / "labs.csv")
    regimens = pd.read_csv(cohort_dir / "regimens.csv")
    out = []
    for episode in episodes.to_dict("records"):
        pid = episode["patient_id"]
        index = pd.Timestamp(episode["index_date"])
        patient = {"patient_id": pid, **_clean(patients.loc[pid].to_dict())}
        lab_rows = labs[(labs["patient_id"] == pid) & (pd.to_datetime(labs["time"]) <= index)]
        reg_rows = regimens[
            (regimens["patient_id"] == pid) & (pd.to_datetime(regimens["start_date"]) <= index)
        ]
        out.append(
            {
                "patient": patient,
                "episode": _clean({k: v for k, v in episode.items() if k != "patient_id"}),
                "labs": [
                    _clean({k: v for k, v in r.items() if k != "patient_id"})
                    for r in lab_rows.to_dict("records")
                ],
                "regimens": [
                    _clean({k: v for k, v in r.items() if k != "patient_id"})
                    for r in reg_rows.to_dict("records")
                ],
            }
        )
    return out


def _clean(row: dict) -> dict:
    import math

    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


if __name__ == "__main__":
    raise SystemExit(main())
