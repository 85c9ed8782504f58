"""The HTTP scoring service (FastAPI): score one patient or a batch, describe the model, health.

Routes: POST /v1/score, POST /v1/score/batch, GET /v1/model, GET /healthz, GET /readyz (all in
`serving.http.routes`), the OpenAPI docs (/docs, /openapi.json), and the routers of
`serving.fhir.cds_hooks` and `serving.http.web` (which serves GET /v1/contract with the page, so
the page needs no other route to build its form).

Access: when `ServingSettings.api_token` is set, every route but /healthz needs
`Authorization: Bearer <token>` or the clinician page's session cookie (401 otherwise; a browser
gets a sign-in form): see `serving.http.access`.

Limits: a body longer than `max_body_bytes` (single) or `max_batch_bytes` (batch) is refused with
413 from its Content-Length before it is read, or as soon as the streamed bytes pass the limit.
Every answer is written to the audit log (durably) before it is returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.fhir import cds_hooks
from serving.http import routes, web
from serving.http.access import AccessGate, require_token
from serving.http.audit import AuditLog
from serving.http.routes import BATCH_PATH
from serving.request.jsonin import JsonRefused, loads_strict
from serving.request.schemas import ErrorOut
from serving.scoring.scorer import Scorer, settle_heap
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

#: Methods whose body is checked by `StrictJson`.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")


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


class StrictJson:
    """ASGI middleware: every request body is read by `serving.request.jsonin.loads_strict` first.

    Refused before any route sees them: nesting deeper than `jsonin.MAX_DEPTH` (400), duplicate
    keys, NaN/Infinity/1e309 and unpaired surrogates (422 with the value's path, never the value).
    A body that is not JSON at all is passed on (the route answers it). Form posts (the sign-in
    form) are not read here. The parsed body is left in `scope["state"]["json_body"]`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-type" and value.lower().startswith(_FORM_TYPES):
                await self.app(scope, receive, send)
                return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(b"", receive, message), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw.strip():
            try:
                scope.setdefault("state", {})["json_body"] = loads_strict(raw)
            except JsonRefused as exc:
                if exc.kind != "json_invalid":
                    await _send_refusal(scope, send, exc)
                    return
        await self.app(scope, _replay(raw, receive), send)


def _replay(raw: bytes, receive: Receive, first: Message | None = None) -> Receive:
    """A `receive` that gives `raw` (or `first`) once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first or {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


async def _send_refusal(scope: Scope, send: Send, exc: JsonRefused) -> None:
    if scope["path"].startswith("/fhir/"):
        issue = {
            "severity": "error",
            "code": "invalid" if exc.status == 400 else "processing",
            "diagnostics": f"{'.'.join(map(str, exc.error()['loc']))}: {exc.msg}",
        }
        payload: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [issue]}
        media = b"application/fhir+json"
    else:
        payload, media = {"detail": [exc.error()]}, b"application/json"
    body = json.dumps(payload).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _SlowBody(Exception):
    """The client did not finish sending its body in time."""


class Guard:
    """ASGI middleware, outermost: `Cache-Control: no-store` on every answer that sets no cache
    policy of its own; 408 (and the connection closed) when a body is not complete within
    `body_timeout_s`; and a bare 500 for any exception that escapes, logged by type only (the
    message or a traceback could quote patient data; uvicorn would log both)."""

    def __init__(self, app: ASGIApp, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # no task per call, unlike wait_for
                    message = await receive()
            except TimeoutError:
                raise _SlowBody from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except _SlowBody:
            log.warning("%s %s: body not complete in time; closed", scope["method"], scope["path"])
            if not started:
                await _send_error(guarded_send, 408, "request body not complete in time")
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.error("%s %s failed with %s", scope["method"], scope["path"], type(exc).__name__)
            if not started:
                await _send_error(guarded_send, 500, "internal error; see the server log")


#: The longest request head (request line and headers) `TimedHttpToolsProtocol` reads.
MAX_HEAD_BYTES = 64 * 1024


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (a C parser, about 0.1 ms a request less than h11's) with
    two limits on the request head (request line and headers):

    - time: a connection whose head is not complete within `header_timeout_s` of its first byte
      (or of the connection, or of the previous answer) is closed. uvicorn's own
      `timeout_keep_alive` only covers idle connections between requests; a client that sends
      half a request line and stops (slowloris) would hold its connection forever. Bodies are
      timed by `Guard`. `ctit serve` sets `header_timeout_s` from the settings.
    - size: a head longer than `MAX_HEAD_BYTES` gets 431 and the connection is closed
      (httptools itself collects headers without a limit).
    """

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received since the current head began, while it goes on
        self._in_head = False
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def _waiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._waiting_head() and not self.transport.is_closing():
            self.logger.warning("request head not complete in time; connection closed")
            self.transport.close()

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._waiting_head():
            self._arm_head_timer()
        super().data_received(data)
        if not self._waiting_head():
            self._disarm_head_timer()
        if not self._in_head:
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self.logger.warning("request head over %d bytes; connection closed", MAX_HEAD_BYTES)
            self.transport.write(_HEAD_TOO_LARGE)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


_HEAD_TOO_LARGE_BODY = b'{"detail":"request head too large"}'
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"cache-control: no-store\r\n"
    b"connection: close\r\n"
    b"content-length: "
    + str(len(_HEAD_TOO_LARGE_BODY)).encode()
    + b"\r\n\r\n"
    + _HEAD_TOO_LARGE_BODY
)


