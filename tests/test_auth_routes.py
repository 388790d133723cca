"""Deny by default, checked over the whole app: every route is either on the public
list or needs an identity with a declared scope, and refuses a request without one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jwt
from fastapi.routing import APIRoute
from httpx import AsyncClient

from app.core.auth.dependencies import requires
from app.core.config import Settings
from app.main import create_app
from tests.conftest import AppClientMaker, declared_scopes
from tests.issuer import Issuer

# Routes anyone may call: probes and the API's description (the docs only outside
# production).
PUBLIC = {"/health", "/health/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
DOCS_ASSETS = "/swagger/"  # Swagger UI's own files, served with /docs (app/core/docs.py)
SCHEMES = {"bearerAuth", "apiKey"}


async def test_every_route_is_public_or_declares_its_scopes(client: AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    if any(path.startswith("/api/") for path in document["paths"]):  # a fork may have none yet
        assert set(document["components"]["securitySchemes"]) == SCHEMES
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path in PUBLIC:
                assert "security" not in operation, f"{method.upper()} {path} is public"
                continue
            security = operation.get("security")
            assert security, f"{method.upper()} {path}: add dependencies=[requires('<scope>')]"
            assert {name for requirement in security for name in requirement} == SCHEMES
            for requirement in security:
                for scopes in requirement.values():
                    assert scopes, f"{method.upper()} {path} names no scope"
            assert {"401", "403"} <= operation["responses"].keys()


async def test_every_api_route_refuses_a_request_without_credentials(
    make_client: AppClientMaker, settings: Settings
) -> None:
    anonymous = await make_client(settings, scopes=None)
    app = create_app(settings)
    # APIRoutes only: the dev docs' static files are Starlette routes, not operations.
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    for route in routes:
        if not route.path.startswith("/api/"):
            public = route.path in PUBLIC or route.path.startswith(DOCS_ASSETS)
            assert public, f"{route.path}: public, but not on the public list"
            continue
        path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", route.path)
        for method in route.methods or ():
            response = await anonymous.request(method, path, json={})
            assert response.status_code == 401, f"{method} {route.path}: {response.status_code}"
            assert response.headers["www-authenticate"] == "Bearer"


def test_a_dev_token_that_names_no_scope_holds_every_scope_the_routes_declare(
    settings: Settings, issuer: Issuer, tmp_path: Path
) -> None:
    # `make token` reads them from the dev stack's api; here, from a copy of its document,
    # with a route a fork added since.
    app = create_app(settings)
    app.add_api_route("/api/v1/widgets", lambda: None, dependencies=[requires("widgets:read")])
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(app.openapi()))
    token = issuer.cli_token("--openapi", document.as_uri())
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "widgets:read" in claims["scope"].split()
    assert claims["scope"] == declared_scopes(app)
