"""Feature pipeline speed: lab rows per second and peak memory by cohort size, and the latency of
one patient's transform (the scoring path).

Run by hand, not by the tests:
    .venv/bin/python benchmarks/bench_features.py [--sizes 1000 10000 100000] [--source numpy]

`--source numpy` (default) builds normalised cohorts directly with numpy (about 60 lab rows and
5 regimen rows per patient); `--source simulator` writes them with data.simulator and loads them
through data.cohort (slower to prepare, realistic content).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc

import numpy as np
import pandas as pd

from data.cohort import Cohort, load_cohort
from features.pipeline import FeaturePipeline, build_features

TESTS = np.array(["PLT", "HGB", "WBC", "ANC", "ALT", "AST", "TBIL", "CREA", "ALB", "FERRITIN"])
CLASSES = np.array(
    [
        "gemcitabine;platinum",
        "taxane",
        "adc;anti_her2",
        "anthracycline;alkylator",
        "cdk46;endocrine",
    ]
)
SUBTYPES = np.array(["HR+/HER2-", "HER2+", "TNBC"], dtype=object)


def numpy_cohort(n_patients: int, seed: int = 0, labs_per_patient: int = 60) -> Cohort:
    """A normalised cohort built directly (sorted labs, one or two episodes per patient)."""
    rng = np.random.default_rng(seed)
    pid = np.array([f"P{i:07d}" for i in range(n_patients)], dtype=object)
    day0 = np.datetime64("2020-01-01") + rng.integers(0, 1500, n_patients).astype("timedelta64[D]")
    n_episodes = rng.integers(1, 3, n_patients)
    ep_patient = np.repeat(np.arange(n_patients), n_episodes)
    ep_offset = np.where(np.r_[True, ep_patient[1:] != ep_patient[:-1]], 120, 260) + rng.integers(
        0, 30, len(ep_patient)
    )
    episodes = pd.DataFrame(
        {
            "episode_id": np.array([f"E{i:08d}" for i in range(len(ep_patient))], dtype=object),
            "patient_id": pid[ep_patient],
            "index_date": (day0[ep_patient] + ep_offset.astype("timedelta64[D]")).astype(
                "datetime64[ns]"
            ),
            "age_years": rng.normal(52, 9, len(ep_patient)),
            "dose_mg": rng.choice([5.0, 7.5], len(ep_patient)),
        }
    )
    n_labs = n_patients * labs_per_patient
    lab_patient = np.repeat(np.arange(n_patients), labs_per_patient)
    minutes = rng.integers(0, 400 * 1440, n_labs)
    order = np.lexsort((minutes, lab_patient))
    lab_time = day0[lab_patient].astype("datetime64[m]") + minutes[order].astype("timedelta64[m]")
    labs = pd.DataFrame(
        {
            "patient_id": pid[lab_patient],
            "time": lab_time.astype("datetime64[ns]"),
            "test": TESTS[rng.integers(0, len(TESTS), n_labs)].astype(object),
            "value": rng.gamma(4.0, 25.0, n_labs),
            "unit": "U",
        }
    )
    reg_per_patient = 5
    reg_patient = np.repeat(np.arange(n_patients), reg_per_patient)
    reg_offset = np.tile(np.arange(reg_per_patient) * 60, n_patients) + rng.integers(
        0, 20, len(reg_patient)
    )
    regimens = pd.DataFrame(
        {
            "patient_id": pid[reg_patient],
            "start_date": (day0[reg_patient] + reg_offset.astype("timedelta64[D]")).astype(
                "datetime64[ns]"
            ),
            "end_date": pd.NaT,
            "drugs": "x",
            "classes": CLASSES[rng.integers(0, len(CLASSES), len(reg_patient))].astype(object),
            "regimen": None,
            "line": np.tile(np.arange(1, reg_per_patient + 1), n_patients).astype(float),
            "cycle": rng.integers(1, 7, len(reg_patient)).astype(float),
        }
    )
    patients = pd.DataFrame(
        {
            "patient_id": pid,
            "race": np.where(rng.random(n_patients) < 0.6, "Asian", "White").astype(object),
            "ecog": rng.integers(0, 3, n_patients).astype(float),
            "subtype": SUBTYPES[rng.integers(0, 3, n_patients)],
            "bone_mets": (rng.random(n_patients) < 0.55).astype(float),
            "liver_mets": (rng.random(n_patients) < 0.35).astype(float),
            "marrow_involvement": (rng.random(n_patients) < 0.04).astype(float),
            "splenomegaly": (rng.random(n_patients) < 0.05).astype(float),
            "prior_radiotherapy": (rng.random(n_patients) < 0.3).astype(float),
        }
    )
    return Cohort(patients=patients, episodes=episodes, labs=labs, regimens=regimens)


def simulated_cohort(n_patients: int, seed: int = 0) -> Cohort:
    from data.simulator import SimulationConfig, simulate_cohort

    directory = tempfile.mkdtemp(prefix="bench_features_")
    simulate_cohort(SimulationConfig(n_patients=n_patients, seed=seed), directory)
    return load_cohort(directory)


def one_patient(cohort: Cohort, patient_id: str) -> Cohort:
    def rows(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["patient_id"] == patient_id].reset_index(drop=True)

    return Cohort(
        patients=rows(cohort.patients),
        episodes=rows(cohort.episodes),
        labs=rows(cohort.labs),
        regimens=rows(cohort.regimens),
    )


def measure_size(cohort: Cohort, repeats: int) -> dict[str, float]:
    n_labs = len(cohort.labs)
    times = []
    for _ in range(repeats):
        gc.collect()
        began = time.perf_counter()
        build_features(cohort)
        times.append(time.perf_counter() - began)
    gc.collect()
    tracemalloc.start()
    build_features(cohort)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    best = min(times)
    return {
        "episodes": len(cohort.episodes),
        "lab_rows": n_labs,
        "seconds": best,
        "lab_rows_per_s": n_labs / best,
        "peak_mb": peak / 2**20,
    }


def measure_latency(cohort: Cohort, runs: int) -> tuple[float, float, int, int]:
    pipeline = FeaturePipeline().fit(cohort)
    patient = cohort.episodes["patient_id"].iloc[0]
    single = one_patient(cohort, patient)
    for _ in range(200):
        pipeline.transform(single)
    times = np.empty(runs)
    for i in range(runs):
        began = time.perf_counter()
        pipeline.transform(single)
        times[i] = time.perf_counter() - began
    p50, p99 = np.percentile(times, [50, 99]) * 1e6
    return float(p50), float(p99), len(single.labs), len(single.episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--source", choices=["numpy", "simulator"], default="numpy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3000, help="single-patient transforms timed")
    args = parser.parse_args()
    make = numpy_cohort if args.source == "numpy" else simulated_cohort
    print(f"source: {args.source}")
    print(
        f"{'patients':>9} {'episodes':>9} {'lab rows':>10} {'seconds':>8} {'rows/s':>12} "
        f"{'peak MB':>8}"
    )
    smallest = None
    for size in args.sizes:
        cohort = make(size)
        smallest = smallest or cohort
        r = measure_size(cohort, args.repeats)
        print(
            f"{size:>9,} {r['episodes']:>9,} {r['lab_rows']:>10,} {r['seconds']:>8.3f} "
            f"{r['lab_rows_per_s']:>12,.0f} {r['peak_mb']:>8.1f}"
        )
        del cohort
    p50, p99, n_labs, n_episodes = measure_latency(smallest, args.runs)
    print(
        f"single patient ({n_episodes} episodes, {n_labs} lab rows): transform "
        f"p50 {p50:.0f} us, p99 {p99:.0f} us"
    )


if __name__ == "__main__":
    main()
