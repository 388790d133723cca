"""The write rate limit: 429 with Retry-After past the limit, per client, failing open."""

from __future__ import annotations

from httpx import AsyncClient
from redis.asyncio import Redis

from app.core.config import Settings
from app.core.rate_limit import hit
from tests.conftest import UNREACHABLE_REDIS, AppClientMaker, with_overrides

ITEMS = "/api/v1/items"


async def limited_client(
    make_client: AppClientMaker, settings: Settings, **more: object
) -> AsyncClient:
    return await make_client(
        with_overrides(settings, rate_limit_writes=3, rate_limit_window_seconds=30, **more)
    )


async def test_writes_past_the_limit_get_429_with_retry_after(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await limited_client(make_client, settings)
    statuses = [(await client.post(ITEMS, json={"name": f"n{n}"})).status_code for n in range(3)]
    assert statuses == [201, 201, 201]
    response = await client.post(ITEMS, json={"name": "one too many"})
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    # Every write method counts; reads are not limited.
    item_id = (await client.get(ITEMS)).json()["items"][0]["id"]
    assert (await client.patch(f"{ITEMS}/{item_id}", json={"name": "z"})).status_code == 429
    assert (await client.delete(f"{ITEMS}/{item_id}")).status_code == 429
    assert (await client.get(f"{ITEMS}/{item_id}")).status_code == 200


async def test_limit_is_per_client(redis: Redis) -> None:
    for _ in range(2):
        assert await hit(redis, "ratelimit:test:a", limit=2, window_seconds=30) is None
    assert await hit(redis, "ratelimit:test:a", limit=2, window_seconds=30) is not None
    assert await hit(redis, "ratelimit:test:b", limit=2, window_seconds=30) is None


async def test_window_is_not_extended_by_later_requests(redis: Redis) -> None:
    await hit(redis, "ratelimit:test:w", limit=10, window_seconds=30)
    await redis.expire("ratelimit:test:w", 5)  # as if 25 s of the window had passed
    await hit(redis, "ratelimit:test:w", limit=10, window_seconds=30)
    assert await redis.ttl("ratelimit:test:w") <= 5


async def test_zero_disables_the_limit(make_client: AppClientMaker, settings: Settings) -> None:
    client = await make_client(with_overrides(settings, rate_limit_writes=0))
    for n in range(5):
        assert (await client.post(ITEMS, json={"name": f"free{n}"})).status_code == 201


async def test_limit_fails_open_when_redis_is_down(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await limited_client(make_client, settings, redis_url=UNREACHABLE_REDIS)
    for n in range(5):
        assert (await client.post(ITEMS, json={"name": f"open{n}"})).status_code == 201
