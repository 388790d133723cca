"""The items API, operation by operation, with its errors."""

from __future__ import annotations

import uuid

from httpx import AsyncClient

from app.core.config import Settings
from tests.conftest import UNREACHABLE_REDIS, AppClientMaker, with_overrides

ITEMS = "/api/v1/items"


async def create(client: AsyncClient, name: str, description: str | None = None) -> dict[str, str]:
    response = await client.post(ITEMS, json={"name": name, "description": description})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def test_create_returns_201_with_location_and_server_fields(client: AsyncClient) -> None:
    response = await client.post(ITEMS, json={"name": "  widget  ", "description": "blue"})
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "widget"  # surrounding whitespace is not part of a name
    assert body["description"] == "blue"
    uuid.UUID(body["id"])
    assert body["created_at"] == body["updated_at"]
    assert response.headers["location"] == f"http://testserver{ITEMS}/{body['id']}"
    assert (await client.get(response.headers["location"])).json() == body


async def test_create_refuses_client_supplied_server_fields(client: AsyncClient) -> None:
    response = await client.post(ITEMS, json={"name": "x", "id": str(uuid.uuid4())})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"location": "body", "field": "id", "detail": "Extra inputs are not permitted"}
    ]


async def test_duplicate_name_is_409(client: AsyncClient) -> None:
    await create(client, "unique")
    response = await client.post(ITEMS, json={"name": "unique"})
    assert response.status_code == 409
    assert response.json()["detail"] == "An item with this name already exists."
    # The failed insert rolled back cleanly: the API still works.
    assert (await client.get(ITEMS)).json()["total"] == 1


async def test_name_length_is_bounded(client: AsyncClient) -> None:
    assert (await client.post(ITEMS, json={"name": "n" * 200})).status_code == 201
    for bad in ("", "   ", "n" * 201):
        response = await client.post(ITEMS, json={"name": bad})
        assert response.status_code == 422, bad
        assert response.json()["errors"][0]["field"] == "name"


async def test_get_unknown_id_is_404(client: AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.get(f"{ITEMS}/{missing}")
    assert response.status_code == 404
    assert response.json()["detail"] == f"Item {missing} does not exist."


async def test_get_malformed_id_is_422(client: AsyncClient) -> None:
    response = await client.get(f"{ITEMS}/not-a-uuid")
    assert response.status_code == 422
    assert response.json()["errors"][0] == {
        "location": "path",
        "field": "item_id",
        "detail": response.json()["errors"][0]["detail"],
    }


async def test_list_pages_in_stable_order(client: AsyncClient) -> None:
    created = [await create(client, f"item-{n}") for n in range(5)]
    first = (await client.get(ITEMS, params={"limit": 2})).json()
    second = (await client.get(ITEMS, params={"limit": 2, "offset": 2})).json()
    rest = (await client.get(ITEMS, params={"limit": 2, "offset": 4})).json()
    assert first["total"] == 5
    assert (first["limit"], first["offset"]) == (2, 0)
    paged = [item["id"] for page in (first, second, rest) for item in page["items"]]
    assert sorted(paged) == sorted(item["id"] for item in created)
    assert len(set(paged)) == 5  # no item twice, none skipped
    again = [item["id"] for item in (await client.get(ITEMS)).json()["items"]]
    assert again == paged


async def test_list_page_size_is_bounded(client: AsyncClient) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        response = await client.get(ITEMS, params=params)
        assert response.status_code == 422
        assert response.json()["errors"][0]["location"] == "query"
    assert (await client.get(ITEMS, params={"limit": 100})).status_code == 200


async def test_patch_changes_only_the_fields_sent(client: AsyncClient) -> None:
    item = await create(client, "before", "kept")
    response = await client.patch(f"{ITEMS}/{item['id']}", json={"name": "after"})
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["description"]) == ("after", "kept")
    assert body["created_at"] == item["created_at"]
    assert body["updated_at"] >= item["updated_at"]

    cleared = await client.patch(f"{ITEMS}/{item['id']}", json={"description": None})
    assert cleared.json()["description"] is None
    assert cleared.json()["name"] == "after"


async def test_patch_rejects_null_name(client: AsyncClient) -> None:
    item = await create(client, "named")
    response = await client.patch(f"{ITEMS}/{item['id']}", json={"name": None})
    assert response.status_code == 422
    assert "cannot be null" in response.json()["errors"][0]["detail"]


async def test_patch_to_a_taken_name_is_409(client: AsyncClient) -> None:
    await create(client, "first")
    second = await create(client, "second")
    response = await client.patch(f"{ITEMS}/{second['id']}", json={"name": "first"})
    assert response.status_code == 409
    assert (await client.get(f"{ITEMS}/{second['id']}")).json()["name"] == "second"


async def test_patch_unknown_id_is_404(client: AsyncClient) -> None:
    response = await client.patch(f"{ITEMS}/{uuid.uuid4()}", json={"name": "x"})
    assert response.status_code == 404


async def test_delete_is_204_then_404(client: AsyncClient) -> None:
    item = await create(client, "doomed")
    response = await client.delete(f"{ITEMS}/{item['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"{ITEMS}/{item['id']}")).status_code == 404
    assert (await client.delete(f"{ITEMS}/{item['id']}")).status_code == 404


async def test_items_work_while_redis_is_down(
    make_client: AppClientMaker, settings: Settings
) -> None:
    """Redis is a cache and a limiter: without it reads and writes still succeed."""
    client = await make_client(with_overrides(settings, redis_url=UNREACHABLE_REDIS))
    item = await create(client, "resilient")
    assert (await client.get(f"{ITEMS}/{item['id']}")).json()["name"] == "resilient"
    patched = await client.patch(f"{ITEMS}/{item['id']}", json={"name": "still"})
    assert patched.status_code == 200
    assert (await client.delete(f"{ITEMS}/{item['id']}")).status_code == 204
