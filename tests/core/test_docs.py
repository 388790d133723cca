"""/docs works offline in development and is off in production."""

from __future__ import annotations

from httpx import AsyncClient

from app.core.config import Settings
from tests.conftest import with_overrides
from tests.core.conftest import CoreClientMaker


async def test_docs_load_nothing_from_a_cdn(core_client: AsyncClient) -> None:
    page = await core_client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text
    bundle = await core_client.get("/swagger/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("application/javascript")


async def test_production_serves_the_schema_but_not_the_docs(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    production = with_overrides(settings, environment="production", auth_issuer=None)
    client = await make_core_client(production)
    assert (await client.get("/docs")).status_code == 404
    assert (await client.get("/openapi.json")).status_code == 200
