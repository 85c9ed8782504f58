"""CDS Hooks 2.0 service: `patient-view` and `order-select` cards with the hetrombopag score.

Routes (included by `serving.http.app.create_app`):

- `GET /cds-services`: discovery, two services with prefetch templates (`SERVICES`).
- `POST /cds-services/{id}`: cards. Data come from `prefetch`; a template key that the client did
  not send is fetched from `fhirServer` with `fhirAuthorization` (httpx), but only when that
  server is on the allow-list `ServingSettings.cds_fhir_servers` (env `CTIT_CDS_FHIR_SERVERS`);
  a required key that can be neither read nor fetched gives 412 Precondition Failed. A prefetch
  value of `null` means the client has no such data (CDS Hooks 2.0), never a fetch.

Fetching is denied by default (the service must not be made to call arbitrary, possibly internal,
addresses): with an empty allow-list nothing is fetched. A `fhirServer` is allowed when its
scheme, host and port (default ports normalised) equal those of an allowed base URL and its path
is that base's path or lies under it at a `/` boundary (`https://ehr.example/fhir` allows
`https://ehr.example/fhir/r4`, not `https://ehr.example/fhir-other`). Every URL fetched, `next`
page links included, must lie under the `fhirServer` itself; redirects are never followed.
- `POST /cds-services/{id}/feedback`: card outcomes, stored in the audit log with the version of
  the model that made the card.

When cards appear:
- `order-select`: only when `context.draftOrders` holds a draft hetrombopag MedicationRequest; the
  index date is that order's `authoredOn` (else today, with a warning on the card).
- `patient-view`: when the patient has an active hetrombopag order, or the latest platelet count
  up to today is below 100 x10^9/L (the CTIT threshold); otherwise no card, so the chart of a
  patient without CTIT stays quiet.

This router also carries `serving.fhir.api.router` (FHIR Bundle in, RiskAssessments out).
The scorer, audit log and settings are reached through `request.app.state.scorer`, `.audit` and
`.settings` (`ServingSettings`; without it nothing is fetched). Optional
`request.app.state.cds_settings` (`CdsSettings`) tunes the fetch: timeout, pages, cards remembered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.util
import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from data.units import ANALYTES, canonical_test, convert
from serving.fhir import api as fhir_api
from serving.fhir.assessment import risk_assessment
from serving.fhir.bundles import is_index_order, resources_in
from serving.fhir.codes import ECOG_LOINC, LOINC, METASTASIS_CODES, FhirError
from serving.fhir.reader import fhir_to_patient_records
from serving.http.audit import AuditUnavailable
from serving.predict.survival import timing_sentence
from serving.request.records import RecordError
from serving.settings import ServingSettings, fhir_base_url

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

router = APIRouter(tags=["CDS Hooks"])
router.include_router(fhir_api.router)  # POST /fhir/RiskAssessment/$score, same access rules

PATIENT_VIEW = "ctit-patient-view"
ORDER_SELECT = "ctit-order-select"
CTIT_PLT = 100.0
SUMMARY_MAX = 139


# --------------------------------------------------------------------------- settings and bodies


class CdsSettings(BaseModel):
    """Limits of the FHIR fetches made when prefetch data are missing.

    Which servers may be called is not set here but by `ServingSettings.cds_fhir_servers`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fetch_timeout_s: float = Field(5.0, gt=0, le=60)
    max_pages: int = Field(5, ge=1, le=50, description="Search result pages followed per key.")
    remembered_cards: int = Field(10000, ge=0, description="Cards remembered for feedback.")


class FhirAuthorization(BaseModel):
    """The OAuth 2.0 access token the CDS client grants for `fhirServer` (CDS Hooks 2.0)."""

    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1)
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


