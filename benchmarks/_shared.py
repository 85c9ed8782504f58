"""Helpers the benchmarks share (run as scripts: `benchmarks/` is on their import path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def serving_fixtures() -> ModuleType:
    """tests/serving/conftest.py as a module: the synthetic patient records and the small model
    builder that the serving tests use, so benchmarks and tests measure the same inputs."""
    spec = importlib.util.spec_from_file_location(
        "serving_fixtures", ROOT / "tests" / "serving" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
