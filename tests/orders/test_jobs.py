"""Creating an order enqueues its confirmation in the same transaction; the response
does not wait for it, and the job, when it runs, confirms the order once."""

from __future__ import annotations

import orjson
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.orders.jobs import CONFIRM_ORDER, confirm_order
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
