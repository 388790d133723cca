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


@pytest.mark.parametrize("path", ["/health", "/openapi.json", "/nowhere"])
async def test_head_answers_as_get_without_the_body(core_client: AsyncClient, path: str) -> None:
    get, head = await core_client.get(path), await core_client.head(path)
    assert head.status_code == get.status_code
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]


async def test_responses_are_not_stored_by_caches_unless_a_route_says_so(
    core_client: AsyncClient,
) -> None:
    assert (await core_client.get("/openapi.json")).headers["cache-control"] == "no-store"
    assert (await core_client.get("/nowhere")).headers["cache-control"] == "no-store"
    health = await core_client.get("/health")  # sets its own: kept, not doubled
    assert health.headers.get_list("cache-control") == ["no-store"]
