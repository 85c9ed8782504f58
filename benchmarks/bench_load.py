"""Load + validate speed and peak memory on a generated cohort (run by hand, not by the tests).

    .venv/bin/python benchmarks/bench_load.py --patients 100000 --format both

Generates its own synthetic contract tables with numpy (about 50 lab rows per patient, mixed
units, LOINC codes and aliases), writes them as CSV and/or Parquet, then times `load_cohort`
(read, validate, normalise), `derive_labels`, and the p50/p99 latency of `cohort_from_tables`
for one patient (the HTTP path: a generated patient and examples/patient.json). Peak memory is
the process high-water mark (VmHWM) reset before each step; the generated tables are written and
freed before the loads, so it is the loader's peak plus the interpreter and libraries (the
resident memory at the start of the step is printed beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data.cohort import cohort_from_tables, load_cohort
from data.labels import derive_labels

# (test code as written, unit as written, typical value in that unit, sd): PLT dominates.
LAB_KINDS = [
    ("PLT", "10*9/L", 60.0, 30.0),
    ("777-3", "10*3/uL", 60.0, 30.0),
    ("PLT", "/uL", 60000.0, 30000.0),
    ("718-7", "g/dL", 10.0, 1.5),
    ("HGB", "g/L", 100.0, 15.0),
    ("WBC", "10*3/uL", 4.0, 1.5),
    ("751-8", "10*9/L", 2.5, 1.0),
    ("ALT", "U/L", 25.0, 10.0),
    ("1920-8", "U/L", 28.0, 10.0),
    ("TBIL", "mg/dL", 0.7, 0.3),
    ("CREA", "umol/L", 60.0, 15.0),
    ("ALB", "g/L", 38.0, 4.0),
    ("FERRITIN", "ng/mL", 300.0, 150.0),
]
LAB_WEIGHTS = np.array([20, 10, 4, 4, 4, 8, 8, 6, 6, 6, 6, 6, 2], dtype=float)
DRUGS = [
    "gemcitabine;carboplatin",
    "docetaxel;trastuzumab;pertuzumab",
    "trastuzumab deruxtecan",
    "T-DM1",
    "palbociclib;letrozole",
    "capecitabine",
    "nab-paclitaxel;pembrolizumab",
    "sacituzumab govitecan",
    "epirubicin;cyclophosphamide",
    "eribulin",
]


def generate(n_patients: int, labs_per_patient: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Synthetic contract tables as a CSV would hold them (dates as ISO text)."""
    rng = np.random.default_rng(seed)
    pids = np.char.add("P", np.arange(n_patients).astype(str))
    patients = pd.DataFrame(
        {
            "patient_id": pids,
            "sex": "F",
            "birth_date": np.datetime_as_string(
                np.datetime64("1950-01-01") + rng.integers(0, 40 * 365, n_patients), unit="D"
            ),
            "ecog": rng.integers(0, 3, n_patients),
            "subtype": rng.choice(["HR+/HER2-", "HER2+", "TNBC"], n_patients),
            "bone_mets": rng.choice(["true", "false"], n_patients),
            "marrow_involvement": rng.choice(["0", "1"], n_patients, p=[0.95, 0.05]),
        }
    )
    index = np.datetime64("2022-01-01") + rng.integers(0, 3 * 365, n_patients)
    second = rng.random(n_patients) < 0.2
    ep_patient = np.concatenate([np.arange(n_patients), np.flatnonzero(second)])
    ep_index = np.concatenate([index, index[second] + 120])
    episodes = pd.DataFrame(
        {
            "episode_id": np.char.add("E", np.arange(len(ep_patient)).astype(str)),
            "patient_id": pids[ep_patient],
            "index_date": np.datetime_as_string(ep_index, unit="D"),
            "dose_mg": 7.5,
        }
    )
    n_labs = n_patients * labs_per_patient
    lab_patient = np.repeat(np.arange(n_patients), labs_per_patient)
    kind = rng.choice(len(LAB_KINDS), n_labs, p=LAB_WEIGHTS / LAB_WEIGHTS.sum())
    centre = np.array([k[2] for k in LAB_KINDS])[kind]
    spread = np.array([k[3] for k in LAB_KINDS])[kind]
    values = np.abs(rng.normal(centre, spread)).round(2)
    seconds = rng.integers(-60 * 86400, 30 * 86400, n_labs)
    times = index[lab_patient].astype("datetime64[s]") + seconds
    labs = pd.DataFrame(
        {
            "patient_id": pids[lab_patient],
            "time": np.datetime_as_string(times, unit="s"),
            "test": np.array([k[0] for k in LAB_KINDS], dtype=object)[kind],
            "value": values,
            "unit": np.array([k[1] for k in LAB_KINDS], dtype=object)[kind],
        }
    )
    n_reg = n_patients * 3
    reg_patient = np.repeat(np.arange(n_patients), 3)
    start = index[reg_patient] - rng.integers(10, 400, n_reg)
    regimens = pd.DataFrame(
        {
            "patient_id": pids[reg_patient],
            "start_date": np.datetime_as_string(start, unit="D"),
            "drugs": rng.choice(DRUGS, n_reg),
            "line": np.tile([1, 2, 3], n_patients),
            "cycle": rng.integers(1, 7, n_reg),
        }
    )
    return {"patients": patients, "episodes": episodes, "labs": labs, "regimens": regimens}


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


