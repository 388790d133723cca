"""The orders table's indexes serve the queries the API sends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.core.pagination import PageParams, encode_cursor
from app.orders import service
from tests.core.plans import assert_read_in_index_order, plan_of_last_statement


@pytest.mark.parametrize(
    ("owner", "item_id", "index"),
    [
        (None, None, "ix_orders_created_at_id"),
        (None, uuid.uuid4(), "ix_orders_item_id_created_at_id"),
        ("alice", None, "ix_orders_owner_created_at_id"),
    ],
    ids=["all orders", "one item's", "one owner's"],
)
async def test_a_page_is_read_in_index_order(
    connection: AsyncConnection,
    read_session_factory: async_sessionmaker[AsyncSession],
    owner: str | None,
    item_id: uuid.UUID | None,
    index: str,
) -> None:
    page = PageParams(limit=20, cursor=encode_cursor([datetime.now(UTC), uuid.uuid4()]))
    async with read_session_factory() as session:
        plan = await plan_of_last_statement(
            connection, lambda: service.list_orders(session, page, owner=owner, item_id=item_id)
        )
    assert_read_in_index_order(plan, index)
