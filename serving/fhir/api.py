"""FHIR-native scoring route: a FHIR R4 Bundle in, a Bundle of RiskAssessments out.

`POST /fhir/RiskAssessment/$score` (optional `?index_date=YYYY-MM-DD`) reads the body with
`serving.fhir.fhir_to_patient_records`, scores every patient with `request.app.state.scorer`,
and answers a `collection` Bundle: one RiskAssessment per patient, then an OperationOutcome with
the adapter's warnings (severity `warning`). Bad input is an OperationOutcome with severity
`error`: 400 when the body is not readable FHIR, 422 when a record breaks the cohort contract.
Every score is written to the audit log. The router is included in `serving.fhir.cds_hooks.router`,
which `create_app` mounts with the service's token check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from serving.fhir.convert import (
    FhirError,
    fhir_to_patient_records,
    is_fhir,
    patient_reference,
    risk_assessment,
)
from serving.http.audit import AuditUnavailable
from serving.request.jsonin import JsonRefused, loads_strict
from serving.request.records import RecordError

router = APIRouter(tags=["FHIR"])

SCORE_PATH = "/fhir/RiskAssessment/$score"
FHIR_JSON = "application/fhir+json"


def _outcome(issues: list[tuple[str, str, str, str | None]]) -> dict[str, Any]:
    """An OperationOutcome from (severity, code, diagnostics, expression) tuples."""
    out = []
    for severity, code, diagnostics, expression in issues:
        issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
        if expression:
            issue["expression"] = [expression]
        out.append(issue)
    return {"resourceType": "OperationOutcome", "issue": out}


def _error(status: int, code: str, issues: list[tuple[str, str | None]]) -> JSONResponse:
    outcome = _outcome([("error", code, text, where) for text, where in issues])
    return JSONResponse(outcome, status_code=status, media_type=FHIR_JSON)


_BODY_SCHEMA = {
    "type": "object",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}},
}


@router.post(
    SCORE_PATH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A FHIR R4 Bundle (or one resource) with Patient, Observation, "
            "MedicationStatement/MedicationRequest and Condition resources.",
            "content": {
                FHIR_JSON: {"schema": _BODY_SCHEMA},
                "application/json": {"schema": _BODY_SCHEMA},
            },
        }
    },
    responses={
        200: {
            "description": "A collection Bundle: one RiskAssessment per patient, then an "
            "OperationOutcome with the adapter's warnings.",
            "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        }
    },
)
async def score_fhir(
    request: Request,
    index_date: dt.date | None = Query(
        None,
        description="First hetrombopag dose; else a draft or active hetrombopag order's "
        "authoredOn, else today (with a warning).",
    ),
) -> JSONResponse:
    """Score a FHIR R4 Bundle (or list of resources): one RiskAssessment per patient."""
    raw = await request.body()
    state = request.scope.get("state") or {}
    try:  # `serving.http.app.StrictJson` has usually parsed it already
        payload = state["json_body"] if "json_body" in state else loads_strict(raw)
    except JsonRefused as exc:
        return _error(exc.status, "invalid" if exc.status == 400 else "processing",
                      [(f"body: {exc.msg}", ".".join(map(str, exc.loc)) or None)])  # fmt: skip
    if not is_fhir(payload):
        return _error(400, "invalid", [("body: not FHIR (no resourceType)", None)])
    try:
        records, warnings = fhir_to_patient_records(payload, index_date=index_date)
    except FhirError as exc:
        return _error(400, "invalid", [(str(exc), None)])
    audit = getattr(request.app.state, "audit", None)
    if audit is not None and not audit.writable():
        return _error(
            503, "transient", [("the audit log is not writable; nothing is scored", None)]
        )
    scorer = request.app.state.scorer
    try:
        answers = await run_in_threadpool(scorer.score_batch, records)
    except RecordError as exc:
        problems = []
        for error in exc.errors:
            loc = [str(part) for part in error["loc"]]
            where = None
            if loc and loc[0].isdigit():
                where = patient_reference(records[int(loc[0])]["patient"]["patient_id"])
                loc = loc[1:]
            problems.append((f"{'.'.join(loc)}: {error['msg']}", where))
        return _error(422, "processing", problems)
    digest = hashlib.sha256(raw).hexdigest()
    if audit is not None and answers:
        items = [
            (records[a["record_index"]]["patient"]["patient_id"], digest, [a]) for a in answers
        ]
        try:
            await run_in_threadpool(
                audit.record_scores,
                model=answers[0]["model"],
                items=items,
                endpoint=SCORE_PATH,
                caller="fhir",
            )
        except AuditUnavailable:
            return _error(
                503, "transient", [("the audit log is not writable; nothing is scored", None)]
            )
    entries = [
        {"resource": risk_assessment(answer, records[answer["record_index"]])} for answer in answers
    ]
    if warnings:
        issues = [("warning", "informational", text, None) for text in warnings]
        entries.append({"resource": _outcome(issues)})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return JSONResponse(bundle, media_type=FHIR_JSON)