_ELAPSED = [float("nan")]


def _last_elapsed() -> float:
    return _ELAPSED[0]


def _rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _time(label: str, rows: int, fn):
    gc.collect()
    before = _rss_mib()
    _reset_peak()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    _ELAPSED[0] = elapsed
    print(
        f"{label:<34} {elapsed:8.2f} s  {rows / elapsed:>12,.0f} rows/s  "
        f"peak {_peak_mib():8.0f} MiB (at start {before:.0f} MiB)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--labs-per-patient", type=int, default=50)
    parser.add_argument("--format", choices=["csv", "parquet", "both"], default="both")
    parser.add_argument("--single-calls", type=int, default=2000)
    args = parser.parse_args()

    start = time.perf_counter()
    tables = generate(args.patients, args.labs_per_patient)
    rows = sum(len(t) for t in tables.values())
    print(
        f"generated {args.patients:,} patients, {len(tables['episodes']):,} episodes, "
        f"{len(tables['labs']):,} lab rows ({rows:,} rows in all) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    formats = ["csv", "parquet"] if args.format == "both" else [args.format]
    one = {
        name: frame[frame["patient_id"] == "P1"].to_dict("records")
        for name, frame in tables.items()
    }
    one["episodes"] = one["episodes"][:1]
    lab_rows = len(tables["labs"])
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            directory = Path(tmp) / fmt
            directory.mkdir()
            for name, frame in tables.items():
                if fmt == "csv":
                    frame.to_csv(directory / f"{name}.csv", index=False)
                else:
                    frame.to_parquet(directory / f"{name}.parquet", index=False)
        del tables, frame  # measure the loader, not the generated tables
        cohort = None
        for fmt in formats:
            cohort = None
            directory = Path(tmp) / fmt
            cohort = _time(f"load+validate ({fmt})", rows, lambda d=directory: load_cohort(d))
            print(f"  {lab_rows / _last_elapsed():,.0f} lab rows/s")
        episodes = len(cohort.episodes)
        labels = _time(
            "derive_labels (default)",
            episodes,
            lambda: derive_labels(cohort, "plt100_or_rise50_d14"),
        )
        print(f"  labelled {labels['label'].notna().sum():,} of {episodes:,} episodes")

    _single_patient("cohort_from_tables, one patient (generated)", one, args.single_calls)
    _single_patient("cohort_from_tables, examples/patient.json", _example(), args.single_calls)
    _single_patient(
        "cohort_from_tables, serving.schemas.EXAMPLE_RECORD", _schema_example(), args.single_calls
    )


def _schema_example() -> dict[str, list[dict]]:
    """The request example of the API, as `serving.scorer` hands it to the loader."""
    from serving.request.records import RecordBatch, validate_record
    from serving.request.schemas import EXAMPLE_RECORD

    return RecordBatch.from_requests([validate_record(EXAMPLE_RECORD)]).tables


def _example() -> dict[str, list[dict]]:
    """examples/patient.json as the HTTP service hands it to the loader."""
    from serving.request.records import patient_record_to_tables

    path = Path(__file__).resolve().parents[1] / "examples" / "patient.json"
    return patient_record_to_tables(json.loads(path.read_text()))


def _single_patient(label: str, tables: dict[str, list[dict]], calls: int) -> None:
    """p50/p99 latency of `cohort_from_tables` for one patient (the HTTP path), after warm-up."""
    for _ in range(min(calls, 200)):
        cohort_from_tables(tables)
    timings = []
    for _ in range(calls):
        t0 = time.perf_counter()
        cohort_from_tables(tables)
        timings.append(time.perf_counter() - t0)
    timings.sort()
    rows = sum(len(v) for v in tables.values())
    print(
        f"{label} ({rows} rows, {calls} calls): "
        f"p50 {statistics.median(timings) * 1e3:.3f} ms, "
        f"p99 {timings[max(int(0.99 * calls) - 1, 0)] * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
