"""The items service against concurrent transactions: committed data on connections of
their own (not the test's rolled-back transaction), since a race needs two of them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_session_factory
from app.core.redis import OptionalRedis
from app.items import service
from app.items.cache import ItemCache
from app.items.exceptions import ItemNotFound
from app.items.models import Item
from app.items.schemas import ItemCreate, ItemRead, ItemUpdate


@pytest.fixture
async def cache(settings: Settings) -> AsyncIterator[ItemCache]:
    redis = OptionalRedis.from_settings(settings)
    yield ItemCache(redis, resource="items", model=ItemRead, ttl_seconds=60)
    await redis.aclose()


async def wait_for_lock_waiters(engine: AsyncEngine, count: int) -> None:
    """Until `count` backends of this database wait on a lock (5 s at most)."""
    async with engine.connect() as watcher:
        for _ in range(500):
            waiting = await watcher.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting == count:
                return
            # pg_stat_activity is read once per transaction: end it to see it change.
            await watcher.rollback()
            await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {count} backend(s) waiting on a lock")


async def test_an_update_racing_a_delete_is_not_found_not_a_lost_write(
    engine: AsyncEngine, cache: ItemCache
) -> None:
    """The delete locks the row first; the update waits for that lock (FOR UPDATE), then
    finds no row: ItemNotFound (404). Reading the row without the lock would see it,
    and its UPDATE would then match nothing: a 500 from SQLAlchemy's stale-data check."""
    sessions: async_sessionmaker[AsyncSession] = create_session_factory(engine)
    async with sessions() as setup:
        item = await service.create_item(setup, ItemCreate(name=f"race-{uuid.uuid4().hex}"))
        await setup.commit()
    try:
        async with sessions() as deleter, sessions() as updater:
            await service.delete_item(deleter, cache, item.id)  # row locked, not yet committed
            update = asyncio.create_task(
                service.update_item(updater, cache, item.id, ItemUpdate(name="lost"))
            )
            await wait_for_lock_waiters(engine, 1)
            assert not update.done()  # it waits for the delete's lock
            await deleter.commit()
            with pytest.raises(ItemNotFound):
                await update
            await updater.rollback()
        async with sessions() as check:
            assert await check.get(Item, item.id) is None
    finally:
        async with sessions() as cleanup:  # in case an assert fired before the commit
            await cleanup.execute(delete(Item).where(Item.id == item.id))
            await cleanup.commit()
