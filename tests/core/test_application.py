"""build_app(): what it sets up: FastAPI's telemetry switches, CORS."""

from __future__ import annotations

from httpx import AsyncClient

from app.core.config import Settings
from tests.conftest import with_overrides
from tests.core.conftest import CoreClientMaker, build_core_app


def test_fastapi_opentelemetry_is_off_unless_enabled(settings: Settings) -> None:
    """Off, it costs nothing per request; on, FastAPI traces for the SDK you configure.
    FastAPI keeps its resolved telemetry config privately: its switches are what count."""
    off = build_core_app(settings)
    on = build_core_app(with_overrides(settings, opentelemetry_enabled=True))
    assert not any(off._telemetry[part] for part in ("tracing", "metrics", "logs"))
    assert all(on._telemetry[part] for part in ("tracing", "metrics", "logs"))


async def test_cors_answers_preflights_and_exposes_the_headers_clients_need(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    origin = "https://app.example"
    client = await make_core_client(with_overrides(settings, cors_origins=[origin]))
    preflight = await client.options(
        "/probe/echo",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    response = await client.get("/probe/teapot", headers={"Origin": origin})
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"x-request-id", "location", "retry-after"} <= exposed
    other = await client.get("/probe/teapot", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_unless_origins_are_set(core_client: AsyncClient) -> None:
    response = await core_client.get("/probe/teapot", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers
