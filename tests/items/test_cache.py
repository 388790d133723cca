"""Cache-aside for get-by-id: filled on read, dropped on update and delete."""

from __future__ import annotations

from httpx import AsyncClient
from redis.asyncio import Redis

from app.core.config import Settings
from app.items.cache import cache_key
from app.items.schemas import ItemRead
from tests.items.test_router import ITEMS, create


async def test_get_fills_the_cache_with_a_ttl(
    client: AsyncClient, redis: Redis, settings: Settings
) -> None:
    item = await create(client, "cached")
    key = cache_key(ItemRead.model_validate(item).id)
    assert await redis.get(key) is None  # creating does not fill it
    await client.get(f"{ITEMS}/{item['id']}")
    cached = await redis.get(key)
    assert cached is not None
    assert ItemRead.model_validate_json(cached).name == "cached"
    assert 0 < await redis.ttl(key) <= settings.item_cache_ttl_seconds


async def test_get_is_served_from_the_cache(client: AsyncClient, redis: Redis) -> None:
    item = await create(client, "original")
    await client.get(f"{ITEMS}/{item['id']}")
    key = cache_key(ItemRead.model_validate(item).id)
    # Change the cached copy behind the API's back: a read that returns it came from Redis.
    planted = ItemRead.model_validate(item | {"name": "from-cache"})
    await redis.set(key, planted.model_dump_json())
    assert (await client.get(f"{ITEMS}/{item['id']}")).json()["name"] == "from-cache"


async def test_update_invalidates(client: AsyncClient, redis: Redis) -> None:
    item = await create(client, "v1")
    await client.get(f"{ITEMS}/{item['id']}")
    await client.patch(f"{ITEMS}/{item['id']}", json={"name": "v2"})
    assert await redis.get(cache_key(ItemRead.model_validate(item).id)) is None
    assert (await client.get(f"{ITEMS}/{item['id']}")).json()["name"] == "v2"


async def test_delete_invalidates(client: AsyncClient, redis: Redis) -> None:
    item = await create(client, "gone")
    await client.get(f"{ITEMS}/{item['id']}")
    await client.delete(f"{ITEMS}/{item['id']}")
    assert await redis.get(cache_key(ItemRead.model_validate(item).id)) is None
    assert (await client.get(f"{ITEMS}/{item['id']}")).status_code == 404