class CdsRequest(BaseModel):
    """A CDS Hooks 2.0 service request."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: dict[str, Any] | None = None
    userComment: str | None = None


class FeedbackItem(BaseModel):
    """One card outcome (CDS Hooks 2.0 feedback)."""

    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: dt.datetime


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    feedback: list[FeedbackItem] = Field(min_length=1)


# --------------------------------------------------------------------------- services


def _lab_query() -> str:
    codes = [code for analyte in ANALYTES.values() for code in analyte.loinc] + [ECOG_LOINC]
    joined = ",".join(f"{LOINC}|{code}" for code in codes)
    return f"Observation?patient={{{{context.patientId}}}}&code={joined}&_sort=-date&_count=500"


def _condition_query() -> str:
    joined = ",".join(f"{system}|{code}" for system, code in METASTASIS_CODES)
    return f"Condition?patient={{{{context.patientId}}}}&code={joined}"


def prefetch_templates() -> dict[str, str]:
    """The prefetch templates of both services (keys are also the fetch plan)."""
    return {
        "patient": "Patient/{{context.patientId}}",
        "labs": _lab_query(),
        "medicationRequests": "MedicationRequest?patient={{context.patientId}}&_count=500",
        "medicationAdministrations": (
            "MedicationAdministration?patient={{context.patientId}}&_count=500"
        ),
        "medicationStatements": "MedicationStatement?patient={{context.patientId}}&_count=500",
        "conditions": _condition_query(),
    }


#: Prefetch keys without which no score is made (412 when neither sent nor fetchable).
REQUIRED_KEYS = ("patient", "labs", "medicationRequests")

FETCH_DISABLED = (
    "not prefetched, and fetching from the FHIR server is disabled: no FHIR server is allowed "
    "(set CTIT_CDS_FHIR_SERVERS, ServingSettings.cds_fhir_servers)"
)

SERVICES: dict[str, dict[str, Any]] = {
    PATIENT_VIEW: {
        "hook": "patient-view",
        "id": PATIENT_VIEW,
        "title": "Hetrombopag response in CTIT",
        "description": "Probability that a breast-cancer patient's cancer-therapy-induced "
        "thrombocytopenia responds to hetrombopag, with the factors behind it. Shown when the "
        "latest platelet count is below 100 x10^9/L or a hetrombopag order is active.",
        "usageRequirements": "Needs read access to Patient, Observation (laboratory), "
        "MedicationRequest, MedicationAdministration, MedicationStatement and Condition.",
    },
    ORDER_SELECT: {
        "hook": "order-select",
        "id": ORDER_SELECT,
        "title": "Hetrombopag order: expected response",
        "description": "When hetrombopag is being ordered for cancer-therapy-induced "
        "thrombocytopenia, the probability of platelet response and the factors behind it.",
        "usageRequirements": "Fires on a draft hetrombopag MedicationRequest; same data as the "
        "patient-view service.",
    },
}


@router.get("/cds-services")
def discovery() -> dict[str, Any]:
    """CDS Hooks discovery: the services this server offers."""
    templates = prefetch_templates()
    return {"services": [{**service, "prefetch": templates} for service in SERVICES.values()]}


# --------------------------------------------------------------------------- data gathering


class PreconditionFailed(Exception):
    """Required data were neither prefetched nor fetchable."""


def _settings(request: Request) -> CdsSettings:
    settings = getattr(request.app.state, "cds_settings", None)
    return settings if isinstance(settings, CdsSettings) else CdsSettings()


def _fhir_servers(request: Request) -> tuple[str, ...]:
    """The allowed FHIR base URLs; none (nothing is fetched) when the app has no settings."""
    settings = getattr(request.app.state, "settings", None)
    return settings.cds_fhir_servers if isinstance(settings, ServingSettings) else ()


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL without user info, default ports filled in."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        return None
    return scheme, parts.hostname.lower(), port or {"http": 80, "https": 443}[scheme]


def within(url: str, base: str) -> bool:
    """Whether `url` is `base` or lies under it: same scheme, host and port (default ports
    normalised), and a path equal to the base's path or below it at a `/` boundary.

    A path with `.` or `..` segments (also percent-encoded) never matches: it could climb out.
    """
    origin = _origin(url)
    if origin is None or origin != _origin(base):
        return False
    path = urlsplit(url).path
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        return False
    root = urlsplit(base).path.rstrip("/")
    path = path.rstrip("/")
    return path == root or path.startswith(root + "/")


def allowed_fhir_server(server: str, allowed: tuple[str, ...]) -> str:
    """`server` in normal form (see `serving.settings.fhir_base_url`) when it lies within one of
    the `allowed` base URLs; ValueError saying why not otherwise."""
    try:
        base = fhir_base_url(server)
    except ValueError as exc:
        raise ValueError(f"fhirServer {exc}") from None
    if not any(within(base, entry) for entry in allowed):
        raise ValueError(
            f"fhirServer {server!r} is not an allowed FHIR server (see CTIT_CDS_FHIR_SERVERS)"
        )
    return base


def _render(template: str, context: Mapping[str, Any]) -> str:
    out = template
    for key, value in context.items():
        if isinstance(value, str):
            out = out.replace(f"{{{{context.{key}}}}}", quote(value, safe=""))
    return out


def _resources(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        return [value]
    if isinstance(value, list):
        return [r for r in value if isinstance(r, dict) and isinstance(r.get("resourceType"), str)]
    return []


async def _fetch(
    client: httpx.AsyncClient, base: str, path: str, settings: CdsSettings
) -> tuple[list[dict[str, Any]], bool]:
    """GET one read or search, following `next` links up to `max_pages`.

    Every URL fetched must lie within `base` (see `within`); a `next` link elsewhere is refused
    before it is called, and a redirect is an error, never followed.

    Returns the pages and whether pages were left unread; raises ValueError with the reason.
    """
    import httpx  # imported where used: only the fetch fallback needs it

    url: str | None = f"{base.rstrip('/')}/{path}"
    out: list[dict[str, Any]] = []
    for _ in range(settings.max_pages):
        if url is None:
            break
        if not within(url, base):
            log.warning("CDS fetch refused: a next link leads outside the FHIR server %s", base)
            raise ValueError(f"a next link points away from the FHIR server {base}; not followed")
        try:
            response = await client.get(url)
        except httpx.HTTPError as exc:
            raise ValueError(f"{type(exc).__name__} calling the FHIR server") from None
        if response.is_redirect or 300 <= response.status_code < 400:
            raise ValueError(
                f"FHIR server answered HTTP {response.status_code} (redirects are not followed)"
            )
        if response.status_code >= 400:
            raise ValueError(f"FHIR server answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise ValueError("FHIR server answered with something that is not JSON") from None
        out.append(body)
        url = None
        if isinstance(body, dict) and body.get("resourceType") == "Bundle":
            for link in body.get("link") or []:
                if (
                    isinstance(link, dict)
                    and link.get("relation") == "next"
                    and isinstance(link.get("url"), str)
                ):
                    url = link["url"]
    return out, url is not None


def _fetch_refusal(body: CdsRequest, fhir_servers: tuple[str, ...]) -> tuple[str, str]:
    """(why missing keys cannot be fetched, "") or ("", the `fhirServer` base URL to fetch from)."""
    if not fhir_servers:
        return FETCH_DISABLED, ""
    if body.fhirServer is None or body.fhirAuthorization is None:
        return "not prefetched and no fhirServer/fhirAuthorization given", ""
    try:
        base = allowed_fhir_server(body.fhirServer, fhir_servers)
    except ValueError as exc:
        log.warning("CDS fetch refused: fhirServer %r is not allowed", body.fhirServer)
        return str(exc), ""
    if importlib.util.find_spec("httpx") is None:
        return "httpx is not installed, so the FHIR server cannot be called", ""
    return "", base


async def gather(
    body: CdsRequest, settings: CdsSettings, fhir_servers: tuple[str, ...] = ()
) -> tuple[list[dict], list[str]]:
    """Every resource of the prefetch (fetched where missing) and notes about what is missing.

    Missing keys are fetched only from a `fhirServer` within one of `fhir_servers`; with none,
    nothing is fetched.

    Raises:
        PreconditionFailed: a required key was not sent and could not be fetched.
    """
    prefetch = body.prefetch or {}
    templates = prefetch_templates()
    missing = [key for key in templates if key not in prefetch]
    resources = [r for key in templates if key in prefetch for r in _resources(prefetch[key])]
    if not missing:
        return resources, []
    refusal, base = _fetch_refusal(body, fhir_servers)
    if refusal:
        fetched, notes, reasons = [], [], dict.fromkeys(missing, refusal)
    else:
        fetched, notes, reasons = await _fetch_missing(body, settings, base, templates, missing)
    _require_keys(reasons)
    notes += [
        f"{key} not available ({reason}); scored without it" for key, reason in reasons.items()
    ]
    return resources + fetched, notes


async def _fetch_missing(
    body: CdsRequest,
    settings: CdsSettings,
    base: str,
    templates: Mapping[str, str],
    missing: list[str],
) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """The resources of the `missing` prefetch keys fetched from `base`, notes about result
    pages left unread, and why each key that could not be fetched was not."""
    import httpx

    auth = body.fhirAuthorization
    if auth is None:  # `_fetch_refusal` refuses this case
        return [], [], {}
    resources: list[dict[str, Any]] = []
    notes: list[str] = []
    reasons: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {auth.access_token}", "Accept": "application/fhir+json"}
    async with httpx.AsyncClient(
        headers=headers, timeout=settings.fetch_timeout_s, follow_redirects=False
    ) as client:
        for key in missing:
            path = _render(templates[key], body.context)
            try:
                pages, truncated = await _fetch(client, base, path, settings)
            except ValueError as exc:
                reasons[key] = str(exc)
                continue
            for page in pages:
                resources += _resources(page)
            if truncated:
                notes.append(
                    f"{key}: only the first {settings.max_pages} result pages were read "
                    "(the most recent data first)"
                )
    return resources, notes, reasons


def _require_keys(reasons: Mapping[str, str]) -> None:
    """Raises `PreconditionFailed` naming the required keys in `reasons` (missing, with why)."""
    required: dict[str, list[str]] = {}
    for key in REQUIRED_KEYS:
        if key in reasons:
            required.setdefault(reasons[key], []).append(key)
    if required:
        raise PreconditionFailed(
            "required data missing: "
            + "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in required.items())
        )


# --------------------------------------------------------------------------- cards


class _CardLedger:
    """Cards issued recently: uuid -> (patient id, episode id, model version), for feedback."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cards: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, card_uuid: str, patient_id: str, episode_id: str, version: str) -> None:
        with self._lock:
            self._cards[card_uuid] = (patient_id, episode_id, version)
            while len(self._cards) > self.size:
                self._cards.popitem(last=False)

    def get(self, card_uuid: str) -> tuple[str, str, str] | None:
        with self._lock:
            return self._cards.get(card_uuid)


