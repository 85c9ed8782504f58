"""Shared fixtures: one small, schema-valid synthetic cohort (no real patient data).

The cohort has mixed units, LOINC codes and aliases, missing values, a rare subtype and a patient
with two CTIT episodes whose second regimen history includes the first.
"""

import errno
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn


def make_tables() -> dict[str, pd.DataFrame]:
    """Return the small synthetic cohort as raw contract tables, as a CSV would hold them."""
    patients = pd.DataFrame(
        {
            "patient_id": ["P-a1", "P-b2", "P-c3", "P-d4"],
            "sex": ["F", "F", "F", "F"],
            "birth_date": ["1973-05-02", "1960-01-15", "1985-11-30", "1968-07-07"],
            "race": ["Asian", "White", "Asian", "Black"],
            "site": ["north", "north", "south", "south"],
            "ecog": [1, 0, 2, None],
            "subtype": ["HER2+", "HR+/HER2-", "TNBC", "HR+/HER2-"],
            "bone_mets": ["true", "false", "1", "0"],
            "liver_mets": ["false", "true", "0", None],
            "marrow_involvement": ["false", "false", "true", "false"],
            "splenomegaly": ["false", "false", "false", "false"],
            "prior_radiotherapy": ["false", "true", "false", "false"],
        }
    )
    episodes = pd.DataFrame(
        {
            "episode_id": ["E-1", "E-2", "E-3", "E-4", "E-5"],
            "patient_id": ["P-a1", "P-b2", "P-c3", "P-d4", "P-a1"],
            "index_date": ["2024-03-10", "2024-06-01", "2024-07-15", "2025-01-20", "2024-09-01"],
            "dose_mg": [7.5, 5, 7.5, None, 7.5],
        }
    )
    lab_rows = [
        # P-a1, episode E-1 (index 2024-03-10): PLT in 10*3/uL by LOINC, one in /uL
        ("P-a1", "2024-02-18", "777-3", 180, "10*3/uL"),
        ("P-a1", "2024-03-01", "PLT", 90, "10^9/L"),
        ("P-a1", "2024-03-09T08:00:00", "777-3", 42000, "/uL"),
        ("P-a1", "2024-03-09T08:00:00", "718-7", 10.5, "g/dL"),
        ("P-a1", "2024-03-09T08:00:00", "CREA", 0.8, "mg/dL"),
        ("P-a1", "2024-03-09T08:00:00", "ALB", 38, "g/L"),
        ("P-a1", "2024-03-12", "PLT", 70, "10*9/L"),
        ("P-a1", "2024-03-15", "PLT", 110, "K/uL"),
        # P-a1, episode E-5 (index 2024-09-01)
        ("P-a1", "2024-08-20", "PLT", 120, "10*9/L"),
        ("P-a1", "2024-08-30", "PLT", 55, "10*9/L"),
        ("P-a1", "2024-09-05", "PLT", 80, "10*9/L"),
        ("P-a1", "2024-09-12", "PLT", 104, "10*9/L"),
        # P-b2 (index 2024-06-01): baseline on the index date, rise of exactly +50
        ("P-b2", "2024-05-20", "PLT", 150, "10*9/L"),
        ("P-b2", "2024-06-01", "PLT", 30, "10*9/L"),
        ("P-b2", "2024-06-01", "1742-6", 35, "U/L"),
        ("P-b2", "2024-06-01", "TBIL", 1.0, "mg/dL"),
        ("P-b2", "2024-06-01", "FERRITIN", 450, "ng/mL"),
        ("P-b2", "2024-06-08", "PLT", 80, "10*9/L"),
        # P-c3 (index 2024-07-15): responds only on day 15 (outside the 14-day horizon)
        ("P-c3", "2024-07-12", "PLT", 20, "10*9/L"),
        ("P-c3", "2024-07-12", "6690-2", 3.1, "10*3/uL"),
        ("P-c3", "2024-07-12", "751-8", 1.6, "10*3/uL"),
        ("P-c3", "2024-07-20", "PLT", 60, "10*9/L"),
        ("P-c3", "2024-07-30", "PLT", 140, "10*9/L"),
        # P-d4 (index 2025-01-20): no baseline in the 3 days up to index
        ("P-d4", "2025-01-10", "PLT", 60, "10*9/L"),
        ("P-d4", "2025-01-25", "PLT", 120, "10*9/L"),
    ]
    labs = pd.DataFrame(lab_rows, columns=["patient_id", "time", "test", "value", "unit"])
    regimens = pd.DataFrame(
        {
            "patient_id": ["P-a1", "P-a1", "P-a1", "P-b2", "P-c3", "P-c3", "P-d4"],
            "start_date": [
                "2023-10-01",
                "2024-02-20",
                "2024-08-10",
                "2024-05-12",
                "2024-05-01",
                "2024-06-28",
                "2025-01-01",
            ],
            "end_date": [
                "2024-01-15",
                "",
                "",
                "",
                "2024-06-20",
                "",
                "",
            ],
            "drugs": [
                "docetaxel;trastuzumab;pertuzumab",
                "trastuzumab emtansine",
                "trastuzumab deruxtecan",
                "palbociclib;letrozole",
                "gemcitabine;carboplatin",
                "Gemcitabine; Cisplatin",
                "capecitabine",
            ],
            "regimen": ["THP", "T-DM1", "T-DXd", "palbo+AI", "GCb", "GP", "X"],
            "line": [1, 2, 3, 1, 1, 2, None],
            "cycle": [6, 2, 1, 3, 4, 2, 1],
        }
    )
    return {"patients": patients, "episodes": episodes, "labs": labs, "regimens": regimens}


