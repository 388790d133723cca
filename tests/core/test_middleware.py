"""Request ids: kept when well-formed, generated otherwise, and returned (the lines they
are logged on: test_logging.py)."""

from __future__ import annotations

import uuid

import pytest
from httpx import AsyncClient


@pytest.mark.parametrize("incoming", ["abc-123", "trace.id:42_x", str(uuid.uuid4()), "a" * 128])
async def test_well_formed_request_id_is_kept(core_client: AsyncClient, incoming: str) -> None:
    response = await core_client.get("/openapi.json", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["", "has space", "a" * 129, "semi;colon", "new\\nline"])
async def test_malformed_request_id_is_replaced(core_client: AsyncClient, incoming: str) -> None:
    response = await core_client.get("/openapi.json", headers={"X-Request-ID": incoming})
    generated = response.headers["x-request-id"]
    assert generated != incoming
    assert uuid.UUID(hex=generated).hex == generated


async def test_each_request_gets_its_own_id(core_client: AsyncClient) -> None:
    first = (await core_client.get("/openapi.json")).headers["x-request-id"]
    second = (await core_client.get("/openapi.json")).headers["x-request-id"]
    assert first != second


async def test_error_responses_carry_the_request_id_once(core_client: AsyncClient) -> None:
    """A problem response sets the header itself; the middleware replaces it, never adds."""
    response = await core_client.get("/nowhere", headers={"X-Request-ID": "req-404"})
    assert response.status_code == 404
    assert response.headers.get_list("x-request-id") == ["req-404"]
    assert response.json()["request_id"] == "req-404"
