"""Simulator throughput: patients per second, CPU time and peak memory at 1k, 10k and 100k patients.

Run by hand: `.venv/bin/python benchmarks/bench_simulator.py [sizes...]`. Each size runs in a fresh
process so the peak resident memory (ru_maxrss of the process and its workers) is its own. The
1-minute load average before and after each size is printed beside it: on a shared machine the
wall-clock figures are only comparable at a similar load; the CPU seconds (user + system, of the
process and its worker processes) hardly depend on it, and CPU / 2 is about the wall time on two
free cores.
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
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
peak = max(me.ru_maxrss, kids.ru_maxrss) / 1024
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"n": n, "seconds": dt, "cpu": cpu, "episodes": s.n_episodes,
                  "lab_rows": s.n_lab_rows, "peak_mb": peak}))
"""


# Named baselines (seconds at 100,000 patients): the simulator before the population model
# (issue 13: "now 22 s"), the population model before the speed work of issue 13 (wall at load
# about 5; CPU seconds of the same code in a later run at load 8-10) and the target
# (wall, two cores).
BASELINE_100K_SECONDS = 22.0
POPULATION_MODEL_100K_SECONDS = 239.2
POPULATION_MODEL_100K_CPU_SECONDS = 138.7
TARGET_100K_SECONDS = 120.0


def main(sizes: list[int]) -> None:
    print(
        f"{'patients':>9} {'seconds':>8} {'CPU s':>7} {'patients/s':>11} {'episodes':>9} "
        f"{'lab rows':>11} {'peak MB':>8} {'load before/after':>18}"
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
            f"{n:>9,} {r['seconds']:>8.1f} {r['cpu']:>7.1f} {n / r['seconds']:>11,.0f} "
            f"{r['episodes']:>9,} "
            f"{r['lab_rows']:>11,} {r['peak_mb']:>8,.0f} "
            f"{load_before:>9.2f}/{os.getloadavg()[0]:<8.2f}"
        )
        if n == 100_000:
            verdict = "met" if r["seconds"] <= TARGET_100K_SECONDS else "missed"
            print(
                f"  100k: {r['seconds']:.1f} s wall, target {TARGET_100K_SECONDS:g} s {verdict} "
                f"(compare at a similar load); {r['cpu']:.1f} s CPU, about "
                f"{r['cpu'] / 2:.0f} s on two free cores. Before: "
                f"{POPULATION_MODEL_100K_SECONDS:g} s wall, "
                f"{POPULATION_MODEL_100K_CPU_SECONDS:g} s CPU (population model before the speed "
                f"work); {BASELINE_100K_SECONDS:g} s before the population model"
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1_000, 10_000, 100_000])
