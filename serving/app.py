"""The HTTP scoring service (FastAPI): score one patient or a batch, describe the model, health.

Routes: POST /v1/score, POST /v1/score/batch, GET /v1/model, GET /healthz, GET /readyz, the
OpenAPI docs (/docs, /openapi.json), and the routers of `serving.cds_hooks` and `serving.web`.

Access: when `ServingSettings.api_token` is set, every route but /healthz needs
`Authorization: Bearer <token>` or the clinician page's session cookie (401 otherwise; a browser
gets a sign-in form): see `serving.access`.

Limits: a body longer than `max_body_bytes` (single) or `max_batch_bytes` (batch) is refused with
413 from its Content-Length before it is read, or as soon as the streamed bytes pass the limit.
Every answer is written to the audit log (durably) before it is returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import cds_hooks, web
from serving.access import AccessGate, token_accepted
from serving.audit import AuditLog
from serving.fhir import risk_assessment
from serving.records import RecordError
from serving.schemas import BatchOut, BatchRequest, ErrorOut, ScoreOut, ScoreRequest
from serving.scorer import Scorer, settle_heap
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

BATCH_PATH = "/v1/score/batch"
# Batches this small are scored on the event loop, like one record (a thread hop costs ~1 ms);
# larger ones in a thread, so health checks are answered meanwhile.
_INLINE_EPISODES = 4
_INLINE_LABS = 400
_bearer = HTTPBearer(auto_error=False, description="Needed when CTIT_API_TOKEN is set.")
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    413: {"model": ErrorOut, "description": "Body or batch too large"},
    422: {"model": ErrorOut, "description": "The record breaks the contract (paths and reasons)"},
}


async def require_token(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """Refuse the call (401) unless it carries the bearer token (or the page's session cookie).

    `AccessGate` already guards every route; this dependency documents the bearer scheme in the
    OpenAPI schema and guards routers mounted without the gate.
    """
    settings: ServingSettings = request.app.state.settings
    if settings.api_token is None:
        return
    if not token_accepted(request.scope["headers"], settings.api_token.get_secret_value()):
        raise HTTPException(
            status_code=401,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def caller_of(request: Request) -> str:
    """Who called: the `X-Caller` header (an application name) or the client address."""
    named = request.headers.get("x-caller", "").strip()
    if named:
        return "".join(ch for ch in named[:64] if ch.isprintable())
    client = request.client
    return f"{client.host}" if client else "unknown"


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, from Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, single: int, batch: int) -> None:
        self.app = app
        self.single = single
        self.batch = batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.batch if scope["path"] == BATCH_PATH else self.single
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "Content-Length is not a number")
                    return
                if declared > limit:
                    await _send_error(send, 413, _too_large(limit))
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, _too_large(limit))


class _TooLarge(HTTPException):
    """Raised from `receive`; FastAPI turns it into the 413 answer (or BodyLimit does)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=_too_large(limit))


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _record_error(exc: RecordError, prefix: list[str | int]) -> JSONResponse:
    detail = [{**error, "loc": [*prefix, *error["loc"]]} for error in exc.errors]
    return JSONResponse({"detail": detail}, status_code=422)


def _internal_error(route: str, exc: Exception) -> JSONResponse:
    # Only the exception type is logged: messages and tracebacks may quote patient data.
    log.error("%s: scoring failed with %s", route, type(exc).__name__)
    return JSONResponse({"detail": "internal error while scoring; see the server log"}, 500)


def _small(records: list[Any]) -> bool:
    episodes = sum(len(record.all_episodes()) for record in records)
    labs = sum(len(record.labs or ()) for record in records)
    return episodes <= _INLINE_EPISODES and labs <= _INLINE_LABS


