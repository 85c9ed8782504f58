"""Access control: with a token configured, every route but `/healthz` refuses without it.

Machines send `Authorization: Bearer <token>`. A person opening the clinician page in a browser
gets a 401 answer holding a sign-in form instead; posting the right token to `/ui/login` sets a
session cookie (HttpOnly, SameSite=Strict, derived from the token, so it dies when the token is
rotated; the browser drops it after `SESSION_SECONDS`) and the page's own calls then carry it.
Behind a TLS-terminating proxy, the proxy should add the `Secure` attribute; ctit itself serves
plain HTTP on loopback. Liveness (`/healthz`) stays open for the
orchestrator; readiness, the docs, the page and its assets do not, since they reveal the model
and the service.

`AccessGate` is the ASGI middleware; `require_token` is the same check as a FastAPI dependency
(it documents the bearer scheme in the OpenAPI schema and guards routers mounted without the gate).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from http.cookies import SimpleCookie
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.settings import ServingSettings

OPEN_PATHS = frozenset({"/healthz"})
LOGIN_PATH = "/ui/login"
COOKIE = "ctit_session"
#: A browser session lasts one working shift; then the form asks for the token again.
SESSION_SECONDS = 12 * 3600
_MAX_LOGIN_BYTES = 4096

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ctit: sign in</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f4f6f8;color:#1b1f24;margin:0}}
main{{max-width:26rem;margin:12vh auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px rgba(0,0,0,.15)}}
h1{{font-size:1.3rem;margin-top:0}} label{{display:block;font-weight:600;margin:.5rem 0}}
input{{width:100%;box-sizing:border-box;padding:.55rem;font-size:1rem;border:1px solid #5a6472;
border-radius:4px}} button{{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem;border:0;
border-radius:4px;background:#0b5cad;color:#fff;cursor:pointer}}
button:focus,input:focus{{outline:3px solid #f0a30a;outline-offset:1px}}
.error{{color:#a4000f;font-weight:600}}
</style></head>
<body><main>
<h1>ctit: hetrombopag response prediction</h1>
<p>This service needs its access token.</p>
<form method="post" action="/ui/login">
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required
 autofocus aria-describedby="token-error">
<p id="token-error" class="error" role="alert">{error}</p>
<button type="submit">Sign in</button>
</form></main></body></html>
"""
_LOGIN_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
)


def session_value(token: str) -> str:
    """The session cookie's value for `token` (an HMAC, so the cookie never holds the token)."""
    return hmac.new(token.encode("utf-8"), b"ctit-session-v1", hashlib.sha256).hexdigest()


def token_accepted(headers: Iterable[tuple[bytes, bytes]], token: str) -> bool:
    """Whether the request headers carry the bearer token or a valid session cookie."""
    expected = token.encode("utf-8")
    session = session_value(token).encode("ascii")
    for name, value in headers:
        if name == b"authorization":
            scheme, _, given = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), expected):
                return True
        elif name == b"cookie":
            cookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001 - a malformed cookie header is just no session
                continue
            morsel = cookie.get(COOKIE)
            if morsel is not None and hmac.compare_digest(morsel.value.encode("ascii"), session):
                return True
    return False


_bearer = HTTPBearer(auto_error=False, description="Needed when CTIT_API_TOKEN is set.")


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
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


class AttemptLimit:
    """Wrong sign-ins per client address in a sliding window (in memory, per server process).

    Counts failed `/ui/login` posts and requests carrying a wrong bearer token; a request that
    carries no credentials at all is not an attempt. At most `_MAX_CLIENTS` addresses are
    remembered (the oldest forgotten first), so the table cannot grow without bound.
    """

    _MAX_CLIENTS = 10000

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def blocked(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may try now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.attempts:
            return None
        return max(self.window_s - (now - times[0]), 0.0)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self._MAX_CLIENTS:
            self._failures.popitem(last=False)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _has_credentials(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the request offers a bearer token (a stale session cookie is not an attempt:
    a browser sends it with every asset)."""
    return any(name == b"authorization" for name, _ in headers)


class AccessGate:
    """ASGI middleware: refuse (401) every request without the token, except `OPEN_PATHS`.

    After `attempts` wrong sign-ins (form or bearer) from one address within `window_s` seconds,
    further attempts from it get 429 with `Retry-After` until the window has passed.
    """

    def __init__(
        self, app: ASGIApp, token: str | None, attempts: int = 10, window_s: float = 60.0
    ) -> None:
        self.app = app
        self.token = token
        self.limit = AttemptLimit(attempts, window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        login = scope["path"] == LOGIN_PATH and scope["method"] == "POST"
        if login or _has_credentials(scope["headers"]):
            wait = self.limit.blocked(client)
            if wait is not None:
                await _send(
                    send,
                    429,
                    b'{"detail": "too many wrong sign-ins from this address; try again later"}',
                    "application/json",
                    [(b"retry-after", str(max(int(wait) + 1, 1)).encode("ascii"))],
                )
                return
        if login:
            await self._login(receive, send, client)
            return
        if token_accepted(scope["headers"], self.token):
            scope.setdefault("state", {})["authenticated"] = True
            await self.app(scope, receive, send)
            return
        if _has_credentials(scope["headers"]):
            self.limit.failed(client)
        if scope["method"] == "GET" and _wants_html(scope["headers"]):
            await _send(send, 401, _page(""), "text/html; charset=utf-8", [_csp()])
            return
        body = json.dumps({"detail": "missing or invalid bearer token"}).encode("utf-8")
        await _send(send, 401, body, "application/json", [(b"www-authenticate", b"Bearer")])

    async def _login(self, receive: Receive, send: Send, client: str) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if len(raw) > _MAX_LOGIN_BYTES:
                await _send(send, 413, b'{"detail": "login form too large"}', "application/json")
                return
            if not message.get("more_body", False):
                break
        given = parse_qs(raw.decode("utf-8", "replace")).get("token", [""])[0]
        if not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
            self.limit.failed(client)
            page = _page("That token is not right. Nothing was stored.")
            await _send(send, 401, page, "text/html; charset=utf-8", [_csp()])
            return
        cookie = (
            f"{COOKIE}={session_value(self.token)}; Path=/; HttpOnly; SameSite=Strict; "
            f"Max-Age={SESSION_SECONDS}"
        )
        await _send(
            send,
            303,
            b"",
            "text/plain",
            [(b"location", b"/"), (b"set-cookie", cookie.encode("ascii"))],
        )


def _wants_html(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name == b"accept" and b"text/html" in value for name, value in headers)


def _page(error: str) -> bytes:
    return _LOGIN_PAGE.format(error=error).encode("utf-8")


def _csp() -> tuple[bytes, bytes]:
    return (b"content-security-policy", _LOGIN_CSP.encode("ascii"))


async def _send(
    send: Send,
    status: int,
    body: bytes,
    media_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", media_type.encode("ascii")),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