def _ledger(request: Request, settings: CdsSettings) -> _CardLedger:
    ledger = getattr(request.app.state, "cds_cards", None)
    if not isinstance(ledger, _CardLedger):
        ledger = _CardLedger(settings.remembered_cards)
        request.app.state.cds_cards = ledger
    return ledger


def _model_card_url(request: Request) -> str | None:
    """The model card's URL under the configured public URL; None (no link) without one."""
    settings = getattr(request.app.state, "settings", None)
    base = getattr(settings, "public_url", None)
    return f"{base}/v1/model" if isinstance(base, str) and base else None


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~:@])")
_LIST_START = re.compile(r"^([-+]|\d+[.)])")
_WWW = re.compile(r"(?i)\bwww\.")


def md_text(value: Any) -> str:
    """Untrusted text as inert Markdown on one line: HTML characters as entities, and the
    punctuation of links, images, emphasis, code, headings and tables backslash-escaped. `:`,
    `@` and `www.` too: GFM turns bare URLs and e-mail addresses into links."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    text = _WWW.sub(lambda m: m.group(0)[:3] + "\\.", text)
    return _LIST_START.sub(r"\\\1", text)


def _text(item: Any) -> str:
    if isinstance(item, Mapping):
        for key in ("text", "message"):
            if isinstance(item.get(key), str):
                return item[key]
    return str(item)


def summary_of(answer: Mapping[str, Any]) -> str:
    """The card summary: probability, band and model version, under 140 characters."""
    model = answer.get("model") or {}
    head = f"Hetrombopag response {float(answer['probability']):.0%} ({answer.get('band')})"
    version = f"; model {model.get('name', 'ctit')} v{model.get('version', '?')}"
    text = head + version
    if len(text) > SUMMARY_MAX:
        text = head + f"; model v{model.get('version', '?')}"
    return text[:SUMMARY_MAX]


def _interval_words(answer: Mapping[str, Any]) -> str:
    level = answer.get("interval_level")
    return f"{float(level):.0%} interval" if isinstance(level, int | float) else "interval"


def detail_of(answer: Mapping[str, Any], record: Mapping[str, Any], notes: list[str]) -> str:
    """Markdown detail: the score, its interval, top factors and every warning.

    Every interpolated text passes `md_text` (FHIR free text reaches the warnings).
    """
    model = answer.get("model") or {}
    interval = answer.get("interval") or (answer["probability"], answer["probability"])
    lines = [
        f"**Probability of platelet response to hetrombopag: {float(answer['probability']):.0%}** "
        f"({_interval_words(answer)} {float(interval[0]):.0%}-{float(interval[1]):.0%}), band "
        f"**{md_text(answer.get('band'))}**.",
        # built from numbers by serving.predict.survival, no untrusted text in it
        *([timing] if (timing := timing_sentence(answer)) else []),
        "",
        f"Response definition: {md_text(model.get('label_definition', '?'))}. Index date (first "
        f"hetrombopag dose): {md_text(record['episode']['index_date'])}.",
    ]
    factors = [md_text(_text(f)) for f in answer.get("top_factors") or []]
    if factors:
        lines += ["", "**Top factors**", *[f"- {factor}" for factor in factors]]
    warnings = [md_text(w) for w in notes] + [
        md_text(_text(w)) for w in answer.get("warnings") or []
    ]
    if warnings:
        lines += ["", "**Warnings**", *[f"- {warning}" for warning in warnings]]
    lines += [
        "",
        f"Model {md_text(model.get('name', '?'))} version {md_text(model.get('version', '?'))}. "
        "Decision support only: the estimate does not replace clinical judgement.",
    ]
    return "\n".join(lines)


def _source(request: Request, model: Mapping[str, Any]) -> dict[str, Any]:
    source = {
        "label": f"ctit {model.get('name', '')} v{model.get('version', '?')}".replace("  ", " "),
    }
    url = _model_card_url(request)
    if url is not None:
        source["url"] = url
    return source


def _score_card(
    request: Request,
    answer: Mapping[str, Any],
    record: Mapping[str, Any],
    notes: list[str],
    low_threshold: float | None,
) -> dict[str, Any]:
    probability = float(answer["probability"])
    low = answer.get("band") == "low" or (low_threshold is not None and probability < low_threshold)
    assessment = risk_assessment(answer, record)
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary_of(answer),
        "detail": detail_of(answer, record, notes),
        "indicator": "warning" if low else "info",
        "source": _source(request, answer.get("model") or {}),
        "suggestions": [
            {
                "label": "File this risk assessment in the chart",
                "uuid": str(uuid.uuid4()),
                "actions": [
                    {
                        "type": "create",
                        "description": "RiskAssessment: probability of platelet response to "
                        "hetrombopag",
                        "resource": assessment,
                    }
                ],
            }
        ],
        "selectionBehavior": "any",
    }
    url = _model_card_url(request)
    if url is not None:
        card["links"] = [{"label": "Model card", "url": url, "type": "absolute"}]
    return card


def _error_card(request: Request, model: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "summary": "Hetrombopag response: no estimate (patient data incomplete or invalid)",
        "detail": "ctit could not score this patient:\n\n"
        + "\n".join(f"- {md_text(problem)}" for problem in problems[:20]),
        "indicator": "warning",
        "source": _source(request, model),
    }


def _has_ctit(record: Mapping[str, Any]) -> bool:
    """Whether the latest platelet count up to the index date is below 100 x10^9/L."""
    index = str(record["episode"]["index_date"])
    latest: tuple[str, float] | None = None
    for row in record.get("labs") or []:
        if canonical_test(row.get("test")) != "PLT" or str(row["time"])[:10] > index:
            continue
        try:
            value = convert("PLT", float(row["value"]), str(row["unit"]))
        except ValueError:
            continue
        if latest is None or str(row["time"]) >= latest[0]:
            latest = (str(row["time"]), value)
    return latest is not None and latest[1] < CTIT_PLT


def _draft_index_date(drafts: list[dict[str, Any]], notes: list[str]) -> dt.date:
    """The index date of an order-select call: the draft's authoredOn, else today."""
    dates = sorted(
        str(d["authoredOn"])[:10] for d in drafts if isinstance(d.get("authoredOn"), str)
    )
    if dates:
        try:
            return dt.date.fromisoformat(dates[-1])
        except ValueError:
            notes.append(f"draft hetrombopag order authoredOn {dates[-1]!r} is not a date")
    today = dt.date.today()
    notes.append(
        f"the draft hetrombopag order has no authoredOn; index date = today ({today.isoformat()})"
    )
    return today


