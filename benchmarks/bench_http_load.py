"""Bounded load test of `ctit serve` on 127.0.0.1: a fixed count of requests at a fixed concurrency.

Run by hand (`make bench` runs it too), never by the tests:
    .venv/bin/python benchmarks/bench_http_load.py [--requests 2000] [--concurrency 8] [--token T]

Trains a reference-sized model (as bench_serving.py does), starts `ctit serve` in its own process
with a fresh audit log and, when --token is given, a bearer token; then C client threads with
keep-alive connections send REQUESTS scored requests in total (each thread its share, with varied
patients), and stop by themselves (each request has a timeout, the run a deadline). Prints the
throughput, p50/p90/p99/max latency, the errors (any non-200 answer or failed request; must be
zero) and the rows in the audit log afterwards (must equal the requests served).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving  # noqa: E402  (the shared model builder and server helpers)


def run_load(url: str, records: list[dict], requests: int, concurrency: int, headers: dict) -> dict:
    """Send `requests` POST /v1/score calls over `concurrency` threads; return the figures."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 600
    bodies = [json.dumps(r) for r in records]

    def worker(w: int) -> None:
        share = requests // concurrency + (1 if w < requests % concurrency else 0)
        with httpx.Client(timeout=30, headers={**headers, "Content-Type": "application/json"}) as c:
            for i in range(share):
                if time.monotonic() > deadline:
                    with lock:
                        errors.append("deadline reached")
                    return
                body = bodies[(w * 7919 + i) % len(bodies)]
                start = time.perf_counter()
                try:
                    answer = c.post(f"{url}/v1/score", content=body)
                    ok = answer.status_code == 200
                    problem = "" if ok else f"HTTP {answer.status_code}: {answer.text[:200]}"
                except httpx.HTTPError as error:
                    ok, problem = False, f"{type(error).__name__}: {error}"
                latencies[w].append(time.perf_counter() - start)
                if not ok:
                    with lock:
                        errors.append(problem)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ms = np.array([x for per in latencies for x in per]) * 1000
    return {
        "requests": int(ms.size),
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(ms.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "errors": len(errors),
        "first_errors": errors[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1, help="`ctit serve --workers`.")
    parser.add_argument("--token", default="load-test-token", help="Bearer token ('' for none).")
    parser.add_argument("--json", type=Path, help="Also write the figures as JSON here.")
    args = parser.parse_args()

    records, y = bench_serving.serving_fixtures().synthetic_records(args.patients, seed=1)
    model = bench_serving.train_model(records, y, args.trees, args.depth)
    with tempfile.TemporaryDirectory(prefix="ctit-load-") as tmp:
        audit = Path(tmp) / "audit.db"
        env = {**os.environ, "CTIT_AUDIT_DB": str(audit), "CTIT_AUDIT_SALT": "load"}
        env.pop("CTIT_API_TOKEN", None)
        headers = {}
        if args.token:
            env["CTIT_API_TOKEN"] = args.token
            headers["Authorization"] = f"Bearer {args.token}"
        port = bench_serving.free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [str(bench_serving.VENV_BIN / "ctit"), "serve", "--model",
                str(model.save(Path(tmp) / "model")), "--port", str(port), "--no-access-log",
                "--workers", str(args.workers)]  # fmt: skip
        with bench_serving.subprocess_server(argv, env, f"{url}/healthz"):
            figures = run_load(url, records, args.requests, args.concurrency, headers)
        with sqlite3.connect(audit) as db:
            figures["audit_rows"] = db.execute("SELECT count(*) FROM scores").fetchone()[0]
    figures["load_average"] = os.getloadavg()
    print(json.dumps(figures, indent=1))
    verdict = "OK" if figures["errors"] == 0 else "ERRORS"
    served = figures["requests"] - figures["errors"]
    print(
        f"{verdict}: {figures['requests']} requests at concurrency {args.concurrency}: "
        f"{figures['requests_per_s']} req/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} "
        f"ms, {figures['errors']} errors; audit rows {figures['audit_rows']} for {served} served"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    if figures["errors"] or figures["audit_rows"] != served:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
