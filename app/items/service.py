"""The items logic: plain functions that take the session first, so they are easy to
call from a router, a script or a test. They raise domain errors, never HTTP ones,
and flush but never commit: the session dependency owns the transaction."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import read_session
from app.core.db_errors import FOREIGN_KEY_VIOLATION, flush_or_raise
from app.core.pagination import PageParams, Paginator
from app.items.cache import ItemCache
from app.items.exceptions import ItemInUse, ItemNameTaken, ItemNotFound
from app.items.models import Item
from app.items.schemas import ItemCreate, ItemRead, ItemUpdate

# The unique constraint, not a SELECT first, decides whether a name is free: no race.
NAME_TAKEN = {"uq_items_name": ItemNameTaken}
# Oldest first; the id breaks ties between equal timestamps.
ITEM_PAGES = Paginator(select(Item), (Item.created_at, Item.id))


async def create_item(session: AsyncSession, data: ItemCreate) -> Item:
    item = Item(**data.model_dump())
    session.add(item)
    await flush_or_raise(session, NAME_TAKEN)
    return item


async def list_items(session: AsyncSession, page: PageParams) -> tuple[list[Item], str | None]:
    """A page of items, oldest first."""
    return await ITEM_PAGES.page(session, page)


async def get_item(session: AsyncSession, item_id: uuid.UUID, *, for_update: bool = False) -> Item:
    """The item, or ItemNotFound. `for_update` locks its row until the transaction
    ends, so a concurrent delete makes an update a clean 404, not a lost write."""
    item = await session.get(Item, item_id, with_for_update=for_update)
    if item is None:
        raise ItemNotFound(item_id)
    return item


async def get_item_json(
    sessions: async_sessionmaker[AsyncSession], cache: ItemCache, item_id: uuid.UUID
) -> bytes:
    """The item's JSON, from the cache, else from Postgres (then cached). A session is
    opened on a miss only: a hit costs no session at all."""

    async def load() -> ItemRead:
        async with read_session(sessions) as session:
            return ItemRead.model_validate(await get_item(session, item_id))

    return await cache.get_or_load(item_id, load)


async def update_item(
    session: AsyncSession, cache: ItemCache, item_id: uuid.UUID, changes: ItemUpdate
) -> Item:
    item = await get_item(session, item_id, for_update=True)
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(item, field, value)
    await flush_or_raise(session, NAME_TAKEN)
    await cache.invalidate_on_commit(session, item_id)
    return item


async def delete_item(session: AsyncSession, cache: ItemCache, item_id: uuid.UUID) -> None:
    item = await get_item(session, item_id, for_update=True)
    await session.delete(item)
    await flush_or_raise(session, {FOREIGN_KEY_VIOLATION: ItemInUse})
    await cache.invalidate_on_commit(session, item_id)
