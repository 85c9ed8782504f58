"""The service's own routes: health, scoring (one record or a batch) and the model card.

The routes reach the scorer, the settings and the audit log through `request.app.state` (set by
`serving.http.app.create_app`); every answer is written to the audit log before it leaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from serving.fhir.assessment import risk_assessment
from serving.http.access import require_token
from serving.http.audit import AuditLog, AuditUnavailable
from serving.http.jsonout import FastJSONResponse
from serving.request.records import RecordError
from serving.request.schemas import BatchOut, BatchRequest, ErrorOut, ScoreOut, ScoreRequest
from serving.scoring.scorer import Scorer
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

BATCH_PATH = "/v1/score/batch"
# Batches this small are scored on the event loop, like one record (a thread hop costs ~1 ms);
# larger ones in a thread, so health checks are answered meanwhile.
_INLINE_EPISODES = 4
_INLINE_LABS = 400
#: Every status a JSON route may answer besides 200 (stated in the OpenAPI schema).
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Not JSON, nested too deeply, or a bad header"},
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    413: {"model": ErrorOut, "description": "Body or batch too large"},
    422: {
        "model": ErrorOut,
        "description": "The record breaks the contract (paths and reasons; never the value); "
        "also a record without a platelet count on or before the index date (not estimable)",
    },
    500: {"model": ErrorOut, "description": "Internal error (logged without patient data)"},
    503: {"model": ErrorOut, "description": "The audit log is not writable: nothing is scored"},
}
_SECURED = [Depends(require_token)]
_SCORE_ANSWERS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "The answer (JSON), or with `format=fhir` a FHIR R4 "
        "RiskAssessment (application/fhir+json).",
        "content": {"application/fhir+json": {"schema": {"type": "object"}}},
    },
}

router = APIRouter()


async def scorer_of(request: Request) -> Scorer:
    """The service's scorer (`app.state.scorer`); async, so FastAPI does not run it in a thread."""
    return request.app.state.scorer


async def settings_of(request: Request) -> ServingSettings:
    """The service's settings (`app.state.settings`); async, as `scorer_of`."""
    return request.app.state.settings


ScorerDep = Annotated[Scorer, Depends(scorer_of)]
SettingsDep = Annotated[ServingSettings, Depends(settings_of)]


def caller_of(request: Request) -> str:
    """Who called: the `X-Caller` header (an application name) or the client address."""
    named = request.headers.get("x-caller", "").strip()
    if named:
        return "".join(ch for ch in named[:64] if ch.isprintable())
    client = request.client
    return f"{client.host}" if client else "unknown"


def audit_refusal(request: Request, failed: bool = False) -> JSONResponse | None:
    """503 when the audit log cannot take rows (deleted, replaced, closed), else None.

    Nothing is scored while the log is not writable: an answer that is not audited must not
    leave. `failed`: a write was just refused (always answer 503).
    """
    audit: AuditLog | None = getattr(request.app.state, "audit", None)
    if not failed and audit is not None and audit.writable():
        return None
    return JSONResponse(
        {
            "detail": "the audit log is not writable (deleted, replaced or closed); nothing is "
            "scored until it is restored; see the server log"
        },
        status_code=503,
    )


