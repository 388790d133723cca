"""The items logic: plain functions that take the session first, so they are easy to
call from a router, a script or a test. They raise domain errors, never HTTP ones."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.items.cache import ItemCache
from app.items.exceptions import ItemNameTaken, ItemNotFound
from app.items.models import Item
from app.items.schemas import ItemCreate, ItemRead, ItemUpdate

NAME_CONSTRAINT = "uq_items_name"


async def _flush_or_name_taken(session: AsyncSession) -> None:
    """Flush now, so a duplicate name surfaces here as ItemNameTaken. Checking first
    with a SELECT would race with a concurrent insert; the constraint does not."""
    try:
        await session.flush()
    except IntegrityError as exc:
        constraint = getattr(exc.orig.__cause__, "constraint_name", None) if exc.orig else None
        if constraint == NAME_CONSTRAINT:
            raise ItemNameTaken from None
        raise


async def create_item(session: AsyncSession, data: ItemCreate) -> Item:
    item = Item(name=data.name, description=data.description)
    session.add(item)
    await _flush_or_name_taken(session)
    return item


async def list_items(session: AsyncSession, *, limit: int, offset: int) -> tuple[list[Item], int]:
    """A page of items, oldest first, and the total count. The id breaks ties, so
    the order is stable across pages even for items created in the same instant."""
    total = await session.scalar(select(func.count()).select_from(Item))
    page = await session.scalars(
        select(Item).order_by(Item.created_at, Item.id).limit(limit).offset(offset)
    )
    return list(page), total or 0


async def get_item(session: AsyncSession, item_id: uuid.UUID) -> Item:
    item = await session.get(Item, item_id)
    if item is None:
        raise ItemNotFound(item_id)
    return item


async def get_item_cached(session: AsyncSession, cache: ItemCache, item_id: uuid.UUID) -> ItemRead:
    """Cache-aside read: Redis first, then Postgres, filling the cache on the way back."""
    cached = await cache.get(item_id)
    if cached is not None:
        return cached
    item = ItemRead.model_validate(await get_item(session, item_id))
    await cache.set(item)
    return item


async def update_item(
    session: AsyncSession, cache: ItemCache, item_id: uuid.UUID, changes: ItemUpdate
) -> Item:
    item = await get_item(session, item_id)
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(item, field, value)
    await _flush_or_name_taken(session)
    # Commit before invalidating: invalidating first would let a concurrent read
    # cache the old row again until the TTL ends.
    await session.commit()
    await cache.invalidate(item_id)
    return item


async def delete_item(session: AsyncSession, cache: ItemCache, item_id: uuid.UUID) -> None:
    item = await get_item(session, item_id)
    await session.delete(item)
    await session.commit()
    await cache.invalidate(item_id)
