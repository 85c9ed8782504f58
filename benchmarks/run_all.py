"""`make bench`: every benchmark in turn, each printing its figures and ratios against its baseline.

Benchmarks measure speed and memory on this machine; the tests never assert wall-clock times.
Pass names to run a subset: `.venv/bin/python benchmarks/run_all.py serving http_load`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: name -> arguments; the defaults are the sizes the issues name.
BENCHMARKS: dict[str, list[str]] = {
    "load": [],
    "simulator": [],
    "features": [],
    "training": [],
    "serving": [],
    "http_load": [],
    "interval": [],
    "monitor": [],
    "spark": [],
}


def main(names: list[str]) -> int:
    chosen = names or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in chosen:
        print(f"\n=== bench_{name} (load average {os.getloadavg()[0]:.2f}) ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py"), *BENCHMARKS[name]])
        print(f"=== bench_{name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
