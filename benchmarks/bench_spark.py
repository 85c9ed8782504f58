"""Scores on Spark local[2] beside the single-process `ctit score`, on simulated cohorts, plus a
paper estimate of a 10-node cluster for 100M episodes (run by hand, not by the tests).

    .venv/bin/python benchmarks/bench_spark.py [--n 100000,1000000] [--work DIR] [--keep]
        [--cores-per-node 16] [--nodes 10] [--target-episodes 100000000]

For each size: `ctit simulate` writes the cohort (CSV, reused from --work when present); a small
reference model is trained on synthetic records (the serving tests' generator); then, each in its
own process, `ctit score COHORT --out local.csv` and
`ctit score --engine spark --master local[2] COHORT --out spark.parquet` are timed. Peak memory
is the sum of the resident memory of the command's process tree (driver JVM and Python workers
included), sampled every 0.2 s. Rates are episodes per second and input rows (all tables) per
second. The cluster estimate divides the target by the measured Spark rate per core (wall time x
2 cores, so it includes the JVM start and the per-job overheads) times the cluster's cores: a
paper figure that assumes linear scaling and a cluster that reads its input as fast as local
disk; it says nothing about network shuffles or skew.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _shared import serving_fixtures

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
CORES = 2  # local[2]


def _model(work: Path) -> Path:
    target = work / "model"
    if not (target / "manifest.json").is_file():
        fixtures = serving_fixtures()
        records, y = fixtures.synthetic_records(600, seed=3)
        fixtures.build_model(records, y, n_folds=3).save(target)
    return target


def _tree_rss_kb(root: int) -> int:
    """Resident memory (kB) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm", encoding="utf-8") as handle:
                pages = int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE") // 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


def _run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident GB of the process tree) of a command that must succeed."""
    print(f"running {Path(command[0]).name} {command[1]} (load average {os.getloadavg()[0]:.1f})",
          flush=True)  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_kb(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    if process.returncode:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}")
    return wall, peak / 1024 / 1024


def _rows(cohort: Path) -> tuple[int, int]:
    """(episodes, input rows of all contract tables) of a simulated CSV cohort."""
    counts = {}
    for name in ("patients", "episodes", "labs", "regimens", "transfusions"):
        with open(cohort / f"{name}.csv", "rb") as handle:
            counts[name] = (
                sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b"")) - 1
            )
    return counts["episodes"], sum(counts.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100000,1000000", help="simulated patients, comma-separated")
    parser.add_argument("--work", type=Path, default=None, help="keep cohorts and outputs here")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (with --work)")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--cores-per-node", type=int, default=16)
    parser.add_argument("--target-episodes", type=float, default=100e6)
    parser.add_argument("--skip-local", action="store_true", help="Spark only")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ctit-bench-spark-"))
    work.mkdir(parents=True, exist_ok=True)
    model = _model(work)
    ctit = str(VENV_BIN / "ctit")
    results = []
    for n in [int(x) for x in args.n.split(",") if x]:
        cohort = work / f"sim-{n}"
        if not (cohort / "labs.csv").is_file():
            wall, _ = _run([ctit, "simulate", "--out", str(cohort), "--n-patients", str(n),
                            "--oracle-draws", "4", "--no-check"])  # fmt: skip
            print(f"simulated {n:,} patients in {wall:.0f} s", flush=True)
        episodes, rows = _rows(cohort)
        row = {"patients": n, "episodes": episodes, "rows": rows}
        if not args.skip_local:
            out = work / f"local-{n}.csv"
            row["local"] = _run(
                [ctit, "score", "--model", str(model), str(cohort), "--out", str(out)]
            )
        out = work / f"spark-{n}.parquet"
        row["spark"] = _run([ctit, "score", "--engine", "spark", "--master", f"local[{CORES}]",
                             "--model", str(model), str(cohort), "--out", str(out)])  # fmt: skip
        if not args.keep:
            for path in (work / f"local-{n}.csv", out):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                    missing_ok=True
                )
        results.append(row)
        _table(results)
    best = max(results, key=lambda r: r["episodes"])
    per_core = best["episodes"] / (best["spark"][0] * CORES)
    rows_per_core = best["rows"] / (best["spark"][0] * CORES)
    cores = args.nodes * args.cores_per_node
    seconds = args.target_episodes / (per_core * cores)
    print(
        f"\npaper estimate: {args.target_episodes:,.0f} episodes on {args.nodes} nodes x "
        f"{args.cores_per_node} cores = {cores} cores at the measured {per_core:,.0f} episodes/s "
        f"per core ({rows_per_core:,.0f} input rows/s per core, {best['patients']:,} patients "
        f"on local[{CORES}]): {seconds / 60:,.0f} min ({seconds / 3600:.1f} h), about "
        f"{args.target_episodes * best['rows'] / best['episodes'] / 1e9:,.1f} billion input rows; "
        "linear scaling assumed"
    )
    return 0


def _table(results: list[dict]) -> None:
    print(f"\n{'patients':>10} {'episodes':>10} {'input rows':>12} {'engine':>10} "
          f"{'wall s':>8} {'episodes/s':>11} {'rows/s':>11} {'peak GB':>8}")  # fmt: skip
    for r in results:
        for engine in ("local", "spark"):
            if engine not in r:
                continue
            wall, peak = r[engine]
            label = "ctit score" if engine == "local" else f"local[{CORES}]"
            print(f"{r['patients']:>10,} {r['episodes']:>10,} {r['rows']:>12,} {label:>10} "
                  f"{wall:>8.0f} {r['episodes'] / wall:>11,.0f} {r['rows'] / wall:>11,.0f} "
                  f"{peak:>8.1f}")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
