"""The orders API: a resource that refers to another, listed without N+1 queries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from httpx import AsyncClient
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from tests.conftest import AppClientMaker, with_overrides
from tests.core.problems import assert_problem
from tests.items.helpers import ITEMS, create

ORDERS = "/api/v1/orders"


async def order(client: AsyncClient, item_id: str, quantity: int = 1) -> dict[str, object]:
    response = await client.post(ORDERS, json={"item_id": item_id, "quantity": quantity})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the tests' engine runs while the test runs."""
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_create_returns_the_order_with_its_item(client: AsyncClient) -> None:
    item = await create(client, "widget")
    response = await client.post(ORDERS, json={"item_id": item["id"], "quantity": 3})
    assert response.status_code == 201
    body = response.json()
    assert body["quantity"] == 3
    assert body["item"] == {"id": item["id"], "name": "widget"}
    assert response.headers["location"].endswith(f"{ORDERS}/{body['id']}")
    assert (await client.get(response.headers["location"])).json() == body


async def test_a_retried_order_is_one_order(client: AsyncClient) -> None:
    """A client that lost the response retries with the same Idempotency-Key: it gets
    the first order back, and the item has one order, not two."""
    item = await create(client, "widget")
    body = {"item_id": item["id"], "quantity": 2}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await client.post(ORDERS, json=body, headers=key)
    retried = await client.post(ORDERS, json=body, headers=key)

    assert first.status_code == retried.status_code == 201
    assert retried.json() == first.json()
    assert retried.headers["location"] == first.headers["location"]
    assert retried.headers["idempotent-replayed"] == "true"
    listed = await client.get(ORDERS, params={"item_id": item["id"]})
    assert [o["id"] for o in listed.json()["items"]] == [first.json()["id"]]


async def test_an_unknown_item_is_422_naming_the_field(client: AsyncClient) -> None:
    missing = str(uuid.uuid4())
    response = await client.post(ORDERS, json={"item_id": missing, "quantity": 1})
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {"location": "body", "field": "item_id", "detail": f"Item {missing} does not exist."}
    ]


@pytest.mark.parametrize("quantity", [0, -1, 10_001, "two"])
async def test_quantity_is_bounded(client: AsyncClient, quantity: object) -> None:
    item = await create(client, "bounded")
    response = await client.post(ORDERS, json={"item_id": item["id"], "quantity": quantity})
    assert_problem(response, 422)


async def test_get_unknown_order_is_404(client: AsyncClient) -> None:
    assert_problem(await client.get(f"{ORDERS}/{uuid.uuid4()}"), 404)


async def test_list_is_one_query_however_long_the_page(
    client: AsyncClient, statements: list[str]
) -> None:
    items = [await create(client, f"item-{n}") for n in range(3)]
    for item in items:
        await order(client, item["id"], 2)
    for limit in (1, 3):
        statements.clear()
        page = (await client.get(ORDERS, params={"limit": limit})).json()
        assert len(page["items"]) == limit
        assert {o["item"]["name"] for o in page["items"]} <= {i["name"] for i in items}
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 1, selects


async def test_list_filters_by_item(client: AsyncClient) -> None:
    first, second = await create(client, "first"), await create(client, "second")
    await order(client, first["id"])
    await order(client, second["id"])
    page = (await client.get(ORDERS, params={"item_id": first["id"]})).json()
    assert [o["item"]["id"] for o in page["items"]] == [first["id"]]


async def test_the_item_filter_holds_on_every_page(client: AsyncClient) -> None:
    first, second = await create(client, "first"), await create(client, "second")
    for _ in range(3):
        await order(client, first["id"])
        await order(client, second["id"])
    seen: list[object] = []
    params: dict[str, str | int] = {"item_id": str(first["id"]), "limit": 1}
    while True:
        page = (await client.get(ORDERS, params=params)).json()
        seen += [o["item"]["id"] for o in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [first["id"]] * 3


async def test_an_item_with_orders_cannot_be_deleted(client: AsyncClient) -> None:
    item = await create(client, "ordered")
    await order(client, item["id"])
    response = await client.delete(f"{ITEMS}/{item['id']}")
    assert_problem(response, 409)
    assert (await client.get(f"{ITEMS}/{item['id']}")).status_code == 200


async def test_creating_an_order_is_rate_limited(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await make_client(with_overrides(settings, rate_limit_writes=1))
    order = {"item_id": str(uuid.uuid4()), "quantity": 1}
    assert (await client.post(ORDERS, json=order)).status_code == 422  # no such item
    limited = await client.post(ORDERS, json=order)
    assert limited.status_code == 429
    assert "retry-after" in limited.headers


async def test_a_caller_without_the_scope_is_403_never_429(
    make_client: AppClientMaker, settings: Settings
) -> None:
    # The scope is checked before the budget is spent: 429 would tell the caller to retry.
    client = await make_client(with_overrides(settings, rate_limit_writes=1), scopes="orders:read")
    order = {"item_id": str(uuid.uuid4()), "quantity": 1}
    assert [(await client.post(ORDERS, json=order)).status_code for _ in range(3)] == [403] * 3


async def test_a_principal_sees_only_its_own_orders(
    make_client: AppClientMaker, settings: Settings
) -> None:
    alice = await make_client(settings, sub="alice")
    bob = await make_client(settings, sub="bob")
    item = (await alice.post("/api/v1/items", json={"name": "shared"})).json()
    order = (await alice.post(ORDERS, json={"item_id": item["id"], "quantity": 1})).json()
    assert order["owner"] == "alice"
    # Another principal's order does not exist, as far as bob can tell: 404, not 403.
    missing = await bob.get(f"{ORDERS}/{order['id']}")
    assert missing.status_code == 404
    assert (await bob.get(ORDERS)).json()["items"] == []
    assert [o["id"] for o in (await alice.get(ORDERS)).json()["items"]] == [order["id"]]


async def test_an_orders_admin_sees_every_order(
    make_client: AppClientMaker, settings: Settings
) -> None:
    alice = await make_client(settings, sub="alice")
    admin = await make_client(settings, scopes="orders:read orders:admin", sub="carol")
    item = (await alice.post("/api/v1/items", json={"name": "audited"})).json()
    order = (await alice.post(ORDERS, json={"item_id": item["id"], "quantity": 2})).json()
    assert (await admin.get(f"{ORDERS}/{order['id']}")).json()["owner"] == "alice"
    assert order["id"] in [o["id"] for o in (await admin.get(ORDERS)).json()["items"]]


async def test_reading_orders_needs_the_scope(
    make_client: AppClientMaker, settings: Settings
) -> None:
    writer = await make_client(settings, scopes="orders:write")
    response = await writer.get(ORDERS)
    assert response.status_code == 403
    assert "orders:read" in response.json()["detail"]