def _model_of(scorer: Any) -> tuple[dict[str, Any], float | None]:
    """(name/version/label of the loaded model, its operating threshold) as far as known."""
    model = getattr(scorer, "model", None)
    info = dict(getattr(model, "info", {}) or {})
    threshold = getattr(getattr(model, "bands", None), "operating_threshold", None)
    return info, threshold if isinstance(threshold, int | float) else None


@router.post("/cds-services/{service_id}")
async def call_service(service_id: str, body: CdsRequest, request: Request) -> dict[str, Any]:
    """Cards for one hook call (see the module docstring for when cards appear)."""
    patient_id = _checked_call(service_id, body)
    notes: list[str] = []
    drafts: list[dict[str, Any]] = []
    index_date: dt.date | None = None
    if service_id == ORDER_SELECT:
        drafts = _draft_orders(body)
        if not drafts:
            return {"cards": []}
        index_date = _draft_index_date(drafts, notes)
    settings = _settings(request)
    try:
        resources, missing = await gather(body, settings, _fhir_servers(request))
    except PreconditionFailed as exc:
        raise HTTPException(412, str(exc)) from None
    record, warnings = _patient_record(resources + drafts, index_date, patient_id)
    if service_id == PATIENT_VIEW and not _card_wanted(resources, record):
        return {"cards": []}
    notes += missing + [w for w in warnings if _about(w, patient_id)]
    audit = getattr(request.app.state, "audit", None)
    if audit is not None and not audit.writable():
        raise HTTPException(503, "the audit log is not writable; nothing is scored")
    scorer = request.app.state.scorer
    model_info, threshold = _model_of(scorer)
    try:
        answer = await run_in_threadpool(scorer.score, record)
    except RecordError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors]
        return {"cards": [_error_card(request, model_info, problems)]}
    card = _score_card(request, answer, record, notes, threshold)
    model = answer.get("model") or model_info
    episode_id = str(record["episode"]["episode_id"])
    _ledger(request, settings).add(card["uuid"], patient_id, episode_id, str(model["version"]))
    if audit is not None:
        await _audit_card(request, audit, service_id, body, _CardScore(answer, card, model))
    return {"cards": [card]}


