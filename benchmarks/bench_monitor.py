"""`ctit monitor` over a large audit log: wall time and peak memory.

Run by hand, not by the tests:
    .venv/bin/python benchmarks/bench_monitor.py [--rows 1000000] [--skip-outcomes]

Trains a small model on synthetic patient records (the serving tests' generator), writes its
training reference (X.parquet, oof.parquet), then fills an audit log's `score_inputs` table with
`--rows` episodes (training rows resampled with noise, probabilities from the model; bulk-inserted
with the audit log's own schema, since timing the service's writes is bench_serving's job) and runs
`ctit monitor` in a subprocess: once without outcomes, once joining an outcomes CSV of every
episode (the 1M ids are hashed with the log's salt and joined in SQLite). Reports wall time, rows/s,
the child's peak RSS, and three baselines: the fixed cost (the same command over 1,000 rows:
start-up, imports, the model), the I/O floor (one SQLite scan reading every feature blob,
`SELECT sum(length(features))`), and the size of the feature matrix as float32 (what holding the
whole log in memory would take at the least).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _shared import serving_fixtures

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.cohort import cohort_from_tables  # noqa: E402
from serving.http.audit import AuditLog, feature_set_id, salted_hash  # noqa: E402
from serving.request.records import RecordBatch, validate_record  # noqa: E402

SALT = "bench-salt"


def fill_audit(path: Path, model, X_ref: np.ndarray, rows: int, seed: int = 0) -> float:
    """`rows` episodes in score_inputs; returns seconds spent."""
    start = time.perf_counter()
    AuditLog(path, salt=SALT, synchronous="NORMAL").close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    names = model.feature_names
    set_id = feature_set_id(names)
    import json

    db.execute("INSERT OR IGNORE INTO feature_sets VALUES (?, ?)", (set_id, json.dumps(names)))
    rng = np.random.default_rng(seed)
    info = model.info
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    chunk = 100_000
    for start_row in range(0, rows, chunk):
        n = min(chunk, rows - start_row)
        X = X_ref[rng.integers(0, len(X_ref), n)].astype(np.float32)
        X = X + rng.normal(0, 0.05, X.shape).astype(np.float32) * np.nan_to_num(np.abs(X))
        pred = model.predict_matrix(X, interval=False)
        seconds = rng.integers(0, 300 * 86400, n)
        times = [
            (base + dt.timedelta(seconds=int(s))).isoformat(timespec="microseconds")
            for s in seconds
        ]
        db.executemany(
            "INSERT INTO score_inputs (time, model_name, model_version, episode_hash, probability,"
            " margin, feature_set, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    times[i],
                    info["name"],
                    info["version"],
                    salted_hash(SALT.encode(), f"E{start_row + i}"),
                    float(pred["probability"][i]),
                    float(pred["margin"][i]),
                    set_id,
                    X[i].tobytes(),
                )
                for i in range(n)
            ),
        )
        db.commit()
    db.close()
    return time.perf_counter() - start


def io_floor(path: Path) -> float:
    start = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("SELECT sum(length(features)) FROM score_inputs").fetchone()
    db.close()
    return time.perf_counter() - start


def run_monitor(argv: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak RSS MB of the child, exit code, last output lines)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CTIT_AUDIT_SALT": SALT}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ctit", "monitor", *argv], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-4:])
    return seconds, max(peak, before) / 1024, done.returncode, tail


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-outcomes", action="store_true")
    args = parser.parse_args()
    fixtures = serving_fixtures()
    records, y = fixtures.synthetic_records(400, seed=3)
    model = fixtures.build_model(records, y, n_folds=3)
    batch = RecordBatch.from_requests([validate_record(r) for r in records], keep_ids=True)
    X = model.pipeline.transform(cohort_from_tables(batch.tables))
    with tempfile.TemporaryDirectory(prefix="ctit-bench-monitor-") as tmp:
        tmp_path = Path(tmp)
        model_dir = model.save(tmp_path / "model")
        ref = tmp_path / "reference"
        ref.mkdir()
        X.to_parquet(ref / "X.parquet")
        raw = model.booster.inplace_predict(X.to_numpy(np.float32))
        pd.DataFrame({"repeat": 0, "p_xgb_raw": raw}).to_parquet(ref / "oof.parquet")
        audit = tmp_path / "audit.db"
        k = len(model.feature_names)
        small = tmp_path / "small.db"
        fill_audit(small, model, X.to_numpy(np.float32), 1000)
        fixed_s, fixed_mb, _, _ = run_monitor(
            ["--model", str(model_dir), "--audit", str(small), "--reference", str(ref),
             "--no-mlflow", "--out", str(tmp_path / "s.html")]
        )  # fmt: skip
        print(f"baseline fixed cost (ctit monitor over 1,000 rows: start-up, imports, model): "
              f"{fixed_s:.1f} s, peak RSS {fixed_mb:,.0f} MB")  # fmt: skip
        fill_s = fill_audit(audit, model, X.to_numpy(np.float32), args.rows)
        size_mb = audit.stat().st_size / 1e6
        print(f"audit log: {args.rows:,} episodes x {k} features, {size_mb:,.0f} MB "
              f"(filled in {fill_s:.0f} s)")  # fmt: skip
        floor = io_floor(audit)
        matrix_mb = args.rows * k * 4 / 1e6
        common = ["--model", str(model_dir), "--audit", str(audit), "--reference", str(ref),
                  "--no-mlflow"]  # fmt: skip
        seconds, peak, code, tail = run_monitor([*common, "--out", str(tmp_path / "m.html")])
        print(f"ctit monitor (no outcomes): {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s, "
              f"peak RSS {peak:,.0f} MB, exit {code}")  # fmt: skip
        print(f"  above the fixed cost: {seconds - fixed_s:.1f} s "
              f"({args.rows / max(seconds - fixed_s, 1e-9):,.0f} rows/s), "
              f"{peak - fixed_mb:,.0f} MB")  # fmt: skip
        print(f"  baseline I/O floor (one scan of every blob): {floor:.1f} s -> "
              f"{seconds / floor:.1f}x the floor")  # fmt: skip
        print(f"  baseline feature matrix as float32: {matrix_mb:,.0f} MB -> peak RSS is "
              f"{peak / matrix_mb:.2f}x it")  # fmt: skip
        if code not in (0, 1):
            print(tail)
            return 1
        if not args.skip_outcomes:
            outcomes = tmp_path / "outcomes.csv"
            rng = np.random.default_rng(1)
            pd.DataFrame(
                {"episode_id": [f"E{i}" for i in range(args.rows)],
                 "response": (rng.random(args.rows) < 0.6).astype(int)}
            ).to_csv(outcomes, index=False)  # fmt: skip
            seconds, peak_o, code, tail = run_monitor(
                [*common, "--outcomes", str(outcomes), "--out", str(tmp_path / "o.html")]
            )
            print(f"ctit monitor --outcomes ({args.rows:,} joined): {seconds:.1f} s, "
                  f"peak RSS {peak_o:,.0f} MB, exit {code}")  # fmt: skip
            if code not in (0, 1):
                print(tail)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
