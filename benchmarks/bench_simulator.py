"""Simulator throughput: patients per second and peak memory at 1k, 10k and 100k patients.

Run by hand: `.venv/bin/python benchmarks/bench_simulator.py [sizes...]`. Each size runs in a fresh
process so the peak resident memory (ru_maxrss of the process and its workers) is its own. The
1-minute load average before and after each size is printed beside it: on a shared machine the
figures are only comparable at a similar load.
"""

import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from data.simulator import SimulationConfig, simulate_cohort
n, out = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
s = simulate_cohort(SimulationConfig(n_patients=n, seed=1, workers=2), out)
dt = time.perf_counter() - t0
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
print(json.dumps({"n": n, "seconds": dt, "episodes": s.n_episodes, "lab_rows": s.n_lab_rows,
                  "peak_mb": peak}))
"""


# Named baselines (seconds at 100,000 patients): the simulator before the population model
# (issue 13: "now 22 s") and the target.
BASELINE_100K_SECONDS = 22.0
TARGET_100K_SECONDS = 120.0


def main(sizes: list[int]) -> None:
    print(
        f"{'patients':>9} {'seconds':>8} {'patients/s':>11} {'episodes':>9} {'lab rows':>11} "
        f"{'peak MB':>8} {'load before/after':>18}"
    )
    for n in sizes:
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as out:
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(n), out],
                check=True,
                capture_output=True,
                text=True,
            )
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(
            f"{n:>9,} {r['seconds']:>8.1f} {n / r['seconds']:>11,.0f} {r['episodes']:>9,} "
            f"{r['lab_rows']:>11,} {r['peak_mb']:>8,.0f} "
            f"{load_before:>9.2f}/{os.getloadavg()[0]:<8.2f}"
        )
        if n == 100_000:
            verdict = "met" if r["seconds"] <= TARGET_100K_SECONDS else "missed"
            print(
                f"  100k: {r['seconds'] / BASELINE_100K_SECONDS:.1f}x the previous simulator "
                f"({BASELINE_100K_SECONDS:g} s); target {TARGET_100K_SECONDS:g} s {verdict} "
                "(compare at a similar load)"
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1_000, 10_000, 100_000])
