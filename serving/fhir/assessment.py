"""Scores back to FHIR: one answer of `Scorer.score` and its record as an R4 RiskAssessment."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from data.units import canonical_test
from serving.fhir.codes import RISK_PROBABILITY, parse_when

_QUALITATIVE = {"low": "low", "intermediate": "moderate", "moderate": "moderate", "high": "high"}


def risk_assessment(
    score: Mapping[str, Any],
    record: Mapping[str, Any],
    *,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment (status final) for one answer of `Scorer.score` and its record.

    `basis` references the Observations the record came from (lab rows with a `source`) dated on
    or before the index date; `method` names the model and its version.
    """
    model = score.get("model") or {}
    name, version = str(model.get("name", "ctit")), str(model.get("version", "unknown"))
    patient_id = record["patient"]["patient_id"]
    episode = _scored_episode(record, score.get("episode_id"))
    index_date = str(episode["index_date"])
    prediction = _prediction(score, model.get("label_definition"))
    when = (occurred_at or datetime.now(UTC)).astimezone(UTC)
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "identifier": [{"system": "urn:ctit:episode", "value": str(episode["episode_id"])}],
        "subject": subject_of(patient_id),
        "occurrenceDateTime": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "method": {
            "coding": [{"system": "urn:ctit:model", "code": name, "version": version}],
            "text": f"{name} {version}",
        },
        "prediction": [prediction, *_by_day_predictions(score, prediction)],
    }
    basis = _basis(record, index_date)
    if basis:
        resource["basis"] = basis
    notes = _notes(score, index_date)
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    return resource


def _prediction(score: Mapping[str, Any], label: Any) -> dict[str, Any]:
    """The main prediction: the probability of response, its band and the top factors."""
    probability = float(score["probability"])
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability {probability} is outside [0, 1]")
    prediction: dict[str, Any] = {
        "outcome": {"text": "Platelet response to hetrombopag" + (f" ({label})" if label else "")},
        "probabilityDecimal": round(probability, 4),
    }
    band = score.get("band")
    if isinstance(band, str):
        qualitative: dict[str, Any] = {"text": band}
        if band in _QUALITATIVE:
            qualitative["coding"] = [{"system": RISK_PROBABILITY, "code": _QUALITATIVE[band]}]
        prediction["qualitativeRisk"] = qualitative
    factors = [_plain(f) for f in score.get("top_factors") or []]
    if factors:
        prediction["rationale"] = "Top factors: " + "; ".join(factors)
    return prediction


def _notes(score: Mapping[str, Any], index_date: str) -> list[str]:
    """The index date with the interval and what it means, then every warning."""
    notes = []
    interval = score.get("interval")
    if isinstance(interval, list | tuple) and len(interval) == 2:
        level = score.get("interval_level")
        what = (
            f"{float(level):.0%} interval for the probability"
            if isinstance(level, int | float)
            else "Uncertainty interval"
        )
        how = (
            "patient bootstrap of the training procedure; not a range for the outcome"
            if isinstance(level, int | float)
            else "spread of the cross-validation fold models"
        )
        notes.append(
            f"Index date {index_date}. {what} {float(interval[0]):.2f}"
            f"-{float(interval[1]):.2f} ({how})."
        )
    notes += [f"Warning: {_plain(w)}" for w in score.get("warnings") or []]
    return notes


#: Days after the index date with their own prediction (besides the label horizon) when the
#: answer has `response_by_day`.
BY_DAY_HORIZONS = (7,)


def _days(value: int) -> dict[str, Any]:
    return {"value": value, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}


def _by_day_predictions(score: Mapping[str, Any], main: dict[str, Any]) -> list[dict[str, Any]]:
    """One prediction per horizon: `main` (response by the label horizon) gets its `whenRange`
    (days 1..horizon after the index date); each earlier day of `BY_DAY_HORIZONS` is added with
    P(response by that day) from `response_by_day`."""
    curve = score.get("response_by_day")
    if not isinstance(curve, list | tuple) or not curve:
        return []
    horizon = len(curve)
    main["whenRange"] = {"low": _days(1), "high": _days(horizon)}
    out = []
    for day in BY_DAY_HORIZONS:
        if day < horizon:
            out.append(
                {
                    "outcome": {"text": f"Platelet response to hetrombopag by day {day}"},
                    "probabilityDecimal": round(float(curve[day - 1]), 4),
                    "whenRange": {"low": _days(1), "high": _days(day)},
                }
            )
    return out


#: A FHIR resource id (R4 `id` datatype).
FHIR_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
PATIENT_ID_SYSTEM = "urn:ctit:patient-id"


def patient_reference(patient_id: Any) -> str:
    """`Patient/<id>` when the id is a valid FHIR id, else `Patient/<SHA-256 of it>` (64 hex)."""
    text = str(patient_id)
    if FHIR_ID.fullmatch(text):
        return f"Patient/{text}"
    return f"Patient/{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()}"


def subject_of(patient_id: Any) -> dict[str, Any]:
    """A valid FHIR Reference to the patient: the id itself when it is a valid FHIR id; else a
    hashed id plus an `identifier` element holding the id as given (any string is allowed
    there)."""
    text = str(patient_id)
    reference: dict[str, Any] = {"reference": patient_reference(text)}
    if not FHIR_ID.fullmatch(text):
        reference["identifier"] = {"system": PATIENT_ID_SYSTEM, "value": text}
    return reference


def _scored_episode(record: Mapping[str, Any], episode_id: Any) -> Mapping[str, Any]:
    """The record's episode the answer is about: `episode`, or the match in `episodes`."""
    candidates = (
        [record["episode"]] if record.get("episode") else list(record.get("episodes") or [])
    )
    if len(candidates) == 1:
        return candidates[0]
    for episode in candidates:
        if str(episode.get("episode_id")) == str(episode_id):
            return episode
    raise ValueError(f"the record has no episode {episode_id!r}")


def _basis(record: Mapping[str, Any], index_date: str) -> list[dict[str, str]]:
    """References to the model-analyte Observations dated up to the index date.

    A resource known only by a bundle-local `urn:uuid:` fullUrl is named by display text, since
    that reference would dangle outside its bundle.
    """
    cutoff = parse_when(index_date)
    basis: list[dict[str, str]] = []
    seen: set[str] = set()
    for row in record.get("labs") or []:
        source = row.get("source")
        when = parse_when(str(row.get("time", "")))
        analyte = canonical_test(row.get("test"))
        if not isinstance(source, str) or source in seen or analyte is None:
            continue
        if cutoff is not None and when is not None and when.date() > cutoff.date():
            continue
        seen.add(source)
        if source.startswith("urn:"):
            basis.append(
                {"display": f"{analyte} {row.get('value')} {row.get('unit')} {row['time']}"}
            )
        else:
            basis.append({"reference": source})
    return basis


def _plain(item: Any) -> str:
    """A factor or warning as plain text (strings as they are; dicts by their text fields)."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        for key in ("text", "message", "description", "label"):
            if isinstance(item.get(key), str):
                return item[key]
        return ", ".join(f"{k}: {v}" for k, v in item.items())
    return str(item)
