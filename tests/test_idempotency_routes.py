"""Every POST of the API takes an Idempotency-Key (app/core/idempotency.py): a route
that creates something and cannot be retried safely fails here, not in production."""

from __future__ import annotations

from httpx import AsyncClient

from app.core.idempotency import HEADER


async def test_every_api_post_takes_an_idempotency_key(client: AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    posts = {path: ops["post"] for path, ops in paths.items() if "post" in ops}
    for path, operation in posts.items():
        headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        assert HEADER in headers, f"POST {path}: add dependencies=[idempotent]"