def _checked_call(service_id: str, body: CdsRequest) -> str:
    """The call's `context.patientId`; 404 for an unknown service, 400 for another service's
    hook or no patient id."""
    service = SERVICES.get(service_id)
    if service is None:
        raise HTTPException(404, f"no CDS service {service_id!r}; see GET /cds-services")
    if body.hook != service["hook"]:
        raise HTTPException(
            400, f"service {service_id!r} answers the {service['hook']!r} hook, not {body.hook!r}"
        )
    patient_id = body.context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id:
        raise HTTPException(400, "context.patientId is required")
    return patient_id


def _draft_orders(body: CdsRequest) -> list[dict[str, Any]]:
    """The draft hetrombopag orders of an order-select call (400 when not readable FHIR)."""
    orders = body.context.get("draftOrders")
    try:
        return [r for r in resources_in(orders) if is_index_order(r, ("draft",))]
    except FhirError as exc:
        raise HTTPException(400, f"context.draftOrders: {exc}") from None


def _patient_record(
    resources: list[dict[str, Any]], index_date: dt.date | None, patient_id: str
) -> tuple[dict[str, Any], list[str]]:
    """The scoring record of `patient_id` from the resources, and the adapter's warnings (412
    when the resources hold no usable data about the patient)."""
    try:
        records, warnings = fhir_to_patient_records(resources, index_date=index_date)
    except FhirError as exc:
        raise HTTPException(412, f"no usable data for Patient/{patient_id}: {exc}") from None
    record = next((r for r in records if r["patient"]["patient_id"] == patient_id), None)
    if record is None:
        raise HTTPException(412, f"no data about Patient/{patient_id} in the prefetch or fetch")
    return record, warnings


