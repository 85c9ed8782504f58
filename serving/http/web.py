"""The clinician web page served at `/`, its static assets, and two small JSON helpers for it.

Routes (all under this router, included by `serving.http.app.create_app`):
Access: with a token configured, `serving.http.access.AccessGate` (added by `create_app`) refuses
every route here without the bearer token or the session cookie that its sign-in form sets;
`/ui/parse-file` also declares the bearer dependency (`serving.http.access.require_token`).

- `GET /`: the page (hand-written HTML, CSS and JS shipped in `serving/http/static`; nothing is
  fetched from outside the server, so the page works offline and leaks nothing). The clinical
  fields' labels come from `features.registry` (`{{label:<feature>}}` slots in index.html).
- `GET /ui/static/{name}`: the page's script and style sheet (a fixed list, no path lookups).
- `GET /v1/contract`: the cohort contract (`data.contract.contract_as_dict`); the page builds its
  lists of patient and episode fields and of yes/no answers from it at start-up.
- `GET /ui/options`: the analytes with their accepted units, the drug names for autocomplete, the
  features' plain clinical names and units (`features.registry`, to label the explanation chart)
  and, with a model loaded, its response definition in words.
- `GET /ui/examples` and `GET /ui/examples/{name}`: the example patient records shipped in
  `serving/http/static/examples` (the same files as the CLI tour's `examples/`), for "load an
  example".
- `GET /favicon.ico` and `GET /ui/static/favicon.svg`: the page's icon.
- `GET /docs` and `GET /docs/assets/{name}`: Swagger UI from the pinned `fastapi-offline` package's
  files, served by this server (no CDN), under the same content policy as the page.
- `POST /ui/parse-file`: a patient file (scoring JSON, a list or `{"records": [...]}` of them, or a
  FHIR R4 Bundle) -> the episode records the form can show, one per episode, with the problems
  found in them as `{loc, msg}` so the page can mark them by the field before anything is scored.

The page reaches `/v1/score` and `/v1/model` directly with relative URLs.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib
import importlib.util
import json
import logging
import re
from functools import cache, lru_cache
from importlib import resources
from types import ModuleType
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, Response

from data.contract import contract_as_dict
from data.drugs import known_drugs
from data.units import ANALYTES
from features.registry import REGISTRY, feature_label, feature_words, outcome_words
from serving.http.access import require_token
from serving.request.records import RecordError, validate_record

logger = logging.getLogger(__name__)

router = APIRouter()

#: The only files `/ui/static/{name}` serves, with their media types.
STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "docs.js": "text/javascript; charset=utf-8",
}
#: The example records offered by the page, in the order shown, with their titles.
EXAMPLES: dict[str, str] = {
    "patient": "Example 1: second-line taxane, moderate thrombocytopenia",
    "patient-low": "Example 2: fourth-line gemcitabine-carboplatin, marrow involvement",
}
#: Swagger UI's files, from the pinned `fastapi-offline` distribution (never a CDN).
DOCS_ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}

#: Nothing on the page may come from elsewhere; inline scripts and styles are not used either.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)

_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _static_text(name: str) -> str:
    return resources.files("serving.http").joinpath("static", name).read_text(encoding="utf-8")


@cache
def _static_bytes(package: str, *parts: str) -> bytes:
    return resources.files(package).joinpath(*parts).read_bytes()


#: Swagger UI draws its own styles inline, so /docs allows inline styles (never inline scripts).
DOCS_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY.replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)

_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ctit scoring service: API documentation</title>
<link rel="icon" href="ui/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
<p style="margin:.5rem 1rem;font-family:system-ui,sans-serif">The machine-readable schema is at
<a href="openapi.json">/openapi.json</a>; the clinician page is at <a href="./">/</a>.</p>
<div id="swagger-ui"></div>
<noscript>This page needs JavaScript; the schema itself is at
<a href="openapi.json">/openapi.json</a>.</noscript>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="ui/static/docs.js"></script>
</body>
</html>
"""


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def docs_page() -> HTMLResponse:
    """Swagger UI for /openapi.json, from files this server holds (works offline)."""
    headers = {**_PAGE_HEADERS, "Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY}
    return HTMLResponse(_DOCS_PAGE, headers=headers)


@router.get("/docs/assets/{name}", include_in_schema=False)
def docs_asset(name: str) -> Response:
    """One of Swagger UI's files (a fixed list, read from the pinned package)."""
    media_type = DOCS_ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no documentation asset {name!r}")
    body = _static_bytes("fastapi_offline", "static", name)
    return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=86400"})


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """The page's icon where browsers look for it by default."""
    return Response(_static_text("favicon.svg"), media_type="image/svg+xml")


@router.get("/ui/examples", tags=["page"])
def examples() -> list[dict[str, str]]:
    """The example patient records the page can load: name and title."""
    return [{"name": name, "title": title} for name, title in EXAMPLES.items()]


@router.get("/ui/examples/{name}", tags=["page"])
def example(name: str) -> Any:
    """One example patient record (the scoring JSON)."""
    if name not in EXAMPLES:
        raise HTTPException(status_code=404, detail=f"no example {name!r}")
    return json.loads(_static_text(f"examples/{name}.json"))


#: Where index.html takes a clinical field's label from `features.registry` (`{{label:ecog}}`).
_LABEL_SLOT = re.compile(r"\{\{label:([a-z_]+)\}\}")


@cache
def page_html() -> str:
    """index.html with the clinical fields' labels filled in from `features.registry`, the one
    owner of the wording (the answers and the report use the same labels)."""

    return _LABEL_SLOT.sub(
        lambda slot: html.escape(feature_label(slot.group(1))), _static_text("index.html")
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    """The clinician page."""
    return HTMLResponse(page_html(), headers=_PAGE_HEADERS)


@router.get("/ui/static/{name}", include_in_schema=False)
def static_file(name: str) -> Response:
    """One of the page's assets (a fixed list: no file-system lookups from the URL)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return Response(_static_text(name), media_type=media_type, headers=_PAGE_HEADERS)


@lru_cache(maxsize=1)
def ui_options() -> dict[str, Any]:
    """Analytes (canonical unit first), known drug names and feature descriptions for the form."""
    analytes = [
        {
            "alias": a.alias,
            "name": a.name[:1].upper() + a.name[1:],
            "canonical_unit": a.unit,
            "units": list(a.units),
            "loinc": list(a.loinc),
        }
        for a in ANALYTES.values()
    ]
    features = {spec.name: feature_words(spec.name) for spec in REGISTRY.values()}
    return {"analytes": analytes, "drugs": known_drugs(), "features": features}


@router.get("/v1/contract", tags=["model"], dependencies=[Depends(require_token)])
def contract() -> dict[str, Any]:
    """The cohort contract (`data.contract`): tables, columns, each column's kind, bounds, unit,
    choices and description. The page builds its form's field lists from it at start-up."""
    return contract_as_dict()


@router.get("/ui/options", tags=["page"])
def options(request: Request) -> dict[str, Any]:
    """What the form offers: tests with their accepted units, drug names, feature names; with a
    model loaded, its features (data-dependent names resolved) and its outcome in words."""
    out = dict(ui_options())
    scorer = getattr(request.app.state, "scorer", None)
    if scorer is not None:
        model = scorer.model
        out["features"] = {
            **out["features"],
            **{name: feature_words(name) for name in model.feature_names},
        }
        label = model.info["label_definition"]
        out["outcome"] = {"label_definition": label, "words": outcome_words(label)}
    return out


def _fhir() -> ModuleType | None:
    """`serving.fhir.convert` when this installation has it (the FHIR adapter is optional for the
    page)."""
    if importlib.util.find_spec("serving.fhir.convert") is None:
        return None
    return importlib.import_module("serving.fhir.convert")


def _unprocessable(loc: list[str | int], msg: str) -> HTTPException:
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def _split_records(payload: Any) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and "records" in payload and "patient" not in payload:
        records = payload["records"]
        if not isinstance(records, list):
            raise _unprocessable(["body", "records"], "`records` must be a list of patient records")
        return records
    return [payload]


def _per_episode(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per episode: the form shows one episode at a time."""
    episodes = record.get("episodes")
    if not isinstance(episodes, list) or "episode" in record:
        return [record]
    base = {key: value for key, value in record.items() if key != "episodes"}
    return [{**base, "episode": episode} for episode in episodes]


def _given(record: Any, loc: list[str | int]) -> str | None:
    """The value a problem points at, as text, when it is a plain value (dates the form cannot hold
    are then still shown to the person)."""
    value = record
    for part in loc:
        in_list = isinstance(part, int) and isinstance(value, list) and 0 <= part < len(value)
        in_dict = isinstance(part, str) and isinstance(value, dict) and part in value
        if not (in_list or in_dict):
            return None
        value = value[part]
    if isinstance(value, str | int | float | bool):
        return str(value)
    return None


def parse_patient_file(payload: Any, index_date: dt.date | None = None) -> dict[str, Any]:
    """The episode records of a patient file, with the problems of each as `{loc, msg}`.

    Records are returned as given (after FHIR conversion), so that the form keeps every value, even
    a wrong one, and the person can correct it where it is marked. `index_date` is the first
    hetrombopag dose for FHIR input that holds no hetrombopag order (else the adapter uses today).

    Raises:
        HTTPException: 422 when the file holds no patient record at all.
    """
    warnings: list[str] = []
    fhir = _fhir()
    looks_fhir = isinstance(payload, dict) and "resourceType" in payload
    if fhir is not None and fhir.is_fhir(payload):
        try:
            records, fhir_warnings = fhir.fhir_to_patient_records(payload, index_date=index_date)
        except fhir.FhirError as exc:
            raise _unprocessable(["body"], str(exc)) from exc
        warnings.extend(str(w) for w in fhir_warnings)
    elif looks_fhir:
        raise _unprocessable(["body", "resourceType"], "this server cannot read FHIR resources")
    else:
        records = _split_records(payload)
    out: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("patient"), dict):
            raise _unprocessable(
                ["body", i] if len(records) > 1 else ["body"],
                "not a patient record: expected an object with `patient`, `episode`, `labs` "
                "and `regimens` (the scoring JSON), or a FHIR Bundle",
            )
        for episode_record in _per_episode(record):
            try:
                validate_record(episode_record)
                problems: list[dict[str, Any]] = []
            except RecordError as exc:
                problems = [
                    {"loc": e["loc"], "msg": e["msg"], "given": _given(episode_record, e["loc"])}
                    for e in exc.errors
                ]
            out.append({"record": jsonable_encoder(episode_record), "problems": problems})
    if not out:
        raise _unprocessable(["body"], "the file holds no patient episode")
    return {"records": out, "warnings": warnings}


@router.post("/ui/parse-file", tags=["page"], dependencies=[Depends(require_token)])
async def parse_file(
    request: Request,
    index_date: Annotated[
        dt.date | None,
        Query(description="First hetrombopag dose, for FHIR input without a hetrombopag order."),
    ] = None,
) -> dict[str, Any]:
    """A patient file (scoring JSON or FHIR R4 Bundle) -> episode records to fill the form."""
    try:
        payload = await request.json()
    except ValueError as exc:
        raise _unprocessable(["body"], f"the file is not valid JSON ({exc})") from exc
    result = parse_patient_file(payload, index_date=index_date)
    logger.info("parsed a patient file into %d episode record(s)", len(result["records"]))
    return result
