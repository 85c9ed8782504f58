"""With a token set, every route but /healthz refuses without it (route by route, live server)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.routing import APIRoute
from starlette.routing import Route

from serving.http.access import COOKIE, session_value
from serving.http.app import create_app
from serving.scoring.scorer import Scorer
from serving.settings import ServingSettings

TOKEN = "gate-token-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATH_VALUES = {"name": "app.js", "service_id": "ctit-patient-view"}


def _inventory(routes, prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """Every (path, methods) of the app, through the routers FastAPI includes lazily."""
    for route in routes:
        if isinstance(route, APIRoute | Route):
            yield prefix + route.path, set(route.methods or ())
        elif hasattr(route, "original_router"):  # fastapi's included router
            inner = prefix + getattr(route.include_context, "prefix", "")
            yield from _inventory(route.original_router.routes, inner)


@pytest.fixture(scope="module")
def gated(deployable_model, tmp_path_factory) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    settings = ServingSettings(
        model_uri="in-memory",
        api_token=TOKEN,
        audit_path=tmp_path_factory.mktemp("gate") / "audit.db",
        audit_salt="pepper",
        login_attempts=10_000,  # this test sends a wrong token to every route; see test_hostile
    )
    app = create_app(settings, scorer=Scorer(deployable_model, uri="in-memory"))
    routes = []
    for path, methods in _inventory(app.routes):
        path = re.sub(r"{(\w+)(:\w+)?}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)
        routes += [(method, path) for method in sorted(methods) if method != "HEAD"]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    yield url, routes
    server.should_exit = True
    thread.join(timeout=10)


def test_every_route_but_healthz_refuses_without_the_token(gated) -> None:
    url, routes = gated
    paths = {path for _, path in routes}
    # the inventory covers the API, the page, its assets, the docs, CDS Hooks and FHIR
    assert {"/v1/score", "/v1/score/batch", "/v1/model", "/readyz", "/", "/docs"} <= paths
    assert {"/openapi.json", "/cds-services", "/ui/options", "/ui/static/app.js"} <= paths
    refused, allowed = [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, path in routes:
            without = client.request(method, path, json={})
            wrong = client.request(method, path, json={}, headers={"Authorization": "Bearer x"})
            cookie = client.request(method, path, json={}, cookies={COOKIE: "forged"})
            if path == "/healthz":
                assert without.status_code == 200
                continue
            for answer in (without, wrong, cookie):
                assert answer.status_code == 401, (method, path, answer.status_code)
                assert "Traceback" not in answer.text
            refused.append((method, path))
            with_token = client.request(method, path, json={}, headers=AUTH)
            assert with_token.status_code != 401, (method, path)
            allowed.append((method, path))
    assert len(refused) == len(routes) - 1 and allowed == refused


def test_a_browser_signs_in_with_a_form_and_then_uses_the_page(gated, record) -> None:
    url, _ = gated
    with httpx.Client(base_url=url, timeout=30) as browser:
        page = browser.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 401
        assert '<form method="post" action="/ui/login">' in page.text
        assert (
            'label for="token"' in page.text and "http" not in page.text.lower().split("<body")[1]
        )
        wrong = browser.post("/ui/login", data={"token": "guess"})
        assert wrong.status_code == 401 and "not right" in wrong.text
        assert COOKIE not in browser.cookies
        signed_in = browser.post("/ui/login", data={"token": TOKEN})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
        set_cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        assert "Max-Age=43200" in set_cookie
        assert TOKEN not in set_cookie  # the cookie holds an HMAC, never the token
        assert browser.cookies[COOKIE] == session_value(TOKEN)
        assert browser.get("/").status_code == 200
        assert browser.post("/v1/score", json=record).status_code == 200


def test_no_token_configured_means_open(deployable_model, tmp_path: Path, record) -> None:
    settings = ServingSettings(model_uri="m", audit_path=tmp_path / "a.db", audit_salt="s")
    app = create_app(settings, scorer=Scorer(deployable_model, uri="m"))
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        assert client.post("/v1/score", json=record).status_code == 200
