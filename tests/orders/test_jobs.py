"""Creating an order enqueues its confirmation in the same transaction; the response
does not wait for it, and the job, when it runs, confirms the order once."""

from __future__ import annotations

import orjson
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.orders.jobs import confirm_order
from app.orders.service import CONFIRM_ORDER
from tests.conftest import AppClientMaker, with_overrides
from tests.core.problems import assert_problem
from tests.items.helpers import create

ORDERS = "/api/v1/orders"


async def test_an_order_is_answered_before_its_confirmation_job_runs(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    item = await create(client, "to confirm")
    order = (await client.post(ORDERS, json={"item_id": item["id"], "quantity": 1})).json()
    assert order["confirmed_at"] is None  # answered without waiting for the job
    rows = await connection.execute(
        text("SELECT payload, dedupe_key FROM pgqueuer WHERE entrypoint = :job"),
        {"job": CONFIRM_ORDER},
    )
    [(payload, dedupe_key)] = rows.all()  # in the order's transaction: one job, this one
    assert orjson.loads(payload) == {"order_id": order["id"]}
    assert dedupe_key == f"confirm:{order['id']}"


async def test_the_job_confirms_the_order_once(
    client: AsyncClient, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    item = await create(client, "confirmed")
    order = (await client.post(ORDERS, json={"item_id": item["id"], "quantity": 2})).json()
    async with session_factory() as session, session.begin():
        await confirm_order(session, {"order_id": order["id"]})
    confirmed = (await client.get(f"{ORDERS}/{order['id']}")).json()["confirmed_at"]
    assert confirmed is not None
    async with session_factory() as session, session.begin():  # at least once: run again
        await confirm_order(session, {"order_id": order["id"]})
    assert (await client.get(f"{ORDERS}/{order['id']}")).json()["confirmed_at"] == confirmed


async def test_a_refused_order_enqueues_nothing(
    client: AsyncClient, connection: AsyncConnection
) -> None:
    missing_item = "00000000-0000-0000-0000-000000000000"
    response = await client.post(ORDERS, json={"item_id": missing_item, "quantity": 1})
    assert response.status_code == 422
    count = await connection.scalar(
        text("SELECT count(*) FROM pgqueuer WHERE entrypoint = :job"), {"job": CONFIRM_ORDER}
    )
    assert count == 0


async def test_a_job_queue_locked_past_the_lock_timeout_is_a_503_and_keeps_no_order(
    make_client: AppClientMaker, settings: Settings, engine: AsyncEngine
) -> None:
    """The enqueue goes through asyncpg, not SQLAlchemy: its lock timeout is still a
    retryable 503, and the order's own insert is rolled back with it."""
    client = await make_client(with_overrides(settings, db_lock_timeout=0.2), isolated=False)
    item = await create(client, "queue locked")
    try:
        async with engine.connect() as holder:
            await holder.execute(text("LOCK TABLE pgqueuer IN EXCLUSIVE MODE"))
            try:
                response = await client.post(ORDERS, json={"item_id": item["id"], "quantity": 1})
            finally:
                await holder.rollback()
        assert_problem(response, 503)
        assert response.headers["Retry-After"]
        assert (await client.get(ORDERS, params={"item_id": item["id"]})).json()["items"] == []
    finally:  # committed (isolated=False): the tests after this one must not see it
        async with engine.begin() as cleanup:
            await cleanup.execute(text("DELETE FROM items WHERE id = :id"), {"id": item["id"]})