async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for a body or query that fails validation: paths and reasons, never the input.

    FastAPI's own handler echoes each error's `input` (the whole record, identifiers included)
    and fails on values JSON cannot encode (NaN); nothing about the request is logged here.
    """
    detail = []
    for error in exc.errors():
        loc = [part if isinstance(part, int) else _printable(str(part)) for part in error["loc"]]
        detail.append(
            {
                "loc": loc or ["body"],
                "msg": _printable(str(error.get("msg", "invalid value"))),
                "type": str(error.get("type", "value_error")),
            }
        )
    return JSONResponse({"detail": detail}, status_code=422)


def _printable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")[:500]


_ERROR_WORDS = {
    "400": "Not JSON, JSON nested too deeply, or a malformed request",
    "401": "Missing or wrong bearer token",
    "404": "No such resource (e.g. an unknown CDS service)",
    "408": "The request body was not complete in time",
    "412": "CDS Hooks: required prefetch data missing and not fetchable",
    "413": "Body or batch too large",
    "422": "The body breaks the contract: paths and reasons, never the values",
    "429": "Too many wrong sign-ins from this address",
    "500": "Internal error (logged without patient data)",
    "503": "Not ready, or the audit log is not writable: nothing is scored",
}
_FHIR_ERRORS = ("400", "422", "503")


def _documented_errors(app: FastAPI) -> Any:
    """`app.openapi` completed with every status each operation can answer (schemathesis checks
    that none is undocumented): the gate's 401 and 429, the body checks' 400, 408, 413 and 422,
    404 on path parameters, 500 and 503. The FHIR route's errors are OperationOutcomes."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None and app.openapi_schema.get("x-ctit-errors"):
            return app.openapi_schema
        schema = build()
        error = {"$ref": "#/components/schemas/ErrorOut"}
        schema.setdefault("components", {}).setdefault("schemas", {})
        schema["components"]["schemas"].setdefault("ErrorOut", ErrorOut.model_json_schema())
        outcome = {"type": "object", "required": ["resourceType"]}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                codes = ["500"]
                if path != "/healthz":
                    codes += ["401", "429"]
                if method in ("post", "put", "patch"):
                    codes += ["400", "408", "413", "422", "503"]
                if "{" in path:
                    codes.append("404")
                if path.startswith("/cds-services/"):
                    codes.append("412")
                if path == "/readyz":
                    codes.append("503")
                responses = operation.setdefault("responses", {})
                for code in codes:
                    entry = responses.setdefault(code, {"description": _ERROR_WORDS[code]})
                    content = entry.setdefault("content", {})
                    content.setdefault("application/json", {"schema": error})
                    if path.startswith("/fhir/") and code in _FHIR_ERRORS:
                        content.setdefault("application/fhir+json", {"schema": outcome})
        schema["x-ctit-errors"] = True
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(
    settings: ServingSettings,
    scorer: Scorer | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The service; loads (and checks) the model at `settings.model_uri` unless given a scorer.

    Raises:
        serving.bundle.store.ModelLoadError: the model is missing or corrupted (names the URI).
    """
    if scorer is None:
        scorer = Scorer.load(settings.model_uri, options=settings.scoring)
    own_audit = audit is None
    if audit is None:
        audit = _audit_log(settings)
    app = _new_app(scorer, _closing(audit if own_audit else None), settings.telemetry)
    app.state.settings = settings
    app.state.scorer = scorer
    app.state.audit = audit
    app.state.model_card = scorer.describe()
    app.openapi = _documented_errors(app)  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, validation_failed)
    _add_middleware(app, settings)
    _include_routers(app)
    settle_heap()  # the app's own long-lived objects join the model's in the frozen heap
    return app


def _audit_log(settings: ServingSettings) -> AuditLog:
    """The audit log the settings name (the app owns it and closes it at shutdown)."""
    salt = settings.audit_salt.get_secret_value() if settings.audit_salt else None
    return AuditLog(
        settings.audit_path,
        salt=salt,
        synchronous=settings.audit_synchronous,
        model_inputs=settings.audit_model_inputs,
    )


def _closing(owned: AuditLog | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: closes the audit log at shutdown when the app opened it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned is not None:
            owned.close()

    return lifespan


def _new_app(
    scorer: Scorer,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    telemetry: bool,
) -> FastAPI:
    """The FastAPI object, titled and versioned after the model; FastAPI's native OpenTelemetry
    (FastAPI >= 0.165; older versions keep the unknown keyword as `app.extra`) only when the
    settings ask for it."""
    info = scorer.model.info
    return FastAPI(
        title="ctit scoring service",
        description="Probability that hetrombopag raises platelets in cancer-therapy-induced "
        f"thrombocytopenia, with explanations. Model {info['name']} version {info['version']}, "
        f"label {info['label_definition']}.",
        version=str(info["version"]),
        lifespan=lifespan,
        # /docs is `serving.http.web`'s: Swagger UI from local, pinned files (FastAPI's loads a CDN)
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": telemetry, "metrics": telemetry, "logs": telemetry},
    )


def _add_middleware(app: FastAPI, settings: ServingSettings) -> None:
    """The middleware, added innermost first: `Guard` ends up outermost."""
    app.add_middleware(StrictJson)
    app.add_middleware(BodyLimit, single=settings.max_body_bytes, batch=settings.max_batch_bytes)
    # Added after the body checks, so it runs before them: nothing else sees a request without
    # the token.
    token = settings.api_token.get_secret_value() if settings.api_token else None
    app.add_middleware(
        AccessGate,
        token=token,
        attempts=settings.login_attempts,
        window_s=settings.login_window_s,
    )
    app.add_middleware(Guard, body_timeout_s=settings.body_timeout_s)


def _include_routers(app: FastAPI) -> None:
    """The service's routes, then CDS Hooks and FHIR (token-guarded), then the page's."""
    app.include_router(routes.router)
    app.include_router(cds_hooks.router, dependencies=[Depends(require_token)])
    app.include_router(web.router)
