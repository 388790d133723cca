"""Helpers for tests that need items (the items tests, and the domains that refer to items)."""

from __future__ import annotations

from httpx import AsyncClient

ITEMS = "/api/v1/items"


async def create(client: AsyncClient, name: str, description: str | None = None) -> dict[str, str]:
    response = await client.post(ITEMS, json={"name": name, "description": description})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body
