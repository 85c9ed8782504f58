"""Tracking faults with a real MLflow server on 127.0.0.1: unreachable at start, killed mid-run.

Either way training stops with a clear error and nothing is left registered (no orphan version).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ctit.cli import app
from data.cohort import load_cohort
from data.simulator import SimulationConfig, simulate_cohort
from training.config import parse_experiment
from training.run import train_experiment
from training.tracking import TrackingSettings

TINY = {
    "name": "tiny-faults",
    "model": {"n_trials": 1, "max_rounds": 40, "early_stopping_rounds": 10, "n_jobs": 1},
    "validation": {"n_splits": 3, "n_repeats": 1},
    "evaluation": {"n_bootstrap": 50, "n_bootstrap_subgroup": 50, "shap_sample": 50},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a SQLite store, in its own process group."""

    def __init__(self, directory: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        command = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(directory / "artifacts"), "--workers", "1"]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=directory,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.skip("mlflow server did not start here")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    simulate_cohort(SimulationConfig(n_patients=120, seed=8, workers=1), out)
    return out


def test_unreachable_server_stops_training_at_once(tiny_cohort: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    result = CliRunner().invoke(
        app,
        ["train", "experiments/baseline.toml", "--cohort", str(tiny_cohort),
         "--tracking-uri", url],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "unreachable" in said and "nothing was trained or registered" in said
    assert "Traceback" not in result.output


def test_server_killed_mid_run_leaves_no_registered_version(
    tiny_cohort: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = _free_port()
    server = MlflowServer(tmp_path, port)
    settings = TrackingSettings(
        tracking_uri=server.url, experiment_name="faults", registered_model="ctit-faults"
    )
    killed = []

    def observer(stage: str, positions) -> None:
        if stage == "final:calibrator" and not killed:  # models fitted, nothing logged yet
            server.kill()
            killed.append(stage)

    config = parse_experiment(TINY)  # outside the raises block: a bad config must not pass
    cohort = load_cohort(tiny_cohort)
    try:
        with pytest.raises(Exception) as failure:
            train_experiment(config, cohort, settings, observer=observer)
    finally:
        server.kill()
    assert killed, f"the server was never killed; training failed first: {failure.value!r}"
    assert "Traceback" not in str(failure.value)
    assert "connect" in str(failure.value).lower() or "max retries" in str(failure.value).lower()

    restarted = MlflowServer(tmp_path, port)  # the same store, back up
    try:
        client = MlflowClient(tracking_uri=restarted.url, registry_uri=restarted.url)
        assert client.search_registered_models() == [] or all(
            not client.search_model_versions(f"name='{m.name}'")
            for m in client.search_registered_models()
        )
    finally:
        restarted.kill()
