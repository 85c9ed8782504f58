"""Shadow scoring: send a cohort's patients to a running scoring service, as an EHR would.

`ctit shadow COHORT --url ...` uses it to score a site's patients through the HTTP service (so
that they reach its audit log, and `ctit monitor` can watch them) without writing a client: one
scoring record per patient (every episode, lab and regimen of that patient), posted in batches
to `/v1/score/batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pandas as pd

_BOOLEAN = ("bone_mets", "liver_mets", "marrow_involvement", "splenomegaly", "prior_radiotherapy")
_INTEGER = ("ecog", "line", "cycle")
_DERIVED = ("classes",)  # computed by the loader from `drugs`


class ShadowError(RuntimeError):
    """The service refused a batch or could not be reached; says which and why."""


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in _DERIVED or value is None:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        if value is pd.NaT:
            continue
        if isinstance(value, pd.Timestamp):
            value = value.date().isoformat() if value == value.normalize() else value.isoformat()
        elif key in _BOOLEAN:
            value = bool(value)
        elif key in _INTEGER and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
    return out


def _rows_by_patient(frame: pd.DataFrame | None) -> dict[str, list[dict[str, Any]]]:
    if frame is None or frame.empty:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for row in frame.to_dict("records"):
        patient = str(row.pop("patient_id"))
        out.setdefault(patient, []).append(_clean(row))
    return out


def cohort_records(cohort: Any) -> Iterator[dict[str, Any]]:
    """One scoring record per patient with at least one episode, in the cohort's patient order."""
    episodes = _rows_by_patient(cohort.episodes)
    labs = _rows_by_patient(cohort.labs)
    regimens = _rows_by_patient(cohort.regimens)
    for row in cohort.patients.to_dict("records"):
        patient = _clean(row)
        patient_id = str(patient["patient_id"])
        if patient_id not in episodes:
            continue
        yield {
            "patient": patient,
            "episodes": episodes[patient_id],
            "labs": labs.get(patient_id, []),
            "regimens": regimens.get(patient_id, []),
        }


def post_records(
    url: str,
    records: Iterator[dict[str, Any]],
    token: str | None = None,
    batch_size: int = 200,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 120.0,
) -> int:
    """Post the records to `{url}/v1/score/batch` (without explanations); the answers received."""
    headers = {"X-Caller": "ctit-shadow"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    answers = 0
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        batch: list[dict[str, Any]] = []

        def send() -> int:
            try:
                reply = client.post("/v1/score/batch", json={"records": batch, "explain": False})
            except httpx.HTTPError as exc:
                raise ShadowError(f"{url}: {type(exc).__name__}: {exc}") from None
            if reply.status_code != 200:
                raise ShadowError(f"{url} answered HTTP {reply.status_code}: {reply.text[:500]}")
            return len(reply.json()["results"])

        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                answers += send()
                if progress is not None:
                    progress(len(batch))
                batch = []
        if batch:
            answers += send()
            if progress is not None:
                progress(len(batch))
    return answers
