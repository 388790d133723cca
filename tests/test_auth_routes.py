"""Deny by default, checked over the whole app: every route is either on the public
list or needs an identity with a declared scope, and refuses a request without one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jwt
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from httpx import AsyncClient

from app.core.auth.dependencies import authenticate, requires
from app.core.auth.dependencies import declared_scopes as routes_scopes
from app.core.config import Settings
from app.core.principal import ADMIN_SUFFIX
from app.main import create_app
from tests.conftest import ROOT, AppClientMaker, declared_scopes
from tests.issuer import Issuer

# Routes anyone may call: probes and the API's description (the docs only outside
# production).
PUBLIC = {"/health", "/health/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
DOCS_ASSETS = "/swagger/"  # Swagger UI's own files, served with /docs (app/core/docs.py)
SCHEMES = {"bearerAuth", "apiKey"}


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, hidden ones too: app.routes holds
    each included router as one entry, which iter_route_contexts walks into."""
    found = []
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.path:
            found += [(method, context.path) for method in sorted(context.methods or ())]
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)


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
    for method, path in operations(create_app(settings)):
        if not path.startswith("/api/"):
            public = path in PUBLIC or path.startswith(DOCS_ASSETS)
            assert public, f"{path}: public, but not on the public list"
            continue
        response = await anonymous.request(method, concrete(path), json={})
        assert response.status_code == 401, f"{method} {path}: {response.status_code}"
        assert response.headers["www-authenticate"] == "Bearer"


async def unguarded(client: AsyncClient, app: FastAPI) -> list[str]:
    """The /api/ routes that let in a caller holding no scope: every route, not only
    those in the OpenAPI document (a route with include_in_schema=False is not there)."""
    found = []
    for method, path in operations(app):
        if path.startswith("/api/"):
            response = await client.request(method, concrete(path), json={})
            if response.status_code != 403:
                found.append(f"{method} {path}: {response.status_code}")
    return found


async def test_every_api_route_refuses_a_caller_without_its_scope(
    make_client: AppClientMaker, settings: Settings
) -> None:
    app = create_app(settings)
    assert await unguarded(await make_client(settings, app, scopes=""), app) == []


async def test_a_hidden_route_without_a_scope_is_found(
    make_client: AppClientMaker, settings: Settings
) -> None:
    app = create_app(settings)
    app.include_router(hidden_router, prefix="/api/v1", dependencies=[Depends(authenticate)])
    client = await make_client(settings, app, scopes="")
    assert await unguarded(client, app) == ["GET /api/v1/export: 200"]
    assert ("GET", "/api/v1/export") in operations(app)


hidden_router = APIRouter()


@hidden_router.get("/export", include_in_schema=False)
async def export() -> dict[str, str]:
    return {"everything": "here"}


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


def test_the_scopes_a_key_may_be_given_are_those_the_routes_require(settings: Settings) -> None:
    """What `python -m app.core.auth.keys create` checks a key's scopes against: in a
    process of its own, as the command runs (no router imported yet, nor the tests' probe
    routes), exactly the scopes the service's routes declare and `<resource>:admin` for
    each of their resources (Principal.can_administer)."""
    # Empty in a service whose routes declare no scope (a fork made with examples=no):
    # then the command must list none either.
    declared = set(declared_scopes(create_app(settings)).split())
    expected = declared | {f"{scope.partition(':')[0]}{ADMIN_SUFFIX}" for scope in declared}
    listed = subprocess.run(  # our own interpreter and module
        [
            sys.executable,
            "-c",
            "import app.core.auth.dependencies as m; print(*m.declared_scopes())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert set(listed.stdout.split()) == expected
    assert declared <= routes_scopes()  # and in this process, the probe routes' besides
