"""FHIR-native scoring route: a FHIR R4 Bundle in, a Bundle of RiskAssessments out.

`POST /fhir/RiskAssessment/$score` (optional `?index_date=YYYY-MM-DD`) reads the body with
`serving.fhir.reader.fhir_to_patient_records`, scores every patient with `request.app.state.scorer`,
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

from serving.fhir.assessment import patient_reference, risk_assessment
from serving.fhir.bundles import is_fhir
from serving.fhir.codes import FhirError
from serving.fhir.reader import fhir_to_patient_records
from serving.http.audit import AuditUnavailable
from serving.http.jsonout import FastJSONResponse
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
    try:
        records, warnings = _records_of(request, raw, index_date)
    except _Refused as refused:
        return refused.response
    audit = getattr(request.app.state, "audit", None)
    if audit is not None and not audit.writable():
        return _audit_unavailable()
    try:
        answers = await run_in_threadpool(request.app.state.scorer.score_batch, records)
    except RecordError as exc:
        return _error(422, "processing", _record_problems(exc, records))
    if audit is not None and answers:
        try:
            await _write_audit(audit, records, answers, hashlib.sha256(raw).hexdigest())
        except AuditUnavailable:
            return _audit_unavailable()
    return FastJSONResponse(_answer_bundle(records, answers, warnings), media_type=FHIR_JSON)


class _Refused(Exception):
    """The body cannot be scored; `response` is the OperationOutcome answer."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def _records_of(
    request: Request, raw: bytes, index_date: dt.date | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The body's scoring records and the adapter's warnings.

    Raises:
        _Refused: the body is not strict JSON (400/422) or not readable FHIR (400).
    """
    state = request.scope.get("state") or {}
    try:  # `serving.http.app.StrictJson` has usually parsed it already
        payload = state["json_body"] if "json_body" in state else loads_strict(raw)
    except JsonRefused as exc:
        raise _Refused(
            _error(
                exc.status,
                "invalid" if exc.status == 400 else "processing",
                [(f"body: {exc.msg}", ".".join(map(str, exc.loc)) or None)],
            )  # fmt: skip
        ) from None
    if not is_fhir(payload):
        raise _Refused(_error(400, "invalid", [("body: not FHIR (no resourceType)", None)]))
    try:
        return fhir_to_patient_records(payload, index_date=index_date)
    except FhirError as exc:
        raise _Refused(_error(400, "invalid", [(str(exc), None)])) from None


def _audit_unavailable() -> JSONResponse:
    return _error(503, "transient", [("the audit log is not writable; nothing is scored", None)])


def _record_problems(
    exc: RecordError, records: list[dict[str, Any]]
) -> list[tuple[str, str | None]]:
    """Each contract problem with its path inside the record and the record's patient."""
    problems = []
    for error in exc.errors:
        loc = [str(part) for part in error["loc"]]
        where = None
        if loc and loc[0].isdigit():
            where = patient_reference(records[int(loc[0])]["patient"]["patient_id"])
            loc = loc[1:]
        problems.append((f"{'.'.join(loc)}: {error['msg']}", where))
    return problems


async def _write_audit(
    audit: Any, records: list[dict[str, Any]], answers: list[dict[str, Any]], digest: str
) -> None:
    """One audit row per answer, under its record's patient and the body's digest."""
    items = [(records[a["record_index"]]["patient"]["patient_id"], digest, [a]) for a in answers]
    await run_in_threadpool(
        audit.record_scores,
        model=answers[0]["model"],
        items=items,
        endpoint=SCORE_PATH,
        caller="fhir",
    )


def _answer_bundle(
    records: list[dict[str, Any]], answers: list[dict[str, Any]], warnings: list[str]
) -> dict[str, Any]:
    """The collection Bundle: one RiskAssessment per answer, then the warnings' outcome."""
    entries = [
        {"resource": risk_assessment(answer, records[answer["record_index"]])} for answer in answers
    ]
    if warnings:
        issues = [("warning", "informational", text, None) for text in warnings]
        entries.append({"resource": _outcome(issues)})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
