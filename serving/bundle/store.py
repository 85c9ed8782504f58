"""The saved form of a model bundle: files with a manifest of their SHA-256 digests.

`write_bundle` writes the files and the manifest; `read_bundle` reads them back, checking every
digest, and raises `ModelLoadError` naming the URI (or path) and the file that is wrong.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT = "ctit-deployable"
FORMAT_VERSION = 1


class ModelLoadError(RuntimeError):
    """A model cannot be loaded: missing, not a ctit model, or corrupted. Names the URI or path."""


def dumps(value: Any) -> bytes:
    """JSON bytes of a bundle file (numpy values and timestamps as plain JSON)."""
    return json.dumps(value, indent=1, sort_keys=True, default=_json_default).encode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_bundle(directory: str | Path, blobs: Mapping[str, bytes], n_folds: int) -> Path:
    """Write `blobs` (file name -> bytes) and their manifest to `directory`; returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        (directory / name).write_bytes(blob)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_folds": n_folds,
        "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
    }
    (directory / "manifest.json").write_bytes(dumps(manifest))
    return directory


def read_bundle(directory: str | Path, where: str) -> dict[str, bytes]:
    """Every file the manifest of `directory` lists, checked against its digest.

    Raises:
        ModelLoadError: naming `where` and what is wrong (no directory, no manifest, another
            format, a missing or corrupted file).
    """
    directory = Path(directory)
    manifest = _manifest(directory, where)
    blobs: dict[str, bytes] = {}
    for name, digest in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"model {where}: file {name} is missing")
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ModelLoadError(
                f"model {where}: file {name} is corrupted (SHA-256 differs from the manifest)"
            )
        blobs[name] = blob
    return blobs


def _manifest(directory: Path, where: str) -> dict[str, Any]:
    manifest_path = directory / "manifest.json"
    if not directory.is_dir():
        raise ModelLoadError(f"model {where}: no such directory")
    if not manifest_path.is_file():
        raise ModelLoadError(f"model {where}: not a ctit deployable model (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except ValueError as exc:
        raise ModelLoadError(f"model {where}: manifest.json is corrupted ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"model {where}: unsupported format {manifest.get('format')!r} "
            f"version {manifest.get('format_version')!r} (this code reads {FORMAT} "
            f"version {FORMAT_VERSION})"
        )
    return manifest
