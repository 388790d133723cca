"""The items cache through the API: filled on read, dropped after update and delete."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import cast

import pytest
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.cache import ModelCache
from app.core.config import Settings
from app.core.db import get_session
from app.core.redis import OptionalRedis
from app.items import service
from app.items.schemas import ItemRead, ItemUpdate
from tests.conftest import AppClientMaker
from tests.issuer import Issuer
from tests.items.helpers import ITEMS, create


async def cache_key(settings: Settings, item_id: str) -> str:
    redis = OptionalRedis.from_settings(settings)
    cache = ModelCache(redis, resource="items", model=ItemRead, ttl_seconds=60)
    await redis.aclose()
    return cache.key(uuid.UUID(item_id))


async def test_get_fills_the_cache_with_a_ttl(
    client: AsyncClient, redis: Redis, settings: Settings
) -> None:
    item = await create(client, "cached")
    key = await cache_key(settings, item["id"])
    assert await redis.get(key) is None  # creating does not fill it
    response = await client.get(f"{ITEMS}/{item['id']}")
    assert response.status_code == 200
    assert await redis.get(key) == response.content
    # CACHE_TTL_SECONDS, set by the fill: not the few seconds of the lease it replaced.
    assert settings.cache_ttl_seconds / 2 < await redis.ttl(key) <= settings.cache_ttl_seconds
    # An id with no row: its 404 is not cached (at most the reader's lease is left).
    missing = str(uuid.uuid4())
    assert (await client.get(f"{ITEMS}/{missing}")).status_code == 404
    left = cast("bytes | None", await redis.get(await cache_key(settings, missing)))
    assert left is None or left.startswith(b"lease:")


async def test_get_is_served_from_the_cache_as_stored(
    client: AsyncClient, redis: Redis, settings: Settings
) -> None:
    item = await create(client, "original")
    key = await cache_key(settings, item["id"])
    # Plant an entry behind the API's back: a read that returns it came from Redis,
    # byte for byte, and was neither parsed nor validated again.
    planted = (await client.get(f"{ITEMS}/{item['id']}")).content
    await client.patch(f"{ITEMS}/{item['id']}", json={"name": "changed"})  # drops every copy
    planted = planted.replace(b"original", b"from-cache")
    await redis.set(key, planted)
    response = await client.get(f"{ITEMS}/{item['id']}")
    assert response.content == planted
    assert response.headers["content-type"] == "application/json"
    # No copy in the worker (the near cache is off by default): Redis emptied, the row.
    await redis.delete(key)
    assert (await client.get(f"{ITEMS}/{item['id']}")).json()["name"] == "changed"


async def test_update_and_delete_invalidate_after_commit(
    client: AsyncClient, redis: Redis, settings: Settings
) -> None:
    item = await create(client, "v1")
    key = await cache_key(settings, item["id"])
    await client.get(f"{ITEMS}/{item['id']}")
    await client.patch(f"{ITEMS}/{item['id']}", json={"name": "v2"})
    assert await redis.get(key) is None
    assert (await client.get(f"{ITEMS}/{item['id']}")).json()["name"] == "v2"
    await client.delete(f"{ITEMS}/{item['id']}")
    assert await redis.get(key) is None
    assert (await client.get(f"{ITEMS}/{item['id']}")).status_code == 404


async def test_the_redis_entry_outlives_the_transaction_that_changes_it(
    client: AsyncClient,
    redis: Redis,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Deleted after the commit, never before: a reader in between would load the old
    row and cache it again, for a whole TTL."""
    item = await create(client, "v1")
    key = await cache_key(settings, item["id"])
    await client.get(f"{ITEMS}/{item['id']}")
    optional_redis = OptionalRedis.from_settings(settings)
    cache = ModelCache(optional_redis, resource="items", model=ItemRead, ttl_seconds=60)
    request = cast("AsyncGenerator[AsyncSession]", get_session(session_factory))
    try:
        session = await anext(request)
        await service.update_item(session, cache, uuid.UUID(item["id"]), ItemUpdate(name="v2"))
        assert await redis.get(key) is not None  # flushed, not yet committed
        with pytest.raises(StopAsyncIteration):  # the request ends: commit, then the hooks
            await anext(request)
        assert await redis.get(key) is None
    finally:
        await request.aclose()  # if an assert failed mid-request: its session is closed
        await optional_redis.aclose()


async def test_a_refused_update_keeps_the_cache(
    client: AsyncClient, redis: Redis, settings: Settings
) -> None:
    """Nothing was committed, so nothing is invalidated."""
    await create(client, "taken")
    item = await create(client, "mine")
    key = await cache_key(settings, item["id"])
    await client.get(f"{ITEMS}/{item['id']}")
    assert (await client.patch(f"{ITEMS}/{item['id']}", json={"name": "taken"})).status_code == 409
    assert await redis.get(key) is not None


async def test_a_hit_opens_no_database_session(
    settings: Settings,
    issuer: Issuer,
    session_factory: async_sessionmaker[AsyncSession],
    read_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    opened = 0

    def counting_factory() -> AsyncSession:
        nonlocal opened
        opened += 1
        return read_session_factory()

    maker = AppClientMaker(
        session_factory, cast("async_sessionmaker[AsyncSession]", counting_factory), issuer
    )
    try:
        client = await maker(settings)
        item = await create(client, "hot")
        for _ in range(3):
            assert (await client.get(f"{ITEMS}/{item['id']}")).status_code == 200
    finally:
        await maker.close_all()
    assert opened == 1  # the first read's miss; the hits never made a session