def _router() -> APIRouter:
    router = APIRouter()
    secured = [Depends(require_token)]

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
            return JSONResponse({"detail": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready", "model": scorer.model.info})

    @router.post(
        "/v1/score",
        tags=["scoring"],
        dependencies=secured,
        response_model=ScoreOut,
        responses=_ERRORS,
    )
    async def score(
        body: ScoreRequest,
        request: Request,
        answer_format: Annotated[
            Literal["json", "fhir"],
            Query(
                alias="format",
                description="`fhir` returns the score as a FHIR R4 RiskAssessment resource.",
            ),
        ] = "json",
    ) -> JSONResponse:
        """Score one patient record with one episode: probability, interval, band, explanation."""
        scorer: Scorer = request.app.state.scorer
        try:
            answer = scorer.score(body)
            resource = (
                risk_assessment(answer, body.model_dump(mode="json", exclude_none=True))
                if answer_format == "fhir"
                else None
            )
        except RecordError as exc:
            return _record_error(exc, ["body"])
        except Exception as exc:  # noqa: BLE001 - never let patient data reach a traceback log
            return _internal_error("/v1/score", exc)
        raw = await request.body()
        await request.app.state.audit.arecord_scores(
            model=answer["model"],
            items=[(body.patient.patient_id, hashlib.sha256(raw).hexdigest(), [answer])],
            endpoint="/v1/score",
            caller=caller_of(request),
        )
        if resource is not None:
            return JSONResponse(resource, media_type="application/fhir+json")
        return JSONResponse(answer)

    @router.post(
        BATCH_PATH,
        tags=["scoring"],
        dependencies=secured,
        response_model=BatchOut,
        responses=_ERRORS,
    )
    async def score_batch(body: BatchRequest, request: Request) -> JSONResponse:
        """Score several patient records; each answer carries `record_index`."""
        settings: ServingSettings = request.app.state.settings
        if len(body.records) > settings.max_batch_records:
            return JSONResponse(
                {
                    "detail": f"batch of {len(body.records)} records; at most "
                    f"{settings.max_batch_records} per call"
                },
                status_code=413,
            )
        scorer: Scorer = request.app.state.scorer
        try:
            if _small(body.records):  # as quick as /v1/score: no thread hop
                answers = scorer.score_batch(body.records, body.explain)
            else:  # a batch may take long: keep the event loop free for health checks meanwhile
                answers = await asyncio.to_thread(scorer.score_batch, body.records, body.explain)
        except RecordError as exc:
            return _record_error(exc, ["body", "records"])
        except Exception as exc:  # noqa: BLE001 - never let patient data reach a traceback log
            return _internal_error(BATCH_PATH, exc)
        per_record: dict[int, list[dict[str, Any]]] = {}
        for answer in answers:
            per_record.setdefault(answer["record_index"], []).append(answer)
        items = []
        for i, record in enumerate(body.records):
            digest = hashlib.sha256(
                record.model_dump_json(exclude_none=True).encode("utf-8")
            ).hexdigest()
            items.append((record.patient.patient_id, digest, per_record.get(i, [])))
        await request.app.state.audit.arecord_scores(
            model=scorer.model.info, items=items, endpoint=BATCH_PATH, caller=caller_of(request)
        )
        return JSONResponse({"results": answers})

    @router.get("/v1/model", tags=["model"], dependencies=secured)
    async def model(request: Request) -> dict[str, Any]:
        """Model identity, metrics, features, risk bands and the training cohort summary."""
        return request.app.state.model_card

    return router


def create_app(
    settings: ServingSettings,
    scorer: Scorer | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The service; loads (and checks) the model at `settings.model_uri` unless given a scorer.

    Raises:
        serving.model.ModelLoadError: the model is missing or corrupted (names the URI).
    """
    if scorer is None:
        scorer = Scorer.load(settings.model_uri, options=settings.scoring)
    own_audit = audit is None
    if audit is None:
        salt = settings.audit_salt.get_secret_value() if settings.audit_salt else None
        audit = AuditLog(settings.audit_path, salt=salt, synchronous=settings.audit_synchronous)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        if own_audit:
            audit.close()

    info = scorer.model.info
    app = FastAPI(
        title="ctit scoring service",
        description="Probability that hetrombopag raises platelets in cancer-therapy-induced "
        f"thrombocytopenia, with explanations. Model {info['name']} version {info['version']}, "
        f"label {info['label_definition']}.",
        version=str(info["version"]),
        lifespan=lifespan,
        # /docs is `serving.web`'s: Swagger UI from local, pinned files (FastAPI's own loads a CDN)
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.scorer = scorer
    app.state.audit = audit
    app.state.model_card = scorer.describe()
    app.add_middleware(BodyLimit, single=settings.max_body_bytes, batch=settings.max_batch_bytes)
    # Added last, so it runs first: nothing else sees a request without the token.
    token = settings.api_token.get_secret_value() if settings.api_token else None
    app.add_middleware(AccessGate, token=token)
    app.include_router(_router())
    app.include_router(cds_hooks.router, dependencies=[Depends(require_token)])
    app.include_router(web.router)
    settle_heap()  # the app's own long-lived objects join the model's in the frozen heap
    return app
