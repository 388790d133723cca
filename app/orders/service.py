"""The orders logic. Every query loads the order's item in the same statement
(joinedload), so a page of orders is one query, however long the page.

Object-level authorization lives here, in the queries: `owner` is the principal's
subject, or None for an orders:admin, who sees every order. Someone else's order is
"not found", so its existence does not leak."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from app.core.db_errors import flush_or_raise
from app.core.jobs.enqueue import enqueue
from app.core.pagination import PageParams, Paginator
from app.orders.exceptions import OrderNotFound, UnknownItem
from app.orders.models import ITEM_FOREIGN_KEY, Order
from app.orders.schemas import OrderCreate

# The jobs this service enqueues, named here: their handlers (jobs.py) may then use the
# service, which never imports them.
CONFIRM_ORDER = "confirm_order"

WITH_ITEM = joinedload(Order.item)
# Oldest first, the id breaking ties; each filter a bound value ("owner", "item_id").
_OLDEST_FIRST = (Order.created_at, Order.id)
_ALL = select(Order).options(WITH_ITEM)
_OWNERS = _ALL.where(Order.owner == bindparam("owner"))
_OF_ITEM = Order.item_id == bindparam("item_id")
# Keyed by (owner-scoped, one item's): four fixed statements, each with its own index.
PAGES = {
    (False, False): Paginator(_ALL, _OLDEST_FIRST),
    (False, True): Paginator(_ALL.where(_OF_ITEM), _OLDEST_FIRST),
    (True, False): Paginator(_OWNERS, _OLDEST_FIRST),
    (True, True): Paginator(_OWNERS.where(_OF_ITEM), _OLDEST_FIRST),
}


async def create_order(session: AsyncSession, data: OrderCreate, *, owner: str) -> Order:
    order = Order(item_id=data.item_id, quantity=data.quantity, owner=owner)
    session.add(order)
    # The foreign key, not a prior SELECT, decides whether the item exists: no race.
    await flush_or_raise(session, {ITEM_FOREIGN_KEY: lambda: UnknownItem(data.item_id)})
    # Committed with the order, or not at all; the response does not wait for it.
    await enqueue(
        session, CONFIRM_ORDER, {"order_id": str(order.id)}, dedupe_key=f"confirm:{order.id}"
    )
    await session.refresh(order, ["item"])
    return order


async def list_orders(
    session: AsyncSession,
    page: PageParams,
    *,
    owner: str | None,
    item_id: uuid.UUID | None = None,
) -> tuple[list[Order], str | None]:
    """A page of `owner`'s orders (every order if None), oldest first, optionally only
    those of one item."""
    paginator = PAGES[owner is not None, item_id is not None]
    values = {"owner": owner, "item_id": item_id}
    return await paginator.page(
        session, page, **{name: value for name, value in values.items() if value is not None}
    )


async def get_order(session: AsyncSession, order_id: uuid.UUID, *, owner: str | None) -> Order:
    query = _ALL.where(Order.id == order_id)
    if owner is not None:
        query = query.where(Order.owner == owner)
    order = await session.scalar(query)
    if order is None:
        raise OrderNotFound(order_id)
    return order
