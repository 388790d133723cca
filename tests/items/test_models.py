"""The items table's indexes serve the queries the API sends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.core.pagination import PageParams, encode_cursor
from app.items import service
from tests.core.plans import assert_read_in_index_order, plan_of_last_statement


async def test_a_page_is_read_in_index_order(
    connection: AsyncConnection, read_session_factory: async_sessionmaker[AsyncSession]
) -> None:
    page = PageParams(limit=20, cursor=encode_cursor([datetime.now(UTC), uuid.uuid4()]))
    async with read_session_factory() as session:
        plan = await plan_of_last_statement(connection, lambda: service.list_items(session, page))
    assert_read_in_index_order(plan, "ix_items_created_at_id")
