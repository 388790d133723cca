"""Every POST of the API takes an Idempotency-Key (app/core/idempotency.py): a route
that creates something and cannot be retried safely fails here, not in production."""

from __future__ import annotations

from httpx import AsyncClient

from app.core.config import Settings
from app.core.idempotency import HEADER, IdempotentRoute
from app.main import create_app


async def test_every_api_post_takes_an_idempotency_key(client: AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    posts = {path: ops["post"] for path, ops in paths.items() if "post" in ops}
    for path, operation in posts.items():
        headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        assert HEADER in headers, f"POST {path}: add dependencies=[idempotent]"


def test_every_keyed_route_authenticates_before_it_reads_the_key(settings: Settings) -> None:
    """A key read first is filed as anonymous: another caller from the same address could
    replay the response (such a route's keyed requests are a 500)."""
    for route in create_app(settings).routes:
        if isinstance(route, IdempotentRoute):
            assert not route.keyed_before_authentication, f"{route.path}: requires(...) first"
