"""Typed settings of the scoring service, read from the environment at the CLI edge only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MIB = 1024 * 1024
#: The most server processes `ctit serve --workers` starts (and SIGTTIN grows to).
MAX_WORKERS = 32

#: Environment variables `ServingSettings.from_env` reads, and the field each one sets.
ENVIRONMENT = {
    "CTIT_API_TOKEN": "api_token",
    "CTIT_AUDIT_DB": "audit_path",
    "CTIT_AUDIT_SALT": "audit_salt",
    "CTIT_AUDIT_SYNCHRONOUS": "audit_synchronous",
    "CTIT_AUDIT_MODEL_INPUTS": "audit_model_inputs",
    "CTIT_MAX_BODY_BYTES": "max_body_bytes",
    "CTIT_MAX_BATCH_BYTES": "max_batch_bytes",
    "CTIT_MAX_BATCH_RECORDS": "max_batch_records",
    "CTIT_CDS_FHIR_SERVERS": "cds_fhir_servers",
    "CTIT_MODE": "mode",
    "CTIT_PUBLIC_URL": "public_url",
    "CTIT_LOGIN_ATTEMPTS": "login_attempts",
    "CTIT_HEADER_TIMEOUT_S": "header_timeout_s",
    "CTIT_BODY_TIMEOUT_S": "body_timeout_s",
    "CTIT_TELEMETRY": "telemetry",
}


def fhir_base_url(url: str) -> str:
    """`url` as a FHIR server base URL in normal form, or ValueError saying what is wrong.

    Normal form: scheme and host in lower case, no default port, no trailing slash. Refused: a
    scheme other than http/https, no host, a bad port, user info, a query or a fragment, and
    `.`/`..` path segments (a base must name one place, not a way around the allow-list).
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http(s) URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r} carries user info; give the bare base URL")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"{url!r} has a query or fragment; give the bare base URL")
    path = parts.path.rstrip("/")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(f"{url!r} has '.' or '..' path segments")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, path, "", ""))


class ScoringOptions(BaseModel):
    """How answers are built: warnings thresholds and the size of the explanation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stale_lab_days: int = Field(
        7, ge=1, description="A key lab older than this many days before the index date is warned."
    )
    baseline_window_days: int = Field(
        3, ge=0, description="Baseline PLT is the last PLT in this many days up to the index date."
    )
    key_labs: tuple[str, ...] = Field(
        ("PLT", "HGB", "ANC", "ALB"), description="Analytes whose absence is warned."
    )
    top_factors: int = Field(5, ge=0, le=50, description="Number of factors put in plain words.")


class ServingSettings(BaseModel):
    """Everything the HTTP service needs; built once by `ctit serve` and passed to `create_app`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_uri: str = Field(
        description="models:/name@alias, models:/name/1, runs:/id/path or a path."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        None, description="When set, every route but /healthz needs this bearer token."
    )
    audit_path: Path = Field(Path("ctit-audit.db"), description="SQLite file of the audit log.")
    audit_salt: SecretStr | None = Field(
        None,
        description="Salt of the identifier hashes (env CTIT_AUDIT_SALT). Required in production "
        "mode. When unset (development only) a random salt is kept in the log itself, where "
        "anyone who can read the file can brute-force short identifiers: a loud warning is "
        "logged.",
    )
    mode: Literal["development", "production"] = Field(
        "development",
        description="env CTIT_MODE. `production` refuses to start without CTIT_AUDIT_SALT, so "
        "the salt never lives in the audit database.",
    )
    login_attempts: int = Field(
        10,
        ge=1,
        description="Wrong sign-ins allowed per client address in `login_window_s`; more get 429.",
    )
    login_window_s: float = Field(60.0, gt=0, description="Window of the sign-in limit.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A connection whose request line and headers are not complete this long "
        "after its first byte (or after the previous answer) is closed (slowloris).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="A request body not complete this long after the headers gets 408 and "
        "the connection is closed.",
    )
    keep_alive_s: int = Field(
        5, ge=1, le=300, description="Idle keep-alive connections are closed after this long."
    )
    audit_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite sync of the audit log: FULL survives power loss (default); NORMAL "
        "survives a crash of the service only, and is faster.",
    )
    audit_model_inputs: bool = Field(
        True,
        description="Also record each score's model-input feature vector (no identifiers) in "
        "the audit log, for `ctit monitor`; false switches it off.",
    )
    telemetry: bool = Field(
        False,
        description="env CTIT_TELEMETRY: FastAPI's own OpenTelemetry spans, metrics and logs of "
        "each request, exported through the process's OpenTelemetry providers when some are "
        "configured. Off by default: the audit log is the service's record, telemetry leaves "
        "the process (its hooks see request bodies), and even unconfigured it costs a check of "
        "the providers on every request (~0.04 ms).",
    )
    max_body_bytes: int = Field(MIB, ge=1024, description="Largest body of a single-patient call.")
    max_batch_bytes: int = Field(32 * MIB, ge=1024, description="Largest body of a batch call.")
    max_batch_records: int = Field(1000, ge=1, description="Most patient records in one batch.")
    scoring: ScoringOptions = ScoringOptions()
    cds_fhir_servers: tuple[str, ...] = Field(
        (),
        description="Base URLs of the FHIR servers the CDS Hooks service may fetch missing "
        "prefetch data from (env CTIT_CDS_FHIR_SERVERS, comma-separated). A hook's fhirServer "
        "must match one exactly in scheme, host and port, with a path at or under its path. "
        "Empty (the default): nothing is ever fetched.",
    )

    public_url: str | None = Field(
        None,
        description="env CTIT_PUBLIC_URL: the service's public base URL. CDS Hooks cards link to "
        "the model card only under it; unset, cards carry no links (never one built from the "
        "request's Host header).",
    )

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return fhir_base_url(value) if value else None

    @field_validator("cds_fhir_servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("cds_fhir_servers")
    @classmethod
    def _check_servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(fhir_base_url(url) for url in value))

    @model_validator(mode="after")
    def _production_salt(self) -> ServingSettings:
        if self.mode == "production" and self.audit_salt is None:
            raise ValueError(
                "production mode needs CTIT_AUDIT_SALT (a long random secret kept outside the "
                "audit database); without it short identifiers can be recovered from the hashes"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **values: Any) -> ServingSettings:
        """Settings from `values`, completed by the CTIT_* variables of `environ` (values win)."""
        merged: dict[str, Any] = {}
        for variable, field in ENVIRONMENT.items():
            raw = environ.get(variable)
            if raw not in (None, ""):
                merged[field] = raw
        merged.update({key: value for key, value in values.items() if value is not None})
        return cls(**merged)