def _card_wanted(resources: list[dict[str, Any]], record: Mapping[str, Any]) -> bool:
    """Patient view: a card only with an active hetrombopag order or a count below `CTIT_PLT`."""
    active = any(is_index_order(r, ("active",)) for r in resources)
    return active or _has_ctit(record)


@dataclasses.dataclass(frozen=True)
class _CardScore:
    """One scored card: the answer, the card made from it and the model that scored it."""

    answer: dict[str, Any]
    card: dict[str, Any]
    model: dict[str, Any]


async def _audit_card(
    request: Request, audit: Any, service_id: str, body: CdsRequest, scored: _CardScore
) -> None:
    """Writes the card's answer to the audit log (503 when the log refuses it)."""
    answer = _with(scored.answer, cds_card_uuid=scored.card["uuid"], cds_hook=body.hook)
    try:
        await run_in_threadpool(
            audit.record_score,
            model=scored.model,
            patient_id=body.context["patientId"],
            input_sha256=hashlib.sha256(await request.body()).hexdigest(),
            answers=[answer],
            endpoint=f"/cds-services/{service_id}",
            caller=cds_caller(audit, body.context.get("userId")),
        )
    except AuditUnavailable:
        raise HTTPException(503, "the audit log is not writable; nothing is scored") from None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CODE = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_URI = re.compile(r"[A-Za-z0-9:/._\-#%~]{1,200}")


