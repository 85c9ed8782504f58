"""FastAPI's native OpenTelemetry follows `ServingSettings.telemetry`: with a tracer provider
configured in the process, requests make spans only when the setting is on (off by default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import ServingSettings

pytest.importorskip("fastapi.telemetry", reason="FastAPI < 0.165 has no native telemetry")

# In a child process: the tracer provider is process-wide and cannot be set twice.
_SCRIPT = """
import sys
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serving.http.app import create_app
from serving.settings import ServingSettings

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
environ = {"CTIT_TELEMETRY": sys.argv[3]} if sys.argv[3] else {}
settings = ServingSettings.from_env(environ, model_uri=sys.argv[1], audit_path=sys.argv[2])
with TestClient(create_app(settings)) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/model").status_code == 200
print(len(exporter.get_finished_spans()))
"""


@pytest.mark.parametrize(("value", "spans"), [("", False), ("0", False), ("1", True)])
def test_spans_only_when_telemetry_is_on(
    model_dir: Path, tmp_path: Path, value: str, spans: bool
) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(model_dir), str(tmp_path / "audit.db"), value],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count = int(done.stdout.strip().splitlines()[-1])
    assert (count > 0) == spans, count


def test_telemetry_is_off_by_default() -> None:
    assert ServingSettings(model_uri="m").telemetry is False
    assert ServingSettings.from_env({"CTIT_TELEMETRY": "true"}, model_uri="m").telemetry is True