# -- health ----------------------------------------------------------------------------------------


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"model": ErrorOut}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the model is loaded and the audit log answers."""
    scorer: Scorer | None = getattr(request.app.state, "scorer", None)
    audit: AuditLog | None = getattr(request.app.state, "audit", None)
    if scorer is None or audit is None or not audit.check():
        return _not_ready(model_loaded=scorer is not None)
    return JSONResponse({"status": "ready", "model": scorer.model.info})


def _not_ready(model_loaded: bool) -> JSONResponse:
    detail = (
        "not ready: the audit log is not writable (deleted, replaced or closed)"
        if model_loaded
        else "not ready"
    )
    return JSONResponse({"detail": detail}, status_code=503)


# -- scoring ---------------------------------------------------------------------------------------


@router.post(
    "/v1/score",
    tags=["scoring"],
    dependencies=_SECURED,
    response_model=ScoreOut,
    responses=_SCORE_ANSWERS,
)
async def score(
    body: ScoreRequest,
    request: Request,
    scorer: ScorerDep,
    answer_format: Annotated[
        Literal["json", "fhir"],
        Query(
            alias="format",
            description="`fhir` returns the score as a FHIR R4 RiskAssessment resource.",
        ),
    ] = "json",
) -> JSONResponse:
    """Score one patient record with one episode: probability, interval, band, explanation."""
    if (refusal := audit_refusal(request)) is not None:
        return refusal
    try:
        answer = await _score_record(scorer, body)
        resource = _risk_assessment_of(answer, body) if answer_format == "fhir" else None
    except RecordError as exc:
        return _record_error(exc, ["body"])
    except Exception as exc:  # noqa: BLE001 - never let patient data reach a traceback log
        return _internal_error("/v1/score", exc)
    digest = hashlib.sha256(await request.body()).hexdigest()
    items = [(body.patient.patient_id, digest, [answer])]
    if (refusal := await _write_audit(request, answer["model"], items, "/v1/score")) is not None:
        return refusal
    if resource is not None:
        return FastJSONResponse(resource, media_type="application/fhir+json")
    return FastJSONResponse(answer)


@router.post(
    BATCH_PATH,
    tags=["scoring"],
    dependencies=_SECURED,
    response_model=BatchOut,
    responses=_ERRORS,
)
async def score_batch(
    body: BatchRequest, request: Request, scorer: ScorerDep, settings: SettingsDep
) -> JSONResponse:
    """Score several patient records; each answer carries `record_index`."""
    if len(body.records) > settings.max_batch_records:
        return _too_many_records(len(body.records), settings.max_batch_records)
    if (refusal := audit_refusal(request)) is not None:
        return refusal
    try:
        answers = await _score_records(scorer, body)
    except RecordError as exc:
        return _record_error(exc, ["body", "records"])
    except Exception as exc:  # noqa: BLE001 - never let patient data reach a traceback log
        return _internal_error(BATCH_PATH, exc)
    items = _batch_audit_items(body.records, answers)
    if (refusal := await _write_audit(request, scorer.model.info, items, BATCH_PATH)) is not None:
        return refusal
    return FastJSONResponse({"results": answers})


def _small(records: list[Any]) -> bool:
    episodes = sum(len(record.all_episodes()) for record in records)
    labs = sum(len(record.labs or ()) for record in records)
    return episodes <= _INLINE_EPISODES and labs <= _INLINE_LABS


async def _score_record(scorer: Scorer, body: ScoreRequest) -> dict[str, Any]:
    """One record's answer; on the event loop when small, else in a thread (thousands of labs:
    the event loop stays free for health checks meanwhile)."""
    if _small([body]):
        return scorer.score(body)
    return await asyncio.to_thread(scorer.score, body)


async def _score_records(scorer: Scorer, body: BatchRequest) -> list[dict[str, Any]]:
    """A batch's answers; a small batch as quickly as /v1/score (no thread hop), a larger one in
    a thread (it may take long: the event loop stays free for health checks meanwhile)."""
    if _small(body.records):
        return scorer.score_batch(body.records, body.explain)
    return await asyncio.to_thread(scorer.score_batch, body.records, body.explain)


def _risk_assessment_of(answer: dict[str, Any], body: ScoreRequest) -> dict[str, Any]:
    return risk_assessment(answer, body.model_dump(mode="json", exclude_none=True))


def _batch_audit_items(
    records: list[ScoreRequest], answers: list[dict[str, Any]]
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(patient id, SHA-256 of the record's JSON, its answers) for each record of a batch."""
    per_record: dict[int, list[dict[str, Any]]] = {}
    for answer in answers:
        per_record.setdefault(answer["record_index"], []).append(answer)
    items = []
    for i, record in enumerate(records):
        digest = hashlib.sha256(
            record.model_dump_json(exclude_none=True).encode("utf-8")
        ).hexdigest()
        items.append((record.patient.patient_id, digest, per_record.get(i, [])))
    return items


async def _write_audit(
    request: Request, model: dict[str, Any], items: list[Any], endpoint: str
) -> JSONResponse | None:
    """Writes the answers' audit rows; the 503 answer when the log refuses them, else None."""
    try:
        await request.app.state.audit.arecord_scores(
            model=model, items=items, endpoint=endpoint, caller=caller_of(request)
        )
    except AuditUnavailable:
        return audit_refusal(request, failed=True)
    return None


def _too_many_records(given: int, allowed: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"batch of {given} records; at most {allowed} per call"}, status_code=413
    )


def _record_error(exc: RecordError, prefix: list[str | int]) -> JSONResponse:
    detail = [{**error, "loc": [*prefix, *error["loc"]]} for error in exc.errors]
    return JSONResponse({"detail": detail}, status_code=422)


def _internal_error(route: str, exc: Exception) -> JSONResponse:
    # Only the exception type is logged: messages and tracebacks may quote patient data.
    log.error("%s: scoring failed with %s", route, type(exc).__name__)
    return JSONResponse({"detail": "internal error while scoring; see the server log"}, 500)


# -- model -----------------------------------------------------------------------------------------


@router.get("/v1/model", tags=["model"], dependencies=_SECURED)
async def model(request: Request) -> dict[str, Any]:
    """Model identity, metrics, features, risk bands and the training cohort summary."""
    return request.app.state.model_card