def cds_caller(audit: Any, user: Any) -> str:
    """The audit `caller` of a CDS call: the salted hash of `context.userId` (it names a person,
    `Practitioner/...`, or with careless clients a patient), never the id itself."""
    if not isinstance(user, str) or not user:
        return "cds-client"
    return f"cds-user:{audit.hash_id(user)[:32]}"


def _opaque(audit: Any, value: Any) -> str | None:
    """A client-chosen id as stored: kept when it is a UUID, else its salted hash."""
    if value is None:
        return None
    text = str(value)
    if _UUID.fullmatch(text):
        return text.lower()
    return f"sha256:{audit.hash_id(text)[:32]}"


def _reason_codes(audit: Any, reason: Any) -> dict[str, Any] | None:
    """The override reason (a Coding) as its `system` and `code` only: `display` and any other
    key are free text. A code that does not look like one (letters, digits, `.-_`, at most 64
    characters) is hashed, as is a system that is not a URI."""
    if not isinstance(reason, Mapping):
        return None
    item: dict[str, Any] = {}
    code, system = reason.get("code"), reason.get("system")
    if isinstance(code, str) and code:
        item["code"] = code if _CODE.fullmatch(code) else _opaque(audit, code)
    if isinstance(system, str) and system:
        uri = system.startswith(("http://", "https://", "urn:")) and _URI.fullmatch(system)
        item["system"] = system if uri else _opaque(audit, system)
    return item


def _with(answer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A copy of the answer with `extra` keys, keeping its model input for the audit log."""
    out = type(answer)({**answer, **extra})
    if hasattr(answer, "model_input"):
        out.model_input = answer.model_input
    return out


def _about(warning: str, patient_id: str) -> bool:
    """Adapter warnings shown on the card: about this patient or about the input as a whole."""
    return not warning.startswith("Patient/") or warning.startswith(f"Patient/{patient_id}:")


@router.post("/cds-services/{service_id}/feedback")
async def feedback(service_id: str, body: FeedbackRequest, request: Request) -> dict[str, Any]:
    """Store card outcomes in the audit log with the version of the model that made the card.

    Free text is not stored (the audit log holds no free text that may carry identifiers):
    not `overrideReason.userComment`, nor the reason's `display` or `text`; the reason's codes
    are. Card and suggestion ids are kept when they are UUIDs, else hashed.
    """
    if service_id not in SERVICES:
        raise HTTPException(404, f"no CDS service {service_id!r}; see GET /cds-services")
    audit = getattr(request.app.state, "audit", None)
    if audit is None or not audit.writable():
        raise HTTPException(503, "the audit log is not available; feedback not stored")
    ledger = _ledger(request, _settings(request))
    scorer = getattr(request.app.state, "scorer", None)
    current = dict(getattr(getattr(scorer, "model", None), "info", {}) or {})
    for item in body.feedback:
        known = ledger.get(item.card)
        if known is None:
            patient_id = episode_id = f"cds-card:{item.card}"
            version = str(current.get("version", "unknown"))
        else:
            patient_id, episode_id, version = known
        stored = {
            "service": service_id,
            "card": _opaque(audit, item.card),
            "card_known": known is not None,
            "outcome": item.outcome,
            "outcomeTimestamp": item.outcomeTimestamp.isoformat(),
            "acceptedSuggestions": [
                _opaque(audit, s.get("id"))
                for s in item.acceptedSuggestions or []
                if isinstance(s, dict)
            ],
            "overrideReason": _reason_codes(
                audit, item.overrideReason.reason if item.overrideReason else None
            ),
        }
        try:
            await run_in_threadpool(
                audit.record_feedback,
                model_version=version,
                patient_id=patient_id,
                episode_id=episode_id,
                feedback=stored,
                caller="cds-client",
            )
        except AuditUnavailable:
            raise HTTPException(503, "the audit log is not writable; feedback not stored") from None
    return {}
