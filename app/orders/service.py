"""The orders logic. Every query loads the order's item in the same statement
(joinedload), so a page of orders is one query, however long the page."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from app.core.db_errors import flush_or_raise
from app.core.pagination import PageParams, Paginator
from app.orders.exceptions import OrderNotFound, UnknownItem
from app.orders.models import ITEM_FOREIGN_KEY, Order
from app.orders.schemas import OrderCreate

WITH_ITEM = joinedload(Order.item)
# Oldest first, the id breaking ties: all orders, or one item's (the value of "item_id").
_OLDEST_FIRST = (Order.created_at, Order.id)
ORDER_PAGES = Paginator(select(Order).options(WITH_ITEM), _OLDEST_FIRST)
ITEM_ORDER_PAGES = Paginator(
    select(Order).options(WITH_ITEM).where(Order.item_id == bindparam("item_id")), _OLDEST_FIRST
)


async def create_order(session: AsyncSession, data: OrderCreate) -> Order:
    order = Order(item_id=data.item_id, quantity=data.quantity)
    session.add(order)
    # The foreign key, not a prior SELECT, decides whether the item exists: no race.
    await flush_or_raise(session, {ITEM_FOREIGN_KEY: lambda: UnknownItem(data.item_id)})
    await session.refresh(order, ["item"])
    return order


async def list_orders(
    session: AsyncSession, page: PageParams, *, item_id: uuid.UUID | None = None
) -> tuple[list[Order], str | None]:
    """A page of orders, oldest first, optionally only those of one item."""
    if item_id is None:
        return await ORDER_PAGES.page(session, page)
    return await ITEM_ORDER_PAGES.page(session, page, item_id=item_id)


async def get_order(session: AsyncSession, order_id: uuid.UUID) -> Order:
    order = await session.get(Order, order_id, options=[WITH_ITEM])
    if order is None:
        raise OrderNotFound(order_id)
    return order
