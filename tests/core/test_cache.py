"""ModelCache on a real Redis: hits are the stored bytes, fills are guarded by a
lease, so a read racing a write never puts stale data back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from app.core.cache import ModelCache, schema_fingerprint
from app.core.config import Settings
from app.core.redis import OptionalRedis
from tests.conftest import UNREACHABLE_REDIS, with_overrides


class Thing(BaseModel):
    id: uuid.UUID
    name: str


class ThingV2(BaseModel):
    id: uuid.UUID
    name: str
    colour: str


CacheMaker = Callable[..., ModelCache[BaseModel]]


@pytest.fixture
async def make_cache() -> AsyncIterator[CacheMaker]:
    """make_cache(settings, model=Thing): a cache on its own client, closed afterwards."""
    clients: list[OptionalRedis] = []

    def make(settings: Settings, model: type[BaseModel] = Thing) -> ModelCache[BaseModel]:
        clients.append(OptionalRedis.from_settings(settings))
        return ModelCache(clients[-1], resource="things", model=model, ttl_seconds=60)

    yield make
    for client in clients:
        await client.aclose()


async def test_a_miss_loads_and_fills_then_hits_return_the_stored_bytes(
    make_cache: CacheMaker, settings: Settings, redis: Redis
) -> None:
    cache = make_cache(settings)
    thing = Thing(id=uuid.uuid4(), name="first")
    loads = 0

    async def load() -> Thing:
        nonlocal loads
        loads += 1
        return thing

    body = await cache.get_or_load(thing.id, load)
    assert Thing.model_validate_json(body) == thing
    assert await cache.get_or_load(thing.id, load) == body
    assert loads == 1
    assert 0 < await redis.ttl(cache.key(thing.id)) <= 60


async def test_a_read_racing_an_invalidation_does_not_fill_stale_data(
    make_cache: CacheMaker, settings: Settings, redis: Redis
) -> None:
    """Reader: miss, lease, read the old row (slowly). Writer meanwhile: commit and
    invalidate. The reader's fill must not land; the next read loads afresh."""
    cache = make_cache(settings)
    thing_id = uuid.uuid4()
    loaded = asyncio.Event()
    release = asyncio.Event()

    async def slow_old_row() -> Thing:
        loaded.set()
        await release.wait()
        return Thing(id=thing_id, name="old")

    reader = asyncio.create_task(cache.get_or_load(thing_id, slow_old_row))
    await loaded.wait()
    await cache.invalidate(thing_id)  # what the writer does after its commit
    release.set()
    assert Thing.model_validate_json(await reader).name == "old"  # its own answer is fine
    assert await redis.get(cache.key(thing_id)) is None  # but it was not cached

    async def new_row() -> Thing:
        return Thing(id=thing_id, name="new")

    assert Thing.model_validate_json(await cache.get_or_load(thing_id, new_row)).name == "new"


async def test_errors_while_loading_are_not_cached(
    make_cache: CacheMaker, settings: Settings, redis: Redis
) -> None:
    cache = make_cache(settings)
    thing_id = uuid.uuid4()

    async def missing() -> Thing:
        raise LookupError(thing_id)

    for _ in range(2):
        with pytest.raises(LookupError):
            await cache.get_or_load(thing_id, missing)
    value = await redis.get(cache.key(thing_id))
    assert value is None or (
        isinstance(value, bytes) and value.startswith(b"lease:")
    )  # at most a lease, expiring


async def test_a_schema_change_uses_new_keys(make_cache: CacheMaker, settings: Settings) -> None:
    assert schema_fingerprint(Thing) != schema_fingerprint(ThingV2)
    thing_id = uuid.uuid4()
    assert make_cache(settings).key(thing_id) != make_cache(settings, ThingV2).key(thing_id)


async def test_redis_down_means_every_read_loads(
    make_cache: CacheMaker, settings: Settings
) -> None:
    cache = make_cache(with_overrides(settings, redis_url=UNREACHABLE_REDIS))
    thing = Thing(id=uuid.uuid4(), name="uncached")
    loads = 0

    async def load() -> Thing:
        nonlocal loads
        loads += 1
        return thing

    for _ in range(3):
        assert Thing.model_validate_json(await cache.get_or_load(thing.id, load)) == thing
    await cache.invalidate(thing.id)  # no error either
    assert loads == 3


async def test_a_redis_that_refuses_writes_serves_no_entry(
    make_cache: CacheMaker, settings: Settings, redis: Redis
) -> None:
    # A replica after a failover: the writers' invalidations fail there, so a hit could be
    # an entry a commit changed. The cache must go to the loader instead.
    cache = make_cache(settings)
    thing_id = uuid.uuid4()

    async def load(name: str) -> Thing:
        return Thing(id=thing_id, name=name)

    await cache.get_or_load(thing_id, lambda: load("before"))
    await redis.replicaof("127.0.0.1", 9)  # a primary that never answers
    try:
        body = await cache.get_or_load(thing_id, lambda: load("after the write"))
    finally:
        await redis.replicaof("NO", "ONE")
    assert Thing.model_validate_json(body).name == "after the write"