def write_tables(tables: dict[str, pd.DataFrame], directory: Path, fmt: str = "csv") -> Path:
    """Write contract tables into `directory` as CSV or Parquet and return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if fmt == "csv":
            frame.to_csv(directory / f"{name}.csv", index=False)
        else:
            frame.to_parquet(directory / f"{name}.parquet", index=False)
    return directory


@pytest.fixture
def cohort_tables() -> dict[str, pd.DataFrame]:
    return make_tables()


@pytest.fixture
def cohort_dir(tmp_path: Path) -> Path:
    return write_tables(make_tables(), tmp_path / "cohort")


@pytest.fixture(scope="session", autouse=True)
def _stray_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Code that falls back to MLflow's default store writes to a temporary one, never the repo."""
    store = tmp_path_factory.mktemp("mlflow-default") / "mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    yield
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(autouse=True)
def _isolate_process_globals(_stray_mlflow_store: None) -> Iterator[None]:
    """Undo what in-process CLI runs leave behind: MLflow's process-wide URIs and env variables.

    `ctit train` and friends set the tracking URI for their process, as a command should; under
    CliRunner that process is the test session, so one test's store must not leak into the next.
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "CTIT_"))}
    yield
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "CTIT_"))]:
        if key not in saved:
            del os.environ[key]
    os.environ.update(saved)
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if tracking is not None:
        tracking._tracking_uri = None  # MLflow has no public way to unset it
    registry = sys.modules.get("mlflow.tracking._model_registry.utils")
    if registry is not None:
        registry._registry_uri = None


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs("64k")` mounts a tiny tmpfs and returns it, so disk-full errors happen for real.

    Needs root (the test set-up and CI have it); elsewhere the test is skipped. Unmounted after.
    """
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"tmpfs{len(mounts)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def fill_disk() -> Callable[[Path], Path]:
    """`fill_disk(directory)` writes a `filler` file until ENOSPC and returns its path."""

    def fill(directory: Path) -> Path:
        filler = directory / "filler"
        handle = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(handle, b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(handle)
        return filler

    return fill


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`ctit [ARGS] serve` in its own process, its output in a file, until stopped.

    `args` go before `serve` (for example `--verbose`); `env` adds to the environment (the audit
    salt is always set); the audit database is `audit` (default WORKDIR/audit.db).
    """

    def __init__(
        self,
        model_dir: Path,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        audit: Path | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit = audit or workdir / "audit.db"
        self.log_path = workdir / "serve.log"
        self._log = self.log_path.open("wb")
        command = [sys.executable, "-m", "ctit", *args, "serve", "--model", str(model_dir),
                   "--port", str(self.port), "--audit-db", str(self.audit)]  # fmt: skip
        environment = {
            **os.environ,
            "CTIT_AUDIT_SALT": "pepper",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=environment, cwd=workdir
        )
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ctit serve exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ctit serve did not start in time")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()


@pytest.fixture
def serve_process() -> type[ServeProcess]:
    """The `ServeProcess` class: a real `ctit serve` in a subprocess."""
    return ServeProcess


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 (a free port) in a background thread until `stop()`.

    `config` goes to `uvicorn.Config` (e.g. `http=serving.http.app.TimedHttpToolsProtocol`).
    """

    def __init__(self, app, **config: object) -> None:
        options = {"host": "127.0.0.1", "port": 0, "log_level": "warning", **config}
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server() -> type[LiveServer]:
    """The `LiveServer` class: a real uvicorn in a thread of the test process."""
    return LiveServer


TESTS = Path(__file__).resolve().parent


def load_helpers(package: str):
    """The helpers of `tests/<package>/conftest.py` as a module, for tests of another package."""
    spec = importlib.util.spec_from_file_location(
        f"ctit_test_helpers_{package}", TESTS / package / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def serving_helpers():
    """tests/serving/conftest.py as a module: synthetic records and a small model builder."""
    return load_helpers("serving")


@pytest.fixture(scope="session")
def training_helpers():
    """tests/training/conftest.py as a module: the signal cohort writers."""
    return load_helpers("training")


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """Spark local[2] for the tests that ask for it: no UI, loopback only, few shuffle partitions.

    Needs the `spark` extra and Java 17 (`make test` installs both, see scripts/ensure-java).
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from serving.scoring.spark import spark_session

    session = spark_session("local[2]", app_name="ctit-tests")
    session.conf.set("spark.sql.shuffle.partitions", "4")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
