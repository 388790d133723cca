"""Deny by default, checked over the whole app: every route is either on the public
list or needs an identity with a declared scope, and refuses a request without one."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from httpx import AsyncClient

from app.core.config import Settings
from app.main import create_app
from tests.conftest import AppClientMaker

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
